"""No 500 for any input: every route, hostile query strings, methods and bodies, as an
anonymous visitor, a viewer and a release manager."""

import hashlib
import hmac
import json
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

from dashboard.models import ActionRecord, Connection, Run
from providers.base import Status

pytestmark = pytest.mark.django_db
# The sweeps: each request in its own transaction, as in production, so one failed
# query does not abort every request after it.
sweep = pytest.mark.django_db(transaction=True)

HUGE = "99999999999999999999"
QUERIES = [
    "", f"page={HUGE}", "page=-5", "page=abc", "page=%00", "page=1e9",
    "q=%00", "q=%25_%5C", "connection=abc", f"connection={HUGE}", "project=-1",
    "environment=%00", "status=bogus", "group=x", "range=1y", "provider=%00",
    "by=%00", "kind=x", "state=x", "user=%00", "v=abc", "v=%00", "v=-", "p=x",
    "next=//evil.example/", "revoke=x", "days=abc", f"days={HUGE}", "window=%00",
    "release=%00", "environment=1&environment=x", "run=abc&run=%00",
]
METHODS = ["get", "post", "put", "patch", "delete", "options", "head"]
BODIES = [
    {"data": "x=%00&comment=%00&revoke=%00&name=%00&expires_in=abc&payload=%00",
     "content_type": "application/x-www-form-urlencoded"},
    {"data": '{"comment": 5, "force_cancel": "yes"', "content_type": "application/json"},
    {"data": b"\xff\xfe\x00", "content_type": "application/json"},
    {"data": f"revoke={HUGE}&name=n", "content_type": "application/x-www-form-urlencoded"},
    {"data": f"run=abc&run={HUGE}&run=%00&release=%00&version=%00&environment=x",
     "content_type": "application/x-www-form-urlencoded"},
]


@pytest.fixture
def run(db):
    connection = Connection.objects.create(
        provider="buddy", name="Unreachable", base_url="http://127.0.0.1:9", token="t",
        scope={"workspace": "w"})
    found = Run.objects.create(connection=connection, external_id="1", name="Deploy",
                               status=Status.SUCCEEDED)
    ActionRecord.objects.create(run=found, user=User.objects.create_user("someone"),
                                kind="retry", comment="c")
    return found


def routes(run):
    return [
        "/", "/runs/", f"/runs/{run.pk}/", f"/runs/{HUGE}/", f"/runs/{run.pk}/cancel/",
        f"/runs/{run.pk}/approve/", f"/runs/{run.pk}/explode/", "/runs/buddy/1/",
        "/runs/buddy/a%00b/", "/runs/nope/x/y/", "/environments/", "/connections/",
        "/audit/", "/audit/export.csv", "/audit/export.jsonl", "/audit/export.x",
        "/profile/", "/api/runs/", f"/api/runs/{run.pk}/", f"/api/runs/{HUGE}/",
        f"/api/runs/{run.pk}/cancel/", f"/api/runs/{run.pk}/approve/", "/api/openapi.json",
        "/api/docs", "/api/nope", "/accounts/login/", "/oidc/authenticate/",
        "/oidc/callback/", "/slack/interactive/", "/healthz",
        "/readyz", "/admin/", "/admin/dashboard/channel/add/", "/admin/dashboard/run/",
        "/admin/dashboard/actionrecord/", "/admin/dashboard/connection/add/",
        f"/admin/dashboard/connection/{run.connection_id}/change/",
        "/admin/dashboard/apitoken/", "/admin/dashboard/delivery/",
        f"/hooks/{run.connection.webhook_key}/", "/hooks/not-a-key/",
        "/inbox/", "/inbox/release/", f"/inbox/{run.pk}/approve/", f"/inbox/{HUGE}/x/",
        "/releases/", "/trends/", "/attention/",
        "/accounts/logout/",  # last: a POST here ends the session the others run in
    ]


def server_error(client, method, url, **kwargs):
    """The request and its status if it got a 5xx (/readyz may say 503: that is its job)."""
    response = getattr(client, method)(url, **kwargs)
    if response.status_code >= 500 and not url.startswith("/readyz"):
        return f"{method.upper()} {url} {kwargs} -> {response.status_code}"
    return None


