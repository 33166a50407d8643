"""The cockpit at any number of runs. The releases matrix's cells, kept by the sync's
write path, must say what working them out from every run says (`releases.rebuild`),
through runs that finish, move environment or lose their success; the releases page and
the inbox must read the same few rows however many runs there are; the inbox's rows,
written in Python, escape what they show."""

import random
import re
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection as db
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dashboard import inbox, releases, sync
from dashboard.models import Connection, ReleaseCell, Run
from dashboard.secrets import UnreadableSecret
from providers.base import EnvironmentData, JobData, ProjectData, RunData, Status
from providers.simulators.workflows import WorkflowsSimulator

pytestmark = pytest.mark.django_db

S = Status.SUCCEEDED


def cells() -> set:
    return set(ReleaseCell.objects.values_list(
        "connection_id", "project_name", "pipeline_name", "column", "name", "position",
        "latest_run__version", "latest_step", "deployed_run__version"))


def rebuilt() -> set:
    """What the cells are when worked out from every run."""
    kept = cells()
    releases.rebuild()
    found = cells()
    assert found == kept, ("the cells the write path kept differ from the runs",
                           str(sorted(kept - found)), str(sorted(found - kept)))
    return found


def matrix(client) -> dict:
    """{(row, column): (deployed version, latest version, latest status)}"""
    page = client.get("/releases/").context
    return {(row["pipeline"] or row["project"], item["column"]["name"]): (
        (item["cell"]["deployed"] or {}).get("version"), item["cell"]["latest"]["version"],
        item["cell"]["latest"]["step_status"])
        for row in page["rows"] for item in row["line"] if item["cell"]}


@pytest.fixture
def viewer_client(viewer):
    client = Client()
    client.force_login(viewer)
    return client


def test_a_workflow_run_finishing_moves_the_cells_through_the_sync(clock, viewer_client):
    with WorkflowsSimulator(token="wf-token", clock=clock) as sim:
        connection = Connection.objects.create(
            provider="workflows", name="Rules", base_url=sim.url, token=sim.token,
            scope={"project": sim.project_id, "project_name": sim.project_name})
        old = sim.add_workflow_run(age=3000)  # deployed everywhere
        new = sim.add_workflow_run(age=30)  # past Development, deploying to Staging
        sync.sync_connection(connection.pk)
        v_old, v_new = old.data["release"]["version"], new.data["release"]["version"]
        assert matrix(viewer_client) == {
            ("Pricing rules", "Development"): (v_new, v_new, "succeeded"),
            ("Pricing rules", "Staging"): (v_old, v_new, "running"),
            ("Pricing rules", "Production"): (v_old, v_new, "queued"),
        }
        rebuilt()
        clock.advance(60)  # waiting for the production review now
        sync.sync_connection(connection.pk)
        assert matrix(viewer_client)[("Pricing rules", "Production")] == (
            v_old, v_new, "waiting")
        clock.advance(600)  # reviewed, deployed: finished
        sync.sync_connection(connection.pk)
        assert set(matrix(viewer_client).values()) == {(v_new, v_new, "succeeded")}
        assert [c["name"] for c in viewer_client.get("/releases/").context["columns"]] == [
            "Development", "Staging", "Production"]
        rebuilt()


def _run(external_id, version, env=None, status=S, age=60, steps=(), pipeline="api"):
    project = ProjectData("shop", "shop")
    return RunData(
        external_id=external_id, status=status, raw_status=status.value, locator={},
        name=f"Deploy {version}", version=version, pipeline_name=pipeline, project=project,
        environment=EnvironmentData(env, env, project) if env else None,
        created_at=timezone.now() - timedelta(seconds=age),
        jobs=[JobData(f"{external_id}-{i}", f"to {name}", st, st.value, order=i,
                      environment=EnvironmentData(name, name, project))
              for i, (name, st) in enumerate(steps)])


def test_a_run_moving_environment_gives_its_old_cell_back(buddy_connection, viewer_client):
    sync.upsert_runs(buddy_connection, [_run("a", "1.0", "staging", age=900),
                                        _run("b", "1.1", "staging", age=60)])
    assert matrix(viewer_client) == {("api", "staging"): ("1.1", "1.1", "succeeded")}
    # The provider now says run b went to production, not staging.
    sync.upsert_runs(buddy_connection, [_run("b", "1.1", "production", age=60)])
    assert matrix(viewer_client) == {("api", "staging"): ("1.0", "1.0", "succeeded"),
                                     ("api", "production"): ("1.1", "1.1", "succeeded")}
    rebuilt()


