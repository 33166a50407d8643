"""What logs Runboard keeps, and for how long: the webhook delivery log, the channels'
sent notifications and the Slack interactions handled grow with every delivery,
notification and click, so rows older than RUNBOARD_LOG_RETENTION_DAYS are deleted by
the beat (hourly) or `manage.py prune_logs`.

Never deleted: work still to do (an accepted delivery not yet read, a notification not
yet sent), and anything a replay check still needs (a delivery inside
RUNBOARD_WEBHOOK_REPLAY_WINDOW). The audit (ActionRecord) is append-only and is not
touched here. What is deleted from the delivery logs is tallied on its connection or
channel, where the metrics count it still (dashboard/metrics.py).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from dashboard.channels import Channel, Delivery, SlackInteraction
from dashboard.models import UNREAD_DELIVERY, Connection, WebhookDelivery


def prune(days: float | None = None, now: datetime | None = None) -> dict[str, int]:
    """Delete log rows older than `days` (default RUNBOARD_LOG_RETENTION_DAYS); return how
    many of each kind."""
    now = now or timezone.now()
    days = settings.RUNBOARD_LOG_RETENTION_DAYS if days is None else days
    keep = max(timedelta(days=days),
               timedelta(seconds=settings.RUNBOARD_WEBHOOK_REPLAY_WINDOW))
    before = now - keep
    webhooks = sum(
        # Per connection: the (connection, -received_at) index finds the old ones.
        _delete_tallied(WebhookDelivery.objects.filter(connection_id=pk, received_at__lt=before)
                        .exclude(UNREAD_DELIVERY), "outcome",
                        Connection, pk, "webhook_deliveries_pruned")
        for pk in Connection.objects.values_list("pk", flat=True))
    notifications = sum(
        _delete_tallied(Delivery.objects.filter(
            channel_id=pk, created_at__lt=before,
            state__in=[Delivery.State.SENT, Delivery.State.FAILED]), "state",
            Channel, pk, "deliveries_pruned")
        for pk in Channel.objects.values_list("pk", flat=True))
    slack = SlackInteraction.objects.filter(created_at__lt=before).delete()[0]
    return {"webhook deliveries": webhooks, "notifications": notifications,
            "slack interactions": slack}


def _delete_tallied(rows, label: str, owner_model, owner_id: int, tally: str,
                    batch: int = 5000) -> int:
    """Delete `rows`, adding how many there were of each `label` to the owner's `tally`:
    the metrics count a log and its tally together, so a prune never takes one of their
    counters down (which Prometheus would read as a reset). In batches, each in a
    transaction that holds the owner's row."""
    deleted = 0
    while True:
        with transaction.atomic():
            owner = owner_model.objects.select_for_update().only(tally).filter(
                pk=owner_id).first()
            if owner is None:  # deleted meanwhile, its log with it
                return deleted
            taken = list(rows.select_for_update().order_by().values_list("pk", label)[:batch])
            if not taken:
                return deleted
            counts = Counter(getattr(owner, tally))
            counts.update(value for _, value in taken)
            rows.model.objects.filter(pk__in=[pk for pk, _ in taken]).delete()
            owner_model.objects.filter(pk=owner_id).update(**{tally: dict(counts)})
        deleted += len(taken)
