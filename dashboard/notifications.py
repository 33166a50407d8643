"""Tell chat channels about runs: which events, once each, through Apprise.

The sync calls `runs_written` after each page it writes; a finished action and a stale
connection are noticed by a signal and a periodic task. From there:

1. `dispatch_runs` (a Celery task) matches each run against every enabled channel's
   rules and *claims* a Delivery per (channel, event, state-change key) under a unique
   constraint. A re-sync, a second worker or a retried task hits the constraint and
   claims nothing, so nothing is sent twice.
2. `send_delivery` (a Celery task, retried with exponential backoff) takes the claim
   from pending to sending with a conditional update, so two copies of the task never
   both send, and records the outcome on the Delivery: the log admins read.

A worker that dies between sending and recording may send one notification again when
`requeue_stuck` hands the claim out again: at least once, never more than that per crash.
"""

from __future__ import annotations

import logging
import random
import re
from datetime import timedelta

import apprise
from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.utils import timezone

from dashboard.channels import Channel, Delivery, Event
from dashboard.models import ActionRecord, Connection, Run
from dashboard.secrets import UnreadableSecret
from dashboard.templatetags.runboard import duration
from providers.base import Status

logger = logging.getLogger(__name__)

RUN_EVENTS = {
    Status.WAITING: Event.WAITING, Status.FAILED: Event.FAILED,
    Status.CANCELLED: Event.CANCELLED, Status.SUCCEEDED: Event.SUCCEEDED,
    Status.RUNNING: Event.STARTED,
}
TERMINAL = {Event.FAILED, Event.CANCELLED, Event.SUCCEEDED}
HEADLINES = {
    Event.WAITING: "Waiting for approval", Event.FAILED: "Failed",
    Event.CANCELLED: "Cancelled", Event.SUCCEEDED: "Succeeded", Event.STARTED: "Started",
}
# A claim still pending or sending after this long lost its task (a worker died, or the
# broker refused the message): hand it out again.
STUCK_AFTER = timedelta(minutes=10)
MAX_BACKOFF = 300
UNREADABLE_URL_MESSAGE = (
    "Channel URL unreadable: re-enter it (it was encrypted with a SECRET_KEY that is no "
    "longer configured; see SECRET_KEY_FALLBACKS)."
)


class DeliveryFailed(Exception):
    pass


# --- hooks --------------------------------------------------------------------------------


def runs_written(statuses: dict[int, str]) -> None:
    """The sync wrote these runs (pk -> status), inside its transaction: once it commits,
    look for events. Costs nothing for runs in no notifiable state."""
    pks = [pk for pk, status in statuses.items() if status in RUN_EVENTS]
    if pks and Channel.objects.filter(enabled=True).exists():
        transaction.on_commit(lambda: _enqueue(dispatch_runs, pks))


@receiver(post_save, sender=ActionRecord, dispatch_uid="runboard-notify-action")
def _action_saved(sender, instance: ActionRecord, **kwargs) -> None:
    if instance.state == ActionRecord.State.SUCCEEDED and \
            Channel.objects.filter(enabled=True).exists():
        transaction.on_commit(lambda: _enqueue(dispatch_action, instance.pk))


def _enqueue(task, *args) -> None:
    try:
        task.delay(*args)
    except Exception:  # the broker is down; the write it follows must not fail for it
        logger.exception("could not queue %s%r", task.name, args)


# --- rules --------------------------------------------------------------------------------


def _channels() -> list[Channel]:
    channels = list(Channel.objects.filter(enabled=True)
                    .prefetch_related("connections", "projects", "environments"))
    for channel in channels:
        channel.rule_connections = {c.pk for c in channel.connections.all()}
        channel.rule_projects = {p.pk for p in channel.projects.all()}
        channel.rule_environments = {e.pk for e in channel.environments.all()}
        channel.rule_scope_connections = (
            {p.connection_id for p in channel.projects.all()}
            | {e.connection_id for e in channel.environments.all()})
    return channels