def test_a_success_taken_back_falls_back_to_the_one_before(buddy_connection, viewer_client):
    sync.upsert_runs(buddy_connection, [_run("a", "1.0", "staging", age=900),
                                        _run("b", "1.1", "staging", age=60)])
    sync.upsert_runs(buddy_connection, [_run("b", "1.1", "staging", Status.RUNNING, age=60)])
    assert matrix(viewer_client) == {("api", "staging"): ("1.0", "1.1", "running")}
    # Steps appear on the run: its own environment no longer counts, its steps do.
    sync.upsert_runs(buddy_connection, [_run("b", "1.1", "staging", Status.RUNNING, age=60,
                                             steps=[("qa", S)])])
    assert matrix(viewer_client) == {("api", "staging"): ("1.0", "1.0", "succeeded"),
                                     ("api", "qa"): ("1.1", "1.1", "succeeded")}
    rebuilt()


def test_the_cells_stay_what_the_runs_say_through_random_writes(buddy_connection):
    rng = random.Random(12)
    envs = ["dev", "staging", "production", "api · staging"]
    statuses = [S, S, Status.FAILED, Status.RUNNING, Status.WAITING]
    for round_ in range(30):
        page = []
        for _ in range(rng.randint(1, 4)):
            steps = ([(e, rng.choice(statuses)) for e in rng.sample(envs, rng.randint(1, 3))]
                     if rng.random() < 0.4 else ())
            page.append(_run(f"r{rng.randint(0, 12)}", f"1.{round_}", rng.choice([*envs, None]),
                             rng.choice(statuses), age=rng.randint(0, 5000), steps=steps,
                             pipeline=rng.choice(["api", "web"])))
        sync.upsert_runs(buddy_connection, page)
        rebuilt()
    assert len(cells()) > 5


def _rows_read(queries) -> int:
    """Rows the plans of these SELECTs read from the run and job tables (EXPLAIN ANALYZE),
    as PostgreSQL plans them for a large table."""
    total = 0

    def walk(node):
        nonlocal total
        if node.get("Relation Name") in ("dashboard_run", "dashboard_job"):
            total += node["Actual Rows"] * node["Actual Loops"]
        for child in node.get("Plans", []):
            walk(child)

    with db.cursor() as cursor:
        # The plans a large table gets (index lookups), not a small one's (read it whole).
        cursor.execute("ANALYZE dashboard_run, dashboard_job, dashboard_releasecell")
        for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
            cursor.execute(f"SET LOCAL {setting} = off")
        for query in queries:
            # A prepared statement's EXECUTE too (ANALYZE above made it plan afresh).
            if query["sql"].lstrip().startswith(("SELECT", "WITH", "EXECUTE")):
                cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query["sql"])
                walk(cursor.fetchone()[0][0]["Plan"])
    return total


def test_the_releases_page_reads_as_much_at_ten_times_the_runs(buddy_connection,
                                                                viewer_client):
    def load(start, stop):
        sync.upsert_runs(buddy_connection, [
            _run(f"r{n}", f"2.{n}", ["dev", "staging", "production"][n % 3],
                 [S, Status.FAILED][n % 2], age=10_000 - n,
                 steps=[("qa", S)] if n % 5 == 0 else ()) for n in range(start, stop)])

    def measure():
        from django.core.cache import cache
        cache.clear()
        with CaptureQueriesContext(db) as captured:
            releases.build()
        return len(captured), _rows_read(captured.captured_queries)

    load(0, 60)
    queries, _ = measure()
    load(60, 600)
    assert measure()[0] == queries
    # Each cell's runs (latest and deployed) and step, not the runs behind them.
    assert measure()[1] <= 3 * ReleaseCell.objects.count() < 60


def test_the_inbox_reads_one_page_at_ten_times_the_waiting_runs(buddy_connection, manager):
    """The inbox's page of waiting runs: one query (the runs with their connections), the
    same rows read with 60 or 600 runs waiting (their steps and newer runs looked up)."""
    from django.test import RequestFactory

    from dashboard import inbox

    def load(start, stop):
        sync.upsert_runs(buddy_connection, [
            _run(f"w{n}", f"3.{n}", ["dev", "staging"][n % 2], Status.WAITING,
                 age=10_000 - n, steps=[("qa", Status.WAITING)] if n % 3 == 0 else ())
            for n in range(start, stop)])

    def measure():
        request = RequestFactory().get("/inbox/")
        request.user = manager
        inbox.shows_actions(request)  # the permission, remembered: not the inbox's queries
        inbox._inbox_context(request)  # its statement, prepared once per connection
        with CaptureQueriesContext(db) as captured:
            context = inbox._inbox_context(request)
        assert len(context["rows"]) == 50
        return len(captured), _rows_read(captured.captured_queries)

    load(0, 60)
    queries, _ = measure()
    load(60, 600)
    count, rows = measure()
    assert count == queries == 1
    # The page (51 runs), a step and a newer run looked up for each: not all 600.
    assert 51 <= rows <= 51 * 4


