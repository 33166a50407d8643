"""The run page's reads, each a statement written once per process and prepared once per
database connection (building them through the ORM on every request took longer than
the database took to run them, and planning them about as long again).

`run(pk)` is what every request for the page reads, the live part's polls included:
the run (its payload too: the variables a waiting run asks for) with its project, its
environment and what the page reads of its connection, and the id of its newest audit
record. `details(run)` is what the live part shows when it must be rendered: the run's
steps, its last 50 audit records with their users, and its environment's newest run
(whether one supersedes it), as JSON; the page itself reads them with the run (one
round trip), its poll only when the run changed. Both build the models the ORM would
(fields converted as it converts them), so the page, `actions.refusal` and the
templates read them as before; the facts, steps and records are then written here.
"""

from __future__ import annotations

import functools
from datetime import datetime
from html import escape

from django.contrib.auth import get_user_model
from django.db import connection as db
from django.db.models import DateTimeField, OuterRef, Subquery
from django.utils.timezone import get_current_timezone

from dashboard.models import ActionRecord, Connection, Environment, Job, Project, Run
from dashboard.prepared import execute_prepared
from dashboard.runrows import status_html, time_html
from dashboard.templatetags.runboard import answer, duration

HISTORY = 50  # audit records shown
BIGGEST_ID = 2**63 - 1  # a bigint: a larger id in the statement would be an error, not a miss


def _fields(model, only=None) -> list:
    return [f for f in model._meta.concrete_fields if only is None or f.name in only]


def _columns(alias: str, fields) -> str:
    return ", ".join(f"{alias}.{db.ops.quote_name(f.column)}" for f in fields)


def _converters(fields) -> list[tuple[int, list]]:
    """(position, converters) for the fields whose values the ORM converts (JSON parsed,
    the token decrypted), as its compiler finds them."""
    found = []
    for n, field in enumerate(fields):
        col = field.get_col(field.model._meta.db_table)
        converters = db.ops.get_db_converters(col) + field.get_db_converters(db)
        if converters:
            found.append((n, converters))
    return found


# What the page reads with the run: its project and environment, and of its connection
# its name and provider, whether the token can be read and when it was last watched
# (its thirty columns of sync state cost more to read and convert than the run's row).
RELATED = (("connection", Connection, ("id", "provider", "name", "token", "enabled",
                                       "watched_until")),
           ("project", Project, None), ("environment", Environment, None))


JOB_FIELDS = _fields(Job)
RECORD_FIELDS = _fields(ActionRecord)


def _details_sql(run_id: str, environment_id: str) -> tuple[str, str]:
    """What the live part shows of run `run_id` in environment `environment_id` (each a
    placeholder or a column): a select list (the steps and the newest audit records as
    JSON, the environment's newest run, its newest started run's creation time) and the
    join that finds that newest run.

    The run and the environment are compared BETWEEN x AND x and lead the ORDER BY: a
    plan made once for every value (a prepared statement's, or for a column) otherwise
    may walk the newest-first index of all runs (or of all records) until it meets the
    environment's (the run's), which takes as long as there are newer runs of other
    environments (180 ms for an environment unused for 100,000 runs). Ordered so, only
    the (environment, -created_at) index (the run's records) serves it."""
    user = get_user_model()
    username = db.ops.quote_name(user._meta.get_field(user.USERNAME_FIELD).column)
    select = f"""
          (SELECT json_agg(j ORDER BY j."order", j.id) FROM (
             SELECT {_columns("j", JOB_FIELDS)}, e.name AS environment__name
             FROM dashboard_job j LEFT JOIN dashboard_environment e ON e.id = j.environment_id
             WHERE j.run_id = {run_id}) j),
          (SELECT json_agg(a ORDER BY a.created_at DESC, a.id DESC) FROM (
             SELECT {_columns("a", RECORD_FIELDS)}, u.{username} AS user__username
             FROM dashboard_actionrecord a JOIN {user._meta.db_table} u ON u.id = a.user_id
             WHERE a.run_id BETWEEN {run_id} AND {run_id}
             ORDER BY a.run_id, a.created_at DESC, a.id DESC LIMIT {HISTORY}) a),
          nr.id, nr.external_id, nr.name,
          (SELECT s.created_at FROM dashboard_run s
           WHERE s.environment_id BETWEEN {environment_id} AND {environment_id}
             AND s.started_at IS NOT NULL
           ORDER BY s.environment_id, s.created_at DESC LIMIT 1)"""  # noqa: S608 (names from the models)
    join = f"""LEFT JOIN LATERAL (
          SELECT nr.id, nr.external_id, nr.name FROM dashboard_run nr
          WHERE nr.environment_id BETWEEN {environment_id} AND {environment_id}
          ORDER BY nr.environment_id, nr.created_at DESC, nr.id DESC LIMIT 1) nr ON true"""  # noqa: S608 (ours)
    return select, join


