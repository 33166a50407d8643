"""/metrics for Prometheus: figures read from the database at scrape time.

The sync and the notifications run in Celery workers, other processes and possibly
other hosts, so counters kept in the web process would miss their work. Every figure
is read from the database when Prometheus scrapes, with a fixed number of aggregate
queries whatever the amount of data: the counters a sync pass keeps on its connection
(dashboard/sync.py), the append-only action audit, the notification and webhook
delivery logs with what the retention pruned from them (dashboard/retention.py).

Off (404) unless RUNBOARD_METRICS_TOKEN or RUNBOARD_METRICS_NETWORKS is set: a reverse
proxy on the same host makes every request come from localhost, so "localhost only"
would not be a safe default.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections import Counter

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError, connection
from django.db.models import Count, F
from django.http import Http404, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from dashboard.channels import Channel, Delivery
from dashboard.models import ActionRecord, Connection, WebhookDelivery

logger = logging.getLogger(__name__)

# Action records and deliveries in these states may still change: reported as gauges.
# Every other state is an outcome that never changes (the audit is append-only), so the
# counts of outcomes only grow.
ACTION_UNFINISHED = (ActionRecord.State.PENDING,)
DELIVERY_UNFINISHED = (Delivery.State.PENDING, Delivery.State.SENDING)
MIN_TOKEN_LENGTH = 16


class RunboardCollector(Collector):
    """Collects on every scrape; five queries whatever the number of rows."""

    def collect(self):
        fields = ["name", "provider", "enabled", "last_success_at", "next_poll_at", "last_error",
                  "last_error_at", "runs_synced", "sync_passes", "sync_failures",
                  "sync_seconds", "provider_requests", "provider_rate_limited",
                  "webhook_deliveries_pruned"]
        connections = list(Connection.objects.only(*fields).order_by("pk"))
        yield from self.connections(connections)
        yield from self.actions()
        yield from self.deliveries()
        yield from self.webhooks(connections)

    def connections(self, connections):
        labels = ["connection", "provider"]
        passes = SummaryMetricFamily(
            "runboard_sync_pass_duration_seconds",
            "Sync passes (failed ones included) and the seconds they took.", labels=labels)
        failures = CounterMetricFamily(
            "runboard_sync_failures", "Sync passes that failed.", labels=labels)
        runs = CounterMetricFamily(
            "runboard_sync_runs_written", "Runs written (new or changed) by sync passes.",
            labels=labels)
        requests = CounterMetricFamily(
            "runboard_provider_requests", "Requests sent to the provider (sync passes, actions).",
            labels=labels)
        limited = CounterMetricFamily(
            "runboard_provider_rate_limited",
            "Provider answers of 429 Too Many Requests (sync passes, actions).", labels=labels)
        age = GaugeMetricFamily(
            "runboard_sync_last_success_age_seconds",
            "Seconds since the last successful sync pass (absent: none yet).", labels=labels)
        last = GaugeMetricFamily(
            "runboard_sync_last_success_timestamp_seconds",
            "When the last sync pass succeeded, in Unix time (absent: none yet).",
            labels=labels)
        stale = GaugeMetricFamily(
            "runboard_connection_stale",
            "1 when the connection is shown as stale (no recent successful sync).",
            labels=labels)
        enabled = GaugeMetricFamily(
            "runboard_connection_enabled", "1 when the connection is synced.", labels=labels)
        now = timezone.now()
        for c in connections:
            values = [c.name, c.provider]
            passes.add_metric(values, c.sync_passes, c.sync_seconds)
            failures.add_metric(values, c.sync_failures)
            runs.add_metric(values, c.runs_synced)
            requests.add_metric(values, c.provider_requests)
            limited.add_metric(values, c.provider_rate_limited)
            if c.last_success_at:
                age.add_metric(values, max(0.0, (now - c.last_success_at).total_seconds()))
                last.add_metric(values, c.last_success_at.timestamp())
            stale.add_metric(values, int(c.is_stale))
            enabled.add_metric(values, int(c.enabled))
        yield from (passes, failures, runs, requests, limited, age, last, stale, enabled)

    def actions(self):
        yield from _split_by_state(
            ActionRecord.objects.values_list("kind", "state"), ACTION_UNFINISHED,
            "runboard_actions", "Actions taken on runs (the audit), by kind and outcome.",
            "Actions whose record may still change (pending: sent, not answered yet).",
            labels=["kind"], outcome="outcome")

    def deliveries(self):
        # What the retention pruned counts too (a finished state: never unfinished).
        pruned = [(name, state, n) for name, tally in Channel.objects.exclude(
            deliveries_pruned={}).values_list("name", "deliveries_pruned")
            for state, n in tally.items()]
        yield from _split_by_state(
            Delivery.objects.values_list("channel__name", "state"), DELIVERY_UNFINISHED,
            "runboard_notification_deliveries",
            "Notifications delivered or given up on (the delivery log), by channel and state.",
            "Notifications waiting to be sent or being sent, by channel and state.",
            labels=["channel"], pruned=pruned)

    def webhooks(self, connections):
        received = CounterMetricFamily(
            "runboard_webhook_deliveries",
            "Webhook deliveries received (the webhook delivery log), by connection and "
            "outcome; rejected ones as logged (RUNBOARD_WEBHOOK_REJECTED_LOG_PER_MINUTE).",
            labels=["connection", "provider", "outcome"])
        pruned = [(c.name, c.provider, outcome, n) for c in connections
                  for outcome, n in c.webhook_deliveries_pruned.items()]
        for labels, n in _counted(WebhookDelivery.objects.values_list(
                "connection__name", "connection__provider", "outcome"), pruned).items():
            received.add_metric(list(labels), n)
        yield received


def _counted(rows, pruned=()) -> Counter:
    """`rows` (a values_list) counted by their values, plus those the retention `pruned`
    from the same log, as (*values, count)."""
    counts = Counter()
    for *values, n in [*rows.order_by().annotate(n=Count("pk")), *pruned]:
        counts[tuple(values)] += n
    return counts


def _split_by_state(rows, unfinished_states, name: str, done_help: str,
                    unfinished_help: str, labels: list[str], outcome: str = "state",
                    pruned=()):
    """Records counted by their labels and state, as two families: finished records (a
    counter: a frozen outcome, including states added later; with those `pruned`, as
    (*labels, state, count)) and unfinished ones (a gauge, `<name>_unfinished`: their
    state may still change)."""
    done = CounterMetricFamily(name, done_help, labels=[*labels, outcome])
    unfinished = GaugeMetricFamily(f"{name}_unfinished", unfinished_help,
                                   labels=[*labels, "state"])
    for (*values, state), n in _counted(rows, pruned).items():
        (unfinished if state in unfinished_states else done).add_metric([*values, state], n)
    return done, unfinished


def count_requests(connection_id: int, client) -> None:
    """Add what a client outside a sync pass (an action, a webhook re-read) sent to the
    connection's counters; a pass counts its own in the update it makes anyway."""
    if client.requests_made:
        Connection.objects.filter(pk=connection_id).update(
            provider_requests=F("provider_requests") + client.requests_made,
            provider_rate_limited=F("provider_rate_limited") + client.rate_limited_responses)


