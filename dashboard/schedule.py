"""The polling scheduler: each connection is polled as often as its state deserves and
its provider's rate budget allows, instead of at one fixed interval. It is the ONE place
that spaces a connection's requests: sync passes and webhook reads alike.

- Budget: a provider declares its documented allowance (`Provider.rate_budget`, e.g.
  Northflank 1000/hour; Buddy the X-Rate-Limit-Limit it sends; a conservative default
  where nothing is documented); an operator who knows the token's limit sets it on the
  connection instead (`Connection.requests_per_hour`). Runboard spends at most
  RUNBOARD_BUDGET_SHARE of it (default half, the rest is for users' actions and other
  tools on the same token).
  Where the provider says how much of its window is left (which every client of the
  token spends), the share applies to what is left, spread until the reset.
- The budget is kept as clocks (token buckets in GCRA form): every request spent moves
  a clock on by its `seconds_per_request`. Without webhooks there is one,
  `Connection.budget_at`, at the whole share. With webhooks on (enabled, a secret set)
  the share is split: passes get RUNBOARD_WEBHOOK_PASS_SHARE of it on `budget_at`, and
  webhook reads the rest on a clock of their own, `webhook_budget_at`, which no pass
  moves: a read never waits behind the passes' debt (a first pass's, a long pass's).
  Reads may run ahead of their clock by RUNBOARD_WEBHOOK_BURST requests. Beyond their
  part they may also borrow from the passes' clock, up to one pass's cost plus the
  burst ahead of it (`ahead_allowance`), pushing the next pass back: a user waits for a
  read, not for a reconciling pass. Not for ever: with webhooks on, a pass is put off
  to `pass_due_by` at most, one interval after it was due, and reads borrow beyond it
  only what leaves room for that pass within `ahead_allowance` (a steady stream of
  reads once kept passes off for good, and only passes see a run start waiting for
  approval). Whatever runs ahead of a clock is taken out of the rate that clock runs
  at, so in any window of the provider's, passes and reads together spend at most the
  share.
- A connection's first pass (a full read) is a one-time cost: up to
  RUNBOARD_FIRST_PASS_ALLOWANCE (a quarter) of the provider's window it is not charged to
  the passes' clock, so passes (all there is without webhooks) resume soon after a
  connection is added; the hour it falls in may see that much beyond the share, once.
  What it costs beyond that the passes pay back on their clock; reads never wait for it.
- Within the budget, the wanted interval:
  a run waiting for approval: RUNBOARD_POLL_MIN, webhooks or not — no platform sends a
  webhook when a run starts or stops waiting;
  healthy webhooks: live runs or a watched page, every RUNBOARD_WEBHOOK_LIVE_POLL (their
  changes are announced; the poll catches a run starting to wait); nothing live, only
  reconciled, every RUNBOARD_WEBHOOK_RECONCILE; passes, waiting runs' included, spend
  their part of the share (above);
  no healthy webhooks: live runs or a watched page, RUNBOARD_POLL_MIN; otherwise
  RUNBOARD_POLL_IDLE, doubling with every quiet pass up to RUNBOARD_POLL_MAX.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import Case, DateTimeField, ExpressionWrapper, F, Q, Value, When
from django.db.models.functions import Coalesce, Greatest, Least
from django.utils import timezone

from dashboard.models import Connection
from providers.base import RateBudget, RateLimitInfo, Status

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


def webhooks_on(connection: Connection) -> bool:
    """Deliveries are accepted: the share is split between passes and webhook reads."""
    return bool(connection.webhooks_enabled and connection.webhook_secret_hash)


def budget_part(connection: Connection, reads: bool) -> float:
    """The part of Runboard's share a clock runs at: passes' or webhook reads'."""
    if not webhooks_on(connection):
        return 0.0 if reads else 1.0
    passes = min(1.0, max(0.0, settings.RUNBOARD_WEBHOOK_PASS_SHARE))
    return 1.0 - passes if reads else passes


def _per_request(connection: Connection, now: datetime, share: float, part: float,
                 allowance: float) -> float:
    budget = connection.rate_budget()
    # What may be spent ahead of the clock comes out of the rate it runs at, so that no
    # window of the provider's ever sees more than the part, bursts included.
    seconds = budget.window / max(1e-9, part * share * budget.requests - allowance)
    reset_at, remaining = connection.rate_limit_reset_at, connection.rate_limit_remaining
    if remaining is not None and reset_at is not None and reset_at > now:
        # Other clients of the same token spend this window too: our share of what is
        # left must last until the reset.
        left = (reset_at - now).total_seconds()
        seconds = max(seconds, left / max(1e-9, part * share * max(1, remaining)))
    return seconds


