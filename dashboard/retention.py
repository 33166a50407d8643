"""What logs Runboard keeps, and for how long: the webhook delivery log, the channels'
sent notifications and the Slack interactions handled grow with every delivery,
notification and click, so rows older than RUNBOARD_LOG_RETENTION_DAYS are deleted by
the beat (hourly) or `manage.py prune_logs`.

Never deleted: work still to do (an accepted delivery not yet read, a notification not
yet sent), and anything a replay check still needs (a delivery inside
RUNBOARD_WEBHOOK_REPLAY_WINDOW). The audit (ActionRecord) is append-only and is not
touched here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from dashboard.channels import Delivery, SlackInteraction
from dashboard.models import UNREAD_DELIVERY, Connection, WebhookDelivery


def prune(days: float | None = None, now: datetime | None = None) -> dict[str, int]:
    """Delete log rows older than `days` (default RUNBOARD_LOG_RETENTION_DAYS); return how
    many of each kind."""
    now = now or timezone.now()
    days = settings.RUNBOARD_LOG_RETENTION_DAYS if days is None else days
    keep = max(timedelta(days=days),
               timedelta(seconds=settings.RUNBOARD_WEBHOOK_REPLAY_WINDOW))
    before = now - keep
    webhooks = 0
    for connection_id in Connection.objects.values_list("pk", flat=True):
        # Per connection: the (connection, -received_at) index finds the old ones.
        webhooks += (WebhookDelivery.objects
                     .filter(connection_id=connection_id, received_at__lt=before)
                     .exclude(UNREAD_DELIVERY).delete()[0])
    notifications = Delivery.objects.filter(
        created_at__lt=before, state__in=[Delivery.State.SENT, Delivery.State.FAILED],
    ).delete()[0]
    slack = SlackInteraction.objects.filter(created_at__lt=before).delete()[0]
    return {"webhook deliveries": webhooks, "notifications": notifications,
            "slack interactions": slack}