def wants_run(channel: Channel, event: str, run: Run) -> bool:
    project_id = run.project_id or (run.environment.project_id if run.environment else None)
    return (event in channel.events
            and (not channel.rule_connections or run.connection_id in channel.rule_connections)
            and (not channel.rule_projects or project_id in channel.rule_projects)
            and (not channel.rule_environments
                 or run.environment_id in channel.rule_environments))


def wants_connection(channel: Channel, connection: Connection) -> bool:
    return (Event.STALE in channel.events
            and (not channel.rule_connections or connection.pk in channel.rule_connections)
            and (not channel.rule_scope_connections
                 or connection.pk in channel.rule_scope_connections))


def run_state_key(run: Run, event: str) -> str:
    """What makes this event of this run happen once. A second approval gate of the same
    run waits on another job; a retried run finishes at another time."""
    if event == Event.WAITING:
        waiting = sorted(j.external_id for j in run.jobs.all() if j.status == Status.WAITING)
        return f"run {run.pk} waiting {','.join(waiting)}"
    if event in TERMINAL:
        finished = run.finished_at.isoformat() if run.finished_at else ""
        return f"run {run.pk} {event} {finished}"
    return f"run {run.pk} {event}"


def _too_old(run: Run, event: str, channel: Channel) -> bool:
    """A first sync brings a connection's history: announce only recent endings, and
    none from before the channel existed."""
    if event not in TERMINAL:
        return False
    ended = run.finished_at or run.updated_at
    oldest = max(timezone.now() - timedelta(seconds=settings.RUNBOARD_NOTIFY_MAX_AGE),
                 channel.created_at - timedelta(minutes=1))
    return ended < oldest


def claim(channel: Channel, event: str, key: str, **subject) -> Delivery | None:
    """Insert the delivery, or return None if this event was already claimed."""
    try:
        with transaction.atomic():
            return Delivery.objects.create(channel=channel, event=event, key=key[:300],
                                           **subject)
    except IntegrityError:
        return None


def _send_claimed(claims: list[Delivery | None]) -> int:
    """Queue the sending of each delivery claimed (None: someone else had the claim)."""
    claimed = [delivery.pk for delivery in claims if delivery]
    for pk in claimed:
        _enqueue(send_delivery, pk)
    return len(claimed)


# --- tasks --------------------------------------------------------------------------------


@shared_task(name="dashboard.notifications.dispatch_runs", acks_late=True)
def dispatch_runs(pks: list[int]) -> int:
    channels = _channels()
    if not channels:
        return 0
    runs = (Run.objects.filter(pk__in=pks).defer("raw")
            .select_related("connection", "environment", "project").prefetch_related("jobs"))
    claimed = []
    for run in runs:
        event = RUN_EVENTS.get(run.status)
        if event is None:  # moved on since the write that queued us
            continue
        key = run_state_key(run, event)
        for channel in channels:
            if wants_run(channel, event, run) and not _too_old(run, event, channel):
                title, body = describe_run(run, event)
                claimed.append(claim(channel, event, key, run=run, connection=run.connection,
                                     title=title, body=body))
    return _send_claimed(claimed)


@shared_task(name="dashboard.notifications.dispatch_action", acks_late=True)
def dispatch_action(record_id: int) -> int:
    record = (ActionRecord.objects.select_related("run__connection", "run__environment",
                                                  "run__project", "user")
              .filter(pk=record_id, state=ActionRecord.State.SUCCEEDED).first())
    if record is None:
        return 0
    claimed = []
    for channel in _channels():
        if wants_run(channel, Event.ACTION, record.run):
            title, body = describe_action(record)
            claimed.append(claim(channel, Event.ACTION, f"action {record.pk}", run=record.run,
                                 connection=record.run.connection, action=record,
                                 title=title, body=body))
    return _send_claimed(claimed)


