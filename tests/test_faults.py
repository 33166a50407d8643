"""Sync under faults, with real Celery workers on Redis and PostgreSQL.

For each fault: no crash loop, no duplicates, no lost update, and the error visible
on the connection while it lasts.
"""

import itertools
import time

import pytest
from django.db import connection as db
from django.db.models import Count

from dashboard import tasks
from dashboard.models import Connection, Job, Run
from providers.base import Status
from providers.simulators.buddy import BUILD_PLAN, DEPLOY_PLAN
from tests.celery_worker import Worker, celery_worker, new_queue, use_queue, wait_for

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]


def no_duplicates():
    dupes = (Run.objects.values("connection", "external_id").annotate(n=Count("id"))
             .filter(n__gt=1))
    return not dupes.exists()


def health(connection_id):
    return Connection.objects.get(pk=connection_id)


def test_a_429_storm_is_waited_out(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    buddy_sim.inject("rate_limit", times=3, retry_after=1)
    with celery_worker():
        tasks.sync_connection.delay(buddy_connection.pk)
        wait_for(lambda: "Rate limited" in health(buddy_connection.pk).last_error,
                 what="the rate limit to show on the connection")
        wait_for(lambda: Run.objects.exists(), timeout=30, what="the sync to get through")
    conn = health(buddy_connection.pk)
    assert conn.last_error == ""
    assert conn.last_success_at is not None
    # Each retry waited at least the Retry-After the simulator asked for.
    first_four = buddy_sim.request_times[:4]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(first_four))
    assert Run.objects.count() == 1


def test_server_errors_and_timeouts_back_off_then_recover(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    buddy_sim.inject("error_503", times=2)
    buddy_sim.inject("slow", seconds=3)  # past the 2 s client timeout of the test settings
    with celery_worker():
        tasks.sync_connection.delay(buddy_connection.pk)
        wait_for(lambda: Run.objects.exists(), timeout=40, what="recovery")
        wait_for(lambda: health(buddy_connection.pk).last_error == "", what="error cleared")
    assert Run.objects.count() == 1


def test_garbage_and_unknown_statuses_keep_the_worker_alive(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.inject("malformed", times=3)
    with celery_worker() as worker:
        tasks.sync_connection.delay(buddy_connection.pk)
        wait_for(lambda: "not JSON" in health(buddy_connection.pk).last_error,
                 what="the bad payload to show on the connection")
        assert not Run.objects.exists()
        buddy_sim.clear_faults()
        # One pass: projects and pipelines (each to its empty page), the list, the run's steps.
        buddy_sim.inject("unknown_status", times=6)
        tasks.sync_connection.delay(buddy_connection.pk)
        wait_for(lambda: Run.objects.filter(status=Status.UNKNOWN).exists(),
                 what="the run with an unknown status")
        assert Run.objects.get().raw_status == "QUANTUM_SUPERPOSITION"
        buddy_sim.advance(10)
        tasks.sync_connection.delay(buddy_connection.pk)
        wait_for(lambda: Run.objects.filter(status=Status.RUNNING).exists(),
                 what="the next clean sync to correct it")
        assert worker.process.poll() is None
    assert Run.objects.count() == 1


def test_a_worker_killed_mid_sync_resumes_without_duplicates(buddy_sim, buddy_connection):
    for age in range(120, 0, -1):
        buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=age * 60)
    # projects and pipelines (each to its empty page), executions page 1 and the steps of
    # its 50 runs, then page 2 hangs until the worker is killed
    buddy_sim.inject("slow", seconds=30, after=4 + 1 + 50)
    env = {"RUNBOARD_SYNC_LEASE": "2", "RUNBOARD_PROVIDER_TIMEOUT": "60"}
    with use_queue(new_queue()) as queue:
        first = Worker(queue, name="doomed", pool="solo", env=env)
        try:
            tasks.sync_connection.delay(buddy_connection.pk)
            wait_for(lambda: Run.objects.count() == 50, what="the first page to be written")
            time.sleep(0.5)
            first.kill()
        finally:
            first.stop()
        assert health(buddy_connection.pk).lease_owner != ""  # held by the dead worker
        buddy_sim.clear_faults()
        second = Worker(queue, name="survivor", env=env)
        try:
            def synced():
                tasks.sync_connection.delay(buddy_connection.pk)
                time.sleep(1)
                return Run.objects.count() == 120 and health(buddy_connection.pk).cursor
            wait_for(synced, timeout=40, interval=0, what="the survivor to finish the sync")
        finally:
            second.stop()
    assert no_duplicates()
    # Buddy's lists are a short view: a first pass reads the steps of the newest page only.
    assert Job.objects.count() == 50 * 3
    assert set(Run.objects.values_list("status", flat=True)) == {Status.SUCCEEDED}


def test_two_workers_at_once_sync_a_connection_once(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    buddy_sim.inject("slow", seconds=1.5)  # hold the first sync while the second starts
    with use_queue(new_queue()) as queue:
        workers = [Worker(queue, name=name) for name in ("a", "b")]
        try:
            tasks.sync_connection.delay(buddy_connection.pk)
            tasks.sync_connection.delay(buddy_connection.pk)
            wait_for(lambda: Run.objects.exists() and not health(buddy_connection.pk).lease_owner,
                     what="the sync to finish")
            time.sleep(1)
        finally:
            for worker in workers:
                worker.stop()
    project_listings = [p for _, p, _ in buddy_sim.requests if p.endswith("/projects")]
    # One pass reads the projects' page 1, then the empty page that ends the list.
    assert len(project_listings) == 2, "the second worker should have found the lease taken"
    assert Run.objects.count() == 1
    assert health(buddy_connection.pk).last_error == ""


def test_a_dropped_database_connection_is_survived(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    with celery_worker() as worker:
        tasks.sync_connection.delay(buddy_connection.pk)
        wait_for(lambda: Run.objects.count() == 1, what="the first sync")
        with db.cursor() as cursor:  # cut every database session but this test's own
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
        tasks.sync_connection.delay(buddy_connection.pk)
        wait_for(lambda: Run.objects.count() == 2, timeout=30, what="the sync after the drop")
        assert worker.process.poll() is None
    assert no_duplicates()
