"""Releases: one row per project/pipeline, one column per environment, each cell the
version deployed there and what is happening now.

Built from run environments (Qovery, Northflank stages) and step environments (a
workflow run's per-environment jobs), so a run that deploys to Development, Staging
and Production fills three cells. Columns follow the platform's step order where steps
give one; environments only runs name (no order from the platform) come after, by name.

The cells are a table of their own (`ReleaseCell`), kept by the sync's write path: the
runs written (a batch of pages, `sync.derive`) are folded into the cells they touch
(`record`), so the page reads a few rows however many runs there are. A cell whose run
stopped touching it (it moved environment, or its success was taken back) is worked out
again from the runs (`recompute`); `rebuild` does every cell from scratch (the migration
that adds the table, or runs loaded without the sync).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime

from django.apps import apps as installed_apps
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import connection as db
from django.db.models import Exists, OuterRef, Q, Subquery
from django.shortcuts import render
from django.utils.safestring import mark_safe

from dashboard.models import Environment, Job, ReleaseCell, Run, data_version
from dashboard.runrows import _e, run_url_prefix, status_html
from providers import registry
from providers.base import FINISHED, Status

SUCCEEDED = Status.SUCCEEDED.value
LOCK_SPACE = 0x52454C  # the advisory locks of releases cells, one per connection
NEVER = datetime.min.replace(tzinfo=UTC)  # a run without a creation time sorts oldest


@dataclass(frozen=True)
class Touch:
    """A run's mark on one cell: the step (or the run) and its status there."""

    key: tuple[str, str, str]  # (project name, pipeline name, column)
    name: str
    position: int | None
    step: str  # the job's external_id; "" for the run's own environment
    status: str


def column_of(environment: str, pipeline: str) -> tuple[str, str]:
    """(column key, name shown) of an environment. A platform that names a stage after
    its pipeline ("api · staging") still puts it in the stage's column, beside other
    pipelines' stagings."""
    prefix = f"{pipeline} · "
    if pipeline and environment.startswith(prefix):
        environment = environment.removeprefix(prefix)
    return environment.casefold(), environment


def touches(project: str, pipeline: str, environment: str | None, status: str,
            steps) -> list[Touch]:
    """The cells a run touches: its steps' environments (`steps`: (environment name,
    status, order, job external_id) of the jobs naming one), else its own environment."""
    if steps:
        marks = sorted(steps, key=lambda s: (s[2], s[3]))
    elif environment:
        marks = [(environment, status, None, "")]
    else:
        return []
    found = []
    for name, mark_status, order, step in marks:
        column, shown = column_of(name, pipeline)
        found.append(Touch((project, pipeline, column), shown, order, step, mark_status))
    return found


def _fold(cells: dict, model, connection_id: int, run_id: int, at, marks) -> set:
    """Fold one run into `cells` (key -> cell): the newest run (created_at, id) is a
    cell's latest, its newest success there its deployed. Returns the keys changed."""
    at = at or NEVER
    changed = set()
    done = set()
    for mark in marks:  # in step order: a run's first step in a column speaks for it
        cell = cells.get(mark.key)
        if cell is None:
            cell = cells[mark.key] = model(
                connection_id=connection_id, project_name=mark.key[0],
                pipeline_name=mark.key[1], column=mark.key[2], name=mark.name,
                latest_run_id=run_id, latest_step=mark.step, latest_at=at,
                position=mark.position)
            changed.add(mark.key)
        elif ("latest", mark.key) not in done and (
                cell.latest_run_id == run_id  # the same run again: its step, its name
                or (at, run_id) >= (cell.latest_at, cell.latest_run_id)):
            cell.latest_run_id, cell.latest_step, cell.latest_at = run_id, mark.step, at
            cell.name, cell.position = mark.name, mark.position
            changed.add(mark.key)
        done.add(("latest", mark.key))
        if mark.status == SUCCEEDED and ("deployed", mark.key) not in done:
            done.add(("deployed", mark.key))
            if cell.deployed_run_id in (None, run_id) or (at, run_id) >= (
                    cell.deployed_at or NEVER, cell.deployed_run_id):
                cell.deployed_run_id, cell.deployed_at = run_id, at
                changed.add(mark.key)
    return changed


FIELDS = ["name", "position", "latest_run", "latest_step", "latest_at", "deployed_run",
          "deployed_at"]


