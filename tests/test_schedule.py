"""The polling scheduler: budget arithmetic, what speeds a connection up or slows it down,
and falling back to polling when webhooks are turned off."""

import html
import itertools
import json
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from dashboard import schedule, sync, tasks
from dashboard.models import Connection, Run
from providers.base import CONSERVATIVE_BUDGET, RateBudget, Unavailable
from providers.buddy import BuddyProvider
from providers.northflank import NorthflankProvider
from providers.qovery import QoveryProvider
from providers.simulators.buddy import BUILD_PLAN
from providers.workflows import WorkflowsProvider
from tests.celery_worker import celery_worker, wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _intervals(settings):
    settings.RUNBOARD_BUDGET_SHARE = 0.5
    settings.RUNBOARD_POLL_MIN = 2.0
    settings.RUNBOARD_POLL_IDLE = 15.0
    settings.RUNBOARD_POLL_MAX = 600.0
    settings.RUNBOARD_WEBHOOK_RECONCILE = 300.0
    settings.RUNBOARD_WEBHOOK_LIVE_POLL = 30.0
    settings.RUNBOARD_WEBHOOK_PASS_SHARE = 0.5


def connection(provider="northflank", **fields):
    return Connection(provider=provider, name=provider, base_url="http://x", token="t",
                      **fields)


def test_each_provider_declares_its_documented_budget_or_the_conservative_default():
    assert NorthflankProvider.budget_for() == RateBudget(1000, 3600.0)
    assert BuddyProvider.budget_for(seen_limit=2000) == RateBudget(2000, 3600.0)
    assert BuddyProvider.budget_for() == CONSERVATIVE_BUDGET
    assert QoveryProvider.budget_for() == WorkflowsProvider.budget_for() == CONSERVATIVE_BUDGET
    assert not CONSERVATIVE_BUDGET.documented


def test_a_rate_limit_set_on_the_connection_is_the_budget_planned_with():
    """Qovery documents no limit: the conservative default held a busy account's reads
    back (bench/freshness.py), with no way to say the token is allowed more."""
    qovery = connection("qovery")
    default = schedule.seconds_per_request(qovery)
    assert qovery.rate_budget() == CONSERVATIVE_BUDGET
    told = connection("qovery", requests_per_hour=6000)
    assert told.rate_budget() == RateBudget(6000, 3600.0)
    assert schedule.seconds_per_request(told) < default / 9
    # Over what a provider's headers say too (Buddy's X-Rate-Limit-Limit).
    assert connection("buddy", requests_per_hour=300, rate_limit_seen=2000).rate_budget() == (
        RateBudget(300, 3600.0))
    assert connection("buddy", rate_limit_seen=2000).rate_budget() == RateBudget(2000, 3600.0)


def test_the_connections_page_says_which_budget_each_connection_plans_with(client, manager):
    Connection.objects.bulk_create([
        connection("northflank"), connection("qovery"),
        connection("buddy", requests_per_hour=2400)])
    client.force_login(manager)
    page = html.unescape(client.get("/connections/").content.decode())
    assert "1,000/h <span class=\"muted\">(the provider's; Runboard spends at most 50%)" in page
    assert ("600/h <span class=\"muted\">(Runboard's default: the provider documents none;"
            in page)
    assert "2,400/h <span class=\"muted\">(set on the connection;" in page


def test_the_admin_sets_a_connections_rate_limit_and_refuses_a_tiny_one(
        admin_client, buddy_connection):
    form = {"provider": "buddy", "name": "Buddy", "base_url": buddy_connection.base_url,
            "token": "", "scope": json.dumps(buddy_connection.scope), "enabled": "on"}
    url = f"/admin/dashboard/connection/{buddy_connection.pk}/change/"
    refused = admin_client.post(url, {**form, "requests_per_hour": "5"})
    assert refused.status_code == 200 and b"greater than or equal to 10" in refused.content
    assert admin_client.post(url, {**form, "requests_per_hour": "3000"}).status_code == 302
    assert Connection.objects.get(pk=buddy_connection.pk).requests_per_hour == 3000


