from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.core.validators import MinValueValidator
from django.db import connection as db
from django.db import models, transaction
from django.db.models import Count, Min, OuterRef, Q, Subquery
from django.urls import reverse
from django.utils import timezone

from dashboard.secrets import SecretTextField, TokenUnreadable, UnreadableSecret
from providers import registry
from providers.base import FINISHED, Action, Provider, RateBudget, RateLimitInfo, Status


class Connection(models.Model):
    """One provider account: where to reach it, the token, what part of it to watch."""

    provider = models.CharField(max_length=32, choices=registry.choices)
    name = models.CharField(max_length=100, unique=True)
    base_url = models.URLField(max_length=300)
    token = SecretTextField(help_text="Stored encrypted; never shown again.")
    scope = models.JSONField(
        default=dict, blank=True,
        help_text='Provider scope, e.g. {"workspace": "acme"} or {"project": "<id>"}.',
    )
    enabled = models.BooleanField(default=True)
    # The token's allowance where the operator knows it better than the provider's
    # documentation: Qovery and GoRules document none (Runboard then plans with a
    # conservative default that a busy account outgrows), and plans may raise a
    # documented one. Runboard still spends at most RUNBOARD_BUDGET_SHARE of it.
    requests_per_hour = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(10)],
        help_text="The token's rate limit, if you know it (e.g. from the provider's "
                  "support). Empty: the documented limit, or a conservative default where "
                  "none is documented.")

    # Sync state, written only by the sync engine.
    cursor = models.JSONField(default=dict, blank=True)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    runs_synced = models.PositiveIntegerField(default=0)
    # Counters for /metrics (dashboard/metrics.py), only ever incremented, in the database
    # because the sync runs in worker processes the web process cannot see into.
    sync_passes = models.PositiveBigIntegerField(default=0)
    sync_failures = models.PositiveBigIntegerField(default=0)
    sync_seconds = models.FloatField(default=0.0)
    provider_requests = models.PositiveBigIntegerField(default=0)
    provider_rate_limited = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    # Webhooks: /hooks/<webhook_key>/ authenticated by a secret shown once, kept hashed.
    webhook_key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    webhook_secret_hash = models.CharField(max_length=64, blank=True, editable=False)
    webhooks_enabled = models.BooleanField(
        default=False, help_text="Accept deliveries (set a secret first); off: polling only.")
    last_webhook_at = models.DateTimeField(null=True, blank=True)
    last_webhook_accepted = models.BooleanField(null=True, blank=True)
    # The polling scheduler's state (dashboard/schedule.py).
    next_poll_at = models.DateTimeField(null=True, blank=True)
    # What put the next pass where it is, for the connections page.
    poll_reason = models.CharField(max_length=120, blank=True, editable=False)
    # The latest webhook reads borrowing from the passes' budget may put the planned
    # pass off to: one interval after it was due.
    pass_due_by = models.DateTimeField(null=True, blank=True)
    watched_until = models.DateTimeField(null=True, blank=True)
    quiet_passes = models.PositiveIntegerField(default=0)
    last_pass_requests = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_seen = models.PositiveIntegerField(null=True, blank=True)
    # What the provider last said is left of its window, shared by every client of this
    # connection (sync passes, webhook reads), so none of them runs into a 429.
    rate_limit_remaining = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_reset_at = models.DateTimeField(null=True, blank=True)
    # The budget as a clock (dashboard/schedule.py): every request a pass or a webhook
    # read spends moves it on by the time the connection's share allows per request.
    budget_at = models.DateTimeField(null=True, blank=True)
    # When the queued flush of pending webhook hints runs (None: none is queued).
    webhook_flush_at = models.DateTimeField(null=True, blank=True)
    # Webhook reads' own part of the budget, as a clock like budget_at (which is then the
    # passes'); and the lease of the one flush of this connection's hints at a time.
    webhook_budget_at = models.DateTimeField(null=True, blank=True)
    webhook_lease_until = models.DateTimeField(null=True, blank=True)
    # Deliveries the retention deleted, by outcome: the metrics count the log and these,
    # so that their counters never go down (dashboard/retention.py).
    webhook_deliveries_pruned = models.JSONField(default=dict, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def provider_class(self) -> type[Provider]:
        return registry.provider_class(self.provider)

    def rate_budget(self, seen_limit: int | None = None) -> RateBudget:
        """The allowance the scheduler plans with: the operator's, else the provider's
        (documented, sent in its headers, or the conservative default)."""
        if self.requests_per_hour:
            return RateBudget(self.requests_per_hour, 3600.0)
        return self.provider_class.budget_for(seen_limit or self.rate_limit_seen)

    @property
    def token_readable(self) -> bool:
        """False when no configured key decrypts the stored token: it must be re-entered."""
        return not isinstance(self.token, UnreadableSecret)

    def client(self) -> Provider:
        if not self.token_readable:
            raise TokenUnreadable()  # never send the ciphertext as the token
        client = self.provider_class(
            self.base_url, self.token, self.scope, timeout=settings.RUNBOARD_PROVIDER_TIMEOUT,
            rate_limit_reserve=settings.RUNBOARD_RATE_LIMIT_RESERVE,
        )
        if (self.rate_limit_remaining is not None and self.rate_limit_reset_at
                and self.rate_limit_reset_at > timezone.now()):
            # The window another client of this connection saw is still running.
            client.rate_limit = RateLimitInfo(
                limit=self.rate_limit_seen, remaining=self.rate_limit_remaining,
                reset_at=self.rate_limit_reset_at.timestamp())
        return client

    @property
    def is_stale(self) -> bool:
        if not self.enabled:
            return False
        if self.last_success_at is None:
            return bool(self.last_error)
        # The scheduler may plan a quiet or budget-bound connection's next pass minutes
        # ahead: an old pass is stale once the planned one is overdue too, and whatever
        # the plan once it is older than the longest quiet interval allows.
        now, grace = timezone.now(), timedelta(seconds=settings.RUNBOARD_STALE_AFTER)
        age = now - self.last_success_at
        overdue = self.next_poll_at is None or now - self.next_poll_at > grace
        return (age > grace and overdue) or (
            age > grace + timedelta(seconds=settings.RUNBOARD_POLL_MAX)) or (
            self.last_error_at is not None and self.last_error_at > self.last_success_at
        )


    # -- webhooks (appended) ---------------------------------------------------------

    def set_webhook_secret(self) -> str:
        """A new webhook secret (the old one stops working at once); returned once."""
        secret = secrets.token_urlsafe(32)
        self.webhook_secret_hash = hash_secret(secret)
        Connection.objects.filter(pk=self.pk).update(webhook_secret_hash=self.webhook_secret_hash)
        return secret

    def webhook_secret_matches(self, presented: str) -> bool:
        """Constant time, whatever `presented` is."""
        stored = self.webhook_secret_hash
        return bool(stored) and hmac.compare_digest(hash_secret(presented or ""), stored)

    @property
    def webhooks_healthy(self) -> bool:
        """Deliveries on, and the last one accepted: polling may slow to reconciling."""
        return bool(self.webhooks_enabled and self.webhook_secret_hash
                    and self.last_webhook_accepted)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# Accepted deliveries whose runs are still to be read (`webhooks.flush`): the retention
# keeps them, and an index of their own finds them.
UNREAD_DELIVERY = Q(outcome="accepted", processed_at__isnull=True)


class DeliveryQuerySet(models.QuerySet):
    def unread(self):
        return self.filter(UNREAD_DELIVERY)

    def unread_by_connection(self) -> dict[int, dict]:
        """connection id -> {"count", "oldest"} of its unread deliveries: one query."""
        return {row["connection_id"]: row for row in self.unread().order_by()
                .values("connection_id").annotate(count=Count("id"), oldest=Min("received_at"))}


class WebhookDelivery(models.Model):
    """The log of webhook deliveries: what arrived, and what Runboard made of it."""

    class Outcome(models.TextChoices):
        ACCEPTED = "accepted", "Accepted"
        DUPLICATE = "duplicate", "Duplicate (ignored)"
        IGNORED = "ignored", "Not about runs (ignored)"
        REJECTED = "rejected", "Rejected"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE,
                                   related_name="webhook_deliveries", db_index=False)
    received_at = models.DateTimeField(default=timezone.now)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    http_status = models.PositiveSmallIntegerField()
    event = models.CharField(max_length=100, blank=True)
    delivery_id = models.CharField(max_length=128, blank=True)
    reason = models.CharField(max_length=300, blank=True)
    # What the delivery named (locators to re-read); empty: the run list is re-read.
    hints = models.JSONField(default=list, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    runs_written = models.PositiveIntegerField(null=True, blank=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["connection", "-received_at"], name="delivery_newest"),
            models.Index(fields=["connection", "delivery_id"], name="delivery_id_lookup"),
            # What is still to be read (`webhooks.pending`), asked on every delivery: a
            # few rows, however long the log the retention keeps.
            models.Index(fields=["connection", "received_at"], name="delivery_unread",
                         condition=UNREAD_DELIVERY),
        ]

    def __str__(self):
        return f"{self.connection} {self.event or '?'} {self.outcome}"


