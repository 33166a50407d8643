"""The sync service: idempotent upserts, ordering, the lease, errors on the connection."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dashboard import sync
from dashboard.models import Connection, Environment, Job, Project, Run
from providers.base import (
    EnvironmentData,
    JobData,
    ProjectData,
    RateLimited,
    RunData,
    Status,
    Unavailable,
)
from providers.simulators.buddy import BUILD_PLAN, DEPLOY_PLAN

pytestmark = pytest.mark.django_db


def test_first_sync_mirrors_runs_jobs_and_projects(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=100)
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN, age=10)
    result = sync.sync_connection(buddy_connection.pk)
    assert (result.runs_written, result.skipped) == (2, False)
    assert sorted(Run.objects.values_list("external_id", "status")) == [
        ("web-shop/1/1", Status.SUCCEEDED), ("web-shop/1/2", Status.RUNNING),
    ]
    assert Job.objects.filter(run__external_id="web-shop/1/1").count() == 3
    assert list(Project.objects.values_list("external_id", flat=True)) == ["web-shop"]
    buddy_connection.refresh_from_db()
    assert buddy_connection.last_success_at is not None
    assert buddy_connection.last_error == ""
    assert buddy_connection.cursor["high_water"]
    assert buddy_connection.runs_synced == 2


def test_resync_updates_in_place_without_duplicates(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    sync.sync_connection(buddy_connection.pk)
    buddy_sim.advance(30)
    sync.sync_connection(buddy_connection.pk)
    sync.sync_connection(buddy_connection.pk)
    assert Run.objects.count() == 1
    assert Run.objects.get().raw_status == "WAITING_FOR_APPLY"
    assert Job.objects.count() == 3


def test_an_older_observation_never_overwrites_a_newer_one(buddy_connection):
    now = timezone.now()

    def observed(status, at):
        return RunData(external_id="x", status=status, raw_status=status.value,
                       locator={}, observed_at=at)

    assert sync.upsert_runs(buddy_connection, [observed(Status.CANCELLED, now)]) == 1
    assert sync.upsert_runs(buddy_connection, [observed(Status.RUNNING,
                                                        now - timedelta(seconds=5))]) == 0
    assert Run.objects.get().status == Status.CANCELLED


def test_a_page_repeating_a_run_keeps_its_newest_observation(buddy_connection):
    now = timezone.now()
    page = [RunData(external_id="x", status=Status.RUNNING, raw_status="a", locator={},
                    observed_at=now),
            RunData(external_id="x", status=Status.FAILED, raw_status="b", locator={},
                    observed_at=now - timedelta(seconds=1))]
    sync.upsert_runs(buddy_connection, page)
    assert list(Run.objects.values_list("status", flat=True)) == [Status.RUNNING]


def test_queries_per_page_do_not_grow_with_page_size(buddy_connection):
    def page(size, offset):
        return [RunData(external_id=f"r{offset + i}", status=Status.RUNNING, raw_status="x",
                        locator={}) for i in range(size)]

    counts = []
    for size, offset in ((5, 0), (200, 100)):
        with CaptureQueriesContext(db_connection) as queries:
            sync.upsert_runs(buddy_connection, page(size, offset))
        counts.append(len(queries))
    assert counts[0] == counts[1]


def test_a_held_lease_skips_the_second_sync(buddy_sim, buddy_connection):
    assert sync.acquire_lease(buddy_connection.pk, "other-worker")
    buddy_sim.add_execution("web-shop", 1)
    assert sync.sync_connection(buddy_connection.pk).skipped
    assert Run.objects.count() == 0


def test_an_expired_lease_is_taken_over(buddy_sim, buddy_connection):
    Connection.objects.filter(pk=buddy_connection.pk).update(
        lease_owner="dead-worker", lease_until=timezone.now() - timedelta(seconds=1))
    buddy_sim.add_execution("web-shop", 1)
    assert not sync.sync_connection(buddy_connection.pk).skipped
    assert Run.objects.count() == 1


def test_provider_errors_are_recorded_and_release_the_lease(buddy_sim, buddy_connection):
    buddy_sim.inject("rate_limit", retry_after=30)
    with pytest.raises(RateLimited):
        sync.sync_connection(buddy_connection.pk)
    buddy_connection.refresh_from_db()
    assert buddy_connection.last_error == (
        "Rate limited: Too many requests (next attempt in 30 s)")
    assert buddy_connection.next_attempt_at > timezone.now() + timedelta(seconds=25)
    assert buddy_connection.lease_owner == ""
    assert buddy_connection.is_stale


def test_failed_pass_leaves_cursor_and_next_pass_recovers(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    buddy_sim.inject("error_503")
    with pytest.raises(Unavailable):
        sync.sync_connection(buddy_connection.pk)
    buddy_connection.refresh_from_db()
    assert buddy_connection.cursor == {}
    sync.sync_connection(buddy_connection.pk)
    buddy_connection.refresh_from_db()
    assert buddy_connection.last_error == ""
    assert not buddy_connection.is_stale
    assert Run.objects.count() == 1


def test_active_runs_outside_the_window_are_refreshed_one_by_one(buddy_sim, buddy_connection,
                                                                  monkeypatch):
    monkeypatch.setattr("providers.buddy.PAGE_SIZE", 2)
    old = buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN, age=7200)
    buddy_sim.transition(old, [old.plan[2]])  # parked, waiting for approval
    for age in (7150, 7100, 1000):
        buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=age)
    sync.sync_connection(buddy_connection.pk)
    for _ in range(3):
        buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    buddy_sim.advance(60)
    requests_before = len(buddy_sim.requests)
    sync.sync_connection(buddy_connection.pk)
    paths = [path for _, path, _ in buddy_sim.requests[requests_before:]]
    executions = "/workspaces/acme/projects/web-shop/pipelines/1/executions"
    # Three listing pages (the third all older than the window), then the parked run.
    # Lists are Buddy's short view: only the three new runs are read for their steps.
    assert [p for p in paths if p == executions] == [executions] * 3
    assert paths[-1] == f"{executions}/1"
    assert sorted(p for p in paths[:-1] if p.startswith(executions + "/")) == [
        f"{executions}/{n}" for n in (5, 6, 7)]
    assert Run.objects.count() == 7
    assert Run.objects.get(external_id="web-shop/1/1").status == Status.WAITING


@pytest.mark.django_db
def test_what_a_pass_asks_of_active_runs_is_served_by_an_index_of_them(buddy_connection):
    """Every pass asks which runs are still active (to re-read them, and to plan the
    next pass): not by reading the connection's whole history (89 ms a look at 100,000
    runs each, bench/pages.py's data)."""
    from tests.plans import plan_of

    # A history of finished runs, and a few active ones: the planner sees both.
    Run.objects.bulk_create(
        Run(connection=buddy_connection, external_id=str(n), created_at=timezone.now(),
            status=Status.RUNNING if n % 1000 == 0 else Status.SUCCEEDED)
        for n in range(3000))
    runs = buddy_connection.runs
    for query in (runs.to_refresh().values_list("id", "external_id", "locator"),
                  runs.active().values("pk")[:1]):  # as exists() asks
        assert "run_active" in plan_of(query)


