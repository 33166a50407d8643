"""A pass keeps its lease however slow the provider is; a lost lease stops the pass."""

import threading
import time

import pytest
from django.db import connection as db
from django.utils import timezone

from dashboard import sync
from dashboard.models import Connection, Run
from providers.base import Status
from providers.simulators.buddy import BUILD_PLAN, DEPLOY_PLAN

pytestmark = pytest.mark.django_db(transaction=True)

# A lease scaled down from production's 60 s; renewed each quarter, it lapses only after
# 3/4 of it without a renewal, which a 1 s lease let a CPU-starved write (two test
# workers on two cores) reach. The ratios are what the tests are about.
LEASE = 2.0
SLOW = 0.6  # every provider round trip of the second pass


@pytest.fixture
def parked(buddy_sim, buddy_connection, monkeypatch, settings):
    """Six runs parked for approval long ago: a pass lists two of them (its last page
    reaches back past its window) and re-reads the other four one by one."""
    settings.RUNBOARD_SYNC_LEASE = LEASE
    monkeypatch.setattr("providers.buddy.PAGE_SIZE", 2)
    for age in (7600, 7500, 7400, 7300, 7200, 7100):
        old = buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN, age=age)
        buddy_sim.transition(old, [old.plan[2]])  # waiting for approval
    for age in (100, 50):
        buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=age)
    sync.sync_connection(buddy_connection.pk)
    assert Run.objects.filter(status=Status.WAITING).count() == 6
    return buddy_connection


def in_thread(fn):
    outcome = {}

    def run():
        try:
            outcome["result"] = fn()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            db.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_second_worker_cannot_take_the_lease_of_a_slow_pass(buddy_sim, parked):
    buddy_sim.inject("slow", times=100, seconds=SLOW)
    requests_before = len(buddy_sim.requests)
    started = time.monotonic()
    thread, outcome = in_thread(lambda: sync.sync_connection(parked.pk, owner="first"))
    while Connection.objects.get(pk=parked.pk).lease_owner != "first":
        time.sleep(0.01)
    taken = []
    while thread.is_alive():
        if sync.acquire_lease(parked.pk, "second"):
            taken.append(round(time.monotonic() - started, 2))
            sync.release_lease(parked.pk, "second")
        time.sleep(0.05)
    thread.join()
    elapsed = time.monotonic() - started
    assert "error" not in outcome, outcome
    refetches = [p for _, p, _ in buddy_sim.requests[requests_before:]
                 if p.rsplit("/", 1)[-1].isdigit()]
    # The four parked runs outside the window re-read one by one, and the two listed
    # ones read for their steps (Buddy's lists are a short view).
    assert len(refetches) == 6
    assert elapsed > 2 * LEASE  # the pass outlived its lease several times over
    assert taken == [], f"the second worker took the lease at +{taken[0]} s"
    assert not outcome["result"].skipped
    assert Connection.objects.get(pk=parked.pk).lease_owner == ""  # released at the end


def test_a_pass_whose_lease_was_taken_stops_and_leaves_the_cursor(buddy_sim, parked):
    cursor = Connection.objects.get(pk=parked.pk).cursor
    buddy_sim.inject("slow", times=100, seconds=SLOW)
    thread, outcome = in_thread(lambda: sync.sync_connection(parked.pk, owner="first"))
    time.sleep(3 * SLOW)
    # An operator (or a clock jump) hands the lease to someone else mid-pass.
    Connection.objects.filter(pk=parked.pk).update(
        lease_owner="second", lease_until=timezone.now() + timezone.timedelta(seconds=60))
    thread.join()
    assert "error" not in outcome, outcome
    assert outcome["result"].skipped
    after = Connection.objects.get(pk=parked.pk)
    assert after.lease_owner == "second"  # not released by the one that lost it
    assert after.cursor == cursor
    assert after.last_error == ""
