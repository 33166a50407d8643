"""Bad input gets a clear error, never a 500; the API answers JSON, always."""

import pytest

from dashboard import sync
from dashboard.models import ApiToken, Run
from providers.simulators.buddy import DEPLOY_PLAN

pytestmark = pytest.mark.django_db

HUGE = "99999999999999999999"


@pytest.fixture
def run(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    sync.sync_connection(buddy_connection.pk)
    return Run.objects.get()


@pytest.fixture
def bearer(viewer):
    _, key = ApiToken.issue(viewer, "bot")
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("url", ["/runs/", "/audit/"])
def test_a_huge_page_number_is_a_404_not_a_500(client, viewer, run, url):
    client.force_login(viewer)
    assert client.get(f"{url}?page={HUGE}").status_code == 404
    assert client.get(f"{url}?page=2").status_code == 200  # an empty page past the end


def test_a_huge_page_number_in_the_api_is_a_clear_400(client, run, bearer):
    response = client.get(f"/api/runs/?page={HUGE}", headers=bearer)
    assert response.status_code == 400
    assert response.json() == {"error": "Invalid input.", "fields": {
        "page": "Input should be less than or equal to 100000"}}


def test_a_live_poll_with_a_version_we_never_sent_gets_every_row(client, viewer, run):
    client.force_login(viewer)
    first = client.get("/runs/", headers={"HX-Request": "true"})
    page_key = first.context["page_key"]
    response = client.get(f"/runs/?v=abc-1&p={page_key}",
                          headers={"HX-Request": "true", "HX-Trigger": "runs-poller"})
    assert response.status_code == 200
    assert [r.pk for r in response.context["changed"]] == [run.pk]


def test_revoking_a_token_that_is_not_a_number_is_a_clear_message(client, viewer):
    token, _ = ApiToken.issue(viewer, "laptop")
    client.force_login(viewer)
    for bad in ("abc", HUGE, "-1", "1e3"):
        response = client.post("/profile/", {"revoke": bad}, follow=True)
        assert response.status_code == 200
        assert b"No such token of yours to revoke." in response.content
    token.refresh_from_db()
    assert token.revoked_at is None


def test_get_on_an_api_action_is_a_json_405(client, run, bearer):
    response = client.get(f"/api/runs/{run.pk}/cancel/", headers=bearer)
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json() == {"error": "GET is not allowed here; use POST."}
    listing = client.post("/api/runs/", headers=bearer)
    assert (listing.status_code, listing.json()) == (
        405, {"error": "POST is not allowed here; use GET."})


@pytest.mark.parametrize("path", ["/api/runs//cancel/", "/api/runs/abc/", "/api/nope",
                                  "/api/runs/1/cancel/extra/", "/api/"])
def test_unknown_api_paths_are_json_404s(client, bearer, path):
    response = client.get(path, headers=bearer)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"].startswith("No such ")


# --- a sweep: every list and page with hostile parameters ----------------------------

HOSTILE = [f"page={HUGE}", "page=-1", "page=0", "page=abc", "page=1.5", "v=abc-1", "v=-",
           "v=nan-nan", "p=%00", "q=%00", "q=" + "x" * 5000, "status=bogus", f"connection={HUGE}",
           "connection=abc", f"environment={HUGE}", f"project={HUGE}", "range=forever",
           "group=bogus", "by=%00", "kind=bogus", "state=bogus", "user=%00", "pipeline=%00"]


@pytest.mark.parametrize("query", HOSTILE)
def test_no_page_answers_500_to_hostile_parameters(client, viewer, run, bearer, query):
    client.force_login(viewer)
    for url in ("/runs/", "/audit/", "/environments/", "/connections/", "/profile/",
                f"/runs/{run.pk}/"):
        for headers in ({}, {"HX-Request": "true"},
                        {"HX-Request": "true", "HX-Trigger": "runs-poller"}):
            response = client.get(f"{url}?{query}", headers=headers)
            assert response.status_code < 500, (url, query, headers)
    for url in ("/api/runs/", f"/api/runs/{run.pk}/"):
        response = client.get(f"{url}?{query}", headers=bearer)
        assert response.status_code < 500, (url, query)
        assert response["Content-Type"].startswith("application/json"), (url, query)


def test_opening_an_action_address_leads_to_the_run_page(client, viewer, run):
    client.force_login(viewer)
    for kind in ("cancel", "approve", "retry"):
        response = client.get(f"/runs/{run.pk}/{kind}/")
        assert (response.status_code, response["Location"]) == (302, f"/runs/{run.pk}/")
