"""Approve, reject and cancel from Slack: interactive messages of a Slack app.

Outbound, a channel with a Slack channel ID gets its notifications as Block Kit messages
posted by the app's bot (slack_sdk's WebClient, at RUNBOARD_SLACK_API_URL), with buttons
on "waiting" (approve, reject, cancel) and "started" (cancel) messages; every button
asks for confirmation in a dialog naming the run and its environment. Cancel opens a
modal for the comment Runboard requires of every cancel.

Inbound, `interactive` is the app's Interactivity Request URL. It answers only requests
whose signature slack_sdk's SignatureVerifier accepts (the signing secret, a five-minute
timestamp window, a constant-time compare), handles each Slack trigger once, and hands
the work to a Celery task, as Slack wants an answer within three seconds. The task maps
the Slack user to a Runboard user by their verified e-mail (users.info), holds them to
the web buttons' rules (the act_on_run permission, dashboard/actions.py `perform` with
its comment and audit rules) and updates the message in place through its response_url.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

from celery import shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from dashboard import actions
from dashboard.channels import Delivery, Event, SlackInteraction
from dashboard.models import Run
from dashboard.notifications import DeliveryFailed, describe_run, plain, run_title
from providers.base import Action

logger = logging.getLogger(__name__)

ACTION_PREFIX = "runboard:"
BUTTONS = {Event.WAITING: [Action.APPROVE, Action.REJECT, Action.CANCEL],
           Event.STARTED: [Action.CANCEL]}
PAST = {Action.APPROVE: "Approved", Action.REJECT: "Rejected", Action.CANCEL: "Cancelled"}
CANCEL_MODAL = "runboard:cancel"


def web_client() -> WebClient:
    return WebClient(token=settings.RUNBOARD_SLACK_BOT_TOKEN,
                     base_url=settings.RUNBOARD_SLACK_API_URL, timeout=5)


# --- messages --------------------------------------------------------------------------


def _mrkdwn(text: str) -> str:
    # Slack's three control characters; plain() already made provider text inert.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def where(run: Run) -> str:
    if run.environment:
        return f"in {plain(run.environment.name, 80)}"
    return f"(no environment; {plain(run.pipeline_name or run.connection.name, 80)})"


def confirm(kind: str, run: Run) -> dict:
    verb = Action(kind).label
    return {
        "title": {"type": "plain_text", "text": f"{verb} this run?"[:100]},
        "text": {"type": "plain_text", "text": f"{verb} {run_title(run)} {where(run)}?"[:300]},
        "confirm": {"type": "plain_text", "text": verb},
        "deny": {"type": "plain_text", "text": "Back"},
        **({"style": "danger"} if kind != Action.APPROVE else {}),
    }


def blocks(run: Run, title: str, body: str, buttons: list[str], note: str = "") -> list[dict]:
    result = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_mrkdwn(title)}*"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(body)}},
    ]
    allowed = [kind for kind in buttons if kind in run.available_actions()]
    if allowed:
        result.append({"type": "actions", "block_id": f"runboard-run-{run.pk}", "elements": [
            {"type": "button", "action_id": f"{ACTION_PREFIX}{kind}", "value": str(run.pk),
             "text": {"type": "plain_text", "text": Action(kind).label},
             **({"style": "primary"} if kind == Action.APPROVE else {}),
             **({"style": "danger"} if kind == Action.REJECT else {}),
             "confirm": confirm(kind, run)}
            for kind in allowed
        ]})
    if note:
        result.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
    return result


def _post(channel_id: str, text: str, content: list[dict] | None = None):
    """Post as the Slack app; every failure is a DeliveryFailed with Slack's reason."""
    if not settings.RUNBOARD_SLACK_BOT_TOKEN:
        raise DeliveryFailed("RUNBOARD_SLACK_BOT_TOKEN is not set: no Slack app to post as.")
    try:
        return web_client().chat_postMessage(channel=channel_id, text=text, blocks=content)
    except (SlackApiError, SlackRequestError, OSError) as exc:
        raise DeliveryFailed(f"Slack: {exc}") from exc


def post_delivery(delivery: Delivery) -> None:
    """Post a delivery to its Slack channel as an interactive message (notifications.py)."""
    run = (Run.objects.select_related("connection", "environment")
           .filter(pk=delivery.run_id).first())
    content = (blocks(run, delivery.title, delivery.body, BUTTONS.get(delivery.event, []))
               if run else None)
    answer = _post(delivery.channel.slack_channel, delivery.title, content)
    delivery.slack_ts = str(answer.get("ts", ""))[:40]