def seconds_per_request(connection: Connection, now: datetime | None = None,
                        share: float | None = None) -> float:
    """The passes' budget as time: one request per this many seconds, on average (the
    whole share without webhooks; the passes' part of it with)."""
    now = now or timezone.now()
    share = settings.RUNBOARD_BUDGET_SHARE if share is None else share
    return _per_request(connection, now, share, budget_part(connection, reads=False),
                        ahead_allowance(connection, share))


def read_seconds_per_request(connection: Connection, now: datetime | None = None) -> float:
    """The webhook reads' own clock (webhooks on only): their part, less their burst."""
    now = now or timezone.now()
    return _per_request(connection, now, settings.RUNBOARD_BUDGET_SHARE,
                        budget_part(connection, reads=True), read_burst(connection))


def read_burst(connection: Connection) -> float:
    """Reads that may go at once on their own clock: RUNBOARD_WEBHOOK_BURST, at most a
    quarter of their part of a window."""
    budget = connection.rate_budget()
    return min(settings.RUNBOARD_WEBHOOK_BURST, budget_part(connection, reads=True)
               * settings.RUNBOARD_BUDGET_SHARE * budget.requests / 4)


def ahead_allowance(connection: Connection, share: float | None = None) -> float:
    """Requests webhook reads may spend ahead of the passes' clock: a pass's cost (so a
    pass does not hold reads back) and RUNBOARD_WEBHOOK_BURST; at most a quarter of the
    passes' part of a window."""
    share = settings.RUNBOARD_BUDGET_SHARE if share is None else share
    budget = connection.rate_budget()
    return min(settings.RUNBOARD_WEBHOOK_BURST
               + (connection.last_pass_requests or FIRST_PASS_COST),
               budget_part(connection, reads=False) * share * budget.requests / 4)


def plan(connection: Connection, *, live: bool, watched: bool, waiting: bool = False,
         share: float | None = None, now: datetime | None = None) -> Plan:
    cost = connection.last_pass_requests or FIRST_PASS_COST
    # With webhooks on, the passes' clock runs at their part of the share only.
    floor = max(1, cost) * seconds_per_request(connection, now, share)
    if waiting:
        wanted, reason = settings.RUNBOARD_POLL_MIN, "waiting for approval"
    elif connection.webhooks_healthy:
        if live or watched:
            wanted = settings.RUNBOARD_WEBHOOK_LIVE_POLL
            reason = "webhooks healthy: " + ("live runs" if live else "watched")
        else:
            wanted, reason = settings.RUNBOARD_WEBHOOK_RECONCILE, "webhooks healthy: reconciling"
    elif live or watched:
        wanted, reason = settings.RUNBOARD_POLL_MIN, "live runs" if live else "watched"
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
    charged = requests
    if connection.last_pass_requests is None:
        # The connection's first pass, a full read of the account, is a one-time cost:
        # up to RUNBOARD_FIRST_PASS_ALLOWANCE of the provider's window it is spent beside
        # the share, once, instead of holding the next passes back until it is repaid.
        budget = connection.rate_budget(rate_limit_seen)
        charged -= min(requests, int(settings.RUNBOARD_FIRST_PASS_ALLOWANCE * budget.requests))
    connection.last_pass_requests = requests or connection.last_pass_requests
    connection.rate_limit_seen = rate_limit_seen or connection.rate_limit_seen
    connection.quiet_passes = 0 if runs_written else connection.quiet_passes + 1
    live = connection.runs.active().exists()
    waiting = live and connection.runs.filter(status=Status.WAITING).exists()
    watched = bool(connection.watched_until and connection.watched_until > now)
    result = plan(connection, live=live, watched=watched, waiting=waiting, now=now)
    Connection.objects.filter(pk=connection_id).update(
        last_pass_requests=connection.last_pass_requests,
        rate_limit_seen=connection.rate_limit_seen, quiet_passes=connection.quiet_passes)
    budget_at = charge(connection_id, charged, now)
    # Not before what the pass (and any webhook read since) spent is paid back; with
    # healthy webhooks, not before passes' part of the budget allows either.
    spacing = result.interval if connection.webhooks_healthy else result.wanted
    next_poll = max(now + timedelta(seconds=spacing), budget_at)
    held = next_poll > now + timedelta(seconds=result.wanted)
    result.interval = (next_poll - now).total_seconds()
    Connection.objects.filter(pk=connection_id).update(
        next_poll_at=next_poll, pass_due_by=next_poll + (next_poll - now),
        poll_reason=result.reason + ("; held back by the rate budget" if held else ""))
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
        next_poll_at=now + timedelta(seconds=settings.RUNBOARD_SYNC_LEASE),
        poll_reason="a pass is queued or under way")


