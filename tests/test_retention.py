"""Logs that grow with every delivery, notification and click are kept for a while,
not for ever; work still to do, replay checks and the audit are never pruned."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from dashboard.channels import Channel, Delivery, SlackInteraction
from dashboard.models import Connection, WebhookDelivery

Outcome = WebhookDelivery.Outcome


@pytest.mark.django_db
def test_old_log_rows_are_deleted_and_work_still_to_do_is_kept(settings):
    settings.RUNBOARD_LOG_RETENTION_DAYS = 30
    settings.RUNBOARD_WEBHOOK_REPLAY_WINDOW = 86400
    now = timezone.now()
    old, recent = now - timedelta(days=31), now - timedelta(days=29)
    connection = Connection.objects.create(provider="buddy", name="Buddy",
                                           base_url="http://127.0.0.1:9", token="t")

    def delivery(at, outcome=Outcome.ACCEPTED, processed=True):
        return WebhookDelivery.objects.create(
            connection=connection, received_at=at, outcome=outcome, http_status=202,
            processed_at=at if processed else None).pk

    kept = {delivery(recent), delivery(old, processed=False)}  # recent; not read yet
    delivery(old)
    delivery(old, Outcome.REJECTED, processed=False)
    room = Channel.objects.create(name="room", url="json://127.0.0.1:9/x")

    def notification(at, state):
        return Delivery.objects.create(channel=room, event="failed", key=f"{at} {state}",
                                       state=state, created_at=at).pk

    sent_recently = notification(recent, Delivery.State.SENT)
    unsent = notification(old, Delivery.State.PENDING)
    notification(old, Delivery.State.SENT)
    notification(old, Delivery.State.FAILED)
    SlackInteraction.objects.create(trigger_id="old", slack_user="U1", action="approve",
                                    created_at=old)
    SlackInteraction.objects.create(trigger_id="new", slack_user="U1", action="approve",
                                    created_at=recent)

    call_command("prune_logs")

    assert set(WebhookDelivery.objects.values_list("pk", flat=True)) == kept
    assert set(Delivery.objects.values_list("pk", flat=True)) == {sent_recently, unsent}
    assert list(SlackInteraction.objects.values_list("trigger_id", flat=True)) == ["new"]


@pytest.mark.django_db
def test_a_retention_shorter_than_the_replay_window_keeps_the_window(settings):
    from dashboard import retention

    settings.RUNBOARD_WEBHOOK_REPLAY_WINDOW = 2 * 86400
    connection = Connection.objects.create(provider="buddy", name="Buddy",
                                           base_url="http://127.0.0.1:9", token="t")
    WebhookDelivery.objects.create(connection=connection, outcome=Outcome.ACCEPTED,
                                   http_status=202, delivery_id="d-1",
                                   received_at=timezone.now() - timedelta(days=1),
                                   processed_at=timezone.now())
    # A replay of d-1 tomorrow must still be recognised: it stays.
    assert retention.prune(days=0.5)["webhook deliveries"] == 0
    assert WebhookDelivery.objects.filter(delivery_id="d-1").exists()


def test_the_beat_prunes_hourly():
    from dashboard.celery import app

    app.loader.import_default_modules()
    app.finalize()
    tasks = {entry["task"]: entry["schedule"] for entry in app.conf.beat_schedule.values()}
    assert tasks.get("dashboard.tasks.prune_logs") == 3600.0
