"""Notification channels: rules, once-only claims, Apprise delivery, the delivery log."""

import re
import time

import pytest
from django.core.management import CommandError, call_command

from dashboard import notifications, tasks
from dashboard.channels import Channel, Delivery, Event
from dashboard.models import Connection, Run
from providers.base import Status
from providers.simulators.base import SimClock
from providers.simulators.workflows import WorkflowsSimulator, deploy_plan
from tests.celery_worker import Worker, new_queue, use_queue, wait_for
from tests.listener import Listener

BASE_URL = "https://runboard.example.test"


@pytest.fixture
def workflows_sim():
    with WorkflowsSimulator(token="wf-token", clock=SimClock(speed=0)) as sim:
        yield sim


def connect(sim, name="Pricing"):
    return Connection.objects.create(
        provider="workflows", name=name, base_url=sim.url, token=sim.token,
        scope={"project": sim.project_id, "project_name": sim.project_name})


def three_runs(sim):
    """One waits for approval in Production, one fails in Staging, one succeeds (by t=65)."""
    waiting = sim.add_workflow_run(deploy_plan([False, False, True]), name="Weekly train")
    failing = sim.add_workflow_run(deploy_plan([False, False, False], fail_at=1),
                                   name="Hotfix rollout")
    passing = sim.add_workflow_run(deploy_plan([False, False, False]), name="Rules update")
    return waiting, failing, passing


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_two_workers_send_each_event_once_through_apprise_json(workflows_sim):
    """The issue's done-when: a loopback listener gets exactly one JSON notification per
    event while two real workers sync the same connection, re-sync it, and repeat the
    dispatch (as a retried task would)."""
    sim = workflows_sim
    connection = connect(sim)
    with Listener() as hook:
        call_command("add_channel", "Release room", f"json://127.0.0.1:{hook.port}/hook",
                     "--events", "waiting", "failed", "succeeded", "cancelled",
                     "--connection", "Pricing")
        waiting, _, _ = three_runs(sim)
        env = {"RUNBOARD_BASE_URL": BASE_URL, "RUNBOARD_NOTIFY_BACKOFF": "0.2"}
        with use_queue(new_queue()) as queue:
            workers = [Worker(queue, name="a", env=env), Worker(queue, name="b", env=env)]
            try:
                sim.advance(5)  # all running: nothing this channel listens to
                sync_twice(connection)
                sim.advance(60)  # t=65: one waits, one failed, one succeeded
                sync_twice(connection)
                wait_for(lambda: len(hook.to("/hook")) >= 3, what="three notifications")
                for _ in range(2):  # re-syncs that write every run again
                    Run.objects.update(fingerprint="")
                    sync_twice(connection)
                    wait_for(lambda: not Run.objects.filter(fingerprint="").exists(),
                             what="the re-sync")
                pks = list(Run.objects.values_list("pk", flat=True))
                for _ in range(4):  # a dispatch repeated on both workers
                    notifications.dispatch_runs.delay(pks)
                time.sleep(3)  # whatever would be sent twice has had time to arrive
            finally:
                for worker in workers:
                    worker.stop()

    posts = hook.to("/hook")
    titles = sorted(post.json["title"] for post in posts)
    assert titles == ["Failed: Hotfix rollout in Staging",
                      "Succeeded: Rules update in Production",
                      "Waiting for approval: Weekly train in Production"]
    by_title = {post.json["title"]: post.json["message"] for post in posts}
    run = Run.objects.get(external_id=waiting.data["id"])
    message = by_title["Waiting for approval: Weekly train in Production"]
    assert "Environment: Production" in message
    assert f"Version: {run.version}" in message and run.version
    assert "Triggered by: Ana Lima" in message
    # The same compact duration as the pages show ("3m 5s"), not a second spelling.
    assert re.search(r"^Waiting for: (\d+h )?(\d+m )?\d+[hms]$", message, re.MULTILINE), message
    assert f"Link: {BASE_URL}/runs/{run.pk}/" in message
    assert posts[0].headers["Content-Type"].startswith("application/json")
    log = Delivery.objects.order_by("event")
    assert [(d.event, d.state) for d in log] == [
        ("failed", "sent"), ("succeeded", "sent"), ("waiting", "sent")]


