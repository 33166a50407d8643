"""The run list as HTML, written in Python: its rows, filter fields, poller, table and
page; and its read, one query.

The list is rendered afresh for the first viewer after every change (a sync writes
every few seconds), and Django's template engine spent most of that render here: an
include, a dozen variable lookups and date filters per row for 50 rows, and a template
per <option> in the filter form; then the includes around them. Written out in Python
the same markup costs a fraction of a millisecond. What most viewers ask (no filter,
page 1) is read by one prepared statement (`read`): the rows as tuples (`ROW_FIELDS`),
not models (building four model instances per row cost more than the query), the
connections and the filter's choices, as JSON. The markup is what the templates wrote
(tests/test_page_costs.py checks it, escaping included).
"""
from __future__ import annotations

import functools
from collections import namedtuple
from datetime import datetime
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


# What the poller shows of each connection (is_stale, its warning) and what
# schedule.watching_read asks (watched_until).
POLLER_FIELDS = ("name", "enabled", "last_success_at", "last_error", "last_error_at",
                 "next_attempt_at", "next_poll_at", "watched_until")
# Times read as datetimes; the rows' other times stay PostgreSQL's text until written
# out (see `_iso`).
TIMES = frozenset(("updated_at", "last_success_at", "last_error_at", "next_attempt_at",
                   "next_poll_at", "watched_until"))


class PollerConnection:
    """A connection as the run list reads it (POLLER_FIELDS and pk), not a model:
    building one cost more than reading its row."""

    __slots__ = ("pk", *POLLER_FIELDS)

    def __init__(self, pk, *values):
        self.pk = pk
        for name, value in zip(POLLER_FIELDS, values, strict=True):
            setattr(self, name, value)

    is_stale = property(lambda self: _is_stale(self))


def _is_stale(connection) -> bool:
    from dashboard.models import Connection

    return Connection.is_stale.fget(connection)


@functools.cache
def _list_sql(size: int | None, choices: bool) -> tuple[str, str, tuple]:
    """The run list's read in one statement, compiled once per process: the unfiltered
    first page's rows (and one more) unless `size` is None, every connection (for the
    poller and the filter) and, with `choices`, the filter's projects and environments,
    each as JSON. Building these through django-filter and the ORM, and planning them
    (three queries), cost more than running them; a statement prepared once per
    database connection (see dashboard/prepared.py) is planned once. Returns the
    statement's name, its SQL and parameters."""
    from dashboard.models import Connection, Environment, Project, Run

    def compiled(queryset, fields, order):
        sql, params = queryset.values_list(*fields).query.sql_with_params()
        columns = ", ".join(f'r."{name}"' for name in fields)
        return (f"(SELECT json_agg(json_build_array({columns}) ORDER BY {order})"  # noqa: S608
                f" FROM ({sql}) AS r)"), tuple(params)

    parts = []
    if size is not None:
        parts.append(compiled(Run.objects.all()[:size + 1], ROW_FIELDS,
                              'r."created_at" DESC, r."pk" DESC'))
    parts.append(compiled(Connection.objects.all(), ("pk", *POLLER_FIELDS),
                          'r."name", r."pk"'))
    if choices:
        union = [model.objects.order_by().annotate(kind=Value(name))
                 for name, model in (("project", Project), ("environment", Environment))]
        parts.append(compiled(union[0].values_list("kind", "pk", "name").union(
            union[1].values_list("kind", "pk", "name"), all=True),
            ("kind", "pk", "name"), 'r."name", r."pk"'))
    name = f"runboard_list_{'r' if size is not None else ''}c{'f' if choices else ''}"
    return (name, "SELECT " + ", ".join(sql for sql, _ in parts),
            tuple(p for _, params in parts for p in params))


def _load(rows, fields, make):
    """JSON arrays as read by `_list_sql` -> `make(*values)`, times as datetimes."""
    times = [n for n, name in enumerate(fields) if name in TIMES]
    parse = datetime.fromisoformat
    loaded = []
    for row in rows or ():
        for n in times:
            if row[n] is not None:
                row[n] = parse(row[n])
        loaded.append(make(*row))
    return loaded