def test_the_budget_floor_spends_exactly_the_share():
    # Northflank, 7 requests a pass, half of 1000/hour: one pass every 50.4 s.
    floor = schedule.budget_floor(RateBudget(1000, 3600.0), cost=7, share=0.5)
    assert floor == pytest.approx(50.4)
    assert 3600 / floor * 7 == pytest.approx(500)


def test_live_runs_are_polled_as_fast_as_the_budget_allows():
    # Half of 1000/hour, less what webhook reads may spend ahead (a pass and 5).
    cheap = schedule.plan(connection(last_pass_requests=1), live=True, watched=False)
    assert (cheap.interval, cheap.reason) == (pytest.approx(3600 / 494), "live runs")
    costly = schedule.plan(connection(last_pass_requests=31), live=True, watched=False)
    assert costly.interval == pytest.approx(31 * 3600 / 464)  # never over the share
    roomy = schedule.plan(connection("buddy", last_pass_requests=6, rate_limit_seen=100000),
                          live=True, watched=False)
    assert roomy.interval == 2.0  # RUNBOARD_POLL_MIN


def test_a_watched_page_speeds_its_connection_up():
    idle = schedule.plan(connection("buddy", last_pass_requests=1, quiet_passes=3),
                         live=False, watched=False)
    watched = schedule.plan(connection("buddy", last_pass_requests=1, quiet_passes=3),
                            live=False, watched=True)
    assert idle.interval == 120.0 and watched.interval == pytest.approx(3600 / 294)


def test_a_quiet_account_backs_off_up_to_the_maximum():
    intervals = [schedule.plan(connection("buddy", last_pass_requests=1, quiet_passes=n),
                               live=False, watched=False).interval for n in (0, 1, 2, 10)]
    assert intervals == [15.0, 30.0, 60.0, 600.0]


def test_healthy_webhooks_leave_only_reconciling(buddy_connection):
    buddy_connection.set_webhook_secret()
    Connection.objects.filter(pk=buddy_connection.pk).update(
        webhooks_enabled=True, last_webhook_accepted=True, last_pass_requests=1)
    buddy_connection.refresh_from_db()
    assert schedule.plan(buddy_connection, live=False, watched=False).interval == 300.0
    # Live runs' changes are announced: polled only to catch one starting to wait.
    live = schedule.plan(buddy_connection, live=True, watched=False)
    assert (live.interval, live.reason) == (30.0, "webhooks healthy: live runs")
    watched = schedule.plan(buddy_connection, live=False, watched=True)
    assert watched.interval == 30.0
    # No platform announces a run waiting for approval, nor what ends the wait: waiting
    # runs are polled as fast as passes may, on their half of the share (the rest is for
    # the reads webhooks ask for), less what reads may borrow ahead of it (1 + 5).
    waiting = schedule.plan(buddy_connection, live=True, watched=False, waiting=True)
    assert (waiting.interval, waiting.reason) == (pytest.approx(3600 / 144),
                                                  "waiting for approval")


def test_with_healthy_webhooks_only_a_waiting_run_keeps_passes_at_the_budget_floor(
        buddy_connection):
    buddy_connection.set_webhook_secret()
    Connection.objects.filter(pk=buddy_connection.pk).update(
        webhooks_enabled=True, last_webhook_accepted=True)
    run = Run.objects.create(connection=buddy_connection, external_id="p/1/1",
                             status="running", raw_status="INPROGRESS")
    now = timezone.now()
    running = schedule.after_pass(buddy_connection.pk, requests=1, runs_written=1,
                                  rate_limit_seen=None, now=now)
    assert (running.interval, running.reason) == (30.0, "webhooks healthy: live runs")
    Run.objects.filter(pk=run.pk).update(status="waiting", raw_status="WAITING_FOR_APPLY")
    Connection.objects.filter(pk=buddy_connection.pk).update(budget_at=None)
    waiting = schedule.after_pass(buddy_connection.pk, requests=1, runs_written=1,
                                  rate_limit_seen=None, now=now)
    assert waiting.reason == "waiting for approval"
    # Passes spend at most their half of the share (less what reads may borrow ahead of
    # their clock, 1 + 5); the reads' half is on a clock of its own.
    assert waiting.interval == pytest.approx(3600 / 144)
    conn = Connection.objects.get(pk=buddy_connection.pk)
    assert conn.budget_at == conn.next_poll_at == now + timedelta(seconds=3600 / 144)
    # Without webhooks, polling is all there is: passes may spend the whole share.
    Connection.objects.filter(pk=buddy_connection.pk).update(webhooks_enabled=False,
                                                             budget_at=None)
    polled = schedule.after_pass(buddy_connection.pk, requests=1, runs_written=1,
                                 rate_limit_seen=None, now=now)
    assert polled.interval == pytest.approx(3600 / 294)