@functools.cache
def _run_statement(with_details: bool) -> tuple[str, list]:
    """The run's statement (with what the live part shows, or not) and its parts: (model,
    FK name, fields, converters) for the run, then each related model, in the order of
    their columns."""
    parts = [(Run, None, _fields(Run))]
    parts += [(model, name, _fields(model, only)) for name, model, only in RELATED]
    columns = [_columns("r", parts[0][2])]
    joins = []
    for n, (model, name, fields) in enumerate(parts[1:]):
        alias, fk = f"t{n}", Run._meta.get_field(name)
        columns.append(_columns(alias, fields))
        joins.append(f"{'JOIN' if not fk.null else 'LEFT JOIN'} {model._meta.db_table} {alias}"
                     f" ON {alias}.id = r.{db.ops.quote_name(fk.column)}")
    details, newest = _details_sql("r.id", "r.environment_id") if with_details else ("", "")
    sql = f"""
        SELECT {", ".join(columns)},
          (SELECT a.id FROM dashboard_actionrecord a WHERE a.run_id BETWEEN r.id AND r.id
           ORDER BY a.run_id, a.id DESC LIMIT 1){"," if details else ""}{details}
        FROM dashboard_run r {" ".join(joins)} {newest} WHERE r.id = %s
    """  # noqa: S608 (column and table names from the models)
    return sql, [(model, name, fields, [f.attname for f in fields], _converters(fields))
                 for model, name, fields in parts]


def _convert(values: list, converters) -> list:
    for n, functions in converters:
        if values[n] is not None:
            for function in functions:
                values[n] = function(values[n], None, db)
    return values


def run(pk: int, with_details: bool = False) -> Run | None:
    """The run `pk` with its project, environment and connection (`RELATED`), and
    `last_action` (the id of its newest audit record, or None); None if there is no
    such run. `with_details`:
    what `details` reads comes in the same statement (for a page that will likely show
    it: a round trip fewer), read only if `details` is asked."""
    if not 0 < pk <= BIGGEST_ID:
        return None
    if db.vendor != "postgresql":
        return _run_orm(pk)
    sql, parts = _run_statement(with_details)
    with db.cursor() as cursor:
        execute_prepared(cursor, f"runboard_run_page{'_details' if with_details else ''}",
                         sql, [pk])
        row = cursor.fetchone()
    if row is None:
        return None
    start, built = 0, []
    for model, name, fields, names, converters in parts:
        values = list(row[start:start + len(fields)])
        start += len(fields)
        if name and values[0] is None:  # no project or environment (a LEFT JOIN)
            built.append(None)
            continue
        built.append(model.from_db(db.alias, names, _convert(values, converters)))
    found = built[0]
    for (_, name, *_rest), related in zip(parts[1:], built[1:], strict=True):
        Run._meta.get_field(name).set_cached_value(found, related)
    found.last_action = row[start]
    if with_details:
        found._details = row[start + 1:]
    return found


# --- what the live part shows ----------------------------------------------------------


@functools.cache
def _details_statement() -> str:
    # The environment from the run's row, not a parameter: given one, PostgreSQL planned
    # the statement for each value (its plan then depends on the value) on every call.
    select, newest = _details_sql("r.id", "r.environment_id")
    return f"SELECT {select} FROM dashboard_run r {newest} WHERE r.id = %s"  # noqa: S608 (ours)


def _from_json(model, fields, row: dict):
    """A model from a row `json_agg` wrote: times back from ISO text; JSON fields are
    already parsed (nested JSON), every other column is as the ORM reads it."""
    values = []
    for field in fields:
        value = row[field.column]
        if value is not None and isinstance(field, DateTimeField):
            value = datetime.fromisoformat(value)
        values.append(value)
    return model.from_db(db.alias, [f.attname for f in fields], values)


