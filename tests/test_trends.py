"""Trends per pipeline and environment: DORA-style figures from Runboard's own history.

The page reads a daily rollup the sync keeps (dashboard/rollup.py). These tests write a
generated history through the sync's own upsert (out of order, with runs that finish
later, runs retried, two environments, two connections) and compare every figure with a
brute-force computation over the runs table, by the definitions in dashboard/rollup.py.
"""

import io
import random
import statistics
from dataclasses import replace
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection as db
from django.utils import timezone

from dashboard import rollup, sync
from dashboard.models import Connection, Run, TrendBucket, TrendDay
from providers.base import EnvironmentData, ProjectData, RunData, Status

pytestmark = pytest.mark.django_db

S, F = Status.SUCCEEDED, Status.FAILED


@pytest.fixture(autouse=True)
def _time_zone(settings):
    # Days are local: a zone half an hour off UTC puts day boundaries where UTC's are not.
    settings.TIME_ZONE = "Asia/Kolkata"


def deployment(n, status, hours_ago, minutes, environment="production", pipeline="deploy"):
    started = timezone.now() - timedelta(hours=hours_ago)
    return RunData(
        external_id=f"{pipeline}-{environment}-{n}", status=status, raw_status=status.value,
        locator={}, project=ProjectData("shop", "shop"), pipeline_name=pipeline,
        environment=EnvironmentData(environment, environment), created_at=started,
        started_at=started, finished_at=started + timedelta(minutes=minutes))


# --- the brute force ---------------------------------------------------------------


def reference(days: int) -> dict[tuple, dict]:
    """Every figure of the page, from every run, by the definitions (no rollup)."""
    local = timezone.get_default_timezone()
    first = timezone.localtime(timezone.now(), local).date() - timedelta(days=days - 1)
    groups: dict[tuple, list] = {}
    for run in Run.objects.select_related("connection", "project", "environment"):
        if run.status not in (S, F):
            continue
        key = (run.project.name if run.project else run.connection.name, run.pipeline_name,
               run.environment.name if run.environment else "", run.connection.name)
        at = run.finished_at or run.created_at
        seconds = ((run.finished_at - run.started_at).total_seconds()
                   if run.started_at and run.finished_at else None)
        groups.setdefault(key, []).append((at, run.pk, run.status == S, seconds))
    result = {}
    for key, deployments in groups.items():
        ok = bad = 0
        durations, restores, failing_since, last_ok = [], [], None, None
        for at, _, succeeded, seconds in sorted(deployments):
            in_window = timezone.localtime(at, local).date() >= first
            if succeeded and failing_since is not None:
                if in_window:
                    restores.append((at - failing_since).total_seconds())
                failing_since = None
            elif not succeeded and failing_since is None:
                failing_since = at
            if not in_window:
                continue
            ok, bad, last_ok = ok + succeeded, bad + (not succeeded), succeeded
            if seconds is not None:
                durations.append(seconds)
        if ok + bad:
            ordered = sorted(durations)
            result[key] = {
                "deployments": ok + bad, "success_rate": round(100 * ok / (ok + bad)),
                "change_failure_rate": round(100 * bad / (ok + bad)),
                "median": statistics.median(durations) if durations else None,
                "p90": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
                if durations else None,
                "restore": statistics.median(restores) if restores else None,
                "unrestored": not last_ok,
            }
    return result


def assert_page_matches_reference(client, days):
    cache.clear()
    rows = client.get(f"/trends/?days={days}").context["rows"]
    shown = {(r["project"], r["pipeline"], r["environment"], r["connection"]): r for r in rows}
    expected = reference(days)
    assert shown.keys() == expected.keys()
    for key, want in expected.items():
        got = shown[key]
        for name in ("deployments", "success_rate", "change_failure_rate", "unrestored"):
            assert got[name] == want[name], (days, key, name)
        for name in ("median", "p90", "restore"):
            if want[name] is None:
                assert got[name] is None, (days, key, name)
            else:  # the histogram's documented bound (dashboard/rollup.py)
                error = abs(got[name].total_seconds() - want[name])
                assert error <= rollup.ERROR * (1 + want[name]) + 1e-6, (days, key, name)
    return expected


# --- a generated history -----------------------------------------------------------


