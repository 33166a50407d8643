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

import contextlib
import functools
import hashlib
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import orjson
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db import connection as db
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from dashboard import notifications, releases, rollup
from dashboard.models import (
    GONE_FROM_PROVIDER,
    Connection,
    DeriveBacklog,
    Environment,
    Job,
    Project,
    Run,
    data_changed,
)
from providers.base import (
    EnvironmentData,
    NotFound,
    ProjectData,
    Provider,
    ProviderError,
    RateLimited,
    RateLimitInfo,
    RunData,
    Status,
    parse_time,
)

logger = logging.getLogger(__name__)

# Re-read this much before the newest run we hold: runs that appeared late in the
# provider's ordering, and clock skew between us and the provider.
OVERLAP = timedelta(minutes=10)

# A pass derives what its pages wrote (`derive`) once this many seconds have passed
# since it last did, and as it ends: the releases cells and trends lag the run list by
# about this much during a long pass, and each derivation folds many pages at once.
DERIVE_EVERY = 1.0

# Columns the sync writes; everything else on a row (id, ...) is Runboard's own.
RUN_COLUMNS = [
    "connection_id", "external_id", "locator", "project_id", "environment_id", "pipeline_id",
    "pipeline_name", "name", "status", "raw_status", "version", "branch", "commit",
    "triggered_by", "created_at", "started_at", "finished_at", "cancelled_by",
    "cancel_comment", "web_url", "raw", "fingerprint", "observed_at", "updated_at",
]
_BACKLOG = DeriveBacklog._meta.db_table
JOB_COLUMNS = [
    "run_id", "external_id", "name", "order", "status", "raw_status", "environment_id",
    "progress", "started_at", "finished_at", "reviewed_by", "reviewed_at", "review_comment",
    "review_conclusion",
]

@dataclass
class SyncResult:
    connection_id: int
    skipped: bool = False
    runs_written: int = 0
    pages: int = 0
    requests: int = 0
    rate_limit_seen: int | None = None  # the provider's rate-limit header, for the scheduler
    rate_limit: RateLimitInfo | None = None  # what is left of the provider's window
    client: Provider | None = None  # the pass's client, whose request counts /metrics adds up
    derive_seconds: float = 0.0  # of the pass, spent deriving cells and rollup (`derive`)


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


def renew_lease(connection_id: int, owner: str) -> bool:
    """Extend our lease; False if it is no longer ours (it expired and was taken)."""
    return bool(Connection.objects.filter(pk=connection_id, lease_owner=owner).update(
        lease_until=timezone.now() + _lease()
    ))


class LeaseLost(Exception):
    """Another worker took the connection's lease: this pass must stop writing."""


class LeaseKeeper:
    """Renews a pass's lease as it goes: called on every provider round trip, and
    while waiting on one, it writes once a quarter of the lease has passed, so a slow
    provider never lets the lease lapse under a pass still running."""

    def __init__(self, connection_id: int, owner: str):
        self.connection_id, self.owner = connection_id, owner
        self.renewed = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.renewed < _lease().total_seconds() / 4:
            return
        if not renew_lease(self.connection_id, self.owner):
            raise LeaseLost(f"the lease of connection {self.connection_id} was taken over")
        self.renewed = time.monotonic()


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


def upsert_runs(connection: Connection, runs: list[RunData], derive_now: bool = True) -> int:
    """Write one page of runs (and their projects, environments, jobs); return how
    many runs were written. Runs we hold a newer observation of, or hold unchanged,
    are left alone.

    The runs written are marked in the backlog in the same statement, and their derived
    rows (releases cells, trends rollup, settled action outcomes) are brought up to date
    by `derive`: at once after this commits with `derive_now` (an action's answer, a
    webhook's read), or by the pass for all its pages at a time (see `_sync_pass`)."""
    latest: dict[str, RunData] = {}
    for run in runs:  # a page may repeat a run; keep its newest observation
        key = run.external_id[:200]  # as stored
        kept = latest.get(key)
        if kept is None or kept.observed_at <= run.observed_at:
            latest[key] = run
    if not latest:
        return 0
    # An answer that does not say when its run was created (some action answers) must
    # not move the creation time we hold: keep the stored one.
    undated = [key for key, run in latest.items() if run.created_at is None]
    if undated:
        stored = dict(connection.runs.filter(external_id__in=undated)
                      .values_list("external_id", "created_at"))
        for key in undated:
            if stored.get(key):
                latest[key] = replace(latest[key], created_at=stored[key])

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

    at = db.ops.adapt_datetimefield_value  # timestamps as this database stores them
    now = at(timezone.now())
    if db.vendor == "postgresql":
        now = now.isoformat()
        # One statement: a transaction of its own, or (inside the caller's) a savepoint
        # still, so that a failed page leaves the caller's transaction usable.
        with transaction.atomic() if db.in_atomic_block else contextlib.nullcontext():
            run_ids = _write_page_pg(connection, latest, projects, environments, at, now)
    else:
        with transaction.atomic(), db.cursor() as cursor:
            run_ids = _write_page_staged(
                cursor, connection, latest, projects, environments, at, now)
    if not run_ids:
        return 0
    data_changed()
    # Tell channels about state changes once this commits (dashboard/notifications.py).
    notifications.runs_written({pk: latest[key].status for key, pk in run_ids.items()})
    if derive_now:
        derive(connection.pk)
    return len(run_ids)


