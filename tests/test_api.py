"""The JSON API: tokens, the same filters, and the same rules, permission and audit."""

import pytest
from django.test import Client

from dashboard import sync
from dashboard.models import ActionRecord, ApiToken, Run
from providers.base import Status
from providers.simulators.buddy import BUILD_PLAN, DEPLOY_PLAN, FAILING_PLAN

pytestmark = pytest.mark.django_db


@pytest.fixture
def runs(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=600, branch="main")
    buddy_sim.add_execution("web-shop", 1, FAILING_PLAN, age=300, branch="hotfix/login")
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN, age=10, branch="release/2.4")
    sync.sync_connection(buddy_connection.pk)
    return {r.external_id.rsplit("/", 1)[1]: r for r in Run.objects.all()}


def bearer(user, name="bot"):
    _, key = ApiToken.issue(user, name)
    return {"Authorization": f"Bearer {key}"}


def test_requires_a_valid_token(client, runs):
    assert client.get("/api/runs/").status_code == 401
    response = client.get("/api/runs/", headers={"Authorization": "Bearer rb_nope"})
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid, expired or revoked API token."}


def test_lists_runs_with_the_pages_filters(client, viewer, runs):
    headers = bearer(viewer)
    data = client.get("/api/runs/", headers=headers).json()
    assert [r["external_id"] for r in data["results"]] == [
        "web-shop/1/3", "web-shop/1/2", "web-shop/1/1"]
    assert data["next"] is None
    failed = client.get("/api/runs/?group=failed", headers=headers).json()["results"]
    assert [(r["status"], r["branch"]) for r in failed] == [("failed", "hotfix/login")]
    search = client.get("/api/runs/?q=release", headers=headers).json()["results"]
    assert [r["branch"] for r in search] == ["release/2.4"]
    assert client.get("/api/runs/?group=bogus", headers=headers).status_code == 400


def test_run_detail_has_jobs_and_links(client, viewer, runs):
    run = runs["3"]
    data = client.get(f"/api/runs/{run.pk}/", headers=bearer(viewer)).json()
    assert data["status"] == "running"
    assert data["url"] == f"http://testserver/runs/{run.pk}/"
    assert data["available_actions"] == ["cancel"]
    assert [j["name"] for j in data["jobs"]] == ["Build image", "Deploy to cluster",
                                                 "Smoke tests"]
    assert client.get("/api/runs/999999/", headers=bearer(viewer)).status_code == 404


def test_viewer_token_cannot_act(client, viewer, runs, buddy_sim):
    sent = len(buddy_sim.requests)
    response = client.post(f"/api/runs/{runs['3'].pk}/cancel/", {"comment": "x"},
                           content_type="application/json", headers=bearer(viewer))
    assert response.status_code == 403
    assert len(buddy_sim.requests) == sent
    assert not ActionRecord.objects.exists()


def test_manager_cancels_through_the_api_and_it_is_audited(client, manager, runs):
    run = runs["3"]
    response = client.post(f"/api/runs/{run.pk}/cancel/", {"comment": "bad release"},
                           content_type="application/json", headers=bearer(manager))
    assert response.status_code == 200
    body = response.json()
    assert body["result"] == "succeeded"
    assert body["run"]["status"] == "cancelling"
    record = ActionRecord.objects.get()
    assert (record.user, record.comment, record.kind) == (manager, "bad release", "cancel")


def test_api_errors_are_clear(client, manager, runs):
    headers = bearer(manager)
    run = runs["3"]
    empty = client.post(f"/api/runs/{run.pk}/cancel/", {"comment": ""},
                        content_type="application/json", headers=headers)
    assert (empty.status_code, empty.json()["error"]) == (
        400, "A comment is required to cancel a run.")
    force = client.post(f"/api/runs/{run.pk}/cancel/", {"comment": "x", "force_cancel": True},
                        content_type="application/json", headers=headers)
    assert (force.status_code, force.json()["error"]) == (400, "Buddy.works has no force cancel.")
    finished = client.post(f"/api/runs/{runs['1'].pk}/cancel/", {"comment": "x"},
                           content_type="application/json", headers=headers)
    assert finished.status_code == 409
    assert finished.json()["error"] == "This run already finished (succeeded)."
    unknown = client.post(f"/api/runs/{run.pk}/explode/", {}, content_type="application/json",
                          headers=headers)
    assert unknown.status_code == 404
    garbage = client.post(f"/api/runs/{run.pk}/cancel/", "not json",
                          content_type="application/json", headers=headers)
    assert garbage.status_code == 400


