"""Northflank as its public API reference describes it.

tests/fixtures/northflank/ holds what was extracted from Northflank's public API reference
pages: each endpoint's example response (`<endpoint>.json`) and, in `reference.json`, the
documented fields, types and enums as JSON Schemas plus the documented limits. The
simulator's answers are validated against those schemas; the client is fed the examples.
"""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest

from dashboard import actions, sync
from dashboard.models import ActionRecord, Connection, Run
from providers.base import Action, NotFound, RateLimited, Status
from providers.northflank import STATUS_MAP, NorthflankProvider, pipeline_stages
from providers.simulators.base import Phase
from providers.simulators.northflank import (
    APPROVAL_PLAN,
    FAILING_PLAN,
    RELEASE_PLAN,
    WORKFLOW_PLAN,
    NorthflankSimulator,
)

FIXTURES = Path(__file__).parent / "fixtures" / "northflank"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
SCHEMAS = REFERENCE["schemas"]
EXAMPLES = sorted(p.stem for p in FIXTURES.glob("*.json") if p.stem != "reference")
EXPECTED = {
    "pending": Status.QUEUED, "queued": Status.QUEUED,
    "running": Status.RUNNING, "retrying": Status.RUNNING, "async_wait": Status.RUNNING,
    "waiting": Status.RUNNING, "approval_wait": Status.WAITING,
    "success": Status.SUCCEEDED, "failure": Status.FAILED,
    "aborting": Status.CANCELLING, "aborted": Status.CANCELLED,
    "skipped": Status.SKIPPED, "unknown": Status.UNKNOWN,
}
FINAL = {"success", "failure", "aborted", "skipped"}


