"""Buddy.works: status mapping, the seed's payload, the documented facts (the reference
fixture) and the client against its simulator."""

from datetime import timedelta

import httpx
import pytest

from providers.base import AuthError, Conflict, InvalidRequest, NotFound, RateLimited, Status
from providers.buddy import STATUS_MAP, BuddyProvider
from providers.simulators.base import Phase
from providers.simulators.buddy import (
    BUILD_PLAN,
    DELAYED_PLAN,
    DEPLOY_PLAN,
    VARIABLES_PLAN,
    VT_SESSION_PLAN,
    BuddySimulator,
)
from tests.conftest import load_fixture

REFERENCE = load_fixture("buddy_reference.json")

EXPECTED = {
    "INITIAL": Status.QUEUED, "ENQUEUED": Status.QUEUED, "INPROGRESS": Status.RUNNING,
    "WAITING_FOR_APPLY": Status.WAITING, "WAITING_FOR_VARIABLES": Status.WAITING,
    "WAITING_FOR_SETTABLE_VARIABLES": Status.WAITING, "WAITING_FOR_VT_SESSION": Status.WAITING,
    "SUCCESSFUL": Status.SUCCEEDED, "FAILED": Status.FAILED, "TERMINATING": Status.CANCELLING,
    "TERMINATED": Status.CANCELLED, "NOT_EXECUTED": Status.SKIPPED, "SKIPPED": Status.SKIPPED,
    "RUN_DELAYED": Status.QUEUED,
}


@pytest.fixture
def client(buddy_sim):
    with BuddyProvider(buddy_sim.url, buddy_sim.token, {"workspace": "acme"}, timeout=1) as c:
        yield c


def locator(run):
    return {"project": run.data["project"], "pipeline": str(run.data["pipeline"]),
            "id": run.data["id"]}


@pytest.mark.parametrize(("raw", "expected"), EXPECTED.items())
def test_every_documented_status_maps(raw, expected):
    provider = BuddyProvider.__new__(BuddyProvider)
    assert provider.map_status(raw) == expected


def test_status_map_has_no_untested_values():
    assert set(STATUS_MAP) == set(EXPECTED)


def test_status_map_is_the_documented_vocabulary():
    assert set(STATUS_MAP) == set(REFERENCE["statuses"])


def test_seed_example_payload_parses():
    payload = load_fixture("buddy_execution.json")
    provider = BuddyProvider.__new__(BuddyProvider)
    run = provider.parse_execution(payload, "company-website", {"id": 2})
    assert run.status == Status.RUNNING
    assert run.raw_status == "INPROGRESS"
    assert run.external_id == "company-website/2/4"
    assert run.locator == {"project": "company-website", "pipeline": "2", "id": 4}
    assert run.name == "dev #4"
    assert run.branch == "master"
    assert run.commit == "506a3963507943d6908154f4bc9646e829128a08"
    assert run.triggered_by == "Mike Benson"
    assert run.finished_at is None
    assert run.started_at.isoformat() == "2016-03-29T08:12:04.132000+00:00"
    assert run.web_url.startswith("https://app.buddy.works/buddy/company-website/")
    assert [(j.name, j.status, j.progress) for j in run.jobs] == [
        ("Upload files to dev", Status.RUNNING, 0)
    ]


def test_lists_executions_across_pages_newest_first(buddy_sim, client, monkeypatch):
    monkeypatch.setattr("providers.buddy.PAGE_SIZE", 2)
    for age in (500, 400, 300, 200, 100):
        buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=age)
    pages = list(client.list_runs())
    assert [len(p) for p in pages] == [2, 2, 1]
    ids = [r.locator["id"] for page in pages for r in page]
    assert ids == [5, 4, 3, 2, 1]
    assert client.rate_limit.limit == 1000
    assert client.rate_limit.remaining is not None


