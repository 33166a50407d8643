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

import functools
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


@functools.lru_cache(maxsize=4)
def _slots(days: int, first: date) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Each day of the window from `first` (by its index) -> the x and width of its
    bars, the same on every row, and the day as the bars' titles write it."""
    step = CHART_WIDTH / days
    return (tuple(f'x="{round(index * step + step * 0.1, 1)}" width="{round(step * 0.8, 1)}"'
                  for index in range(days)),
            tuple(str(first + timedelta(days=index)) for index in range(days)))


HALF = CHART_HEIGHT / 2
CHART_START = (f'<svg class="spark" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
               f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" aria-label="Deployments '
               f'per day, succeeded above the line, failed below"><line class="axis" x1="0" '
               f'x2="{CHART_WIDTH}" y1="{HALF}" y2="{HALF}"/>')


def _chart(slots, titles, days, peak: int) -> str:
    """Bars for each day, as SVG: succeeded up from the middle line, failed down from it.
    `days`: [index in the window, succeeded, failed, _] in day order; `peak`: the most
    of either on a day. Written here rather than by a template loop (60 bars a row cost
    a template milliseconds); it holds numbers and dates only, nothing to escape."""
    peak = peak or 1
    heights = _heights(peak) if peak <= MAX_TABLE else _Heights(HALF / peak)
    parts = [CHART_START]
    window = len(slots)
    for index, ok, bad, _ in days:
        if index >= window:  # a deployment dated after today (a clock ahead of ours)
            continue
        if ok:
            height, y = heights[ok]
            parts.append(f'<rect class="ok" {slots[index]} y="{y}" height="{height}">'
                         f"<title>{titles[index]}: {ok} succeeded</title></rect>")
        if bad:
            parts.append(f'<rect class="bad" {slots[index]} y="{HALF}" height="{heights[bad][0]}">'
                         f"<title>{titles[index]}: {bad} failed</title></rect>")
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 (numbers and dates of ours)


MAX_TABLE = 1000  # the highest bar a table of heights is made for


class _Heights(dict):
    """count -> (its bar's height, an ok bar's y) as text, at `scale` per count."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def __missing__(self, count: int) -> tuple[str, str]:
        height = round(self.scale * count, 1)
        found = self[count] = (str(height), str(round(HALF - height, 1)))
        return found


@functools.lru_cache(maxsize=256)
def _heights(peak: int) -> tuple[tuple[str, str], ...]:
    """The bars' heights and y for each count up to `peak`, a row's highest bar: pure
    arithmetic on small numbers, worked out once per peak (working out and formatting
    each bar's two numbers was most of drawing a chart)."""
    heights = _Heights(HALF / peak)
    return tuple(heights[count] for count in range(peak + 1))


def build(days: int) -> list[dict]:
    today = rollup.day_of(timezone.now())
    first = today - timedelta(days=days - 1)
    slots, titles = _slots(days, first)
    result = []
    for (_, connection, project, environment, pipeline, daily, ok, bad, peak,
         histograms) in rollup.window(first):
        total = ok + bad
        median, p90 = _median_p90(histograms[False])
        result.append({
            "project": project or connection, "pipeline": pipeline,
            "environment": environment or "", "connection": connection,
            "deployments": total,
            "success_rate": round(100 * ok / total),
            "change_failure_rate": round(100 * bad / total),
            "median": median, "p90": p90,
            "restore": _median_p90(histograms[True])[0],
            "unrestored": bool(daily[-1][3]),  # the group's last day says
            "chart": _chart(slots, titles, daily, peak),
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