def post_text(channel_id: str, title: str, body: str) -> None:
    _post(channel_id, f"{title}\n{body}")


# --- the interactivity endpoint -----------------------------------------------------------


@csrf_exempt  # Slack cannot send a CSRF token; its signature takes the token's place
@require_POST
def interactive(request):
    secret = settings.RUNBOARD_SLACK_SIGNING_SECRET
    if not secret:
        return HttpResponse("Slack is not set up here.", status=404)
    try:
        valid = SignatureVerifier(secret).is_valid(
            body=request.body.decode("utf-8"),
            timestamp=request.headers.get("X-Slack-Request-Timestamp"),
            signature=request.headers.get("X-Slack-Signature"))
    except (ValueError, UnicodeDecodeError):  # a timestamp that is not a number, …
        valid = False
    if not valid:
        return HttpResponse("Invalid signature.", status=401)
    try:
        payload = json.loads(request.POST["payload"])
        kind = payload["type"]
        trigger = str(payload["trigger_id"])
        slack_user = str(payload["user"]["id"])
        if "\x00" in trigger + slack_user:  # PostgreSQL cannot store it in the claim
            raise ValueError("NUL in an id")
    except (KeyError, TypeError, ValueError):
        return HttpResponse("Not an interaction payload.", status=400)

    try:
        if kind == "block_actions":
            return _button(payload, trigger, slack_user)
        if kind == "view_submission" and payload["view"]["callback_id"] == CANCEL_MODAL:
            return _cancel_submitted(payload, trigger, slack_user)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return HttpResponse("Not a Runboard interaction.", status=400)
    return HttpResponse(status=200)  # nothing of ours: acknowledge and ignore


def _first_time(trigger: str, slack_user: str, kind: str, run_id: int | None) -> bool:
    """Claim this trigger: a replayed request (the same trigger) does nothing again."""
    try:
        with transaction.atomic():
            SlackInteraction.objects.create(trigger_id=trigger[:200], slack_user=slack_user[:40],
                                            action=kind, run_id=run_id)
    except IntegrityError:
        return False
    return True


