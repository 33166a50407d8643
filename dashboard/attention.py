"""The attention strip on every page: what needs a release manager now.

Counts are kept in the cache per data version (like the run list), so a page pays
for them once per change, not once per view. The 24-hour window and staleness also
move with the clock alone: a five-minute bucket joins the version for them. They are
read with the data version, in the same statement (`read_with_version`), and the
strip's markup is written in Python once per process for each state (`strip_html`).

Each count stops at COUNT_CAP (shown "99+"): whoever renders a page first after a
change pays for the counts, and an exact count of a status over a million runs is a
scan of a hundred thousand index entries, where a capped one reads a hundred.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import connection as db
from django.db.models import IntegerField
from django.db.models.expressions import RawSQL
from django.http import HttpResponse
from django.template.loader import render_to_string
from django.urls import get_script_prefix, get_urlconf
from django.utils import timezone
from django.utils.html import escape

from dashboard.models import Run, data_version
from dashboard.prepared import execute_prepared
from dashboard.templatetags.runboard import route
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
            with db.cursor() as cursor:
                execute_prepared(cursor, "runboard_attention", f"SELECT {_state_sql()}",
                                 _state_params(cursor.db.ops))
                found = _store(key, *cursor.fetchone())
        else:
            found = _store_connections(key, connections)
    return {**found, "version": current}


def known() -> bool:
    """Whether the counts for the current version are cached (read with the version)."""
    return cache.get(f"runboard:attention:{version()}") is not None


def _store_connections(key: str, connections) -> dict:
    """The counts from the enabled `connections` (which carry `waiting` and `failed`
    when read `with_counts`), cached under `key`."""
    if connections and hasattr(connections[0], "waiting"):
        waiting, failed = connections[0].waiting, connections[0].failed
    else:
        waiting, failed = capped_counts(*_counted())
    return _store(key, waiting, failed, sum(1 for c in connections if c.is_stale))


def label(count: int) -> str:
    """A count as the strip shows it: capped at COUNT_CAP ("99+")."""
    return f"{COUNT_CAP}+" if count > COUNT_CAP else str(int(count))


def _store(key: str, waiting: int, failed: int, stale: int) -> dict:
    """The counts and their labels, cached under `key`."""
    found = {"waiting": waiting, "failed": failed, "stale": stale,
             "total": waiting + failed + stale}
    found["labels"] = {name: label(found[name]) for name in ("waiting", "failed", "total")}
    cache.set(key, found, settings.RUNBOARD_FRAGMENT_CACHE_SECONDS)
    return found


# How many enabled connections are stale: Connection.is_stale in SQL, so that the strip's
# state is a row of numbers (reading the connections as JSON and building each one's
# state in Python took a third of the statement's time). `%s`: the clock's bounds.
STALE_SQL = """(SELECT COUNT(*) FROM dashboard_connection WHERE enabled AND CASE
    WHEN last_success_at IS NULL THEN last_error <> ''
    ELSE (last_success_at < %s AND (next_poll_at IS NULL OR next_poll_at < %s))
      OR last_success_at < %s OR COALESCE(last_error_at > last_success_at, false) END)"""


@functools.cache
def _state_sql() -> str:
    """The strip's counts as three columns (waiting, failed, stale), compiled once."""
    (waiting, _), (failed, _) = _counts_sql()
    return f"({waiting}), ({failed}), {STALE_SQL}"


def _state_params(ops) -> list:
    """`_state_sql`'s parameters at this moment: the 24-hour bound, and staleness's
    (a pass older than RUNBOARD_STALE_AFTER with the planned one overdue by as long,
    or older than that plus RUNBOARD_POLL_MAX), as Connection.is_stale reckons them;
    `ops`: the database's operations (it writes times its own way)."""
    now = timezone.now()
    grace = now - timedelta(seconds=settings.RUNBOARD_STALE_AFTER)
    too_old = grace - timedelta(seconds=settings.RUNBOARD_POLL_MAX)
    (_, waiting), (_, failed) = _counts_sql()
    grace, too_old = ops.adapt_datetimefield_value(grace), ops.adapt_datetimefield_value(too_old)
    return [*_now(waiting, now), *_now(failed, now), grace, grace, too_old]


