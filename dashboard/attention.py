"""The attention strip on every page: what needs a release manager now.

Counts are kept in the cache per data version (like the run list), so a page pays
for them once per change, not once per view. The 24-hour window and staleness also
move with the clock alone: a five-minute bucket joins the version for them.

Each count stops at COUNT_CAP (shown "99+"): whoever renders a page first after a
change pays for the counts, and an exact count of a status over a million runs is a
scan of a hundred thousand index entries, where a capped one reads a hundred.
"""

from __future__ import annotations

import functools
import time
import weakref
from datetime import datetime, timedelta
from types import SimpleNamespace

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import connection as db
from django.db.models import IntegerField
from django.db.models.expressions import RawSQL
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.functional import SimpleLazyObject

from dashboard.models import Connection, Run, data_version
from providers.base import Status

CLOCK_BUCKET = 300  # seconds: how stale "in the last 24 h" may get while nothing changes
COUNT_CAP = 99  # a count above it is shown as "99+"


def version() -> str:
    return f"{data_version()}-{int(time.time() // CLOCK_BUCKET)}"


def counts(current: str | None = None, connections=None) -> dict:
    """{waiting, failed, stale, total, labels} for the data version `current`;
    `connections`: the enabled ones, if the caller has read them already."""
    current = current or version()
    key = f"runboard:attention:{current}"
    found = cache.get(key)
    if found is None:
        if connections is None:
            # The connections and both counts in one query.
            sql, params = _connections_sql()
            connections = list(Connection.objects.raw(sql, _now(params)))
        found = _store(key, connections)
    return {**found, "version": current}


def known() -> bool:
    """Whether the counts for the current version are cached (read with the version)."""
    return cache.get(f"runboard:attention:{version()}") is not None


def _store(key: str, connections) -> dict:
    """The counts from the enabled `connections` (which carry `waiting` and `failed`
    when read `with_counts`), cached under `key`."""
    if connections and hasattr(connections[0], "waiting"):
        found = {"waiting": connections[0].waiting, "failed": connections[0].failed}
    else:
        found = dict(zip(("waiting", "failed"), capped_counts(*_counted()), strict=True))
    found["stale"] = sum(1 for c in connections if c.is_stale)
    found["total"] = sum(found.values())
    found["labels"] = {name: f"{COUNT_CAP}+" if found[name] > COUNT_CAP else str(found[name])
                       for name in ("waiting", "failed", "total")}
    cache.set(key, found, settings.RUNBOARD_FRAGMENT_CACHE_SECONDS)
    return found


# What staleness asks of a connection (Connection.is_stale).
STATE = ("enabled", "last_success_at", "last_error", "last_error_at", "next_poll_at")


def read_with_version(version_sql: str, version_of) -> str:
    """The data version (`version_sql`'s columns, made one by `version_of`), read in
    one query with the enabled connections' state and both counts (as JSON), which are
    cached for that version: `data_version` calls this when it is not cached, and every
    page that calls it shows the strip next."""
    sql, params = _connections_sql()
    with db.cursor() as cursor:
        execute_prepared(cursor, "runboard_version",
                         f"SELECT {version_sql}, (SELECT json_agg(c) FROM ({sql}) AS c)",  # noqa: S608 (our SQL and Django's)
                         _now(params))
        *changed, rows = cursor.fetchone()
    current = version_of(*changed)
    # What `is_stale` reads, not models (building one cost more than its row's read).
    connections = [SimpleNamespace(
        waiting=row["waiting"], failed=row["failed"], is_stale=Connection.is_stale.fget(
            SimpleNamespace(**{name: datetime.fromisoformat(row[name])
                               if name.endswith("_at") and row[name] else row[name]
                               for name in STATE})))
        for row in rows or []]
    _store(f"runboard:attention:{current}-{int(time.time() // CLOCK_BUCKET)}", connections)
    return current