def derive(connection_id: int) -> int:
    """Bring the derived rows of a connection's backlog of written runs up to date, in
    one transaction that also clears those marks; return how many runs it folded.

    Cells and rollup are worked out from the runs as the database holds them, so a
    batch of pages folds as the pages would one by one. One writer per connection at a
    time (an advisory lock, the releases cells'): the second waits, then finds the
    marks the first left, if any."""
    from dashboard.actions import settle_unknown  # actions acts through this module

    with transaction.atomic():
        if db.vendor == "postgresql":
            with db.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                               [releases.LOCK_SPACE, connection_id])
                rollup.plain_timestamps(cursor)  # (Django's loader is Python)
                cursor.execute(_DERIVED_RUNS, [connection_id])
                rows = cursor.fetchall()
            # (id, created_at, status, pipeline, project, environment) as releases reads
            # them, and the steps that name an environment.
            written = releases.touched(
                ((row[0], row[8], row[5], row[4], row[9], row[10]) for row in rows),
                {row[0]: _json(row[11]) for row in rows if row[11]})
        else:  # SQLite: one writer at a time anyway
            marks = DeriveBacklog.objects.filter(connection_id=connection_id)
            run_ids = set(marks.values_list("run_id", flat=True))
            marks.delete()
            rows = list(Run.objects.filter(pk__in=run_ids).order_by("created_at", "id")
                        .values_list(*_DERIVED_COLUMNS))
            written = None
        if not rows:
            return 0
        ids = [row[0] for row in rows]  # a run deleted meanwhile has nothing to derive
        releases.record(connection_id, ids, written)
        rollup.record(row[:9] for row in rows)  # the trends rollup (dashboard/rollup.py)
        settle_unknown(ids)
        data_changed()
    return len(ids)


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


# What the rollup is told of each run (rollup.record's rows).
_DERIVED_COLUMNS = ("id", "connection_id", "project_id", "environment_id", "pipeline_name",
                    "status", "started_at", "finished_at", "created_at")
# The connection's marks, taken (deleted, back if this transaction rolls back), and their
# runs as the rollup and the releases cells read them, oldest first: one statement.
_DERIVED_RUNS = (
    f"WITH taken AS (DELETE FROM {_BACKLOG} WHERE connection_id = %s RETURNING run_id)"  # noqa: S608
    f" SELECT {', '.join('r.' + c for c in _DERIVED_COLUMNS)}, p.name, e.name,"
    " (SELECT json_agg(json_build_array(je.name, j.status, j.\"order\", j.external_id))"
    f"  FROM {Job._meta.db_table} j JOIN {Environment._meta.db_table} je"
    "   ON je.id = j.environment_id WHERE j.run_id = r.id)"
    f" FROM {Run._meta.db_table} r"
    f" LEFT JOIN {Project._meta.db_table} p ON p.id = r.project_id"
    f" LEFT JOIN {Environment._meta.db_table} e ON e.id = r.environment_id"
    " WHERE r.id IN (SELECT run_id FROM taken) ORDER BY r.created_at, r.id")


def derive_leftovers(older_than: timedelta = timedelta(minutes=1)) -> int:
    """Derive the marks a pass left behind (its worker died, or its connection was
    disabled since) once they are `older_than`: a pass derives its own much sooner."""
    connection_ids = (DeriveBacklog.objects.filter(created_at__lt=timezone.now() - older_than)
                      .values_list("connection_id", flat=True).distinct())
    return sum(derive(connection_id) for connection_id in list(connection_ids))


