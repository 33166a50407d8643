"""The cockpit: attention counts, the approval inbox (bulk approve, separation of duties),
the releases matrix, honest reasons on run pages, and the day-of-use fixes (server side)."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from dashboard import actions, sync
from dashboard.models import ActionRecord, ApiToken, Connection, Run
from providers.base import EnvironmentData, JobData, ProjectData, RunData, Status
from providers.simulators.base import Phase
from providers.simulators.buddy import DEPLOY_PLAN, FAILING_PLAN, VARIABLES_PLAN, BuddySimulator
from providers.simulators.northflank import APPROVAL_PLAN, NorthflankSimulator

pytestmark = pytest.mark.django_db

RELEASE = "c0ffee".ljust(40, "0")  # one commit, deployed by several pipelines


def applies(sim):
    return [path for method, path, body in sim.requests
            if method == "PATCH" and isinstance(body, dict) and body.get("operation") == "APPLY"]


@pytest.fixture
def second_buddy(clock):
    with BuddySimulator(token="buddy-two-token", clock=clock) as sim:
        sim.add_pipeline("billing", 7, "Deploy billing")
        yield sim


@pytest.fixture
def northflank(clock):
    with NorthflankSimulator(token="nf-cockpit-token", clock=clock) as sim:
        yield sim


def connect(sim, provider, name, scope):
    return Connection.objects.create(provider=provider, name=name, base_url=sim.url,
                                     token=sim.token, scope=scope)


@pytest.fixture
def waiting_everywhere(clock, buddy_sim, buddy_connection, second_buddy, northflank):
    """Release RELEASE waits for approval in two Buddy workspaces; a Northflank release
    flow waits for approval too (which only Northflank's UI can give)."""
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN, age=300, revision=RELEASE,
                            creator="Mike Benson")
    second_buddy.add_execution("billing", 7, DEPLOY_PLAN, age=200, revision=RELEASE,
                               creator="Ana Lima")
    northflank.add_release("web", "production", APPROVAL_PLAN, age=40, author="kofi-mensah")
    clock.advance(30)
    other = connect(second_buddy, "buddy", "Buddy billing", {"workspace": second_buddy.workspace})
    nf = connect(northflank, "northflank", "Northflank", {"project": northflank.project})
    for connection in (buddy_connection, other, nf):
        sync.sync_connection(connection.pk)
    assert Run.objects.filter(status=Status.WAITING).count() == 3
    return {"buddy": buddy_connection, "billing": other, "northflank": nf}


def as_user(user):
    client = Client()
    client.force_login(user)
    return client


# -- the inbox -------------------------------------------------------------------------


def test_inbox_lists_every_waiting_run_oldest_first_with_why_not(manager, waiting_everywhere):
    response = as_user(manager).get("/inbox/")
    rows = response.context["rows"]
    assert [r["run"].connection.name for r in rows] == ["Buddy", "Buddy billing", "Northflank"]
    assert [r["run"].triggered_by for r in rows[:2]] == ["Mike Benson", "Ana Lima"]
    assert [bool(r["refusal"]) for r in rows] == [False, False, True]
    assert "no endpoint to approve a run waiting for approval" in rows[2]["refusal"]
    body = response.content.decode()
    assert body.count('action="/inbox/') == 4  # approve + reject for each Buddy run
    assert "Reject (cancels)" in body  # Buddy refuses a run by cancelling it
    assert "approve it everywhere (2 Runboard can approve)" in body


def test_the_inbox_asks_for_the_variables_a_run_waits_for(manager, buddy_sim,
                                                          buddy_connection):
    sim_run = buddy_sim.add_execution("web-shop", 1, VARIABLES_PLAN)
    buddy_sim.advance(30)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get(status=Status.WAITING)
    client = as_user(manager)
    page = client.get("/inbox/").content.decode()
    assert 'name="var:RELEASE_NOTES" value=""' in page
    assert 'name="var:MIGRATE" value="yes"' in page  # the pipeline's default, offered

    client.post(f"/inbox/{run.pk}/approve/", {"var:RELEASE_NOTES": "Fixes the login",
                                              "var:MIGRATE": "yes", "comment": "go"})
    assert sim_run.data["applied_variables"] == {"RELEASE_NOTES": "Fixes the login",
                                                 "MIGRATE": "yes"}
    record = ActionRecord.objects.get(run=run)
    assert (record.state, record.options) == (
        "succeeded", {"variables": ["MIGRATE", "RELEASE_NOTES"]})


