"""Webhook ingestion: every simulator's deliveries, through the real endpoint, a real
Celery worker on Redis and PostgreSQL; and everything a delivery must not be able to do."""

import hashlib
import json
import logging
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from dashboard import sync
from dashboard.models import Connection, Run, WebhookDelivery
from providers.simulators.base import SimRun
from providers.simulators.buddy import DEPLOY_PLAN
from tests.celery_worker import celery_worker, wait_for

Outcome = WebhookDelivery.Outcome


def hook_url(connection) -> str:
    return reverse("webhook", args=[connection.webhook_key])


def enable_webhooks(connection) -> str:
    secret = connection.set_webhook_secret()
    Connection.objects.filter(pk=connection.pk).update(webhooks_enabled=True)
    connection.refresh_from_db()
    return secret


def next_change_with_a_webhook(sim, secret, step=5.0, limit=600.0):
    """Advance the simulator until some run changes in a way its platform announces;
    return (run, status before)."""
    with sim.lock:
        sim.tick()
        before = {key: run.status for key, run in sim.runs.items()}
    waited = 0.0
    while waited < limit:
        sim.advance(step)
        waited += step
        with sim.lock:
            for key, run in sim.runs.items():
                if run.status != before[key] and sim.webhook_deliveries(run, before[key], secret):
                    return run, before[key]
            before = {key: run.status for key, run in sim.runs.items()}
    raise AssertionError("no run changed in a way its platform announces")


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_each_simulators_webhook_reaches_the_run_through_a_worker(demo, live_server):
    sim, connection = demo
    sync.sync_connection(connection.pk)
    secret = enable_webhooks(connection)
    run, before = next_change_with_a_webhook(sim, secret)
    held = Run.objects.filter(raw_status=run.status).count()
    with celery_worker():
        codes = sim.deliver_webhook(live_server.url + hook_url(connection), run, secret, before)
        assert codes and all(code == 202 for code in codes)
        # No beat runs here: only the delivery can bring the change in.
        wait_for(lambda: Run.objects.filter(raw_status=run.status).count() > held,
                 timeout=30, what=f"{connection.provider}: the change to reach the run")
        wait_for(lambda: not WebhookDelivery.objects.filter(processed_at__isnull=True).exists(),
                 what="the deliveries to be processed")
    assert set(WebhookDelivery.objects.values_list("outcome", flat=True)) == {Outcome.ACCEPTED}
    connection.refresh_from_db()
    assert connection.last_webhook_accepted and connection.webhooks_healthy


# --- what a delivery must not be able to do ----------------------------------------------

def buddy_body(secret, execution_id=1, **extra):
    return json.dumps({"event": "EXECUTION_SUCCESSFUL", "secret_key": secret,
                       "project": {"name": "web-shop"}, "pipeline": {"id": 1},
                       "execution": {"id": execution_id, "status": "SUCCESSFUL"},
                       **extra}).encode()