def test_inbox_rows_escape_what_they_show(buddy_connection, manager, viewer):
    sync.upsert_runs(buddy_connection, [RunData(
        external_id="x", status=Status.WAITING, raw_status="x", locator={},
        name="<script>alert(1)</script>", version="1.0 & <b>", pipeline_name='"p" <q>',
        triggered_by="Ana <ana@example.com>", created_at=timezone.now(),
        jobs=[JobData("j", "<i>Approve</i>", Status.WAITING, "x")])])
    client = Client()
    client.force_login(manager)
    body = client.get("/inbox/").content.decode()
    assert "<script>alert" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<code>1.0 &amp; &lt;b&gt;</code>" in body
    assert "&quot;p&quot; &lt;q&gt;" in body and "· &lt;i&gt;Approve&lt;/i&gt;" in body
    assert "Ana &lt;ana@example.com&gt;" in body
    assert body.count('name="csrfmiddlewaretoken"') >= 2  # approve and reject forms
    run = buddy_connection.runs.get()
    assert f'action="/inbox/{run.pk}/approve/"' in body
    assert f'action="/inbox/{run.pk}/reject/"' in body
    viewer_client = Client()
    viewer_client.force_login(viewer)
    assert "Release managers decide." in viewer_client.get("/inbox/").content.decode()


def test_inbox_rows_escape_where_they_wait_and_why_not(buddy_connection, manager):
    """What the inbox's own query reads besides the run: project, environment and
    connection names, the refusal that names the connection, the provider's link."""
    project = ProjectData("p", "<u>shop</u>")
    old_key = Connection.objects.create(provider="buddy", name="<b>Old</b> & key",
                                        base_url="http://127.0.0.1:9", token="t", scope={})
    Connection.objects.filter(pk=old_key.pk).update(token=UnreadableSecret("not a token"))
    sync.upsert_runs(old_key, [RunData(
        external_id="x", status=Status.WAITING, raw_status="x", locator={}, name="Deploy",
        project=project, environment=EnvironmentData("e", "<s>prod</s>", project),
        web_url='https://app.example/?a=1&b="2"', created_at=timezone.now())])
    client = Client()
    client.force_login(manager)
    body = client.get("/inbox/").content.decode()
    assert "<u>" not in body and "<s>" not in body and "<b>Old" not in body
    assert ("Buddy.works · &lt;b&gt;Old&lt;/b&gt; &amp; key · &lt;u&gt;shop&lt;/u&gt;"
            " · <strong>&lt;s&gt;prod&lt;/s&gt;</strong>") in body
    assert '<span class="why">&lt;b&gt;Old&lt;/b&gt; &amp; key: Token unreadable' in body
    assert 'href="https://app.example/?a=1&amp;b=&quot;2&quot;"' in body


def _said(run, user) -> tuple:
    """What the inbox says of a run, from its own query or from `waiting()` and `prepare`
    (models: their project and environment)."""
    row = inbox.describe(run, user)
    if isinstance(run, inbox.Waiting):
        where = (run.project_name, run.environment)
    else:
        where = (run.project.name if run.project else None,
                 run.environment.name if run.environment else None)
    return (run.pk, str(run), run.connection.pk, run.connection.name, run.connection.provider,
            run.connection.token_readable, run.raw_status, run.pipeline_name, run.web_url,
            run.triggered_by, *where, row["step"], row["since"], row["release"],
            row["refusal"], row["reject_kind"], run.variables,
            # Asked (by refusal) only where the provider acts on environments.
            run.superseded if run.connection.provider_class.acts_on_environment else None)