def test_retry_of_a_failed_run(client, manager, runs):
    response = client.post(f"/api/runs/{runs['2'].pk}/retry/", {},
                           content_type="application/json", headers=bearer(manager))
    assert response.status_code == 200
    assert Run.objects.get(pk=runs["2"].pk).status == Status.QUEUED


def test_session_posts_need_csrf(manager, runs):
    client = Client(enforce_csrf_checks=True)
    client.force_login(manager)
    assert client.get("/api/runs/").status_code == 200
    response = client.post(f"/api/runs/{runs['3'].pk}/cancel/", {"comment": "x"},
                           content_type="application/json")
    assert response.status_code == 403
    assert not ActionRecord.objects.exists()


def test_revoked_tokens_stop_working(client, viewer, runs):
    token, key = ApiToken.issue(viewer, "laptop")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/runs/", headers=headers).status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None
    client.force_login(viewer)
    client.post("/profile/", {"revoke": token.pk})
    assert Client().get("/api/runs/", headers=headers).status_code == 401


def test_profile_shows_a_new_token_once_and_stores_only_its_hash(client, viewer):
    client.force_login(viewer)
    posted = client.post("/profile/", {"name": "chat bot"})
    assert (posted.status_code, posted["Location"]) == (302, "/profile/")  # post/redirect/get
    response = client.get("/profile/")
    key = response.context["new_key"]
    assert key.encode() in response.content
    token = ApiToken.objects.get()
    assert token.key_hash == ApiToken.hash(key)
    assert key not in token.key_hash
    assert key.encode() not in client.get("/profile/").content  # a reload: gone, and
    assert ApiToken.objects.count() == 1  # no second token


def test_a_user_cannot_revoke_someone_elses_token(client, viewer, manager):
    token, _ = ApiToken.issue(manager, "theirs")
    client.force_login(viewer)
    client.post("/profile/", {"revoke": token.pk})
    token.refresh_from_db()
    assert token.revoked_at is None


def test_approve_through_the_api_with_variables(client, manager, buddy_sim, buddy_connection):
    from providers.simulators.buddy import VARIABLES_PLAN

    buddy_sim.add_execution("web-shop", 1, VARIABLES_PLAN)
    buddy_sim.advance(30)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    headers = bearer(manager)
    detail = client.get(f"/api/runs/{run.pk}/", headers=headers).json()
    assert detail["available_actions"] == ["cancel", "approve"]
    for bad in ([], {"X": 1}, {"": "v"}, "text"):
        answer = client.post(f"/api/runs/{run.pk}/approve/", {"variables": bad},
                             content_type="application/json", headers=headers)
        assert answer.status_code == 400
        assert answer.json()["error"] == "Invalid input."
        assert [f for f in answer.json()["fields"] if f.startswith("variables")]
    assert not ActionRecord.objects.exists()
    response = client.post(f"/api/runs/{run.pk}/approve/",
                           {"variables": {"RELEASE_NOTES": "v2.4", "MIGRATE": "no"}},
                           content_type="application/json", headers=headers)
    assert response.status_code == 200
    assert response.json()["run"]["status"] == "running"
    assert buddy_sim.requests[-1][2] == {"operation": "APPLY_VARIABLES", "variables": [
        {"key": "RELEASE_NOTES", "value": "v2.4"}, {"key": "MIGRATE", "value": "no"}]}
    wrong = client.post(f"/api/runs/{run.pk}/cancel/", {"comment": "x", "variables": {"A": "b"}},
                        content_type="application/json", headers=headers)
    assert (wrong.status_code, wrong.json()["error"]) == (400, "Variables go with approve only.")
