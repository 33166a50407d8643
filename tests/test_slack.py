"""Approve, reject and cancel from Slack, driven by requests built and signed as Slack
builds them; a loopback listener stands in for Slack's Web API and response_urls.

The stand-in is as strict as Slack where it matters here: every Web API call needs the
bot token as a Bearer header, or the answer is {"ok": false, "error": "invalid_auth"}
(HTTP 200, as Slack answers errors); users.info of an unknown id is "user_not_found";
chat.postMessage needs a channel and text or blocks.
"""

import hashlib
import hmac
import json
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.contrib.auth.models import User

from dashboard import tasks
from dashboard.channels import Channel, SlackInteraction
from dashboard.models import ActionRecord, Run
from providers.base import Status
from providers.simulators.buddy import DEPLOY_PLAN
from tests.celery_worker import celery_worker, wait_for
from tests.listener import Listener

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN = "xoxb-runboard-test"
MANAGER_EMAIL = "release.manager@example.com"
SLACK_USERS = {
    "U0MANAGER": {"email": MANAGER_EMAIL, "confirmed": True},
    "U0VIEWER": {"email": "viewer@example.com", "confirmed": True},
    "U0STRANGER": {"email": "stranger@example.com", "confirmed": True},
    "U0UNCONFIRMED": {"email": MANAGER_EMAIL, "confirmed": False},
}


def slack_api(got):
    """Slack's Web API and response_urls, on loopback."""
    path = urlsplit(got.path).path
    if path.startswith("/respond/"):
        return 200, "ok"
    if got.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
        return 200, {"ok": False, "error": "invalid_auth"}
    if path == "/api/users.info":
        args = {k: v[0] for k, v in parse_qs(urlsplit(got.path).query).items()}
        args.update(got.form if got.body and not got.body.startswith(b"{") else {})
        known = SLACK_USERS.get(args.get("user"))
        if not known:
            return 200, {"ok": False, "error": "user_not_found"}
        return 200, {"ok": True, "user": {
            "id": args["user"], "team_id": "T0RUNBOARD", "name": "someone", "deleted": False,
            "is_bot": False, "is_email_confirmed": known["confirmed"],
            "profile": {"email": known["email"], "real_name": "Some One"}}}
    if path == "/api/chat.postMessage":
        body = got.json
        if not body.get("channel") or not (body.get("text") or body.get("blocks")):
            return 200, {"ok": False, "error": "no_text"}
        return 200, {"ok": True, "channel": body["channel"], "ts": "1700000000.000100",
                     "message": {"text": body.get("text", "")}}
    if path == "/api/views.open":
        return 200, {"ok": True, "view": {"id": "V0CANCEL"}}
    return 200, {"ok": False, "error": "unknown_method"}


@pytest.fixture
def slack(settings):
    with Listener(answer=slack_api) as api:
        values = {
            "RUNBOARD_SLACK_SIGNING_SECRET": SECRET, "RUNBOARD_SLACK_BOT_TOKEN": BOT_TOKEN,
            "RUNBOARD_SLACK_API_URL": f"{api.url}/api/",
            "RUNBOARD_SLACK_RESPONSE_URL_PREFIX": f"{api.url}/respond/",
            "RUNBOARD_BASE_URL": "https://runboard.example.test",
        }
        for key, value in values.items():
            setattr(settings, key, value)
        api.env = values
        yield api


