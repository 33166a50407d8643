"""Northflank: status mapping, the seed's payload, and the client against its simulator."""

import logging
from datetime import UTC, datetime, timedelta

import pytest

from providers.base import (
    AuthError,
    BadPayload,
    Conflict,
    InvalidRequest,
    NotFound,
    NotSupported,
    RateLimited,
    Status,
)
from providers.northflank import STATUS_MAP, NorthflankProvider
from providers.simulators.northflank import (
    APPROVAL_PLAN,
    FAILING_PLAN,
    RELEASE_PLAN,
    NorthflankSimulator,
)
from tests.conftest import load_fixture

EXPECTED = {
    "pending": Status.QUEUED, "queued": Status.QUEUED,
    "running": Status.RUNNING, "retrying": Status.RUNNING, "async_wait": Status.RUNNING,
    "waiting": Status.RUNNING, "approval_wait": Status.WAITING,
    "success": Status.SUCCEEDED, "failure": Status.FAILED,
    "aborting": Status.CANCELLING, "aborted": Status.CANCELLED,
    "skipped": Status.SKIPPED, "unknown": Status.UNKNOWN,
}
PRODUCTION = {"project": "shop", "pipeline": "web", "stage": "production"}


@pytest.fixture
def sim(clock):
    with NorthflankSimulator(token="nf-test-token", clock=clock) as sim:
        sim.add_pipeline("web", "Web shop")
        yield sim


def connect(sim, scope=None, token=None):
    return NorthflankProvider(sim.url, token or sim.token, scope or {"project": "shop"},
                              timeout=1)


@pytest.fixture
def client(sim):
    with connect(sim) as c:
        yield c


def locator(run):
    return {"pipeline": run.data["pipeline"], "stage": run.data["stage"], "id": run.data["id"]}


def offline_provider():
    """A client that never reaches the network: for parsing the documented payloads."""
    provider = NorthflankProvider("http://127.0.0.1:9", "t", {"project": "default-project"})
    provider._pipeline_info["example-pipeline"] = {"name": "Example pipeline",
                                                   "stages": ("production",)}
    return provider


# -- the status vocabulary -------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), EXPECTED.items())
def test_every_documented_status_maps(raw, expected):
    assert offline_provider().map_status(raw) == expected


def test_status_map_has_no_untested_values():
    assert set(STATUS_MAP) == set(EXPECTED)


def test_a_concluded_run_is_never_shown_as_active(caplog):
    provider = offline_provider()
    item = load_fixture("northflank_list_runs.json")["data"]["runs"][0]
    with caplog.at_level(logging.WARNING):
        run = provider.parse_run({**item, "status": "running"}, "example-pipeline", "staging")
    assert (run.status, run.raw_status) == (Status.UNKNOWN, "running")
    assert "concluded" in caplog.text
    # A finished value is trusted whatever `concluded` says.
    run = provider.parse_run({**item, "concluded": False}, "example-pipeline", "staging")
    assert run.status == Status.SUCCEEDED


# -- the documented payloads -----------------------------------------------------------


def test_seed_example_payload_parses():
    payload = load_fixture("northflank_abort_run.json")["data"]
    run = offline_provider().parse_run(payload, "example-pipeline", "production")
    assert (run.status, run.raw_status) == (Status.SUCCEEDED, "success")
    assert run.external_id == "example-pipeline/production/110ddb52-bdcd-482d-8ac2-05ba580afe2f"
    assert run.locator == {"pipeline": "example-pipeline", "stage": "production",
                           "id": "110ddb52-bdcd-482d-8ac2-05ba580afe2f"}
    assert run.name == "Example run"
    assert (run.pipeline_id, run.pipeline_name) == ("example-pipeline", "Example pipeline")
    assert run.project.external_id == "default-project"
    assert run.environment.external_id == "example-pipeline/production"
    assert run.environment.name == "Example pipeline · production"
    assert run.environment.project.external_id == "default-project"
    # Northflank's times have a space where ISO-8601 has a T.
    assert run.created_at == datetime(2021, 1, 1, 12, 0, tzinfo=UTC)
    assert run.started_at == datetime(2021, 1, 1, 12, 1, tzinfo=UTC)
    assert run.finished_at == datetime(2021, 1, 1, 12, 10, tzinfo=UTC)
    assert run.web_url == ""
    assert run.raw["spec"]["response"]["retries"]["maxAttempts"] == 3


def test_reference_list_example_parses():
    item = load_fixture("northflank_list_runs.json")["data"]["runs"][0]
    run = offline_provider().parse_run(item, "example-pipeline", "development")
    assert (run.status, run.name) == (Status.SUCCEEDED, "Example run")
    assert run.environment.external_id == "example-pipeline/development"