def test_reject_from_the_inbox_needs_a_comment(manager, waiting_everywhere, buddy_sim):
    run = Run.objects.get(connection=waiting_everywhere["buddy"])
    client = as_user(manager)
    response = client.post(f"/inbox/{run.pk}/reject/", {"comment": "  "}, follow=True)
    assert "a comment is required to reject" in response.content.decode()
    assert not ActionRecord.objects.exists()
    client.post(f"/inbox/{run.pk}/reject/", {"comment": "wrong build"})
    record = ActionRecord.objects.get()
    assert (record.kind, record.comment, record.state) == ("cancel", "wrong build", "succeeded")


def test_viewer_cannot_act_from_the_inbox(viewer, waiting_everywhere, buddy_sim):
    run = Run.objects.get(connection=waiting_everywhere["buddy"])
    client = as_user(viewer)
    assert b"Release managers decide" in client.get("/inbox/").content
    assert client.post(f"/inbox/{run.pk}/approve/").status_code == 403
    assert client.post("/inbox/release/", {"release": RELEASE[:12],
                                           "run": [run.pk]}).status_code == 403
    assert applies(buddy_sim) == [] and not ActionRecord.objects.exists()


def test_bulk_approve_a_release_one_call_and_record_each(manager, waiting_everywhere,
                                                         buddy_sim, second_buddy):
    client = as_user(manager)
    release = RELEASE[:12]
    confirm = client.get(f"/inbox/release/?release={release}")
    assert confirm.status_code == 200
    ids = [row["run"].pk for row in confirm.context["approvable"]]
    assert len(ids) == 2 and not applies(buddy_sim)  # the GET only asks
    done = client.post("/inbox/release/", {"release": release, "run": ids, "comment": "go"})
    assert [r["ok"] for r in done.context["results"]] == [True, True]
    assert len(applies(buddy_sim)) == 1 and len(applies(second_buddy)) == 1
    records = ActionRecord.objects.order_by("id")
    assert [(r.run.connection.name, r.kind, r.state, r.comment) for r in records] == [
        ("Buddy", "approve", "succeeded", "go"), ("Buddy billing", "approve", "succeeded", "go")]
    assert set(Run.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"running"}


def test_bulk_approve_approves_only_what_was_ticked(manager, waiting_everywhere, buddy_sim,
                                                   second_buddy):
    run = Run.objects.get(connection=waiting_everywhere["billing"])
    as_user(manager).post("/inbox/release/", {"release": RELEASE[:12], "run": [run.pk]})
    assert applies(buddy_sim) == [] and len(applies(second_buddy)) == 1


@pytest.fixture
def sod(settings):
    settings.RUNBOARD_SEPARATION_OF_DUTIES = True


def test_separation_of_duties_in_every_entry_point(sod, settings, waiting_everywhere,
                                                  buddy_sim):
    mike = User.objects.create_user("mike", first_name="Mike", last_name="Benson")
    from dashboard.models import release_managers_group
    mike.groups.add(release_managers_group())
    run = Run.objects.get(connection=waiting_everywhere["buddy"])
    client = as_user(mike)
    inbox = client.get("/inbox/").context["rows"]
    assert "separation of duties" in inbox[0]["refusal"]
    assert inbox[1]["refusal"] is None  # Ana triggered that one
    assert b"separation of duties" in client.get(f"/runs/{run.pk}/").content
    client.post(f"/inbox/{run.pk}/approve/")
    client.post(f"/runs/{run.pk}/approve/")
    _, key = ApiToken.issue(mike, "bot")
    api = Client().post(f"/api/runs/{run.pk}/approve/", content_type="application/json",
                        headers={"Authorization": f"Bearer {key}"})
    assert api.status_code == 409 and "separation of duties" in api.json()["error"]
    assert applies(buddy_sim) == []
    assert ActionRecord.objects.filter(state="failed").count() == 3
    settings.RUNBOARD_SEPARATION_OF_DUTIES = False  # the setting, not a rule: off, it may
    actions.perform(run, mike, "approve")
    assert len(applies(buddy_sim)) == 1


