"""The list's filters and paging, the permalink, the environment board and the audit page."""

from datetime import timedelta

import pytest
from django.utils import timezone

from dashboard import sync, views
from dashboard.models import ActionRecord, Environment, Run
from providers.base import EnvironmentData, RunData, Status
from providers.simulators.buddy import BUILD_PLAN, FAILING_PLAN

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged_in(client, viewer):
    client.force_login(viewer)
    return client


def test_filters_stay_in_the_url_and_narrow_the_list(logged_in, buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=900, creator="Ana Lima")
    buddy_sim.add_execution("web-shop", 1, FAILING_PLAN, age=600, creator="Jo Tanaka")
    sync.sync_connection(buddy_connection.pk)
    response = logged_in.get("/runs/?group=failed&by=jo")
    assert [r.triggered_by for r in response.context["page"]["rows"]] == ["Jo Tanaka"]
    assert 'value="jo"' in response.content.decode()
    empty = logged_in.get("/runs/?q=nothing-like-this")
    assert b"No runs match these filters." in empty.content


def test_empty_state_without_connections(logged_in):
    assert b"no provider connection is set up yet" in logged_in.get("/runs/").content


def test_paging_without_counting(logged_in, buddy_connection, monkeypatch):
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    sync.upsert_runs(buddy_connection, [
        RunData(external_id=f"r{i}", status=Status.SUCCEEDED, raw_status="x", locator={})
        for i in range(5)
    ])
    first = logged_in.get("/runs/").context["page"]
    assert (len(first["rows"]), first["has_next"], first["has_previous"]) == (2, True, False)
    last = logged_in.get("/runs/?page=3").context["page"]
    assert (len(last["rows"]), last["has_next"]) == (1, False)


def test_permalink_by_provider_and_external_id(logged_in, buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    response = logged_in.get("/runs/buddy/web-shop/1/1/")
    assert response.status_code == 302
    assert response["Location"] == f"/runs/{run.pk}/"
    assert logged_in.get("/runs/buddy/web-shop/1/999/").status_code == 404


def test_detail_page_is_shareable(logged_in, buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    body = logged_in.get(f"/runs/{run.pk}/").content.decode()
    assert f'<meta property="og:url" content="http://testserver/runs/{run.pk}/">' in body
    assert '<meta property="og:title" content="Deploy to production #1 — Queued">' in body
    assert f'data-copy="http://testserver/runs/{run.pk}/"' in body
    assert 'href="https://app.buddy.works/acme/web-shop/pipelines/pipeline/1/execution/1"' in body
    assert "Open in Buddy.works" in body
    assert "<dd>Buddy.works · Buddy</dd>" in body


def test_environment_board_shows_deployed_and_latest(logged_in, buddy_connection):
    prod = EnvironmentData("env-prod", "production")
    sync.upsert_runs(buddy_connection, [
        RunData(external_id="a", status=Status.SUCCEEDED, raw_status="x", locator={},
                environment=prod, version="1.0.0", created_at=_ago(300)),
        RunData(external_id="b", status=Status.RUNNING, raw_status="x", locator={},
                environment=prod, version="1.1.0", created_at=_ago(10)),
    ])
    response = logged_in.get("/environments/")
    [row] = response.context["rows"]
    assert row["environment"].pk == Environment.objects.get(name="production").pk
    assert (row["deployed"].version, row["latest"].version) == ("1.0.0", "1.1.0")
    assert b"1.0.0" in response.content and b"1.1.0" in response.content


def test_audit_page_filters(client, manager, buddy_connection):
    sync.upsert_runs(buddy_connection, [
        RunData(external_id="a", name="deploy web", status=Status.RUNNING, raw_status="x",
                locator={})])
    run = Run.objects.get()
    ActionRecord.objects.create(run=run, user=manager, kind="cancel", comment="bad",
                                state="failed", response="Refused")
    ActionRecord.objects.create(run=run, user=manager, kind="approve", comment="ok",
                                state="succeeded")
    client.force_login(manager)
    response = client.get("/audit/?kind=cancel")
    assert [r.comment for r in response.context["page"]["rows"]] == ["bad"]
    assert b"deploy web" in response.content


def _ago(seconds):
    return timezone.now() - timedelta(seconds=seconds)
