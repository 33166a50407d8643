"""Qovery: status mapping, the seed's payloads, and the client against its simulator."""

from types import SimpleNamespace

import httpx
import pytest

from providers.base import (
    AuthError,
    BadPayload,
    Conflict,
    EnvironmentData,
    InvalidRequest,
    NotFound,
    NotSupported,
    ProjectData,
    RateLimited,
    Status,
)
from providers.qovery import STATUS_MAP, QoveryProvider
from providers.simulators.base import Phase
from providers.simulators.qovery import (
    BUILD_FAILS_PLAN,
    CANCEL_REFUSED,
    CANCELLED_PLAN,
    DEPLOY_FAILS_PLAN,
    DEPLOY_PLAN,
    REQUEST_CANCEL_REFUSED,
    STATES,
    QoverySimulator,
)
from tests.conftest import load_fixture

EXPECTED = {
    "BUILDING": Status.RUNNING, "BUILD_ERROR": Status.FAILED, "CANCELED": Status.CANCELLED,
    "CANCELING": Status.CANCELLING, "DELETED": Status.SUCCEEDED,
    "DELETE_ERROR": Status.FAILED, "DELETE_QUEUED": Status.QUEUED,
    "DELETING": Status.RUNNING, "DEPLOYED": Status.SUCCEEDED, "DEPLOYING": Status.RUNNING,
    "DEPLOYMENT_ERROR": Status.FAILED, "DEPLOYMENT_QUEUED": Status.QUEUED,
    "EXECUTING": Status.RUNNING, "QUEUED": Status.QUEUED, "READY": Status.SKIPPED,
    "RECAP": Status.RUNNING, "RESTARTED": Status.SUCCEEDED, "RESTARTING": Status.RUNNING,
    "RESTART_ERROR": Status.FAILED, "RESTART_QUEUED": Status.QUEUED,
    "STOPPED": Status.SUCCEEDED, "STOPPING": Status.RUNNING, "STOP_ERROR": Status.FAILED,
    "STOP_QUEUED": Status.QUEUED, "WAITING_DELETING": Status.QUEUED,
    "WAITING_RESTARTING": Status.QUEUED, "WAITING_RUNNING": Status.QUEUED,
    "WAITING_STOPPING": Status.QUEUED,
    # Added to the spec in 2026-03; Qovery's console shows it as "Status unavailable".
    "UNAVAILABLE": Status.UNKNOWN,
}
SERVICES = [("databases", "postgres-main"), ("applications", "web-frontend"),
            ("jobs", "db-migrations")]


@pytest.fixture
def world(clock):
    with QoverySimulator(token="qov_test_token", clock=clock) as sim:
        org = sim.add_organization("Acme Retail")
        storefront = sim.add_project(org, "storefront")
        yield SimpleNamespace(
            sim=sim, org=org, storefront=storefront,
            production=sim.add_environment(storefront, "production", SERVICES),
            staging=sim.add_environment(storefront, "staging", SERVICES),
        )


@pytest.fixture
def sim(world):
    return world.sim


@pytest.fixture
def client(world):
    scope = {"organization": world.org, "environment": world.production}
    with QoveryProvider(world.sim.url, world.sim.token, scope, timeout=1) as c:
        yield c


def locator(run):
    return {"environment": run.data["environment"], "execution": run.id}


def all_runs(client, **kwargs):
    return [r for page in client.list_runs(**kwargs) for r in page]


def posts(sim):
    return [(path, body) for method, path, body in sim.requests if method == "POST"]


# -- status mapping ----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), EXPECTED.items())
def test_every_documented_status_maps(raw, expected):
    provider = QoveryProvider.__new__(QoveryProvider)
    assert provider.map_status(raw) == expected


def test_status_map_has_no_untested_values():
    assert set(STATUS_MAP) == set(EXPECTED) == set(STATES)
    assert len(EXPECTED) == 29


def test_unavailable_is_mapped_not_guessed(caplog):
    provider = QoveryProvider.__new__(QoveryProvider)
    assert provider.map_status("UNAVAILABLE") == Status.UNKNOWN
    assert "unrecognised" not in caplog.text  # a documented value, not a surprise


@pytest.mark.parametrize(("raw", "expected"), EXPECTED.items())
def test_every_state_served_by_the_simulator_reaches_the_run(clock, raw, expected):
    with QoverySimulator(token="qov_states", clock=clock) as sim:
        org = sim.add_organization("Acme")
        env = sim.add_environment(sim.add_project(org, "shop"), "production")
        sim.add_deployment(env, [Phase(raw, None)])
        with QoveryProvider(sim.url, sim.token, {"organization": org}) as client:
            [run] = all_runs(client)
    assert (run.raw_status, run.status) == (raw, expected)


# -- the seed page's payloads ------------------------------------------------------------


def v2_item(execution_id, status="DEPLOYED"):
    return {"identifier": {"execution_id": execution_id, "environment_id": "e"},
            "auditing_data": {"created_at": "2023-11-07T05:30:00Z",
                              "updated_at": "2023-11-07T05:31:56Z", "triggered_by": "Lena"},
            "status": status, "trigger_action": "DEPLOY", "total_duration": "PT1M",
            "stages": [], "action_status": "ONGOING"}