# -- attention -------------------------------------------------------------------------


def test_attention_counts_and_title(viewer, buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN, age=300)
    buddy_sim.add_execution("web-shop", 1, FAILING_PLAN, age=300)
    sync.sync_connection(buddy_connection.pk)
    client = as_user(viewer)
    body = client.get("/runs/").content.decode()
    assert "<title>(2) Runs · Runboard</title>" in body
    assert '<strong>1</strong> waiting for a person' in body
    assert '<strong>1</strong> failed in 24 h' in body
    assert 'href="/runs/?group=failed&amp;range=24h"' in body
    strip = client.get("/attention/", headers={"HX-Request": "true"})
    version = strip.context["attention"]["version"]
    assert client.get(f"/attention/?v={version}",
                      headers={"HX-Request": "true"}).status_code == 204
    Connection.objects.filter(pk=buddy_connection.pk).update(
        last_success_at=timezone.now() - timedelta(hours=1), last_error="timeout",
        updated_at=timezone.now())  # as the sync writes it
    from dashboard.models import data_changed
    data_changed()
    fresh = client.get(f"/attention/?v={version}", headers={"HX-Request": "true"})
    assert fresh.status_code == 200 and fresh.context["attention"]["stale"] == 1


# -- releases --------------------------------------------------------------------------


def _ago(seconds):
    return timezone.now() - timedelta(seconds=seconds)


def _workflow_run(external_id, version, statuses, age):
    project = ProjectData("shop", "shop")
    names = ["Development", "Staging", "Production"]
    jobs = [JobData(f"{external_id}-{i}", f"Deploy to {name}", status, status.value, order=i,
                    environment=EnvironmentData(name.lower(), name, project))
            for i, (name, status) in enumerate(zip(names, statuses, strict=False))]
    overall = Status.SUCCEEDED if all(s == Status.SUCCEEDED for s in statuses) else (
        next(s for s in statuses if s != Status.SUCCEEDED))
    return RunData(external_id=external_id, status=overall, raw_status=overall.value,
                   locator={}, name=f"Release {version}", version=version,
                   pipeline_name="checkout", project=project,
                   environment=jobs[-1].environment, created_at=_ago(age), jobs=jobs)


def test_releases_matrix_from_step_environments(viewer, buddy_connection):
    S, W = Status.SUCCEEDED, Status.WAITING
    sync.upsert_runs(buddy_connection, [
        _workflow_run("r1", "1.0.0", [S, S, S], 900),
        _workflow_run("r2", "1.1.0", [S, W, Status.QUEUED], 60),
    ])
    client = as_user(viewer)
    response = client.get("/releases/")
    assert [c["name"] for c in response.context["columns"]] == [
        "Development", "Staging", "Production"]  # the steps' order, not the alphabet
    [row] = response.context["rows"]
    cells = {c["column"]["name"]: c["cell"] for c in row["line"]}
    assert cells["Development"]["deployed"]["version"] == "1.1.0"
    assert cells["Staging"]["deployed"]["version"] == "1.0.0"
    assert (cells["Staging"]["latest"]["version"], cells["Staging"]["latest"]["step_status"]) == (
        "1.1.0", "waiting")
    assert cells["Production"]["deployed"]["version"] == "1.0.0"
    where = client.get("/releases/?q=1.1.0")
    assert [(p["environment"], p["state"]) for p in where.context["places"]] == [
        ("Development", "deployed"), ("Staging", "waiting"), ("Production", "queued")]
    assert b"is in no environment now" in client.get("/releases/?q=9.9.9").content



def test_releases_matrix_reaches_runs_beyond_the_window(viewer, buddy_connection):
    prod = EnvironmentData("prod", "production", ProjectData("api", "api"))
    sync.upsert_runs(buddy_connection, [
        RunData(external_id="old", status=Status.SUCCEEDED, raw_status="x", locator={},
                version="0.9.0", environment=prod, project=prod.project, created_at=_ago(999)),
        *[RunData(external_id=f"n{i}", status=Status.FAILED, raw_status="x", locator={},
                  version="1.0.0", pipeline_name="other", created_at=_ago(10 + i))
          for i in range(3)],
    ])
    [row] = as_user(viewer).get("/releases/").context["rows"]
    assert row["line"][0]["cell"]["deployed"]["version"] == "0.9.0"