class Project(models.Model):
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="projects")
    external_id = models.CharField(max_length=200)
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["connection", "external_id"],
                                    name="project_unique_per_connection"),
        ]

    def __str__(self):
        return self.name


class EnvironmentQuerySet(models.QuerySet):
    def board(self) -> list[tuple]:
        """The environment board in one query, a tuple an environment ordered by name and
        connection: (id, name, connection name, project name, then the latest run's id,
        status, raw status, name, version, updated_at, then the newest succeeded run's
        id, name, version), each run off the (environment, -created_at) index. As
        tuples: the ORM (two queries, models for every row) cost more than the page."""
        with db.cursor() as cursor:
            cursor.execute(*self.board_sql())
            return cursor.fetchall()

    @staticmethod
    def board_sql() -> tuple[str, list]:
        # On PostgreSQL the environment is compared BETWEEN e.id AND e.id and leads the
        # ORDER BY: one plan serves every environment, and with a plain `=` it may walk
        # the newest-first index of all runs until it meets a quiet environment's runs
        # (as long as there are newer runs elsewhere). So only the environment's own
        # (environment, -created_at) index serves it.
        run = ("SELECT {} FROM dashboard_run r WHERE r.environment_id {} {}"
               " ORDER BY {} r.created_at DESC, r.id DESC LIMIT 1")
        succeeded = "AND r.status = %s"
        if db.vendor == "postgresql":
            own = ("BETWEEN e.id AND e.id", "r.environment_id,")
            shown = "r.id, r.status, r.raw_status, r.name, r.version, r.updated_at"
            latest = f"LEFT JOIN LATERAL ({run.format(shown, own[0], '', own[1])}) l ON true"
            deployed = ("LEFT JOIN LATERAL ("
                        f"{run.format('r.id, r.name, r.version', own[0], succeeded, own[1])})"
                        " d ON true")
        else:  # SQLite has no LATERAL: the same runs, found by their ids
            latest = f"LEFT JOIN dashboard_run l ON l.id = ({run.format('r.id', '= e.id', '', '')})"
            deployed = ("LEFT JOIN dashboard_run d ON d.id = ("
                        f"{run.format('r.id', '= e.id', succeeded, '')})")
        return f"""
            SELECT e.id, e.name, c.name, p.name,
                   l.id, l.status, l.raw_status, l.name, l.version, l.updated_at,
                   d.id, d.name, d.version
            FROM dashboard_environment e
            JOIN dashboard_connection c ON c.id = e.connection_id
            LEFT JOIN dashboard_project p ON p.id = e.project_id
            {latest}
            {deployed}
            ORDER BY e.name, c.name
        """, ["succeeded"]  # noqa: S608 (our own SQL)