def _button(payload: dict, trigger: str, slack_user: str):
    try:
        action = payload["actions"][0]
        kind = action["action_id"].removeprefix(ACTION_PREFIX)
        run_id = int(action["value"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return HttpResponse("Not a Runboard button.", status=400)
    if kind not in BUTTONS[Event.WAITING] or not Run.objects.filter(pk=run_id).exists():
        return HttpResponse("Not a Runboard button.", status=400)
    if not _first_time(trigger, slack_user, kind, run_id):
        return HttpResponse(status=200)
    response_url = str(payload.get("response_url", ""))
    if kind == Action.CANCEL:
        # A cancel needs a comment, as on the web: ask for it in a modal first.
        _open_cancel_modal(trigger, run_id, response_url)
        return HttpResponse(status=200)
    act.delay(slack_user, kind, run_id, "", response_url, trigger)
    return HttpResponse(status=200)


def _open_cancel_modal(trigger: str, run_id: int, response_url: str) -> None:
    run = Run.objects.select_related("connection", "environment").get(pk=run_id)
    view = {
        "type": "modal", "callback_id": CANCEL_MODAL,
        "private_metadata": json.dumps({"run": run_id, "response_url": response_url}),
        "title": {"type": "plain_text", "text": "Cancel run"},
        "submit": {"type": "plain_text", "text": "Cancel run"},
        "close": {"type": "plain_text", "text": "Back"},
        "blocks": [
            {"type": "section", "text": {"type": "plain_text",
                                         "text": f"Cancel {run_title(run)} {where(run)}?"}},
            {"type": "input", "block_id": "comment", "label": {
                "type": "plain_text", "text": "Why? (required, kept in the audit)"},
             "element": {"type": "plain_text_input", "action_id": "comment",
                         "multiline": True, "max_length": 2000}},
        ],
    }
    try:
        web_client().views_open(trigger_id=trigger, view=view)
    except (SlackApiError, SlackRequestError, OSError):
        logger.exception("could not open Slack's cancel dialog for run %s", run_id)


def _cancel_submitted(payload: dict, trigger: str, slack_user: str):
    try:
        view = payload["view"]
        meta = json.loads(view["private_metadata"])
        run_id = int(meta["run"])
        comment = str(view["state"]["values"]["comment"]["comment"]["value"] or "")[:2000]
    except (KeyError, TypeError, ValueError):
        return HttpResponse("Not a Runboard dialog.", status=400)
    if not comment.strip() or "\x00" in comment:  # the audit cannot store NUL
        return JsonResponse({"response_action": "errors", "errors": {
            "comment": "A comment is required to cancel a run." if not comment.strip()
            else "The comment holds a NUL character; type it again."}})
    if _first_time(trigger, slack_user, Action.CANCEL, run_id):
        act.delay(slack_user, Action.CANCEL, run_id, comment,
                  str(meta.get("response_url", "")), trigger)
    return HttpResponse(status=200)  # an empty answer closes the modal


# --- the work ----------------------------------------------------------------------------


def runboard_user(slack_user: str):
    """The active Runboard user whose e-mail is this Slack user's verified e-mail, and
    why not if none."""
    try:
        info = web_client().users_info(user=slack_user).get("user") or {}
    except (SlackApiError, SlackRequestError, OSError) as exc:
        return None, f"Runboard could not ask Slack who you are ({exc})."
    email = ((info.get("profile") or {}).get("email") or "").strip()
    if info.get("deleted") or info.get("is_bot") or not email:
        return None, "Runboard sees no e-mail address on your Slack profile."
    if info.get("is_email_confirmed") is not True:
        return None, "Your Slack e-mail address is not confirmed, so Runboard cannot trust it."
    users = list(get_user_model().objects.filter(email__iexact=email, is_active=True)[:2])
    if len(users) != 1:
        return None, f"No single Runboard user has the e-mail address {email}."
    return users[0], ""


def is_slack_url(url: str) -> bool:
    """Whether a response_url is under the configured prefix: the same scheme and host
    (no user part, no other port) and a path below the prefix's, however it is written."""
    prefix = urlsplit(settings.RUNBOARD_SLACK_RESPONSE_URL_PREFIX)
    try:
        target = urlsplit(url)
    except ValueError:
        return False
    return (target.scheme == prefix.scheme and target.netloc == prefix.netloc
            and target.path.startswith(prefix.path or "/"))


def respond(response_url: str, **message) -> None:
    """Answer through the interaction's response_url, only if it is Slack's own."""
    if not is_slack_url(response_url):
        logger.warning("ignoring a response_url outside %s",
                       settings.RUNBOARD_SLACK_RESPONSE_URL_PREFIX)
        return
    try:
        WebhookClient(response_url, timeout=5).send_dict(message)
    except (SlackApiError, SlackRequestError, OSError):
        logger.exception("could not answer Slack's response_url")


def _say(response_url: str, text: str) -> None:
    respond(response_url, response_type="ephemeral", replace_original=False, text=text)


@shared_task(name="dashboard.slack.act", acks_late=True)
def act(slack_user: str, kind: str, run_id: int, comment: str, response_url: str,
        trigger: str) -> str:
    interaction = SlackInteraction.objects.filter(trigger_id=trigger[:200]).first()

    def outcome(text: str) -> str:
        if interaction:
            SlackInteraction.objects.filter(pk=interaction.pk).update(outcome=text[:2000])
        return text

    user, why = runboard_user(slack_user)
    if user is None:
        _say(response_url, why)
        return outcome(why)
    if interaction:
        SlackInteraction.objects.filter(pk=interaction.pk).update(user=user)
    if not user.has_perm("dashboard.act_on_run"):
        text = "Only release managers can act on runs."
        _say(response_url, text)
        return outcome(text)
    run = Run.objects.select_related("connection", "environment").filter(pk=run_id).first()
    if run is None:
        return outcome("The run no longer exists.")
    try:
        actions.perform(run, user, kind, comment=comment)
    except actions.ActionRefused as exc:
        _say(response_url, exc.message)
        return outcome(exc.message)
    run.refresh_from_db()
    who = user.get_full_name() or user.get_username()
    at = timezone.localtime().strftime("%Y-%m-%d %H:%M %Z")
    note = f"{PAST[kind]} by {_mrkdwn(plain(who, 80))} at {at}"
    _, body = describe_run(run, Event.STARTED)
    body = "\n".join(line for line in body.splitlines() if not line.startswith("Queued for"))
    title = f"{run_title(run)} {where(run)}: {run.get_status_display().lower()}"
    respond(response_url, replace_original=True, text=note,
            blocks=blocks(run, title, body, [], note))
    return outcome(note)
