"""Deployment workflows: status mapping, the seed's payloads, and the client against its
simulator over real HTTP."""

import logging
from datetime import timedelta

import httpx
import pytest

from providers.base import (
    Action,
    AuthError,
    BadPayload,
    Conflict,
    InvalidRequest,
    NotFound,
    NotSupported,
    RateLimited,
    Status,
)
from providers.simulators.workflows import (
    APPROVE_COMMENTS,
    PEOPLE,
    REJECT_COMMENTS,
    Step,
    WorkflowsSimulator,
    deploy_plan,
)
from providers.workflows import STATUS_MAP, WorkflowsProvider
from tests.conftest import load_fixture

EXPECTED = {
    "not_started": Status.QUEUED,
    "in_progress": Status.RUNNING,
    "waiting": Status.WAITING,
    "completed": Status.SUCCEEDED,
    "failure": Status.FAILED,
    "cancelled": Status.CANCELLED,
}
REVIEWS = [False, False, True]  # dev, staging, production (reviewed)


@pytest.fixture
def sim(clock):
    with WorkflowsSimulator(token="workflows-test-token", clock=clock) as simulator:
        yield simulator


@pytest.fixture
def client(sim):
    scope = {"project": sim.project_id, "project_name": sim.project_name}
    with WorkflowsProvider(sim.url, sim.token, scope, timeout=1) as c:
        yield c


SEED_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"  # every id in the seed's example


def bare_provider() -> WorkflowsProvider:
    return WorkflowsProvider.__new__(WorkflowsProvider)


@pytest.fixture
def parser():
    """A client that only parses: scoped to the seed example's project."""
    with WorkflowsProvider("https://rules.example.net", "t",
                           {"project": SEED_ID, "project_name": "Pricing rules"}) as provider:
        yield provider


def locator(sim, run):
    return {"project": sim.project_id, "id": run.data["id"]}


def all_runs(client, **kwargs):
    return [run for page in client.list_runs(**kwargs) for run in page]


# -- mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), EXPECTED.items())
def test_every_documented_status_maps(raw, expected):
    assert bare_provider().map_status(raw) == expected


def test_status_map_has_no_untested_values():
    assert set(STATUS_MAP) == set(EXPECTED)


@pytest.mark.parametrize("conclusion", ["approved", "rejected"])
def test_review_conclusions_are_kept(parser, conclusion, caplog):
    payload = load_fixture("workflows_get_run.json")
    payload["jobs"][0]["reviewedConclusion"] = conclusion
    with caplog.at_level(logging.WARNING):
        run = parser.parse_run(payload)
    assert run.jobs[0].review_conclusion == conclusion
    assert "conclusion" not in caplog.text


def test_unknown_review_conclusion_is_kept_and_logged(parser, caplog):
    payload = load_fixture("workflows_get_run.json")
    payload["jobs"][0]["reviewedConclusion"] = "deferred"
    with caplog.at_level(logging.WARNING):
        run = parser.parse_run(payload)
    assert run.jobs[0].review_conclusion == "deferred"
    assert "deferred" in caplog.text


# -- the seed pages' payloads ------------------------------------------------------------


def test_seed_get_example_parses(parser):
    payload = load_fixture("workflows_get_run.json")
    run = parser.parse_run(payload)
    run_id = SEED_ID
    assert (run.status, run.raw_status) == (Status.RUNNING, "in_progress")
    assert run.external_id == run_id
    assert run.locator == {"project": run_id, "id": run_id}
    assert run.name == "<string>"
    assert run.version == "<string>"
    assert run.triggered_by == "<string> <string>"
    assert run.cancelled_by == "<string> <string>"
    assert run.cancel_comment == "<string>"
    assert (run.project.external_id, run.project.name) == (run_id, "Pricing rules")
    # The example's times are placeholders: unparseable, so absent rather than fatal.
    assert (run.created_at, run.started_at, run.finished_at) == (None, None, None)
    assert run.web_url == ""
    [job] = run.jobs
    assert (job.external_id, job.status, job.raw_status, job.order) == (
        run_id, Status.QUEUED, "not_started", 123)
    assert (job.environment.external_id, job.environment.name) == (run_id, "<string>")
    assert run.environment == job.environment
    assert (job.reviewed_by, job.review_comment, job.review_conclusion) == (
        "<string> <string>", "<string>", "approved")
    # Free-form provider data stays in raw only.
    assert run.raw["jobs"][0]["data"] == "<unknown>"


