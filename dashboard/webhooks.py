"""The webhook endpoint: /hooks/<connection's webhook key>/, one per connection.

A delivery is authenticated by the connection's secret alone (compared in constant
time; no session, no CSRF token: providers have neither). It is answered at once and
its work done by a Celery task, which reads the runs it names back from the provider's
API: a body is never taken for a run's state. Duplicates and replays (the same delivery
id, or the same body, within RUNBOARD_WEBHOOK_REPLAY_WINDOW) are answered 200 and do
nothing; anything malformed gets a 4xx and a log line, never a 500.

Reads are coalesced and budgeted: an accepted delivery is a pending "hint" (its row,
processed_at empty) and queues at most one flush per connection, RUNBOARD_WEBHOOK_COALESCE
seconds later, on RUNBOARD_WEBHOOK_QUEUE when set (a worker of its own keeps reads from
waiting behind long passes). The flush reads each distinct hint once, with the fewest
requests the delivery allows (the run it names, or the environment's status and newest
executions, or the newest page of runs: `Provider.runs_from_webhook`), as many as the
reads' own part of the budget grants (dashboard/schedule.py `take`: never held back by
the passes' debt), and queues itself again for when the budget allows the rest. One
flush per connection at a time (a lease of its own, not the sync's: a read does not
wait for a pass to finish; the two may write the same run, and the later observation
wins, as with actions). A sync pass that starts after a delivery arrived has read what
it named: the pass marks it processed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from dashboard.models import Connection, WebhookDelivery
from providers.base import (
    ProviderError,
    RateLimited,
    Unavailable,
    WebhookEvent,
    WebhookRejected,
)

logger = logging.getLogger(__name__)

Outcome = WebhookDelivery.Outcome


def _answer(status: int, message: str) -> JsonResponse:
    return JsonResponse({"detail": message}, status=status)


def _read_body(request) -> bytes | None:
    """The body, or None when it is over the limit (declared or actual)."""
    limit = settings.RUNBOARD_WEBHOOK_MAX_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    body = request.read(limit + 1)
    return None if len(body) > limit else body


def _reject(connection: Connection, status: int, reason: str, *, authenticated: bool,
            event: str = "") -> JsonResponse:
    logger.warning("webhook for connection %s refused (%s): %s", connection.pk, status, reason)
    minute = timezone.now().strftime("%Y%m%d%H%M")
    key = f"runboard:webhook-rejected:{connection.pk}:{minute}"
    cache.add(key, 0, 120)
    try:
        count = cache.incr(key)
    except ValueError:  # evicted in between
        count = 1
    if authenticated or count <= settings.RUNBOARD_WEBHOOK_REJECTED_LOG_PER_MINUTE:
        WebhookDelivery.objects.create(connection=connection, outcome=Outcome.REJECTED,
                                       http_status=status, event=event[:100],
                                       reason=reason[:300])
    if authenticated:  # a forgery says nothing about the real webhook's health
        Connection.objects.filter(pk=connection.pk).update(
            last_webhook_at=timezone.now(), last_webhook_accepted=False)
    return _answer(status, reason)


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return _has_nul(list(value.keys())) or _has_nul(list(value.values()))
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    return False


@csrf_exempt
@require_POST
def receive(request, key):
    connection = (Connection.objects.filter(webhook_key=key, enabled=True)
                  .only("pk", "provider", "webhooks_enabled", "webhook_secret_hash").first())
    if connection is None:
        logger.warning("webhook for an unknown connection key %s refused", key)
        return _answer(404, "No such webhook.")
    body = _read_body(request)
    if body is None:
        return _reject(connection, 413, "body too large", authenticated=False)
    if not connection.webhooks_enabled or not connection.webhook_secret_hash:
        return _reject(connection, 403, "webhooks are off for this connection",
                       authenticated=False)
    provider = connection.provider_class
    headers = dict(request.headers)
    try:
        presented = provider.webhook_secret(headers, request.GET, body)
    except WebhookRejected as exc:
        return _reject(connection, exc.status, exc.message, authenticated=False)
    if not connection.webhook_secret_matches(presented):
        return _reject(connection, 401, "wrong or missing secret", authenticated=False)
    try:
        event = provider.parse_webhook(headers, body)
    except WebhookRejected as exc:
        return _reject(connection, exc.status, exc.message, authenticated=True)
    if _has_nul([event.event, event.delivery_id, event.hints]):
        # PostgreSQL stores no NUL in text or JSON: the delivery could not even be logged.
        return _reject(connection, 400, "NUL character in the body's text", authenticated=True)

    now = timezone.now()
    delivery_id = event.delivery_id or "sha256:" + hashlib.sha256(body).hexdigest()
    if not event.relevant:
        outcome, status = Outcome.IGNORED, 202
    elif WebhookDelivery.objects.filter(
            connection=connection, delivery_id=delivery_id, outcome=Outcome.ACCEPTED,
            received_at__gte=now - timedelta(seconds=settings.RUNBOARD_WEBHOOK_REPLAY_WINDOW),
    ).exists():
        outcome, status = Outcome.DUPLICATE, 200
    else:
        outcome, status = Outcome.ACCEPTED, 202
    with transaction.atomic():
        WebhookDelivery.objects.create(
            connection=connection, outcome=outcome, http_status=status, event=event.event[:100],
            delivery_id=delivery_id[:128], hints=event.hints, received_at=now)
        Connection.objects.filter(pk=connection.pk).update(
            last_webhook_at=now, last_webhook_accepted=True)
        if outcome == Outcome.ACCEPTED:
            transaction.on_commit(lambda: queue_flush(
                connection.pk, settings.RUNBOARD_WEBHOOK_COALESCE))
    logger.info("webhook for connection %s: %s %s", connection.pk, event.event, outcome)
    return _answer(status, WebhookDelivery.Outcome(outcome).label)


# --- reading what deliveries named: coalesced, within the budget ---------------------


def pending(connection_id: int):
    return WebhookDelivery.objects.unread().filter(connection_id=connection_id)


def queue_flush(connection_id: int, countdown: float) -> bool:
    """Queue a flush of the connection's pending hints in `countdown` seconds, unless one
    is queued no later than that already (or one queued has been lost for a minute)."""
    from dashboard import tasks

    now = timezone.now()
    at = now + timedelta(seconds=countdown)
    queued = Connection.objects.filter(pk=connection_id).filter(
        Q(webhook_flush_at__isnull=True) | Q(webhook_flush_at__gt=at)
        | Q(webhook_flush_at__lt=now - timedelta(seconds=60)),
    ).update(webhook_flush_at=at)
    if queued:
        # Its own queue (when set) so that a user's read never waits behind long passes.
        tasks.flush_webhooks.apply_async((connection_id,), countdown=countdown,
                                         queue=settings.RUNBOARD_WEBHOOK_QUEUE or None)
    return bool(queued)


def _key(hint) -> str:
    return json.dumps(hint, sort_keys=True)


def _acquire_read_lease(connection_id: int) -> datetime | None:
    """The connection's flush lease (one flush at a time), or None when another holds it."""
    now = timezone.now()
    until = now + timedelta(seconds=settings.RUNBOARD_SYNC_LEASE)
    taken = Connection.objects.filter(pk=connection_id).filter(
        Q(webhook_lease_until__isnull=True) | Q(webhook_lease_until__lt=now),
    ).update(webhook_lease_until=until)
    return until if taken else None


