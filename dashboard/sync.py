"""Pull runs from a provider into the database: the one sync both Celery and
`manage.py sync` call.

Guarantees:
- one sync per connection at a time, through a lease row-update that expires if
  the worker holding it dies;
- writes are bulk upserts keyed on (connection, external_id), a constant number of
  queries per page whatever its size; a payload observed earlier than the one
  stored is dropped, so an older payload never overwrites a newer one;
- the cursor only moves after a whole pass succeeded, so a pass killed half-way is
  simply done again (idempotently) by the next one.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F, Q
from django.utils import timezone

from dashboard.models import Connection, Environment, Job, Project, Run
from providers.base import (
    EnvironmentData,
    NotFound,
    ProjectData,
    ProviderError,
    RateLimited,
    RunData,
    parse_time,
)

logger = logging.getLogger(__name__)

# Re-read this much before the newest run we hold: runs that appeared late in the
# provider's ordering, and clock skew between us and the provider.
OVERLAP = timedelta(minutes=10)

RUN_FIELDS = [
    "locator", "project", "environment", "pipeline_id", "pipeline_name", "name", "status",
    "raw_status", "version", "branch", "commit", "triggered_by", "created_at", "started_at",
    "finished_at", "cancelled_by", "cancel_comment", "web_url", "raw", "observed_at",
    "updated_at",
]
JOB_FIELDS = [
    "name", "order", "status", "raw_status", "environment", "progress", "started_at",
    "finished_at", "reviewed_by", "reviewed_at", "review_comment", "review_conclusion",
]


@dataclass
class SyncResult:
    connection_id: int
    skipped: bool = False
    runs_written: int = 0
    pages: int = 0
    requests: int = 0


# --- the lease ---------------------------------------------------------------------


def _lease() -> timedelta:
    return timedelta(seconds=settings.RUNBOARD_SYNC_LEASE)


def acquire_lease(connection_id: int, owner: str) -> bool:
    now = timezone.now()
    return bool(
        Connection.objects.filter(pk=connection_id, enabled=True)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=owner))
        .update(lease_owner=owner, lease_until=now + _lease(), last_attempt_at=now)
    )


def renew_lease(connection_id: int, owner: str) -> None:
    Connection.objects.filter(pk=connection_id, lease_owner=owner).update(
        lease_until=timezone.now() + _lease()
    )


def release_lease(connection_id: int, owner: str) -> None:
    Connection.objects.filter(pk=connection_id, lease_owner=owner).update(
        lease_owner="", lease_until=None
    )


# --- writing runs ------------------------------------------------------------------


def _upsert_keyed(model, items: dict[str, object], update=("name",)) -> dict[str, int]:
    """Bulk upsert Projects or Environments; return external_id -> pk."""
    if not items:
        return {}
    objs = model.objects.bulk_create(
        list(items.values()), update_conflicts=True,
        unique_fields=["connection", "external_id"],
        update_fields=list(update),
    )
    return {obj.external_id: obj.pk for obj in objs}


def upsert_runs(connection: Connection, runs: list[RunData]) -> int:
    """Write one page of runs (and their projects, environments, jobs); return how
    many runs were written. Runs we hold a newer observation of are left alone."""
    latest: dict[str, RunData] = {}
    for run in runs:  # a page may repeat a run; keep its newest observation
        kept = latest.get(run.external_id)
        if kept is None or kept.observed_at <= run.observed_at:
            latest[run.external_id] = run
    if not latest:
        return 0

    projects: dict[str, ProjectData] = {}
    environments: dict[str, EnvironmentData] = {}
    for run in latest.values():
        for env in [run.environment, *(job.environment for job in run.jobs)]:
            if env:
                environments[env.external_id] = env
                if env.project:
                    projects[env.project.external_id] = env.project
        if run.project:
            projects[run.project.external_id] = run.project

    with transaction.atomic():
        project_ids = _upsert_keyed(Project, {
            key: Project(connection=connection, external_id=key, name=p.name[:200])
            for key, p in projects.items()
        })
        env_ids = _upsert_keyed(Environment, {
            key: Environment(
                connection=connection, external_id=key, name=e.name[:200],
                project_id=project_ids.get(e.project.external_id) if e.project else None,
            )
            for key, e in environments.items()
        }, update=("name", "project"))

        # Lock the rows we may overwrite, so an action's write cannot slip in between
        # this check and the upsert below.
        stored = dict(
            Run.objects.select_for_update()
            .filter(connection=connection, external_id__in=list(latest))
            .values_list("external_id", "observed_at")
        )
        fresh = [r for r in latest.values()
                 if r.external_id not in stored or stored[r.external_id] <= r.observed_at]
        if not fresh:
            return 0

        written = Run.objects.bulk_create(
            [_run_model(connection, r, project_ids, env_ids) for r in fresh],
            update_conflicts=True, unique_fields=["connection", "external_id"],
            update_fields=RUN_FIELDS,
        )
        jobs = [
            Job(run_id=model.pk, external_id=job.external_id[:200], name=job.name[:300],
                order=job.order, status=job.status, raw_status=job.raw_status[:64],
                environment_id=env_ids.get(job.environment.external_id)
                if job.environment else None,
                progress=job.progress, started_at=job.started_at, finished_at=job.finished_at,
                reviewed_by=job.reviewed_by[:200], reviewed_at=job.reviewed_at,
                review_comment=job.review_comment, review_conclusion=job.review_conclusion[:32])
            for model, data in zip(written, fresh, strict=True)
            for job in data.jobs
        ]
        if jobs:
            Job.objects.bulk_create(
                jobs, update_conflicts=True, unique_fields=["run", "external_id"],
                update_fields=JOB_FIELDS,
            )
    return len(fresh)


def _run_model(connection, r: RunData, project_ids, env_ids) -> Run:
    return Run(
        connection=connection,
        external_id=r.external_id[:200],
        locator=r.locator,
        project_id=project_ids.get(r.project.external_id) if r.project else None,
        environment_id=env_ids.get(r.environment.external_id) if r.environment else None,
        pipeline_id=r.pipeline_id[:200],
        pipeline_name=r.pipeline_name[:200],
        name=r.name[:300],
        status=r.status,
        raw_status=r.raw_status[:64],
        version=r.version[:200],
        branch=r.branch[:200],
        commit=r.commit[:64],
        triggered_by=r.triggered_by[:200],
        created_at=r.created_at or r.observed_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        cancelled_by=r.cancelled_by[:200],
        cancel_comment=r.cancel_comment,
        web_url=r.web_url if r.web_url.startswith(("https://", "http://")) else "",
        raw=r.raw,
        observed_at=r.observed_at,
    )


# --- one pass ----------------------------------------------------------------------


def sync_connection(connection_id: int, owner: str | None = None) -> SyncResult:
    """Run one sync pass for a connection, unless another worker holds its lease.

    Provider errors are recorded on the connection (visible to users) and re-raised,
    so the Celery task can decide whether and when to retry.
    """
    owner = owner or uuid.uuid4().hex
    result = SyncResult(connection_id)
    if not acquire_lease(connection_id, owner):
        result.skipped = True
        return result
    try:
        connection = Connection.objects.get(pk=connection_id)
        newest = _sync_pass(connection, owner, result)
    except Exception as exc:
        _record_failure(connection_id, exc)
        raise
    else:
        cursor = dict(connection.cursor)
        if newest:
            cursor["high_water"] = newest.isoformat()
        now = timezone.now()
        Connection.objects.filter(pk=connection_id).update(
            cursor=cursor, last_success_at=now, last_error="", next_attempt_at=None,
            runs_synced=F("runs_synced") + result.runs_written, updated_at=now,
        )
    finally:
        try:
            release_lease(connection_id, owner)
        except DatabaseError:  # the lease expires on its own
            logger.exception("could not release the lease of connection %s", connection_id)
    return result


def _sync_pass(connection: Connection, owner: str, result: SyncResult) -> datetime | None:
    high_water = parse_time(connection.cursor.get("high_water"))
    since = high_water - OVERLAP if high_water else None
    seen: set[str] = set()
    newest = high_water
    with connection.client() as client:
        for page in client.list_runs(since=since):
            result.pages += 1
            result.runs_written += upsert_runs(connection, page)
            seen.update(r.external_id for r in page)
            created = [r.created_at for r in page if r.created_at]
            if created and (newest is None or max(created) > newest):
                newest = max(created)
            renew_lease(connection.pk, owner)
        # Fast path: runs still active that fell outside the incremental window are
        # fetched one by one, so a long-running deployment never goes stale.
        for external_id, locator in connection.runs.active().values_list("external_id", "locator"):
            if external_id in seen:
                continue
            try:
                result.runs_written += upsert_runs(connection, [client.get_run(locator)])
            except NotFound:
                logger.info("%s: run %s no longer exists at the provider", connection,
                            external_id)
        result.requests = client.requests_made
    return newest


def _record_failure(connection_id: int, exc: Exception) -> None:
    now = timezone.now()
    message = exc.message if isinstance(exc, ProviderError) else f"Internal error: {exc!r}"
    logger.warning("sync of connection %s failed: %s", connection_id, message)
    if isinstance(exc, RateLimited):
        next_attempt = now + timedelta(seconds=exc.retry_after)
        message = f"Rate limited: {message} (next attempt in {exc.retry_after:.0f} s)"
    else:
        next_attempt = now + timedelta(seconds=settings.RUNBOARD_SYNC_INTERVAL)
    try:
        Connection.objects.filter(pk=connection_id).update(
            last_error=message[:1000], last_error_at=now, next_attempt_at=next_attempt,
            updated_at=now,
        )
    except DatabaseError:  # the database itself is what failed; the log has it
        logger.exception("could not record the failure of connection %s", connection_id)