def read(size: int | None = None, choices: bool = False):
    """(rows, connections, choices) in one query: the unfiltered list's first page
    (`size` rows and one more if there is a next, their created, started and finished
    times as PostgreSQL's text of them; None when `size` is None), every
    connection as `PollerConnection`s ordered by name, and with `choices` the filter's
    model choices ({field: [(pk, name)]}, else None)."""
    from dashboard.prepared import execute_prepared

    if db.vendor != "postgresql":
        return _read_plainly(size, choices)
    name, sql, params = _list_sql(size, choices)
    with db.cursor() as cursor:
        execute_prepared(cursor, name, sql, params)
        found = list(cursor.fetchone())
    rows = _load(found.pop(0), ROW_FIELDS, Row) if size is not None else None
    connections = _load(found.pop(0), ("pk", *POLLER_FIELDS), PollerConnection)
    models = None
    if choices:
        models = {"connection": [(c.pk, c.name) for c in connections], "project": [],
                  "environment": []}
        for kind, pk, label in found.pop(0) or ():
            models[kind].append((pk, label))
    return rows, connections, models


def _read_plainly(size, choices):
    """`read` where there is no json_agg (SQLite): the same through the ORM."""
    from dashboard.models import Connection, Environment, Project, Run

    rows = ([Row(*row) for row in Run.objects.values_list(*ROW_FIELDS)[:size + 1]]
            if size is not None else None)
    connections = [PollerConnection(*row) for row in Connection.objects.order_by(
        "name", "pk").values_list("pk", *POLLER_FIELDS)]
    models = None
    if choices:
        models = {"connection": [(c.pk, c.name) for c in connections]}
        for name, model in (("project", Project), ("environment", Environment)):
            models[name] = list(model.objects.order_by("name", "pk").values_list("pk", "name"))
    return rows, connections, models


def _e(value) -> str:
    return escape(str(value), quote=True) if value else ""


def time_html(value, tz=None) -> str:
    """partials/time.html: a time in TIME_ZONE (named by its abbreviation) that the
    page shows relative."""
    if value is None:
        return ""
    value = value.astimezone(tz or get_current_timezone())
    iso, zone = value.isoformat(), _e(value.tzname() or "")
    if value.year < 1000:  # isoformat pads the year to four digits, strftime does not
        return (f'<time datetime="{iso}" title="{value:%Y-%m-%d %H:%M:%S} {zone}" '
                f'data-relative>{value:%Y-%m-%d %H:%M} {zone}</time>')
    # The same text as strftime's, cut from the ISO form (strftime twice cost more).
    return (f'<time datetime="{iso}" title="{iso[:10]} {iso[11:19]} {zone}" '
            f'data-relative>{iso[:10]} {iso[11:16]} {zone}</time>')


def status_html(status: str, raw: str = "") -> str:
    """partials/status.html."""
    label = STATUS_LABELS.get(status, status)
    return (f'<span class="badge status-{_e(status)}" title="{_e(raw or status)}">'
            f'{_e(label)}</span>')


def run_url_prefix() -> str:
    """/runs/<pk>/ without reversing it for every row."""
    return reverse("run-detail", args=[1])[:-2]


def _texts(run) -> tuple:
    """A row's text, in the order `_row` takes it escaped."""
    return (run.status, run.raw_status or run.status, STATUS_LABELS.get(run.status, run.status),
            run.name or run.external_id, run.branch, run.connection__name, run.project__name,
            run.pipeline_name, run.environment__name, run.version, run.triggered_by)


TEXTS = 11  # len(_texts(run))


def _escaped(runs) -> list[str]:
    """Every row's text (`_texts`) escaped, in one call to escape(), not ~500: the
    values joined by NUL, which PostgreSQL text never holds (should a value hold one,
    each is escaped on its own)."""
    values = [str(value) if value else "" for run in runs for value in _texts(run)]
    escaped = escape("\0".join(values), quote=True).split("\0")
    if len(escaped) != len(values):
        escaped = [escape(value, quote=True) for value in values]
    return escaped


def _iso(value, tz, utc: bool) -> str:
    """A time as datetime.isoformat() writes it in `tz`: from a datetime, or from the
    text PostgreSQL's JSON gives (`read`), which in UTC is the same but for the
    fraction's trailing zeros: padded here, not parsed and converted (three times a row,
    that was a fifth of writing the rows). Any other text is parsed."""
    if type(value) is str:
        if utc and value[4:5] == "-" and value[:1] != "0" and value.endswith("+00:00"):
            return value if len(value) == 25 else value[:-6].ljust(26, "0") + "+00:00"
        value = datetime.fromisoformat(value)
    return value.astimezone(tz).isoformat()