class _ReadLease:
    def __init__(self, connection_id: int, until: datetime):
        self.connection_id, self.until = connection_id, until

    def renew(self) -> None:
        until = timezone.now() + timedelta(seconds=settings.RUNBOARD_SYNC_LEASE)
        if Connection.objects.filter(pk=self.connection_id, webhook_lease_until=self.until) \
                .update(webhook_lease_until=until):
            self.until = until

    def release(self) -> None:
        Connection.objects.filter(pk=self.connection_id, webhook_lease_until=self.until) \
            .update(webhook_lease_until=None)


def flush(connection_id: int) -> dict:
    """Read what the connection's pending deliveries name, once per distinct hint."""
    Connection.objects.filter(pk=connection_id).update(webhook_flush_at=None)
    if not pending(connection_id).exists():
        return {"connection": connection_id, "read": 0}
    until = _acquire_read_lease(connection_id)
    if until is None:
        # Another flush is under way (what it has not read it leaves pending): look
        # again soon, a user is waiting for this read.
        queue_flush(connection_id, 0.05)
        return {"connection": connection_id, "busy": True}
    lease = _ReadLease(connection_id, until)
    try:
        return _flush(connection_id, lease)
    finally:
        lease.release()


def _flush(connection_id: int, lease: _ReadLease) -> dict:
    from dashboard import metrics, schedule, sync

    rows = list(pending(connection_id).order_by("received_at").values_list("pk", "hints"))
    hints: dict[str, dict] = {}
    for _, named in rows:
        for hint in named:
            hints.setdefault(_key(hint), hint)
    connection = Connection.objects.get(pk=connection_id)
    written: dict[str, int] = {}  # hint -> runs written, for each hint read (or gone)
    reasons: dict[str, str] = {}
    wait = None
    if hints:
        cost = max(1, connection.provider_class.webhook_read_cost)
        granted, wait = schedule.take(connection_id, len(hints) * cost)
        # A part of a read's cost granted is a read too: what it costs beyond is charged.
        chosen = list(hints.items())[:-(-granted // cost)]
        if chosen:
            client = connection.client()
            # What the last pass left (names of pipelines and environments): a read need
            # not ask for them again. Read only: the pass alone stores it.
            client.change_state, client.full_read = sync._listing(connection)
            try:
                for key, hint in chosen:
                    client.learned = {}
                    try:
                        runs = client.runs_from_webhook(WebhookEvent("coalesced", hints=[hint]))
                    except (RateLimited, Unavailable):
                        raise
                    except ProviderError as exc:
                        # E.g. the run is not this connection's, or gone: nothing to write.
                        logger.warning("webhook hint %s of connection %s: %s", key,
                                       connection_id, exc.message)
                        written[key], reasons[key] = 0, exc.message
                        continue
                    written[key] = sync.upsert_runs(connection, runs)
                    # What it read, the next pass need not read again (Qovery: 2 requests).
                    sync.remember_read(connection_id, client.learned)
                    lease.renew()
            except RateLimited as exc:
                wait = max(wait or 0.0, exc.retry_after)
            except Unavailable as exc:
                logger.warning("webhook reads of connection %s: %s", connection_id, exc.message)
                wait = max(wait or 0.0, settings.RUNBOARD_RETRY_BACKOFF)
            finally:
                client.close()
                schedule.record_rate_limit(connection_id, client.rate_limit)
                # `take` granted a read's usual cost; some cost more (a name not known).
                schedule.charge_reads(connection_id, client.requests_made - granted)
                metrics.count_requests(connection_id, client)
    now = timezone.now()
    for pk, named in rows:
        keys = [_key(hint) for hint in named]
        if keys and all(key in written for key in keys):
            reason = "; ".join(reasons[key] for key in keys if key in reasons)
            WebhookDelivery.objects.filter(pk=pk).update(
                processed_at=now, runs_written=sum(written[key] for key in keys),
                reason=reason[:300])
    listless = [pk for pk, named in rows if not named]
    if listless:
        _pass_for(connection, listless, now)
    if len(written) < len(hints):
        queue_flush(connection_id, max(0.05, wait or 1.0))
    return {"connection": connection_id, "hints": len(hints), "read": len(written)}


LISTLESS = "a webhook delivery named no run: the list is read"


def _pass_for(connection: Connection, deliveries: list[int], now) -> None:
    """Deliveries that name nothing to read (a body without the ids a provider's read
    needs) want the run list read: at once when the passes' budget is not in debt,
    otherwise by the scheduler's next pass (which marks them processed)."""
    from dashboard import schedule, sync

    budget_at = Connection.objects.values_list("budget_at", flat=True).get(pk=connection.pk)
    if budget_at and budget_at > now:
        schedule.poll_soon(connection.pk, now, reason=LISTLESS)
        return
    started = timezone.now()
    try:
        result = sync.sync_connection(connection.pk)
    except ProviderError:  # recorded on the connection; the scheduler's pass tries again
        schedule.poll_soon(connection.pk, reason=LISTLESS)
        return
    if result.skipped:  # a pass is under way; the next one reads it
        schedule.poll_soon(connection.pk, reason=LISTLESS)
        return
    schedule.after_pass(connection.pk, requests=result.requests,
                        runs_written=result.runs_written, rate_limit_seen=result.rate_limit_seen,
                        rate_limit=result.rate_limit)
    read_by_pass(connection.pk, started)


def read_by_pass(connection_id: int, started) -> int:
    """A pass that started after these deliveries arrived has read what they named."""
    return pending(connection_id).filter(received_at__lt=started).update(
        processed_at=timezone.now(), reason="read by a sync pass")
