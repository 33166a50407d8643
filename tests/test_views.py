"""Pages and actions: login, permissions, CSRF, cancel with comment, audit, live refresh."""

import pytest
from django.db import connection as db
from django.test import Client

from dashboard import sync
from dashboard.models import ActionRecord, Connection, Run
from providers.base import Status
from providers.simulators.buddy import BUILD_PLAN, DEPLOY_PLAN

pytestmark = pytest.mark.django_db


def login(client, user):
    client.force_login(user)
    return client


def test_every_page_needs_login(client, synced_run):
    for url in ("/runs/", f"/runs/{synced_run.pk}/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_list_shows_runs_with_status(client, viewer, synced_run):
    response = login(client, viewer).get("/runs/")
    assert response.status_code == 200
    assert b"Deploy to production #1" in response.content
    assert b'data-status="running"' in response.content


def test_live_refresh_answers_204_until_something_changes(client, viewer, synced_run,
                                                          buddy_sim, buddy_connection):
    login(client, viewer)
    first = client.get("/runs/", headers={"HX-Request": "true"})
    version = first.context["version"]
    assert client.get(f"/runs/?v={version}", headers={"HX-Request": "true"}).status_code == 204
    buddy_sim.advance(30)
    sync.sync_connection(buddy_connection.pk)
    changed = client.get(f"/runs/?v={version}", headers={"HX-Request": "true"})
    assert changed.status_code == 200
    assert b'data-status="waiting"' in changed.content
    assert b"<html" not in changed.content  # a partial, not the whole page


def test_viewer_sees_no_actions_and_cannot_post_one(client, viewer, synced_run):
    login(client, viewer)
    assert b"Cancel run" not in client.get(f"/runs/{synced_run.pk}/").content
    response = client.post(f"/runs/{synced_run.pk}/cancel/", {"comment": "x"})
    assert response.status_code == 403
    assert not ActionRecord.objects.exists()


def test_manager_cancels_with_comment(client, manager, synced_run, buddy_sim, buddy_connection):
    login(client, manager)
    assert b"Cancel run" in client.get(f"/runs/{synced_run.pk}/").content
    response = client.post(f"/runs/{synced_run.pk}/cancel/", {"comment": "wrong build"},
                           headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert b"Cancel sent to Buddy" in response.content
    record = ActionRecord.objects.get()
    assert (record.user, record.kind, record.comment, record.state) == (
        manager, "cancel", "wrong build", "succeeded")
    assert "TERMINATING" in record.response
    synced_run.refresh_from_db()
    assert synced_run.status == Status.CANCELLING
    buddy_sim.advance(5)
    sync.sync_connection(buddy_connection.pk)
    synced_run.refresh_from_db()
    assert synced_run.status == Status.CANCELLED


def test_empty_comment_is_refused_before_reaching_the_provider(client, manager, synced_run,
                                                               buddy_sim):
    login(client, manager)
    sent = len(buddy_sim.requests)
    response = client.post(f"/runs/{synced_run.pk}/cancel/", {"comment": "   "},
                           headers={"HX-Request": "true"})
    assert b"A comment is required to cancel a run." in response.content
    assert len(buddy_sim.requests) == sent
    assert Run.objects.get().status == Status.RUNNING


def test_cancel_of_a_finished_run_is_refused_and_audited(client, manager, buddy_sim,
                                                         buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    buddy_sim.advance(60)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    login(client, manager)
    response = client.post(f"/runs/{run.pk}/cancel/", {"comment": "stop"})
    assert response.status_code == 409
    assert b"This run already finished (succeeded)." in response.content
    record = ActionRecord.objects.get()
    assert record.state == "failed"
    assert record.response.startswith("Refused by Runboard")


def test_provider_refusal_is_shown_in_plain_words(client, manager, synced_run, buddy_sim):
    # The run finishes at the provider after our last sync: the provider says no.
    buddy_sim.transition(synced_run.sim_run, [DEPLOY_PLAN[-1]])
    login(client, manager)
    response = client.post(f"/runs/{synced_run.pk}/cancel/", {"comment": "stop"},
                           headers={"HX-Request": "true"})
    assert b"The provider refused: Execution is already finished" in response.content
    record = ActionRecord.objects.get()
    assert (record.state, record.response_code) == ("failed", 400)


def test_a_second_click_while_one_is_in_flight_sends_nothing(client, manager, synced_run,
                                                             buddy_sim):
    ActionRecord.objects.create(run=synced_run, user=manager, kind="cancel", comment="first")
    login(client, manager)
    sent = len(buddy_sim.requests)
    response = client.post(f"/runs/{synced_run.pk}/cancel/", {"comment": "second"},
                           headers={"HX-Request": "true"})
    assert b"already in flight" in response.content
    assert len(buddy_sim.requests) == sent


def test_forms_need_csrf(manager, synced_run):
    client = Client(enforce_csrf_checks=True)
    client.force_login(manager)
    response = client.post(f"/runs/{synced_run.pk}/cancel/", {"comment": "x"})
    assert response.status_code == 403
    assert not ActionRecord.objects.exists()


def test_provider_text_is_escaped(client, viewer, buddy_sim, buddy_connection):
    buddy_sim.add_pipeline("web-shop", 1, "<script>alert(1)</script>")
    buddy_sim.add_execution("web-shop", 1, creator='<img src=x onerror="alert(2)">')
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    login(client, viewer)
    for url in ("/runs/", f"/runs/{run.pk}/"):
        body = client.get(url).content
        assert b"<script>alert(1)" not in body
        assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in body
        assert b"<img src=x" not in body


def test_token_is_encrypted_at_rest_and_never_rendered(client, buddy_connection):
    with db.cursor() as cursor:
        cursor.execute("SELECT token FROM dashboard_connection WHERE id = %s",
                       [buddy_connection.pk])
        stored = cursor.fetchone()[0]
    assert buddy_connection.token not in stored
    assert Connection.objects.get().token == "buddy-test-token"
    from django.contrib.auth.models import User

    admin = User.objects.create_superuser("root", password="pw")
    client.force_login(admin)
    page = client.get(f"/admin/dashboard/connection/{buddy_connection.pk}/change/")
    assert page.status_code == 200
    assert b"buddy-test-token" not in page.content


@pytest.fixture
def waiting_for_variables(buddy_sim, buddy_connection):
    from providers.simulators.buddy import VARIABLES_PLAN

    sim_run = buddy_sim.add_execution("web-shop", 1, VARIABLES_PLAN)
    buddy_sim.advance(30)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    run.sim_run = sim_run
    return run


def test_approve_form_asks_for_the_runs_variables_and_sends_them(
        client, manager, waiting_for_variables, buddy_sim):
    run = waiting_for_variables
    login(client, manager)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'name="var:RELEASE_NOTES"' in page
    assert 'name="var:MIGRATE"' in page and 'value="yes"' in page
    assert "What this release changes" in page
    response = client.post(f"/runs/{run.pk}/approve/", {
        "comment": "", "var:RELEASE_NOTES": "Fixes <the> login", "var:MIGRATE": ""},
        headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert b"Approve sent to Buddy" in response.content
    assert buddy_sim.requests[-1][2] == {"operation": "APPLY_VARIABLES", "variables": [
        {"key": "RELEASE_NOTES", "value": "Fixes <the> login"},
        {"key": "MIGRATE", "value": "yes"}]}
    record = ActionRecord.objects.get()
    # The audit names the variables given, never their values.
    assert (record.kind, record.state, record.options) == (
        "approve", "succeeded", {"variables": ["RELEASE_NOTES"]})
    run.refresh_from_db()
    assert run.status == Status.RUNNING


def test_approve_without_a_required_variable_says_why(client, manager, waiting_for_variables,
                                                       buddy_sim):
    login(client, manager)
    response = client.post(f"/runs/{waiting_for_variables.pk}/approve/", {"comment": ""},
                           headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert b"give a value for RELEASE_NOTES" in response.content
    assert not [r for r in buddy_sim.requests if r[0] == "PATCH"]
    assert ActionRecord.objects.get().state == "failed"


def test_a_plain_approval_shows_no_variable_inputs(client, manager, buddy_sim,
                                                   buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(30)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    login(client, manager)
    page = client.get(f"/runs/{run.pk}/").content
    assert b"approve/" in page and b'name="var:' not in page
    client.post(f"/runs/{run.pk}/approve/", {"comment": "ok"}, headers={"HX-Request": "true"})
    assert buddy_sim.requests[-1][2] == {"operation": "APPLY"}


def test_the_audit_pages_through_its_records_keeping_its_filter(client, manager, synced_run):
    """The audit's pager (the run list's, written by runrows): older and newer pages,
    each link carrying the page's filters."""
    ActionRecord.objects.bulk_create(
        ActionRecord(run=synced_run, user=manager, kind="retry", comment=f"n{n}",
                     state=ActionRecord.State.FAILED)
        for n in range(51))
    client.force_login(manager)
    first = client.get("/audit/?kind=retry").content.decode()
    assert 'href="?kind=retry&amp;page=2" rel="next">Older' in first
    assert 'rel="prev"' not in first
    second = client.get("/audit/?kind=retry&page=2").content.decode()
    assert 'href="?kind=retry&amp;page=1" rel="prev">' in second
    assert 'rel="next"' not in second