def test_read_ahead_hands_over_every_page_in_order_then_the_error():
    def pages():
        yield [1]
        yield [2]
        yield [3]
        raise Unavailable("gone")

    received = []
    with pytest.raises(Unavailable, match="gone"):
        for batch in sync.read_ahead(pages()):
            received.extend(batch)
    assert received == [[1], [2], [3]]


def test_read_ahead_gathers_the_pages_fetched_during_a_slow_write():
    batches = sync.read_ahead(iter([[1], [2], [3]]), depth=4)
    first = next(batches)
    time.sleep(0.3)  # writing the first batch takes long: the rest is fetched meanwhile
    rest = list(batches)
    assert [page for batch in [first, *rest] for page in batch] == [[1], [2], [3]]
    assert len(rest) <= 1


def test_read_ahead_stops_fetching_when_its_consumer_stops():
    fetched = []

    def endless():
        while True:
            fetched.append(len(fetched))
            yield [len(fetched)]

    batches = sync.read_ahead(endless(), depth=2)
    next(batches)
    batches.close()  # the consumer gave up: an error while writing, a time limit
    count = len(fetched)
    time.sleep(0.3)
    assert len(fetched) == count < 10
    assert not any(t.name == "sync-read-ahead" for t in threading.enumerate())


def test_a_run_gone_from_the_provider_turns_unknown(buddy_sim, buddy_connection):
    gone = buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    sync.sync_connection(buddy_connection.pk)
    del buddy_sim.runs[gone.id]  # deleted at the provider while still running
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get(external_id="web-shop/1/1")
    assert (run.status, run.raw_status) == (Status.UNKNOWN, "(gone from the provider)")
    # It stays visible, and is not asked for again on every pass (it was for a day).
    path = "/workspaces/acme/projects/web-shop/pipelines/1/executions/1"
    asked = [p for _, p, _ in buddy_sim.requests].count(path)
    for _ in range(3):
        sync.sync_connection(buddy_connection.pk)
    assert [p for _, p, _ in buddy_sim.requests].count(path) == asked
    assert run not in Run.objects.to_refresh()
    assert Run.objects.get(pk=run.pk).raw_status == "(gone from the provider)"