class Environment(models.Model):
    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, related_name="environments"
    )
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL)
    external_id = models.CharField(max_length=200)
    name = models.CharField(max_length=200)

    objects = EnvironmentQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["connection", "external_id"],
                                    name="environment_unique_per_connection"),
        ]

    def __str__(self):
        return self.name


# The provider status shown for a run the provider no longer knows (a 404 on re-read).
GONE_FROM_PROVIDER = "(gone from the provider)"


# Runs not finished yet: a few, however long the history. Every pass asks for them (to
# re-read them, and to plan the next pass), through an index of their own.
ACTIVE_RUN = ~Q(status__in=sorted(status.value for status in FINISHED))


class RunQuerySet(models.QuerySet):
    def for_list(self):
        # Pages never show the raw payload or the connection's token (which would be
        # decrypted for every row): load them only if something asks.
        return self.select_related("connection", "project", "environment").defer(
            "raw", "connection__token", "connection__cursor"
        )

    def active(self):
        return self.filter(ACTIVE_RUN)

    def permalink(self, provider: str, external_id: str):
        """Runs a /runs/<provider>/<external id>/ link names (more than one if two
        connections of the provider share the id). Text with a NUL names none:
        PostgreSQL refuses NUL in a query's text."""
        if "\x00" in provider or "\x00" in external_id:
            return self.none()
        return self.filter(connection__provider=provider, external_id=external_id)

    def to_refresh(self):
        """Runs the sync re-reads one by one: active ones, and those of unknown status
        for a day (after that, an unknown value is not going to resolve itself). A run
        the provider answered 404 for is not asked for again: a listing that shows it
        again rewrites it."""
        return self.active().exclude(
            status=Status.UNKNOWN, created_at__lt=timezone.now() - timedelta(days=1)
        ).exclude(status=Status.UNKNOWN, raw_status=GONE_FROM_PROVIDER)