def _job_rows(latest: dict[str, RunData], env_ids, at) -> list[tuple]:
    """(run key, job columns but run_id...) for every job of the page, one per job key."""
    rows = {}
    for key, r in latest.items():
        for job in r.jobs:
            rows[key, job.external_id[:200]] = (
                key, job.external_id[:200], job.name[:300], job.order,
                _STATUS[job.status], job.raw_status[:64],
                env_ids.get(job.environment.external_id) if job.environment else None,
                job.progress, at(job.started_at), at(job.finished_at), job.reviewed_by[:200],
                at(job.reviewed_at), job.review_comment, job.review_conclusion[:32])
    return list(rows.values())


def _write_page_staged(cursor, connection, latest, projects, environments, at, now):
    """The page's writes where PostgreSQL's one-statement merge is not available (SQLite):
    staged rows merged table by table."""
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
    run_ids = _upsert(cursor, Run, RUN_COLUMNS, ["connection_id", "external_id"], [
        _run_row(connection.pk, r, project_ids, env_ids, at, now) for r in latest.values()
    ], changed_only=True)
    if run_ids:
        _upsert(cursor, Job, JOB_COLUMNS, ["run_id", "external_id"], [
            (run_ids[row[0]], *row[1:]) for row in _job_rows(latest, env_ids, at)
            if row[0] in run_ids
        ])
        DeriveBacklog.objects.bulk_create(
            DeriveBacklog(connection_id=connection.pk, run_id=pk) for pk in run_ids.values())
    return run_ids


def _write_page_pg(connection, latest, projects, environments, at, now):
    """The page's writes on PostgreSQL: one statement whatever the page's size, so a
    transaction of its own (no BEGIN, no COMMIT to wait for) unless the caller's.

    It merges the page's projects, environments, runs and their jobs in order, a part
    taking the ids of those before it by their external ids (see _merge_sql), and marks
    the runs written in the backlog of derived work. There is no staging table to
    create, fill and empty per page: that cost more than the merge itself. The
    parameters are bound by the server: client-side binding escaped the page's JSON
    (most of a megabyte) in Python, and the server lexed it back, which together took
    longer than the merge. It is parsed and planned for every page (about 2 ms of a
    page's 15 to 20 in bench/sync.py): Django turns psycopg's prepared statements off,
    and turning them on would have a rollback DEALLOCATE ALL, `dashboard.prepared`'s
    statements too.
    """
    conn_id = connection.pk
    sql, params = _merge_pg(_PAGE, [
        [(conn_id, key, p.name[:200]) for key, p in projects.items()],
        [(conn_id, key, e.name[:200], e.project.external_id if e.project else None)
         for key, e in environments.items()],
        [_run_json(conn_id, r, now) for r in latest.values()],
        _job_rows(latest, _EXTERNAL_IDS, _iso),
    ], conn_id)
    with _bound_cursor() as cursor:
        # Don't wait for this page to reach the disk. A crash may lose the last pages
        # written, never a page alone: the pass's cursor is committed after them
        # (synchronously), so a pass whose pages were lost is read again.
        cursor.execute(f"{sql} UNION ALL SELECT 's', NULL,"
                       " set_config('synchronous_commit', 'off', true)", params)
        return {external_id: pk for part, pk, external_id in cursor.fetchall() if part == "r"}


class _ExternalIds:
    """In place of an external id -> id map: the statement itself maps them."""

    @staticmethod
    def get(external_id):
        return external_id


_EXTERNAL_IDS = _ExternalIds()


@contextlib.contextmanager
def _bound_cursor():
    """A cursor of Django's connection (its transaction, its query log) whose parameters
    PostgreSQL binds."""
    from django.db.backends.postgresql.base import ServerBindingCursor

    db.ensure_connection()
    cursor = ServerBindingCursor(db.connection)
    wrapped = db.make_debug_cursor(cursor) if db.queries_logged else db.make_cursor(cursor)
    try:
        yield wrapped
    finally:
        cursor.close()


@dataclass(frozen=True)
class _Merge:
    """One table's part of a merge statement (see _merge_sql)."""

    name: str
    model: type
    columns: tuple[str, ...]  # the first two are the key: (parent, external_id)
    # When a held row is rewritten ({t} the held row, {s} ours); default: if any differs.
    changed: str = ""
    # Columns given as an earlier part's external_id, to be turned into its id.
    refs: tuple[tuple[str, str], ...] = ()
    every_id: bool = False  # answer the ids of held rows too, not only of written ones
    answered: bool = True
    marked: bool = False  # written rows go to the backlog (their connection: a parameter)
    trailing: tuple[str, ...] = ()  # columns a row puts last, after its JSON columns