def test_incremental_listing_stops_at_older_pages(buddy_sim, client, monkeypatch):
    monkeypatch.setattr("providers.buddy.PAGE_SIZE", 2)
    for age in (5000, 4000, 3000, 20, 10):
        buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=age)
    since = buddy_sim.clock.now() - timedelta(seconds=100)
    pages = list(client.list_runs(since=since))
    # Page 1 holds the two recent runs, page 2 is all older than `since`: no page 3. The
    # older page's finished runs are outside the window: nothing to write, nothing read.
    assert [len(p) for p in pages] == [2]
    lists = [r for r in buddy_sim.requests if r[1].endswith("/executions")]
    assert len(lists) == 2


def test_cancel_passes_through_terminating(buddy_sim, client):
    run = buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    assert client.get_run(locator(run)).status == Status.RUNNING
    answer = client.cancel(locator(run), comment="bad build")
    assert (answer.raw_status, answer.status) == ("TERMINATING", Status.CANCELLING)
    assert buddy_sim.requests[-1] == (
        "PATCH", "/workspaces/acme/projects/web-shop/pipelines/1/executions/1",
        {"operation": "CANCEL"},
    )
    buddy_sim.advance(5)
    assert client.get_run(locator(run)).status == Status.CANCELLED


def test_approve_moves_a_waiting_execution_on(buddy_sim, client):
    run = buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(30)
    assert client.get_run(locator(run)).raw_status == "WAITING_FOR_APPLY"
    assert client.approve(locator(run)).status == Status.RUNNING
    buddy_sim.advance(30)
    assert client.get_run(locator(run)).status == Status.SUCCEEDED


def test_retry_restarts_a_failed_execution(buddy_sim, client):
    from providers.simulators.buddy import FAILING_PLAN

    run = buddy_sim.add_execution("web-shop", 1, FAILING_PLAN)
    buddy_sim.advance(60)
    assert client.get_run(locator(run)).status == Status.FAILED
    assert client.retry(locator(run)).status == Status.QUEUED


def test_cancel_of_finished_execution_keeps_providers_message(buddy_sim, client):
    run = buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    buddy_sim.advance(60)
    with pytest.raises(InvalidRequest) as err:
        client.cancel(locator(run), comment="too late")
    assert err.value.message == "Execution is already finished"
    assert err.value.status_code == 400


def test_bad_token_is_an_auth_error(buddy_sim):
    bad = BuddyProvider(buddy_sim.url, "wrong", {"workspace": "acme"})
    with pytest.raises(AuthError, match="Invalid or expired token"):
        list(bad.list_runs())


def test_rate_limit_carries_retry_after(buddy_sim, client):
    buddy_sim.inject("rate_limit", retry_after=7)
    with pytest.raises(RateLimited) as err:
        list(client.list_runs())
    assert err.value.retry_after == 7
    assert client.rate_limit.remaining == 0


def test_unknown_status_from_server_maps_to_unknown(buddy_sim, client):
    buddy_sim.add_execution("web-shop", 1)
    buddy_sim.inject("unknown_status", times=10)
    runs = [r for page in client.list_runs() for r in page]
    assert [r.status for r in runs] == [Status.UNKNOWN]
    assert runs[0].raw_status == "QUANTUM_SUPERPOSITION"


def test_missing_optional_fields_still_parse(buddy_sim, client):
    buddy_sim.add_execution("web-shop", 1)
    buddy_sim.inject("missing_fields", times=10)
    [run] = [r for page in client.list_runs() for r in page]
    assert run.status == Status.QUEUED
    assert (run.branch, run.web_url, run.jobs) == ("", "", [])




# -- the documented facts: the simulator's answers and the client's requests ---------------


class RecordingSimulator(BuddySimulator):
    """Records each request's query string too (the base records method, path, body)."""

    def __init__(self, *args, **kwargs):
        self.queries: list[tuple[str, dict[str, str]]] = []
        super().__init__(*args, **kwargs)

    def dispatch(self, request):
        self.queries.append((request.path, dict(request.query)))
        return super().dispatch(request)


