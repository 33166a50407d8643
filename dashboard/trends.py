"""Trends: how deployments went per pipeline and environment over 7 or 30 days.

From Runboard's own history across providers, per (project / pipeline, environment):
deployments (finished runs that succeeded or failed), success rate, median and p90
duration, change failure rate and time to restore, DORA-style. Runboard only sees
runs, so two of these are approximations, and the page says so:
- change failure rate = failed deployments / deployments (DORA counts deployments that
  caused a failure in production, which a deployment tool cannot see);
- time to restore = from a failed deployment to the next successful one in the same
  pipeline and environment.
A bar per day (succeeded above, failed below) is drawn as SVG on the server.
Rendered once per data version and window, and kept in the cache.
"""

from __future__ import annotations

import statistics
from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.utils import timezone

from dashboard.models import Run, data_version
from dashboard.views import rendered_once
from providers.base import Status

WINDOWS = (7, 30)
CHART_WIDTH, CHART_HEIGHT = 120, 28


def _p90(values):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def _chart(days: int, until, daily: dict) -> dict:
    """Bars for each day: succeeded up from the middle line, failed down from it."""
    peak = max([max(ok, bad) for ok, bad in daily.values()] or [1]) or 1
    step = CHART_WIDTH / days
    half = CHART_HEIGHT / 2
    bars = []
    for index in range(days):
        day = (until - timedelta(days=days - 1 - index)).date()
        ok, bad = daily.get(day, (0, 0))
        x = round(index * step + step * 0.1, 1)
        width = round(step * 0.8, 1)
        if ok:
            height = round(half * ok / peak, 1)
            bars.append({"x": x, "y": round(half - height, 1), "w": width, "h": height,
                         "kind": "ok", "title": f"{day}: {ok} succeeded"})
        if bad:
            bars.append({"x": x, "y": half, "w": width, "h": round(half * bad / peak, 1),
                         "kind": "bad", "title": f"{day}: {bad} failed"})
    return {"bars": bars, "width": CHART_WIDTH, "height": CHART_HEIGHT, "middle": half}


def build(days: int) -> list[dict]:
    now = timezone.now()
    rows = (Run.objects.filter(created_at__gte=now - timedelta(days=days),
                               status__in=[Status.SUCCEEDED, Status.FAILED])
            .order_by("created_at", "id")
            .values_list("connection__name", "project__name", "pipeline_name",
                         "environment__name", "status", "created_at", "started_at",
                         "finished_at"))
    groups: dict[tuple, dict] = {}
    for connection, project, pipeline, environment, status, created, started, finished in rows:
        key = (project or connection, pipeline or "", environment or "")
        group = groups.setdefault(key, {"ok": 0, "bad": 0, "durations": [], "restores": [],
                                        "failed_since": None, "daily": {}})
        ok = status == Status.SUCCEEDED
        group["ok" if ok else "bad"] += 1
        if started and finished:
            group["durations"].append((finished - started).total_seconds())
        day = timezone.localtime(created).date()
        counts = group["daily"].get(day, (0, 0))
        group["daily"][day] = (counts[0] + ok, counts[1] + (not ok))
        if not ok and group["failed_since"] is None:
            group["failed_since"] = finished or created
        elif ok and group["failed_since"] is not None:
            group["restores"].append(((finished or created) - group["failed_since"])
                                     .total_seconds())
            group["failed_since"] = None
    result = []
    for (project, pipeline, environment), group in sorted(groups.items()):
        total = group["ok"] + group["bad"]
        result.append({
            "project": project, "pipeline": pipeline, "environment": environment,
            "deployments": total,
            "success_rate": round(100 * group["ok"] / total),
            "change_failure_rate": round(100 * group["bad"] / total),
            "median": timedelta(seconds=statistics.median(group["durations"]))
            if group["durations"] else None,
            "p90": timedelta(seconds=_p90(group["durations"])) if group["durations"] else None,
            "restore": timedelta(seconds=statistics.median(group["restores"]))
            if group["restores"] else None,
            "unrestored": group["failed_since"] is not None,
            "chart": _chart(days, timezone.localtime(now), group["daily"]),
        })
    return result


@login_required
def trends(request):
    try:
        days = int(request.GET.get("days", 7))
    except ValueError:
        days = 7
    days = days if days in WINDOWS else 7
    # Rows and their charts rendered once per data version and window (see rendered_once).
    table = rendered_once("trends/_table.html", request, data_version(),
                          lambda: {"rows": build(days), "days": days})
    return render(request, "trends/list.html", {"table": table, "days": days,
                                                "windows": WINDOWS})