def test_after_a_pass_the_next_is_planned_and_not_due_before(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=3600)  # finished: nothing live
    # Not the connection's first pass (a one-time cost, charged apart).
    Connection.objects.filter(pk=buddy_connection.pk).update(last_pass_requests=6)
    result = sync.sync_connection(buddy_connection.pk)
    now = timezone.now()
    planned = schedule.after_pass(buddy_connection.pk, requests=result.requests,
                                  runs_written=result.runs_written,
                                  rate_limit_seen=result.rate_limit_seen, now=now)
    conn = Connection.objects.get(pk=buddy_connection.pk)
    assert conn.rate_limit_seen == buddy_sim.rate_limit  # from X-Rate-Limit-Limit
    # Buddy's documented lists: projects and pipelines each to their empty page, the
    # executions, and the steps of the (new) run from its own read.
    assert conn.last_pass_requests == result.requests == 6
    # Idle wants 15 s, but 6 requests within half of 1000/hour (less 6 + 5 for webhook
    # reads ahead of the clock) allow one pass per 44.2 s.
    assert (planned.reason, planned.interval) == ("idle", pytest.approx(6 * 3600 / 489))
    assert conn.next_poll_at == now + timedelta(seconds=planned.interval)
    assert not schedule.due(now + timedelta(seconds=44)).exists()
    assert schedule.due(now + timedelta(seconds=45)).exists()


def test_the_connections_page_says_when_the_next_pass_comes_and_why(
        client, manager, buddy_sim, buddy_connection):
    """"Why is this not fresher?": the page says when the next pass comes, and what put
    it there (the connection's state, the budget, a page open, an error)."""
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=3600)  # finished: nothing live
    Connection.objects.filter(pk=buddy_connection.pk).update(last_pass_requests=6)
    result = sync.sync_connection(buddy_connection.pk)
    client.force_login(manager)

    def next_pass() -> str:
        page = html.unescape(client.get("/connections/").content.decode())
        return re.search(r'<td data-label="Next pass">(.*?)</td>', page, re.S).group(1)

    # Idle wants a pass in 15 s; half of 1000 an hour allows one every 44 s.
    schedule.after_pass(buddy_connection.pk, requests=result.requests,
                        runs_written=result.runs_written, rate_limit_seen=result.rate_limit_seen)
    conn = Connection.objects.get(pk=buddy_connection.pk)
    assert conn.next_poll_at.isoformat() in next_pass()
    assert "idle; held back by the rate budget" in next_pass()
    # A page open on its runs brings a far pass forward (never before the budget allows).
    connections = Connection.objects.filter(pk=buddy_connection.pk)
    connections.update(next_poll_at=timezone.now() + timedelta(hours=1), budget_at=None)
    schedule.watching_read(connections)
    assert "a page is open on its runs" in next_pass()
    # Webhook reads beyond their own part borrow from the passes' budget: it waits.
    connections.update(webhooks_enabled=True, webhook_secret_hash="x",
                       next_poll_at=timezone.now(),
                       webhook_budget_at=timezone.now() + timedelta(hours=1))
    assert schedule.take(buddy_connection.pk, 3)[0] == 3
    assert "webhook reads borrowed from its budget" in next_pass()
    # Webhooks turned off: as soon as the budget allows.
    connections.update(webhooks_enabled=False, next_poll_at=timezone.now() + timedelta(hours=1))
    schedule.poll_soon(buddy_connection.pk, reason="webhooks turned off")
    assert "webhooks turned off" in next_pass()
    schedule.claim(buddy_connection.pk)
    assert "a pass is queued or under way" in next_pass()
    buddy_sim.inject("error_503", times=10)
    with pytest.raises(Unavailable):
        sync.sync_connection(buddy_connection.pk)
    assert "retrying after an error" in next_pass()