@pytest.fixture
def rec_sim(clock):
    with RecordingSimulator(token="t", clock=clock) as sim:
        yield sim


def get(sim, path, **params):
    return httpx.get(f"{sim.url}/workspaces/{sim.workspace}{path}", params=params,
                     headers={"Authorization": f"Bearer {sim.token}"})


def test_simulator_lists_answer_as_documented(buddy_sim):
    for n in range(25):
        buddy_sim.add_pipeline(f"project-{n:02}", 1, "Deploy")
        buddy_sim.add_pipeline("web-shop", n + 2, f"pipeline {n}")
    for _ in range(25):
        buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    lists = REFERENCE["lists"]
    answers = {
        "projects": get(buddy_sim, "/projects"),
        "pipelines": get(buddy_sim, "/projects/web-shop/pipelines"),
        "executions": get(buddy_sim, "/projects/web-shop/pipelines/1/executions"),
    }
    for name, answer in answers.items():
        fact = lists[name]
        body = answer.json()
        assert sorted(body) == fact["answer_keys"], name
        items = body[fact["items"]]
        assert all(set(fact["item_keys"]) <= set(item) for item in items), name
        for lacking in fact.get("item_lacks", []):
            assert all(lacking not in item for item in items), name
        if fact["per_page_default"]:
            assert len(items) == fact["per_page_default"], name
        # Every answer carries the documented rate-limit headers, and no reset header.
        assert {h for h in REFERENCE["rate_limit_headers"] if h in answer.headers} == set(
            REFERENCE["rate_limit_headers"])
        assert not [h for h in answer.headers if "reset" in h.lower()]
    assert answers["executions"].json()["page_size"] == 20
    assert answers["executions"].json()["total_page_count"] == 2
    one = get(buddy_sim, "/projects/web-shop/pipelines/1/executions/1").json()
    assert set(REFERENCE["execution"]["keys"]) <= set(one)


def test_unknown_query_parameters_are_ignored(buddy_sim):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    answer = get(buddy_sim, "/projects/web-shop/pipelines/1/executions", limit=1, foo="x")
    assert answer.status_code == 200
    assert answer.json()["page_size"] == 20


def refusal_cases():
    allowed = REFERENCE["operation_allowed_in"]
    waiting = sorted({s for s in REFERENCE["statuses"] if s.startswith("WAITING_FOR")})
    for status in waiting:
        for operation in ("APPLY", "APPLY_VARIABLES"):
            yield status, operation, status in allowed[operation]


@pytest.mark.parametrize(("status", "operation", "allowed"), list(refusal_cases()))
def test_simulator_applies_only_what_buddy_allows(buddy_sim, status, operation, allowed):
    run = buddy_sim.add_execution("web-shop", 1, [Phase(status, None), *BUILD_PLAN[1:]])
    body = {"operation": operation}
    if operation == "APPLY_VARIABLES":
        body["variables"] = [{"key": v["key"], "value": "x"} for v in run.data["variables"]]
    answer = httpx.patch(
        f"{buddy_sim.url}/workspaces/acme/projects/web-shop/pipelines/1/executions/"
        f"{run.data['id']}", json=body, headers={"Authorization": f"Bearer {buddy_sim.token}"})
    if allowed:
        assert answer.status_code == 200
        assert answer.json()["status"] == "INPROGRESS"
    else:
        assert answer.status_code == 400
        error = answer.json()
        assert list(error) == list(REFERENCE["error_body_example"])
        assert isinstance(error["errors"][0]["message"], str)
        assert run.status == status
    if status in REFERENCE["never_applicable"]:
        assert not allowed