def test_seed_cancel_example_parses_like_the_get_example(parser):
    cancelled = parser.parse_run(load_fixture("workflows_cancel_run.json"))
    got = parser.parse_run(load_fixture("workflows_get_run.json"))
    for field in ("external_id", "locator", "status", "name", "version", "triggered_by",
                  "cancelled_by", "cancel_comment"):
        assert getattr(cancelled, field) == getattr(got, field)
    assert [j.review_conclusion for j in cancelled.jobs] == ["approved"]


def test_missing_required_field_is_a_bad_payload(parser):
    payload = load_fixture("workflows_get_run.json")
    del payload["status"]
    with pytest.raises(BadPayload, match="status"):
        parser.parse_run(payload)


@pytest.mark.parametrize(("name", "release", "expected"), [
    ("Hotfix rollout", {"name": "Release 2.4.1", "version": "2.4.1"}, "Hotfix rollout"),
    (None, {"name": "Release 2.4.1", "version": "2.4.1"}, "Release 2.4.1"),
    (None, {"name": "Spring release", "version": "2.4.1"}, "Spring release 2.4.1"),
    (None, None, "run 3c90c3cc"),
])
def test_run_name_falls_back_to_the_release_then_the_id(parser, name, release, expected):
    payload = load_fixture("workflows_get_run.json")
    payload["name"], payload["release"] = name, release
    assert parser.parse_run(payload).name == expected


def test_connection_needs_a_base_url_and_a_project_id():
    with pytest.raises(InvalidRequest, match="base URL"):
        WorkflowsProvider("", "t", {"project": SEED_ID})
    with pytest.raises(InvalidRequest, match="uuid"):
        WorkflowsProvider("https://rules.example.net", "t", {"project": "pricing"})
    with pytest.raises(InvalidRequest, match="project"):
        WorkflowsProvider("https://rules.example.net", "t", {})


# -- against the simulator ---------------------------------------------------------------


def test_discovery_returns_the_project_and_its_environments(sim, client):
    sim.add_workflow_run()
    found = client.discover()
    assert [(p.external_id, p.name) for p in found.projects] == [
        (sim.project_id, "Pricing rules")]
    assert [e.name for e in found.environments] == ["Development", "Staging", "Production"]
    assert {e.external_id for e in found.environments} == {e["id"] for e in sim.environments}
    assert all(e.project.external_id == sim.project_id for e in found.environments)


def test_lists_runs_across_pages_newest_first(sim, client, monkeypatch):
    monkeypatch.setattr("providers.workflows.PAGE_SIZE", 2)
    made = [sim.add_workflow_run(age=age) for age in (5000, 4000, 3000, 2000, 1000)]
    pages = list(client.list_runs())
    assert [len(p) for p in pages] == [2, 2, 1]
    ids = [r.external_id for page in pages for r in page]
    assert ids == [run.data["id"] for run in reversed(made)]
    versions = [r.version for page in pages for r in page]
    assert versions == ["2.3.5", "2.3.4", "2.3.3", "2.3.2", "2.3.1"]


def test_paginate_says_when_the_list_ends(sim, client, monkeypatch):
    monkeypatch.setattr("providers.workflows.PAGE_SIZE", 2)
    for age in (400, 300, 200, 100):
        sim.add_workflow_run(age=age)
    sent = len(sim.requests)
    assert [len(p) for p in client.list_runs()] == [2, 2]
    assert len(sim.requests) - sent == 2  # the full last page's paginate ends it