def test_a_connections_first_pass_is_a_one_time_cost_that_holds_no_read_back(
        buddy_connection, settings):
    settings.RUNBOARD_FIRST_PASS_ALLOWANCE = 0.25
    now = timezone.now()
    # The conservative 600/hour: a first (full) read of 101 requests is within a quarter
    # of the window, spent once beside Runboard's share: webhook reads may start at once.
    schedule.after_pass(buddy_connection.pk, requests=101, runs_written=30,
                        rate_limit_seen=None, now=now)
    assert schedule.take(buddy_connection.pk, 5, now) == (5, 0.0)
    per = 3600 / (300 - 75)  # less what reads may spend ahead: at most a quarter of 300
    assert Connection.objects.get(pk=buddy_connection.pk).budget_at == now + timedelta(
        seconds=5 * per)
    # Every later pass is charged in full.
    schedule.after_pass(buddy_connection.pk, requests=101, runs_written=0,
                        rate_limit_seen=None, now=now)
    assert Connection.objects.get(pk=buddy_connection.pk).budget_at == now + timedelta(
        seconds=106 * per)


def test_a_first_pass_beyond_its_allowance_is_charged_for_the_excess(buddy_connection,
                                                                     settings):
    settings.RUNBOARD_FIRST_PASS_ALLOWANCE = 0.25
    now = timezone.now()
    schedule.after_pass(buddy_connection.pk, requests=200, runs_written=30,
                        rate_limit_seen=None, now=now)
    per = 3600 / (300 - 75)
    assert Connection.objects.get(pk=buddy_connection.pk).budget_at == now + timedelta(
        seconds=(200 - 150) * per)


def test_a_watched_page_brings_the_next_pass_forward_but_not_past_the_budget(
        buddy_connection):
    now = timezone.now()
    Connection.objects.filter(pk=buddy_connection.pk).update(
        next_poll_at=now + timedelta(seconds=600),
        # A 30-request pass just now: conservative 600/h at half, paid back in 360 s.
        budget_at=now + timedelta(seconds=360), last_pass_requests=30)
    schedule.watching([buddy_connection.pk], now)
    conn = Connection.objects.get(pk=buddy_connection.pk)
    assert conn.next_poll_at == now + timedelta(seconds=360)
    assert conn.watched_until > now


def test_a_watched_page_on_a_connection_with_healthy_webhooks_leaves_the_budget_to_them(
        buddy_connection):
    buddy_connection.set_webhook_secret()
    now = timezone.now()
    Connection.objects.filter(pk=buddy_connection.pk).update(
        webhooks_enabled=True, last_webhook_accepted=True,
        next_poll_at=now + timedelta(seconds=300))
    schedule.watching([buddy_connection.pk], now)
    # Changes are announced: the page needs no pass at once, only the live poll's.
    assert Connection.objects.get(pk=buddy_connection.pk).next_poll_at == now + timedelta(
        seconds=30)


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_turning_webhooks_off_falls_back_to_polling_with_no_lost_change(
        buddy_sim, buddy_connection):
    buddy_sim.rate_limit = 36000  # X-Rate-Limit-Limit: a pass's budget is paid back in < 1 s
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=3600)
    buddy_connection.set_webhook_secret()
    Connection.objects.filter(pk=buddy_connection.pk).update(
        webhooks_enabled=True, last_webhook_accepted=True)
    with celery_worker():
        tasks.sync_all.delay()
        wait_for(lambda: Connection.objects.get(pk=buddy_connection.pk).last_pass_requests,
                 what="the first pass")
        conn = Connection.objects.get(pk=buddy_connection.pk)
        assert conn.next_poll_at > timezone.now() + timedelta(seconds=200)  # reconciling
        # A change whose delivery is lost (webhooks about to be turned off).
        buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=10)
        assert tasks.sync_all() == 0  # nothing due yet (queues in-process, runs in the worker)
        call_command("webhook_secret", buddy_connection.name, "--off")
        conn = Connection.objects.get(pk=buddy_connection.pk)
        # As soon as the budget allows, not at the reconcile interval.
        # (the first pass, a one-time cost, may have left the clock unset)
        assert conn.next_poll_at <= max(conn.budget_at or timezone.now(), timezone.now())
        wait_for(lambda: tasks.sync_all() == 1, timeout=5, what="the pass to be due")
        wait_for(lambda: Run.objects.count() == 2, what="polling to bring the change in")
    conn = Connection.objects.get(pk=buddy_connection.pk)
    assert not conn.webhooks_enabled and conn.next_poll_at < timezone.now() + timedelta(
        seconds=60)


