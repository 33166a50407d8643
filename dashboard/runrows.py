"""The run list's rows and filter fields as HTML, written in Python.

The list is rendered afresh for the first viewer after every change (a sync writes
every few seconds), and Django's template engine spent most of that render here: an
include, a dozen variable lookups and date filters per row for 50 rows, and a template
per <option> in the filter form. Written out in Python the same markup costs a fraction
of a millisecond. The rows are read as tuples (`ROW_FIELDS`), not models: building four
model instances per row cost more than the query. The markup is what the row partial
was (tests/test_pages.py checks it, escaping included).
"""

from __future__ import annotations

import functools
from collections import namedtuple
from html import escape

from django.db import connection as db
from django.db.models import Value
from django.forms import Select
from django.urls import reverse
from django.utils.timezone import get_current_timezone

from providers.base import Status

ROW_FIELDS = ("pk", "status", "raw_status", "name", "external_id", "branch", "connection__name",
              "project_id", "project__name", "pipeline_name", "environment__name", "version",
              "triggered_by", "created_at", "started_at", "finished_at", "updated_at")
STATUS_LABELS = {value: str(label) for value, label in Status.choices}
Row = namedtuple("Row", ROW_FIELDS)


@functools.cache
def _first_page_sql(size: int) -> tuple[str, tuple]:
    """The unfiltered list's first page (and one row more), compiled once per process:
    what most viewers ask, where building the query through django-filter and the ORM
    cost more than running it."""
    from dashboard.models import Run

    return Run.objects.values_list(*ROW_FIELDS)[:size + 1].query.sql_with_params()


def first_page(size: int) -> list[Row]:
    """The rows of the unfiltered list's first page, plus one if there is a next."""
    with db.cursor() as cursor:
        cursor.execute(*_first_page_sql(size))
        return [Row(*row) for row in cursor.fetchall()]


def _e(value) -> str:
    return escape(str(value), quote=True) if value else ""


def time_html(value, tz=None) -> str:
    """partials/time.html: a time in UTC that the page shows relative."""
    if value is None:
        return ""
    # Slices of the ISO form, not strftime: a quarter of the cost (50 a page).
    iso = value.astimezone(tz or get_current_timezone()).isoformat()
    day = iso[:10]
    return (f'<time datetime="{iso}" title="{day} {iso[11:19]} UTC" '
            f'data-relative>{day} {iso[11:16]} UTC</time>')


def status_html(status: str, raw: str = "") -> str:
    """partials/status.html."""
    label = STATUS_LABELS.get(status, status)
    return (f'<span class="badge status-{_e(status)}" title="{_e(raw or status)}">'
            f'{_e(label)}</span>')


def run_url_prefix() -> str:
    """/runs/<pk>/ without reversing it for every row."""
    return reverse("run-detail", args=[1])[:-2]


def row_html(run, prefix: str, oob: bool = False, tz=None) -> str:
    """One <tr> of the run list from a `ROW_FIELDS` row."""
    tz = tz or get_current_timezone()
    title = _e(run.name or run.external_id)
    branch = _e(run.branch)
    project = _e(run.project__name)
    pipeline = _e(run.pipeline_name)
    if pipeline:
        project = f"{project} / {pipeline}" if run.project_id else f"{project}{pipeline}"
    started = run.started_at.astimezone(tz).isoformat() if run.started_at else ""
    finished = run.finished_at.astimezone(tz).isoformat() if run.finished_at else ""
    return "".join((
        f'<tr id="run-{run.pk}" data-status="{_e(run.status)}"',
        ' hx-swap-oob="true">' if oob else ">",
        f"\n  <td>{status_html(run.status, run.raw_status)}</td>",
        f'\n  <td class="name"><a href="{prefix}{run.pk}/" class="clip" title="{title}',
        f' · {branch}' if branch else "",
        f'">{title}</a>',
        f' <span class="muted clip branch">{branch}</span>' if branch else "",
        "</td>",
        f'\n  <td data-label="Connection"><span class="clip">{_e(run.connection__name)}'
        "</span></td>",
        f'\n  <td data-label="Project / pipeline"><span class="clip">{project}</span></td>',
        f'\n  <td data-label="Environment"><span class="clip">{_e(run.environment__name)}'
        "</span></td>",
        '\n  <td data-label="Version">',
        f'<code class="clip">{_e(run.version)}</code>' if run.version else "",
        "</td>",
        f'\n  <td data-label="By"><span class="clip">{_e(run.triggered_by)}</span></td>',
        f'\n  <td data-label="Created">{time_html(run.created_at, tz)}</td>',
        '\n  <td data-label="Duration">',
        (f'<span data-duration-from="{started}"'
         + (f' data-duration-to="{finished}"' if finished else "") + "></span>")
        if started else "",
        "</td>\n</tr>\n",
    ))


