"""Trends: how deployments went per pipeline and environment over 7 or 30 days.

From Runboard's own history across providers, per pipeline and environment (of one
connection): deployments (finished runs that succeeded or failed), success rate,
median and p90 duration, change failure rate and time to restore, DORA-style. Runboard
only sees runs, so two of these are approximations, and the page says so:
- change failure rate = failed deployments / deployments (DORA counts deployments that
  caused a failure in production, which a deployment tool cannot see);
- time to restore = from a failed deployment to the next successful one in the same
  pipeline and environment.
A window is the last 7 or 30 days (in TIME_ZONE), today included.

Read from the daily rollup (dashboard/rollup.py, which says why and how exact): one
query for at most groups x days rows, whatever the number of runs. A bar per day
(succeeded above, failed below) is drawn as SVG on the server. Rendered once per data
version and window, and kept in the cache.
"""

from __future__ import annotations

from datetime import date, timedelta
from html import escape

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.utils import timezone
from django.utils.safestring import mark_safe

from dashboard import rollup
from dashboard.models import data_version
from dashboard.templatetags.runboard import duration
from dashboard.views import rendered_once

WINDOWS = (7, 30)
CHART_WIDTH, CHART_HEIGHT = 120, 28


def percentile_ranks(n: int) -> tuple[tuple[int, ...], int]:
    """The sorted positions the median is the mean of, and p90's position, of n values."""
    middle = (n // 2,) if n % 2 else (n // 2 - 1, n // 2)
    return middle, min(n - 1, round(0.9 * (n - 1)))


def _at_ranks(histogram: dict[int, int], ranks) -> list[float]:
    """The (bucket) values at the given sorted positions."""
    wanted = sorted(set(ranks))
    found: dict[int, float] = {}
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        while wanted and wanted[0] < seen:
            found[wanted.pop(0)] = rollup.bucket_value(index)
        if not wanted:
            break
    return [found[rank] for rank in ranks]


def _median_p90(histogram: dict[int, int]) -> tuple[timedelta | None, timedelta | None]:
    n = sum(histogram.values())
    if not n:
        return None, None
    middle, p90 = percentile_ranks(n)
    *middles, last = _at_ranks(histogram, [*middle, p90])
    return timedelta(seconds=sum(middles) / len(middles)), timedelta(seconds=last)


def _slots(days: int, today: date) -> dict[date, str]:
    """Each day of the window -> the x and width of its bars, the same on every row."""
    step = CHART_WIDTH / days
    return {today - timedelta(days=days - 1 - index):
            f'x="{round(index * step + step * 0.1, 1)}" width="{round(step * 0.8, 1)}"'
            for index in range(days)}


HALF = CHART_HEIGHT / 2
CHART_START = (f'<svg class="spark" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
               f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" aria-label="Deployments '
               f'per day, succeeded above the line, failed below"><line class="axis" x1="0" '
               f'x2="{CHART_WIDTH}" y1="{HALF}" y2="{HALF}"/>')


def _chart(slots: dict[date, str], daily: dict[date, tuple[int, int]]) -> str:
    """Bars for each day, as SVG: succeeded up from the middle line, failed down from it.
    Written here rather than by a template loop (60 bars a row cost a template
    milliseconds); it holds numbers and dates only, nothing to escape."""
    peak = max([max(ok, bad) for ok, bad in daily.values()] or [1]) or 1
    scale = HALF / peak
    parts = [CHART_START]
    for day, (ok, bad) in daily.items():
        slot = slots.get(day)
        if slot is None:  # a deployment dated after today (a clock ahead of ours)
            continue
        if ok:
            height = round(scale * ok, 1)
            parts.append(f'<rect class="ok" {slot} y="{round(HALF - height, 1)}" '
                         f'height="{height}"><title>{day}: {ok} succeeded</title></rect>')
        if bad:
            parts.append(f'<rect class="bad" {slot} y="{HALF}" height="{round(scale * bad, 1)}">'
                         f"<title>{day}: {bad} failed</title></rect>")
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 (numbers and dates of ours)


def build(days: int) -> list[dict]:
    today = rollup.day_of(timezone.now())
    first = today - timedelta(days=days - 1)
    days_read, histograms, names = rollup.window(first)
    groups: dict[int, dict] = {}
    for group_id, day, ok, bad, failing in days_read:
        group = groups.get(group_id)
        if group is None:
            group = groups[group_id] = {"ok": 0, "bad": 0, "daily": {}}
        group["ok"] += ok
        group["bad"] += bad
        group["failing"] = failing  # day by day: the last one's wins
        group["daily"][day] = (ok, bad)
    if not groups:
        return []
    slots = _slots(days, today)
    result = []
    for group_id, connection, project, environment, pipeline in names:
        group = groups[group_id]
        total = group["ok"] + group["bad"]
        median, p90 = _median_p90(histograms.get((group_id, False), {}))
        result.append({
            "project": project or connection, "pipeline": pipeline,
            "environment": environment or "", "connection": connection,
            "deployments": total,
            "success_rate": round(100 * group["ok"] / total),
            "change_failure_rate": round(100 * group["bad"] / total),
            "median": median, "p90": p90,
            "restore": _median_p90(histograms.get((group_id, True), {}))[0],
            "unrestored": group["failing"],
            "chart": _chart(slots, group["daily"]),
        })
    result.sort(key=lambda r: (r["project"], r["pipeline"], r["environment"],
                               r["connection"]))
    return result


def rows_html(rows) -> str:
    """The table's rows, as trends/_table.html wrote them (a dozen lookups and filters a
    row cost the template most of a millisecond a page): names escaped."""
    out = []
    for row in rows:
        name = escape(row["project"])
        if row["pipeline"]:
            name += f" / {escape(row['pipeline'])}"
        if row["project"] != row["connection"]:
            name += f' <span class="muted small">{escape(row["connection"])}</span>'
        failing = ' <span class="badge status-failed">failing</span>' if row["unrestored"] else ""
        out.append(
            f"\n    <tr>\n      <td>{name}</td>"
            f'\n      <td data-label="Environment">{escape(row["environment"] or "—")}</td>'
            f'\n      <td data-label="Deployments" class="num">{row["deployments"]}</td>'
            f'\n      <td data-label="Success" class="num">{row["success_rate"]} %</td>'
            f'\n      <td data-label="Median" class="num">{duration(row["median"]) or "—"}</td>'
            f'\n      <td data-label="p90" class="num">{duration(row["p90"]) or "—"}</td>'
            '\n      <td data-label="Change failure rate" class="num">'
            f'{row["change_failure_rate"]} %</td>'
            '\n      <td data-label="Time to restore" class="num">'
            f'{duration(row["restore"]) or "—"}{failing}</td>'
            f'\n      <td data-label="Per day">{row["chart"]}</td>\n    </tr>')
    return "".join(out)


def _table(days: int) -> dict:
    rows = build(days)
    return {"rows": rows, "days": days,
            "rows_html": mark_safe(rows_html(rows))}  # noqa: S308 (names escaped)


@login_required
def trends(request):
    try:
        days = int(request.GET.get("days", 7))
    except ValueError:
        days = 7
    days = days if days in WINDOWS else 7
    # Rows and their charts rendered once per data version and window (see rendered_once).
    table = rendered_once("trends/_table.html", request, data_version(),
                          lambda: _table(days))
    return render(request, "trends/list.html", {"table": table, "days": days,
                                                "windows": WINDOWS,
                                                "time_zone": settings.TIME_ZONE})