def test_webhook_reads_come_out_of_the_same_budget(buddy_connection):
    now = timezone.now()
    Connection.objects.filter(pk=buddy_connection.pk).update(next_poll_at=now)
    per = 3600 / (300 - 15)  # conservative 600/h at half, less 10 (a first pass) + 5
    schedule.charge(buddy_connection.pk, 5, now)
    conn = Connection.objects.get(pk=buddy_connection.pk)
    assert conn.budget_at == now + timedelta(seconds=5 * per)
    granted, _ = schedule.take(buddy_connection.pk, 1, now)
    assert granted == 1
    # The next pass waits until the reads are paid back.
    assert Connection.objects.get(pk=buddy_connection.pk).next_poll_at == now + timedelta(
        seconds=6 * per)


def test_webhook_reads_run_ahead_of_the_budget_by_one_pass_and_a_burst_never_further(
        buddy_connection, settings):
    settings.RUNBOARD_WEBHOOK_BURST = 3
    now = timezone.now()
    Connection.objects.filter(pk=buddy_connection.pk).update(last_pass_requests=4)
    per = 3600 / (300 - 7)  # 4 (a pass) + 3 (the burst) may be spent ahead of the clock
    assert schedule.take(buddy_connection.pk, 20, now) == (7, 0.0)
    granted, wait = schedule.take(buddy_connection.pk, 1, now)
    assert (granted, wait) == (0, pytest.approx(per))
    later = now + timedelta(seconds=per)
    assert schedule.take(buddy_connection.pk, 5, later) == (1, 0.0)
    # Over [now, now + per]: 8 requests = 7 ahead + one at the clock's rate, not one more.
    assert schedule.take(buddy_connection.pk, 1, later)[0] == 0


def test_polling_after_webhooks_go_off_waits_for_the_budget_not_longer(buddy_connection):
    now = timezone.now()
    Connection.objects.filter(pk=buddy_connection.pk).update(
        next_poll_at=now + timedelta(seconds=300), budget_at=now + timedelta(seconds=20))
    schedule.poll_soon(buddy_connection.pk, now, reason="webhooks turned off")
    assert Connection.objects.get(pk=buddy_connection.pk).next_poll_at == now + timedelta(
        seconds=20)
    Connection.objects.filter(pk=buddy_connection.pk).update(next_poll_at=None, budget_at=None)
    schedule.poll_soon(buddy_connection.pk, now, reason="webhooks turned off")
    assert Connection.objects.get(pk=buddy_connection.pk).next_poll_at == now


def test_turning_webhooks_off_in_the_admin_brings_the_next_pass_forward(
        admin_client, buddy_connection):
    buddy_connection.set_webhook_secret()
    now = timezone.now()
    Connection.objects.filter(pk=buddy_connection.pk).update(
        webhooks_enabled=True, next_poll_at=now + timedelta(seconds=300))
    response = admin_client.post(
        f"/admin/dashboard/connection/{buddy_connection.pk}/change/",
        {"provider": "buddy", "name": "Buddy", "base_url": buddy_connection.base_url,
         "token": "", "scope": json.dumps(buddy_connection.scope),
         "enabled": "on"})
    assert response.status_code == 302, response.content[:2000]
    conn = Connection.objects.get(pk=buddy_connection.pk)
    assert not conn.webhooks_enabled
    assert conn.next_poll_at <= timezone.now()