def rows_html(runs, oob: bool = False) -> str:
    prefix, tz = run_url_prefix(), get_current_timezone()
    return "".join(row_html(run, prefix, oob, tz) for run in runs)


# --- the environment board ----------------------------------------------------------


def board_rows_html(rows) -> str:
    """The environment board's rows (views._environment_rows): what environments/_board
    wrote per row with includes and a dozen lookups."""
    prefix, tz = run_url_prefix(), get_current_timezone()
    runs = reverse("run-list")
    out = []
    for row in rows:
        env, deployed, latest = row["environment"], row["deployed"], row["latest"]
        out.append(
            f'\n    <tr>\n      <td><a href="{runs}?environment={env.pk}">{_e(env.name)}</a></td>'
            f'\n      <td data-label="Connection">{_e(env.connection.name)}</td>'
            f'\n      <td data-label="Project">{_e(env.project.name if env.project else "")}</td>'
            '\n      <td data-label="Deployed version">')
        if deployed:
            out.append(f'<a href="{prefix}{deployed.pk}/"><code>'
                       f"{_e(deployed.version or deployed.name)}</code></a>")
        else:
            out.append('<span class="muted">none yet</span>')
        out.append('</td>\n      <td data-label="Latest run">')
        if latest:
            out.append(f"{status_html(latest.status, latest.raw_status)}\n        "
                       f'<a href="{prefix}{latest.pk}/">{_e(latest.version or latest.name)}</a>')
        out.append('</td>\n      <td data-label="Last change">')
        if latest:
            out.append(time_html(latest.updated_at, tz))
        out.append("</td>\n    </tr>")
    return "".join(out)


# --- the filter form ---------------------------------------------------------------

@functools.cache
def _choices_sql() -> tuple[str, tuple]:
    """The projects and environments, in one query compiled once per process."""
    from dashboard.models import Environment, Project

    parts = [model.objects.order_by().annotate(kind=Value(name)).values_list("kind", "pk", "name")
             for name, model in (("project", Project), ("environment", Environment))]
    return parts[0].union(parts[1], all=True).order_by("name", "pk").query.sql_with_params()


def model_choices(connections) -> dict[str, list[tuple[int, str]]]:
    """The filter's model choices: `connections` (as the view read them) and the
    projects and environments in one query (not a server-side cursor each)."""
    found: dict[str, list[tuple[int, str]]] = {
        "connection": [(c.pk, c.name) for c in connections], "project": [], "environment": []}
    with db.cursor() as cursor:
        cursor.execute(*_choices_sql())
        for kind, pk, name in cursor.fetchall():
            found[kind].append((pk, name))
    return found


def _field_html(field, choices) -> str:
    """A bound field of the filter form as Django's widgets render it."""
    value = field.form.data.get(field.name) or ""
    name, id_ = f'name="{field.html_name}"', f'id="{_e(field.auto_id)}"'
    if not isinstance(field.field.widget, Select):
        shown = f' value="{_e(value)}"' if value else ""
        return f'<input type="text" {name}{shown} {id_}>'
    if field.name in choices:
        options = [("", field.field.empty_label), *choices[field.name]]
    else:
        options = list(field.field.choices)
    return "".join((
        f"<select {name} {id_}>",
        *(f'\n  <option value="{_e(key)}"{" selected" if str(key) == value else ""}>'
          f"{_e(label)}</option>\n" for key, label in options),
        "\n</select>",
    ))


def filter_fields_html(form, connections, shown_apart=("q", "status")) -> str:
    """The form's fields in <label>s, but those the page shows elsewhere (the search)
    or not at all (the exact status, for links and the API). `connections`: all of
    them, ordered by name."""
    choices = model_choices(connections)
    return "".join(
        f"<label>{_e(field.label)} {_field_html(field, choices)}</label>"
        for field in form if field.name not in shown_apart)


def search_html(form) -> str:
    return _field_html(form["q"], {})
