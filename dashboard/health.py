"""Probes for load balancers and orchestrators: no login, nothing but up or down.

/healthz: the process answers (it touches nothing else, so a database outage does not
get every web process restarted). /readyz: the database and the broker answer too.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)

BROKER_TIMEOUT = 2.0  # seconds: a probe must answer before the balancer gives up


@never_cache
@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


def _database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        connection.close()  # the next probe reconnects from scratch
        return str(exc).strip() or exc.__class__.__name__
    return None


def _broker() -> str | None:
    from dashboard.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT)
    except Exception as exc:  # kombu raises the transport's own errors
        return str(exc).strip() or exc.__class__.__name__
    return None


@never_cache
@require_GET
def readyz(request):
    failures = {name: error for name, check in (("database", _database), ("broker", _broker))
                if (error := check())}
    if failures:
        logger.warning("not ready: %s", failures)
        return JsonResponse({"status": "unavailable", "failing": sorted(failures)}, status=503)
    return JsonResponse({"status": "ok"})