def test_a_window_nearly_used_up_by_one_client_stops_the_next_before_a_429(
        buddy_sim, buddy_connection):
    from providers.base import RateLimited, RateLimitInfo

    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    schedule.record_rate_limit(buddy_connection.pk, RateLimitInfo(
        limit=1000, remaining=1, reset_at=(timezone.now() + timedelta(seconds=30)).timestamp()))
    conn = Connection.objects.get(pk=buddy_connection.pk)
    asked = len(buddy_sim.requests)
    with pytest.raises(RateLimited) as refused, conn.client() as client:
        client.get_run({"project": "web-shop", "pipeline": "1", "id": 1})
    assert len(buddy_sim.requests) == asked  # nothing was sent
    assert 25 < refused.value.retry_after <= 30


# --- webhook reads: a reserve of their own, never behind the passes' debt ----------------

def webhooks_on(connection, **fields) -> None:
    connection.set_webhook_secret()
    Connection.objects.filter(pk=connection.pk).update(
        webhooks_enabled=True, last_webhook_accepted=True, **fields)


def test_a_webhook_read_does_not_wait_behind_the_passes_budget_debt(buddy_connection):
    now = timezone.now()
    # The passes' clock ten minutes ahead (say, a first pass beyond its allowance).
    webhooks_on(buddy_connection, last_pass_requests=10,
                budget_at=now + timedelta(seconds=600),
                next_poll_at=now + timedelta(seconds=600))
    assert schedule.take(buddy_connection.pk, 1, now) == (1, 0.0)
    # The read came out of the reads' own part: the passes still pay their debt, no
    # sooner and no later.
    conn = Connection.objects.get(pk=buddy_connection.pk)
    assert conn.budget_at == conn.next_poll_at == now + timedelta(seconds=600)
    # Conservative 600/hour at half, the reads' half of it, less the burst of 5.
    assert conn.webhook_budget_at == now + timedelta(seconds=3600 / (150 - 5))


def test_a_flood_of_announcements_cannot_exceed_the_reads_reserve(buddy_connection, settings):
    settings.RUNBOARD_WEBHOOK_BURST = 5
    now = timezone.now()
    webhooks_on(buddy_connection, last_pass_requests=10,
                budget_at=now + timedelta(hours=2))  # nothing left to borrow from passes
    per = 3600 / (150 - 5)
    assert schedule.take(buddy_connection.pk, 100, now) == (5, 0.0)  # the burst, at once
    granted, wait = schedule.take(buddy_connection.pk, 100, now)
    assert (granted, wait) == (0, pytest.approx(per))
    # Asked for 100 every half interval for an hour: never more than the reads' part,
    # 150 an hour (a quarter of the conservative 600), burst included.
    total = 5 + sum(schedule.take(buddy_connection.pk, 100, now + timedelta(
        seconds=k * per / 2))[0] for k in range(1, int(7200 / per)))
    assert 140 <= total <= 150
    assert Connection.objects.get(pk=buddy_connection.pk).budget_at == now + timedelta(hours=2)


def test_beyond_their_reserve_reads_take_what_passes_leave_and_push_the_next_pass_back(
        buddy_connection, settings):
    settings.RUNBOARD_WEBHOOK_BURST = 5
    now = timezone.now()
    webhooks_on(buddy_connection, last_pass_requests=4, next_poll_at=now)
    # 5 from the reserve, then 4 (a pass) + 5 ahead of the passes' clock, which runs at
    # their half of the share less that allowance.
    assert schedule.take(buddy_connection.pk, 20, now) == (14, 0.0)
    conn = Connection.objects.get(pk=buddy_connection.pk)
    per_pass = 3600 / (150 - 9)
    assert conn.budget_at == conn.next_poll_at == now + timedelta(seconds=9 * per_pass)
    assert schedule.take(buddy_connection.pk, 1, now)[0] == 0