def test_seed_example_status_overlays_the_execution_it_names():
    payload = load_fixture("qovery_environment_status.json")
    provider = QoveryProvider.__new__(QoveryProvider)
    environment = EnvironmentData(payload["id"], "production", ProjectData("p1", "storefront"))
    run = provider.parse_execution(v2_item("<string>", "QUEUED"), environment, payload)
    assert run.external_id == "3c90c3cc-0d44-4b50-8888-8dd25736052a/<string>"
    assert run.locator == {"environment": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
                           "execution": "<string>"}
    assert (run.status, run.raw_status) == (Status.RUNNING, "BUILDING")
    assert run.created_at.isoformat() == "2023-11-07T05:30:00+00:00"
    assert run.finished_at is None
    assert run.triggered_by == "Lena"
    assert run.environment is environment and run.project.name == "storefront"
    assert run.raw["deployment_status"] == "NEVER_DEPLOYED"
    assert run.raw["environment_status"]["origin"] == "API"
    assert run.web_url == ""  # Qovery documents no console link pattern
    other = provider.parse_execution(v2_item("another"), environment, payload)
    assert (other.raw_status, "deployment_status") == ("DEPLOYED", "deployment_status")
    assert "environment_status" not in other.raw


def test_an_execution_without_its_identifier_is_a_bad_payload():
    provider = QoveryProvider.__new__(QoveryProvider)
    item = v2_item("x")
    del item["identifier"]["execution_id"]
    with pytest.raises(BadPayload, match="execution_id"):
        provider.parse_execution(item, EnvironmentData("e", "production"))


# -- auth and scope ----------------------------------------------------------------------

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl"


def test_api_tokens_use_the_token_scheme_and_jwts_bearer():
    provider = QoveryProvider.__new__(QoveryProvider)
    assert provider.auth_headers("qov_abc123") == {"Authorization": "Token qov_abc123"}
    assert provider.auth_headers(JWT) == {"Authorization": f"Bearer {JWT}"}


@pytest.mark.parametrize(("token", "scheme"), [("qov_plain_api_token", "Token"), (JWT, "Bearer")])
def test_both_token_forms_are_accepted_end_to_end(clock, token, scheme):
    with QoverySimulator(token=token, clock=clock) as sim:
        org = sim.add_organization("Acme Retail")
        sim.add_environment(sim.add_project(org, "storefront"), "production")
        with QoveryProvider(sim.url, token, {"organization": org}) as client:
            assert client._http.headers["Authorization"] == f"{scheme} {token}"
            assert [e.name for e in client.discover().environments] == ["production"]


@pytest.mark.parametrize(("token", "header"), [
    ("qov_plain_api_token", "Bearer qov_plain_api_token"),  # an API token is not a JWT
    (JWT, f"Token {JWT}"),
    ("qov_plain_api_token", "qov_plain_api_token"),
])
def test_the_simulator_refuses_a_token_under_the_wrong_scheme(clock, token, header):
    with QoverySimulator(token=token, clock=clock) as sim:
        org = sim.add_organization("Acme Retail")
        answer = httpx.get(f"{sim.url}/organization/{org}/project",
                           headers={"Authorization": header})
    assert answer.status_code == 401
    assert answer.json() == {"status": 401, "detail": "Access token is missing or invalid"}


def test_organization_scope_is_required():
    with pytest.raises(InvalidRequest, match="organization"):
        QoveryProvider("http://127.0.0.1:9", "t", {})


def test_bad_token_is_an_auth_error(world):
    bad = QoveryProvider(world.sim.url, "qov_wrong", {"organization": world.org})
    with pytest.raises(AuthError, match="Access token is missing or invalid"):
        list(bad.list_runs())


# -- discovery and listing ---------------------------------------------------------------


def test_discovers_projects_and_environments_of_the_organization(world):
    payments = world.sim.add_project(world.org, "payments-api")
    world.sim.add_environment(payments, "production")
    with QoveryProvider(world.sim.url, world.sim.token, {"organization": world.org}) as c:
        found = c.discover()
    assert sorted(p.name for p in found.projects) == ["payments-api", "storefront"]
    assert sorted((e.project.name, e.name) for e in found.environments) == [
        ("payments-api", "production"), ("storefront", "production"),
        ("storefront", "staging")]
    assert found.pipelines == []


def test_project_scope_narrows_discovery(world):
    world.sim.add_environment(world.sim.add_project(world.org, "payments-api"), "sandbox")
    scope = {"organization": world.org, "project": world.storefront}
    with QoveryProvider(world.sim.url, world.sim.token, scope) as c:
        found = c.discover()
    assert [p.name for p in found.projects] == ["storefront"]
    assert sorted(e.name for e in found.environments) == ["production", "staging"]