def watching(connection_ids, now: datetime | None = None) -> None:
    """A page is open on these connections' runs: keep them watched, and bring a far-off
    next pass forward, never sooner than the budget allows after the last one.
    Written at most once per connection every third of RUNBOARD_WATCH_SECONDS."""
    now = now or timezone.now()
    window = settings.RUNBOARD_WATCH_SECONDS
    fresh = [pk for pk in connection_ids
             if cache.add(f"runboard:watched:{pk}", 1, max(1, window / 3))]
    if fresh:
        _watch(Connection.objects.filter(pk__in=fresh), now)


def _watch(connections, now: datetime) -> None:
    """One UPDATE for them all: the next pass soon, but never before the budget's
    clock allows. A connection watched less than a third of the window ago is left
    alone: the cache's throttle forgotten (a restart, a cleared cache) costs a read,
    not a write and its commit on every page view."""
    window = settings.RUNBOARD_WATCH_SECONDS
    # With healthy webhooks the page is kept fresh by them: no pass sooner than the live
    # poll's (the budget is theirs).
    healthy = Q(webhooks_enabled=True, last_webhook_accepted=True) & ~Q(webhook_secret_hash="")
    soon = Case(
        When(healthy, then=Value(now + timedelta(seconds=settings.RUNBOARD_WEBHOOK_LIVE_POLL))),
        default=Value(now + timedelta(seconds=settings.RUNBOARD_POLL_MIN)),
        output_field=DateTimeField())
    allowed = Greatest(Coalesce(F("budget_at"), soon), soon)
    connections.filter(Q(watched_until__isnull=True)
                       | Q(watched_until__lt=now + timedelta(seconds=window * 2 / 3))).update(
        watched_until=now + timedelta(seconds=window),
        next_poll_at=Least(F("next_poll_at"), allowed),
        poll_reason=_moved(Q(next_poll_at__gt=allowed), "a page is open on its runs"))


def watching_read(connections, now: datetime | None = None, every: bool = False) -> None:
    """`watching` for connections already read (with watched_until): nothing to write,
    and no query, for those watched less than a third of the window ago. `every`: they
    are all the enabled ones (`watching_all` need not look again)."""
    now = now or timezone.now()
    window = settings.RUNBOARD_WATCH_SECONDS
    if every:
        cache.add("runboard:watched:all", 1, max(1, window / 3))
    fresh_until = now + timedelta(seconds=window * 2 / 3)
    due = [c.pk for c in connections if not c.watched_until or c.watched_until < fresh_until]
    if due:
        _watch(Connection.objects.filter(pk__in=due), now)


def watching_all(now: datetime | None = None) -> None:
    """A page shows every connection's runs (the run list): all of them are watched."""
    if cache.add("runboard:watched:all", 1, max(1, settings.RUNBOARD_WATCH_SECONDS / 3)):
        _watch(Connection.objects.filter(enabled=True), now or timezone.now())


def record_rate_limit(connection_id: int, info: RateLimitInfo) -> None:
    """Keep what the provider said is left of its window, for the connection's next client."""
    if info.remaining is None or info.reset_at is None:
        return
    Connection.objects.filter(pk=connection_id).update(
        rate_limit_remaining=info.remaining,
        rate_limit_reset_at=datetime.fromtimestamp(info.reset_at, tz=UTC))


def _advance(start, seconds: float, field: str = "budget_at"):
    """A clock moved on by `seconds` from `start` or itself, whichever is later."""
    return ExpressionWrapper(
        Greatest(Coalesce(F(field), Value(start)), Value(start))
        + Value(timedelta(seconds=seconds)), output_field=DateTimeField())


def charge(connection_id: int, requests: int, now: datetime | None = None) -> datetime:
    """Spend `requests` (already sent by a pass) from the passes' clock; its new value."""
    now = now or timezone.now()
    connection = Connection.objects.defer("token", "cursor").get(pk=connection_id)
    if requests > 0:
        seconds = requests * seconds_per_request(connection, now)
        Connection.objects.filter(pk=connection_id).update(budget_at=_advance(now, seconds))
        connection.refresh_from_db(fields=["budget_at"])
    return max(now, connection.budget_at or now)