# -- honest actions on the run page --------------------------------------------------------


def test_run_page_says_why_northflank_cannot_approve(manager, waiting_everywhere):
    run = Run.objects.get(connection=waiting_everywhere["northflank"])
    body = as_user(manager).get(f"/runs/{run.pk}/").content.decode()
    assert 'class="why"' in body
    assert "Northflank does not support approve: Northflank&#x27;s API has no endpoint" in body
    assert ">Approve</button>" not in body


def test_run_page_says_why_a_visual_test_wait_is_not_approvable(manager, buddy_sim,
                                                               buddy_connection):
    buddy_sim.add_execution("web-shop", 1, [Phase("WAITING_FOR_VT_SESSION", None)])
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    assert run.status == Status.WAITING
    body = as_user(manager).get(f"/runs/{run.pk}/").content.decode()
    assert "visual-test session" in body
    assert 'href="https://app.buddy.works/' in body
    assert ">Approve</button>" not in body
    with pytest.raises(actions.ActionRefused, match="visual-test session"):
        actions.perform(run, manager, "approve")
    assert applies(buddy_sim) == []


@pytest.fixture
def qovery_world(clock):
    from providers.simulators.qovery import QoverySimulator
    with QoverySimulator(token="qovery-cockpit-token", clock=clock) as sim:
        org = sim.add_organization("Acme")
        project = sim.add_project(org, "storefront")
        yield sim, org, sim.add_environment(project, "production")


def test_retry_links_the_new_run_and_the_old_says_why(manager, qovery_world):
    from providers.simulators.qovery import DEPLOY_FAILS_PLAN
    sim, org, production = qovery_world
    sim.add_deployment(production, DEPLOY_FAILS_PLAN, age=600)
    connection = connect(sim, "qovery", "Qovery", {"organization": org})
    sync.sync_connection(connection.pk)
    old = Run.objects.get()
    actions.perform(old, manager, "retry")
    new = Run.objects.exclude(pk=old.pk).get()
    body = as_user(manager).get(f"/runs/{old.pk}/").content.decode()
    assert f'started a new run: <a href="/runs/{new.pk}/">' in body
    assert "A newer run exists in production" in body
    assert f'<a href="/runs/{new.pk}/">Go to the current run</a>' in body
    assert "Run is now queued (provider status DEPLOYMENT_QUEUED); new run" in body
    assert '{"status"' not in body  # the answer is words, not JSON


# -- the fixes ----------------------------------------------------------------------------


def test_an_ended_session_redirects_a_live_page_to_login(client, buddy_connection):
    response = client.get("/runs/?v=1&p=x", headers={
        "HX-Request": "true", "HX-Current-URL": "http://testserver/runs/?group=failed"})
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/accounts/login/?next=/runs/%3Fgroup%3Dfailed"
    assert response.content == b""
    plain = client.get("/runs/")  # a plain request keeps the ordinary redirect
    assert plain.status_code == 302 and "HX-Redirect" not in plain