class Run(models.Model):
    """A deployment run as the provider last told us, normalized."""

    # No index of their own: these foreign keys lead the unique constraint and the
    # indexes below, which serve their lookups; every extra index slows the sync's writes.
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="runs",
                                   db_index=False)
    external_id = models.CharField(max_length=200)
    locator = models.JSONField(default=dict, help_text="What the provider needs to address it.")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL)
    environment = models.ForeignKey(
        Environment, null=True, blank=True, on_delete=models.SET_NULL, db_index=False
    )
    pipeline_id = models.CharField(max_length=200, blank=True)
    pipeline_name = models.CharField(max_length=200, blank=True)
    name = models.CharField(max_length=300, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UNKNOWN)
    raw_status = models.CharField(max_length=64, blank=True)
    version = models.CharField(max_length=200, blank=True)
    branch = models.CharField(max_length=200, blank=True)
    commit = models.CharField(max_length=64, blank=True)
    triggered_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.CharField(max_length=200, blank=True)
    cancel_comment = models.TextField(blank=True)
    web_url = models.URLField(max_length=500, blank=True)
    raw = models.JSONField(default=dict, blank=True)
    # When the payload we hold was received: an older payload never overwrites it.
    observed_at = models.DateTimeField(default=timezone.now)
    # A hash of what the sync wrote: an unchanged payload is not written again, so
    # updated_at (what live pages poll) moves only when something did.
    fingerprint = models.CharField(max_length=32, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["connection", "external_id"],
                                    name="run_unique_per_connection"),
        ]
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="run_newest"),
            models.Index(fields=["status", "-created_at"], name="run_status_newest"),
            models.Index(fields=["connection", "-created_at"], name="run_connection_newest"),
            models.Index(fields=["environment", "-created_at"], name="run_environment_newest"),
            models.Index(fields=["updated_at"], name="run_updated"),
            # The inbox and the attention strip: the few runs waiting for a person,
            # oldest first, without walking past every other run.
            models.Index(fields=["created_at", "id"], condition=Q(status="waiting"),
                         name="run_waiting_oldest"),
            models.Index(fields=["connection", "created_at"], condition=ACTIVE_RUN,
                         name="run_active"),
        ]
        permissions = [("act_on_run", "Can cancel, approve, reject and retry runs")]

    def __str__(self):
        return self.name or self.external_id

    def get_absolute_url(self):
        return reverse("run-detail", args=[self.pk])

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def duration(self) -> timedelta | None:
        if not self.started_at:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    def available_actions(self) -> list[str]:
        """The actions this provider supports and this run's state allows."""
        provider = self.connection.provider_class
        if provider.acts_on_environment and self.is_superseded():
            return []
        supported = provider.actions
        allowed = {
            Action.CANCEL: self.status in {Status.QUEUED, Status.RUNNING, Status.WAITING},
            Action.APPROVE: self.status == Status.WAITING,
            Action.REJECT: self.status == Status.WAITING,
            Action.RETRY: self.status in {Status.FAILED, Status.CANCELLED},
        }
        return [action for action in Action if action in supported and allowed[action]]


    def refresh_from_db(self, *args, **kwargs):
        self.__dict__.pop("superseded", None)  # derived from other runs: look again
        super().refresh_from_db(*args, **kwargs)

    def is_superseded(self) -> bool:
        """A newer run exists in this run's environment (see `mark_superseded`)."""
        if not hasattr(self, "superseded"):
            mark_superseded([self])
        return self.superseded


