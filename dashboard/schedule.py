"""The polling scheduler: each connection is polled as often as its state deserves and
its provider's rate budget allows, instead of at one fixed interval.

- Budget: a provider declares its documented allowance (`Provider.rate_budget`, e.g.
  Northflank 1000/hour; Buddy the X-Rate-Limit-Limit it sends; a conservative default
  where nothing is documented). Runboard spends at most RUNBOARD_BUDGET_SHARE of it
  (default half, the rest is for users' actions and other tools on the same token):
  a pass that cost N requests is followed by at least N / (share * allowance per second).
- Within the budget, the wanted interval:
  live runs (queued, running, waiting for approval) or a page watching the connection:
  RUNBOARD_POLL_MIN — no platform sends a webhook when a run starts waiting;
  healthy webhooks and nothing live: only reconciled, every RUNBOARD_WEBHOOK_RECONCILE;
  otherwise RUNBOARD_POLL_IDLE, doubling with every quiet pass up to RUNBOARD_POLL_MAX.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import F, Q
from django.db.models.functions import Least
from django.utils import timezone

from dashboard.models import Connection
from providers.base import RateBudget, RateLimitInfo

# A pass whose cost is not known yet (the connection's first) is planned as this many requests.
FIRST_PASS_COST = 10


@dataclass
class Plan:
    interval: float  # seconds until the next pass
    floor: float  # the budget's shortest interval for a pass of this cost
    wanted: float  # what the connection's state asks for
    reason: str


def budget_floor(budget: RateBudget, cost: int, share: float) -> float:
    """Seconds between passes of `cost` requests that spend `share` of `budget`."""
    allowed_per_second = share * budget.requests / budget.window
    return max(1, cost) / allowed_per_second


def plan(connection: Connection, *, live: bool, watched: bool,
         share: float | None = None) -> Plan:
    share = settings.RUNBOARD_BUDGET_SHARE if share is None else share
    budget = connection.provider_class.budget_for(connection.rate_limit_seen)
    cost = connection.last_pass_requests or FIRST_PASS_COST
    floor = budget_floor(budget, cost, share)
    if live or watched:
        wanted, reason = settings.RUNBOARD_POLL_MIN, "live runs" if live else "watched"
    elif connection.webhooks_healthy:
        wanted, reason = settings.RUNBOARD_WEBHOOK_RECONCILE, "webhooks healthy: reconciling"
    else:
        wanted = min(settings.RUNBOARD_POLL_MAX,
                     settings.RUNBOARD_POLL_IDLE * 2 ** min(connection.quiet_passes, 16))
        reason = "quiet" if connection.quiet_passes else "idle"
    return Plan(max(floor, wanted), floor, wanted, reason)


def after_pass(connection_id: int, *, requests: int, runs_written: int,
               rate_limit_seen: int | None, now: datetime | None = None,
               rate_limit: RateLimitInfo | None = None) -> Plan:
    """Record what a pass cost and when the next one is due."""
    now = now or timezone.now()
    if rate_limit:
        record_rate_limit(connection_id, rate_limit)
    connection = Connection.objects.defer("token", "cursor").get(pk=connection_id)
    connection.last_pass_requests = requests or connection.last_pass_requests
    connection.rate_limit_seen = rate_limit_seen or connection.rate_limit_seen
    connection.quiet_passes = 0 if runs_written else connection.quiet_passes + 1
    live = connection.runs.active().exists()
    watched = bool(connection.watched_until and connection.watched_until > now)
    result = plan(connection, live=live, watched=watched)
    Connection.objects.filter(pk=connection_id).update(
        last_pass_requests=connection.last_pass_requests,
        rate_limit_seen=connection.rate_limit_seen, quiet_passes=connection.quiet_passes,
        next_poll_at=now + timedelta(seconds=result.interval))
    return result


def due(now: datetime | None = None):
    """Enabled connections whose next pass is due (and not backing off after an error)."""
    now = now or timezone.now()
    return Connection.objects.filter(enabled=True).filter(
        Q(next_poll_at__isnull=True) | Q(next_poll_at__lte=now),
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
    )


def claim(connection_id: int, now: datetime | None = None) -> None:
    """A pass was queued: not due again until it reports (or this long, if it is lost)."""
    now = now or timezone.now()
    Connection.objects.filter(pk=connection_id).update(
        next_poll_at=now + timedelta(seconds=settings.RUNBOARD_SYNC_LEASE))


def watching(connection_ids, now: datetime | None = None) -> None:
    """A page is open on these connections' runs: keep them watched, and bring a far-off
    next pass forward, never sooner than the budget allows after the last one.
    Written at most once per connection every third of RUNBOARD_WATCH_SECONDS."""
    now = now or timezone.now()
    window = settings.RUNBOARD_WATCH_SECONDS
    fresh = [pk for pk in connection_ids
             if cache.add(f"runboard:watched:{pk}", 1, max(1, window / 3))]
    for connection in Connection.objects.filter(pk__in=fresh).defer("token", "cursor"):
        soon = now + timedelta(seconds=settings.RUNBOARD_POLL_MIN)
        if connection.last_attempt_at:
            floor = plan(connection, live=False, watched=True).floor
            soon = max(soon, connection.last_attempt_at + timedelta(seconds=floor))
        Connection.objects.filter(pk=connection.pk).update(
            watched_until=now + timedelta(seconds=window),
            next_poll_at=Least(F("next_poll_at"), soon))


def watching_all(now: datetime | None = None) -> None:
    """A page shows every connection's runs (the run list): all of them are watched."""
    if cache.add("runboard:watched:all", 1, max(1, settings.RUNBOARD_WATCH_SECONDS / 3)):
        watching(list(Connection.objects.filter(enabled=True).values_list("pk", flat=True)),
                 now)


def record_rate_limit(connection_id: int, info: RateLimitInfo) -> None:
    """Keep what the provider said is left of its window, for the connection's next client."""
    if info.remaining is None or info.reset_at is None:
        return
    Connection.objects.filter(pk=connection_id).update(
        rate_limit_remaining=info.remaining,
        rate_limit_reset_at=datetime.fromtimestamp(info.reset_at, tz=UTC))


def spend(connection_id: int, requests: int) -> None:
    """Requests spent outside a pass (webhook reads) come out of the same budget: the
    next pass moves back by the time the share allows for them."""
    if requests <= 0:
        return
    connection = Connection.objects.defer("token", "cursor").get(pk=connection_id)
    budget = connection.provider_class.budget_for(connection.rate_limit_seen)
    seconds = requests / (settings.RUNBOARD_BUDGET_SHARE * budget.requests / budget.window)
    Connection.objects.filter(pk=connection_id, next_poll_at__isnull=False).update(
        next_poll_at=F("next_poll_at") + timedelta(seconds=seconds))
