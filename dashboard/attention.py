"""The attention strip on every page: what needs a release manager now.

Counts are kept in the cache per data version (like the run list), so a page pays
for them once per change, not once per view. The 24-hour window and staleness also
move with the clock alone: a five-minute bucket joins the version for them.
"""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.functional import SimpleLazyObject

from dashboard.models import Connection, Run, data_version
from providers.base import Status

CLOCK_BUCKET = 300  # seconds: how stale "in the last 24 h" may get while nothing changes


def version() -> str:
    return f"{data_version()}-{int(time.time() // CLOCK_BUCKET)}"


def counts(current: str | None = None) -> dict:
    """{waiting, failed, stale, total} for the data version `current`."""
    current = current or version()
    key = f"runboard:attention:{current}"
    found = cache.get(key)
    if found is None:
        since = timezone.now() - timedelta(days=1)
        connections = Connection.objects.filter(enabled=True).only(
            "enabled", "last_success_at", "last_error", "last_error_at")
        found = {
            "waiting": Run.objects.filter(status=Status.WAITING).count(),
            "failed": Run.objects.filter(status=Status.FAILED, created_at__gte=since).count(),
            "stale": sum(1 for c in connections if c.is_stale),
        }
        found["total"] = sum(found.values())
        cache.set(key, found, settings.RUNBOARD_FRAGMENT_CACHE_SECONDS)
    return {**found, "version": current}


def context(request):
    """Template context: `attention`, computed only if a template reads it."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {"attention": SimpleLazyObject(counts)}


@login_required
def strip(request):
    """The strip alone, for its live poll: 204 while nothing changed."""
    current = version()
    if request.htmx and request.GET.get("v") == current:
        return HttpResponse(status=204)
    return render(request, "partials/attention.html", {"attention": counts(current)})
