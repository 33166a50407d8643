import logging
import random

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db.models import Q
from django.utils import timezone

from dashboard import sync
from dashboard.models import Connection
from providers.base import ProviderError, RateLimited, Unavailable

logger = logging.getLogger(__name__)


@shared_task(name="dashboard.tasks.sync_all")
def sync_all() -> int:
    """Queue a sync for every enabled connection that is not backing off."""
    due = Connection.objects.filter(enabled=True).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now())
    )
    ids = list(due.values_list("pk", flat=True))
    for connection_id in ids:
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
    return {"connection": connection_id, "skipped": result.skipped,
            "runs_written": result.runs_written}