_PAGE = (
    _Merge("p", Project, ("connection_id", "external_id", "name"), every_id=True,
           answered=False),
    _Merge("e", Environment, ("connection_id", "external_id", "name", "project_id"),
           refs=(("project_id", "p"),), every_id=True, answered=False),
    # A run is rewritten only if ours is not older and differs (its fingerprint).
    _Merge("r", Run, tuple(RUN_COLUMNS),
           changed="{t}.observed_at <= {s}.observed_at AND {t}.fingerprint <> {s}.fingerprint",
           refs=(("project_id", "p"), ("environment_id", "e")), marked=True,
           trailing=("fingerprint", "observed_at", "updated_at")),
    # Only jobs of runs written this time: their run_id joins the runs' answer.
    _Merge("j", Job, tuple(JOB_COLUMNS), refs=(("run_id", "r"), ("environment_id", "e")),
           answered=False),
)


def _merge_pg(parts: tuple[_Merge, ...], rows: list[list[tuple]],
              connection_id: int | None = None) -> tuple[str, list]:
    """The statement merging `rows` (a list of rows per part) and its parameters
    (`connection_id`: whose backlog a marked part's rows go to).

    The rows of a part travel as one JSON document (an array of arrays): one parameter,
    bound by the server and parsed once by PostgreSQL. A part's rows are tuples in the
    order of its columns, timestamps as ISO text, encoded here in one go; or, for a
    part with JSON columns (runs), each row already encoded in its layout (`_run_json`:
    encoded once, and the fingerprint hashed from that text).
    """
    sql, layouts = _merge_sql(parts)
    params = []
    for part, (order, plain), part_rows in zip(parts, layouts, rows, strict=True):
        if plain == len(order):
            params.append(_dumps([[row[i] for i in order] for row in part_rows]))
        else:
            params.append(f"[{','.join(part_rows)}]")
        if part.marked:
            params.append(connection_id)
    return sql, params


@functools.cache
def _merge_sql(parts: tuple[_Merge, ...]) -> tuple[str, list[tuple[list[int], int]]]:
    """One statement merging `parts` in order, answering (part, id, external_id) rows,
    and each part's row layout: column order, and how many plain columns lead.

    Each table is merged by an UPDATE of the rows held that differ and an INSERT of
    the rows not held (ON CONFLICT still, for a row inserted meanwhile by someone
    else). One INSERT ... ON CONFLICT for all would draw an id from the sequence for
    every row, held ones included: ids would leap by a page a pass. A row that did
    not change is not written at all: no dead row, no updated_at moved (what live
    pages poll). Data-modifying CTEs see one snapshot: a row the UPDATE rewrites is
    held in it, so the INSERT's NOT EXISTS skips it; a part refers to the ids an
    earlier one answered (jobs to their runs) through that part's RETURNING.
    """
    quote = db.ops.quote_name
    ctes, answers, layouts = [], [], []
    for part in parts:
        refs = dict(part.refs)
        fields = {f.column: f for f in part.model._meta.concrete_fields}
        table, n = part.model._meta.db_table, part.name
        cols = [quote(c) for c in part.columns]
        key, values = cols[:2], cols[2:]
        json_columns = {c for c in part.columns
                        if fields[c].get_internal_type() == "JSONField"}
        order = sorted(range(len(cols)), key=lambda i: (
            part.columns[i] in part.trailing, part.columns[i] in json_columns))
        layouts.append((order, len(order) - len(json_columns)))
        picked, joins = [], []
        for i, (c, q) in enumerate(zip(part.columns, cols, strict=True)):
            at = order.index(i)
            if c in refs:
                # An external id of the referenced part's: its answer gives the id. The
                # parent (the first column) must have been answered: an inner join.
                picked.append(f"{c}_ref.id AS {q}")
                joins.append(f"{'LEFT ' if i else ''}JOIN {refs[c]}_ids AS {c}_ref"
                             f" ON {c}_ref.external_id = u.e ->> {at}")
            elif c in json_columns:
                picked.append(f"u.e -> {at} AS {q}")
            else:
                picked.append(f"(u.e ->> {at})::{fields[c].db_type(db)} AS {q}")
        match = " AND ".join(f"t.{c} = u.{c}" for c in key)
        differs = part.changed or (
            f"ROW({', '.join('{t}.' + c for c in values)}) IS DISTINCT FROM "
            f"ROW({', '.join('{s}.' + c for c in values)})")
        held = (f"SELECT s.held AS id, s.external_id FROM {n}_s AS s"  # noqa: S608
                " WHERE s.held IS NOT NULL" if part.every_id
                else f"SELECT * FROM {n}_upd")  # noqa: S608
        # Every name in these statements is an identifier of ours; values are parameters.
        # Rows held are looked up one by one through the key's index (`held`), and
        # updated by id: a join would let the planner scan the whole table for a page
        # whenever its statistics are stale, as they are while a first sync fills it.
        ctes += [
            f"{n}_s AS (SELECT u.*, (SELECT t.id FROM {table} AS t WHERE {match}) AS held"  # noqa: S608
            f" FROM (SELECT {', '.join(picked)} FROM jsonb_array_elements(%s::jsonb)"
            f" AS u(e) {' '.join(joins)}) AS u)",
            f"{n}_upd AS (UPDATE {table} AS t SET "  # noqa: S608
            + ", ".join(f"{c} = s.{c}" for c in values)
            + f" FROM {n}_s AS s WHERE t.id = s.held AND {differs.format(t='t', s='s')}"  # noqa: S608
            f" AND t.id = ANY(ARRAY(SELECT held FROM {n}_s WHERE held IS NOT NULL))"
            f" RETURNING t.id, t.external_id)",
            # ON CONFLICT only meets rows inserted since this statement's snapshot.
            f"{n}_ins AS (INSERT INTO {table} AS t ({', '.join(cols)})"  # noqa: S608
            f" SELECT {', '.join(cols)} FROM {n}_s AS s WHERE s.held IS NULL"
            f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in values)
            + (f" WHERE {differs.format(t='t', s='excluded')}" if part.changed else "")
            + " RETURNING t.id, t.external_id)",
            f"{n}_ids AS ({held} UNION ALL SELECT * FROM {n}_ins)",  # noqa: S608
        ]
        if part.answered:
            answers.append(f"SELECT '{n}', id, external_id FROM {n}_ids")  # noqa: S608
        if part.marked:  # in the backlog of derived work, in the rows' own transaction
            ctes.append(f"{n}_mark AS (INSERT INTO {_BACKLOG} (connection_id, run_id)"  # noqa: S608
                        f" SELECT %s, id FROM {n}_ids)")
    return f"WITH {', '.join(ctes)} {' UNION ALL '.join(answers)}", layouts