def test_the_inbox_query_says_what_the_orm_and_prepare_say(buddy_connection, manager,
                                                          settings):
    """The inbox's page read by SQL of its own says of every run what `waiting()` with
    `prepare` says (the bulk approve still reads that way): its first waiting step, since
    when it waits, whether a newer run replaced it, the variables it asks for, why it
    cannot be approved; oldest first, a later page too."""
    settings.RUNBOARD_SEPARATION_OF_DUTIES = True
    manager.first_name, manager.last_name = "Mike", "Benson"
    manager.save()
    now = timezone.now()

    def connect(provider, name):
        return Connection.objects.create(provider=provider, name=name, scope={},
                                         base_url="http://127.0.0.1:9", token="t")

    def waiting(external_id, age, **fields):
        return RunData(external_id=external_id, status=Status.WAITING,
                       raw_status=fields.pop("raw_status", "waiting"), locator={},
                       name=f"Deploy {external_id}", version=fields.pop("version", external_id),
                       created_at=now - timedelta(seconds=age), **fields)

    project = ProjectData("shop", "shop")
    production = EnvironmentData("production", "production", project)
    asks = "WAITING_FOR_VARIABLES"
    sync.upsert_runs(buddy_connection, [
        waiting("steps", 900, project=project, environment=production,
                pipeline_name="web", triggered_by="Ana", started_at=now - timedelta(seconds=890),
                jobs=[JobData("1", "build", Status.SUCCEEDED, "ok", order=1),
                      JobData("3", "second gate", Status.WAITING, "w", order=3),
                      JobData("2", "approve", Status.WAITING, "w", order=2,
                              started_at=now - timedelta(seconds=800))]),
        RunData(external_id="later", status=Status.RUNNING, raw_status="RUNNING", locator={},
                environment=production, created_at=now - timedelta(seconds=880),
                started_at=now - timedelta(seconds=880)),  # replaces "steps", which Buddy
        waiting("mine", 850, triggered_by="mike benson", version="2.0"),  # may approve
        waiting("vars", 800, raw_status=asks, version="2.0", raw={"status": asks, "variables": [
            {"key": "NOTES", "value": "<x>", "description": "why", "settable": True}]}),
        waiting("vt", 750, raw_status="WAITING_FOR_VT_SESSION", commit="c0ffee"),
        waiting("nowhen", 0),
    ])
    qovery = connect("qovery", "Qovery")
    sync.upsert_runs(qovery, [
        waiting("replaced", 700, environment=production,
                started_at=now - timedelta(seconds=690)),
        RunData(external_id="newer", status=Status.RUNNING, raw_status="DEPLOYING", locator={},
                environment=production, created_at=now - timedelta(seconds=60),
                started_at=now - timedelta(seconds=60)),
        waiting("queued", 30, environment=production),  # not started: replaces nothing
        waiting("alone", 500, environment=EnvironmentData("staging", "staging", project),
                started_at=now - timedelta(seconds=500)),  # its environment's newest
    ])
    sync.upsert_runs(connect("northflank", "Northflank"), [waiting("nf", 650)])
    old_key = connect("buddy", "Buddy old key")
    Connection.objects.filter(pk=old_key.pk).update(token=UnreadableSecret("not a token"))
    sync.upsert_runs(old_key, [waiting("unreadable", 600)])
    Run.objects.filter(external_id="nowhen").update(created_at=None)  # the sync fills it in

    orm = list(inbox.waiting()[:51])
    inbox.prepare(orm)
    ours = inbox.waiting_runs(0, 51)
    assert [_said(run, manager) for run in ours] == [_said(run, manager) for run in orm]
    said = {run.external_id: inbox.describe(run, manager) for run in ours}
    # Every branch taken.
    assert (said["steps"]["step"], said["steps"]["since"]) == (
        "approve", now - timedelta(seconds=800))
    assert "separation of duties" in said["mine"]["refusal"]
    assert said["vars"]["run"].variables == [
        {"key": "NOTES", "value": "<x>", "description": "why"}]
    assert "visual-test session" in said["vt"]["refusal"]
    assert said["nowhen"]["since"] is None and list(said)[-1] == "nowhen"
    assert [said[key]["run"].superseded for key in ("replaced", "queued", "alone")] == [
        True, False, False]
    assert "does not support approve" in said["nf"]["refusal"]
    assert "Token unreadable" in said["unreadable"]["refusal"]
    # A later page (not a prepared statement) likewise.
    later = list(inbox.waiting()[3:6])
    inbox.prepare(later)
    assert ([_said(run, manager) for run in inbox.waiting_runs(3, 3)]
            == [_said(run, manager) for run in later])


def test_a_token_that_cannot_be_read_shows_in_the_inbox_once_it_changes(buddy_connection,
                                                                         manager, settings):
    """Whether a token decrypts is remembered per stored value and keys: a token written
    over, entered again, or a SECRET_KEY changed without the old one as a fallback, each
    shows on the page rendered next."""
    sync.upsert_runs(buddy_connection, [RunData(
        external_id="w", status=Status.WAITING, raw_status="w", locator={}, name="Deploy",
        created_at=timezone.now())])
    client = Client()
    client.force_login(manager)

    def decide():
        cache.clear()  # the page as the first viewer after a change gets it
        body = client.get("/inbox/").content.decode()
        return re.search(r'class="decide">(.*?)</td>', body).group(1)

    assert ">Approve</button>" in decide()
    Connection.objects.filter(pk=buddy_connection.pk).update(
        token=UnreadableSecret("not a token"))
    assert "Token unreadable" in decide()
    buddy_connection.token = "entered again"
    buddy_connection.save()
    assert ">Approve</button>" in decide()
    settings.SECRET_KEY = "another secret key, not the one the token was encrypted with"
    client.force_login(manager)  # the session was signed with the old key
    assert "Token unreadable" in decide()