def generated(rng: random.Random, n: int, pipeline: str, environment: str, days: int = 40,
              prefix: str = "") -> list[RunData]:
    now = timezone.now()
    runs = []
    for i in range(n):
        created = now - timedelta(seconds=rng.uniform(0, days * 86400))
        status = rng.choice([S] * 6 + [F] * 3 + [Status.CANCELLED, Status.WAITING])
        started = None if rng.random() < 0.1 else created + timedelta(seconds=rng.uniform(0, 300))
        finished = None
        if status in (S, F, Status.CANCELLED):
            finished = (started or created) + timedelta(seconds=rng.lognormvariate(5, 1.5))
            if finished > now:
                finished = now
            if rng.random() < 0.05:
                finished = None  # a provider that never says when it finished
        runs.append(RunData(
            external_id=f"{prefix}{pipeline}-{environment}-{i}", status=status,
            raw_status=status.value, locator={}, project=ProjectData("shop", "shop"),
            pipeline_name=pipeline, environment=EnvironmentData(environment, environment),
            created_at=created, started_at=started, finished_at=finished))
    return runs


def write_shuffled(rng, connection, runs, page=25):
    runs = list(runs)
    rng.shuffle(runs)  # out of order, as overlapping passes and webhooks deliver them
    for i in range(0, len(runs), page):
        sync.upsert_runs(connection, runs[i:i + page])


@pytest.fixture
def qovery_connection(db):
    return Connection.objects.create(provider="qovery", name="Qovery", base_url="http://127.0.0.1:9",
                                     token="x", scope={})


def test_every_figure_matches_a_brute_force_computation(client, viewer, buddy_connection,
                                                       qovery_connection):
    rng = random.Random(12)
    now = timezone.now()
    runs = {
        buddy_connection: [*generated(rng, 80, "deploy", "production"),
                           *generated(rng, 50, "deploy", "staging"),
                           *generated(rng, 40, "migrate", "production")],
        # The same names on another connection: another line, not merged into Buddy's.
        qovery_connection: generated(rng, 60, "deploy", "production"),
    }
    # Created 35 days ago, out of both windows, still running...
    late = RunData(external_id="late", status=Status.RUNNING, raw_status="running", locator={},
                   project=ProjectData("shop", "shop"), pipeline_name="deploy",
                   environment=EnvironmentData("production", "production"),
                   created_at=now - timedelta(days=35), started_at=now - timedelta(days=35))
    # ... and a run that failed, shown as such, then retried under the same id.
    retried = RunData(external_id="retried", status=F, raw_status="failed", locator={},
                      project=ProjectData("shop", "shop"), pipeline_name="deploy",
                      environment=EnvironmentData("staging", "staging"),
                      created_at=now - timedelta(days=3), started_at=now - timedelta(days=3),
                      finished_at=now - timedelta(days=3, minutes=-5))
    for connection, history in runs.items():
        write_shuffled(rng, connection, history)
    sync.upsert_runs(buddy_connection, [late, retried])
    client.force_login(viewer)
    assert_page_matches_reference(client, 7)
    assert_page_matches_reference(client, 30)

    # Later passes: the late run finishes yesterday (it counts then, where it finished),
    # the retried one runs again, then succeeds; some waiting runs end.
    sync.upsert_runs(buddy_connection, [
        replace(late, status=S, raw_status="succeeded", finished_at=now - timedelta(days=1),
                observed_at=timezone.now()),
        replace(retried, status=Status.RUNNING, raw_status="running", finished_at=None,
                observed_at=timezone.now()),
    ])
    assert_page_matches_reference(client, 30)
    sync.upsert_runs(buddy_connection, [
        replace(retried, status=S, raw_status="succeeded", finished_at=now - timedelta(hours=2),
                observed_at=timezone.now()),
    ])
    waiting = [r for r in runs[qovery_connection] if r.status == Status.WAITING]
    assert waiting
    write_shuffled(rng, qovery_connection, [
        replace(r, status=rng.choice([S, F]), raw_status="done",
                finished_at=now - timedelta(minutes=rng.uniform(0, 600)),
                observed_at=timezone.now()) for r in waiting])
    week = assert_page_matches_reference(client, 7)
    month = assert_page_matches_reference(client, 30)
    # The history has what the figures are about: restores, two environments, the late run.
    assert any(row["restore"] for row in month.values())
    assert {key[2] for key in week} == {"production", "staging"}
    assert Run.objects.get(external_id="late").created_at < now - timedelta(days=30)

    # The backfill computes the same rollup from the runs as the sync kept.
    def rollup_rows():
        return (sorted(TrendDay.objects.values_list("group__key", "day", "successes",
                                                    "failures", "failing_since")),
                sorted(TrendBucket.objects.values_list("group__key", "day", "restore",
                                                       "bucket", "count")))

    kept = rollup_rows()
    call_command("trends_rollup", stdout=io.StringIO())
    assert rollup_rows() == kept
    assert_page_matches_reference(client, 30)