@shared_task(name="dashboard.notifications.check_stale")
def check_stale() -> int:
    """Announce each connection that turned stale, once per last successful sync."""
    channels = [c for c in _channels() if Event.STALE in c.events]
    if not channels:
        return 0
    claimed = []
    for connection in Connection.objects.filter(enabled=True).defer("token", "cursor"):
        if not connection.is_stale:
            continue
        since = connection.last_success_at.isoformat() if connection.last_success_at else "never"
        for channel in channels:
            if wants_connection(channel, connection):
                title, body = describe_stale(connection)
                claimed.append(claim(channel, Event.STALE, f"connection {connection.pk} {since}",
                                     connection=connection, title=title, body=body))
    return _send_claimed(claimed)


@shared_task(name="dashboard.notifications.requeue_stuck")
def requeue_stuck() -> int:
    stuck = Delivery.objects.filter(
        state__in=[Delivery.State.PENDING, Delivery.State.SENDING],
        updated_at__lt=timezone.now() - STUCK_AFTER,
    )
    pks = list(stuck.values_list("pk", flat=True))
    Delivery.objects.filter(pk__in=pks).update(state=Delivery.State.PENDING,
                                               updated_at=timezone.now())
    for pk in pks:
        _enqueue(send_delivery, pk)
    return len(pks)


@shared_task(bind=True, name="dashboard.notifications.send_delivery", acks_late=True,
             max_retries=5)
def send_delivery(self, delivery_id: int) -> str:
    # Pending -> sending, atomically: a second copy of this task finds nothing to take.
    taken = Delivery.objects.filter(pk=delivery_id, state=Delivery.State.PENDING).update(
        state=Delivery.State.SENDING, attempts=F("attempts") + 1, updated_at=timezone.now())
    if not taken:
        return "not pending"
    delivery = Delivery.objects.select_related("channel").get(pk=delivery_id)
    try:
        deliver(delivery)
    except DeliveryFailed as exc:
        last = self.request.retries >= self.max_retries
        Delivery.objects.filter(pk=delivery_id).update(
            state=Delivery.State.FAILED if last else Delivery.State.PENDING,
            error=str(exc)[:2000], updated_at=timezone.now())
        if last:
            return "failed"
        backoff = min(MAX_BACKOFF, settings.RUNBOARD_NOTIFY_BACKOFF * 2 ** self.request.retries)
        raise self.retry(countdown=backoff * random.uniform(0.5, 1.5)) from exc
    Delivery.objects.filter(pk=delivery_id).update(
        state=Delivery.State.SENT, sent_at=timezone.now(), error="", updated_at=timezone.now(),
        slack_ts=delivery.slack_ts)
    return "sent"


# --- sending ------------------------------------------------------------------------------


def deliver(delivery: Delivery) -> None:
    """Send one delivery through its channel; raise DeliveryFailed with the reason."""
    channel = delivery.channel
    if channel.slack_channel:
        from dashboard import slack  # slack imports actions, which imports the sync

        slack.post_delivery(delivery)
    else:
        send_apprise(channel.url, delivery.title, delivery.body)


def send_apprise(url: str, title: str, body: str) -> None:
    if isinstance(url, UnreadableSecret):
        raise DeliveryFailed(UNREADABLE_URL_MESSAGE)
    notifier = apprise.Apprise()
    if not url or not notifier.add(url):
        raise DeliveryFailed("Not a URL Apprise knows (see its list of services).")
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as log:
        ok = notifier.notify(title=title, body=body, body_format=apprise.NotifyFormat.TEXT)
    if not ok:
        raise DeliveryFailed(log.getvalue().strip()[-1000:] or "Apprise could not deliver it.")