def test_environment_scope_reads_the_environment_and_its_project(client, world):
    found = client.discover()
    assert [(e.external_id, e.name) for e in found.environments] == [
        (world.production, "production")]
    assert [(p.external_id, p.name) for p in found.projects] == [
        (world.storefront, "storefront")]


def test_runs_are_identified_by_the_execution_id_the_status_names(sim, world, client):
    made = [sim.add_deployment(world.production, DEPLOY_PLAN, age=age)
            for age in (5000, 4000, 3000)]
    runs = all_runs(client)
    assert [r.locator for r in runs] == [locator(m) for m in reversed(made)]
    # The environment status names the current deployment by its execution id ...
    status = client._status(world.production)
    assert status["last_deployment_id"] == runs[0].locator["execution"] == made[-1].id
    # ... which the V1 history does not know: its ids are another identifier.
    v1 = client.request("GET", f"/environment/{world.production}/deploymentHistory")
    assert made[-1].id not in {item["id"] for item in v1["results"]}
    assert runs[0].external_id == f"{world.production}/{made[-1].id}"
    assert runs[0].raw["deployment_status"] == "UP_TO_DATE"  # the current deployment
    assert "deployment_status" not in runs[1].raw


def test_an_execution_reads_its_stages_services_and_commit(sim, world, client):
    made = sim.add_deployment(world.production, DEPLOY_FAILS_PLAN, age=600)
    [run] = all_runs(client)
    assert (run.status, run.raw_status) == (Status.FAILED, "DEPLOYMENT_ERROR")
    assert run.raw["trigger_action"] == "DEPLOY" and run.raw["action_status"] == "ERROR"
    assert [s["name"] for s in run.raw["stages"]] == [
        "DATABASE DEFAULT", "JOB DEFAULT", "APPLICATION DEFAULT"]
    assert [(j.name, j.status) for j in run.jobs] == [
        ("postgres-main", Status.SUCCEEDED), ("db-migrations", Status.SKIPPED),
        ("web-frontend", Status.FAILED)]
    assert run.commit == made.data["commit"] and run.version == run.commit[:12]
    assert run.triggered_by == "Priya Raman"
    assert run.name == f"storefront/production deploy #{made.id.rsplit('-', 1)[1]}"
    assert run.finished_at is not None


def test_history_is_read_with_one_v2_request_of_a_hundred(sim, world, client):
    for age in range(130, 0, -1):
        sim.add_deployment(world.production, DEPLOY_PLAN, age=age * 600)
    runs = all_runs(client)
    assert len(runs) == 100  # V2 has no further page: the newest 100 are what Qovery gives
    history = [(r.path, r.query) for r, *_ in sim.exchanges if "deploymentHistory" in r.path]
    assert history == [(f"/environment/{world.production}/deploymentHistoryV2",
                        {"pageSize": "100"})]


def test_v2_pages_by_page_size_with_its_documented_default(sim, world):
    for age in range(30, 0, -1):
        sim.add_deployment(world.production, DEPLOY_PLAN, age=age * 600)
    path = f"{sim.url}/environment/{world.production}/deploymentHistoryV2"
    headers = {"Authorization": f"Token {sim.token}"}
    default = httpx.get(path, headers=headers).json()
    assert (default["page_size"], len(default["results"])) == (20, 20)
    small = httpx.get(path, headers=headers, params={"pageSize": 5, "startId": "x",
                                                     "page": 3}).json()  # unknown: ignored
    assert len(small["results"]) == 5
    assert small["results"] == default["results"][:5]
    assert httpx.get(path, headers=headers, params={"pageSize": "many"}).status_code == 400


def test_v1_history_pages_by_start_id_twenty_a_page(sim, world):
    made = [sim.add_deployment(world.production, DEPLOY_PLAN, age=age * 600)
            for age in range(45, 0, -1)]
    path = f"{sim.url}/environment/{world.production}/deploymentHistory"
    headers = {"Authorization": f"Token {sim.token}"}
    pages, start = [], None
    while True:
        body = httpx.get(path, headers=headers,
                         params={"startId": start} if start else None).json()
        if not body["results"]:
            break
        pages.append(body["results"])
        start = body["results"][-1]["id"]
    assert [len(p) for p in pages] == [20, 20, 5]
    ids = [item["id"] for page in pages for item in page]
    assert len(set(ids)) == 45 and not set(ids) & {m.id for m in made}


def test_lists_every_environment_of_the_organization(sim, world):
    sim.add_deployment(world.production, DEPLOY_PLAN, age=100)
    sim.add_deployment(world.staging, BUILD_FAILS_PLAN, age=200)
    with QoveryProvider(sim.url, sim.token, {"organization": world.org}) as c:
        runs = all_runs(c)
    assert sorted((r.environment.name, r.status) for r in runs) == [
        ("production", Status.SUCCEEDED), ("staging", Status.FAILED)]


def test_a_live_deployment_moves_through_its_states(sim, world, client):
    run = sim.add_deployment(world.production, DEPLOY_PLAN)
    seen = [client.get_run(locator(run)).raw_status]
    for seconds in (10, 30, 20):
        sim.advance(seconds)
        seen.append(client.get_run(locator(run)).raw_status)
    assert seen == ["DEPLOYMENT_QUEUED", "BUILDING", "DEPLOYING", "DEPLOYED"]


