"""The run page's reads: two statements, each written once per process and prepared once
per database connection (building them through the ORM on every request took longer
than the database took to run them, and planning them about as long again).

`run(pk)` is what every request for the page reads, the live part's polls included:
the run with its connection, project and environment (as `Run.objects.for_page()`
loads them) and the id of its newest audit record. `details(run)` is what the live
part shows when it must be rendered: the run's steps, its last 50 audit records with
their users, and its environment's newest run (whether one supersedes it), in one
round trip as JSON. Both build the same models the ORM would (fields converted as the
ORM converts them), so the page, `actions.refusal` and the templates read them as before.
"""

from __future__ import annotations

import functools
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db import connection as db
from django.db.models import DateTimeField

from dashboard.attention import execute_prepared
from dashboard.models import ActionRecord, Connection, Environment, Job, Project, Run

HISTORY = 50  # audit records shown
BIGGEST_ID = 2**63 - 1  # a bigint: a larger id in the statement would be an error, not a miss


def _fields(model, skip=()) -> list:
    return [f for f in model._meta.concrete_fields if f.name not in skip]


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


# The run and what `for_page` selects with it: the connection without its sync cursor.
RELATED = (("connection", Connection, ("cursor",)), ("project", Project, ()),
           ("environment", Environment, ()))


@functools.cache
def _run_statement() -> tuple[str, list]:
    """The run's statement and its parts: (model, FK name, fields, converters) for the
    run, then each related model, in the order of their columns."""
    parts = [(Run, None, _fields(Run))]
    parts += [(model, name, _fields(model, skip)) for name, model, skip in RELATED]
    columns = [_columns("r", parts[0][2])]
    joins = []
    for n, (model, name, fields) in enumerate(parts[1:]):
        alias, fk = f"t{n}", Run._meta.get_field(name)
        columns.append(_columns(alias, fields))
        joins.append(f"{'JOIN' if not fk.null else 'LEFT JOIN'} {model._meta.db_table} {alias}"
                     f" ON {alias}.id = r.{db.ops.quote_name(fk.column)}")
    sql = f"""
        SELECT {", ".join(columns)},
          (SELECT a.id FROM dashboard_actionrecord a WHERE a.run_id = r.id
           ORDER BY a.id DESC LIMIT 1)
        FROM dashboard_run r {" ".join(joins)} WHERE r.id = %s
    """  # noqa: S608 (column and table names from the models)
    return sql, [(model, name, fields, [f.attname for f in fields], _converters(fields))
                 for model, name, fields in parts]


def _convert(values: list, converters) -> list:
    for n, functions in converters:
        if values[n] is not None:
            for function in functions:
                values[n] = function(values[n], None, db)
    return values


def run(pk: int) -> Run | None:
    """The run `pk` as `Run.objects.for_page()` loads it, with `last_action` (the id of
    its newest audit record, or None); None if there is no such run."""
    if not 0 < pk <= BIGGEST_ID:
        return None
    sql, parts = _run_statement()
    with db.cursor() as cursor:
        execute_prepared(cursor, "runboard_run_page", sql, [pk])
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
    return found


# --- what the live part shows ----------------------------------------------------------

JOB_FIELDS = _fields(Job)
RECORD_FIELDS = _fields(ActionRecord)


@functools.cache
def _details_statement() -> str:
    user = get_user_model()
    username = db.ops.quote_name(user._meta.get_field(user.USERNAME_FIELD).column)
    return f"""
        SELECT
          (SELECT json_agg(j ORDER BY j."order", j.id) FROM (
             SELECT {_columns("j", JOB_FIELDS)}, e.name AS environment__name
             FROM dashboard_job j LEFT JOIN dashboard_environment e ON e.id = j.environment_id
             WHERE j.run_id = %s) j),
          (SELECT json_agg(a ORDER BY a.created_at DESC, a.id DESC) FROM (
             SELECT {_columns("a", RECORD_FIELDS)}, u.{username} AS user__username
             FROM dashboard_actionrecord a JOIN {user._meta.db_table} u ON u.id = a.user_id
             WHERE a.run_id = %s ORDER BY a.created_at DESC, a.id DESC LIMIT {HISTORY}) a),
          n.id, n.external_id, n.name,
          (SELECT s.created_at FROM dashboard_run s
           WHERE s.environment_id = %s AND s.started_at IS NOT NULL
           ORDER BY s.created_at DESC LIMIT 1)
        FROM (SELECT 1) one LEFT JOIN LATERAL (
          SELECT r.id, r.external_id, r.name FROM dashboard_run r WHERE r.environment_id = %s
          ORDER BY r.created_at DESC, r.id DESC LIMIT 1) n ON true
    """  # noqa: S608 (column and table names from the models)


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
    its environment's newest run (None without an environment); sets `found.superseded`
    as `Run.newest_in_environment` does."""
    with db.cursor() as cursor:
        execute_prepared(cursor, "runboard_run_details", _details_statement(),
                         [found.pk, found.pk, found.environment_id, found.environment_id])
        jobs, records, newest_id, newest_external_id, newest_name, there = cursor.fetchone()
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