def example(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture
def sim(clock):
    with NorthflankSimulator(token="nf-ref-token", clock=clock) as sim:
        sim.add_pipeline("web", "Web shop")
        yield sim


def connect(sim, scope=None):
    return NorthflankProvider(sim.url, sim.token, scope or {"project": "shop"}, timeout=2)


# -- the fixtures themselves ------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_reference_example_fits_the_documented_schema(name):
    jsonschema.validate(example(name), SCHEMAS[name])


def test_the_expected_map_covers_exactly_the_documented_statuses():
    assert set(EXPECTED) == set(REFERENCE["run_status"]) == set(STATUS_MAP)


# -- the client fed the reference's own examples -------------------------------------------


class ReplayServer:
    """Serves the reference's example answers on loopback, at the documented paths of the
    examples' own ids (default-project, example-pipeline, example-workflow)."""

    def __init__(self):
        project = "/v1/projects/default-project"
        run = "110ddb52-bdcd-482d-8ac2-05ba580afe2f"
        flow = f"{project}/pipelines/example-pipeline/release-flows/production/runs"
        self.answers = {
            ("GET", f"{project}/pipelines"): "list_pipelines",
            ("GET", f"{project}/pipelines/example-pipeline"): "get_pipeline",
            ("GET", flow): "list_release_flow_runs",
            ("GET", f"{flow}/{run}"): "get_release_flow_run",
            ("GET", f"{project}/workflows"): "list_workflows",
            ("GET", f"{project}/workflows/example-workflow/runs"): "list_workflow_runs",
            ("GET", f"{project}/workflows/example-workflow/runs/{run}"): "get_workflow_run",
            ("POST", f"{project}/workflows/example-workflow/runs/{run}/abort"):
                "abort_workflow_run",
        }
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                path = urlsplit(self.path).path
                server.requests.append((self.command, path))
                name = server.answers.get((self.command, path))
                status = 200 if name else 404
                body = json.dumps(example(name) if name else {
                    "error": {"status": 404, "message": "Not found", "id": "x"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def replay():
    server = ReplayServer()
    yield server
    server.close()


def test_the_client_lists_the_documented_examples_and_only_the_reported_stage(replay):
    with NorthflankProvider(replay.url, "t", {"project": "default-project"}) as client:
        runs = [run for page in client.list_runs() for run in page]
        found = client.discover()
    assert [(r.external_id, r.status, r.name) for r in runs] == [
        ("example-pipeline/production/110ddb52-bdcd-482d-8ac2-05ba580afe2f",
         Status.SUCCEEDED, "Example run"),
        ("workflow:example-workflow/110ddb52-bdcd-482d-8ac2-05ba580afe2f",
         Status.SUCCEEDED, "Example run"),
    ]
    assert runs[1].pipeline_name == "Example Template"
    assert [e.external_id for e in found.environments] == [
        "example-pipeline/production", "workflow:example-workflow"]
    # The example pipeline reports one stage (Production): no other stage is asked for.
    assert not [p for _, p in replay.requests if "/release-flows/development" in p
                or "/release-flows/staging" in p]
    # Every request was one the reference documents an answer for (none answered 404).
    assert replay.requests and all(r in replay.answers for r in replay.requests)


def test_the_client_reads_and_aborts_a_documented_workflow_run(replay):
    locator = {"workflow": "example-workflow", "id": "110ddb52-bdcd-482d-8ac2-05ba580afe2f"}
    with NorthflankProvider(replay.url, "t", {"project": "default-project"}) as client:
        got = client.get_run(locator)
        aborted = client.cancel(locator)
    assert (got.status, got.raw["spec"]["kind"]) == (Status.SUCCEEDED, "Workflow")
    assert got.created_at.isoformat() == "2021-01-01T12:00:00+00:00"
    assert aborted.locator == locator


def test_stages_are_read_from_the_pipeline_whatever_the_item_shape():
    assert pipeline_stages(example("get_pipeline")["data"]) == ("production",)
    assert pipeline_stages({"stages": ["Staging", "Production"]}) == ("staging", "production")
    assert pipeline_stages({"stages": [{"name": "Development"}, {"id": "production"}],
                            "nfObjects": [{"id": "x", "type": "job", "stage": "Staging"}]}
                           ) == ("development", "staging", "production")
    assert pipeline_stages({"name": "empty"}) == ()


# -- the simulator answers exactly as documented -----------------------------------------

ROUTES = [
    ("GET", r"/pipelines$", "list_pipelines"),
    ("GET", r"/pipelines/[^/]+$", "get_pipeline"),
    ("GET", r"/release-flows/[^/]+/runs$", "list_release_flow_runs"),
    ("POST", r"/release-flows/[^/]+/runs$", "get_release_flow_run"),  # see below
    ("GET", r"/release-flows/[^/]+/runs/[^/]+$", "get_release_flow_run"),
    ("POST", r"/release-flows/[^/]+/runs/[^/]+/abort$", "abort_release_flow_run"),
    ("GET", r"/workflows$", "list_workflows"),
    ("GET", r"/workflows/[^/]+/runs$", "list_workflow_runs"),
    ("POST", r"/workflows/[^/]+/runs$", "get_workflow_run"),  # see below
    ("GET", r"/workflows/[^/]+/runs/[^/]+$", "get_workflow_run"),
    ("POST", r"/workflows/[^/]+/runs/[^/]+/abort$", "abort_workflow_run"),
]


def schema_for(method, path, status):
    """The documented schema of an answer. Run-release-flow and run-workflow document no
    answer ("200 OK: success"); the simulator answers the new run as get shows it."""
    if status >= 400:
        return "error"
    for route_method, pattern, name in ROUTES:
        if method == route_method and re.search(pattern, path):
            return name
    raise AssertionError(f"no documented route for {method} {path}")


def capture(client):
    answers = []

    def hook(response):
        response.read()
        answers.append((response.request.method, response.request.url.path,
                        response.status_code, response.json(), dict(response.headers)))

    client._http.event_hooks["response"] = [hook]
    return answers


def test_every_simulator_answer_has_exactly_the_documented_fields(sim):
    sim.add_pipeline("api", "Payments API", ("Staging", "Production"))
    sim.add_workflow("nightly-deploy", "Nightly deploy")
    for stage, plan in (("development", RELEASE_PLAN), ("staging", FAILING_PLAN),
                        ("production", APPROVAL_PLAN)):
        sim.add_release("web", stage, plan, age=10, description="big, (bold) move")
    sim.add_release("api", "staging", name=None)
    sim.add_workflow_run("nightly-deploy", WORKFLOW_PLAN)
    failed = sim.add_workflow_run("nightly-deploy", FAILING_PLAN, age=600)
    with connect(sim) as client:
        answers = capture(client)
        client.discover()
        runs = [run for page in client.list_runs() for run in page]
        for run in runs:
            client.get_run(run.locator)
        live = [r for r in runs if r.status in {Status.QUEUED, Status.RUNNING, Status.WAITING}]
        assert live
        for run in live:
            client.cancel(run.locator)
        with pytest.raises(Exception, match="already aborting"):
            client.cancel(live[0].locator)
        client.retry({"workflow": "nightly-deploy", "id": failed.data["id"]})
        with pytest.raises(NotFound):
            client.get_run({"pipeline": "web", "stage": "staging", "id": "nope"})
    kinds = set()
    for method, path, status, body, headers in answers:
        name = schema_for(method, path, status)
        kinds.add(name)
        jsonschema.validate(body, SCHEMAS[name])
        limits = REFERENCE["rate_limit"]["headers"]
        assert {limits["limit"], limits["remaining"], limits["reset"]} <= set(headers)
    assert kinds == {name for _, _, name in ROUTES} | {"error"}


def test_runs_are_served_in_every_documented_status_and_mapped_value_by_value(sim):
    sim.add_workflow("deploy")
    for status in REFERENCE["run_status"]:
        sim.add_release("web", "staging", [Phase(status, None)], name=status.replace("_", " "))
        sim.add_workflow_run("deploy", [Phase(status, None)], name=status.replace("_", " "))
    with connect(sim) as client:
        answers = capture(client)
        runs = [run for page in client.list_runs() for run in page]
        for run in runs:
            client.get_run(run.locator)
    for method, path, status, body, _ in answers:
        jsonschema.validate(body, SCHEMAS[schema_for(method, path, status)])
    by_kind = {"release": {}, "workflow": {}}
    for run in runs:
        kind = "workflow" if "workflow" in run.locator else "release"
        by_kind[kind][run.raw_status] = run.status
    for kind, seen in by_kind.items():
        assert seen == EXPECTED, kind


# -- paging: per_page, page, cursor ------------------------------------------------------


def get(sim, path, **params):
    return httpx.get(f"{sim.url}{path}", params=params,
                     headers={"Authorization": f"Bearer {sim.token}"}, timeout=5)


def test_lists_page_with_the_documented_default_and_maximum(sim):
    ids = [sim.add_release("web", "staging", age=i).data["id"] for i in range(130)]
    path = "/v1/projects/shop/pipelines/web/release-flows/staging/runs"
    first = get(sim, path).json()
    assert len(first["data"]["runs"]) == REFERENCE["paging"]["per_page_default"] == 50
    assert first["pagination"]["hasNextPage"] is True
    assert first["pagination"]["count"] == 50
    second = get(sim, path, cursor=first["pagination"]["cursor"]).json()
    by_page = get(sim, path, page=2).json()
    assert [r["id"] for r in second["data"]["runs"]] == ids[50:100]
    assert by_page["data"]["runs"] == second["data"]["runs"]
    biggest = get(sim, path, per_page=100).json()
    assert len(biggest["data"]["runs"]) == REFERENCE["paging"]["per_page_max"]
    last = get(sim, path, per_page=100, page=2).json()
    assert (last["pagination"], len(last["data"]["runs"])) == (
        {"hasNextPage": False, "count": 30}, 30)


@pytest.mark.parametrize("params", [{"per_page": 101}, {"per_page": 0}, {"page": 0},
                                    {"cursor": "not-a-cursor"}, {"status": "done"}])
def test_paging_out_of_bounds_is_refused_with_the_documented_error_body(sim, params):
    answer = get(sim, "/v1/projects/shop/pipelines/web/release-flows/staging/runs", **params)
    assert answer.status_code == 400
    jsonschema.validate(answer.json(), SCHEMAS["error"])


def test_unknown_query_parameters_are_ignored_and_documented_filters_apply(sim):
    sim.add_release("web", "staging", FAILING_PLAN, age=600)
    sim.add_release("web", "staging", RELEASE_PLAN)
    path = "/v1/projects/shop/pipelines/web/release-flows/staging/runs"
    plain = get(sim, path).json()
    assert get(sim, path, limit=1, sort="asc", perPage=1).json()["data"] == plain["data"]
    assert [r["status"] for r in get(sim, path, status="failure").json()["data"]["runs"]] == [
        "failure"]
    assert [r["concluded"] for r in get(sim, path, concluded="false").json()["data"]["runs"]
            ] == [False]


# -- the hourly rate limit ----------------------------------------------------------------


def test_the_rate_window_is_an_hour_from_the_first_request(clock):
    assert NorthflankSimulator.rate_limit == REFERENCE["rate_limit"]["requests"] == 1000
    with NorthflankSimulator(token="t", clock=clock) as sim:
        clock.advance(7200)  # time before the first request does not count
        first = get(sim, "/v1/projects/shop/pipelines")
        assert (first.headers["x-ratelimit-limit"], first.headers["x-ratelimit-remaining"]) == (
            "1000", "999")
        assert int(first.headers["x-ratelimit-reset"]) == pytest.approx(3600, abs=1)
        clock.advance(1800)
        later = get(sim, "/v1/projects/shop/pipelines")
        assert later.headers["x-ratelimit-remaining"] == "998"
        assert int(later.headers["x-ratelimit-reset"]) == pytest.approx(1800, abs=1)
        clock.advance(1801)  # one hour after the first request: a new window
        assert get(sim, "/v1/projects/shop/pipelines").headers["x-ratelimit-remaining"] == "999"


def test_past_the_limit_the_simulator_refuses_until_the_hour_is_over(clock):
    with NorthflankSimulator(token="t", clock=clock, rate_limit=3) as sim:
        for _ in range(3):
            assert get(sim, "/v1/projects/shop/pipelines").status_code == 200
        clock.advance(600)
        refused = get(sim, "/v1/projects/shop/pipelines")
        assert refused.status_code == 429
        jsonschema.validate(refused.json(), SCHEMAS["error"])
        assert refused.headers["x-ratelimit-remaining"] == "0"
        assert int(refused.headers["x-ratelimit-reset"]) == pytest.approx(3000, abs=1)
        clock.advance(2999)  # one second short of the hour
        assert get(sim, "/v1/projects/shop/pipelines").status_code == 429
        clock.advance(1)
        assert get(sim, "/v1/projects/shop/pipelines").status_code == 200


def test_the_client_stops_for_the_hours_reset_in_seconds(clock):
    with NorthflankSimulator(token="t", clock=clock, rate_limit=6) as sim:
        sim.add_pipeline("web")
        scope = {"project": "shop", "pipeline": "web", "stage": "staging"}
        with NorthflankProvider(sim.url, sim.token, scope, rate_limit_reserve=2) as client:
            list(client.list_runs())  # one request: the stage's (empty) list of runs
            clock.advance(1200)
            with pytest.raises(RateLimited) as err:
                for _ in range(10):
                    list(client.list_runs())
        # The client stopped at its reserve (2 left), before the simulator had to refuse.
        assert len(sim.requests) == 4
        assert err.value.retry_after == pytest.approx(2400, abs=2)
        with NorthflankProvider(sim.url, sim.token, {"project": "shop"}) as client:
            sim.inject("rate_limit", retry_after=2400)
            with pytest.raises(RateLimited) as err:
                list(client.list_runs())
            assert err.value.retry_after == 2400


# -- stages from the pipeline ---------------------------------------------------------------


@pytest.mark.parametrize("serve_stages", [True, False])
def test_only_the_stages_the_pipeline_reports_are_listed(sim, serve_stages):
    sim.serve_stages = serve_stages
    sim.add_pipeline("api", "Payments API", ("Staging", "Production"))
    sim.add_release("api", "staging")
    sim.add_release("api", "production")
    with connect(sim, {"project": "shop", "pipeline": "api"}) as client:
        runs = [run for page in client.list_runs() for run in page]
        found = client.discover()
    assert sorted(r.locator["stage"] for r in runs) == ["production", "staging"]
    assert [e.external_id for e in found.environments] == ["api/staging", "api/production"]
    assert not [p for _, p, _ in sim.requests if "/release-flows/development" in p]


# -- team-scoped routes -----------------------------------------------------------------------


def test_a_team_scope_uses_the_team_form_of_every_route(clock):
    with NorthflankSimulator(token="t", clock=clock, team="acme") as sim:
        sim.add_pipeline("web", "Web shop", ("Production",))
        sim.add_workflow("deploy")
        run = sim.add_release("web", "production", FAILING_PLAN)
        sim.add_workflow_run("deploy")
        with connect(sim, {"project": "shop"}) as plain, pytest.raises(
                NotFound, match="Project not found"):
            list(plain.list_runs())
        sent = len(sim.requests)
        with connect(sim, {"project": "shop", "team": "acme"}) as client:
            runs = [r for page in client.list_runs() for r in page]
            client.get_run(runs[0].locator)
            client.cancel(runs[1].locator)
            clock.advance(60)
            assert client.retry(client.get_run({"pipeline": "web", "stage": "production",
                                                "id": run.data["id"]}).locator)
        assert len(runs) == 2
        paths = [p for _, p, _ in sim.requests[sent:]]
        assert paths and all(p.startswith("/v1/teams/acme/projects/shop/") for p in paths)
        with connect(sim, {"project": "shop", "team": "other"}) as wrong, pytest.raises(
                NotFound, match="Team not found"):
            list(wrong.list_runs())


# -- the Workflows model --------------------------------------------------------------------


@pytest.fixture
def workflows_sim(clock):
    """A project on the Environments + Workflows model: no pipelines at all."""
    with NorthflankSimulator(token="t", clock=clock) as sim:
        sim.add_workflow("deploy-prod", "Deploy production")
        yield sim


def test_a_project_on_the_workflows_model_shows_its_runs(workflows_sim):
    sim = workflows_sim
    older = sim.add_workflow_run("deploy-prod", FAILING_PLAN, age=300, name="Deploy v1")
    newer = sim.add_workflow_run("deploy-prod", WORKFLOW_PLAN, name="Deploy v2")
    with connect(sim) as client:
        runs = [r for page in client.list_runs() for r in page]
    assert [(r.locator["id"], r.name) for r in runs] == [
        (newer.data["id"], "Deploy v2"), (older.data["id"], "Deploy v1")]
    assert runs[0].environment.name == "Deploy production · workflow"
    assert (runs[0].status, runs[1].status) == (Status.QUEUED, Status.FAILED)


def test_a_workflow_run_is_read_and_aborted(workflows_sim):
    sim = workflows_sim
    run = sim.add_workflow_run("deploy-prod", APPROVAL_PLAN)
    sim.advance(30)
    locator = {"workflow": "deploy-prod", "id": run.data["id"]}
    with connect(sim) as client:
        assert client.get_run(locator).status == Status.WAITING
        assert client.cancel(locator).raw_status == "aborting"
        sim.advance(10)
        assert client.get_run(locator).status == Status.CANCELLED
    assert sim.requests[-2][:2] == (
        "POST", f"/v1/projects/shop/workflows/deploy-prod/runs/{run.data['id']}/abort")


# -- retry: run the release flow (or workflow) again ---------------------------------------


@pytest.mark.parametrize("run_answer", ["detail", "empty"])
def test_retry_runs_the_release_flow_again_and_answers_the_new_run(sim, run_answer):
    sim.run_answer = run_answer
    failed = sim.add_release("web", "staging", FAILING_PLAN, age=600)
    sim.add_release("web", "staging", RELEASE_PLAN, age=300)
    locator = {"pipeline": "web", "stage": "staging", "id": failed.data["id"]}
    with connect(sim) as client:
        answers = capture(client)
        new = client.retry(locator)
    assert new.locator["id"] != failed.data["id"]
    assert (new.locator["pipeline"], new.locator["stage"]) == ("web", "staging")
    assert new.status == Status.QUEUED and new.external_id.startswith("web/staging/")
    [(_, path, body)] = [r for r in sim.requests if r[0] == "POST"]
    assert path == "/v1/projects/shop/pipelines/web/release-flows/staging/runs"
    jsonschema.validate(body, SCHEMAS["run_request"])
    assert failed.data["id"] in body["description"]
    assert sim.runs[("release", "web", "staging", new.locator["id"])].status == "pending"
    assert all(status < 400 for _, _, status, _, _ in answers)


def test_retry_of_a_workflow_run_runs_the_workflow_again(workflows_sim):
    sim = workflows_sim
    failed = sim.add_workflow_run("deploy-prod", FAILING_PLAN, age=600)
    with connect(sim) as client:
        new = client.retry({"workflow": "deploy-prod", "id": failed.data["id"]})
    assert new.external_id == f"workflow:deploy-prod/{new.locator['id']}"
    assert ("workflow", "deploy-prod", new.locator["id"]) in sim.runs


@pytest.mark.django_db
def test_retry_from_runboard_adds_the_new_run_beside_the_old(sim, django_user_model):
    sim.add_pipeline("web", "Web shop", ("Production",))
    sim.add_release("web", "production", FAILING_PLAN, age=600)
    connection = Connection.objects.create(provider="northflank", name="NF", base_url=sim.url,
                                           token=sim.token, scope={"project": "shop"})
    sync.sync_connection(connection.pk)
    [failed] = Run.objects.filter(connection=connection)
    assert failed.status == Status.FAILED and Action.RETRY in failed.available_actions()
    record = actions.perform(failed, django_user_model.objects.create_user("rm"), Action.RETRY)
    assert record.state == ActionRecord.State.SUCCEEDED
    new = Run.objects.filter(connection=connection).exclude(pk=failed.pk).get()
    assert new.status == Status.QUEUED and new.environment_id == failed.environment_id


# -- approval: what Northflank cannot do ----------------------------------------------------


@pytest.mark.django_db
def test_approval_is_declared_impossible_with_a_reason(sim, django_user_model):
    assert Action.APPROVE not in NorthflankProvider.actions
    assert "no endpoint to approve" in NorthflankProvider.unsupported_reasons[Action.APPROVE]
    assert "no endpoint to reject" in NorthflankProvider.unsupported_reasons[Action.REJECT]
    sim.add_release("web", "production", APPROVAL_PLAN, age=30)
    connection = Connection.objects.create(provider="northflank", name="NF", base_url=sim.url,
                                           token=sim.token, scope={"project": "shop"})
    sync.sync_connection(connection.pk)
    waiting = Run.objects.get(connection=connection, status=Status.WAITING)
    assert waiting.available_actions() == [Action.CANCEL]
    sent = len(sim.requests)
    with pytest.raises(actions.ActionRefused):
        actions.perform(waiting, django_user_model.objects.create_user("rm"), Action.APPROVE)
    assert len(sim.requests) == sent


def _pass_and_plan(connection):
    """A pass as the Celery task runs it: the pass, then the scheduler plans the next."""
    from dashboard import schedule

    result = sync.sync_connection(connection.pk)
    schedule.after_pass(connection.pk, requests=result.requests,
                        runs_written=result.runs_written,
                        rate_limit_seen=result.rate_limit_seen, rate_limit=result.rate_limit)
    return result


@pytest.mark.django_db
def test_passes_are_spaced_so_the_hourly_budget_lasts_the_hour(clock, settings):
    """A demo pass costs 9 requests (1 pipelines list, 2 pipelines, 3 + 2 stages, 1
    workflows list). At beat's 10 s that would be 3240 an hour against Northflank's 1000:
    the next pass waits for its share of the hour instead (the scheduler's budget, the
    one mechanism that spaces passes)."""
    import random

    from django.utils import timezone

    settings.RUNBOARD_BUDGET_SHARE = 0.5
    with NorthflankSimulator(token="t", clock=clock) as sim:
        scope = sim.seed_demo(random.Random(2))
        # Not its first pass (a one-time cost charged apart): a demo pass costs 9.
        connection = Connection.objects.create(provider="northflank", name="NF",
                                               base_url=sim.url, token=sim.token, scope=scope,
                                               last_pass_requests=9)
        before = timezone.now()
        result = _pass_and_plan(connection)
    assert result.requests == 9
    assert not [p for _, p, _ in sim.requests if "/api/release-flows/development" in p]
    connection.refresh_from_db()
    assert connection.last_error == ""
    # Live runs want a pass every 2 s; the budget says 9 requests per 9 * 3600 / 486 s
    # (half the hour, less 9 + 5 that webhook reads may spend ahead of the clock).
    wait = (connection.next_poll_at - before).total_seconds()
    assert wait == pytest.approx(9 * 3600 / 486, abs=1.5)
    assert 3600 / wait * result.requests <= 0.5 * REFERENCE["rate_limit"]["requests"] * 1.01


@pytest.mark.django_db
def test_a_budget_others_have_spent_spaces_passes_further(clock, settings):
    """The budget is the account's: whatever another client of it spent, our share of
    what is left must last until the reset."""
    import random

    from django.utils import timezone

    settings.RUNBOARD_BUDGET_SHARE = 0.5
    with NorthflankSimulator(token="t", clock=clock, rate_limit=100) as sim:
        scope = sim.seed_demo(random.Random(2))
        with httpx.Client(base_url=sim.url, headers={"Authorization": "Bearer t"}) as other:
            for _ in range(50):
                other.get("/v1/projects/shop/pipelines")
        connection = Connection.objects.create(provider="northflank", name="NF",
                                               base_url=sim.url, token=sim.token, scope=scope,
                                               last_pass_requests=9)  # not its first pass
        before = timezone.now()
        _pass_and_plan(connection)
    connection.refresh_from_db()
    # 41 requests left for the hour (not 100), half of them ours: a 9-request pass every
    # 3600 * 9 / 20.5 s.
    wait = (connection.next_poll_at - before).total_seconds()
    assert wait == pytest.approx(3600 * 9 / (0.5 * 41), rel=0.02)
