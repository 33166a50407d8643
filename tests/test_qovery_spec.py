"""Qovery's spec as tests: every request the client sends and every answer the simulator
serves, through a full sync and each action, validates against Qovery's OpenAPI spec."""

import random

import httpx
import pytest
from openapi_core.templating.paths.exceptions import PathNotFound
from openapi_core.templating.responses.exceptions import ResponseNotFound

from providers.base import Conflict, NotFound, Status
from providers.qovery import QoveryProvider
from providers.simulators.base import Phase
from providers.simulators.qovery import (
    BUILD_FAILS_PLAN,
    DEPLOY_PLAN,
    STATES,
    QoverySimulator,
)
from tests.qovery_spec import openapi_pair, operation, spec, violations

# The operations Runboard's Qovery client uses (and the simulator serves).
CLIENT_OPERATIONS = {
    "listProject", "getProject", "listEnvironment", "getEnvironment", "getEnvironmentStatus",
    "listEnvironmentDeploymentHistoryV2", "listDeploymentRequestByEnvironmentId",
    "cancelEnvironmentDeployment", "redeployEnvironment", "cancelDeploymentRequest",
    "getProjectEnvironmentsStatus",
}


@pytest.fixture
def demo_sim(clock):
    with QoverySimulator(token="qov_spec_test_token", clock=clock) as sim:
        scope = sim.seed_demo(random.Random(5))
        yield sim, scope


def locate(runs, environment_name, status=None):
    return next(r for r in runs if r.environment.name == environment_name
                and (status is None or r.status == status))


def test_a_full_sync_and_every_action_validate_against_the_spec(demo_sim):
    sim, scope = demo_sim
    with QoveryProvider(sim.url, sim.token, scope, timeout=2) as client:
        client.discover()
        runs = [r for page in client.list_runs() for r in page]
        assert len(runs) > 20
        # Cancel (forced) the live production deployment; a request queues behind it.
        live = locate(runs, "production", Status.RUNNING)
        sim.queue_deployment(live.locator["environment"])
        client.cancel(live.locator, force=True)
        queued = [r for page in client.list_runs() for r in page if r.status == Status.QUEUED
                  and "deployment_request" in r.locator]
        assert len(queued) == 1
        client.cancel(queued[0].locator)
        with pytest.raises(Conflict):  # 409 from Qovery: it left the queue already
            client.request("POST", f"/deploymentQueue/{queued[0].locator['deployment_request']}"
                                   "/cancelDeployment", json={})
        sim.advance(60)
        # Redeploy the cancelled one (it starts at once) ...
        client.retry(live.locator)
        # ... and one that queues behind another deployment.
        failed = sim.add_deployment(live.locator["environment"], BUILD_FAILS_PLAN, age=0)
        sim.advance(60)
        sim.queue_deployment(live.locator["environment"])
        client.request("POST", f"/environment/{live.locator['environment']}/redeploy")
        assert client.get_run({"environment": failed.data["environment"],
                               "execution": failed.id}).status == Status.FAILED
        with pytest.raises(NotFound):
            client.get_run({"environment": scope["organization"], "execution": "x"})
    project = next(iter(sim.projects))
    with QoveryProvider(sim.url, sim.token, {**scope, "project": project}) as client:
        client.discover()
    exchanges = list(sim.exchanges)
    used = {operation(r.method, r.path) for r, *_ in exchanges}
    assert used >= CLIENT_OPERATIONS, CLIENT_OPERATIONS - used
    assert {status for _, status, _, _ in exchanges} >= {200, 202, 404, 409}
    assert violations(exchanges) == []


def test_the_v1_history_the_simulator_serves_validates_too(clock):
    with QoverySimulator(token="qov_v1", clock=clock) as sim:
        org = sim.add_organization("Acme")
        env = sim.add_environment(sim.add_project(org, "shop"), "production")
        for age in range(45, 0, -1):
            sim.add_deployment(env, DEPLOY_PLAN, age=age * 600)
        headers = {"Authorization": "Token qov_v1"}
        path = f"{sim.url}/environment/{env}/deploymentHistory"
        first = httpx.get(path, headers=headers).json()
        second = httpx.get(path, headers=headers,
                           params={"startId": first["results"][-1]["id"]}).json()
        httpx.get(path, headers=headers, params={"startId": "not-a-uuid"})
    assert (len(first["results"]), len(second["results"])) == (20, 20)
    valid, malformed = sim.exchanges[:2], sim.exchanges[2]
    assert violations(valid) == []
    # A request the spec refuses (startId is a uuid), the simulator refuses too.
    assert malformed[1] == 400
    assert "InvalidParameter" in violations([malformed])[0]


@pytest.mark.parametrize("state", STATES)
def test_every_state_the_simulator_can_serve_validates(clock, state):
    with QoverySimulator(token="qov_states", clock=clock) as sim:
        org = sim.add_organization("Acme")
        env = sim.add_environment(sim.add_project(org, "shop"), "production",
                                  [("applications", "web"), ("jobs", "migrate")])
        sim.add_deployment(env, [Phase(state, None)])
        with QoveryProvider(sim.url, sim.token, {"organization": org}) as client:
            [run] = [r for page in client.list_runs() for r in page]
    assert run.raw_status == state
    assert violations(sim.exchanges) == []


def test_a_path_the_spec_lacks_fails_validation(demo_sim):
    sim, scope = demo_sim
    environment = next(iter(sim.environments))
    with QoveryProvider(sim.url, sim.token, scope) as client, pytest.raises(NotFound):
        client.request("GET", f"/environment/{environment}/deployments")
    [exchange] = sim.exchanges
    assert exchange[1] == 404  # the simulator serves no path the spec lacks
    request, _ = openapi_pair(exchange)
    with pytest.raises(PathNotFound):
        spec().validate_request(request)
    assert len(violations(sim.exchanges)) == 1


def test_an_answer_with_an_undocumented_status_code_fails_validation(demo_sim):
    """What the simulator used to do: answer an action with 200."""
    sim, scope = demo_sim
    run = sim._latest(next(iter(sim.environments)))
    sim.transition(run, [Phase("BUILDING", None)])
    with QoveryProvider(sim.url, sim.token, scope) as client:
        client.cancel({"environment": run.data["environment"], "execution": run.id})
    [cancel] = [e for e in sim.exchanges if e[0].method == "POST"]
    assert cancel[1] == 202
    request, response = openapi_pair((cancel[0], 200, cancel[2], cancel[3]))
    with pytest.raises(ResponseNotFound):
        spec().validate_response(request, response)


def test_the_live_demo_queues_requests_and_every_pass_validates(demo_sim):
    """The demo adds deployments over time, queueing some behind busy environments."""
    sim, scope = demo_sim
    rng = random.Random(3)
    queued_seen = set()
    with QoveryProvider(sim.url, sim.token, scope) as client:
        for _ in range(12):
            sim.spawn_demo(rng)
            runs = [r for page in client.list_runs() for r in page]
            queued_seen |= {r.external_id for r in runs if "deployment_request" in r.locator}
            sim.advance(15)
    assert queued_seen, "the demo should show queued deployment requests"
    assert violations(sim.exchanges) == []