def details(found: Run) -> tuple[list[Job], list[ActionRecord], Run | None]:
    """The steps of run `found`, its newest audit records (with their users' names) and
    its environment's newest run (None without an environment), read with the run if it
    was (`run(with_details=True)`), else by one statement; sets `found.superseded` as
    `mark_superseded` does."""
    read = found.__dict__.pop("_details", None)
    if db.vendor != "postgresql":
        return _details_orm(found)
    if read is None:
        with db.cursor() as cursor:
            execute_prepared(cursor, "runboard_run_details", _details_statement(), [found.pk])
            read = cursor.fetchone() or (None, None, None, None, None, None)  # run deleted
    jobs, records, newest_id, newest_external_id, newest_name, there = read
    environment = Job._meta.get_field("environment")
    steps = []
    for row in jobs or []:
        job = _from_json(Job, JOB_FIELDS, row)
        # As select_related("environment") would, with what the page shows of it.
        environment.set_cached_value(job, Environment.from_db(
            db.alias, ["id", "name"], [row["environment_id"], row["environment__name"]])
            if row["environment_id"] is not None else None)
        steps.append(job)
    user_model, user = get_user_model(), ActionRecord._meta.get_field("user")
    history = []
    for row in records or []:
        record = _from_json(ActionRecord, RECORD_FIELDS, row)
        # The user by name, all the page shows of them (`str(user)`).
        user.set_cached_value(record, user_model.from_db(
            db.alias, ["id", user_model.USERNAME_FIELD], [row["user_id"], row["user__username"]]))
        history.append(record)
    found.superseded = bool(there and found.created_at and found.created_at < there)
    newest = (Run.from_db(db.alias, ["id", "external_id", "name"],
                          [newest_id, newest_external_id, newest_name])
              if newest_id is not None else None)
    return steps, history, newest


# --- the same through the ORM, where there is no json_agg or LATERAL (SQLite) ------------


def _run_orm(pk: int) -> Run | None:
    newest_record = ActionRecord.objects.filter(run=OuterRef("pk")).order_by("-id")
    return (Run.objects.select_related("connection", "project", "environment")
            .annotate(last_action=Subquery(newest_record.values("id")[:1]))
            .filter(pk=pk).first())


def _details_orm(found: Run) -> tuple[list[Job], list[ActionRecord], Run | None]:
    steps = list(found.jobs.select_related("environment").order_by("order", "id"))
    history = list(found.actions.select_related("user").order_by("-created_at", "-id")[:HISTORY])
    there = found.environment_id and Run.objects.filter(
        environment=found.environment_id, started_at__isnull=False,
    ).order_by("-created_at").values_list("created_at", flat=True).first()
    found.superseded = bool(there and found.created_at and found.created_at < there)
    newest = found.environment_id and Run.objects.filter(
        environment=found.environment_id).order_by("-created_at", "-id").only(
        "id", "external_id", "name").first()
    return steps, history, newest or None


# --- what the live part shows, written in Python ---------------------------------------
# The run's facts, steps and audit records, as the template wrote them (same markup, line
# breaks included, every value escaped): Django's template engine spent more on their
# two dozen lookups and conditions than the page spent reading them.


def _e(value) -> str:
    """A value as the template engine writes it: escaped, None as "None"."""
    return escape(str(value), quote=True)


def _display(value, choices) -> str:
    """`get_FOO_display` for a value read as text."""
    return _e(choices.get(value, value))


def _iso(value) -> str:
    """The `date:'c'` filter: ISO 8601 in the current time zone."""
    return value.astimezone(get_current_timezone()).isoformat()


def _forced(options) -> bool:
    """`options.force_cancel` as the template looked it up (False unless a dict says so)."""
    return isinstance(options, dict) and bool(options.get("force_cancel"))