def record(connection_id: int, run_ids: list[int], written=None) -> None:
    """Fold runs written into the cells as the database now holds them (their steps
    included): `written`, if the caller read them already, as `_marks` gives them. A
    constant number of queries however many runs, plus `recompute` for a cell a run
    left. (`sync.derive` calls this for a batch of pages.)"""
    if not run_ids:
        return
    # One writer of a connection's cells at a time (its sync, an action's or a webhook's
    # re-read of a run): they read the cells, then write what they worked out from them.
    # A lock of its own, not the connection's row, which others update meanwhile. (SQLite
    # has one writer at a time anyway.)
    if db.vendor == "postgresql":
        with db.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LOCK_SPACE, connection_id])
    if written is None:
        written = _marks(Job, Run.objects.filter(pk__in=run_ids).order_by("created_at", "id")
                         .values_list(*RUN_COLUMNS))
    by_run = {run_id: (at or NEVER, marks) for run_id, at, marks in written}
    cells = {(c.project_name, c.pipeline_name, c.column): c
             for c in ReleaseCell.objects.filter(connection_id=connection_id)}
    stale = set()
    for key, cell in cells.items():
        # The cell's run left it (another environment, or none), its success there was
        # taken back, or it turned out older than it was: another run may come first.
        if cell.latest_run_id in by_run:
            at, marks = by_run[cell.latest_run_id]
            if at < cell.latest_at or not any(m.key == key for m in marks):
                stale.add(key)
        if cell.deployed_run_id in by_run:
            at, marks = by_run[cell.deployed_run_id]
            if at < (cell.deployed_at or NEVER) or not any(
                    m.key == key and m.status == SUCCEEDED for m in marks):
                stale.add(key)
    known = set(cells)
    changed = set()
    for run_id, at, marks in written:  # oldest first
        changed |= _fold(cells, ReleaseCell, connection_id, run_id, at, marks)
    changed -= stale
    ReleaseCell.objects.bulk_create([cells[k] for k in changed - known])
    if changed & known:
        ReleaseCell.objects.bulk_update([cells[k] for k in changed & known], FIELDS)
    for key in stale:
        recompute(cells[key])


RUN_COLUMNS = ("pk", "created_at", "status", "pipeline_name", "project__name",
               "environment__name")


def _marks(job_model, runs) -> list[tuple[int, datetime, list[Touch]]]:
    """(run id, created_at, touches) of `runs` (values_list of RUN_COLUMNS), in order."""
    runs = list(runs)
    steps: dict[int, list] = {}
    for run_id, *mark in (job_model.objects
                          .filter(run_id__in=[r[0] for r in runs], environment__isnull=False)
                          .values_list("run_id", "environment__name", "status", "order",
                                       "external_id")):
        steps.setdefault(run_id, []).append(tuple(mark))
    return touched(runs, steps)


def touched(runs, steps: dict) -> list[tuple[int, datetime, list[Touch]]]:
    """(run id, created_at, touches) of `runs` (rows of RUN_COLUMNS), in order, given
    run id -> its steps that name an environment (environment name, status, order,
    external id)."""
    return [(pk, at, touches(project or "", pipeline or "", environment, status,
                             steps.get(pk)))
            for pk, at, status, pipeline, project, environment in runs]


def recompute(cell) -> None:
    """Work one cell out again from the runs (rare: see `record`); delete it if no run
    touches it any more."""
    project, pipeline = cell.project_name, cell.pipeline_name
    environments = [pk for pk, name in Environment.objects.filter(
        connection=cell.connection_id).values_list("pk", "name")
        if column_of(name, pipeline)[0] == cell.column]
    runs = Run.objects.filter(connection=cell.connection_id, pipeline_name=pipeline)
    runs = (runs.filter(project__name=project) if project
            else runs.filter(Q(project__isnull=True) | Q(project__name="")))
    steps = (Job.objects.filter(environment__in=environments, run__in=runs)
             .order_by("-run__created_at", "-run_id", "order", "external_id")
             .values("run_id", "run__created_at", "external_id", "order", "environment__name"))
    own = (runs.filter(environment__in=environments)
           .exclude(Exists(Job.objects.filter(run=OuterRef("pk"), environment__isnull=False)))
           .order_by("-created_at", "-id")
           .values("pk", "created_at", "environment__name"))

    def newest(*found):
        found = [f for f in found if f]
        return max(found, key=lambda f: (f["at"] or NEVER, f["run"]), default=None)

    def step(row):
        return row and {"run": row["run_id"], "at": row["run__created_at"],
                        "step": row["external_id"], "position": row["order"],
                        "name": row["environment__name"]}

    def whole(row):
        return row and {"run": row["pk"], "at": row["created_at"], "step": "",
                        "position": None, "name": row["environment__name"]}

    latest = newest(step(steps.first()), whole(own.first()))
    if latest is None:
        ReleaseCell.objects.filter(pk=cell.pk).delete()
        return
    deployed = newest(step(steps.filter(status=SUCCEEDED).first()),
                      whole(own.filter(status=SUCCEEDED).first()))
    cell.latest_run_id, cell.latest_step = latest["run"], latest["step"]
    cell.latest_at, cell.position = latest["at"] or NEVER, latest["position"]
    cell.name = column_of(latest["name"], pipeline)[1]
    cell.deployed_run_id = deployed and deployed["run"]
    cell.deployed_at = deployed and (deployed["at"] or NEVER)
    cell.save(update_fields=FIELDS)