def test_get_run_of_an_unknown_execution_is_not_found(sim, world, client):
    sim.add_deployment(world.production, DEPLOY_PLAN, age=100)
    with pytest.raises(NotFound):
        client.get_run({"environment": world.production, "execution": "no-such-id"})


def test_a_run_stored_under_a_v1_history_id_is_not_found(sim, world, client):
    made = sim.add_deployment(world.production, DEPLOY_PLAN, age=100)
    with pytest.raises(NotFound):
        client.get_run({"environment": world.production,
                        "deployment": made.data["history_id"]})


# -- the deployment queue ----------------------------------------------------------------


def test_queued_requests_are_queued_runs(sim, world, client):
    running = sim.add_deployment(world.production, DEPLOY_PLAN)
    request_id = sim.queue_deployment(world.production, triggered_by="Lena Fischer")
    assert client._status(world.production)["deployment_request_id"] == request_id
    runs = all_runs(client)
    queued, current = runs
    assert queued.external_id == f"{world.production}/request/{request_id}"
    assert queued.locator == {"environment": world.production,
                              "deployment_request": request_id}
    assert (queued.status, queued.raw_status, queued.created_at) == (
        Status.QUEUED, "QUEUED", None)
    assert queued.triggered_by == "Lena Fischer"
    assert current.locator == locator(running)


def test_a_queued_request_is_cancelled_through_the_deployment_queue(sim, world, client):
    running = sim.add_deployment(world.production, DEPLOY_PLAN)
    request_id = sim.queue_deployment(world.production)
    [queued] = [r for r in all_runs(client) if r.status == Status.QUEUED and
                "deployment_request" in r.locator]
    answer = client.cancel(queued.locator, comment="not now")
    assert posts(sim) == [(f"/deploymentQueue/{request_id}/cancelDeployment", {})]
    [cancel] = [e for e in sim.exchanges if e[0].method == "POST"]
    assert (cancel[1], cancel[2]) == (202, b"")
    assert (answer.external_id, answer.status) == (queued.external_id, Status.CANCELLING)
    assert client.get_run(answer.locator).status == Status.CANCELLED
    assert sim._latest(world.production) is running  # the running one was left alone
    sim.advance(600)
    assert [r.locator for r in all_runs(client)] == [locator(running)]  # never started


def test_cancelling_a_request_twice_is_refused(sim, world, client):
    sim.add_deployment(world.production, DEPLOY_PLAN)
    request_id = sim.queue_deployment(world.production)
    path = f"/deploymentQueue/{request_id}/cancelDeployment"
    client.request("POST", path, json={})
    with pytest.raises(Conflict) as err:
        client.request("POST", path, json={})
    assert (err.value.status_code, err.value.message) == (409, REQUEST_CANCEL_REFUSED)
    with pytest.raises(NotFound):
        client.request("POST", "/deploymentQueue/7d1c6b1e-5d5f-4d4f-9d2e-1a2b3c4d5e6f"
                               "/cancelDeployment", json={})


def test_a_request_that_started_ends_as_dequeued_and_its_execution_is_listed(
        sim, world, client):
    sim.add_deployment(world.production, DEPLOY_PLAN)
    request_id = sim.queue_deployment(world.production)
    [queued] = [r for r in all_runs(client) if "deployment_request" in r.locator]
    sim.advance(600)  # the running deployment ends; the request starts and ends
    gone = client.get_run(queued.locator)
    assert (gone.status, gone.raw_status) == (Status.SKIPPED, "DEQUEUED")
    newest = all_runs(client)[0]
    assert newest.locator["execution"] == sim.deployment_requests[request_id]["execution_id"]
    assert newest.status == Status.SUCCEEDED


# -- actions -----------------------------------------------------------------------------


def test_cancel_passes_through_canceling(sim, world, client):
    run = sim.add_deployment(world.production, DEPLOY_PLAN)
    sim.advance(10)
    assert client.get_run(locator(run)).status == Status.RUNNING
    answer = client.cancel(locator(run), comment="wrong branch")
    assert (answer.raw_status, answer.status) == ("CANCELING", Status.CANCELLING)
    assert answer.external_id == f"{world.production}/{run.id}"
    assert answer.created_at == client.get_run(locator(run)).created_at
    assert posts(sim) == [(f"/environment/{world.production}/cancelDeployment",
                           load_fixture("qovery_cancel_request.json"))]
    assert [status for r, status, *_ in sim.exchanges if r.method == "POST"] == [202]
    sim.advance(5)
    assert client.get_run(locator(run)).status == Status.CANCELLED


def test_force_cancel_is_sent_as_documented(sim, world, client):
    run = sim.add_deployment(world.production, DEPLOY_PLAN)
    client.cancel(locator(run), force=True)
    assert posts(sim)[-1][1] == {"force_cancel": True}
    assert run.data["force_cancel"] is True


