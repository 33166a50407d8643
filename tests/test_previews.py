"""Run links previewed without a session (RUNBOARD_PUBLIC_PREVIEWS), and only what is safe."""

import re

import pytest
from django.test import override_settings

from dashboard.models import ActionRecord
from dashboard.sync import sync_connection
from providers.simulators.base import SimClock
from providers.simulators.workflows import WorkflowsSimulator, deploy_plan

pytestmark = pytest.mark.django_db


@pytest.fixture
def runs(manager):
    """A run waiting in Production with jobs, a reviewer, a comment in its history; and
    a second run whose name must not show on the first one's preview."""
    from dashboard.models import Connection, Run

    with WorkflowsSimulator(token="wf-token", clock=SimClock(speed=0)) as sim:
        sim.add_workflow_run(deploy_plan([False, False, True]), name="Weekly train",
                             creator=("Ana", "Lima"))
        sim.add_workflow_run(deploy_plan([False]), name="Secret side project")
        sim.advance(45)
        connection = Connection.objects.create(
            provider="workflows", name="Pricing", base_url=sim.url, token=sim.token,
            scope={"project": sim.project_id, "project_name": sim.project_name})
        sync_connection(connection.pk)
    run = Run.objects.get(name="Weekly train")
    ActionRecord.objects.create(run=run, user=manager, kind="cancel",
                                comment="Do not ship: customer data at risk", state="failed")
    return run, Run.objects.get(name="Secret side project")


def og(html: str) -> dict[str, str]:
    return dict(re.findall(r'<meta property="(og:[a-z_]+)" content="([^"]*)"', html))


@override_settings(RUNBOARD_PUBLIC_PREVIEWS=True)
def test_anonymous_preview_shows_title_status_environment_and_version_only(client, runs):
    run, other = runs
    assert run.environment.name == "Production" and run.version
    response = client.get(run.get_absolute_url())
    assert response.status_code == 200
    html = response.content.decode()
    assert og(html) == {
        "og:site_name": "Runboard", "og:type": "website",
        "og:title": "Weekly train — Waiting",
        "og:description": f"Waiting · Production · {run.version}",
        "og:url": f"http://testserver/runs/{run.pk}/",
    }
    job_names = list(run.jobs.values_list("name", flat=True))
    assert job_names
    for secret in [*job_names, "Do not ship", "Secret side project", other.external_id,
                   "Ana Lima", "Pricing", "Approve", "Cancel", "csrf", run.external_id,
                   "Log out", "/audit/"]:
        assert secret not in html, secret
    assert response["X-Robots-Tag"] == "noindex, nofollow"


@override_settings(RUNBOARD_PUBLIC_PREVIEWS=True)
def test_preview_through_the_provider_permalink(client, runs):
    run, _ = runs
    response = client.get(f"/runs/workflows/{run.external_id}/")
    assert response.status_code == 200
    assert og(response.content.decode())["og:title"] == "Weekly train — Waiting"


def test_previews_open_nothing_else_and_switch_off(client, runs, manager, settings):
    """Previews on: the run link previews, every other page still needs a session; the
    setting off: the same link redirects to login; logged in: the whole page, as ever."""
    run, _ = runs
    settings.RUNBOARD_PUBLIC_PREVIEWS = True
    assert client.get(run.get_absolute_url()).status_code == 200
    for url in ["/runs/", "/environments/", "/connections/", "/audit/", "/api/runs/",
                f"/api/runs/{run.pk}/", "/runs/999999/"]:
        response = client.get(url)
        assert response.status_code in (302, 401, 403), url
        assert "Weekly train" not in response.content.decode()
    # A live poll (htmx) is not a preview: it needs a session (htmx is told to go to login).
    poll = client.get(run.get_absolute_url(), HTTP_HX_REQUEST="true")
    assert poll["HX-Redirect"].startswith("/accounts/login/")
    assert "Weekly train" not in poll.content.decode()
    assert client.post(run.get_absolute_url() + "approve/", {"comment": "x"}).status_code == 302
    assert not ActionRecord.objects.filter(kind="approve").exists()

    settings.RUNBOARD_PUBLIC_PREVIEWS = False
    response = client.get(run.get_absolute_url())
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert "Weekly train" not in response.content.decode()

    settings.RUNBOARD_PUBLIC_PREVIEWS = True
    client.force_login(manager)
    html = client.get(run.get_absolute_url()).content.decode()
    assert "Do not ship" in html and "Cancel" in html