@pytest.fixture
def hooked(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    sync.sync_connection(buddy_connection.pk)
    secret = enable_webhooks(buddy_connection)
    return buddy_connection, secret


def post(client, connection, body: bytes, **headers):
    return client.post(hook_url(connection), body, content_type="application/json", **headers)


def state():
    return list(Run.objects.order_by("pk").values_list("pk", "status", "raw_status",
                                                      "updated_at"))


@pytest.mark.django_db
def test_a_valid_delivery_is_answered_at_once_and_queues_the_work(
        client, hooked, django_capture_on_commit_callbacks):
    connection, secret = hooked
    with django_capture_on_commit_callbacks() as queued:
        response = post(client, connection, buddy_body(secret))
    assert response.status_code == 202
    assert len(queued) == 1  # the Celery task, sent once the delivery row is committed
    delivery = WebhookDelivery.objects.get()
    assert (delivery.outcome, delivery.event) == (Outcome.ACCEPTED, "EXECUTION_SUCCESSFUL")
    assert delivery.hints == [{"project": "web-shop", "pipeline": "1", "id": 1}]


@pytest.mark.django_db
def test_forged_malformed_and_oversized_deliveries_change_nothing_and_are_logged(
        client, hooked, settings, caplog, django_capture_on_commit_callbacks):
    connection, secret = hooked
    settings.RUNBOARD_WEBHOOK_MAX_BYTES = 4096
    before = state()
    cases = [
        (buddy_body("not-the-secret"), 401),
        (buddy_body(""), 401),
        (json.dumps({"event": "EXECUTION_FAILED", "project": {"name": "web-shop"}}).encode(),
         401),
        (b"\xff\xfe not json", 400),
        (b"[1, 2, 3]", 400),
        (json.dumps({"secret_key": secret, "execution": "DROP TABLE"}).encode(), 400),
        (buddy_body(secret, padding="x" * 5000), 413),
    ]
    caplog.set_level(logging.WARNING, "dashboard.webhooks")
    with django_capture_on_commit_callbacks() as queued:
        for body, expected in cases:
            assert post(client, connection, body).status_code == expected, body[:60]
        assert client.get(hook_url(connection)).status_code == 405
        other = reverse("webhook", args=["00000000-0000-4000-8000-000000000000"])
        assert client.post(other, buddy_body(secret),
                           content_type="application/json").status_code == 404
    assert queued == []  # no work was queued
    assert state() == before
    outcomes = list(WebhookDelivery.objects.values_list("outcome", "http_status"))
    assert sorted(outcomes) == sorted((Outcome.REJECTED, code) for _, code in cases)
    assert sum("refused" in r.getMessage() for r in caplog.records) == len(cases) + 1


@pytest.mark.django_db
def test_a_flood_of_forgeries_is_logged_without_flooding_the_database(
        client, hooked, settings, caplog):
    connection, _ = hooked
    settings.RUNBOARD_WEBHOOK_REJECTED_LOG_PER_MINUTE = 5
    caplog.set_level(logging.WARNING, "dashboard.webhooks")
    for n in range(40):
        assert post(client, connection, buddy_body(f"guess-{n}")).status_code == 401
    assert WebhookDelivery.objects.count() <= 10  # at most two minutes' worth
    assert sum("wrong or missing secret" in r.getMessage() for r in caplog.records) == 40
    connection.refresh_from_db()
    assert connection.last_webhook_at is None  # forgeries say nothing about health


@pytest.mark.django_db
def test_duplicates_and_replays_do_no_work(client, hooked,
                                          django_capture_on_commit_callbacks):
    connection, secret = hooked
    body = buddy_body(secret)
    with django_capture_on_commit_callbacks() as queued:
        assert post(client, connection, body).status_code == 202
        assert post(client, connection, body).status_code == 200  # a retry by the platform
        assert post(client, connection, body).status_code == 200  # a replay
    assert len(queued) == 1
    assert list(WebhookDelivery.objects.order_by("pk").values_list("outcome", flat=True)) == [
        Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert WebhookDelivery.objects.filter(
        delivery_id="sha256:" + hashlib.sha256(body).hexdigest()).count() == 3


@pytest.mark.django_db
def test_webhooks_off_or_a_rotated_secret_refuse_deliveries(client, hooked):
    connection, secret = hooked
    new_secret = connection.set_webhook_secret()
    assert post(client, connection, buddy_body(secret)).status_code == 401
    assert post(client, connection, buddy_body(new_secret)).status_code == 202
    Connection.objects.filter(pk=connection.pk).update(webhooks_enabled=False)
    assert post(client, connection, buddy_body(new_secret, execution_id=2)).status_code == 403


@pytest.mark.django_db
def test_the_secret_is_stored_hashed_and_compared_whole(buddy_connection):
    secret = buddy_connection.set_webhook_secret()
    stored = Connection.objects.get(pk=buddy_connection.pk).webhook_secret_hash
    assert secret not in stored and len(stored) == 64
    assert buddy_connection.webhook_secret_matches(secret)
    assert not buddy_connection.webhook_secret_matches(secret[:-1])
    assert not buddy_connection.webhook_secret_matches("")


def test_the_admin_shows_a_new_secret_once_and_never_puts_it_in_a_cookie(
        client, buddy_connection, django_user_model):
    admin_user = django_user_model.objects.create_superuser("root", password="x")
    client.force_login(admin_user)
    response = client.post("/admin/dashboard/connection/", {
        "action": "new_webhook_secret", "_selected_action": [buddy_connection.pk]})
    assert response.status_code == 200
    page = response.content.decode()
    secret = re.search(r"<td><code>([A-Za-z0-9_-]{40,})</code></td></tr>", page).group(1)
    connection = Connection.objects.get(pk=buddy_connection.pk)
    assert connection.webhook_secret_matches(secret) and connection.webhooks_enabled
    assert hook_url(connection) in page
    assert "no-store" in response["Cache-Control"]
    # Nothing carries it to a later page: no cookie, no message, no session entry.
    assert all(secret not in morsel.value for morsel in response.cookies.values())
    assert secret not in str(dict(client.session))
    assert secret not in client.get("/admin/dashboard/connection/").content.decode()


@pytest.mark.django_db
def test_the_connections_page_shows_the_last_delivery_and_the_setup_steps(
        client, viewer, hooked):
    connection, secret = hooked
    post(client, connection, buddy_body(secret))
    client.force_login(viewer)
    page = client.get(reverse("connections")).content.decode()
    assert hook_url(connection) in page
    assert "Last delivery accepted" in page
    assert "Payload URL: http://testserver" + hook_url(connection) in page
    assert secret not in page


@pytest.mark.django_db
def test_the_connections_page_says_how_many_deliveries_wait_to_be_read(
        client, viewer, hooked):
    """A busy account on a small budget waits for its reads: the page says so, live."""
    connection, secret = hooked
    for execution_id in (1, 2):
        post(client, connection, buddy_body(secret, execution_id))
    client.force_login(viewer)

    def page() -> str:
        return client.get(reverse("connections")).content.decode()

    assert "to read, the oldest" not in page()  # just arrived: read in a moment
    WebhookDelivery.objects.update(received_at=timezone.now() - timedelta(minutes=2))
    assert "2 webhook deliveries to read, the oldest since" in page()
    WebhookDelivery.objects.update(processed_at=timezone.now())
    assert "to read, the oldest" not in page()


@pytest.mark.django_db
def test_unread_deliveries_are_looked_up_by_an_index_of_their_own(hooked):
    """Every delivery asks what is still unread: not by reading the whole log the
    retention keeps (a month of a busy account's deliveries took 22 ms a look)."""
    from dashboard import webhooks
    from tests.plans import plan_of

    connection, _ = hooked
    WebhookDelivery.objects.bulk_create(  # a log of deliveries read, and one unread
        WebhookDelivery(connection=connection, outcome=Outcome.ACCEPTED, http_status=202,
                        processed_at=None if n == 0 else timezone.now())
        for n in range(3000))
    plan = plan_of(webhooks.pending(connection.pk).order_by("received_at")
                   .values_list("pk", "hints"))
    assert "delivery_unread" in plan, plan
    assert "Filter" not in plan, plan  # the index's condition is the query's


def test_simulator_sends_what_the_platform_documents(buddy_sim):
    run: SimRun = buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.transition(run, [DEPLOY_PLAN[-1]])
    [delivery] = [d for d in buddy_sim.webhook_deliveries(run, "INPROGRESS", "s3cret")
                  if b"EXECUTION_SUCCESSFUL" in d.body]
    body = json.loads(delivery.body)
    assert body["secret_key"] == "s3cret" and body["execution"]["id"] == run.data["id"]


def test_webhook_secret_command_prints_the_absolute_url_providers_need(
        buddy_connection, settings):
    from io import StringIO

    from django.core.management import call_command

    settings.RUNBOARD_BASE_URL = "https://runboard.example.com"
    out = StringIO()
    call_command("webhook_secret", buddy_connection.name, stdout=out)
    buddy_connection.refresh_from_db()
    assert (f"Webhook URL: https://runboard.example.com/hooks/{buddy_connection.webhook_key}/"
            in out.getvalue())


# --- a flood of deliveries: coalesced, and within the connection's budget ----------------

@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_flood_of_deliveries_is_read_once_per_run_within_the_budget(
        client, buddy_sim, buddy_connection):
    """48 deliveries about 12 runs, queued before a worker is up: 12 reads, no more, spent
    no faster than the connection's budget allows, and every change lands. (The worker
    runs with half the budget, the reads' half of it, a burst of 2.)"""
    import time

    from providers.simulators.buddy import BUILD_PLAN
    from tests.celery_worker import Worker, new_queue, use_queue

    # X-Rate-Limit-Limit: at half, 1800 an hour, 900 for passes and 900 for reads: with
    # both clocks, one read every 2 s.
    buddy_sim.rate_limit = 3600
    executions = [buddy_sim.add_execution("web-shop", 1, BUILD_PLAN) for _ in range(12)]
    sync.sync_connection(buddy_connection.pk)
    Connection.objects.filter(pk=buddy_connection.pk).update(
        # 2 (the burst) on the reads' clock, 3 (a pass) + 2 borrowed ahead of the passes'.
        last_pass_requests=3, rate_limit_seen=3600)
    secret = enable_webhooks(buddy_connection)
    buddy_sim.advance(60)  # every execution is now SUCCESSFUL
    reads: list[float] = []
    dispatch = buddy_sim.dispatch

    def timed(request):
        if request.method == "GET" and "/executions/" in request.path:
            reads.append(time.monotonic())
        return dispatch(request)

    buddy_sim.dispatch = timed
    with use_queue(new_queue()) as queue:
        for n in range(4):
            for run in executions:
                response = post(client, buddy_connection,
                                buddy_body(secret, run.data["id"], attempt=n))
                assert response.status_code == 202
        worker = Worker(queue, name="w", concurrency=2, env={"RUNBOARD_WEBHOOK_BURST": "2"})
        try:
            wait_for(lambda: Run.objects.filter(raw_status="SUCCESSFUL").count() == 12,
                     timeout=60, what="every change to land")
            wait_for(lambda: not WebhookDelivery.objects.filter(
                processed_at__isnull=True).exists(), what="the deliveries to be processed")
        finally:
            worker.stop()
    assert len(reads) == 12  # one read per run, not per delivery
    # The budget: 7 reads at once (2 on the reads' clock, 5 ahead of the passes'), then
    # one per 4 s on each clock: one per 2 s. The clocks run from when the worker granted
    # the first reads, a little before the first reached the simulator: 0.3 s of slack
    # for that (70 ms seen on a loaded machine), while clocks even 5% fast still fail by
    # the 11th read (2 x 3.81 s < 8 s - 0.3).
    for k, at in enumerate(reads):
        assert at - reads[0] >= max(0, k + 1 - 7) * 2.0 - 0.3, reads
    assert WebhookDelivery.objects.filter(outcome=Outcome.ACCEPTED).count() == 48


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_webhook_reads_have_their_own_queue_so_no_pass_holds_them_back(
        client, buddy_sim, buddy_connection, settings):
    """With RUNBOARD_WEBHOOK_QUEUE set, a delivery's read goes to that queue: a worker on
    it alone reads the run while the passes' queue is stuck (here: no one consumes it)."""
    from providers.simulators.buddy import BUILD_PLAN
    from tests.celery_worker import Worker, new_queue, use_queue

    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    sync.sync_connection(buddy_connection.pk)
    secret = enable_webhooks(buddy_connection)
    buddy_sim.advance(60)  # SUCCESSFUL at the provider, still running here
    hooks = new_queue()
    settings.RUNBOARD_WEBHOOK_QUEUE = hooks
    with use_queue(new_queue()):  # the passes' queue, which no worker reaches
        assert post(client, buddy_connection, buddy_body(secret)).status_code == 202
        worker = Worker(hooks, name="hooks", env={"RUNBOARD_WEBHOOK_QUEUE": hooks})
        try:
            wait_for(lambda: Run.objects.filter(raw_status="SUCCESSFUL").exists(),
                     timeout=30, what="the webhook's read on its own queue")
        finally:
            worker.stop()
    assert WebhookDelivery.objects.get().processed_at is not None



@pytest.mark.django_db
def test_a_read_does_not_wait_for_a_pass_under_way_but_for_another_read(
        client, hooked, buddy_sim, monkeypatch, django_capture_on_commit_callbacks):
    """A pass holds the sync lease for as long as it reads (Northflank's: 30 requests and
    more); a read takes a lease of its own, so it goes at once. Two reads of one
    connection never run together: the second looks again in a moment."""
    from dashboard import webhooks

    connection, secret = hooked
    queued = []
    monkeypatch.setattr(webhooks, "queue_flush", lambda pk, countdown: queued.append(countdown))
    [sim_run] = buddy_sim.runs.values()
    held = Run.objects.get().raw_status
    buddy_sim.advance(120)  # the deployment moved on at Buddy
    assert sim_run.status != held
    assert sync.acquire_lease(connection.pk, "a pass under way")
    with django_capture_on_commit_callbacks():
        assert post(client, connection, buddy_body(secret)).status_code == 202
    assert webhooks.flush(connection.pk)["read"] == 1
    assert Run.objects.get().raw_status == sim_run.status
    assert not webhooks.pending(connection.pk).exists() and not queued
    # Another read under way: this one waits for it, briefly.
    with django_capture_on_commit_callbacks():
        assert post(client, connection, buddy_body(secret, attempt=2)).status_code == 202
    assert webhooks._acquire_read_lease(connection.pk) is not None
    assert webhooks.flush(connection.pk)["busy"] and queued == [0.05]
    assert webhooks.pending(connection.pk).exists()


def synced_qovery(sim, *names):
    """Environments of one Qovery project, each deployed an hour ago, read by a first pass,
    with webhooks on: (environment ids, connection, webhook secret)."""
    from providers.simulators.qovery import DEPLOY_PLAN

    org = sim.add_organization("Acme")
    project = sim.add_project(org, "shop")
    envs = [sim.add_environment(project, name) for name in names]
    for env in envs:
        sim.add_deployment(env, DEPLOY_PLAN, age=3600)
    connection = Connection.objects.create(
        provider="qovery", name="Qovery", base_url=sim.url, token=sim.token,
        scope={"organization": org})
    sync.sync_connection(connection.pk)
    return envs, connection, enable_webhooks(connection)


@pytest.mark.django_db
def test_what_a_qovery_read_read_the_next_pass_does_not_read_again(
        client, clock, django_capture_on_commit_callbacks):
    """A read costs Qovery's environment status and history; the pass after it read both
    again (its listing still held the status from before), 2 requests a delivery more."""
    from dashboard import webhooks
    from providers.simulators.qovery import DEPLOY_PLAN, QoverySimulator

    with QoverySimulator(token="qov_read", clock=clock) as sim:
        envs, connection, secret = synced_qovery(sim, "staging", "production")
        new = sim.add_deployment(envs[1], DEPLOY_PLAN)
        sim.advance(3600)  # deployed
        [delivery] = sim.webhook_deliveries(new, "DEPLOYING", secret)
        with django_capture_on_commit_callbacks():
            assert post(client, connection, delivery.body,
                        HTTP_QOVERY_SIGNATURE=secret).status_code == 202
        assert webhooks.flush(connection.pk)["read"] == 1
        assert Run.objects.get(external_id__endswith=new.id).raw_status == "DEPLOYED"
        asked = len(sim.requests)
        quiet = sync.sync_connection(connection.pk)
        paths = [path for _, path, _ in sim.requests[asked:]]
        assert not [path for path in paths if envs[1] in path], paths
        assert (quiet.requests, quiet.runs_written) == (2, 0), paths  # projects, statuses


@pytest.mark.django_db
def test_a_qovery_read_whose_history_lags_its_status_leaves_the_next_pass_to_read(
        client, clock, django_capture_on_commit_callbacks):
    """A read that finds the status naming an execution its history does not list yet
    must not be remembered as read: the next pass reads the environment and finds it."""
    from dashboard import webhooks
    from providers.simulators.qovery import DEPLOY_PLAN, QoverySimulator

    with QoverySimulator(token="qov_lag", clock=clock) as sim:
        [env], connection, secret = synced_qovery(sim, "production")
        new = sim.add_deployment(env, DEPLOY_PLAN)
        sim.advance(3600)  # deployed
        sim.history_lag = 5400  # ... and not in the history yet (the first one is)
        [delivery] = sim.webhook_deliveries(new, "DEPLOYING", secret)
        with django_capture_on_commit_callbacks():
            assert post(client, connection, delivery.body,
                        HTTP_QOVERY_SIGNATURE=secret).status_code == 202
        assert webhooks.flush(connection.pk)["read"] == 1
        assert not Run.objects.filter(external_id__endswith=new.id).exists()
        sim.history_lag = 0
        assert sync.sync_connection(connection.pk).runs_written == 1
        assert Run.objects.get(external_id__endswith=new.id).raw_status == "DEPLOYED"