def test_cancel_refuses_a_deployment_that_is_no_longer_current(sim, world, client):
    older = sim.add_deployment(world.production, DEPLOY_PLAN, age=100)
    sim.add_deployment(world.production, DEPLOY_PLAN)  # now the environment's current one
    with pytest.raises(Conflict, match="no longer the environment's current deployment"):
        client.cancel(locator(older))
    assert posts(sim) == []  # cancelling would have hit the newer deployment


def test_the_current_deployment_is_told_by_execution_id_not_v1_id(sim, world, client):
    """The old client compared last_deployment_id with V1's `id`: never equal."""
    run = sim.add_deployment(world.production, DEPLOY_PLAN)
    with pytest.raises(Conflict):
        client.cancel({"environment": world.production, "execution": run.data["history_id"]})
    assert posts(sim) == []
    client.cancel(locator(run))
    assert len(posts(sim)) == 1


def test_cancel_refuses_a_finished_deployment_without_asking_qovery(sim, world, client):
    run = sim.add_deployment(world.production, DEPLOY_PLAN, age=600)
    with pytest.raises(Conflict, match="succeeded, not in progress"):
        client.cancel(locator(run))
    assert posts(sim) == []


def test_qoverys_own_refusal_message_is_kept(sim, world, client, monkeypatch):
    run = sim.add_deployment(world.production, DEPLOY_PLAN)
    send = client.request

    def finishing_first(method, path, **kwargs):  # the deployment ends under our feet
        if method == "POST":
            sim.advance(600)
        return send(method, path, **kwargs)

    monkeypatch.setattr(client, "request", finishing_first)
    with pytest.raises(Conflict) as err:
        client.cancel(locator(run))
    assert (err.value.status_code, err.value.message) == (409, CANCEL_REFUSED)
    [refusal] = [e for e in sim.exchanges if e[0].method == "POST"]
    assert refusal[2] == {"status": 409, "detail": CANCEL_REFUSED}


def test_retry_redeploys_and_returns_the_new_execution(sim, world, client):
    failed = sim.add_deployment(world.production, BUILD_FAILS_PLAN, age=600)
    assert client.get_run(locator(failed)).status == Status.FAILED
    answer = client.retry(locator(failed))
    assert posts(sim) == [(f"/environment/{world.production}/redeploy", None)]
    [redeploy] = [e for e in sim.exchanges if e[0].method == "POST"]
    assert redeploy[1] == 202
    # Qovery's answer still names the failed execution: the new one is found in V2.
    assert redeploy[2]["last_deployment_id"] == failed.id
    new = sim._latest(world.production)
    assert answer.locator == locator(new) != locator(failed)
    assert (answer.raw_status, answer.status) == ("DEPLOYMENT_QUEUED", Status.QUEUED)
    assert answer.triggered_by == "Runboard API token"
    sim.advance(120)
    assert client.get_run(answer.locator).status == Status.SUCCEEDED
    assert client.get_run(locator(failed)).status == Status.FAILED  # the old one stays


def test_a_redeploy_that_is_queued_returns_the_queued_request(sim, world, client, monkeypatch):
    failed = sim.add_deployment(world.production, BUILD_FAILS_PLAN, age=600)
    send = client.request

    def someone_deploys_first(method, path, **kwargs):
        if method == "POST":
            sim.add_deployment(world.production, DEPLOY_PLAN, triggered_by="Romain Dupont")
        return send(method, path, **kwargs)

    monkeypatch.setattr(client, "request", someone_deploys_first)
    answer = client.retry(locator(failed))
    [(request_id, _)] = sim._queued(world.production)
    assert answer.locator == {"environment": world.production,
                              "deployment_request": request_id}
    assert (answer.status, answer.triggered_by) == (Status.QUEUED, "Runboard API token")


def test_retry_of_a_cancelled_deployment(sim, world, client):
    cancelled = sim.add_deployment(world.production, CANCELLED_PLAN, age=600)
    assert client.get_run(locator(cancelled)).status == Status.CANCELLED
    assert client.retry(locator(cancelled)).status == Status.QUEUED


def test_retry_refuses_what_is_not_the_latest_failure(sim, world, client):
    failed = sim.add_deployment(world.production, BUILD_FAILS_PLAN, age=900)
    sim.add_deployment(world.production, DEPLOY_PLAN, age=300)
    with pytest.raises(Conflict, match="no longer the environment's current"):
        client.retry(locator(failed))
    running = sim.add_deployment(world.production, DEPLOY_PLAN)
    with pytest.raises(Conflict, match="only a failed or cancelled"):
        client.retry(locator(running))
    assert posts(sim) == []


@pytest.mark.parametrize("action", ["approve", "reject"])
def test_approval_is_not_supported(sim, world, client, action):
    run = sim.add_deployment(world.production, DEPLOY_PLAN)
    sent = len(sim.requests)
    with pytest.raises(NotSupported):
        getattr(client, action)(locator(run), comment="ok")
    assert len(sim.requests) == sent