def test_apply_variables_must_give_exactly_what_the_run_asks(buddy_sim):
    run = buddy_sim.add_execution("web-shop", 1, VARIABLES_PLAN)
    buddy_sim.advance(30)
    url = (f"{buddy_sim.url}/workspaces/acme/projects/web-shop/pipelines/1/executions/"
           f"{run.data['id']}")
    auth = {"Authorization": f"Bearer {buddy_sim.token}"}
    for variables, message in [
        ([{"key": "RELEASE_NOTES", "value": "x"}], "Missing variables: MIGRATE"),
        ([{"key": "RELEASE_NOTES", "value": "x"}, {"key": "MIGRATE", "value": "no"},
          {"key": "OTHER", "value": "1"}], "Unknown variables: OTHER"),
        ([{"key": "RELEASE_NOTES"}], "list of {key, value}"),
    ]:
        answer = httpx.patch(url, json={"operation": "APPLY_VARIABLES", "variables": variables},
                             headers=auth)
        assert answer.status_code == 400
        assert message in answer.json()["errors"][0]["message"]
    assert run.status == "WAITING_FOR_VARIABLES"


def test_client_sends_only_documented_parameters(rec_sim):
    rec_sim.add_execution("web-shop", 1, BUILD_PLAN)
    with BuddyProvider(rec_sim.url, rec_sim.token, {"workspace": "acme"}) as client:
        list(client.list_runs())
    lists = {fact["path"].replace("{domain}", "acme").replace("{project_name}", "web-shop")
             .replace("{pipeline_id}", "1"): fact for fact in REFERENCE["lists"].values()}
    listed = [(path, query) for path, query in rec_sim.queries if path in lists]
    assert {path for path, _ in listed} == set(lists)
    for path, query in listed:
        assert set(query) <= set(lists[path]["params"]), path


def test_discovery_reads_every_page_of_projects_and_pipelines(buddy_sim, client):
    # 25 of each: more than the documented default page of 20.
    for n in range(25):
        buddy_sim.add_pipeline(f"project-{n:02}", 1, "Deploy")
        buddy_sim.add_pipeline("web-shop", n + 2, f"pipeline {n}")
    found = client.discover()
    assert len(found.projects) == 26
    assert len([p for p in found.pipelines if p["project"] == "web-shop"]) == 26


def test_paging_reads_until_an_empty_page_when_no_count_is_given(buddy_sim, client,
                                                                 monkeypatch):
    monkeypatch.setattr("providers.buddy.PAGE_SIZE", 10)
    for n in range(25):
        buddy_sim.add_pipeline(f"project-{n:02}", 1, "Deploy")
    assert len(client.discover().projects) == 26
    project_lists = [r for r in buddy_sim.requests if r[1] == "/workspaces/acme/projects"]
    assert len(project_lists) == 4  # 10 + 10 + 6, then the empty page that ends it


def test_steps_are_read_from_one_execution_since_lists_are_short(buddy_sim, client):
    finished = buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=600)
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    runs = [r for page in client.list_runs() for r in page]
    assert all(len(r.jobs) == 3 for r in runs)
    reads = [r for r in buddy_sim.requests if r[0] == "GET" and "/executions/" in r[1]]
    assert len(reads) == 2
    # Next pass: the sync says what it holds; a finished run held as it is costs nothing.
    client.known_runs = {r.external_id: r.raw_status for r in runs}
    sent = len(buddy_sim.requests)
    again = [r for page in client.list_runs(since=finished.created_at) for r in page]
    assert [r.raw_status for r in again] == ["INPROGRESS"]
    reads = [r for r in buddy_sim.requests[sent:] if "/executions/" in r[1]]
    assert len(reads) == 1


def test_a_first_pass_reads_steps_for_the_newest_page_only(buddy_sim, client, monkeypatch):
    monkeypatch.setattr("providers.buddy.PAGE_SIZE", 2)
    for age in (500, 400, 300, 200, 100):
        buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=age)
    runs = [r for page in client.list_runs() for r in page]
    assert [len(r.jobs) for r in runs] == [3, 3, 0, 0, 0]
    reads = [r for r in buddy_sim.requests if "/executions/" in r[1]]
    assert len(reads) == 2