def _dumps(value) -> str:
    """JSON text for the page statement. orjson encodes a page several times faster
    than the standard library (whose re-encoding of the runs' raw payloads was a third
    of a pass's own CPU) and writes NaN, which PostgreSQL refuses, as null; what it
    cannot encode (an integer past 64 bits from a provider) the standard encoder does,
    non-finite numbers written as null there too."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # (orjson.JSONEncodeError is one)
        return json.dumps(_finite(value), separators=(",", ":"), allow_nan=False)


def _finite(value):
    """`value` with NaN and the infinities as None, as orjson writes them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _iso(value: datetime | None) -> str | None:
    return value and value.isoformat()


# A status's stored value (a Status member hashes as its value; anything else fails).
_STATUS = {status.value: status.value for status in Status}


def _run_content(connection_id, r: RunData, project, environment) -> tuple:
    """A run's columns up to the fingerprint (RUN_COLUMNS' order): its JSON columns as
    Python values, its timestamps as datetimes."""
    return (
        connection_id,
        r.external_id[:200],
        r.locator,
        project,
        environment,
        r.pipeline_id[:200],
        r.pipeline_name[:200],
        r.name[:300],
        _STATUS[r.status],
        r.raw_status[:64],
        r.version[:200],
        r.branch[:200],
        r.commit[:64],
        r.triggered_by[:200],
        r.created_at or r.observed_at,
        r.started_at,
        r.finished_at,
        r.cancelled_by[:200],
        r.cancel_comment,
        r.web_url if r.web_url.startswith(("https://", "http://")) else "",
        r.raw,
    )


_LOCATOR, _CREATED, _RAW = (RUN_COLUMNS.index(c) for c in ("locator", "created_at", "raw"))
_TIMES = range(_CREATED, _CREATED + 3)  # created_at, started_at, finished_at
# The run part's layout up to the fingerprint: plain columns, then locator and raw.
_RUN_LAYOUT = [*(i for i in range(_RAW) if i != _LOCATOR), _LOCATOR, _RAW]