def _time_html(value, tz, utc: bool) -> str:
    """time_html of a datetime or of PostgreSQL's text of one (see `_iso`)."""
    if value is None:  # a provider that never said when (time_html writes nothing too)
        return ""
    iso = _iso(value, tz, utc)
    if iso[:1] == "0":  # a year before 1000: strftime does not pad it as isoformat does
        return time_html(datetime.fromisoformat(iso), tz)
    return (f'<time datetime="{iso}" title="{iso[:10]} {iso[11:19]} UTC" '
            f'data-relative>{iso[:10]} {iso[11:16]} UTC</time>')


def _row(run, texts, prefix: str, oob: bool, tz, utc: bool) -> str:
    """One <tr> of the run list from a `ROW_FIELDS` row and its escaped `_texts`."""
    (status, raw, label, title, branch, connection, project, pipeline, environment, version,
     by) = texts
    if pipeline:
        project = f"{project} / {pipeline}" if run.project_id else f"{project}{pipeline}"
    if branch:
        title_attr = f"{title} · {branch}"
        branch = f' <span class="muted clip branch">{branch}</span>'
    else:
        title_attr = title
    if version:
        version = f'<code class="clip">{version}</code>'
    duration = ""
    if run.started_at:
        duration = f'<span data-duration-from="{_iso(run.started_at, tz, utc)}"'
        if run.finished_at:
            duration += f' data-duration-to="{_iso(run.finished_at, tz, utc)}"'
        duration += "></span>"
    return (
        f'<tr id="run-{run.pk}" data-status="{status}"'
        + (' hx-swap-oob="true">' if oob else ">")
        + f'\n  <td><span class="badge status-{status}" title="{raw}">{label}</span></td>'
        f'\n  <td class="name"><a href="{prefix}{run.pk}/" class="clip" title="{title_attr}">'
        f"{title}</a>{branch}</td>"
        f'\n  <td data-label="Connection"><span class="clip">{connection}</span></td>'
        f'\n  <td data-label="Project / pipeline"><span class="clip">{project}</span></td>'
        f'\n  <td data-label="Environment"><span class="clip">{environment}</span></td>'
        f'\n  <td data-label="Version">{version}</td>'
        f'\n  <td data-label="By"><span class="clip">{by}</span></td>'
        f'\n  <td data-label="Created">{_time_html(run.created_at, tz, utc)}</td>'
        f'\n  <td data-label="Duration">{duration}</td>\n</tr>\n'
    )


def row_list(runs, oob: bool = False) -> list[str]:
    """Each <tr> of the run list from `ROW_FIELDS` rows (the markup the row partial
    wrote); with `oob`, to be swapped in out of band."""
    runs = list(runs)
    prefix, tz = run_url_prefix(), get_current_timezone()
    utc = str(tz) == "UTC"
    escaped = _escaped(runs)
    return [_row(run, escaped[n * TEXTS:(n + 1) * TEXTS], prefix, oob, tz, utc)
            for n, run in enumerate(runs)]


def rows_html(runs, oob: bool = False) -> str:
    return "".join(row_list(runs, oob))


def poller_html(query: str, version: str, page_key: str, connections, last_sync) -> str:
    """The list's live poller (what runs/_poller.html wrote): it asks for the list
    again every half second with the version and page it shows, and says which of the
    enabled `connections` are not syncing. Names and errors escaped."""
    from dashboard.templatetags.runboard import route

    tz = get_current_timezone()
    parts = [f'<div id="runs-poller" hx-get="{escape(route("run-list"))}?{escape(query)}'
             f'{"&amp;" if query else ""}v={escape(version)}&amp;p={escape(page_key)}"\n'
             '     hx-trigger="every 500ms" hx-swap="outerHTML" aria-live="polite">\n  ']
    for connection in connections:
        if connection.is_stale:
            error = connection.last_error
            parts.append(
                f'\n    <p class="warning" role="alert"><strong>{_e(connection.name)}</strong>'
                f" is not syncing{f': {escape(error)}' if error else ''}.\n      "
                + (f"Last success {time_html(connection.last_success_at, tz)}."
                   if connection.last_success_at else "It has never synced.")
                + "\n      "
                + (f"Next attempt {time_html(connection.next_attempt_at, tz)}."
                   if connection.next_attempt_at else "")
                + "</p>\n  ")
    parts.append('\n  <p class="muted small live-line"><span class="live-label" data-online="Live">'
                 "Live</span>"
                 + (f" · last synced {time_html(last_sync, tz)}" if last_sync else "")
                 + "</p>\n</div>\n")
    return "".join(parts)