def test_history_has_headers_and_readable_answers(manager, buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    actions.perform(run, manager, "cancel", comment="stop")
    client = as_user(manager)
    body = client.get(f"/runs/{run.pk}/").content.decode()
    assert "<th>Who</th><th>Action</th><th>Comment</th><th>Result</th>" in body
    assert "Run is now cancelling (provider status TERMINATING)" in body
    assert '<dd class="cancelled-by">manager from Runboard: stop</dd>' in body
    assert "&quot;normalized&quot;" not in body
    audit = client.get("/audit/").content.decode()
    assert "Run is now cancelling" in audit and "&quot;normalized&quot;" not in audit


def test_run_page_shows_start_duration_and_step_durations(viewer, buddy_connection):
    start = _ago(600)
    sync.upsert_runs(buddy_connection, [RunData(
        external_id="d", status=Status.SUCCEEDED, raw_status="x", locator={},
        created_at=start, started_at=start, finished_at=start + timedelta(seconds=185),
        jobs=[JobData("a", "Build", Status.SUCCEEDED, "x", started_at=start,
                      finished_at=start + timedelta(seconds=65)),
              JobData("b", "Deploy", Status.SUCCEEDED, "x", order=1,
                      started_at=start + timedelta(seconds=65),
                      finished_at=start + timedelta(seconds=185))])])
    body = as_user(viewer).get(f"/runs/{Run.objects.get().pk}/").content.decode()
    assert "<dt>Started</dt>" in body
    assert '<dd class="run-duration">3m 5s</dd>' in body
    assert '<span class="muted step-time">1m 5s</span>' in body
    assert '<span class="muted step-time">2m 0s</span>' in body


def test_force_cancel_form_carries_a_forcing_question(manager, clock):
    from providers.simulators.qovery import QoverySimulator
    with QoverySimulator(token="q", clock=clock) as sim:
        org = sim.add_organization("Acme")
        env = sim.add_environment(sim.add_project(org, "shop"), "production")
        sim.add_deployment(env, age=10)
        connection = connect(sim, "qovery", "Qovery", {"organization": org})
        sync.sync_connection(connection.pk)
        body = as_user(manager).get(f"/runs/{Run.objects.get().pk}/").content.decode()
    assert 'data-confirm-force="FORCE cancel' in body


def test_admin_is_branded_and_the_favicon_is_served(client, db):
    admin = User.objects.create_superuser("root", password="x")
    client.force_login(admin)
    body = client.get("/admin/").content.decode()
    assert "<title>Set-up: connections, users and release managers | Runboard</title>" in body
    assert "Runboard administration" in body
    page = client.get("/runs/").content.decode()
    assert 'rel="icon"' in page and "favicon.svg" in page
    from django.contrib.staticfiles import finders
    assert finders.find("favicon.svg") and finders.find("favicon-alert.svg")


def test_collapsed_filters_open_when_one_is_set(viewer, db):
    client = as_user(viewer)
    closed = client.get("/runs/").content.decode()
    assert '<details class="more-filters">' in closed
    opened = client.get("/runs/?group=failed").content.decode()
    assert '<details class="more-filters" open>' in opened and "(1 on)" in opened



def test_stages_named_after_their_pipeline_share_a_column(viewer, buddy_connection):
    """Northflank names a stage's environment "<pipeline> · <stage>"."""
    sync.upsert_runs(buddy_connection, [
        RunData(external_id=p, status=Status.SUCCEEDED, raw_status="x", locator={},
                version=f"{p}-1", pipeline_name=p, created_at=_ago(60),
                environment=EnvironmentData(f"{p}-staging", f"{p} · staging"))
        for p in ("api", "web")])
    response = as_user(viewer).get("/releases/")
    assert [c["name"] for c in response.context["columns"]] == ["staging"]
    assert [r["line"][0]["cell"]["deployed"]["version"] for r in response.context["rows"]] == [
        "api-1", "web-1"]


def test_cached_pages_carry_each_users_own_csrf_token(manager, waiting_everywhere, buddy_sim,
                                                      second_buddy):
    """The inbox and run pages are rendered once per data version, but every viewer's
    forms carry their own CSRF token (a shared one would be refused)."""
    import re as regex

    other = User.objects.create_user("other-manager", password="x")
    from dashboard.models import release_managers_group
    other.groups.add(release_managers_group())
    sent = []
    for user, connection in ((manager, "buddy"), (other, "billing")):
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        run = Run.objects.get(connection=waiting_everywhere[connection])
        for path in ("/inbox/", f"/runs/{run.pk}/"):
            body = client.get(path).content.decode()
            assert "runboard-csrf-token-goes-here" not in body
        token = regex.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1)
        sent.append(token)
        response = client.post(f"/inbox/{run.pk}/approve/", {"csrfmiddlewaretoken": token})
        assert response.status_code == 302
    assert sent[0] != sent[1]
    assert len(applies(buddy_sim)) == 1 and len(applies(second_buddy)) == 1
