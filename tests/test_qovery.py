"""Qovery: status mapping, the seed's payloads, and the client against its simulator."""

from datetime import timedelta
from types import SimpleNamespace

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
from providers.qovery import SERVICE_STATUS_MAP, STATUS_MAP, QoveryProvider
from providers.simulators.qovery import (
    BUILD_FAILS_PLAN,
    CANCEL_REFUSED,
    CANCELLED_PLAN,
    DEPLOY_FAILS_PLAN,
    DEPLOY_PLAN,
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
}
# GlobalDeploymentStatus (applications, containers, databases) adds these three.
EXPECTED_SERVICE_ONLY = {
    "BUILT": Status.RUNNING, "RUNNING": Status.SUCCEEDED, "RUNNING_ERROR": Status.FAILED,
}
SERVICES = [("databases", "postgres-main"), ("applications", "web-frontend"),
            ("jobs", "db-migrations")]


@pytest.fixture
def world(clock):
    with QoverySimulator(token="qovery-test-token", clock=clock) as sim:
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
    return {"environment": run.data["environment"], "deployment": run.id}


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
    assert set(STATUS_MAP) == set(EXPECTED)
    assert len(EXPECTED) == 28


@pytest.mark.parametrize(("raw", "expected"),
                         {**EXPECTED, **EXPECTED_SERVICE_ONLY}.items())
def test_every_documented_service_status_maps(raw, expected):
    assert SERVICE_STATUS_MAP[raw] == expected


def test_service_status_map_has_no_untested_values():
    assert set(SERVICE_STATUS_MAP) == set(EXPECTED) | set(EXPECTED_SERVICE_ONLY)


# -- the seed page's payloads ------------------------------------------------------------


def test_seed_example_payload_parses():
    payload = load_fixture("qovery_environment_status.json")
    provider = QoveryProvider.__new__(QoveryProvider)
    environment = EnvironmentData(payload["id"], "production", ProjectData("p1", "storefront"))
    run = provider.parse_environment_status(payload, environment)
    assert run.external_id == "3c90c3cc-0d44-4b50-8888-8dd25736052a/<string>"
    assert run.locator == {"environment": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
                           "deployment": "<string>"}
    assert (run.status, run.raw_status) == (Status.RUNNING, "BUILDING")
    assert run.created_at.isoformat() == "2023-11-07T05:31:56+00:00"
    assert run.finished_at is None
    assert run.triggered_by == "<string>"
    assert run.environment is environment and run.project.name == "storefront"
    assert run.raw["deployment_status"] == "NEVER_DEPLOYED"
    assert run.raw["environment_status"]["origin"] == "API"
    assert run.web_url == ""  # Qovery documents no console link pattern


def test_missing_required_field_is_a_bad_payload():
    payload = load_fixture("qovery_environment_status.json")
    del payload["last_deployment_state"]
    provider = QoveryProvider.__new__(QoveryProvider)
    with pytest.raises(BadPayload, match="last_deployment_state"):
        provider.parse_environment_status(payload, EnvironmentData("e", "production"))


# -- auth and scope ----------------------------------------------------------------------


def test_api_tokens_use_the_token_scheme_and_jwts_bearer():
    provider = QoveryProvider.__new__(QoveryProvider)
    assert provider.auth_headers("qov_abc123") == {"Authorization": "Token qov_abc123"}
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl"
    assert provider.auth_headers(jwt) == {"Authorization": f"Bearer {jwt}"}


@pytest.mark.parametrize(("token", "scheme"), [
    ("qov_plain_api_token", "Token"),
    ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl", "Bearer"),
])
def test_both_token_forms_are_accepted_end_to_end(clock, token, scheme):
    with QoverySimulator(token=token, clock=clock) as sim:
        org = sim.add_organization("Acme Retail")
        sim.add_environment(sim.add_project(org, "storefront"), "production")
        with QoveryProvider(sim.url, token, {"organization": org}) as client:
            assert client._http.headers["Authorization"] == f"{scheme} {token}"
            assert [e.name for e in client.discover().environments] == ["production"]


def test_organization_scope_is_required():
    with pytest.raises(InvalidRequest, match="organization"):
        QoveryProvider("http://127.0.0.1:9", "t", {})


def test_bad_token_is_an_auth_error(world):
    bad = QoveryProvider(world.sim.url, "wrong", {"organization": world.org})
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