# -- faults ------------------------------------------------------------------------------


def test_rate_limit_carries_retry_after(sim, client):
    sim.inject("rate_limit", retry_after=7)
    with pytest.raises(RateLimited) as err:
        list(client.list_runs())
    assert err.value.retry_after == 7
    assert client.rate_limit.remaining is None  # Qovery sends no rate-limit headers


def test_unknown_status_from_server_maps_to_unknown(sim, world, client):
    sim.add_deployment(world.production, DEPLOY_PLAN)
    sim.inject("unknown_status", times=5)
    runs = all_runs(client)
    assert [(r.status, r.raw_status) for r in runs] == [(Status.UNKNOWN, "TELEPORTING")]
    assert {j.status for j in runs[0].jobs} == {Status.UNKNOWN}


def test_missing_optional_fields_still_parse(sim, world, client):
    sim.add_deployment(world.production, DEPLOY_PLAN, age=30)
    sim.inject("missing_fields", times=5)
    [run] = all_runs(client)
    assert (run.status, run.raw_status) == (Status.RUNNING, "BUILDING")
    assert (run.commit, run.version) == ("", "")
    assert run.created_at is not None and run.jobs


@pytest.mark.django_db
def test_retry_through_runboard_adds_the_new_deployment_as_a_run(sim, world, manager):
    from dashboard import actions, sync
    from dashboard.models import ActionRecord, Connection, Run

    failed = sim.add_deployment(world.production, DEPLOY_FAILS_PLAN, age=600)
    connection = Connection.objects.create(
        provider="qovery", name="Qovery", base_url=sim.url, token=sim.token,
        scope={"organization": world.org})
    sync.sync_connection(connection.pk)
    old = Run.objects.get(connection=connection)
    assert old.status == Status.FAILED and old.environment.name == "production"
    record = actions.perform(old, manager, "retry")
    assert record.state == ActionRecord.State.SUCCEEDED
    new = Run.objects.filter(connection=connection).exclude(pk=old.pk).get()
    assert new.status == Status.QUEUED and new.locator["execution"] != failed.id
    assert new.locator == {"environment": world.production,
                           "execution": sim._latest(world.production).id}
    old.refresh_from_db()
    assert old.status == Status.FAILED
    # The old run is now superseded in its environment: Runboard offers and sends nothing.
    assert old.available_actions() == []
    sent = len(posts(sim))
    with pytest.raises(actions.ActionRefused, match="A newer run exists in production"):
        actions.perform(old, manager, "retry")
    assert len(posts(sim)) == sent


@pytest.mark.django_db
def test_a_queued_request_neither_blocks_the_running_deployment_nor_is_blocked(
        sim, world, manager):
    from dashboard import actions, sync
    from dashboard.models import Connection, Run

    sim.add_deployment(world.production, BUILD_FAILS_PLAN, age=900)
    sim.add_deployment(world.production, DEPLOY_PLAN, age=10)
    sim.queue_deployment(world.production)
    connection = Connection.objects.create(
        provider="qovery", name="Qovery", base_url=sim.url, token=sim.token,
        scope={"organization": world.org})
    sync.sync_connection(connection.pk)
    request_run = Run.objects.get(connection=connection, locator__has_key="deployment_request")
    running = Run.objects.get(connection=connection, status=Status.RUNNING)
    failed = Run.objects.get(connection=connection, status=Status.FAILED)
    assert Run.objects.filter(connection=connection).first() == request_run  # newest first
    assert running.available_actions() == ["cancel"]
    assert failed.available_actions() == []  # superseded by the running one
    actions.perform(request_run, manager, "cancel", comment="not this one")
    request_run.refresh_from_db()
    assert request_run.status == Status.CANCELLING
    sync.sync_connection(connection.pk)
    request_run.refresh_from_db()
    assert request_run.status == Status.CANCELLED
    actions.perform(running, manager, "cancel", comment="and not this one")
    assert [path for path, _ in posts(sim)][-1].endswith("/cancelDeployment")


# -- list-level change detection: a pass reads in detail only what changed -----------------


def one_pass(sim, scope, state=None, *, full=False):
    """A pass by a fresh client (as every sync makes) handed the last pass's state;
    (runs, the state it leaves, the requests it sent)."""
    with QoveryProvider(sim.url, sim.token, scope) as c:
        c.change_state, c.full_read = dict(state or {}), full
        before = len(sim.requests)
        runs = all_runs(c)
        return runs, c.change_state, [path for _, path, _ in sim.requests[before:]]


@pytest.fixture
def settled(sim, world):
    """Both environments with finished deployments, read once in full."""
    sim.add_deployment(world.production, DEPLOY_PLAN, age=3600)
    sim.add_deployment(world.staging, BUILD_FAILS_PLAN, age=1800)
    runs, state, sent = one_pass(sim, {"organization": world.org}, full=True)
    # projects, statuses, environments, then the queue and history of each
    assert len(runs) == 2 and len(sent) == 7
    return state