# The raw connections on which each statement is prepared (a new connection has none).
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def execute_prepared(cursor, name: str, sql: str, params) -> None:
    """Execute `sql` (Django's placeholders) as a statement prepared once per database
    connection: planning it took longer than running it (about 0.2 ms of 0.5 ms), and
    every page after a change runs it. Elsewhere than PostgreSQL, plainly."""
    if db.vendor != "postgresql":
        cursor.execute(sql, params)
        return
    raw = db.connection
    done = _prepared.setdefault(raw, set())
    if name not in done:
        # Django's SQL: %s placeholders, a literal % doubled.
        *parts, last = sql.split("%s")
        numbered = "".join(f"{part}${n}" for n, part in enumerate(parts, 1)) + last
        cursor.execute(f"PREPARE {name} AS {numbered.replace('%%', '%')}")
        done.add(name)
    cursor.execute(f"EXECUTE {name}({', '.join(['%s'] * len(params))})" if params
                   else f"EXECUTE {name}", params)


def _counted():
    """What the strip counts: waiting runs, and runs failed in the last 24 hours."""
    since = timezone.now() - timedelta(days=1)
    return (Run.objects.filter(status=Status.WAITING),
            Run.objects.filter(status=Status.FAILED, created_at__gte=since))


@functools.cache
def _counts_sql() -> tuple[tuple[str, list], tuple[str, list]]:
    """The capped counts' SQL, compiled once per process (the ORM spent longer compiling
    it on every page than the database spent running it); the 24-hour bound's
    parameter is put in per request (`_now`)."""
    return tuple(_capped_sql(queryset) for queryset in _counted())


def _now(params) -> list:
    """Compiled parameters with the 24-hour bound (their only time) moved to now."""
    since = timezone.now() - timedelta(days=1)
    return [since if isinstance(p, datetime) else p for p in params]


@functools.cache
def _connections_sql() -> tuple[str, tuple]:
    """The enabled connections (what staleness needs) with both counts, compiled once."""
    return with_counts(Connection.objects.filter(enabled=True).only(
        "enabled", "last_success_at", "last_error", "last_error_at", "next_poll_at",
    )).query.sql_with_params()


def with_counts(connections):
    """`connections` annotated with the strip's counts, `waiting` and `failed`: the same
    on every row (subqueries the database runs once, not per row), so that a page that
    reads the connections anyway gets the counts without a query of their own."""
    (waiting, _), (failed, _) = _counts_sql()
    waiting_params, failed_params = (_now(params) for _, params in _counts_sql())
    return connections.annotate(
        waiting=RawSQL(waiting, waiting_params, output_field=IntegerField()),  # noqa: S611
        failed=RawSQL(failed, failed_params, output_field=IntegerField()))  # noqa: S611


def _capped_sql(queryset) -> tuple[str, list]:
    """SQL counting the rows of `queryset` up to COUNT_CAP + 1: it reads at most that
    many index entries, whatever the size of the table. Only Django's SQL goes in."""
    sql, params = queryset.order_by().values("pk")[:COUNT_CAP + 1].query.sql_with_params()
    return f"SELECT COUNT(*) FROM ({sql}) AS counted", list(params)  # noqa: S608


def capped_counts(*querysets) -> list[int]:
    """The capped counts of `querysets`, in one query."""
    parts, params = [], []
    for queryset in querysets:
        sql, more = _capped_sql(queryset)
        parts.append(f"({sql})")
        params.extend(more)
    with db.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts), params)
        return list(cursor.fetchone())


def context(request):
    """Template context: `attention`, computed only if a template reads it."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    # A view that read the enabled connections leaves them on the request (the run list).
    return {"attention": SimpleLazyObject(
        lambda: counts(connections=getattr(request, "runboard_connections", None)))}


@login_required
def strip(request):
    """The strip alone, for its live poll: 204 while nothing changed."""
    current = version()
    if request.htmx and request.GET.get("v") == current:
        return HttpResponse(status=204)
    return render(request, "partials/attention.html", {"attention": counts(current)})
