import logging
import random

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from dashboard import schedule, sync, webhooks
from providers.base import ProviderError, RateLimited, Unavailable

logger = logging.getLogger(__name__)


@shared_task(name="dashboard.tasks.prune_logs")
def prune_logs() -> dict[str, int]:
    """Delete log rows past their retention (dashboard/retention.py)."""
    from dashboard import retention

    return retention.prune()


@shared_task(name="dashboard.tasks.sync_all")
def sync_all() -> int:
    """Queue a sync for every connection the scheduler says is due (dashboard/schedule.py)."""
    now = timezone.now()
    # Derived rows a dead pass left undone (sync.derive): none, in one indexed query.
    sync.derive_leftovers()
    ids = list(schedule.due(now).values_list("pk", flat=True))
    for connection_id in ids:
        schedule.claim(connection_id, now)
        sync_connection.delay(connection_id)
    return len(ids)


@shared_task(
    bind=True, name="dashboard.tasks.sync_connection", acks_late=True,
    soft_time_limit=240, time_limit=300, max_retries=4,
)
def sync_connection(self, connection_id: int) -> dict:
    started = timezone.now()
    try:
        result = sync.sync_connection(connection_id)
    except RateLimited as exc:
        # Wait as long as the provider asks (plus jitter so workers don't stampede).
        raise self.retry(exc=exc, countdown=exc.retry_after + random.uniform(0, 2)) from exc
    except Unavailable as exc:
        backoff = min(300, settings.RUNBOARD_RETRY_BACKOFF * 2 ** self.request.retries)
        raise self.retry(exc=exc, countdown=backoff * random.uniform(0.5, 1.5)) from exc
    except ProviderError:
        # Auth or payload problems don't fix themselves; the error is on the
        # connection for users to see and beat tries again next round.
        return {"connection": connection_id, "failed": True}
    except DatabaseError as exc:
        # The database went away mid-pass: drop the broken connection and try again;
        # the pass is idempotent and its cursor did not move.
        close_old_connections()
        raise self.retry(exc=exc, countdown=random.uniform(1, 5)) from exc
    if not result.skipped:
        schedule.after_pass(connection_id, requests=result.requests,
                            runs_written=result.runs_written,
                            rate_limit_seen=result.rate_limit_seen,
                            rate_limit=result.rate_limit)
        webhooks.read_by_pass(connection_id, started)
    return {"connection": connection_id, "skipped": result.skipped,
            "runs_written": result.runs_written}


# --- webhooks (appended) ---------------------------------------------------------------


@shared_task(name="dashboard.tasks.flush_webhooks", acks_late=True, soft_time_limit=60,
             time_limit=90)
def flush_webhooks(connection_id: int) -> dict:
    """Read what a connection's pending deliveries name: coalesced, within its budget."""
    return webhooks.flush(connection_id)


@shared_task(name="dashboard.tasks.process_webhook")
def process_webhook(delivery_id: int) -> dict:
    """Deliveries queued before flushes existed: flush their connection."""
    from dashboard.models import WebhookDelivery

    connection_id = WebhookDelivery.objects.values_list(
        "connection_id", flat=True).get(pk=delivery_id)
    return webhooks.flush(connection_id)
