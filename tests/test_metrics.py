"""/metrics: every figure read from the database moves as the sync and users work, at a
fixed query cost; off unless a token or networks are set, and refused without them."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from dashboard import notifications, sync, tasks
from dashboard.actions import ActionRefused, perform
from dashboard.channels import Channel, Delivery, Event
from dashboard.models import ActionRecord, Connection, Run, WebhookDelivery
from providers.base import RateLimited
from providers.simulators.buddy import BUILD_PLAN, DEPLOY_PLAN
from tests.celery_worker import celery_worker, wait_for
from tests.listener import Listener

pytestmark = pytest.mark.django_db

TOKEN = "metrics-test-token-0123456789"
AUTH = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
BUDDY = {"connection": "Buddy", "provider": "buddy"}


def scrape(client) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics", **AUTH)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.content.decode())
            for sample in family.samples}


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def metrics_on(settings):
    settings.RUNBOARD_METRICS_TOKEN = TOKEN
    settings.RUNBOARD_METRICS_NETWORKS = []


def test_every_figure_moves_as_runboard_syncs_acts_and_notifies(
        client, metrics_on, buddy_sim, buddy_connection, manager):
    def figures():
        samples = scrape(client)
        return {name: value(samples, name, **BUDDY) for name in (
            "runboard_sync_pass_duration_seconds_count",
            "runboard_sync_pass_duration_seconds_sum", "runboard_sync_failures_total",
            "runboard_sync_runs_written_total", "runboard_provider_requests_total",
            "runboard_provider_rate_limited_total", "runboard_connection_stale",
            "runboard_sync_last_success_age_seconds")}, samples

    start, _ = figures()
    assert start == {
        "runboard_sync_pass_duration_seconds_count": 0.0,
        "runboard_sync_pass_duration_seconds_sum": 0.0, "runboard_sync_failures_total": 0.0,
        "runboard_sync_runs_written_total": 0.0, "runboard_provider_requests_total": 0.0,
        "runboard_provider_rate_limited_total": 0.0, "runboard_connection_stale": 0.0,
        "runboard_sync_last_success_age_seconds": None,  # never synced: no such sample
    }

    # A pass that succeeds.
    sim_run = buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    sync.sync_connection(buddy_connection.pk)
    first, _ = figures()
    assert first["runboard_sync_pass_duration_seconds_count"] == 1
    assert first["runboard_sync_pass_duration_seconds_sum"] > 0
    assert first["runboard_sync_failures_total"] == 0
    assert first["runboard_sync_runs_written_total"] == 1
    # What the simulator received is what was counted, request for request.
    assert first["runboard_provider_requests_total"] == len(buddy_sim.requests) > 0
    assert first["runboard_provider_rate_limited_total"] == 0
    assert 0 <= first["runboard_sync_last_success_age_seconds"] < 60
    assert first["runboard_connection_stale"] == 0

    # A pass the provider answers with 429.
    buddy_sim.inject("rate_limit", retry_after=30)
    with pytest.raises(RateLimited):
        sync.sync_connection(buddy_connection.pk)
    second, _ = figures()
    assert second["runboard_sync_pass_duration_seconds_count"] == 2
    assert second["runboard_sync_pass_duration_seconds_sum"] >= (
        first["runboard_sync_pass_duration_seconds_sum"])
    assert second["runboard_sync_failures_total"] == 1
    assert second["runboard_provider_rate_limited_total"] == 1
    assert second["runboard_provider_requests_total"] == len(buddy_sim.requests)
    assert second["runboard_connection_stale"] == 1

    # Actions: a cancel the provider answers with 429, then one it takes, one Runboard
    # refuses, one in flight (not an outcome yet).
    run = Run.objects.get()
    buddy_sim.inject("rate_limit", retry_after=30)
    with pytest.raises(ActionRefused):
        perform(run, manager, "cancel", comment="wrong build")
    perform(run, manager, "cancel", comment="wrong build")
    with pytest.raises(ActionRefused):
        perform(run, manager, "approve", comment="not waiting")
    other = User.objects.create_user("other")
    ActionRecord.objects.create(run=run, user=other, kind="retry")  # pending
    third, samples = figures()
    assert third["runboard_provider_requests_total"] == len(buddy_sim.requests)
    assert third["runboard_provider_rate_limited_total"] == 2
    assert value(samples, "runboard_actions_total", kind="cancel", outcome="succeeded") == 1
    assert value(samples, "runboard_actions_total", kind="cancel", outcome="failed") == 1
    assert value(samples, "runboard_actions_total", kind="approve", outcome="failed") == 1
    assert value(samples, "runboard_actions_unfinished", kind="retry", state="pending") == 1

    # Webhooks: the platform announces the cancelled run, then retries it; a forgery.
    secret = buddy_connection.set_webhook_secret()
    Connection.objects.filter(pk=buddy_connection.pk).update(webhooks_enabled=True)
    before = sim_run.status
    buddy_sim.advance(5)  # terminated
    [finished] = buddy_sim.webhook_deliveries(sim_run, before, secret)
    [forged] = buddy_sim.webhook_deliveries(sim_run, before, "not-the-secret")
    for body, status in ((finished.body, 202), (finished.body, 200), (forged.body, 401)):
        assert post_webhook(client, buddy_connection, body).status_code == status
    _, samples = figures()
    hooks = "runboard_webhook_deliveries_total"
    assert value(samples, hooks, outcome="accepted", **BUDDY) == 1
    assert value(samples, hooks, outcome="duplicate", **BUDDY) == 1
    assert value(samples, hooks, outcome="rejected", **BUDDY) == 1

    # Notifications: one delivered to a listener, one refused, one waiting.
    with Listener() as hook:
        room = Channel.objects.create(name="Release room",
                                      url=f"json://127.0.0.1:{hook.port}/hook")
        assert notifications.send_test(room).state == Delivery.State.SENT
        assert len(hook.to("/hook")) == 1
        hook.answer = lambda received: (500, {"error": "down"})
        assert notifications.send_test(room).state == Delivery.State.FAILED
    notifications.claim(room, Event.ACTION, "action waiting", run=run)
    _, samples = figures()
    deliveries = "runboard_notification_deliveries_total"
    assert value(samples, deliveries, channel="Release room", state="sent") == 1
    assert value(samples, deliveries, channel="Release room", state="failed") == 1
    assert value(samples, "runboard_notification_deliveries_unfinished",
                 channel="Release room", state="pending") == 1

    # Time passes without a successful pass: the age grows.
    Connection.objects.filter(pk=buddy_connection.pk).update(
        last_success_at=timezone.now() - timedelta(minutes=10))
    later, _ = figures()
    assert 600 <= later["runboard_sync_last_success_age_seconds"] < 700


def post_webhook(client, connection, body: bytes):
    return client.post(reverse("webhook", args=[connection.webhook_key]), body,
                       content_type="application/json")


def test_a_scrape_costs_the_same_queries_whatever_the_amount_of_data(
        client, metrics_on, django_assert_num_queries, buddy_sim, buddy_connection, manager):
    def add(n: int, start: int):
        for i in range(start, start + n):
            connection = Connection.objects.create(
                provider="buddy", name=f"Buddy {i}", base_url=buddy_sim.url,
                token=buddy_sim.token, scope={"workspace": buddy_sim.workspace},
                last_success_at=timezone.now())
            run = Run.objects.create(connection=connection, external_id=f"r{i}")
            ActionRecord.objects.create(run=run, user=manager, kind="cancel",
                                        state="succeeded")
            channel = Channel.objects.create(name=f"Room {i}", url="json://127.0.0.1:9/")
            Delivery.objects.create(channel=channel, event=Event.TEST, key="k",
                                    state=Delivery.State.SENT)
            WebhookDelivery.objects.create(connection=connection, outcome="accepted",
                                           http_status=202)

    add(1, 0)
    with django_assert_num_queries(5):
        small = scrape(client)
    add(30, 1)
    with django_assert_num_queries(5):
        large = scrape(client)
    assert len(large) > len(small)
    assert value(large, "runboard_actions_total", kind="cancel", outcome="succeeded") == 31
    assert value(large, "runboard_webhook_deliveries_total", connection="Buddy 30",
                 provider="buddy", outcome="accepted") == 1


def test_off_unless_configured_then_on_with_the_token(client, settings, buddy_connection):
    settings.RUNBOARD_METRICS_TOKEN = ""
    settings.RUNBOARD_METRICS_NETWORKS = []
    assert client.get("/metrics", **AUTH).status_code == 404
    settings.RUNBOARD_METRICS_TOKEN = TOKEN
    response = client.get("/metrics", **AUTH)
    assert response.status_code == 200
    assert b'runboard_sync_failures_total{connection="Buddy",provider="buddy"} 0.0' in (
        response.content)


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
    f"Basic {TOKEN}", "Bearer ünïcödé", f"bearer  {TOKEN} extra",
])
def test_a_missing_or_wrong_token_is_refused_without_a_login_redirect(
        client, metrics_on, header):
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
    response = client.get("/metrics", **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"runboard_" not in response.content


def test_the_right_token_works_whatever_the_scheme_case(client, metrics_on):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"bearer {TOKEN}")
    assert response.status_code == 200
    assert b"# TYPE runboard_sync_pass_duration_seconds summary" in response.content


def test_openmetrics_when_the_scraper_asks_for_it(client, metrics_on, buddy_connection):
    response = client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0",
                          **AUTH)
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.endswith(b"# EOF\n")
    for accept in ("application/openmetrics-text; version=9.9", "application/openmetrics-text;"
                   " escaping=bogus", ";;", "*/*", "text/plain; escaping=values", "\u00ff"):
        assert client.get("/metrics", HTTP_ACCEPT=accept, **AUTH).status_code == 200, accept


def test_names_are_escaped_in_labels(client, metrics_on, buddy_sim):
    name = 'Prod "EU" \\ north\nline'
    Connection.objects.create(provider="buddy", name=name, base_url=buddy_sim.url,
                              token=buddy_sim.token, scope={"workspace": "acme"})
    samples = scrape(client)
    assert value(samples, "runboard_connection_enabled", connection=name, provider="buddy") == 1


def test_only_get(client, metrics_on):
    assert client.post("/metrics", **AUTH).status_code == 405


def test_networks_allow_their_addresses_only(client, settings, buddy_connection):
    settings.RUNBOARD_METRICS_TOKEN = ""
    settings.RUNBOARD_METRICS_NETWORKS = ["10.0.0.0/8", "2001:db8::/32"]
    for address in ("10.1.2.3", "::ffff:10.1.2.3", "2001:db8::5"):
        response = client.get("/metrics", REMOTE_ADDR=address)
        assert response.status_code == 200, address
        assert b"runboard_connection_stale" in response.content
    for address in ("127.0.0.1", "192.168.1.1", "2001:db9::1", "", "not-an-address"):
        assert client.get("/metrics", REMOTE_ADDR=address).status_code == 403, address


def test_with_both_set_a_scrape_needs_both(client, settings, db):
    settings.RUNBOARD_METRICS_TOKEN = TOKEN
    settings.RUNBOARD_METRICS_NETWORKS = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.1", **AUTH).status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.1").status_code == 401
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", **AUTH).status_code == 403


def test_a_bad_network_setting_is_reported_and_matches_nothing(client, settings, db):
    settings.RUNBOARD_METRICS_TOKEN = ""
    settings.RUNBOARD_METRICS_NETWORKS = ["10.0.0.0/33", "localhost", "127.0.0.0/8"]
    errors = [m for m in run_checks() if m.id == "runboard.E101"]
    assert len(errors) == 2 and "'10.0.0.0/33'" in errors[0].msg
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.1").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_passes_in_a_worker_process_show_in_the_web_process(client, metrics_on, buddy_sim,
                                                             buddy_connection):
    """What the figures are kept in the database for: a real Celery worker syncs (a pass
    the provider answers with 429, then its retry) and re-reads the run a webhook names;
    the web process reports it all."""
    sim_run = buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    buddy_sim.inject("rate_limit", retry_after=1)
    secret = buddy_connection.set_webhook_secret()
    Connection.objects.filter(pk=buddy_connection.pk).update(webhooks_enabled=True)
    with celery_worker():
        tasks.sync_connection.delay(buddy_connection.pk)
        wait_for(lambda: Connection.objects.filter(pk=buddy_connection.pk,
                                                   last_success_at__isnull=False).exists(),
                 timeout=30, what="the retried pass to succeed")
        before, sent = sim_run.status, len(buddy_sim.requests)
        buddy_sim.advance(60)  # the build finishes
        deliveries = buddy_sim.webhook_deliveries(sim_run, before, secret)
        for delivery in deliveries:
            assert post_webhook(client, buddy_connection, delivery.body).status_code == 202
        wait_for(lambda: WebhookDelivery.objects.filter(processed_at__isnull=False).count()
                 == len(deliveries) > 0, timeout=30, what="the webhooks' re-reads")
    assert len(buddy_sim.requests) > sent  # the re-read went to the provider
    samples = scrape(client)
    assert value(samples, "runboard_sync_pass_duration_seconds_count", **BUDDY) == 2
    assert value(samples, "runboard_sync_failures_total", **BUDDY) == 1
    assert value(samples, "runboard_provider_rate_limited_total", **BUDDY) == 1
    assert value(samples, "runboard_provider_requests_total", **BUDDY) == len(
        buddy_sim.requests)
    assert value(samples, "runboard_sync_runs_written_total", **BUDDY) == 1
    assert value(samples, "runboard_connection_stale", **BUDDY) == 0


def test_a_loopback_network_without_a_token_is_warned_about(settings):
    settings.RUNBOARD_METRICS_TOKEN = ""
    settings.RUNBOARD_METRICS_NETWORKS = ["10.0.0.0/8", "127.0.0.1/32", "::1"]
    warned = [m.msg for m in run_checks() if m.id == "runboard.W102"]
    assert len(warned) == 2 and "'127.0.0.1/32'" in warned[0]
    settings.RUNBOARD_METRICS_TOKEN = TOKEN
    assert not [m for m in run_checks() if m.id == "runboard.W102"]


def test_pruning_the_logs_never_takes_a_counter_down(client, metrics_on, buddy_connection):
    """The delivery counters count logs the retention prunes: what it deletes is kept as
    a tally, or every prune would look like a reset to Prometheus (a rate's spike)."""
    from dashboard import retention

    old = timezone.now() - timedelta(days=40)
    for outcome, processed in (("accepted", old), ("accepted", old), ("rejected", None),
                               ("accepted", None)):  # the last one is not read yet: kept
        WebhookDelivery.objects.create(connection=buddy_connection, outcome=outcome,
                                       http_status=202, received_at=old, processed_at=processed)
    room = Channel.objects.create(name="Room", url="json://127.0.0.1:9/")
    for n, state in enumerate([Delivery.State.SENT, Delivery.State.SENT,
                               Delivery.State.FAILED]):
        Delivery.objects.create(channel=room, event=Event.TEST, key=f"k{n}", state=state,
                                created_at=old)
    figures = [("runboard_webhook_deliveries_total", {**BUDDY, "outcome": "accepted"}, 3),
               ("runboard_webhook_deliveries_total", {**BUDDY, "outcome": "rejected"}, 1),
               ("runboard_notification_deliveries_total", {"channel": "Room", "state": "sent"}, 2),
               ("runboard_notification_deliveries_total", {"channel": "Room", "state": "failed"},
                1)]
    before = scrape(client)
    assert [value(before, name, **labels) for name, labels, _ in figures] == [
        n for _, _, n in figures]

    pruned = retention.prune(days=30)

    assert (pruned["webhook deliveries"], pruned["notifications"]) == (3, 3)
    assert WebhookDelivery.objects.count() == 1 and not Delivery.objects.exists()
    after = scrape(client)
    assert [value(after, name, **labels) for name, labels, _ in figures] == [
        n for _, _, n in figures]
    # New deliveries count on from there.
    WebhookDelivery.objects.create(connection=buddy_connection, outcome="accepted",
                                   http_status=202)
    name, labels, _ = figures[0]
    assert value(scrape(client), name, **labels) == 4