def signed(body: str, secret: str = SECRET, timestamp: int | None = None) -> dict:
    """The headers Slack sends: v0 HMAC-SHA256 of "v0:<timestamp>:<body>"."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(),
                      hashlib.sha256).hexdigest()
    return {"HTTP_X_SLACK_REQUEST_TIMESTAMP": str(timestamp),
            "HTTP_X_SLACK_SIGNATURE": f"v0={digest}"}


def button_click(api, message: dict, action_id: str, user: str, trigger: str) -> str:
    """A block_actions payload as Slack posts it when someone confirms a button."""
    button = next(e for block in message["blocks"] if block["type"] == "actions"
                  for e in block["elements"] if e["action_id"] == action_id)
    payload = {
        "type": "block_actions", "api_app_id": "A0RUNBOARD", "token": "deprecated",
        "user": {"id": user, "username": "someone", "name": "someone", "team_id": "T0RUNBOARD"},
        "team": {"id": "T0RUNBOARD", "domain": "acme"},
        "container": {"type": "message", "message_ts": "1700000000.000100",
                      "channel_id": message["channel"], "is_ephemeral": False},
        "channel": {"id": message["channel"], "name": "releases"},
        "trigger_id": trigger,
        "response_url": f"{api.url}/respond/{trigger}",
        "message": {"type": "message", "ts": "1700000000.000100", "blocks": message["blocks"]},
        "actions": [{"type": "button", "action_id": button["action_id"],
                     "block_id": "runboard-run", "value": button["value"],
                     "text": button["text"], "action_ts": f"{time.time():.6f}"}],
    }
    return urlencode({"payload": json.dumps(payload)})


def post(client, body: str, headers: dict):
    return client.post("/slack/interactive/", body,
                       content_type="application/x-www-form-urlencoded", **headers)


def operations(sim, operation: str) -> int:
    """Buddy's run actions: PATCH of the execution with {"operation": …}."""
    return sum(1 for method, _, body in sim.requests
               if method == "PATCH" and isinstance(body, dict)
               and body.get("operation") == operation)


def responses(api, trigger):
    return [r.json for r in api.to(f"/respond/{trigger}")]


def test_signed_approve_reaches_the_provider_once_as_the_mapped_user(
        client, slack, buddy_sim, buddy_connection, manager, viewer):
    manager.email = MANAGER_EMAIL.upper()  # e-mail matches whatever its case
    manager.save()
    viewer.email = "viewer@example.com"
    viewer.save()
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN, creator="Ana Lima")
    buddy_sim.advance(30)
    Channel.objects.create(name="Slack releases", slack_channel="C0RELEASES",
                           events=["waiting"])

    with celery_worker(env=slack.env):
        tasks.sync_connection.delay(buddy_connection.pk)
        wait_for(lambda: slack.to("/api/chat.postMessage"), what="the Slack notification")
        message = slack.to("/api/chat.postMessage")[0].json
        run = Run.objects.get()
        assert run.status == Status.WAITING
        buttons = [e for b in message["blocks"] if b["type"] == "actions"
                   for e in b["elements"]]
        assert [b["action_id"] for b in buttons] == ["runboard:approve", "runboard:cancel"]
        approve = buttons[0]
        assert approve["confirm"]["text"]["text"] == (
            f"Approve {run.name} (no environment; Deploy to production)?")

        # Forged (another secret) and replayed (six minutes old): refused, nothing queued.
        body = button_click(slack, message, "runboard:approve", "U0MANAGER", "T-forged")
        assert post(client, body, signed(body, secret="not-the-secret")).status_code == 401
        body = button_click(slack, message, "runboard:approve", "U0MANAGER", "T-old")
        old = signed(body, timestamp=int(time.time()) - 360)
        assert post(client, body, old).status_code == 401
        body = button_click(slack, message, "runboard:approve", "U0MANAGER", "T-tampered")
        headers = signed(body)
        assert post(client, body.replace("approve", "reject"), headers).status_code == 401
        assert post(client, body, {}).status_code == 401
        assert post(client, body, {"HTTP_X_SLACK_REQUEST_TIMESTAMP": "soon",
                                   "HTTP_X_SLACK_SIGNATURE": "v0=00"}).status_code == 401

        # Signed, but nobody Runboard can trust: told why, nothing sent.
        for user, trigger, why in [
                ("U0STRANGER", "T-stranger", "No single Runboard user"),
                ("U0UNCONFIRMED", "T-unconfirmed", "not confirmed"),
                ("U0NOBODY", "T-nobody", "could not ask Slack"),
                ("U0VIEWER", "T-viewer", "Only release managers")]:
            body = button_click(slack, message, "runboard:approve", user, trigger)
            assert post(client, body, signed(body)).status_code == 200
            wait_for(lambda t=trigger: responses(slack, t), what=f"the answer to {user}")
            answer = responses(slack, trigger)[0]
            assert why in answer["text"] and answer["response_type"] == "ephemeral"
        assert operations(buddy_sim, "APPLY") == 0
        assert not ActionRecord.objects.exists()

        # The manager, signed: one APPLY, audited as them, the message updated in place.
        body = button_click(slack, message, "runboard:approve", "U0MANAGER", "T-good")
        headers = signed(body)
        assert post(client, body, headers).status_code == 200
        wait_for(lambda: responses(slack, "T-good"), what="the message update")
        assert post(client, body, headers).status_code == 200  # replayed within the window
        time.sleep(2)
    assert operations(buddy_sim, "APPLY") == 1
    record = ActionRecord.objects.get()
    assert (record.user, record.kind, record.state) == (manager, "approve", "succeeded")
    update = responses(slack, "T-good")
    assert len(update) == 1 and update[0]["replace_original"] is True
    assert update[0]["text"].startswith("Approved by manager at ")
    assert not any(b["type"] == "actions" for b in update[0]["blocks"])
    assert Run.objects.get().status == Status.RUNNING
    assert SlackInteraction.objects.get(trigger_id="T-good").user == manager