registry = CollectorRegistry(auto_describe=False)  # collects nothing until scraped
registry.register(RunboardCollector())


def _networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for entry in settings.RUNBOARD_METRICS_NETWORKS:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:  # reported by the system check; matches nothing meanwhile
            logger.error("RUNBOARD_METRICS_NETWORKS: %r is not a network", entry)
    return networks


def _from_allowed_network(request) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in _networks())


def _has_token(request) -> bool:
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    expected = settings.RUNBOARD_METRICS_TOKEN
    # Bytes: compare_digest refuses non-ASCII text, which a client may send.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), expected.encode())


@never_cache
@require_GET
def metrics(request):
    token, networks = settings.RUNBOARD_METRICS_TOKEN, settings.RUNBOARD_METRICS_NETWORKS
    if not token and not networks:
        raise Http404("metrics are off")
    if networks and not _from_allowed_network(request):
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
    if token and not _has_token(request):
        response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="runboard metrics"'
        return response
    encoder, content_type = choose_encoder(request.META.get("HTTP_ACCEPT", ""))
    try:
        body = encoder(registry)
    except DatabaseError as exc:
        # Every figure comes from the database: without it there is nothing true to say.
        # 503 marks the target down with a reason, where a 500 would look like a bug.
        connection.close()  # the next scrape reconnects from scratch
        logger.warning("metrics: the database is unavailable: %s", exc)
        return HttpResponse("The database is unavailable.\n", status=503,
                            content_type="text/plain")
    return HttpResponse(body, content_type=content_type)


@register(Tags.security, deploy=False)
def check_metrics_settings(app_configs, **kwargs):
    problems = []
    for entry in settings.RUNBOARD_METRICS_NETWORKS:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            problems.append(Error(
                f"RUNBOARD_METRICS_NETWORKS: {entry!r} is not a network (e.g. 10.0.0.0/8).",
                id="runboard.E101"))
            continue
        if network.is_loopback and not settings.RUNBOARD_METRICS_TOKEN:
            problems.append(Warning(
                f"RUNBOARD_METRICS_NETWORKS: {entry!r} is loopback: through a reverse proxy "
                "on this host every request comes from there, so /metrics would be public.",
                hint="Set RUNBOARD_METRICS_TOKEN too.", id="runboard.W102"))
    token = settings.RUNBOARD_METRICS_TOKEN
    if token and len(token) < MIN_TOKEN_LENGTH:
        problems.append(Warning(
            f"RUNBOARD_METRICS_TOKEN is shorter than {MIN_TOKEN_LENGTH} characters.",
            hint="Use a random one, e.g. python -c 'import secrets; "
                 "print(secrets.token_urlsafe(32))'.", id="runboard.W101"))
    return problems