@pytest.fixture(params=["anonymous", "viewer", "manager", "admin"])
def client_as(request, viewer, manager):
    client = Client(raise_request_exception=False)
    if request.param == "viewer":
        client.force_login(viewer)
    elif request.param == "manager":
        client.force_login(manager)
    elif request.param == "admin":
        client.force_login(User.objects.create_superuser("root", password="x"))
    return client


@sweep
@override_settings(RUNBOARD_PUBLIC_PREVIEWS=True, RUNBOARD_SLACK_SIGNING_SECRET="s")
def test_hostile_query_strings(client_as, run):
    htmx = {"HX-Request": "true", "HX-Trigger": "runs-poller"}
    failures = [failure for url in routes(run) for query in QUERIES
                for headers in ([{}, htmx] if url.startswith("/runs/") else [{}])
                if (failure := server_error(client_as, "get", f"{url}?{query}",
                                            headers=headers))]
    assert failures == []


@sweep
@override_settings(RUNBOARD_PUBLIC_PREVIEWS=True, RUNBOARD_SLACK_SIGNING_SECRET="s")
def test_hostile_methods_and_bodies(client_as, run):
    failures = [failure for url in routes(run) for method in METHODS
                for body in (BODIES if method in ("post", "put", "patch") else [{}])
                if (failure := server_error(client_as, method, url, **body))]
    assert failures == []


def test_live_poll_with_a_malformed_version(client, viewer, run):
    """The run list's poll reads the data version it was given as a number."""
    client.force_login(viewer)
    page_key = hashlib.blake2s(str(run.pk).encode(), digest_size=6).hexdigest()
    client.raise_request_exception = False
    for version in ("abc", "-", "1-2-3x", "%00"):
        response = client.get(f"/runs/?v={version}&p={page_key}",
                              headers={"HX-Request": "true", "HX-Trigger": "runs-poller"})
        assert response.status_code == 200, version


def test_a_page_far_past_the_last(client, viewer, run):
    """A page number whose OFFSET PostgreSQL cannot hold names no page: a 404."""
    client.force_login(viewer)
    for url in ("/runs/", "/audit/"):
        response = client.get(f"{url}?page={HUGE}")
        assert response.status_code == 404, url


@override_settings(RUNBOARD_PUBLIC_PREVIEWS=True)
def test_a_permalink_with_a_nul_byte(client, viewer, run):
    """PostgreSQL refuses NUL in text: such an id names no run, with or without login."""
    anonymous = client.get("/runs/buddy/1%00/")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/")
    client.force_login(viewer)
    assert client.get("/runs/buddy/1%00/").status_code == 404
    assert client.get("/runs/bud%00dy/1/").status_code == 404


def test_revoking_a_token_by_a_malformed_id(client, viewer):
    client.force_login(viewer)
    for value in ("abc", "\x00", "1.5", ""):
        response = client.post("/profile/", {"revoke": value})
        assert response.status_code == 302, value


def test_an_ambiguous_permalink_keeps_the_id_whole_in_the_search(client, viewer):
    """Two connections of one provider with the same run id: the list, searched for it."""
    for name in ("One", "Two"):
        connection = Connection.objects.create(provider="buddy", name=name,
                                               base_url="http://127.0.0.1:9", token="t")
        Run.objects.create(connection=connection, external_id="a&page=2#x")
    client.force_login(viewer)
    response = client.get("/runs/buddy/a%26page%3D2%23x/")
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert location.path == "/runs/"
    assert parse_qs(location.query) == {"provider": ["buddy"], "q": ["a&page=2#x"]}


def test_an_api_comment_with_a_nul_byte_is_refused_as_input(client, manager, run):
    """PostgreSQL cannot store NUL: the API says which field, as the web form does."""
    client.force_login(manager)
    for kind in ("approve", "cancel"):
        response = client.post(f"/api/runs/{run.pk}/{kind}/", {"comment": "stop\x00now"},
                               content_type="application/json")
        assert response.status_code == 400, kind
        assert "comment" in response.json()["fields"]
    assert not ActionRecord.objects.filter(comment__startswith="stop").exists()


