"""Releases: one row per project/pipeline, one column per environment, each cell the
version deployed there and what is happening now.

Built from run environments (Qovery, Northflank stages) and step environments (a
workflow run's per-environment jobs), so a run that deploys to Development, Staging
and Production fills three cells. Step environments are read from the newest
RUNBOARD_RELEASES_WINDOW runs; run environments from each environment's own newest
runs, however old. Columns follow the platform's step order where steps give one;
environments only runs name (no order from the platform) come after, by name.
The matrix is computed once per data version and kept in the cache.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db.models import OuterRef, Subquery
from django.shortcuts import render

from dashboard.models import Environment, Job, Run, data_version
from providers import registry
from providers.base import FINISHED, Status

RUN_FIELDS = ("pk", "name", "external_id", "status", "version", "commit", "created_at",
              "pipeline_name", "connection_id", "connection__name", "connection__provider",
              "project__name", "environment__name")


def _row_key(run: dict) -> tuple:
    return (run["connection__name"], run["project__name"] or "", run["pipeline_name"] or "")


def build() -> dict:
    window = settings.RUNBOARD_RELEASES_WINDOW
    runs = list(Run.objects.order_by("-created_at", "-id").values(*RUN_FIELDS)[:window])
    by_pk = {r["pk"]: r for r in runs}
    steps = {}
    for job in (Job.objects.filter(run_id__in=list(by_pk), environment__isnull=False)
                .values("run_id", "order", "status", "environment__name")):
        steps.setdefault(job["run_id"], []).append(job)

    # The older runs of environments the window missed: each environment's newest run
    # and newest success, read off the (environment, -created_at) index.
    newest = Run.objects.filter(environment=OuterRef("pk")).order_by("-created_at", "-id")
    heads = list(Environment.objects.annotate(
        latest_id=Subquery(newest.values("pk")[:1]),
        deployed_id=Subquery(newest.filter(status=Status.SUCCEEDED).values("pk")[:1]),
    ).values("latest_id", "deployed_id"))
    missing = {pk for h in heads for pk in h.values() if pk and pk not in by_pk}
    older = sorted(Run.objects.filter(pk__in=missing).values(*RUN_FIELDS),
                   key=lambda r: (r["created_at"] is not None, r["created_at"], r["pk"]),
                   reverse=True) if missing else []

    rows: dict[tuple, dict] = {}
    orders: dict[str, list[int]] = {}
    for run in runs + older:  # newest first: the first run seen in a cell is its latest
        touched = [(job["environment__name"], job["status"], job["order"])
                   for job in sorted(steps.get(run["pk"], []), key=lambda j: j["order"])]
        if run["environment__name"] and not touched:
            touched = [(run["environment__name"], run["status"], None)]
        if not touched:
            continue
        row = rows.setdefault(_row_key(run), {
            "connection": run["connection__name"],
            "provider": registry.provider_class(run["connection__provider"]).label,
            "project": run["project__name"] or "", "pipeline": run["pipeline_name"] or "",
            "cells": {},
        })
        for name, status, order in touched:
            # A platform that names a stage after its pipeline ("api · staging") still
            # puts it in the stage's column, beside other pipelines' stagings.
            prefix = f"{run['pipeline_name']} · "
            if run["pipeline_name"] and name.startswith(prefix):
                name = name.removeprefix(prefix)
            column = name.casefold()
            if order is not None:
                orders.setdefault(column, []).append(order)
            cell = row["cells"].setdefault(column, {"name": name})
            if "latest" not in cell:
                cell["latest"] = {**run, "step_status": status}
            if "deployed" not in cell and status == Status.SUCCEEDED:
                cell["deployed"] = run

    names = {}
    for row in rows.values():
        for column, cell in row["cells"].items():
            names.setdefault(column, cell["name"])
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
    })