@pytest.mark.parametrize("field", ["id", "status", "concluded", "createdAt"])
def test_a_missing_required_field_is_a_bad_payload(field):
    item = dict(load_fixture("northflank_list_runs.json")["data"]["runs"][0])
    del item[field]
    with pytest.raises(BadPayload, match=field):
        offline_provider().parse_run(item, "example-pipeline", "staging")


def test_an_unknown_stage_in_scope_is_refused():
    with pytest.raises(InvalidRequest, match="development, staging, production"):
        NorthflankProvider("http://127.0.0.1:9", "t", {"project": "p", "stage": "prod"})


def test_the_project_is_required():
    with pytest.raises(InvalidRequest, match="project"):
        NorthflankProvider("http://127.0.0.1:9", "t", {})


# -- the client against the simulator ---------------------------------------------------


def test_discovery_lists_pipelines_and_their_stages(sim, client):
    sim.add_pipeline("api", "Payments API")
    found = client.discover()
    assert [(p.external_id, p.name) for p in found.projects] == [("shop", "shop")]
    assert found.pipelines == [
        {"project": "shop", "id": "api", "name": "Payments API"},
        {"project": "shop", "id": "web", "name": "Web shop"},
    ]
    assert [(e.external_id, e.name) for e in found.environments] == [
        ("api/development", "Payments API · development"),
        ("api/staging", "Payments API · staging"),
        ("api/production", "Payments API · production"),
        ("web/development", "Web shop · development"),
        ("web/staging", "Web shop · staging"),
        ("web/production", "Web shop · production"),
    ]


def test_pipeline_listing_follows_the_cursor(sim, client, monkeypatch):
    monkeypatch.setattr("providers.northflank.PAGE_SIZE", 2)
    for name in ("alpha", "bravo", "charlie", "delta", "echo"):
        sim.add_pipeline(name)
    assert len(client.discover().pipelines) == 6
    lists = [p for m, p, _ in sim.requests if p == "/v1/projects/shop/pipelines"]
    assert len(lists) == 3


def test_a_scoped_pipeline_is_checked_and_named(sim):
    with connect(sim, {"project": "shop", "pipeline": "web"}) as scoped:
        assert scoped.discover().pipelines == [{"project": "shop", "id": "web",
                                                "name": "Web shop"}]
    assert sim.requests[-1][:2] == ("GET", "/v1/projects/shop/pipelines/web")
    with (connect(sim, {"project": "shop", "pipeline": "wbe"}) as typo,
          pytest.raises(NotFound, match="Pipeline not found")):
        typo.discover()


def test_lists_runs_across_pages_newest_first(sim, client, monkeypatch):
    monkeypatch.setattr("providers.northflank.PAGE_SIZE", 2)
    queries = []
    page = sim._page
    monkeypatch.setattr(sim, "_page", lambda request, items: (
        queries.append((request.path, dict(request.query))), page(request, items))[1])
    runs = [sim.add_release("web", "production", age=age, name=f"Release {age}")
            for age in (500, 400, 300, 200, 100)]
    sim.add_release("web", "staging", age=50)
    pages = list(client.list_runs())
    production = [p for p in pages if p[0].locator["stage"] == "production"]
    assert [len(p) for p in production] == [2, 2, 1]
    ids = [r.locator["id"] for p in production for r in p]
    assert ids == [r.data["id"] for r in reversed(runs)]
    assert production[0][0].name == "Release 100"
    assert {r.environment.external_id for p in pages for r in p} == {
        "web/production", "web/staging"}
    # The second and third pages were asked for with the cursor the previous page gave.
    production_queries = [q for path, q in queries if "/release-flows/production/" in path]
    assert "cursor" not in production_queries[0]
    assert all("cursor" in q for q in production_queries[1:])
    assert client.rate_limit.limit == 1000
    assert client.rate_limit.remaining is not None
    assert client.rate_limit.reset_at is not None


def test_incremental_listing_stops_at_older_pages(sim, monkeypatch):
    monkeypatch.setattr("providers.northflank.PAGE_SIZE", 2)
    for age in (5000, 4000, 3000, 20, 10):
        sim.add_release("web", "production", age=age)
    since = sim.clock.now() - timedelta(seconds=100)
    with connect(sim, PRODUCTION) as c:
        pages = list(c.list_runs(since=since))
    # Page 1 holds the two recent runs, page 2 is all older than `since`: no page 3.
    assert [len(p) for p in pages] == [2, 2]