def mark_superseded(runs) -> None:
    """Set `superseded` on each run, with one query for them all: for each environment,
    its newest started run's creation time, read off the (environment, -created_at) index."""
    # A run that has not started (a request waiting in Qovery's queue) supersedes nothing:
    # the environment's current run is still the one before it.
    newest = Run.objects.filter(environment=OuterRef("pk"), started_at__isnull=False).order_by(
        "-created_at")
    environments = {run.environment_id for run in runs if run.environment_id}
    newest_by_environment = dict(
        Environment.objects.filter(pk__in=environments)
        .annotate(newest=Subquery(newest.values("created_at")[:1]))
        .values_list("pk", "newest")
    ) if environments else {}
    for run in runs:
        newest_there = newest_by_environment.get(run.environment_id)
        run.superseded = bool(newest_there and run.created_at and run.created_at < newest_there)


class Job(models.Model):
    """One step of a run: a per-environment job, a stage, or an action execution."""

    # Indexed by job_unique_per_run, which starts with it.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="jobs", db_index=False)
    external_id = models.CharField(max_length=200)
    name = models.CharField(max_length=300, blank=True)
    order = models.IntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UNKNOWN)
    raw_status = models.CharField(max_length=64, blank=True)
    environment = models.ForeignKey(
        Environment, null=True, blank=True, on_delete=models.SET_NULL
    )
    progress = models.PositiveSmallIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.CharField(max_length=200, blank=True)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_comment = models.TextField(blank=True)
    review_conclusion = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["order", "id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "external_id"], name="job_unique_per_run"),
        ]

    def __str__(self):
        return self.name or self.external_id


