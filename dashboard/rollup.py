"""The trends rollup: per pipeline, environment and day, what /trends/ needs, kept
up to date by the sync's write path.

Why a rollup, and why this one. The trends page shows, over 7 and 30 days,
deployments, success rate, median and p90 duration, change failure rate and time to
restore per pipeline and environment. Computed from the runs, a request reads every run
of the window (tens of thousands at a run every two minutes) whatever the cache: far
over the page budget (3 x a trivial view, a few milliseconds). Computed in SQL with
window functions it still reads them all, and differently on PostgreSQL and SQLite.
So the page reads, in one query whatever the number of runs, per group: its days
(`TrendDay`: counts, for the totals and the bars; at most 30), its duration and restore
buckets summed over the window by the database (`TrendBucket`: 2 x the buckets in use,
~340 at most), and its names. This module
keeps those rows right:

- `TrendDeployment` holds each finished deployment (run id, group, finish time, ok,
  duration), narrow and indexed by (group, finish time), so a day is recomputed from
  its own deployments without an index on the runs table (which would slow every sync
  write). It also tells us where a run *was* counted, when it changes (a run that
  finishes later, a retried one that is running again).
- `record()` runs in `sync.derive`'s transaction, for a batch of runs written (the
  backlog the sync's page statements mark): it replaces their deployments and
  recomputes the days they left or entered, plus the days up to the next success after
  them (that success's time to restore depends on them). About a dozen small queries
  per batch, however many runs and groups it holds and whatever the history's size.
  The rollup lags the run list by at most about `sync.DERIVE_EVERY` during a pass, and
  is exact when the pass ends (a single write derives at once).
- `rebuild()` recomputes everything from the runs: the `trends_rollup` command, the
  migration that creates these tables, and benchmarks that load runs behind the sync.

Day boundaries are those of TIME_ZONE. A deployment counts on the day it finished (its
creation day if the provider never said when it finished), not the day it was created:
a deployment that waited two days for approval happened when it went out.

Time to restore: a run of failures in a group ended by a success restores at that
success; from the first of those failures' finish to the success's finish. It counts in
the window where the success is (whenever the failures were). A group is "failing" when
its last deployment in the window failed.

Median and p90 are exact in rank and approximate in value: durations (and times to
restore) are kept per day as a histogram of log-scale buckets (`TrendBucket`, one
row per bucket in use; not a JSON document, which the page would decode per day or
PostgreSQL would expand with a badly estimated, parallel plan), 16 per doubling of
1 + seconds, and a bucket stands for its geometric middle. So a figure shown is within
2^(1/32) - 1 < 2.2 % of (1 + the exact value in seconds): within 4 s at three
minutes, 80 s at an hour. Its rank follows the old definitions exactly (median: the
middle value, or the mean of the two middle ones; p90: the value at rank
round(0.9 (n - 1)) of n sorted). Bounded in size: ~340 buckets cover a month.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from functools import reduce

from django.db import connection as db
from django.db import transaction
from django.db.models import Max, Min, Q, Sum
from django.utils import timezone

from dashboard.models import Run, TrendBucket, TrendDay, TrendDeployment, TrendGroup
from providers.base import Status

DEPLOYED = (Status.SUCCEEDED.value, Status.FAILED.value)
BUCKETS_PER_DOUBLING = 16
# |value shown - exact| <= ERROR * (1 + exact), in seconds.
ERROR = 2 ** (1 / (2 * BUCKETS_PER_DOUBLING)) - 1


def bucket(seconds: float) -> int:
    return int(BUCKETS_PER_DOUBLING * math.log2(1 + max(0.0, seconds)))


def bucket_value(index: int) -> float:
    return 2 ** ((index + 0.5) / BUCKETS_PER_DOUBLING) - 1


def day_of(moment: datetime) -> date:
    return timezone.localtime(moment, timezone.get_default_timezone()).date()


def day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_default_timezone())


def group_key(connection_id, project_id, environment_id, pipeline_name: str) -> str:
    return f"{connection_id}:{project_id or ''}:{environment_id or ''}:{pipeline_name}"


# --- the write path ----------------------------------------------------------------


def record(rows) -> None:
    """The runs just written, as (run id, connection id, project id, environment id,
    pipeline name, status, started_at, finished_at, created_at): bring their deployments
    and the days they touch up to date. Call inside the writing transaction."""
    rows = list(rows)
    if not rows:
        return
    ids = [row[0] for row in rows]
    # Where these runs counted until now (those days change too), no longer counted there.
    touched: dict[int, list[datetime]] = defaultdict(list)
    for group_id, at in _take_deployments(ids):
        touched[group_id].append(at)
    deployed = [row for row in rows if row[5] in DEPLOYED]
    groups = _groups({group_key(*row[1:5]): row[1:5] for row in deployed})
    facts = [_deployment(row, groups[group_key(*row[1:5])]) for row in deployed]
    _insert_deployments(facts)
    for fact in facts:
        touched[fact[1]].append(fact[2])
    if touched:
        recompute(touched)


def _take_deployments(run_ids: list[int]) -> list[tuple[int, datetime]]:
    """Delete these runs' deployments; return (group, at) of each. On PostgreSQL one
    statement, the ids as one array (an IN list of a batch's thousands of ids took
    Django longer to build than the database to run)."""
    if db.vendor != "postgresql":
        found = TrendDeployment.objects.filter(run_id__in=run_ids)
        taken = list(found.values_list("group_id", "at"))
        found.delete()
        return taken
    with db.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TrendDeployment._meta.db_table}"  # noqa: S608
                       " WHERE run_id = ANY(%s) RETURNING group_id, at", [run_ids])
        return cursor.fetchall()


def _groups(keys: dict[str, tuple], group_model=TrendGroup) -> dict[str, int]:
    """key -> TrendGroup id, creating the missing ones."""
    if not keys:
        return {}
    objs = group_model.objects.bulk_create(
        [group_model(key=key, connection_id=c, project_id=p, environment_id=e,
                    pipeline_name=name) for key, (c, p, e, name) in keys.items()],
        update_conflicts=True, unique_fields=["key"], update_fields=["pipeline_name"])
    return {obj.key: obj.pk for obj in objs}


def _deployment(row, group_id: int) -> tuple:
    run_id, _, _, _, _, status, started, finished, created = row
    seconds = (finished - started).total_seconds() if started and finished else None
    return (run_id, group_id, finished or created, status == Status.SUCCEEDED.value, seconds)


def _insert_deployments(facts: list[tuple]) -> None:
    if not facts:
        return
    table = TrendDeployment._meta.db_table
    at = db.ops.adapt_datetimefield_value
    with db.cursor() as cursor:
        if db.vendor == "postgresql":  # COPY: a backfill writes a million of these
            with cursor.copy(f"COPY {table} (run_id, group_id, at, ok, seconds)"
                             " FROM STDIN") as copy:
                for fact in facts:
                    copy.write_row(fact)
        else:
            cursor.executemany(
                f"INSERT INTO {table} (run_id, group_id, at, ok, seconds)"  # noqa: S608
                " VALUES (%s, %s, %s, %s, %s)",
                [(run, group, at(moment), ok, seconds)
                 for run, group, moment, ok, seconds in facts])


def recompute(touched: dict[int, list[datetime]]) -> None:
    """Rewrite the days of each group that hold one of the given moments, and the days
    after them up to the group's next success (whose time to restore they change).
    A constant number of queries, however many groups."""
    # One writer per group at a time: two recomputing the same days would both insert them.
    list(TrendGroup.objects.select_for_update().filter(pk__in=touched).order_by("pk")
         .values_list("pk"))
    spans = {group: (day_of(min(moments)), max(moments)) for group, moments in touched.items()}
    following = dict(
        TrendDeployment.objects.filter(_any(Q(group_id=group, at__gt=last)
                                            for group, (_, last) in spans.items()), ok=True)
        .values("group_id").annotate(first=Min("at")).values_list("group_id", "first"))
    _rewrite({group: (first, day_of(following.get(group) or last) + timedelta(days=1))
              for group, (first, last) in spans.items()})


def _plainly(rows) -> list[tuple]:
    """The rows of a values_list query, on PostgreSQL with timestamps read by psycopg's
    own loader (compiled) rather than Django's (Python: most of reading a batch's
    deployments back). The same aware datetimes: Django keeps the session in UTC."""
    if db.vendor != "postgresql":
        return list(rows)
    sql, params = rows.query.sql_with_params()
    with db.cursor() as cursor:
        plain_timestamps(cursor)
        cursor.execute(sql, params)
        return cursor.fetchall()


def plain_timestamps(cursor) -> None:
    """Let this cursor (Django's, on PostgreSQL) read timestamptz with psycopg's own
    loader instead of the one Django registers."""
    import psycopg

    oid = psycopg.postgres.types["timestamptz"].oid
    cursor.cursor.adapters.register_loader(
        oid, psycopg.adapters.get_loader(oid, psycopg.pq.Format.TEXT))


def _any(conditions) -> Q:
    return reduce(operator.or_, conditions)


def _rewrite(spans: dict[int, tuple[date, date]], models=None) -> None:
    """Recompute each group's days from its first day up to (not including) its end."""
    deployment_model, day_model, bucket_model = models or (TrendDeployment, TrendDay,
                                                           TrendBucket)
    # Where each group stood as its span begins: its last day before says whether a run
    # of failures was going on, and since when.
    before = dict(day_model.objects.filter(_any(Q(group_id=group, day__lt=first)
                                                for group, (first, _) in spans.items()))
                  .values("group_id").annotate(last=Max("day")).values_list("group_id", "last"))
    failing = dict(day_model.objects.filter(_any(Q(group_id=group, day=day)
                                                 for group, day in before.items()))
                   .values_list("group_id", "failing_since")) if before else {}
    deployments = _plainly(deployment_model.objects
                           .filter(_any(Q(group_id=group, at__gte=day_start(first),
                                          at__lt=day_start(end))
                                        for group, (first, end) in spans.items()))
                           .order_by("group_id", "at", "run_id")
                           .values_list("group_id", "at", "ok", "seconds"))
    rows: dict[tuple[int, date], TrendDay] = {}
    buckets: dict[tuple[int, date, bool, int], int] = defaultdict(int)
    for group, at, ok, seconds in deployments:
        day = day_of(at)
        row = rows.get((group, day))
        if row is None:
            row = rows[group, day] = day_model(group_id=group, day=day)
        since = failing.get(group)
        if seconds is not None:
            buckets[group, day, False, bucket(seconds)] += 1
        if ok:
            row.successes += 1
            if since is not None:
                buckets[group, day, True, bucket((at - since).total_seconds())] += 1
                since = None
        else:
            row.failures += 1
            since = since or at
        failing[group] = row.failing_since = since
    in_spans = _any(Q(group_id=group, day__gte=first, day__lt=end)
                    for group, (first, end) in spans.items())
    day_model.objects.filter(in_spans).delete()
    bucket_model.objects.filter(in_spans).delete()
    day_model.objects.bulk_create(rows.values())
    bucket_model.objects.bulk_create(
        bucket_model(group_id=group, day=day, restore=restore, bucket=index, count=count)
        for (group, day, restore, index), count in buckets.items())


# --- the read path --------------------------------------------------------------------


WINDOW_SQL = """
    SELECT g.id, c.name, p.name, e.name, g.pipeline_name, d.days, d.ok, d.bad, d.peak,
      h.buckets
    FROM dashboard_trendgroup g
    JOIN dashboard_connection c ON c.id = g.connection_id
    LEFT JOIN dashboard_project p ON p.id = g.project_id
    LEFT JOIN dashboard_environment e ON e.id = g.environment_id
    CROSS JOIN LATERAL (
      SELECT array_agg(ARRAY[t.day - %s, t.successes, t.failures,
                             (t.failing_since IS NOT NULL)::int] ORDER BY t.day) AS days,
        SUM(t.successes)::int AS ok, SUM(t.failures)::int AS bad,
        MAX(GREATEST(t.successes, t.failures)) AS peak
      FROM dashboard_trendday t WHERE t.group_id = g.id AND t.day >= %s) AS d
    CROSS JOIN LATERAL (
      SELECT array_agg(ARRAY[b.restore::int, b.bucket, b.n]) AS buckets
      FROM (SELECT restore, bucket, SUM(count)::int AS n FROM dashboard_trendbucket
            WHERE group_id = g.id AND day >= %s GROUP BY 1, 2) AS b) AS h
    WHERE d.days IS NOT NULL
"""


def window(first: date) -> list[tuple]:
    """What the trends page reads for the days from `first` on, in one query whatever
    the number of runs, for each group with days in the window: (group id, connection,
    project, environment, pipeline, days, successes, failures, peak, histograms).
    `days`: [day - first, successes, failures, failing (0 or 1)] in day order; the
    window's successes and failures, and `peak` its most of either on a day (a chart's
    scale); `histograms`: {restore: {bucket: count}} summed over the window. Each
    group's days and buckets come as integer arrays off the (group, day) indexes, from a
    statement prepared once per database connection: three queries and their ORM
    building, then one of JSON with dates to parse, were most of the page rendered
    afresh."""

    from dashboard.prepared import execute_prepared

    if db.vendor != "postgresql":
        found = _window_orm(first)
    else:
        with db.cursor() as cursor:
            execute_prepared(cursor, "runboard_trends", WINDOW_SQL, [first, first, first])
            found = cursor.fetchall()
    groups = []
    for *group, buckets in found:
        histograms: dict[bool, dict[int, int]] = {False: {}, True: {}}
        for restore, index, count in buckets or ():
            histograms[bool(restore)][index] = count
        groups.append((*group, histograms))
    return groups


def _window_orm(first: date) -> list[tuple]:
    """WINDOW_SQL's rows through the ORM, where there is no LATERAL or array_agg (SQLite)."""
    days: dict[int, list] = {}
    for group, day, ok, bad, failing in (
            TrendDay.objects.filter(day__gte=first).order_by("group_id", "day")
            .values_list("group_id", "day", "successes", "failures", "failing_since")):
        days.setdefault(group, []).append([(day - first).days, ok, bad, int(bool(failing))])
    buckets: dict[int, list] = {}
    for group, restore, index, count in (
            TrendBucket.objects.filter(day__gte=first)
            .values_list("group_id", "restore", "bucket").annotate(n=Sum("count"))
            .order_by()):
        buckets.setdefault(group, []).append([int(restore), index, count])
    found = []
    for group in TrendGroup.objects.filter(pk__in=days).values_list(
            "pk", "connection__name", "project__name", "environment__name", "pipeline_name"):
        own = days[group[0]]
        found.append((*group, own, sum(d[1] for d in own), sum(d[2] for d in own),
                      max(max(d[1], d[2]) for d in own), buckets.get(group[0])))
    return found


# --- from scratch ------------------------------------------------------------------


def rebuild(apps=None) -> int:
    """Recompute the whole rollup from the runs; return how many deployments it holds.
    For the `trends_rollup` command, the migration that adds the rollup (which passes
    its historical `apps`), and anything that loads runs without the sync. Groups and
    deployments are copied by two INSERT ... SELECT (a million runs in seconds), then
    each group's days are computed as the sync's write path does."""
    run_model, group_model, deployment_model, day_model, bucket_model = (
        [apps.get_model("dashboard", name) for name in
         ("Run", "TrendGroup", "TrendDeployment", "TrendDay", "TrendBucket")]
        if apps else (Run, TrendGroup, TrendDeployment, TrendDay, TrendBucket))
    runs, groups, deployments = (model._meta.db_table
                                 for model in (run_model, group_model, deployment_model))
    # group_key() in SQL (the same text on PostgreSQL and SQLite).
    key = ("CAST(r.connection_id AS TEXT) || ':' || COALESCE(CAST(r.project_id AS TEXT), '')"
           " || ':' || COALESCE(CAST(r.environment_id AS TEXT), '') || ':' || r.pipeline_name")
    seconds = ("EXTRACT(EPOCH FROM r.finished_at - r.started_at)" if db.vendor == "postgresql"
               else "(julianday(r.finished_at) - julianday(r.started_at)) * 86400.0")
    deployed = f"r.status IN ('{DEPLOYED[0]}', '{DEPLOYED[1]}')"
    with transaction.atomic():
        bucket_model.objects.all().delete()
        day_model.objects.all().delete()
        deployment_model.objects.all().delete()
        group_model.objects.all().delete()
        with db.cursor() as cursor:  # table names and literals of ours only
            cursor.execute(
                f"INSERT INTO {groups} (key, connection_id, project_id, environment_id,"  # noqa: S608
                f" pipeline_name) SELECT DISTINCT {key}, r.connection_id, r.project_id,"
                f" r.environment_id, r.pipeline_name FROM {runs} r WHERE {deployed}")
            cursor.execute(
                f"INSERT INTO {deployments} (run_id, group_id, at, ok, seconds)"  # noqa: S608
                f" SELECT r.id, g.id, COALESCE(r.finished_at, r.created_at),"
                f" r.status = '{DEPLOYED[0]}', {seconds}"
                f" FROM {runs} r JOIN {groups} g ON g.key = {key} WHERE {deployed}")
            total = cursor.rowcount
        spans = (deployment_model.objects.values("group_id")
                 .annotate(first=Min("at"), last=Max("at"))
                 .values_list("group_id", "first", "last"))
        for group_id, first, last in spans:  # one at a time: a group's whole history
            _rewrite({group_id: (day_of(first), day_of(last) + timedelta(days=1))},
                     (deployment_model, day_model, bucket_model))
    return total