def test_approve_sends_the_variables_the_run_asks_for(buddy_sim, client):
    run = buddy_sim.add_execution("web-shop", 1, VARIABLES_PLAN)
    buddy_sim.advance(30)
    waiting = client.get_run(locator(run))
    assert waiting.raw_status == "WAITING_FOR_VARIABLES"
    assert BuddyProvider.requested_variables(waiting.raw) == [
        {"key": "RELEASE_NOTES", "value": "", "description": "What this release changes"},
        {"key": "MIGRATE", "value": "yes", "description": "Run the migrations"},
    ]
    answer = client.approve(locator(run), variables={"RELEASE_NOTES": "Fixes the login"})
    assert answer.status == Status.RUNNING
    assert buddy_sim.requests[-1][2] == {"operation": "APPLY_VARIABLES", "variables": [
        {"key": "RELEASE_NOTES", "value": "Fixes the login"}, {"key": "MIGRATE", "value": "yes"}]}
    assert run.data["applied_variables"] == {"RELEASE_NOTES": "Fixes the login",
                                             "MIGRATE": "yes"}


@pytest.mark.parametrize(("variables", "message"), [
    (None, "give a value for RELEASE_NOTES"),
    ({"RELEASE_NOTES": "x", "TYPO": "1"}, "does not ask for TYPO"),
])
def test_approve_with_bad_variables_is_refused_before_sending(buddy_sim, client, variables,
                                                              message):
    run = buddy_sim.add_execution("web-shop", 1, VARIABLES_PLAN)
    buddy_sim.advance(30)
    with pytest.raises(InvalidRequest, match=message):
        client.approve(locator(run), variables=variables)
    assert not [r for r in buddy_sim.requests if r[0] == "PATCH"]
    assert run.status == "WAITING_FOR_VARIABLES"


def test_approve_of_a_visual_test_session_is_refused_without_sending(buddy_sim, client):
    run = buddy_sim.add_execution("web-shop", 1, VT_SESSION_PLAN)
    buddy_sim.advance(30)
    with pytest.raises(Conflict, match="visual-test session"):
        client.approve(locator(run))
    assert not [r for r in buddy_sim.requests if r[0] == "PATCH"]


def test_approve_with_variables_for_a_plain_approval_is_refused(buddy_sim, client):
    run = buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(30)
    with pytest.raises(InvalidRequest, match="asks for no variables"):
        client.approve(locator(run), variables={"X": "1"})


def test_a_delayed_run_is_queued_then_runs(buddy_sim, client):
    run = buddy_sim.add_execution("web-shop", 1, DELAYED_PLAN)
    got = client.get_run(locator(run))
    assert (got.status, got.raw_status) == (Status.QUEUED, "RUN_DELAYED")
    assert {j.raw_status for j in got.jobs} == {"INITIAL"}
    buddy_sim.advance(130)
    assert client.get_run(locator(run)).status == Status.RUNNING


@pytest.mark.parametrize("suffix", ["/api", "/api/"])
def test_an_on_premise_base_url_with_a_path(clock, suffix):
    with BuddySimulator(token="t", clock=clock, prefix="/api") as sim:
        sim.add_execution("web-shop", 1, BUILD_PLAN)
        with BuddyProvider(sim.url + suffix, "t", {"workspace": "acme"}) as client:
            [[run]] = list(client.list_runs())
            assert client.get_run(run.locator).locator == run.locator
        assert all(path.startswith("/api/workspaces/") for _, path, _ in sim.requests)
        # The path is the server's: a base URL without it reaches nothing.
        with BuddyProvider(sim.url, "t", {"workspace": "acme"}) as wrong, \
                pytest.raises(NotFound):
            list(wrong.list_runs())


def test_the_run_page_can_say_why_reject_is_missing():
    from providers.base import Action

    assert set(BuddyProvider.unsupported_reasons) == {
        a for a in Action if a not in BuddyProvider.actions}
    assert "cancel the run" in BuddyProvider.unsupported_reasons[Action.REJECT]