def test_a_stage_without_release_flow_is_skipped(sim, client):
    sim.missing_flows.add(("web", "development"))
    sim.add_release("web", "staging")
    runs = [r for page in client.list_runs() for r in page]
    assert [r.locator["stage"] for r in runs] == ["staging"]
    with (connect(sim, {**PRODUCTION, "stage": "development"}) as scoped,
          pytest.raises(NotFound, match="Release flow not found")):
        list(scoped.list_runs())


def test_get_run_reads_the_run_and_names_its_pipeline(sim, client):
    run = sim.add_release("web", "staging", name="Release v2.4.0",
                          description="<b>bold</b> move")
    sim.advance(10)
    answer = client.get_run(locator(run))
    assert (answer.status, answer.raw_status) == (Status.RUNNING, "running")
    assert answer.started_at is not None and answer.finished_at is None
    assert answer.environment.name == "Web shop · staging"
    assert answer.raw["description"] == "<b>bold</b> move"
    # A fresh client learns the pipeline's name once, then reuses it.
    assert [p for _, p, _ in sim.requests[-2:]] == [
        f"/v1/projects/shop/pipelines/web/release-flows/staging/runs/{run.data['id']}",
        "/v1/projects/shop/pipelines/web",
    ]
    client.get_run(locator(run))
    assert sim.requests[-1][1].endswith(run.data["id"])


def test_an_unknown_run_is_not_found(sim, client):
    with pytest.raises(NotFound, match="Release flow run not found"):
        client.get_run({"pipeline": "web", "stage": "staging", "id": "nope"})


def test_abort_passes_through_aborting(sim, client):
    run = sim.add_release("web", "production", RELEASE_PLAN)
    sim.advance(10)
    assert client.get_run(locator(run)).status == Status.RUNNING
    answer = client.cancel(locator(run), comment="wrong image")
    assert (answer.raw_status, answer.status) == ("aborting", Status.CANCELLING)
    assert answer.raw["apiVersion"] == "v1.2"
    # Abort takes no body: the comment is not sent.
    assert sim.requests[-1] == (
        "POST", f"/v1/projects/shop/pipelines/web/release-flows/production/runs/"
                f"{run.data['id']}/abort", None)
    sim.advance(5)
    final = client.get_run(locator(run))
    assert (final.status, final.raw["concluded"]) == (Status.CANCELLED, True)
    assert final.finished_at is not None


def test_a_run_waiting_for_approval_is_waiting_and_can_be_aborted(sim, client):
    run = sim.add_release("web", "production", APPROVAL_PLAN)
    sim.advance(30)
    waiting = client.get_run(locator(run))
    assert (waiting.raw_status, waiting.status) == ("approval_wait", Status.WAITING)
    assert client.cancel(locator(run)).status == Status.CANCELLING


def test_approval_resumes_on_its_own_as_if_approved_in_northflanks_ui(sim, client):
    run = sim.add_release("web", "production", APPROVAL_PLAN)
    sim.advance(30)
    assert client.get_run(locator(run)).status == Status.WAITING
    sim.advance(200)
    assert client.get_run(locator(run)).status == Status.SUCCEEDED


@pytest.mark.parametrize("action", ["approve", "reject"])
def test_actions_northflank_lacks_are_not_supported(sim, client, action):
    run = sim.add_release("web", "production", FAILING_PLAN)
    sent = len(sim.requests)
    with pytest.raises(NotSupported):
        getattr(client, action)(locator(run))
    assert len(sim.requests) == sent


def test_abort_of_a_concluded_run_keeps_northflanks_message(sim, client):
    run = sim.add_release("web", "production", RELEASE_PLAN)
    sim.advance(120)
    with pytest.raises(Conflict) as err:
        client.cancel(locator(run), comment="too late")
    assert err.value.message == "Release flow run has already concluded"
    assert err.value.status_code == 409


def test_abort_of_an_aborting_run_is_refused(sim, client):
    run = sim.add_release("web", "production", RELEASE_PLAN)
    client.cancel(locator(run))
    with pytest.raises(Conflict, match="already aborting"):
        client.cancel(locator(run))


def test_bad_token_is_an_auth_error(sim):
    with connect(sim, token="wrong") as bad, pytest.raises(AuthError, match="API token"):
        list(bad.list_runs())


def test_rate_limit_carries_retry_after_from_the_reset_header(sim, client):
    sim.inject("rate_limit", retry_after=7)
    with pytest.raises(RateLimited) as err:
        list(client.list_runs())
    assert err.value.retry_after == 7
    assert err.value.message == "Too many requests"
    assert client.rate_limit.remaining == 0


