import logging
import random

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from dashboard import metrics, schedule, sync
from providers.base import ProviderError, RateLimited, Unavailable

logger = logging.getLogger(__name__)


@shared_task(name="dashboard.tasks.sync_all")
def sync_all() -> int:
    """Queue a sync for every connection the scheduler says is due (dashboard/schedule.py)."""
    now = timezone.now()
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
    return {"connection": connection_id, "skipped": result.skipped,
            "runs_written": result.runs_written}


# --- webhooks (appended) ---------------------------------------------------------------


@shared_task(
    bind=True, name="dashboard.tasks.process_webhook", acks_late=True,
    soft_time_limit=60, time_limit=90, max_retries=5,
)
def process_webhook(self, delivery_id: int) -> dict:
    """Re-read from the provider what an accepted delivery named, and write it."""
    from dashboard.models import WebhookDelivery
    from providers.base import WebhookEvent

    delivery = WebhookDelivery.objects.select_related("connection").get(pk=delivery_id)
    connection = delivery.connection
    written = 0
    try:
        if delivery.hints:
            client = connection.client()
            try:
                runs = client.runs_from_webhook(
                    WebhookEvent(delivery.event, hints=delivery.hints))
            finally:
                client.close()
                schedule.record_rate_limit(connection.pk, client.rate_limit)
                schedule.spend(connection.pk, client.requests_made)
                metrics.count_requests(connection.pk, client)
            written = sync.upsert_runs(connection, runs)
        else:  # the delivery names no run: read the run list (an incremental pass)
            result = sync.sync_connection(connection.pk)
            if result.skipped:
                # A pass is under way; it may have read the list before this change.
                raise self.retry(countdown=1)
            written = result.runs_written
            schedule.after_pass(connection.pk, requests=result.requests,
                                runs_written=written, rate_limit_seen=result.rate_limit_seen,
                                rate_limit=result.rate_limit)
    except RateLimited as exc:
        raise self.retry(exc=exc, countdown=exc.retry_after + random.uniform(0, 2)) from exc
    except Unavailable as exc:
        raise self.retry(exc=exc, countdown=min(60, 2 ** self.request.retries)) from exc
    except ProviderError as exc:
        # E.g. the run is not this connection's, or gone: nothing to write; the log says.
        logger.warning("webhook delivery %s: %s", delivery_id, exc.message)
        WebhookDelivery.objects.filter(pk=delivery_id).update(
            processed_at=timezone.now(), runs_written=0, reason=exc.message[:300])
        return {"delivery": delivery_id, "failed": True}
    WebhookDelivery.objects.filter(pk=delivery_id).update(
        processed_at=timezone.now(), runs_written=written)
    return {"delivery": delivery_id, "runs_written": written}