def test_incremental_listing_stops_at_older_pages(sim, client, monkeypatch):
    monkeypatch.setattr("providers.workflows.PAGE_SIZE", 2)
    for age in (5000, 4000, 3000, 20, 10):
        sim.add_workflow_run(age=age)
    since = sim.clock.now() - timedelta(seconds=100)
    sent = len(sim.requests)
    pages = list(client.list_runs(since=since))
    # Page 1 holds the two recent runs, page 2 is all older than `since`: no page 3.
    assert [len(p) for p in pages] == [2, 2]
    assert len(sim.requests) - sent == 2


def test_listing_stops_if_the_server_ignores_the_page(clock, monkeypatch, caplog):
    class IgnoresPaging(WorkflowsSimulator):
        def list_runs(self, request):
            request.query.pop("page", None)
            return super().list_runs(request)

    monkeypatch.setattr("providers.workflows.PAGE_SIZE", 2)
    with IgnoresPaging(clock=clock) as sim:
        for age in (300, 200, 100):
            sim.add_workflow_run(age=age)
        client = WorkflowsProvider(sim.url, sim.token, {"project": sim.project_id})
        with caplog.at_level(logging.WARNING):
            pages = list(client.list_runs())
    assert [len(p) for p in pages] == [2]
    assert "repeated" in caplog.text