def test_an_unchanged_run_is_not_written_again(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    assert sync.sync_connection(buddy_connection.pk).runs_written == 1
    before = Run.objects.get()
    again = sync.sync_connection(buddy_connection.pk)
    assert (again.pages, again.runs_written) == (1, 0)
    assert Run.objects.get().updated_at == before.updated_at  # live pages see no change
    buddy_sim.advance(30)  # now waiting for approval
    assert sync.sync_connection(buddy_connection.pk).runs_written == 1
    after = Run.objects.get()
    assert after.status == Status.WAITING and after.updated_at > before.updated_at
    assert after.fingerprint != before.fingerprint


def test_a_quiet_pass_tells_live_pages_only_once_a_heartbeat(buddy_sim, buddy_connection,
                                                             settings):
    settings.RUNBOARD_LIVE_HEARTBEAT = 60
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    sync.sync_connection(buddy_connection.pk)
    first = Connection.objects.get(pk=buddy_connection.pk)
    sync.sync_connection(buddy_connection.pk)  # nothing new
    quiet = Connection.objects.get(pk=buddy_connection.pk)
    assert quiet.updated_at == first.updated_at
    assert quiet.last_success_at > first.last_success_at
    Connection.objects.filter(pk=buddy_connection.pk).update(
        updated_at=timezone.now() - timedelta(seconds=61))
    sync.sync_connection(buddy_connection.pk)  # a heartbeat later
    assert Connection.objects.get(pk=buddy_connection.pk).updated_at > first.updated_at


def test_an_answer_without_a_creation_time_keeps_the_one_we_hold(buddy_connection):
    created = timezone.now() - timedelta(hours=3)
    sync.upsert_runs(buddy_connection, [RunData(
        external_id="x", status=Status.RUNNING, raw_status="a", locator={},
        created_at=created, observed_at=timezone.now() - timedelta(seconds=5))])
    sync.upsert_runs(buddy_connection, [RunData(  # e.g. an action's answer
        external_id="x", status=Status.CANCELLING, raw_status="b", locator={})])
    run = Run.objects.get()
    assert (run.status, run.created_at) == (Status.CANCELLING, created)


def test_a_gone_run_that_a_listing_shows_again_is_rewritten(buddy_sim, buddy_connection):
    gone = buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    sync.sync_connection(buddy_connection.pk)
    del buddy_sim.runs[gone.id]
    sync.sync_connection(buddy_connection.pk)
    assert Run.objects.get().status == Status.UNKNOWN
    buddy_sim.runs[gone.id] = gone  # the provider knows it again, unchanged
    sync.sync_connection(buddy_connection.pk)
    assert (Run.objects.get().status, Run.objects.get().raw_status) == (
        Status.QUEUED, "ENQUEUED")


def test_re_syncing_existing_runs_does_not_draw_ids(buddy_connection):
    """An upsert that updates (or skips) existing rows takes no id from the sequence:
    ids of new runs follow on, they do not leap by a page per pass."""
    def page(status, ids):
        return [RunData(external_id=f"r{i}", status=status, raw_status=status.value,
                        locator={}, jobs=[JobData(external_id="j", name="j", status=status,
                                                  raw_status=status.value)])
                for i in ids]

    sync.upsert_runs(buddy_connection, page(Status.RUNNING, range(50)))
    for status in (Status.RUNNING, Status.WAITING, Status.SUCCEEDED):  # same, changed, changed
        sync.upsert_runs(buddy_connection, page(status, range(50)))
    sync.upsert_runs(buddy_connection, page(Status.RUNNING, [50]))
    ids = sorted(Run.objects.values_list("id", flat=True))
    assert ids[-1] - ids[0] == 50
    job_ids = sorted(Job.objects.values_list("id", flat=True))
    assert job_ids[-1] - job_ids[0] == 50
    assert Run.objects.filter(status=Status.SUCCEEDED).count() == 50


@pytest.mark.parametrize(("synced_ago", "next_poll_in", "stale"), [
    (60, None, False),
    (200, None, True),       # nothing planned: old is stale
    (200, 100, False),       # the scheduler spaced it out (budget, quiet account)
    (400, -130, True),       # its planned pass is overdue: the workers are not keeping up
    (3600, 2, True),         # a plan, but older than the longest quiet interval allows
])
def test_a_connection_is_stale_once_overdue_not_once_its_pass_is_old(
        buddy_connection, settings, synced_ago, next_poll_in, stale):
    settings.RUNBOARD_STALE_AFTER = 120
    now = timezone.now()
    buddy_connection.last_success_at = now - timedelta(seconds=synced_ago)
    buddy_connection.next_poll_at = (now + timedelta(seconds=next_poll_in)
                                     if next_poll_in is not None else None)
    assert buddy_connection.is_stale is stale


# -- list-level change detection across passes ------------------------------------------


@pytest.fixture
def qovery(db, clock):
    from providers.simulators.qovery import QoverySimulator
    with QoverySimulator(token="qov_sync_test", clock=clock) as sim:
        org = sim.add_organization("Acme")
        envs = [sim.add_environment(sim.add_project(org, f"p{p}"), name)
                for p in range(3) for name in ("staging", "production")]
        connection = Connection.objects.create(
            provider="qovery", name="Qovery", base_url=sim.url, token=sim.token,
            scope={"organization": org})
        yield sim, envs, connection


def test_a_quiet_pass_costs_a_request_a_project_and_a_change_is_written(qovery):
    from providers.simulators.qovery import DEPLOY_PLAN as QOVERY_DEPLOY
    sim, envs, connection = qovery
    for env in envs:
        sim.add_deployment(env, QOVERY_DEPLOY, age=3600)
    assert sync.sync_connection(connection.pk).runs_written == 6
    quiet = sync.sync_connection(connection.pk)
    assert (quiet.requests, quiet.runs_written) == (1 + 3, 0)
    new = sim.add_deployment(envs[4], QOVERY_DEPLOY, age=600)  # ends DEPLOYED, as before
    changed = sync.sync_connection(connection.pk)
    # Written: the new run, and the one before it (no longer its environment's current).
    assert (changed.requests, changed.runs_written) == (1 + 3 + 2, 2)
    assert Run.objects.get(external_id=f"{envs[4]}/{new.id}").status == Status.SUCCEEDED


def test_a_failed_pass_keeps_the_last_listing_so_its_change_is_read_next(qovery):
    from providers.simulators.qovery import DEPLOY_PLAN as QOVERY_DEPLOY
    sim, envs, connection = qovery
    for env in envs:
        sim.add_deployment(env, QOVERY_DEPLOY, age=3600)
    sync.sync_connection(connection.pk)
    connection.refresh_from_db()
    listing = connection.cursor["listing"]
    new = sim.add_deployment(envs[1], QOVERY_DEPLOY, age=600)
    sim.inject("error_503", after=1 + 3 + 1)  # the changed environment's second read
    with pytest.raises(Unavailable):
        sync.sync_connection(connection.pk)
    connection.refresh_from_db()
    assert connection.cursor["listing"] == listing
    sync.sync_connection(connection.pk)
    assert Run.objects.filter(external_id=f"{envs[1]}/{new.id}").exists()


def test_no_pass_reads_everything_again_only_what_is_due_a_few_at_a_time(qovery, settings):
    from providers.simulators.qovery import DEPLOY_PLAN as QOVERY_DEPLOY
    sim, envs, connection = qovery
    for env in envs:
        sim.add_deployment(env, QOVERY_DEPLOY, age=3600)
    assert sync.sync_connection(connection.pk).requests == 1 + 3 * 2 + 6 * 2
    assert sync.sync_connection(connection.pk).requests == 4
    # Two hours on: no full read, but the environment read longest ago (as the stored
    # listing says) is due within RUNBOARD_FULL_READ_EVERY, the others not yet.
    settings.RUNBOARD_FULL_READ_EVERY = 3600
    cursor = Connection.objects.get(pk=connection.pk).cursor
    now = time.time()
    listing = cursor["listing"]
    listing["reread"] = {"at": now - 120, "credit": 0, "read_at": {
        env: now - (3500 if env == envs[2] else 100) for env in envs}}
    listing.setdefault("names", {})["at"] = now - 120
    Connection.objects.filter(pk=connection.pk).update(cursor={**cursor, "listing": listing})
    before = len(sim.requests)
    assert sync.sync_connection(connection.pk).requests == 4 + 2
    assert {path for _, path, _ in sim.requests[before:]} >= {
        f"/environment/{envs[2]}/deploymentHistoryV2",
        f"/environment/{envs[2]}/deploymentQueue"}
    assert sync.sync_connection(connection.pk).requests == 4


def test_an_edited_connection_reads_everything_again(qovery):
    from providers.simulators.qovery import DEPLOY_PLAN as QOVERY_DEPLOY
    sim, envs, connection = qovery
    for env in envs:
        sim.add_deployment(env, QOVERY_DEPLOY, age=3600)
    full = sync.sync_connection(connection.pk).requests
    assert sync.sync_connection(connection.pk).requests == 4
    Connection.objects.filter(pk=connection.pk).update(base_url=sim.url + "/")
    assert sync.sync_connection(connection.pk).requests == full
    assert sync.sync_connection(connection.pk).requests == 4
    project = next(iter(sim.projects))
    Connection.objects.filter(pk=connection.pk).update(
        scope={**connection.scope, "project": project})
    # The project, its statuses and environments, and each one's queue and history.
    assert sync.sync_connection(connection.pk).requests == 3 + 2 * 2
    assert sync.sync_connection(connection.pk).requests == 2

def _page(status, ids, job_status=None, env="production", project="shop"):
    """A page of runs, each in a project and environment, with two jobs."""
    shop = ProjectData(external_id=project, name=project.title())
    where = EnvironmentData(external_id=env, name=env.title(), project=shop)
    return [RunData(external_id=f"r{i}", status=status, raw_status=status.value, locator={},
                    project=shop, environment=where, jobs=[
                        JobData(external_id="build", name="Build", status=Status.SUCCEEDED,
                                raw_status="SUCCESSFUL", environment=where),
                        JobData(external_id="deploy", name="Deploy",
                                status=job_status or status, raw_status="x", order=1)])
            for i in ids]


def _row_versions() -> dict:
    """Every synced row's xmin: it changes whenever PostgreSQL writes the row again."""
    versions = {}
    with db_connection.cursor() as cursor:
        for table in ("dashboard_project", "dashboard_environment", "dashboard_run",
                      "dashboard_job"):
            cursor.execute(f"SELECT id, xmin::text FROM {table}")
            versions.update({(table, pk): xmin for pk, xmin in cursor.fetchall()})
    return versions


def test_an_unchanged_page_rewrites_no_row(buddy_connection):
    """Re-reading a page that did not change writes nothing: no project, environment,
    run or job row gets a new version (no dead rows, no updated_at moved)."""
    sync.upsert_runs(buddy_connection, _page(Status.RUNNING, range(5)))
    before = _row_versions()
    assert len(before) == 1 + 1 + 5 + 10
    assert sync.upsert_runs(buddy_connection, _page(Status.RUNNING, range(5))) == 0
    assert _row_versions() == before


def test_a_changed_run_rewrites_only_its_changed_jobs(buddy_connection):
    sync.upsert_runs(buddy_connection, _page(Status.RUNNING, range(3)))
    before = _row_versions()
    assert sync.upsert_runs(buddy_connection, _page(Status.SUCCEEDED, [1])) == 1
    after = _row_versions()
    rewritten = {key for key in before if after[key] != before[key]}
    run = Run.objects.get(external_id="r1")
    assert rewritten == {("dashboard_run", run.pk),
                         ("dashboard_job", run.jobs.get(external_id="deploy").pk)}
    assert run.jobs.get(external_id="deploy").status == Status.SUCCEEDED


def test_re_syncing_projects_and_environments_does_not_draw_ids(buddy_connection):
    """Like runs and jobs, a project or environment we hold takes no id from the
    sequence when a page names it again."""
    for _ in range(5):
        sync.upsert_runs(buddy_connection, _page(Status.RUNNING, range(3)))
    sync.upsert_runs(buddy_connection, _page(Status.RUNNING, [9], env="staging",
                                              project="api"))
    assert _consecutive(Project.objects.values_list("id", flat=True))
    assert _consecutive(Environment.objects.values_list("id", flat=True))
    assert Environment.objects.get(external_id="staging").project.external_id == "api"


def _consecutive(ids) -> bool:
    ids = sorted(ids)
    return ids == list(range(ids[0], ids[0] + len(ids)))


def test_an_environment_moved_to_another_project_and_a_renamed_project_are_written(
        buddy_connection):
    sync.upsert_runs(buddy_connection, _page(Status.RUNNING, [1]))
    moved = _page(Status.RUNNING, [1], project="platform")
    moved[0].project.name = "Platform team"
    sync.upsert_runs(buddy_connection, moved)
    assert Environment.objects.get().project.name == "Platform team"
    renamed = _page(Status.RUNNING, [1])
    renamed[0].environment.project.name = renamed[0].project.name = "Shop (renamed)"
    sync.upsert_runs(buddy_connection, renamed)
    assert Project.objects.get(external_id="shop").name == "Shop (renamed)"
    assert Environment.objects.get().project.external_id == "shop"


# --- derived rows: releases cells, trends rollup, settlement (sync.derive) -----------


def _derived() -> tuple[set, set, set]:
    """The releases cells and the trends rollup (days and buckets, by group key), as the
    write path kept them."""
    from dashboard.models import ReleaseCell, TrendBucket, TrendDay

    return (set(ReleaseCell.objects.values_list(
                "connection_id", "project_name", "pipeline_name", "column", "name",
                "position", "latest_run_id", "latest_step", "deployed_run_id")),
            set(TrendDay.objects.values_list("group__key", "day", "successes", "failures",
                                             "failing_since")),
            set(TrendBucket.objects.values_list("group__key", "day", "restore", "bucket",
                                                "count")))


def _rebuilt() -> tuple[set, set, set]:
    """What the cells and the rollup are when worked out from every run."""
    from dashboard import releases, rollup

    releases.rebuild()
    rollup.rebuild()
    return _derived()


@pytest.fixture
def workflows(clock):
    from providers.simulators.workflows import WorkflowsSimulator

    with WorkflowsSimulator(token="wf-token", clock=clock) as sim:
        connection = Connection.objects.create(
            provider="workflows", name="Rules", base_url=sim.url, token=sim.token,
            scope={"project": sim.project_id, "project_name": sim.project_name})
        for age in range(30, 30 * 60, 30):  # finished, deploying, waiting for review
            sim.add_workflow_run(age=age)
        yield sim, connection


def test_a_pass_derives_what_it_wrote_before_it_ends(workflows, clock):
    _, connection = workflows
    result = sync.sync_connection(connection.pk)
    assert result.runs_written == 59
    kept = _derived()
    assert all(kept) and kept == _rebuilt()
    assert not sync.DeriveBacklog.objects.exists()
    clock.advance(600)  # some finish: the next pass derives what they changed
    sync.sync_connection(connection.pk)
    kept = _derived()
    assert kept == _rebuilt()


def test_a_pass_derives_during_the_pass_once_DERIVE_EVERY_has_passed(workflows, monkeypatch):
    """The cells and trends lag the run list by DERIVE_EVERY during a pass: with none,
    every batch of pages written finds the batches before it derived."""
    _, connection = workflows
    monkeypatch.setattr(sync, "DERIVE_EVERY", 0)
    # A batch a page (fetching ahead may hand both pages over at once).
    monkeypatch.setattr(sync, "read_ahead", lambda pages, **kwargs: ([p] for p in pages))
    write, backlogs = sync.upsert_runs, []

    def watched(*args, **kwargs):
        backlogs.append(sync.DeriveBacklog.objects.count())
        return write(*args, **kwargs)

    monkeypatch.setattr(sync, "upsert_runs", watched)
    sync.sync_connection(connection.pk)
    assert len(backlogs) > 1 and set(backlogs) == {0}


def test_a_worker_dying_before_it_derives_loses_nothing(workflows, monkeypatch):
    """The runs are committed with their marks; the derivation never happened. Whoever
    derives next (the next pass, or sync_all for marks left a minute) makes it right."""
    _, connection = workflows

    def dies(connection_id):
        raise SystemExit("the worker died")

    monkeypatch.setattr(sync, "derive", dies)
    with pytest.raises(SystemExit):
        sync.sync_connection(connection.pk)
    monkeypatch.undo()
    assert Run.objects.count() == 59 and sync.DeriveBacklog.objects.count() == 59
    assert _derived() == (set(), set(), set())
    assert sync.derive_leftovers(older_than=timedelta(hours=1)) == 0  # too recent yet
    assert sync.derive_leftovers(older_than=timedelta(0)) == 59
    kept = _derived()
    assert all(kept) and kept == _rebuilt()
    assert not sync.DeriveBacklog.objects.exists()


def test_the_page_statement_and_the_run_encoding_agree_on_the_layout():
    """_run_json encodes a run in the order the page's statement reads it."""
    layout = sync._merge_sql(sync._PAGE)[1][2][0]
    assert [sync.RUN_COLUMNS[i] for i in layout] == [
        *(sync.RUN_COLUMNS[i] for i in sync._RUN_LAYOUT),
        "fingerprint", "observed_at", "updated_at"]


def test_a_first_pass_gives_postgresql_statistics_on_the_runs(
        buddy_sim, buddy_connection, monkeypatch):
    """Without statistics, the page statement prepared on an empty table looked each
    run up through (connection, created_at), scanning the connection's rows: a first
    sync of 10,000 runs took three times as long (bench/sync.py on a new database)."""
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=100)
    held = ("SELECT count(*) FROM pg_stats WHERE tablename = 'dashboard_run'"
            " AND attname = 'connection_id'")
    with db_connection.cursor() as cursor:  # as on a new database (tests run as superuser)
        cursor.execute("DELETE FROM pg_statistic WHERE starelid = 'dashboard_run'::regclass")
        cursor.execute(held)
        assert cursor.fetchone() == (0,)
        monkeypatch.setattr(sync, "_statistics_held", False)
        sync.sync_connection(buddy_connection.pk)
        cursor.execute(held)
        assert cursor.fetchone() == (1,)


def test_a_payload_postgresql_cannot_store_as_sent_is_written_not_refused(buddy_connection):
    """A provider's JSON may hold NaN (Python's parser takes it; PostgreSQL's JSON does
    not: the whole page was refused, and every pass after it) or an integer past 64
    bits (which the fast encoder hands to the standard one)."""
    runs = [RunData(external_id=key, status=Status.RUNNING, raw_status="a", locator={},
                    observed_at=timezone.now(), raw=raw)
            for key, raw in (("nan", {"progress": float("nan")}), ("big", {"id": 2**70}),
                             ("both", {"id": 2**70, "eta": [float("-inf"), 1.5]}))]
    assert sync.upsert_runs(buddy_connection, runs) == 3
    assert dict(Run.objects.values_list("external_id", "raw")) == {
        "nan": {"progress": None}, "big": {"id": 2**70},
        "both": {"id": 2**70, "eta": [None, 1.5]}}