def rebuild(apps=installed_apps, connection_ids=None, batch: int = 5000) -> int:
    """Every cell from scratch, from the runs; returns how many cells there are.
    For the migration that adds the table (with its `apps`) and for runs loaded
    without the sync's write path."""
    cell_model = apps.get_model("dashboard", "ReleaseCell")
    run_model = apps.get_model("dashboard", "Run")
    job_model = apps.get_model("dashboard", "Job")
    connections = apps.get_model("dashboard", "Connection").objects.all()
    if connection_ids is not None:
        connections = connections.filter(pk__in=connection_ids)
    total = 0
    for connection_id in connections.values_list("pk", flat=True):
        cell_model.objects.filter(connection_id=connection_id).delete()
        env_steps = job_model.objects.filter(run=OuterRef("pk"), environment__isnull=False)
        runs = (run_model.objects.filter(connection_id=connection_id)
                .filter(Q(environment__isnull=False) | Exists(env_steps))
                .order_by("created_at", "id")
                .values_list(*RUN_COLUMNS))
        cells: dict = {}
        chunk = []
        for row in runs.iterator(chunk_size=batch):
            chunk.append(row)
            if len(chunk) == batch:
                _rebuild_chunk(cells, cell_model, job_model, connection_id, chunk)
                chunk = []
        _rebuild_chunk(cells, cell_model, job_model, connection_id, chunk)
        cell_model.objects.bulk_create(cells.values())
        total += len(cells)
    return total


def _rebuild_chunk(cells, cell_model, job_model, connection_id, chunk) -> None:
    for run_id, at, marks in _marks(job_model, chunk):  # oldest first
        _fold(cells, cell_model, connection_id, run_id, at, marks)


# -- the page ----------------------------------------------------------------------


def _run(cell: dict, prefix: str) -> dict | None:
    if cell[f"{prefix}_id"] is None:
        return None
    return {"pk": cell[f"{prefix}_id"], "version": cell[f"{prefix}__version"],
            "name": cell[f"{prefix}__name"], "commit": cell[f"{prefix}__commit"]}


# What the matrix reads of each cell.
CELL_FIELDS = (
    "column", "name", "position", "latest_at", "project_name", "pipeline_name",
    "connection__name", "connection__provider", "latest_step",
    "latest_run_id", "latest_run__version", "latest_run__name", "latest_run__commit",
    "latest_run__status",
    "deployed_run_id", "deployed_run__version", "deployed_run__name",
    "deployed_run__commit", "step_status",
)


@functools.cache
def _cells_sql() -> tuple[str, tuple]:
    """The cells' query, compiled once per process (the ORM took longer to build it on
    every render than the database took to run it)."""
    step_status = Job.objects.filter(run=OuterRef("latest_run"),
                                     external_id=OuterRef("latest_step")).order_by()
    step_status = step_status.values("status")[:1]
    return (ReleaseCell.objects.values(*CELL_FIELDS[:-1])
            .annotate(step_status=Subquery(step_status)).order_by("-latest_at")
            .query.sql_with_params())