TABLE_HEAD = (
    '  <table class="runs">\n    <thead><tr><th>Status</th><th>Run</th><th>Connection</th>'
    "<th>Project / pipeline</th><th>Environment</th><th>Version</th><th>By</th>"
    "<th>Created</th><th>Duration</th></tr></thead>\n    <tbody>\n    ")


def table_html(context) -> str:
    """The list's table with its poller and pager (what runs/_table.html wrote with
    includes and a dozen lookups), from `views._run_list_context`'s context."""
    from dashboard.templatetags.runboard import route

    page = context["page"]
    if page["rows"]:
        rows = context["rows_html"]()
    elif context["filter"].form.changed_data:
        rows = ('\n      <tr><td colspan="9" class="empty">No runs match these filters. '
                f'<a href="{escape(route("run-list"))}">Clear filters</a></td></tr>\n    ')
    elif context["connections"]:
        rows = ('\n      <tr><td colspan="9" class="empty">No runs yet: the first sync has not'
                " finished.</td></tr>\n    ")
    else:
        rows = ('\n      <tr><td colspan="9" class="empty">No runs: no provider connection is'
                " set up yet (add one in the admin or with <code>manage.py add_connection"
                "</code>).</td></tr>\n    ")
    return "".join((
        '<div id="runs">\n  ', context["poller"](), "\n", TABLE_HEAD, rows,
        "\n    </tbody>\n  </table>\n  ", pager_html(page, context["page_query"]), "\n</div>\n"))


def pager_html(page, query: str) -> str:
    """A list's pager (also partials/pager.html's, for the audit and the inbox)."""
    if not (page["has_previous"] or page["has_next"]):
        return "\n"
    query = f"{escape(query)}&amp;" if query else ""
    number = page["number"]
    newer = (f'<a href="?{query}page={number - 1}" rel="prev">\u2190 Newer</a>'
             if page["has_previous"] else "")
    older = (f'<a href="?{query}page={number + 1}" rel="next">Older \u2192</a>'
             if page["has_next"] else "")
    return (f'\n<nav class="pager" aria-label="Pages">\n  {newer}\n  <span>Page {number}</span>'
            f"\n  {older}\n</nav>\n\n")


def page_html(context) -> str:
    """The whole list: the filter form and the table (what runs/_page.html wrote)."""
    from dashboard.templatetags.runboard import route

    url = escape(route("run-list"))
    active = context["active_filters"]
    return "".join((
        f'<form class="filters list-head" method="get" action="{url}" hx-get="{url}" '
        'hx-target="#runs" hx-swap="outerHTML"\n      hx-trigger="change, keyup changed '
        "delay:300ms from:input[name=q], keyup changed delay:300ms from:input[name=by], keyup"
        ' changed delay:300ms from:input[name=pipeline]" hx-push-url="true">\n  <h1>Runs</h1>'
        f'\n  <label class="search">{_e(context["filter"].form["q"].label)} '
        f'{context["search_field"]}</label>\n  <details class="more-filters"'
        f'{" open" if active else ""}>\n    <summary>Filters'
        f'{f" ({len(active)} on)" if active else ""}</summary>\n    <div class="filter-fields">'
        f'\n    {context["filter_fields"]}\n    <button type="submit">Filter</button>\n    '
        f'<a href="{url}" class="muted">Clear</a>\n    </div>\n  </details>\n  <span class="muted'
        ' small keys-hint">Press <kbd>?</kbd> for keys</span>\n</form>\n',
        table_html(context), "\n"))


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


def filter_fields_html(form, choices, shown_apart=("q", "status")) -> str:
    """The form's fields in <label>s, but those the page shows elsewhere (the search)
    or not at all (the exact status, for links and the API). `choices`: the model
    choices as `read` gives them."""
    return "".join(
        f"<label>{_e(field.label)} {_field_html(field, choices)}</label>"
        for field in form if field.name not in shown_apart)


def unfiltered_fields_html(form, choices) -> str:
    """`filter_fields_html` of the unfiltered list's form (made once per process, see
    views._unfiltered): the same for the same model choices, so kept per choices (the
    key is the choices themselves: a renamed or new project shows at once)."""
    return _unfiltered_fields(form, tuple((name, tuple(found)) for name, found in choices.items()))


@functools.lru_cache(maxsize=8)
def _unfiltered_fields(form, choices: tuple) -> str:
    return filter_fields_html(form, dict(choices))


def search_html(form) -> str:
    return _field_html(form["q"], {})