def test_a_flood_of_reads_puts_a_pass_off_by_one_interval_at_most(buddy_connection, settings):
    """Reads borrowing from the passes' clock pushed the planned pass back with every
    borrow: under a steady flood no pass came at all, and a run that started waiting
    for approval (which no platform announces) was never seen. They may now put a pass
    off by one interval at most, and any hour still sees at most the share."""
    settings.RUNBOARD_WEBHOOK_BURST = 5
    start = timezone.now()
    webhooks_on(buddy_connection, last_pass_requests=8, next_poll_at=start)
    spent, passes = [], []
    for step in range(0, 3 * 3600, 5):  # reads ask for 100 every 5 s, for three hours
        now = start + timedelta(seconds=step)
        if Connection.objects.get(pk=buddy_connection.pk).next_poll_at <= now:
            schedule.after_pass(buddy_connection.pk, requests=8, runs_written=0,
                                rate_limit_seen=None, now=now)
            passes.append(step)
            spent.append((step, 8))
        granted, _ = schedule.take(buddy_connection.pk, 100, now)
        spent.append((step, granted))
    # Reconciling every 300 s, or once what reads borrowed is paid back (the burst and a
    # pass: 13 requests at 3600 / (150 - 13) s, 342 s): a pass comes that interval late
    # at most.
    gaps = [b - a for a, b in itertools.pairwise(passes)]
    assert len(passes) >= 3 * 3600 / 700 and max(gaps) <= 2 * 342 + 5, gaps
    # The conservative 600/hour at half: 300 in any hour, reads and passes together.
    worst = max(sum(n for t, n in spent if begin <= t < begin + 3600)
                for begin in range(0, 2 * 3600, 60))
    assert 250 <= worst <= 300


def test_at_its_deadline_a_pass_and_what_reads_borrowed_stay_within_the_allowance(
        buddy_connection):
    """Where a pass costs more than the quarter of the passes' part that caps
    `ahead_allowance` (37.5 of the conservative 600 an hour), reads must not borrow at
    the pass's deadline: the pass alone fills the allowance. (They borrowed a burst of
    5 there, and a window could see 45 ahead of the clock.)"""
    now = timezone.now()
    webhooks_on(buddy_connection, last_pass_requests=40, next_poll_at=now,
                pass_due_by=now, budget_at=now)
    assert schedule.take(buddy_connection.pk, 20, now) == (5, 0.0)  # the reads' own burst
    assert Connection.objects.get(pk=buddy_connection.pk).budget_at == now


def test_a_read_never_brings_a_claimed_pass_forward(buddy_connection):
    """A pass under way is claimed until the lease ends: a read capped at the pass's
    deadline must not make it due again meanwhile (a second pass queued for nothing)."""
    now = timezone.now()
    webhooks_on(buddy_connection, last_pass_requests=4, next_poll_at=now,
                pass_due_by=now + timedelta(seconds=10))
    schedule.claim(buddy_connection.pk, now)
    claimed = Connection.objects.get(pk=buddy_connection.pk).next_poll_at
    assert claimed > now + timedelta(seconds=10)
    assert schedule.take(buddy_connection.pk, 20, now)[0] > 5  # borrowed, too
    assert Connection.objects.get(pk=buddy_connection.pk).next_poll_at == claimed


def test_with_webhooks_on_passes_spend_only_their_part_of_the_share(buddy_connection):
    now = timezone.now()
    webhooks_on(buddy_connection, last_pass_requests=7)
    schedule.after_pass(buddy_connection.pk, requests=7, runs_written=0,
                        rate_limit_seen=None, now=now)
    # Half of the conservative 600/hour at half, less what reads may borrow (7 + 5).
    assert Connection.objects.get(pk=buddy_connection.pk).budget_at == now + timedelta(
        seconds=7 * 3600 / (150 - 12))


def test_add_connection_sets_the_tokens_rate_limit_and_an_update_keeps_it(
        buddy_sim, monkeypatch):
    from django.core.management.base import CommandError

    monkeypatch.setenv("RUNBOARD_TOKEN", buddy_sim.token)
    where = ["--base-url", buddy_sim.url, "--scope", f"workspace={buddy_sim.workspace}"]
    call_command("add_connection", "buddy", "Buddy", *where, "--requests-per-hour", "3000")
    assert Connection.objects.get().rate_budget() == RateBudget(3000, 3600.0)
    call_command("add_connection", "buddy", "Buddy", *where)
    assert Connection.objects.get().requests_per_hour == 3000
    with pytest.raises(CommandError, match="greater than or equal to 10"):
        call_command("add_connection", "buddy", "Buddy", *where, "--requests-per-hour", "5")