def test_get_run_fills_the_shared_fields(sim, client):
    run = sim.add_workflow_run(creator=("Kofi", "Mensah"))
    got = client.get_run(locator(sim, run))
    assert got.external_id == run.data["id"]
    assert got.locator == locator(sim, run)
    assert (got.name, got.version) == ("Release 2.3.1", "2.3.1")
    assert got.triggered_by == "Kofi Mensah"
    assert (got.project.external_id, got.project.name) == (sim.project_id, "Pricing rules")
    assert got.created_at == got.started_at == run.created_at.replace(
        microsecond=run.created_at.microsecond // 1000 * 1000)
    assert got.finished_at is None
    assert [(j.name, j.status, j.order) for j in got.jobs] == [
        ("Deploy to Development", Status.RUNNING, 1),
        ("Deploy to Staging", Status.QUEUED, 2),
        ("Deploy to Production", Status.QUEUED, 3),
    ]
    assert got.environment.name == "Development"
    assert got.web_url == ""


def test_a_run_waits_for_review_then_the_reviewer_approves(sim, client):
    run = sim.add_workflow_run(deploy_plan(REVIEWS), reviewer=PEOPLE[2])
    loc = locator(sim, run)
    sim.advance(25)
    assert client.get_run(loc).environment.name == "Staging"
    sim.advance(20)
    waiting = client.get_run(loc)
    assert (waiting.status, waiting.raw_status) == (Status.WAITING, "waiting")
    assert waiting.environment.name == "Production"
    assert [j.status for j in waiting.jobs] == [Status.SUCCEEDED, Status.SUCCEEDED,
                                                Status.WAITING]
    assert waiting.jobs[2].review_conclusion == ""
    sim.advance(90)
    deploying = client.get_run(loc)
    assert deploying.status == Status.RUNNING
    review = deploying.jobs[2]
    assert (review.reviewed_by, review.review_conclusion) == ("Jo Tanaka", "approved")
    assert review.review_comment == APPROVE_COMMENTS[0]
    assert review.reviewed_at == run.created_at.replace(
        microsecond=run.created_at.microsecond // 1000 * 1000) + timedelta(seconds=130)
    sim.advance(30)
    done = client.get_run(loc)
    assert done.status == Status.SUCCEEDED
    assert done.finished_at is not None
    assert done.environment.name == "Production"
    assert done.jobs[2].review_conclusion == "approved"


def test_a_rejected_review_fails_the_run(sim, client):
    run = sim.add_workflow_run(deploy_plan(REVIEWS, "rejected"),
                               review_comment=REJECT_COMMENTS[0])
    sim.advance(200)
    got = client.get_run(locator(sim, run))
    assert (got.status, got.raw_status) == (Status.FAILED, "failure")
    assert got.environment.name == "Production"
    assert got.jobs[2].status == Status.FAILED
    assert (got.jobs[2].review_conclusion, got.jobs[2].review_comment) == (
        "rejected", REJECT_COMMENTS[0])


def test_a_failed_deploy_reports_where_it_stopped(sim, client):
    run = sim.add_workflow_run(deploy_plan(REVIEWS, fail_at=1))
    sim.advance(100)
    got = client.get_run(locator(sim, run))
    assert got.status == Status.FAILED
    assert got.environment.name == "Staging"
    assert [j.status for j in got.jobs] == [Status.SUCCEEDED, Status.FAILED, Status.QUEUED]


def test_cancel_sends_the_comment_and_answers_the_cancelled_run(sim, client):
    run = sim.add_workflow_run()
    sim.advance(25)
    answer = client.cancel(locator(sim, run), comment="Wrong release picked")
    assert (answer.status, answer.raw_status) == (Status.CANCELLED, "cancelled")
    assert sim.requests[-1] == (
        "POST", f"/api/projects/{sim.project_id}/runs/{run.data['id']}/cancel",
        {"comment": "Wrong release picked"},
    )
    assert answer.cancelled_by == "Sam Okafor"
    assert answer.cancel_comment == "Wrong release picked"
    assert answer.finished_at is not None
    assert answer.environment.name == "Staging"
    assert [j.status for j in answer.jobs] == [Status.SUCCEEDED, Status.CANCELLED,
                                               Status.CANCELLED]
    sim.advance(300)
    assert client.get_run(locator(sim, run)).status == Status.CANCELLED


def test_cancel_while_waiting_leaves_no_review(sim, client):
    run = sim.add_workflow_run()
    sim.advance(60)
    answer = client.cancel(locator(sim, run), comment="Freeze started")
    assert answer.status == Status.CANCELLED
    sim.advance(300)
    got = client.get_run(locator(sim, run))
    assert got.jobs[2].status == Status.CANCELLED
    assert (got.jobs[2].review_conclusion, got.jobs[2].reviewed_at) == ("", None)


@pytest.mark.parametrize("comment", ["", "   "])
def test_cancel_without_a_comment_is_refused_before_sending(sim, client, comment):
    run = sim.add_workflow_run()
    sent = len(sim.requests)
    with pytest.raises(InvalidRequest, match="comment"):
        client.cancel(locator(sim, run), comment=comment)
    assert len(sim.requests) == sent


@pytest.mark.parametrize("body", [{}, {"comment": ""}, {"comment": None}])
def test_simulator_rejects_a_missing_or_empty_comment(sim, body):
    run = sim.add_workflow_run()
    answer = httpx.post(f"{sim.url}/api/projects/{sim.project_id}/runs/{run.data['id']}/cancel",
                        json=body, headers={"Authorization": f"Bearer {sim.token}"})
    assert answer.status_code == 400
    assert "at least 1 character" in answer.json()["message"]
    assert run.status == "in_progress"


def test_cancel_of_finished_run_keeps_providers_message(sim, client):
    run = sim.add_workflow_run()
    sim.advance(600)
    with pytest.raises(Conflict) as err:
        client.cancel(locator(sim, run), comment="too late")
    assert err.value.message == (
        "Deployment workflow run is already completed and cannot be cancelled")
    assert err.value.status_code == 409


def test_unknown_run_is_not_found(sim, client):
    with pytest.raises(NotFound, match="Deployment workflow run not found"):
        client.get_run({"project": sim.project_id, "id": "0f8fad5b-d9cb-469f-a165-70867728950e"})


@pytest.mark.parametrize("action", [Action.APPROVE, Action.REJECT, Action.RETRY])
def test_unsupported_actions_raise_without_a_request(sim, client, action):
    run = sim.add_workflow_run()
    sent = len(sim.requests)
    assert action not in WorkflowsProvider.actions
    call = getattr(client, action)
    with pytest.raises(NotSupported):
        call(locator(sim, run)) if action == Action.RETRY else call(locator(sim, run), "ok")
    assert len(sim.requests) == sent


def test_bad_token_is_an_auth_error(sim):
    bad = WorkflowsProvider(sim.url, "wrong", {"project": sim.project_id})
    with pytest.raises(AuthError, match="Invalid or expired personal access token"):
        list(bad.list_runs())


def test_rate_limit_carries_retry_after(sim, client):
    sim.inject("rate_limit", retry_after=7)
    with pytest.raises(RateLimited) as err:
        list(client.list_runs())
    assert err.value.retry_after == 7
    assert err.value.status_code == 429


def test_unknown_status_from_server_maps_to_unknown(sim, client):
    sim.add_workflow_run()
    sim.inject("unknown_status", times=5)
    [run] = all_runs(client)
    assert (run.status, run.raw_status) == (Status.UNKNOWN, "paused_by_admin")
    assert {j.status for j in run.jobs} == {Status.UNKNOWN}


def test_missing_optional_fields_still_parse(sim, client):
    made = sim.add_workflow_run()
    sim.inject("missing_fields", times=5)
    [run] = all_runs(client)
    assert run.status == Status.RUNNING
    assert run.name == f"run {made.data['id'][:8]}"
    assert (run.version, run.triggered_by, run.cancelled_by, run.finished_at) == (
        "", "", "", None)
    # Jobs lose their environment object: no environment is reported rather than one
    # named by its bare id (which would rename the known one).
    assert [(j.name, j.environment) for j in run.jobs] == [
        ("job 1", None), ("job 2", None), ("job 3", None)]
    assert run.environment is None


def test_demo_seed_has_history_and_live_runs(clock):
    import random

    sim = WorkflowsSimulator(clock=clock)
    scope = sim.seed_demo(random.Random(3))
    assert scope == {"project": sim.project_id, "project_name": "Pricing rules"}
    statuses = {run.status for run in sim.runs.values()}
    assert {"completed", "cancelled"} <= statuses
    assert statuses & {"in_progress", "waiting"}
    assert all(isinstance(step, Step) for run in sim.runs.values() for step in run.plan)


# -- paging under every reading, and the documented facts ------------------------------------

REFERENCE = load_fixture("workflows_reference.json")


def api_get(sim, path, **params):
    return httpx.get(f"{sim.url}{path}", params=params,
                     headers={"Authorization": f"Bearer {sim.token}"})


def test_a_real_project_shows_every_run_not_the_first_ten(sim, client):
    # The old client sent `limit`, which the server ignores (10 a page), and stopped at a
    # page shorter than the 50 it asked for: it showed 10 runs of 25.
    made = [sim.add_workflow_run(age=age) for age in range(2500, 0, -100)]
    runs = all_runs(client)
    assert len(runs) == 25
    assert [r.external_id for r in runs] == [m.data["id"] for m in reversed(made)]


def test_the_simulator_serves_the_most_likely_paging(sim):
    likely = REFERENCE["most_likely"]
    for age in range(2500, 0, -100):
        sim.add_workflow_run(age=age)
    path = REFERENCE["documented"]["paths"]["list_runs"].replace("{projectId}", sim.project_id)
    first = api_get(sim, path).json()
    assert len(first[REFERENCE["documented"]["list_items_key"]]) == likely["per_page_default"]
    assert sorted(first["paginate"]) == likely["paginate_keys"]
    assert first["paginate"] == {"current": 1, "from": 1, "to": 10, "total": 25, "pageSize": 10}
    # Unknown parameters are ignored, as a real server would: `limit` still gets 10.
    assert len(api_get(sim, path, limit=50).json()["results"]) == 10
    last = api_get(sim, path, **{likely["page_param"]: 3, likely["per_page_param"]: 10}).json()
    assert last["paginate"] == {"current": 3, "from": 21, "to": 25, "total": 25, "pageSize": 10}
    assert len(last["results"]) == 5


def test_simulator_runs_have_the_documented_shape(sim):
    doc = REFERENCE["documented"]
    sim.add_workflow_run()
    path = doc["paths"]["list_runs"].replace("{projectId}", sim.project_id)
    [run] = api_get(sim, path).json()["results"]
    assert set(doc["run_required"]) <= set(run)
    assert set(run) <= set(doc["run_required"]) | set(doc["run_optional"])
    assert run["status"] in doc["run_statuses"] and run["runVersion"] in doc["run_versions"]
    assert all(sorted(job) == doc["job_keys"] for job in run["jobs"])


def test_client_sends_only_the_likely_paging_parameters(clock):
    likely = REFERENCE["most_likely"]

    class Recording(WorkflowsSimulator):
        def list_runs(self, request):
            queries.append(dict(request.query))
            return super().list_runs(request)

    queries = []
    with Recording(clock=clock) as sim:
        sim.add_workflow_run()
        list(WorkflowsProvider(sim.url, sim.token, {"project": sim.project_id}).list_runs())
    assert queries and all(set(q) == {likely["page_param"], likely["per_page_param"]}
                           for q in queries)


def test_status_map_covers_the_documented_run_statuses():
    assert set(REFERENCE["documented"]["run_statuses"]) <= set(STATUS_MAP)
    assert set(REFERENCE["documented"]["job_status_examples"]) <= set(STATUS_MAP)


class NoPaginate(WorkflowsSimulator):
    """A reading without `paginate` that caps the page at 3, whatever was asked."""

    def list_runs(self, request):
        request.query["perPage"] = str(min(3, int(request.query.get("perPage", 3))))
        body = super().list_runs(request)
        del body["paginate"]
        return body


def test_without_paginate_a_short_page_is_not_the_last(clock):
    with NoPaginate(clock=clock) as sim:
        for age in range(700, 0, -100):
            sim.add_workflow_run(age=age)
        client = WorkflowsProvider(sim.url, sim.token, {"project": sim.project_id})
        pages = list(client.list_runs())
        assert [len(p) for p in pages] == [3, 3, 1]
        assert len(sim.requests) == 4  # the empty page ends the list


def test_paginate_is_followed_when_the_server_caps_the_page(clock):
    class Capped(WorkflowsSimulator):
        def list_runs(self, request):
            request.query["perPage"] = "4"
            return super().list_runs(request)

    with Capped(clock=clock) as sim:
        for age in range(900, 0, -100):
            sim.add_workflow_run(age=age)
        pages = list(WorkflowsProvider(sim.url, sim.token,
                                       {"project": sim.project_id}).list_runs())
        assert [len(p) for p in pages] == [4, 4, 1]
        assert len(sim.requests) == 3


def test_discovery_names_the_project_from_the_paged_project_list(sim, monkeypatch):
    monkeypatch.setattr("providers.workflows.PAGE_SIZE", 10)
    for n in range(15):  # sorted before "Pricing rules": it is on the second page
        sim.add_project(f"Alpha {n:02}")
    with WorkflowsProvider(sim.url, sim.token, {"project": sim.project_id}) as client:
        found = client.discover()
    assert [(p.external_id, p.name) for p in found.projects] == [
        (sim.project_id, "Pricing rules")]
    assert sum(1 for r in sim.requests if r[1] == "/api/projects") == 2


def test_the_project_list_pages_like_the_runs(sim):
    for n in range(15):
        sim.add_project(f"Alpha {n:02}")
    body = api_get(sim, REFERENCE["documented"]["paths"]["list_projects"]).json()
    assert len(body["results"]) == 10
    assert body["paginate"]["total"] == 16
    assert all({"id", "name"} <= set(p) for p in body["results"])


def test_the_run_page_can_say_why_approve_and_reject_are_missing():
    missing = {a for a in Action if a not in WorkflowsProvider.actions}
    assert set(WorkflowsProvider.unsupported_reasons) == missing
    assert all("GoRules" in reason for reason in WorkflowsProvider.unsupported_reasons.values())
    assert "no endpoint" in WorkflowsProvider.unsupported_reasons[Action.APPROVE].lower()