def test_a_pass_over_an_unchanged_organization_costs_a_request_a_project(sim, world, settled):
    runs, state, sent = one_pass(sim, {"organization": world.org}, settled)
    assert runs == []
    assert sent == [f"/organization/{world.org}/project",
                    f"/project/{world.storefront}/environment/status"]
    assert (state["seen"], state["environments"]) == (settled["seen"],
                                                      settled["environments"])


def test_a_new_execution_is_read_in_its_environment_alone(sim, world, settled):
    new = sim.add_deployment(world.staging, DEPLOY_PLAN, age=600)
    runs, state, sent = one_pass(sim, {"organization": world.org}, settled)
    assert [r.locator["execution"] for r in runs if r.status == Status.SUCCEEDED
            and r.environment.external_id == world.staging] == [new.id]
    assert sorted(sent[2:]) == [f"/environment/{world.staging}/deploymentHistoryV2",
                                f"/environment/{world.staging}/deploymentQueue"]
    assert one_pass(sim, {"organization": world.org}, state)[2] == sent[:2]


def test_a_new_execution_ending_as_the_last_did_is_not_missed(sim, world, settled):
    before = one_pass(sim, {"organization": world.org}, settled)[0]
    assert before == []
    # Production was DEPLOYED, and a whole new deployment ends DEPLOYED between passes:
    # its state is the same, the execution it names is not.
    again = sim.add_deployment(world.production, DEPLOY_PLAN, age=300)
    runs, _, _ = one_pass(sim, {"organization": world.org}, settled)
    assert again.id in {r.locator["execution"] for r in runs}


def test_a_status_naming_an_execution_the_history_lacks_is_read_again(sim, world, settled):
    """Qovery does not say its history is read where its status is: a status that names
    an execution its history does not list yet leaves the environment unread, or the
    next passes skip it (same status, settled) until the hourly re-read."""
    sim.history_lag = 900
    new = sim.add_deployment(world.staging, DEPLOY_PLAN, age=600)  # deployed, not listed
    runs, state, _ = one_pass(sim, {"organization": world.org}, settled)
    assert new.id not in {r.locator.get("execution") for r in runs}
    sim.history_lag = 0  # the history caught up; the status did not move
    runs, state, sent = one_pass(sim, {"organization": world.org}, state)
    assert [r.status for r in runs if r.locator.get("execution") == new.id] == [
        Status.SUCCEEDED]
    assert one_pass(sim, {"organization": world.org}, state)[2] == sent[:2]  # then skipped


def test_a_deployment_under_way_is_read_every_pass(sim, world, settled):
    live = sim.add_deployment(world.production, DEPLOY_PLAN, age=10)  # BUILDING
    _, state, _ = one_pass(sim, {"organization": world.org}, settled)
    sim.advance(1)  # its status says the same; its stages may not
    runs, state, _ = one_pass(sim, {"organization": world.org}, state)
    assert live.id in {r.locator.get("execution") for r in runs}
    sim.advance(120)  # DEPLOYED: read once more for the end, then left alone
    assert {r.status for r in one_pass(sim, {"organization": world.org}, state)[0]
            if r.locator.get("execution") == live.id} == {Status.SUCCEEDED}
    state = one_pass(sim, {"organization": world.org}, state)[1]
    assert len(one_pass(sim, {"organization": world.org}, state)[2]) == 2


def test_a_queued_request_is_read_though_the_environment_is_settled(sim, world, settled):
    sim.queue_deployment(world.staging)
    runs, _, _ = one_pass(sim, {"organization": world.org}, settled)
    assert [r.status for r in runs if "deployment_request" in r.locator] == [Status.QUEUED]


def test_a_new_environment_is_named_from_the_environment_list(sim, world, settled):
    review = sim.add_environment(world.storefront, "review-42", SERVICES)
    sim.add_deployment(review, DEPLOY_PLAN, age=900)
    runs, state, sent = one_pass(sim, {"organization": world.org}, settled)
    assert {r.environment.name for r in runs} == {"review-42"}
    assert f"/project/{world.storefront}/environment" in sent
    assert f"/project/{world.storefront}/environment" not in one_pass(
        sim, {"organization": world.org}, state)[2]


def test_a_full_read_ignores_what_was_remembered(sim, world, settled):
    runs, _, sent = one_pass(sim, {"organization": world.org}, settled, full=True)
    assert len(runs) == 2 and len(sent) == 7


def test_an_environment_scope_costs_one_status_read_when_nothing_changed(sim, world):
    sim.add_deployment(world.production, DEPLOY_PLAN, age=3600)
    scope = {"organization": world.org, "environment": world.production}
    _, state, _ = one_pass(sim, scope, full=True)
    runs, _, sent = one_pass(sim, scope, state)
    assert (runs, sent) == ([], [f"/environment/{world.production}/status"])