class ReleaseCell(models.Model):
    """One cell of the releases matrix: a pipeline's newest run in one environment column
    and its newest successful one, kept by the sync's write path (dashboard/releases.py)
    so the page reads a few rows instead of every run and step environment."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, db_index=False)
    # The row, as the page names it: the run's project (by name) and pipeline.
    project_name = models.CharField(max_length=200, blank=True)
    pipeline_name = models.CharField(max_length=200, blank=True)
    # The column: the environment's name without a "<pipeline> · " prefix, casefolded.
    column = models.CharField(max_length=200)
    name = models.CharField(max_length=200)
    # The step's order in its run (platforms that give environments as steps): the
    # columns follow it; None for an environment a run names on its own.
    position = models.IntegerField(null=True, blank=True)
    # No indexes on the runs: the table has a few rows a pipeline, read whole.
    latest_run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="+",
                                   db_index=False)
    latest_step = models.CharField(max_length=200, blank=True)  # a Job's external_id
    latest_at = models.DateTimeField()
    deployed_run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+", db_index=False)
    deployed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connection", "project_name", "pipeline_name",
                                            "column"], name="release_cell_unique"),
        ]

    def __str__(self):
        return f"{self.pipeline_name or self.project_name} · {self.name}"


class ActionRecord(models.Model):
    """The audit trail: every attempt to act on a run, and what the provider said."""

    class State(models.TextChoices):
        PENDING = "pending", "In flight"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        # No usable answer (timeout, dropped connection, unreadable answer): the provider
        # may have carried it out. Re-reading the run showed it did: reconciled.
        UNKNOWN = "unknown", "Outcome unknown"
        RECONCILED = "reconciled", "Succeeded (no answer; the run shows it)"

    # PROTECT: the audit is append-only, so a run (or a connection) with action history
    # cannot be deleted; disable the connection instead.
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="actions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    kind = models.CharField(max_length=16, choices=Action.choices)
    comment = models.TextField(blank=True)
    options = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.TextField(blank=True, help_text="The provider's answer or error.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The run's status when the action was claimed: what an unknown outcome is judged against.
    status_before = models.CharField(max_length=16, blank=True)
    # A finished record never changes, so a later sync that settles an unknown outcome
    # appends a record of its own that points at it (at most one: one-to-one).
    settles = models.OneToOneField("self", on_delete=models.PROTECT, null=True, blank=True,
                                   related_name="settled_by")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The sync looks for unsettled unknown outcomes after every write: keep it tiny.
            models.Index(fields=["run"], condition=Q(state="unknown"),
                         name="action_unknown_by_run"),
        ]
        constraints = [
            # Two clicks, or two users, can never have two of the same action in flight.
            models.UniqueConstraint(
                fields=["run", "kind"], condition=Q(state="pending"),
                name="one_pending_action_per_kind",
            ),
        ]

    def __str__(self):
        return f"{self.get_kind_display()} {self.run} by {self.user}"


class ApiTokenQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        )


class ApiToken(models.Model):
    """A personal token for scripts and chat bots: `Authorization: Bearer <token>`.

    Only a SHA-256 of the token is stored; the token itself is shown once, at creation.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="The token's first characters.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Tokens issued before expiry existed have none (null); new ones always do.
    expires_at = models.DateTimeField(null=True, blank=True)
    read_only = models.BooleanField(
        default=False, help_text="Can read (GET) but never act on runs."
    )

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @classmethod
    def issue(cls, user, name: str, *, expires_in: timedelta = timedelta(days=90),
              read_only: bool = False) -> tuple[ApiToken, str]:
        key = f"rb_{secrets.token_urlsafe(32)}"
        token = cls.objects.create(user=user, name=name, prefix=key[:10], key_hash=cls.hash(key),
                                   expires_at=timezone.now() + expires_in, read_only=read_only)
        return token, key

    @classmethod
    def find(cls, key: str) -> ApiToken | None:
        """The active (unrevoked, unexpired) token of an active user with this key."""
        token = (cls.objects.active().select_related("user")
                 .filter(key_hash=cls.hash(key), user__is_active=True).first())
        if token is not None:
            cls.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token

    @classmethod
    def authenticate(cls, key: str):
        token = cls.find(key)
        return token.user if token else None


RELEASE_MANAGERS = "Release managers"


def release_managers_group():
    """The group whose members may act on runs (created by a migration; recreated if lost)."""
    from django.contrib.auth.models import Group, Permission

    group, created = Group.objects.get_or_create(name=RELEASE_MANAGERS)
    if created:
        group.permissions.add(
            Permission.objects.get(codename="act_on_run", content_type__app_label="dashboard")
        )
    return group


# --- the data version: what live pages poll ----------------------------------------

DATA_VERSION_KEY = "runboard:data-version"


def data_version() -> str:
    """Changes whenever any run or connection changes.

    Every open run list asks for it every few seconds, so it is kept in the cache for
    up to RUNBOARD_DATA_VERSION_SECONDS; whoever writes runs or connection state calls
    `data_changed()`. A cache the web processes do not share with the workers (the
    default, per-process memory) misses their writes by that long at most.
    """
    version = cache.get(DATA_VERSION_KEY)
    if version is None:
        # One query on two indexes, which also reads the attention strip's counts for
        # the version it finds: every page shows the strip, so the first page after a
        # change makes one query for both, not two.
        from dashboard import attention

        version = attention.read_with_version(VERSION_SQL, version_of)
        cache.set(DATA_VERSION_KEY, version, settings.RUNBOARD_DATA_VERSION_SECONDS)
    return version


VERSION_SQL = ("(SELECT MAX(updated_at) FROM dashboard_run),"
               " (SELECT MAX(updated_at) FROM dashboard_connection)")


def version_of(run_changed, connection_changed) -> str:
    """The data version the latest changes of runs and connections make."""
    return f"{_epoch(run_changed):.6f}-{_epoch(connection_changed):.6f}"