def sync_twice(connection):
    """Both workers asked to sync at once (one of them finds the lease taken), then done."""
    before = Connection.objects.get(pk=connection.pk).last_success_at
    tasks.sync_connection.delay(connection.pk)
    tasks.sync_connection.delay(connection.pk)
    wait_for(lambda: Connection.objects.get(pk=connection.pk).last_success_at != before,
             what="a sync")
    wait_for(lambda: not Connection.objects.get(pk=connection.pk).lease_owner,
             what="the lease to be released")


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_refused_delivery_is_retried_with_backoff_and_logged(workflows_sim):
    """The listener refuses twice, then accepts: one message arrives; the log says so."""
    sim = workflows_sim
    connection = connect(sim)
    answers = iter([(500, {"error": "busy"}), (503, {"error": "busy"})])
    with Listener(answer=lambda got: next(answers, (200, {"ok": True}))) as hook:
        channel = Channel.objects.create(name="Flaky", url=f"json://127.0.0.1:{hook.port}/x",
                                         events=["failed"])
        sim.add_workflow_run(deploy_plan([False], fail_at=0), name="Doomed")
        sim.advance(30)
        with use_queue(new_queue()) as queue:
            worker = Worker(queue, name="r", env={"RUNBOARD_NOTIFY_BACKOFF": "0.2"})
            try:
                tasks.sync_connection.delay(connection.pk)
                wait_for(lambda: Delivery.objects.filter(state="sent").exists(), timeout=30,
                         what="the delivery to go through on its third attempt")
            finally:
                worker.stop()
    assert len(hook.to("/x")) == 3
    delivery = Delivery.objects.get(channel=channel)
    assert delivery.attempts == 3 and delivery.error == ""
    assert Run.objects.get().status == Status.FAILED


@pytest.mark.django_db
def test_rules_pick_channels_by_event_connection_and_environment(workflows_sim, monkeypatch):
    sim = workflows_sim
    connection = connect(sim)
    other = Connection.objects.create(provider="workflows", name="Other", base_url=sim.url,
                                      token="t", scope={"project": "elsewhere"})
    three_runs(sim)
    sim.advance(65)
    from dashboard.sync import sync_connection

    sync_connection(connection.pk)
    call_command("add_channel", "prod-only", "json://127.0.0.1:9/a", "--environment",
                 "Production")
    call_command("add_channel", "failures", "json://127.0.0.1:9/b", "--events", "failed")
    call_command("add_channel", "other", "json://127.0.0.1:9/c", "--connection", "Other")
    pks = list(Run.objects.values_list("pk", flat=True))
    # Claims only (the sending has its own tests): record what would be queued.
    queued = []
    monkeypatch.setattr(notifications, "_enqueue", lambda task, *args: queued.append(args))
    notifications.dispatch_runs(pks)
    notifications.dispatch_runs(pks)  # a second time claims nothing more
    assert set(Delivery.objects.values_list("channel__name", "event")) == {
        ("prod-only", "waiting"), ("prod-only", "succeeded"), ("failures", "failed")}
    assert len(queued) == 3
    assert not Run.objects.filter(connection=other).exists()


@pytest.mark.django_db
def test_add_channel_stores_the_url_encrypted_and_refuses_bad_input(workflows_sim):
    from django.db import connection as db

    call_command("add_channel", "ops", "json://127.0.0.1:9/secret-path", "--events",
                 "waiting,failed")
    channel = Channel.objects.get()
    assert channel.url == "json://127.0.0.1:9/secret-path" and channel.events == [
        "waiting", "failed"]
    with db.cursor() as cursor:
        cursor.execute("SELECT url FROM dashboard_channel")
        assert "secret-path" not in cursor.fetchone()[0]
    with pytest.raises(CommandError, match="No event"):
        call_command("add_channel", "x", "json://127.0.0.1:9/", "--events", "exploded")
    with pytest.raises(CommandError, match="Apprise does not know"):
        call_command("add_channel", "x", "nonsense-scheme://whatever")
    with pytest.raises(CommandError, match="No environment named"):
        call_command("add_channel", "x", "json://127.0.0.1:9/", "--environment", "Mars")
    assert Channel.objects.count() == 1


@pytest.mark.django_db
def test_stale_connection_is_announced_once_per_outage(workflows_sim, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    connection = connect(workflows_sim)
    Connection.objects.filter(pk=connection.pk).update(
        last_success_at=timezone.now() - timedelta(hours=1), last_error="timed out",
        last_error_at=timezone.now())
    Channel.objects.create(name="ops", url="json://127.0.0.1:9/a", events=[Event.STALE])
    monkeypatch.setattr(notifications, "_enqueue", lambda task, *args: None)
    assert notifications.check_stale() == 1
    assert notifications.check_stale() == 0
    Connection.objects.filter(pk=connection.pk).update(
        last_success_at=timezone.now() - timedelta(minutes=30))  # recovered, then stale again
    assert notifications.check_stale() == 1
    assert "Last error: timed out" in Delivery.objects.first().body