def test_cancel_asks_for_a_comment_in_a_dialog_then_cancels_once(
        client, slack, buddy_sim, buddy_connection, manager):
    User.objects.filter(pk=manager.pk).update(email=MANAGER_EMAIL)
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(30)
    Channel.objects.create(name="Slack releases", slack_channel="C0RELEASES",
                           events=["waiting"])
    with celery_worker(env=slack.env):
        tasks.sync_connection.delay(buddy_connection.pk)
        wait_for(lambda: slack.to("/api/chat.postMessage"), what="the Slack notification")
        message = slack.to("/api/chat.postMessage")[0].json
        run = Run.objects.get()
        body = button_click(slack, message, "runboard:cancel", "U0MANAGER", "T-cancel")
        assert post(client, body, signed(body)).status_code == 200
        dialog = slack.to("/api/views.open")[0].json
        assert dialog["trigger_id"] == "T-cancel"
        view = dialog["view"]
        assert f"Cancel {run.name} (no environment; Deploy to production)?" in json.dumps(view)

        def submit(comment, trigger):
            payload = {"type": "view_submission", "trigger_id": trigger,
                       "user": {"id": "U0MANAGER", "team_id": "T0RUNBOARD"},
                       "team": {"id": "T0RUNBOARD"},
                       "view": {**view, "id": "V0CANCEL", "state": {"values": {
                           "comment": {"comment": {"type": "plain_text_input",
                                                   "value": comment}}}}}}
            return urlencode({"payload": json.dumps(payload)})

        empty = submit("   ", "T-submit-empty")
        answer = post(client, empty, signed(empty))
        assert answer.json()["response_action"] == "errors"
        body = submit("Wrong artefact, stopping it", "T-submit")
        assert post(client, body, signed(body)).status_code == 200
        wait_for(lambda: responses(slack, "T-cancel"), what="the message update")
    assert operations(buddy_sim, "CANCEL") == 1
    record = ActionRecord.objects.get()
    assert (record.user, record.kind, record.comment) == (
        manager, "cancel", "Wrong artefact, stopping it")
    assert responses(slack, "T-cancel")[0]["text"].startswith("Cancelled by manager at ")


def test_signed_nonsense_is_a_clear_400_and_changes_nothing(client, slack, buddy_sim,
                                                            buddy_connection):
    base = {"trigger_id": "T-x", "user": {"id": "U0MANAGER"}}
    bodies = [
        "payload=not-json", "nothing=here", urlencode({"payload": "[1, 2]"}),
        urlencode({"payload": json.dumps({**base, "type": "block_actions", "actions": []})}),
        urlencode({"payload": json.dumps({**base, "type": "block_actions", "actions": [
            {"action_id": "runboard:approve", "value": "abc"}]})}),
        urlencode({"payload": json.dumps({**base, "type": "block_actions", "actions": [
            {"action_id": "runboard:approve", "value": "999999"}]})}),
        urlencode({"payload": json.dumps({**base, "type": "block_actions", "actions": [
            {"action_id": "runboard:delete_everything", "value": "1"}]})}),
        urlencode({"payload": json.dumps({**base, "type": "view_submission", "view": "x"})}),
        urlencode({"payload": json.dumps({**base, "type": "view_submission", "view": {
            "callback_id": "runboard:cancel", "private_metadata": "{]"}})}),
    ]
    for body in bodies:
        response = post(client, body, signed(body))
        assert response.status_code == 400, body
    assert not SlackInteraction.objects.exists() and not ActionRecord.objects.exists()
    assert slack.to("/api/users.info") == []