def data_changed() -> None:
    """Forget the cached data version, now and again when the transaction commits
    (a reader may cache the old version in between)."""
    cache.delete(DATA_VERSION_KEY)
    transaction.on_commit(lambda: cache.delete(DATA_VERSION_KEY))


def _epoch(value) -> float:
    if value is None:
        return 0.0
    if isinstance(value, str):  # SQLite returns MAX() of a datetime as text
        value = datetime.fromisoformat(value)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


# --- the trends rollup (dashboard/rollup.py keeps it; dashboard/trends.py reads it) ---


class TrendGroup(models.Model):
    """One line of the trends page: a pipeline in an environment, on one connection."""

    # connection:project:environment:pipeline name, the ids of the first three (or empty):
    # one unique column, since NULLs never collide in a unique constraint of several.
    key = models.CharField(max_length=255, unique=True)
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, db_index=False)
    project = models.ForeignKey(Project, null=True, on_delete=models.CASCADE, db_index=False)
    environment = models.ForeignKey(Environment, null=True, on_delete=models.CASCADE,
                                    db_index=False)
    pipeline_name = models.CharField(max_length=200, blank=True)

    def __str__(self):
        return self.key


class TrendDeployment(models.Model):
    """A finished deployment (a run that succeeded or failed) as the rollup reads it:
    a narrow copy of the run, indexed by group and finish time, so that a day's figures
    are recomputed without scanning (or indexing) the runs table."""

    run = models.OneToOneField(Run, primary_key=True, on_delete=models.CASCADE,
                               related_name="+")
    group = models.ForeignKey(TrendGroup, on_delete=models.CASCADE, db_index=False)
    # When it finished (its creation time if the provider never said).
    at = models.DateTimeField()
    ok = models.BooleanField()
    seconds = models.FloatField(null=True)  # started -> finished, when both are known

    class Meta:
        indexes = [models.Index(fields=["group", "at"], name="trend_deployment_group_at")]

    def __str__(self):
        return f"{self.run_id} {'ok' if self.ok else 'failed'} at {self.at}"


class TrendDay(models.Model):
    """A group's deployments on one day (in TIME_ZONE): counts, and whether the group
    was failing as the day ended. Its durations are in TrendBucket."""

    group = models.ForeignKey(TrendGroup, on_delete=models.CASCADE, db_index=False)
    day = models.DateField()
    successes = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    # When the run of failures going on at the day's end began (None: the day's last
    # deployment succeeded): the next day's recomputation starts from it.
    failing_since = models.DateTimeField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["group", "day"], name="trend_day_unique")]
        indexes = [models.Index(fields=["day"], name="trend_day_day")]

    def __str__(self):
        return f"{self.group_id} {self.day}"


class TrendBucket(models.Model):
    """How many of a group's deployments that day took a duration in this log-scale
    bucket (see rollup.bucket), or, with `restore`, how many of its restores took a
    time in it: rows the database sums over a window, with no document to decode."""

    group = models.ForeignKey(TrendGroup, on_delete=models.CASCADE, db_index=False)
    day = models.DateField()
    restore = models.BooleanField()
    bucket = models.SmallIntegerField()
    count = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["group", "day", "restore", "bucket"],
                                               name="trend_bucket_unique")]
        indexes = [models.Index(fields=["day"], name="trend_bucket_day")]

    def __str__(self):
        return f"{self.group_id} {self.day} {self.bucket}"


class DeriveBacklog(models.Model):
    """A run written whose derived rows (its releases cells, its trends rollup, the
    settlement of unknown action outcomes on it) are not brought up to date yet. The
    statement that writes runs marks them here, in their transaction; `sync.derive`
    folds a connection's marks in a batch and deletes them in its own transaction.
    So a worker that dies in between loses nothing: the marks wait for the next one.
    Plain integers, no foreign keys: no trigger per row written."""

    connection_id = models.BigIntegerField(db_index=True)
    run_id = models.BigIntegerField()
    created_at = models.DateTimeField(db_default=models.functions.Now())

    def __str__(self):
        return f"run {self.run_id} of connection {self.connection_id}"


# Notification channels live in their own module; imported here so Django sees them.
from dashboard.channels import Channel, Delivery, SlackInteraction  # noqa: E402, F401

