"""Channels in the admin (write-only URL, "send a test"), the delivery log, and the
"action taken" event from a web button through a real worker."""

import time

import pytest
from django.contrib.auth.models import User

from dashboard.channels import Channel, Delivery
from dashboard.models import Run
from dashboard.sync import sync_connection
from providers.simulators.buddy import DEPLOY_PLAN
from tests.celery_worker import celery_worker, wait_for
from tests.listener import Listener


@pytest.fixture
def admin_user(db):
    return User.objects.create_superuser("root", "root@example.com", "root-pass")


@pytest.mark.django_db
def test_admin_keeps_the_url_secret_and_sends_a_test(client, admin_user):
    client.force_login(admin_user)
    with Listener() as hook:
        url = f"json://127.0.0.1:{hook.port}/secret-hook-path"
        bad = client.post("/admin/dashboard/channel/add/", {
            "name": "ops", "url": "nonsense-scheme://x", "events": ["waiting"],
            "enabled": "on"})
        assert bad.status_code == 200 and b"Apprise does not know this URL" in bad.content
        response = client.post("/admin/dashboard/channel/add/", {
            "name": "ops", "url": url, "events": ["waiting", "failed"], "enabled": "on"})
        assert response.status_code == 302, response.content.decode()[:2000]
        channel = Channel.objects.get()
        assert channel.url == url and channel.events == ["waiting", "failed"]

        page = client.get(f"/admin/dashboard/channel/{channel.pk}/change/").content.decode()
        listing = client.get("/admin/dashboard/channel/").content.decode()
        assert "secret-hook-path" not in page and "secret-hook-path" not in listing
        # Saving without retyping the URL keeps it.
        client.post(f"/admin/dashboard/channel/{channel.pk}/change/", {
            "name": "ops", "url": "", "events": ["failed"], "enabled": "on"})
        channel.refresh_from_db()
        assert channel.url == url and channel.events == ["failed"]

        response = client.post("/admin/dashboard/channel/", {
            "action": "send_test_message", "_selected_action": [channel.pk]}, follow=True)
        assert b"Ops: test message sent." in response.content
        assert b"Send a test" in client.get(
            f"/admin/dashboard/channel/{channel.pk}/change/").content
        response = client.post(f"/admin/dashboard/channel/{channel.pk}/send-test/", follow=True)
        assert b"Ops: test message sent." in response.content
    posts = hook.to("/secret-hook-path")
    assert len(posts) == 2 and posts[0].json["title"] == "Runboard test message"
    log = client.get("/admin/dashboard/delivery/").content.decode()
    assert "Runboard test message" in log
    assert list(Delivery.objects.values_list("state", flat=True)) == ["sent", "sent"]


@pytest.mark.django_db
def test_a_test_to_an_unreachable_channel_says_why(client, admin_user):
    client.force_login(admin_user)
    with Listener() as hook:
        port = hook.port
    channel = Channel.objects.create(name="gone", url=f"json://127.0.0.1:{port}/x")
    response = client.post("/admin/dashboard/channel/", {
        "action": "send_test_message", "_selected_action": [channel.pk]}, follow=True)
    assert b"Gone: not delivered: A Connection error occurred" in response.content
    assert Delivery.objects.get().state == "failed"


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_an_approval_on_the_web_is_announced_once(client, manager, buddy_sim,
                                                 buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(30)
    sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    with Listener() as hook:
        Channel.objects.create(name="audit room", url=f"json://127.0.0.1:{hook.port}/a",
                               events=["action"])
        with celery_worker():
            client.force_login(manager)
            response = client.post(f"/runs/{run.pk}/approve/", {"comment": "ship it"})
            assert response.status_code == 302
            wait_for(lambda: hook.to("/a"), what="the action notification")
            time.sleep(1)
    posts = hook.to("/a")
    assert len(posts) == 1
    assert posts[0].json["title"] == f"Approve by manager: {run.name}"
    assert "Comment: ship it" in posts[0].json["message"]