def read_with_version(version_sql: str, version_of) -> str:
    """The data version (`version_sql`'s columns, made one by `version_of`), read in
    one query with the strip's counts, which are cached for that version:
    `data_version` calls this when it is not cached, and every page that calls it
    shows the strip next."""
    with db.cursor() as cursor:
        execute_prepared(cursor, "runboard_version", f"SELECT {version_sql}, {_state_sql()}",
                         _state_params(cursor.db.ops))
        *changed, waiting, failed, stale = cursor.fetchone()
    current = version_of(*changed)
    _store(f"runboard:attention:{current}-{int(time.time() // CLOCK_BUCKET)}",
           waiting, failed, stale)
    return current


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


def _now(params, now=None) -> list:
    """Compiled parameters with the 24-hour bound (their only time) moved to now."""
    since = (now or timezone.now()) - timedelta(days=1)
    return [since if isinstance(p, datetime) else p for p in params]


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


class LazyCounts(dict):
    """`counts()`, read when a template first looks in it: a dict, so that every lookup
    after that costs a dict's (a SimpleLazyObject proxies each one, and every page
    makes a dozen)."""

    def __init__(self, read):
        super().__init__()
        self._read = read

    def _fill(self) -> None:
        if self._read is not None:
            read, self._read = self._read, None
            self.update(read())

    def __missing__(self, key):
        if self._read is None:
            raise KeyError(key)
        self._fill()
        return self[key]

    def __len__(self) -> int:
        self._fill()
        return super().__len__()

    def __iter__(self):
        self._fill()
        return super().__iter__()

    def __contains__(self, key) -> bool:
        self._fill()
        return super().__contains__(key)


def context(request):
    """Template context: `attention`, computed only if a template reads it."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    # A view that read the enabled connections leaves them on the request (the run list).
    return {"attention": LazyCounts(
        lambda: counts(connections=getattr(request, "runboard_connections", None)))}


def strip_html(attention) -> str:
    """The strip's markup for `counts()`, written here rather than by a template (an
    include on every page cost more than the rest of the header), once per process for
    each state and URL configuration (a page after a change shows the one before it)."""
    return _strip_html(attention["waiting"], attention["failed"], attention["stale"],
                       attention["total"], attention["version"], get_urlconf(),
                       get_script_prefix())


@functools.lru_cache(maxsize=64)
def _strip_html(waiting: int, failed: int, stale: int, total: int, current: str,
                urlconf, prefix: str) -> str:
    label_of = {"waiting": label(waiting), "failed": label(failed), "total": label(total)}
    attention, inbox, runs, connections = (
        route(name) for name in ("attention", "inbox", "run-list", "connections"))  # escaped
    return (
        f'<div id="attention" class="attention" data-total="{int(total)}"'
        f' data-label="{label_of["total"]}"\n'
        f'     hx-get="{attention}?v={escape(current)}" hx-trigger="every 5s"\n'
        '     hx-swap="outerHTML" aria-label="Needs attention">\n'
        f'  <a href="{inbox}" class="attention-item{" hot-wait" if waiting else ""}"'
        f' data-count="waiting"><strong>{label_of["waiting"]}</strong> waiting for a person</a>\n'
        f'  <a href="{runs}?group=failed&amp;range=24h"'
        f' class="attention-item{" hot-fail" if failed else ""}" data-count="failed">'
        f'<strong>{label_of["failed"]}</strong> failed in 24 h</a>\n'
        f'  <a href="{connections}" class="attention-item{" hot-fail" if stale else ""}"'
        f' data-count="stale"><strong>{int(stale)}</strong>'
        f' stale connection{"" if stale == 1 else "s"}</a>\n'
        '  <span id="live-state" class="live-state muted small" data-state="live"'
        ' aria-live="polite">live</span>\n'
        '</div>\n')


@login_required
def strip(request):
    """The strip alone, for its live poll: 204 while nothing changed. Its template
    without the request: the strip reads nothing the context processors add."""
    current = version()
    if request.htmx and request.GET.get("v") == current:
        return HttpResponse(status=204)
    return HttpResponse(render_to_string("partials/attention.html",
                                         {"attention": counts(current)}))