def header_html(run: Run, provider, runboard_cancel=None) -> str:
    """The run's name, status and facts: the live part's <header>."""
    title = _e(run.name or run.external_id)
    label = _e(provider.label)
    facts = [f"<dt>Provider</dt><dd>{label} · {_e(run.connection.name)}</dd>"]
    for shown, name, value in (
            (run.project, "Project", run.project and run.project.name),
            (run.pipeline_name, "Pipeline", run.pipeline_name),
            (run.environment, "Environment", run.environment and run.environment.name)):
        facts.append(f"<dt>{name}</dt><dd>{_e(value)}</dd>" if shown else "")
    facts.append(f"<dt>Version</dt><dd><code>{_e(run.version)}</code></dd>"
                 if run.version else "")
    facts.append(f"<dt>Branch</dt><dd>{_e(run.branch)}</dd>" if run.branch else "")
    facts.append(f"<dt>Triggered by</dt><dd>{_e(run.triggered_by)}</dd>"
                 if run.triggered_by else "")
    for name, value in (("Created", run.created_at), ("Started", run.started_at),
                        ("Finished", run.finished_at)):
        facts.append(f"<dt>{name}</dt><dd>{time_html(value)}</dd>" if value else "")
    took = ""
    if run.started_at:
        took = _e(duration(run.duration))
        if not run.finished_at:
            took = f'<span data-duration-from="{_iso(run.started_at)}">{took}</span> so far'
        took = f'<dt>Duration</dt><dd class="run-duration">{took}</dd>'
    facts.append(took)
    facts.append(f"<dt>Provider status</dt><dd><code>{_e(run.raw_status)}</code></dd>")
    cancelled = ""
    if runboard_cancel and run.status in ("cancelling", "cancelled"):
        cancelled = (f'<dt>Cancelled</dt><dd class="cancelled-by">{_e(runboard_cancel.user)}'
                     " from Runboard"
                     + (" (forced)" if _forced(runboard_cancel.options) else "")
                     + (f": {_e(runboard_cancel.comment)}" if runboard_cancel.comment else "")
                     + "</dd>\n      ")
    elif run.cancel_comment or run.cancelled_by:
        cancelled = (f"<dt>Cancelled</dt><dd>{_e(run.cancelled_by)}"
                     + (f": {_e(run.cancel_comment)}" if run.cancel_comment else "") + "</dd>")
    facts.append(cancelled)
    facts.append(f'<dt>Link</dt><dd><a href="{_e(run.web_url)}" rel="noopener noreferrer" '
                 f'target="_blank">Open in {label}</a></dd>' if run.web_url else "")
    return (f'<header class="run-header">\n    <h1>{title}\n      '
            f"{status_html(run.status, run.raw_status)}</h1>\n"
            '    <dl class="facts">\n      ' + "\n      ".join(facts)
            + "\n    </dl>\n  </header>")


def steps_html(jobs) -> str:
    """The steps' list items (or the line that says there are none)."""
    if not jobs:
        return '<li class="muted empty">The provider reported no steps.</li>'
    out = []
    for job in jobs:
        where = f" · {_e(job.environment.name)}" if job.environment else ""
        took = ""
        if job.started_at:
            took = (_e(duration(job.finished_at - job.started_at)) if job.finished_at
                    else f'<span data-duration-from="{_iso(job.started_at)}"></span> so far')
            took = f'<span class="muted step-time">{took}</span>'
        progress = (f'<progress max="100" value="{_e(job.progress)}"></progress>'
                    if job.progress is not None and job.status == "running" else "")
        review = ""
        if job.review_conclusion:
            review = (f'<span class="muted">— {_e(job.review_conclusion)} by '
                      f"{_e(job.reviewed_by)}"
                      + (f" {time_html(job.reviewed_at)}" if job.reviewed_at else "")
                      + (f": “{_e(job.review_comment)}”" if job.review_comment else "")
                      + "</span>")
        out.append(f"\n      <li>{status_html(job.status, job.raw_status)}\n        "
                   f"{_e(job.name)}{where}\n        {took}\n        {progress}\n        "
                   f"{review}\n      </li>\n    ")
    return "".join(out)


KINDS = dict(ActionRecord._meta.get_field("kind").flatchoices)
STATES = dict(ActionRecord._meta.get_field("state").flatchoices)


def history_html(history) -> str:
    """The audit records' table rows (or the row that says there are none)."""
    if not history:
        return ('<tr><td colspan="6" class="muted wide">No one has acted on this run from '
                "Runboard.</td></tr>")
    return "".join(
        f'\n      <tr><td data-label="When">{time_html(record.created_at)}</td>'
        f'<td data-label="Who">{_e(record.user)}</td>\n        <td data-label="Action">'
        f'{_display(record.kind, KINDS)}{" (force)" if _forced(record.options) else ""}</td>'
        f'<td data-label="Comment" class="wide">{_e(record.comment)}</td>\n        '
        f'<td data-label="Result" class="state-{_e(record.state)}">'
        f"{_display(record.state, STATES)}</td>"
        f'<td data-label="Provider\'s answer" class="muted wide">{_e(answer(record.response))}'
        "</td></tr>\n    "
        for record in history)