def test_the_project_status_list_is_every_environment_status_of_the_project(sim, world):
    sim.add_deployment(world.production, DEPLOY_PLAN, age=30)
    sim.queue_deployment(world.production)
    headers = {"Authorization": f"Token {sim.token}"}
    listed = httpx.get(f"{sim.url}/project/{world.storefront}/environment/status",
                       headers=headers).json()
    each = [httpx.get(f"{sim.url}/environment/{e}/status", headers=headers).json()
            for e in (world.production, world.staging)]
    assert sorted(listed["results"], key=lambda s: s["id"]) == sorted(each,
                                                                       key=lambda s: s["id"])
    unknown = httpx.get(f"{sim.url}/project/{world.org}/environment/status", headers=headers)
    assert unknown.status_code == 404


# -- the safety re-read: a few skipped environments a pass, each within the period ---------

PERIOD, EVERY = 3600.0, 120.0  # RUNBOARD_FULL_READ_EVERY; seconds between passes


def timed_pass(sim, clock, scope, state=None, *, full=False):
    """`one_pass` on the simulator's clock, re-reading within PERIOD as the sync asks."""
    with QoveryProvider(sim.url, sim.token, scope) as c:
        c.change_state, c.full_read = dict(state or {}), full
        c.clock, c.reread_every = (lambda: clock.now().timestamp()), PERIOD
        before = len(sim.requests)
        runs = all_runs(c)
        return runs, c.change_state, [path for _, path, _ in sim.requests[before:]]


@pytest.fixture
def account(clock):
    """4 projects of 3 environments, each deployed long ago."""
    with QoverySimulator(token="qov_test_token", clock=clock) as sim:
        org = sim.add_organization("Acme Retail")
        projects = [sim.add_project(org, f"project-{p}") for p in range(4)]
        envs = [sim.add_environment(project, name, SERVICES) for project in projects
                for name in ("development", "staging", "production")]
        for env in envs:
            sim.add_deployment(env, DEPLOY_PLAN, age=7200)
        yield SimpleNamespace(sim=sim, scope={"organization": org}, envs=envs,
                              projects=projects)


def test_quiet_passes_reread_a_slice_and_every_environment_within_the_period(account,
                                                                              clock):
    sim, envs = account.sim, account.envs
    _, state, sent = timed_pass(sim, clock, account.scope, full=True)
    assert len(sent) == 1 + 4 * 2 + 12 * 2  # the first pass reads everything
    quiet = 1 + 4  # projects, and each one's status list
    read_at = dict.fromkeys(envs, 0.0)
    gaps, extra = [], []
    passes = 2 * int(PERIOD / EVERY)
    for n in range(1, passes + 1):
        clock.advance(EVERY)
        runs, state, sent = timed_pass(sim, clock, account.scope, state)
        assert {r.status for r in runs} <= {Status.SUCCEEDED}
        extra.append(len(sent) - quiet)
        for env in envs:
            if f"/environment/{env}/deploymentHistoryV2" in sent:
                gaps.append(n * EVERY - read_at[env])
                read_at[env] = n * EVERY
    # No burst: a pass re-reads at most two environments (two requests each) and one
    # project's environment list (for renames).
    assert max(extra) <= 2 * 2 + 1
    # Every environment read again within the period, the last one included.
    assert len(gaps) >= 12 and max(gaps) <= PERIOD
    assert all(passes * EVERY - at < PERIOD for at in read_at.values())
    # About what the hourly full read spent (2 a environment and 1 a project an hour).
    assert sum(extra) <= 2 * (12 * 2 + 4) + 2 * 2 + 1


def test_a_change_the_status_list_does_not_show_is_found_within_the_period(account, clock):
    sim, envs = account.sim, account.envs
    _, state, _ = timed_pass(sim, clock, account.scope, full=True)
    # Production of project 2 gets another commit in its history, and development of
    # project 3 a new name: neither moves anything in the project status lists.
    latest = sim._latest(envs[8])
    latest.data["commit"] = "f" * 40
    sim.environments[envs[9]]["name"] = "preview-9"
    commit_at = name_at = None
    every = 300.0  # passes further apart: more re-read a pass
    for n in range(1, int(PERIOD / every) + 1):
        clock.advance(every)
        runs, state, _ = timed_pass(sim, clock, account.scope, state)
        if commit_at is None and any(r.commit == "f" * 40 for r in runs):
            commit_at = n * every
        if name_at is None and any(r.environment.name == "preview-9" for r in runs):
            name_at = n * every
    assert commit_at is not None and commit_at <= PERIOD
    assert name_at is not None and name_at <= PERIOD


def test_an_environment_scope_rereads_its_one_environment_within_the_period(world, clock):
    sim = world.sim
    sim.add_deployment(world.production, DEPLOY_PLAN, age=7200)
    scope = {"organization": world.org, "environment": world.production}
    _, state, _ = timed_pass(sim, clock, scope, full=True)
    sent_all = []
    for _ in range(int(PERIOD / EVERY)):
        clock.advance(EVERY)
        _, state, sent = timed_pass(sim, clock, scope, state)
        assert len(sent) <= 1 + 2 + 2  # status; queue and history; its name and project
        sent_all += sent
    assert f"/environment/{world.production}/deploymentHistoryV2" in sent_all
    assert f"/environment/{world.production}" in sent_all