def _run_json(connection_id, r: RunData, now: str) -> str:
    """A run as the page's statement reads it (`_PAGE`'s layout: plain columns, then
    locator and raw, then fingerprint, observed_at, updated_at), encoded once; the
    fingerprint hashes that text up to itself."""
    row = _run_content(connection_id, r, r.project.external_id if r.project else None,
                       r.environment.external_id if r.environment else None)
    body = _dumps([_iso(row[i]) if i in _TIMES else row[i] for i in _RUN_LAYOUT])
    fingerprint = hashlib.blake2b(body.encode(), digest_size=16).hexdigest()
    return f'{body[:-1]},"{fingerprint}","{r.observed_at.isoformat()}","{now}"]'


def _run_row(connection_id, r: RunData, project_ids, env_ids, at, now) -> tuple:
    """A run's row for the staged write (SQLite)."""
    row = list(_run_content(
        connection_id, r, project_ids.get(r.project.external_id) if r.project else None,
        env_ids.get(r.environment.external_id) if r.environment else None))
    row[_LOCATOR], row[_RAW] = json.dumps(row[_LOCATOR]), json.dumps(row[_RAW])
    for i in _TIMES:
        row[i] = at(row[i])
    fingerprint = hashlib.blake2b(repr(tuple(row)).encode(), digest_size=16).hexdigest()
    return (*row, fingerprint, at(r.observed_at), now)


def _upsert(cursor, model, columns: list[str], key: list[str], rows: list[tuple],
            changed_only: bool = False) -> dict[str, int]:
    """Insert or update `rows`; return external_id -> pk of those written. (SQLite:
    PostgreSQL merges a page in one statement, see _merge_sql.)

    The ORM's bulk_create spends ~1 ms a run turning models into SQL literals; this
    stages plain tuples and merges them with two statements: an UPDATE of the rows we
    hold, then an INSERT of the others only (no id drawn for rows held). With
    `changed_only`, a stored row is left alone when it was observed later than ours
    or holds the same content (fingerprint).
    """
    if not rows:
        return {}
    quote = db.ops.quote_name
    table, staging = model._meta.db_table, f"staging_{model._meta.db_table}"
    cols = ", ".join(quote(c) for c in columns)
    # A temporary table lives as long as the database session, visible to it alone.
    # Every name in these statements is an identifier of ours; values travel as parameters.
    cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} AS "  # noqa: S608
                   f"SELECT {cols} FROM {table} WHERE 1 = 0")
    cursor.execute(f"DELETE FROM {staging}")  # noqa: S608
    marks = ", ".join(["%s"] * len(columns))
    cursor.executemany(f"INSERT INTO {staging} ({cols}) VALUES ({marks})", rows)  # noqa: S608
    matches = " AND ".join(f"{table}.{quote(c)} = s.{quote(c)}" for c in key)
    changed = (f" AND {table}.observed_at <= {{new}}.observed_at"
               f" AND {table}.fingerprint <> {{new}}.fingerprint") if changed_only else ""
    cursor.execute(
        f"UPDATE {table} SET "  # noqa: S608
        + ", ".join(f"{quote(c)} = s.{quote(c)}" for c in columns if c not in key)
        + f" FROM {staging} AS s WHERE {matches}{changed.format(new='s')}"
        f" RETURNING {table}.id, {table}.external_id"
    )
    written = {external_id: pk for pk, external_id in cursor.fetchall()}
    # ON CONFLICT still: a row someone else inserted since the UPDATE is merged, not lost.
    updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in columns if c not in key)
    cursor.execute(
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {staging} AS s "  # noqa: S608
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {matches}) "
        f"ON CONFLICT ({', '.join(quote(c) for c in key)}) DO UPDATE SET {updates}"
        + (f" WHERE {changed.format(new='excluded')[5:]}" if changed_only else "")
        + " RETURNING id, external_id"
    )
    written.update({external_id: pk for pk, external_id in cursor.fetchall()})
    return written


# --- one pass ----------------------------------------------------------------------


_END = object()