def charge_reads(connection_id: int, requests: int, now: datetime | None = None) -> None:
    """Spend `requests` webhook reads sent beyond what `take` granted (a read that cost
    more than its provider's `webhook_read_cost`): from the reads' own clock, or the
    passes' one when webhooks are off."""
    now = now or timezone.now()
    if requests <= 0:
        return
    connection = Connection.objects.defer("token", "cursor").get(pk=connection_id)
    if not webhooks_on(connection):
        charge(connection_id, requests, now)
        return
    seconds = requests * read_seconds_per_request(connection, now)
    Connection.objects.filter(pk=connection_id).update(
        webhook_budget_at=_advance(now, seconds, "webhook_budget_at"))


def _grantable(clock: datetime | None, per: float, allowance: float, wanted: int,
               now: datetime) -> tuple[int, float]:
    """(How many of `wanted` a clock running `per` s a request grants now, allowing
    `allowance` requests ahead of it; seconds until it grants one when it grants none.)"""
    ahead = max(0.0, ((clock or now) - now).total_seconds())
    # (a millisecond's slack: the clock is stored to the microsecond)
    granted = max(0, min(wanted, int((allowance * per - ahead + 0.001) / per)))
    return granted, (0.0 if granted else ahead + per - allowance * per)


def take(connection_id: int, wanted: int, now: datetime | None = None) -> tuple[int, float]:
    """Requests for webhook reads: (how many of `wanted` the budget grants now, seconds
    until the next one would be granted when none is). With webhooks on, from the
    reads' own clock first (which the passes' debt never holds back), then borrowed from
    the passes' clock as far as `ahead_allowance` runs ahead of it, pushing the next
    pass back until `pass_due_by`."""
    now = now or timezone.now()
    for _ in range(5):  # another worker moved a clock in between: look again
        connection = Connection.objects.defer("token", "cursor").get(pk=connection_id)
        own, own_wait, per_read, due_by = 0, float("inf"), 0.0, None
        if webhooks_on(connection):
            per_read = read_seconds_per_request(connection, now)
            own, own_wait = _grantable(connection.webhook_budget_at, per_read,
                                       read_burst(connection), wanted, now)
            due_by = connection.pass_due_by
        per = seconds_per_request(connection, now)
        allowance = ahead_allowance(connection)
        if due_by:
            # The pass due by then goes on top of what was borrowed ahead of it: the two
            # together stay within `ahead_allowance`.
            cost = connection.last_pass_requests or FIRST_PASS_COST
            allowance = min(allowance,
                            (due_by - now).total_seconds() / per + allowance - cost)
        borrowed, borrow_wait = _grantable(connection.budget_at, per, allowance,
                                           wanted - own, now)
        if own + borrowed <= 0:
            return 0, min(own_wait, borrow_wait)
        # Compare-and-set on both clocks as read.
        moved = Connection.objects.filter(pk=connection_id)
        changes = {}
        for field, requests, seconds in (("webhook_budget_at", own, per_read),
                                         ("budget_at", borrowed, per)):
            if requests:
                held = getattr(connection, field)
                moved = moved.filter(**{field: held} if held else {f"{field}__isnull": True})
                changes[field] = max(now, held or now) + timedelta(seconds=requests * seconds)
        if moved.update(**changes):
            if borrowed:
                # The next pass waits for what the reads borrowed, until it is due by.
                # (Never sooner than planned: a pass under way is claimed until later.)
                until = Least(F("budget_at"), Value(due_by)) if due_by else F("budget_at")
                Connection.objects.filter(pk=connection_id, next_poll_at__isnull=False).update(
                    next_poll_at=Greatest(F("next_poll_at"), until),
                    poll_reason=_moved(Q(next_poll_at__lt=until),
                                       "webhook reads borrowed from its budget"))
            return own + borrowed, 0.0
    return 0, 1.0


def poll_soon(connection_id: int, now: datetime | None = None, *, reason: str) -> None:
    """Poll as soon as the budget allows (webhooks turned off, a delivery naming no run)."""
    now = now or timezone.now()
    allowed = Greatest(Coalesce(F("budget_at"), Value(now)), Value(now))
    Connection.objects.filter(pk=connection_id).update(
        next_poll_at=Least(Coalesce(F("next_poll_at"), allowed), allowed),
        poll_reason=_moved(Q(next_poll_at__isnull=True) | Q(next_poll_at__gt=allowed), reason))


def _moved(moving: Q, reason: str) -> Case:
    """`reason` for the next pass where `moving` (the update moves it), else the one held."""
    return Case(When(moving, then=Value(reason)), default=F("poll_reason"))