def send_test(channel: Channel) -> Delivery:
    """Send a test message now (the admin's button) and log it like any delivery."""
    delivery = Delivery.objects.create(
        channel=channel, event=Event.TEST, key=f"test {timezone.now().isoformat()}",
        state=Delivery.State.SENDING, attempts=1, title="Runboard test message",
        body=f"Notifications from {settings.RUNBOARD_BASE_URL} reach this channel.",
    )
    try:
        if channel.slack_channel:
            from dashboard import slack

            slack.post_text(channel.slack_channel, delivery.title, delivery.body)
        else:
            send_apprise(channel.url, delivery.title, delivery.body)
    except DeliveryFailed as exc:
        delivery.state, delivery.error = Delivery.State.FAILED, str(exc)[:2000]
    else:
        delivery.state, delivery.sent_at = Delivery.State.SENT, timezone.now()
    delivery.save()
    return delivery


# --- messages -----------------------------------------------------------------------------


def plain(text: str, limit: int = 200) -> str:
    """Provider text made inert for chat: one line, no markup or mention syntax."""
    text = re.sub(r"\s+", " ", str(text or "")).strip()
    text = text.replace("<", "\u2039").replace(">", "\u203a").replace("@", "@\u200b")
    return text[:limit]


def run_link(run: Run) -> str:
    return settings.RUNBOARD_BASE_URL + run.get_absolute_url()


def waited(run: Run, event: str) -> tuple[str, timedelta | None]:
    """How long the run has waited, as fits the event: for approval, in the queue, or all."""
    now = timezone.now()
    if event == Event.WAITING:
        jobs = [j.started_at for j in run.jobs.all() if j.status == Status.WAITING and j.started_at]
        since = min(jobs) if jobs else (run.started_at or run.created_at)
        return "Waiting for", (now - since) if since else None
    if event == Event.STARTED:
        start = run.started_at or now
        return "Queued for", (start - run.created_at) if run.created_at else None
    start = run.created_at or run.started_at
    end = run.finished_at or now
    return "Took", (end - start) if start else None


def run_title(run: Run) -> str:
    return plain(run.name or run.pipeline_name or run.external_id, 120)


def _run_lines(run: Run) -> list[str]:
    """What every message about a run says of it."""
    return [
        f"Run: {run_title(run)} ({plain(run.connection.name, 80)})",
        f"Environment: {plain(run.environment.name, 80) if run.environment else '—'}",
        f"Version: {plain(run.version or run.commit[:12], 80) or '—'}",
        f"Triggered by: {plain(run.triggered_by, 80) or '—'}",
    ]


def describe_run(run: Run, event: str) -> tuple[str, str]:
    where = f" in {plain(run.environment.name, 80)}" if run.environment else ""
    title = f"{HEADLINES[event]}: {run_title(run)}{where}"
    label, how_long = waited(run, event)
    body = "\n".join([*_run_lines(run), f"{label}: {duration(how_long) or '—'}",
                      f"Link: {run_link(run)}"])
    return title[:300], body


def describe_action(record: ActionRecord) -> tuple[str, str]:
    run = record.run
    who = record.user.get_full_name() or record.user.get_username()
    title = f"{record.get_kind_display()} by {plain(who, 80)}: {run_title(run)}"
    lines = [*_run_lines(run), f"{record.get_kind_display()} by: {plain(who, 80)}"]
    if record.comment:
        lines.append(f"Comment: {plain(record.comment, 500)}")
    lines.append(f"Link: {run_link(run)}")
    return title[:300], "\n".join(lines)


def describe_stale(connection: Connection) -> tuple[str, str]:
    last = (timezone.localtime(connection.last_success_at).strftime("%Y-%m-%d %H:%M:%S %Z")
            if connection.last_success_at else "never")
    lines = [f"Connection: {plain(connection.name, 80)}", f"Last successful sync: {last}"]
    if connection.last_error:
        lines.append(f"Last error: {plain(connection.last_error, 300)}")
    lines.append(f"Link: {settings.RUNBOARD_BASE_URL}/connections/")
    return f"Connection stale: {plain(connection.name, 80)}", "\n".join(lines)

