"""The API against its own generated OpenAPI document, property-based (schemathesis).

Schemathesis reads /api/openapi.json from a running Runboard, generates requests for
every operation (valid and invalid) and checks each answer: no 5xx, a documented status
code and content type, a body that matches the documented schema.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from dashboard import sync
from dashboard.models import ApiToken, Connection
from providers.simulators.base import SimClock
from providers.simulators.buddy import BUILD_PLAN, DEPLOY_PLAN, FAILING_PLAN, BuddySimulator

MAX_EXAMPLES = 60  # per operation: about half a minute in all on this machine


@pytest.fixture
def api_schema(transactional_db, live_server, manager):
    with BuddySimulator(token="buddy-token", clock=SimClock(speed=0)) as sim:
        sim.add_pipeline("web-shop", 1, "Deploy to production")
        for plan in (BUILD_PLAN, FAILING_PLAN, DEPLOY_PLAN):
            sim.add_execution("web-shop", 1, plan, age=60, branch="main")
        connection = Connection.objects.create(
            provider="buddy", name="Buddy", base_url=sim.url, token=sim.token,
            scope={"workspace": sim.workspace})
        sync.sync_connection(connection.pk)
        _, key = ApiToken.issue(manager, "schemathesis")
        auth = {"Authorization": f"Bearer {key}"}
        schema = schemathesis.openapi.from_url(f"{live_server.url}/api/openapi.json",
                                               headers=auth)
        yield schema, auth


def test_api_answers_as_its_schema_says(api_schema):
    schema, auth = api_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 3

    for operation in operations:
        # One property per operation, each case sent to the live server and checked.
        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers_as_documented(case):
            case.call_and_validate(headers=auth)

        answers_as_documented()


def test_schema_covers_every_endpoint_and_the_token_auth(client, viewer):
    client.force_login(viewer)
    document = client.get("/api/openapi.json").json()
    assert set(document["paths"]) == {"/api/runs/", "/api/runs/{pk}/", "/api/runs/{pk}/{kind}/"}
    listing = document["paths"]["/api/runs/"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {
        "q", "group", "status", "provider", "connection", "project", "pipeline",
        "environment", "by", "range", "page"}
    action = document["paths"]["/api/runs/{pk}/{kind}/"]["post"]
    assert set(action["responses"]) >= {"200", "400", "401", "403", "404", "409", "502"}
    assert document["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"


def test_schema_and_docs_need_a_login_or_a_token(client, viewer):
    assert client.get("/api/openapi.json").status_code == 302
    assert client.get("/api/docs").status_code == 302
    _, key = ApiToken.issue(viewer, "script")
    assert client.get("/api/openapi.json",
                      headers={"Authorization": f"Bearer {key}"}).status_code == 200
    client.force_login(viewer)
    docs = client.get("/api/docs")
    assert docs.status_code == 200
    assert b"/static/ninja/swagger-ui-bundle.js" in docs.content  # served here, not a CDN


@pytest.mark.parametrize(("method", "path", "status"), [
    ("get", "/api/runs/1/cancel/", 405),
    ("get", "/api/runs//cancel/", 404),
    ("get", "/api/nothing-here/", 404),
    ("delete", "/api/runs/", 405),
])
def test_every_api_error_is_json(client, viewer, method, path, status):
    _, key = ApiToken.issue(viewer, "script")
    response = getattr(client, method)(path, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]
