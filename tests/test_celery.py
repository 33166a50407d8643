"""The Celery tasks with a real worker process on Redis and PostgreSQL."""

import pytest

from dashboard import tasks
from dashboard.models import Connection, Run
from providers.base import Status
from providers.simulators.buddy import BUILD_PLAN, DEPLOY_PLAN
from tests.celery_worker import celery_worker, wait_for

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]


def test_worker_syncs_a_connection_from_the_simulator(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=120)
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN, age=10)
    with celery_worker():
        assert tasks.sync_all.delay() is not None
        wait_for(lambda: Run.objects.count() == 2, what="runs to be synced")
        assert dict(Run.objects.values_list("external_id", "status")) == {
            "web-shop/1/1": Status.SUCCEEDED, "web-shop/1/2": Status.RUNNING,
        }
        buddy_sim.advance(30)
        tasks.sync_connection.delay(buddy_connection.pk)
        wait_for(lambda: Run.objects.filter(status=Status.WAITING).exists(),
                 what="the second sync")
    connection = Connection.objects.get()
    assert connection.last_success_at is not None
    assert connection.lease_owner == ""
