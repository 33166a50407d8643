"""The webhook endpoint: /hooks/<connection's webhook key>/, one per connection.

A delivery is authenticated by the connection's secret alone (compared in constant
time; no session, no CSRF token: providers have neither). It is answered at once and
its work done by a Celery task, which reads the runs it names back from the provider's
API: a body is never taken for a run's state. Duplicates and replays (the same delivery
id, or the same body, within RUNBOARD_WEBHOOK_REPLAY_WINDOW) are answered 200 and do
nothing; anything malformed gets a 4xx and a log line, never a 500.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from dashboard.models import Connection, WebhookDelivery
from providers.base import WebhookRejected

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
        delivery = WebhookDelivery.objects.create(
            connection=connection, outcome=outcome, http_status=status, event=event.event[:100],
            delivery_id=delivery_id[:128], hints=event.hints, received_at=now)
        Connection.objects.filter(pk=connection.pk).update(
            last_webhook_at=now, last_webhook_accepted=True)
        if outcome == Outcome.ACCEPTED:
            from dashboard import tasks

            transaction.on_commit(lambda: tasks.process_webhook.delay(delivery.pk))
    logger.info("webhook for connection %s: %s %s", connection.pk, event.event, outcome)
    return _answer(status, WebhookDelivery.Outcome(outcome).label)