def build() -> dict:
    """The matrix from the cells: one query."""
    with db.cursor() as cursor:
        cursor.execute(*_cells_sql())
        cells = [dict(zip(CELL_FIELDS, row, strict=True)) for row in cursor.fetchall()]
    rows: dict[tuple, dict] = {}
    names: dict[str, str] = {}
    orders: dict[str, list[int]] = {}
    for cell in cells:  # newest first: a column is named as its newest cell names it
        row = rows.setdefault((cell["connection__name"], cell["project_name"],
                               cell["pipeline_name"]), {
            "connection": cell["connection__name"],
            "provider": registry.provider_class(cell["connection__provider"]).label,
            "project": cell["project_name"], "pipeline": cell["pipeline_name"],
            "cells": {},
        })
        names.setdefault(cell["column"], cell["name"])
        if cell["position"] is not None:
            orders.setdefault(cell["column"], []).append(cell["position"])
        latest = _run(cell, "latest_run")
        latest["step_status"] = (cell["step_status"] if cell["latest_step"]
                                 and cell["step_status"] else cell["latest_run__status"])
        row["cells"][cell["column"]] = {"name": cell["name"], "latest": latest,
                                        "deployed": _run(cell, "deployed_run")}
    columns = sorted(names, key=lambda c: (
        c not in orders, sum(orders.get(c, [0])) / len(orders.get(c, [0])), c))
    return {
        "columns": [{"key": c, "name": names[c]} for c in columns],
        "rows": sorted(rows.values(), key=lambda r: (r["project"].casefold(),
                                                     r["pipeline"].casefold(), r["connection"])),
    }


def matrix() -> dict:
    key = f"runboard:releases:{data_version()}"
    found = cache.get(key)
    if found is None:
        found = build()
        cache.set(key, found, settings.RUNBOARD_FRAGMENT_CACHE_SECONDS)
    return found


def _matches(run: dict | None, query: str) -> bool:
    if not run:
        return False
    q = query.casefold()
    return (q == (run["version"] or "").casefold()
            or (len(q) >= 4 and (run["commit"] or "").casefold().startswith(q))
            or q in (run["version"] or "").casefold())


@login_required
def releases(request):
    data = matrix()
    query = request.GET.get("q", "").strip()[:200]
    rows = []
    places = []
    for row in data["rows"]:
        cells = []
        for column in data["columns"]:
            cell = row["cells"].get(column["key"])
            hit = bool(query and cell and (
                _matches(cell.get("deployed"), query) or _matches(cell.get("latest"), query)))
            if hit:
                deployed = _matches(cell.get("deployed"), query)
                places.append({"environment": column["name"], "row": row,
                               "state": "deployed" if deployed else
                               cell["latest"]["step_status"]})
            cells.append({"column": column, "cell": cell, "hit": hit})
        if not query or any(c["hit"] for c in cells):
            rows.append({**row, "line": cells})
    return render(request, "releases/matrix.html", {
        "columns": data["columns"], "rows": rows, "query": query, "places": places,
        "finished": FINISHED,
        "rows_html": mark_safe(rows_html(rows)),  # noqa: S308 (every value escaped)
    })


def _run_link(prefix: str, run: dict) -> str:
    return f'<a href="{prefix}{run["pk"]}/"><code>{_e(run["version"] or run["name"])}</code></a>'


def rows_html(rows) -> str:
    """The matrix's rows, as the template wrote them with an include and a dozen lookups
    a cell (most of the page rendered afresh): every value escaped."""
    prefix = run_url_prefix()
    out = []
    for row in rows:
        head = _e(row["project"] or row["connection"])
        if row["pipeline"]:
            head += f" / {_e(row['pipeline'])}"
        out.append(f'\n    <tr>\n      <th scope="row">{head}<br><span class="muted small">'
                   f'{_e(row["provider"])} · {_e(row["connection"])}</span></th>')
        for item in row["line"]:
            cell, column = item["cell"], _e(item["column"]["name"])
            out.append(f'\n      <td class="cell{" hit" if item["hit"] else ""}"'
                       f' data-label="{column}" data-environment="{column}">\n        ')
            if not cell:
                out.append('<span class="muted">—</span>')
            else:
                deployed, latest = cell["deployed"], cell["latest"]
                out.append(_run_link(prefix, deployed) if deployed
                           else '<span class="muted">none deployed</span>')
                if not deployed or latest["pk"] != deployed["pk"]:
                    out.append(f'\n          <span class="now">{status_html(latest["step_status"])}'
                               f"\n            {_run_link(prefix, latest)}</span>")
            out.append("\n      </td>")
        out.append("\n    </tr>")
    return "".join(out)