def read_ahead(pages: Iterable[list], depth: int = 4, idle=None,
               idle_every: float = 0.25) -> Iterator[list[list]]:
    """Iterate `pages` while a thread already fetches the next ones.

    A pass is mostly waiting: on the provider for a page, then on the database to
    write it. Fetching ahead overlaps the two, so a pass takes about as long as the
    slower of them instead of their sum. Yields every page fetched so far (at least
    one) together: when writing is the slower side, writes grow to several pages and
    their fixed cost is shared. The thread only does HTTP (no database); its errors
    are raised here, in order, after the pages it fetched before them. While waiting
    for a page, `idle` is called every `idle_every` seconds (the lease's keeper).
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fetch() -> None:
        try:
            for page in pages:
                if not put((page, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((_END, exc))

    thread = threading.Thread(target=fetch, name="sync-read-ahead", daemon=True)
    thread.start()
    try:
        ready: list[list] = []
        while True:
            if ready:
                page, error = buffer.get_nowait()
            else:
                try:
                    page, error = buffer.get(timeout=idle_every)
                except queue.Empty:
                    if idle:
                        idle()
                    continue
            if page is _END:
                if ready:
                    yield ready
                if error is not None:
                    raise error
                return
            ready.append(page)
            if buffer.empty():
                yield ready
                ready = []
    finally:
        stop.set()  # the consumer stopped early (an error, a time limit): stop fetching
        thread.join(timeout=1)


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
    started = time.monotonic()
    try:
        connection = Connection.objects.get(pk=connection_id)
        newest = _sync_pass(connection, LeaseKeeper(connection_id, owner), result)
    except LeaseLost:
        # Our lease lapsed and another worker is syncing: leave the pass (and the
        # cursor) to it; what we wrote is idempotent.
        logger.warning("sync of connection %s stopped: its lease was taken over", connection_id)
        result.skipped = True
        return result
    except Exception as exc:
        _record_failure(connection_id, exc, _counted(result, started))
        raise
    else:
        cursor = dict(connection.cursor)
        if newest:
            cursor["high_water"] = newest.isoformat()
        now = timezone.now()
        if result.client is not None:
            # Only a pass that went through leaves what the next one may skip by.
            cursor["listing"] = result.client.change_state
            cursor["listing_key"] = _listing_key(connection)
        # updated_at is what live pages poll. A quiet pass (nothing written, no error
        # cleared) moves it only once a heartbeat, which is enough to refresh "last
        # synced" and stale warnings without every open page re-rendering every pass.
        heartbeat = now - timedelta(seconds=settings.RUNBOARD_LIVE_HEARTBEAT)
        visible = (Q(last_error__gt="") | Q(last_success_at__isnull=True)
                   | Q(updated_at__lt=heartbeat))
        # next_attempt_at only holds back a connection after an error; how soon the next
        # pass comes is the scheduler's budget (dashboard/schedule.py).
        Connection.objects.filter(pk=connection_id).update(
            cursor=cursor, last_success_at=now, last_error="", next_attempt_at=None,
            runs_synced=F("runs_synced") + result.runs_written, **_counted(result, started),
            updated_at=now if result.runs_written else Case(
                When(visible, then=Value(now)), default=F("updated_at")),
        )
        data_changed()
    finally:
        try:
            release_lease(connection_id, owner)
        except DatabaseError:  # the lease expires on its own
            logger.exception("could not release the lease of connection %s", connection_id)
    return result


def _sync_pass(connection: Connection, keep_lease: LeaseKeeper,
               result: SyncResult) -> datetime | None:
    high_water = parse_time(connection.cursor.get("high_water"))
    since = high_water - OVERLAP if high_water else None
    seen: set[str] = set()
    newest = high_water
    with connection.client() as client:
        result.client = client
        client.change_state, client.full_read = _listing(connection)
        client.reread_every = settings.RUNBOARD_FULL_READ_EVERY
        if since:
            client.known_runs = dict(connection.runs.filter(created_at__gte=since)
                                     .values_list("external_id", "raw_status"))
        derived_at = time.monotonic()

        def derive_written() -> None:
            nonlocal derived_at
            derived_at = time.monotonic()
            derive(connection.pk)
            result.derive_seconds += time.monotonic() - derived_at

        for pages in read_ahead(client.list_runs(since=since), idle=keep_lease):
            runs = [run for page in pages for run in page]
            result.pages += len(pages)
            result.runs_written += upsert_runs(connection, runs, derive_now=False)
            if result.runs_written:
                ensure_statistics()
            seen.update(r.external_id for r in runs)
            created = [r.created_at for r in runs if r.created_at]
            if created and (newest is None or max(created) > newest):
                newest = max(created)
            if time.monotonic() - derived_at >= DERIVE_EVERY:
                derive_written()
            keep_lease()
        # Fast path: runs still active that fell outside the incremental window are
        # fetched one by one, so a long-running deployment never goes stale.
        refresh = connection.runs.to_refresh().values_list("id", "external_id", "locator")
        for run_id, external_id, locator in refresh:
            if external_id in seen:
                continue
            keep_lease()
            try:
                result.runs_written += upsert_runs(connection, [client.get_run(locator)],
                                                   derive_now=False)
            except NotFound:
                # Deleted at the provider: say so rather than show it running forever.
                logger.info("%s: run %s no longer exists at the provider", connection,
                            external_id)
                # No fingerprint: a listing that shows the run again rewrites it.
                with transaction.atomic():
                    connection.runs.filter(external_id=external_id).update(
                        status=Status.UNKNOWN, raw_status=GONE_FROM_PROVIDER, fingerprint="",
                        updated_at=timezone.now())
                    DeriveBacklog.objects.create(connection_id=connection.pk, run_id=run_id)
                data_changed()
        # Whatever this pass wrote (and a dead pass left) is derived before it ends.
        derive_written()
        result.requests = client.requests_made
        result.rate_limit_seen = client.rate_limit.limit
        result.rate_limit = client.rate_limit
    return newest


# The tables a first pass bulk-loads. Until PostgreSQL holds statistics on them
# (autovacuum's first analyze comes a minute or more later), the planner cannot tell
# the key's unique index from (connection, created_at) and may look each run of a page
# up by scanning its connection's rows: a first sync of 10,000 runs took three times
# as long (bench/sync.py on a new database). An ANALYZE gives the planner statistics.
_ANALYZED = [model._meta.db_table for model in (Run, Job, Environment, Project)]
_statistics_held = False


def ensure_statistics() -> None:
    """ANALYZE the synced tables, once they hold runs, if PostgreSQL has no statistics
    on them yet: one cheap check per worker process."""
    global _statistics_held
    if _statistics_held or db.vendor != "postgresql":
        return
    with db.cursor() as cursor:
        # The runs' key is what a page looks up most; their tables are analyzed together.
        cursor.execute("SELECT 1 FROM pg_stats WHERE schemaname = current_schema()"
                       " AND tablename = %s AND attname = 'connection_id'", [_ANALYZED[0]])
        if cursor.fetchone() is None:
            cursor.execute(f"ANALYZE {', '.join(_ANALYZED)}")
    _statistics_held = True


def _listing_key(connection: Connection) -> str:
    """What the remembered listing was read from: another address or scope (an edited
    connection) makes it worthless."""
    where = json.dumps([connection.provider, connection.base_url, connection.scope],
                       sort_keys=True, default=str)
    return hashlib.blake2b(where.encode(), digest_size=8).hexdigest()


def _listing(connection: Connection) -> tuple[dict, bool]:
    """What the last successful pass left for the provider to skip unchanged things by,
    and whether this pass reads everything anyway: with no state, or for an edited
    connection. The safety net should a list-level signal ever miss a change is no
    periodic full read (one burst that holds the budget back) but the provider's
    rotation (`Provider.rotation`): a few skipped things re-read each pass, every one
    within RUNBOARD_FULL_READ_EVERY."""
    cursor = connection.cursor
    state = cursor.get("listing")
    if (not isinstance(state, dict) or not state
            or cursor.get("listing_key") != _listing_key(connection)):
        return {}, True
    return state, False


def remember_read(connection_id: int, learned: dict[str, dict]) -> None:
    """Merge what a webhook read learned (`Provider.learned`, written) into the listing
    the last pass left, so that the next pass skips what the read has read. A pass that
    ends meanwhile writes its own listing over it: the thing is read again, never missed."""
    if not learned:
        return
    with transaction.atomic():
        connection = (Connection.objects.select_for_update()
                      .only("provider", "base_url", "scope", "cursor").get(pk=connection_id))
        listing, full_read = _listing(connection)
        if full_read:  # no pass left a listing (for this address): nothing to skip by
            return
        for part, values in learned.items():
            if isinstance(listing.get(part), dict):
                listing[part].update(values)
        Connection.objects.filter(pk=connection_id).update(
            cursor={**connection.cursor, "listing": listing})


def _counted(result: SyncResult, started: float) -> dict:
    """This pass added to the connection's counters (read by dashboard/metrics.py), as
    F() increments to go into the update the pass makes anyway."""
    client = result.client
    return {
        "sync_passes": F("sync_passes") + 1,
        "sync_seconds": F("sync_seconds") + (time.monotonic() - started),
        "provider_requests": F("provider_requests") + (client.requests_made if client else 0),
        "provider_rate_limited": F("provider_rate_limited")
        + (client.rate_limited_responses if client else 0),
    }


def _record_failure(connection_id: int, exc: Exception, counted: dict) -> None:
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
            poll_reason="rate limited: retrying" if isinstance(exc, RateLimited)
            else "retrying after an error",
            updated_at=now, sync_failures=F("sync_failures") + 1, **counted,
        )
        data_changed()
    except DatabaseError:  # the database itself is what failed; the log has it
        logger.exception("could not record the failure of connection %s", connection_id)