def test_lists_deployments_across_pages_newest_first(sim, world, client):
    sim.page_size = 2
    made = [sim.add_deployment(world.production, DEPLOY_PLAN, age=age)
            for age in (5000, 4000, 3000, 2000, 1000)]
    pages = list(client.list_runs())
    assert [len(p) for p in pages] == [2, 2, 1]
    ids = [r.locator["deployment"] for page in pages for r in page]
    assert ids == [r.id for r in reversed(made)]
    history = [p for m, p, _ in sim.requests if p.endswith("/deploymentHistory")]
    assert len(history) == 3  # the third page was short: no fourth request
    first = pages[0][0]
    assert first.external_id == f"{world.production}/{made[-1].id}"
    assert (first.environment.name, first.project.name) == ("production", "storefront")
    assert first.status == Status.SUCCEEDED and first.finished_at is not None
    assert [j.name for j in first.jobs] == ["postgres-main", "web-frontend", "db-migrations"]
    assert {j.status for j in first.jobs} == {Status.SUCCEEDED}
    assert first.commit == made[-1].data["commit"] and first.version == first.commit[:12]
    assert first.triggered_by == "Priya Raman"
    assert first.raw["deployment_status"] == "UP_TO_DATE"  # the current deployment
    assert "deployment_status" not in pages[0][1].raw


def test_lists_every_environment_of_the_organization(sim, world):
    sim.add_deployment(world.production, DEPLOY_PLAN, age=100)
    sim.add_deployment(world.staging, BUILD_FAILS_PLAN, age=200)
    with QoveryProvider(sim.url, sim.token, {"organization": world.org}) as c:
        runs = all_runs(c)
    assert sorted((r.environment.name, r.status) for r in runs) == [
        ("production", Status.SUCCEEDED), ("staging", Status.FAILED)]


def test_incremental_listing_stops_at_older_pages(sim, world, client):
    sim.page_size = 2
    for age in (5000, 4000, 3000, 20, 10):
        sim.add_deployment(world.production, DEPLOY_PLAN, age=age)
    since = sim.clock.now() - timedelta(seconds=100)
    pages = list(client.list_runs(since=since))
    # Page 1 holds the two recent deployments, page 2 is all older than `since`: no page 3.
    assert [len(p) for p in pages] == [2, 2]


def test_a_live_deployment_moves_through_its_states(sim, world, client):
    run = sim.add_deployment(world.production, DEPLOY_PLAN)
    seen = [client.get_run(locator(run)).raw_status]
    for seconds in (10, 30, 20):
        sim.advance(seconds)
        seen.append(client.get_run(locator(run)).raw_status)
    assert seen == ["DEPLOYMENT_QUEUED", "BUILDING", "DEPLOYING", "DEPLOYED"]


def test_get_run_finds_an_older_deployment_on_a_later_page(sim, world, client):
    sim.page_size = 2
    old = sim.add_deployment(world.production, DEPLOY_FAILS_PLAN, age=9000)
    for age in (300, 200, 100):
        sim.add_deployment(world.production, DEPLOY_PLAN, age=age)
    run = client.get_run(locator(old))
    assert (run.external_id, run.status) == (f"{world.production}/{old.id}", Status.FAILED)
    assert run.raw_status == "DEPLOYMENT_ERROR"


def test_get_run_of_an_unknown_deployment_is_not_found(sim, world, client):
    sim.add_deployment(world.production, DEPLOY_PLAN, age=100)
    with pytest.raises(NotFound):
        client.get_run({"environment": world.production, "deployment": "no-such-id"})


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


def test_retry_redeploys_as_a_new_deployment(sim, world, client):
    failed = sim.add_deployment(world.production, BUILD_FAILS_PLAN, age=600)
    assert client.get_run(locator(failed)).status == Status.FAILED
    answer = client.retry(locator(failed))
    assert posts(sim) == [(f"/environment/{world.production}/redeploy", None)]
    assert answer.external_id != f"{world.production}/{failed.id}"
    assert (answer.raw_status, answer.status) == ("DEPLOYMENT_QUEUED", Status.QUEUED)
    assert answer.triggered_by == "Runboard API token"
    sim.advance(120)
    assert client.get_run(answer.locator).status == Status.SUCCEEDED
    assert client.get_run(locator(failed)).status == Status.FAILED  # the old one stays


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
    assert (run.triggered_by, run.commit, run.version, run.jobs) == ("", "", "", [])
    assert run.created_at is not None


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
    assert new.status == Status.QUEUED and new.locator["deployment"] != failed.id
    old.refresh_from_db()
    assert old.status == Status.FAILED
    # The old run is now superseded in its environment: Runboard offers and sends nothing.
    assert old.available_actions() == []
    sent = len(posts(sim))
    with pytest.raises(actions.ActionRefused, match="A newer run exists in production"):
        actions.perform(old, manager, "retry")
    assert len(posts(sim)) == sent