def post_signed_to_slack(client, payload: dict):
    """Post an interaction payload signed as Slack signs it (v0 HMAC-SHA256)."""
    body = urlencode({"payload": json.dumps(payload)})
    timestamp = str(int(time.time()))
    digest = hmac.new(b"slack-signing-secret", f"v0:{timestamp}:{body}".encode(),
                      hashlib.sha256).hexdigest()
    return client.post("/slack/interactive/", body,
                       content_type="application/x-www-form-urlencoded",
                       headers={"X-Slack-Request-Timestamp": timestamp,
                                "X-Slack-Signature": f"v0={digest}"})


@override_settings(RUNBOARD_SLACK_SIGNING_SECRET="slack-signing-secret")
def test_signed_slack_payloads_with_a_nul_byte(client, run):
    """Signed as Slack signs, so they pass the signature check; NUL in the trigger or
    user id is refused as input, not a 500 when the replay claim is written."""
    for trigger, user in (("t\x00", "U1"), ("t1", "U\x00")):
        payload = {"type": "block_actions", "trigger_id": trigger, "user": {"id": user},
                   "actions": [{"action_id": "runboard:approve", "value": str(run.pk)}]}
        response = post_signed_to_slack(client, payload)
        assert response.status_code == 400, (trigger, user)


def test_an_authenticated_webhook_with_a_nul_in_its_text(client, run):
    """A body with the right secret whose text holds NUL (as JSON's \\u0000): refused as
    input, not a 500 when its delivery is logged."""
    connection = run.connection
    connection.webhooks_enabled = True
    connection.save()
    secret = connection.set_webhook_secret()
    for event, name in (("EXECUTION\u0000", "shop"), ("EXECUTION", "sh\u0000op")):
        body = {"secret_key": secret, "event": event, "project": {"name": name},
                "pipeline": {"id": 1}, "execution": {"id": 2}}
        response = client.post(f"/hooks/{connection.webhook_key}/", body,
                               content_type="application/json")
        assert response.status_code == 400, (event, name)


def test_slack_answers_go_only_to_the_configured_host_however_the_prefix_is_written(settings):
    """A prefix written without its final slash (here a port one digit short) must not let
    a response_url on another host or port through, nor a malformed one crash the task."""
    from dashboard.slack import respond
    from tests.listener import Listener

    with Listener() as elsewhere:
        settings.RUNBOARD_SLACK_RESPONSE_URL_PREFIX = elsewhere.url[:-1]
        respond(f"{elsewhere.url}/respond/1", text="hi")
        assert elsewhere.received == []
        respond(f"{elsewhere.url[:-1]}.evil.example/respond/2", text="hi")


@override_settings(RUNBOARD_SLACK_SIGNING_SECRET="slack-signing-secret")
def test_a_slack_cancel_comment_with_a_nul_byte_is_sent_back_to_the_dialog(client, run):
    """The audit cannot store NUL: say so in the dialog, as for an empty comment, rather
    than queue an action whose audit record would fail to be written."""
    from dashboard.channels import SlackInteraction

    payload = {"type": "view_submission", "trigger_id": "T-nul", "user": {"id": "U1"},
               "view": {"callback_id": "runboard:cancel",
                        "private_metadata": json.dumps({"run": run.pk, "response_url": ""}),
                        "state": {"values": {"comment": {"comment": {
                            "type": "plain_text_input", "value": "stop\x00now"}}}}}}
    response = post_signed_to_slack(client, payload)
    assert response.status_code == 200
    assert response.json()["response_action"] == "errors"
    assert "comment" in response.json()["errors"]
    assert not SlackInteraction.objects.exists()


def test_inbox_refuses_nul_in_a_comment_or_release(client, manager, run):
    """The audit cannot store NUL: back to the inbox, nothing recorded, no 500."""
    client.force_login(manager)
    before = ActionRecord.objects.count()
    response = client.post(f"/inbox/{run.pk}/approve/", {"comment": "ok\x00"})
    assert response.status_code == 302 and response["Location"] == "/inbox/"
    assert client.get("/inbox/release/?release=v1%00").status_code == 302
    for data in ({"release": "v1\x00", "run": [str(run.pk)]},
                 {"release": "v1", "run": [str(run.pk)], "comment": "go\x00"}):
        assert client.post("/inbox/release/", data).status_code == 302
    assert ActionRecord.objects.count() == before