def test_trends_per_pipeline_and_environment(client, viewer, buddy_connection):
    sync.upsert_runs(buddy_connection, [
        deployment(1, S, 200, 4),  # 8 days ago: only in the 30-day window
        deployment(2, S, 100, 2),
        deployment(3, F, 50, 10),
        deployment(4, F, 49, 10),
        deployment(5, S, 47, 6),  # restores: 3 h after the first failure ended
        deployment(6, S, 10, 8),
        deployment(7, S, 5, 3, environment="staging"),
        RunData(external_id="running", status=Status.RUNNING, raw_status="x", locator={},
                pipeline_name="deploy", environment=EnvironmentData("production", "production"),
                created_at=timezone.now()),
    ])
    client.force_login(viewer)
    response = client.get("/trends/")
    rows = {r["environment"]: r for r in response.context["rows"]}
    prod = rows["production"]
    assert (prod["deployments"], prod["success_rate"], prod["change_failure_rate"]) == (5, 60, 40)
    # Within the histogram's bound (2.2 % of 1 + seconds) of 8 min, 10 min, 2 h 56 min.
    assert abs(prod["median"].total_seconds() - 480) <= rollup.ERROR * 481
    assert abs(prod["p90"].total_seconds() - 600) <= rollup.ERROR * 601
    assert abs(prod["restore"].total_seconds() - (3 * 3600 - 4 * 60)) <= rollup.ERROR * 10561
    assert not prod["unrestored"]
    assert rows["staging"]["deployments"] == 1
    body = response.content.decode()
    assert '<svg class="spark"' in body
    assert '<rect class="bad"' in body and '<rect class="ok"' in body
    month = client.get("/trends/?days=30").context["rows"]
    assert {r["environment"]: r["deployments"] for r in month} == {"production": 6, "staging": 1}
    assert client.get("/trends/?days=nonsense").context["days"] == 7


def test_a_failure_not_yet_restored_is_flagged(client, viewer, buddy_connection):
    sync.upsert_runs(buddy_connection, [deployment(1, S, 20, 2), deployment(2, F, 10, 2)])
    client.force_login(viewer)
    [row] = client.get("/trends/").context["rows"]
    assert row["unrestored"] and row["restore"] is None
    assert b'status-failed">failing' in client.get("/trends/").content


def page_reads(client, path) -> tuple[int, int]:
    """Queries a page makes, and the rows they return, rendered afresh."""
    rows = []

    def counting(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.lstrip().upper().startswith("SELECT"):
            rows.append(context["cursor"].rowcount)
        return result

    cache.clear()
    with db.execute_wrapper(counting):
        assert client.get(path).status_code == 200
    return len(rows), sum(rows)


def test_the_page_reads_the_same_whatever_the_number_of_runs(client, viewer, buddy_connection):
    """What the page reads depends on the groups, the days and the duration buckets
    (dashboard/rollup.py), not on how many runs there are: five times as many runs on
    the same days, of the same durations, read the same rows in the same queries."""
    rng = random.Random(5)
    client.force_login(viewer)
    groups = [("deploy", "production"), ("deploy", "staging"), ("migrate", "production")]
    now = timezone.now()
    today = rollup.day_of(now)

    def runs(count: int, prefix: str) -> list[RunData]:
        return [deployment(f"{prefix}{day}-{i}", S, (now - rollup.day_start(
                    today - timedelta(days=day))).total_seconds() / 3600 - rng.uniform(0, 0.5),
                    minutes, environment, pipeline)
                for pipeline, environment in groups for day in range(30)
                for i, minutes in enumerate([0.2, 3, 12] * count)]

    sync.upsert_runs(buddy_connection, runs(1, ""))  # every day of the window, each duration
    small = page_reads(client, "/trends/?days=30")
    write_shuffled(rng, buddy_connection, runs(5, "more-"), page=300)
    assert Run.objects.count() == 6 * 3 * 30 * 3
    assert page_reads(client, "/trends/?days=30") == small