def test_unknown_status_from_server_maps_to_unknown(sim):
    sim.add_release("web", "production")
    sim.inject("unknown_status", times=5)
    with connect(sim, PRODUCTION) as c:
        runs = [r for page in c.list_runs() for r in page]
    assert [(r.status, r.raw_status) for r in runs] == [(Status.UNKNOWN, "quantum_wait")]


def test_missing_optional_fields_still_parse(sim):
    run = sim.add_release("web", "production", name="Release v3.0.0", description="big")
    sim.advance(10)
    sim.inject("missing_fields", times=5)
    with connect(sim, PRODUCTION) as c:
        [listed] = [r for page in c.list_runs() for r in page]
        got = c.get_run(locator(run))
    for parsed in (listed, got):
        assert parsed.status == Status.RUNNING
        assert parsed.name == run.data["id"]  # an unnamed run shows its id
        assert (parsed.started_at, parsed.finished_at) == (None, None)
        assert "description" not in parsed.raw
    assert "triggers" not in got.raw and got.raw["apiVersion"] == "v1.2"




# -- what a pass spends: stages are remembered while the pipeline is unchanged ------------


def one_pass(sim, state=None, *, full=False):
    """A pass by a fresh client handed the last pass's state; (runs, state, paths sent)."""
    with connect(sim) as c:
        c.change_state, c.full_read = dict(state or {}), full
        before = len(sim.requests)
        runs = [r for page in c.list_runs() for r in page]
        return runs, c.change_state, [p for _, p, _ in sim.requests[before:]]


def test_an_unchanged_pipeline_is_not_read_again_for_its_stages(sim):
    sim.add_pipeline("api", "Api")
    _, state, full = one_pass(sim, full=True)
    _, state, sent = one_pass(sim, state)
    stage_lists = [f"/v1/projects/shop/pipelines/{p}/release-flows/{s}/runs"
                   for p in ("api", "web") for s in ("development", "staging", "production")]
    assert sent == ["/v1/projects/shop/pipelines", *stage_lists, "/v1/projects/shop/workflows"]
    assert len(full) == len(sent) + 2  # GET pipeline, once for each
    assert one_pass(sim, state)[2] == sent


def test_a_changed_pipeline_has_its_stages_read_again(sim, clock):
    _, state, _ = one_pass(sim, full=True)
    clock.advance(5)
    sim.add_pipeline("web", "Web shop", stages=("Staging", "Production"))
    _, _, sent = one_pass(sim, state)
    assert "/v1/projects/shop/pipelines/web" in sent
    assert not any("/release-flows/development/" in p for p in sent)


def test_a_run_on_an_unchanged_pipeline_is_listed(sim):
    _, state, _ = one_pass(sim, full=True)
    run = sim.add_release("web", "staging", RELEASE_PLAN, age=600)
    runs, _, _ = one_pass(sim, state)
    assert [r.external_id for r in runs] == [f"web/staging/{run.data['id']}"]


# -- the safety re-read: a few unchanged pipelines a pass, each within the period --------

PERIOD, EVERY = 3600.0, 300.0  # RUNBOARD_FULL_READ_EVERY; seconds between passes


def test_unchanged_pipelines_are_reread_a_few_a_pass_each_within_the_period(sim, clock):
    for n in range(5):
        sim.add_pipeline(f"svc-{n}", f"Service {n}")
    pipelines = ["web", *(f"svc-{n}" for n in range(5))]
    state, full, read_at, gaps, extra = {}, True, dict.fromkeys(pipelines, 0.0), [], []
    quiet = 1 + 6 * 3 + 1  # pipelines, each stage's runs, workflows
    # svc-3 loses its production stage without its updatedAt moving (a change the
    # pipeline list does not show): its production runs must stop being listed.
    for n in range(int(PERIOD / EVERY) + 1):
        with connect(sim) as c:
            c.change_state, c.full_read = dict(state), full
            c.clock, c.reread_every = (lambda: clock.now().timestamp()), PERIOD
            before = len(sim.requests)
            list(c.list_runs())
            state, full = c.change_state, False
            sent = [p for _, p, _ in sim.requests[before:]]
        if n == 0:
            sim.pipelines["svc-3"]["stages"] = ("Development", "Staging")
        else:
            extra.append(len(sent) - quiet)
            for pipeline in pipelines:
                if f"/v1/projects/shop/pipelines/{pipeline}" in sent:
                    gaps.append(n * EVERY - read_at[pipeline])
                    read_at[pipeline] = n * EVERY
        clock.advance(EVERY)
    assert state["pipelines"]["svc-3"]["stages"] == ["development", "staging"]
    assert max(extra) <= 1 and len(gaps) >= 6 and max(gaps) <= PERIOD
