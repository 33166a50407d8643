"""The approval inbox: every run waiting for a person, across providers, oldest first.

Acting from here goes through `dashboard.actions.perform`, like every other way of
acting, so permission, separation of duties and the audit are the same. A bulk
approve of one release (version or commit) is one confirmed step that makes one
provider call, and one audit record, per run.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from html import escape

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.db import connection as db
from django.db.models import OuterRef, Q, Subquery
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.utils.timezone import get_current_timezone
from django.views.decorators.http import require_POST

from dashboard import actions
from dashboard.forms import ApproveForm
from dashboard.models import Connection, Job, Run, data_version
from dashboard.prepared import execute_prepared
from dashboard.runrows import time_html
from dashboard.secrets import UnreadableSecret
from dashboard.templatetags.runboard import CSRF_INPUT
from dashboard.views import (
    approve_form,
    page_of,
    personal_key,
    rendered_for,
    shows_actions,
)
from providers import registry
from providers.base import Action, Status

MAX_COMMENT = 2000


def waiting():
    """Runs waiting for a person, oldest first (a waiting step makes its run waiting),
    in one query: each with its first waiting step and whether a newer run replaced it
    (what `refusal` asks), read off the job and (environment, -created_at) indexes. As
    models, for the bulk approve, which acts on them; the inbox's page reads the same
    with `waiting_runs` (tests hold the two to saying the same of every run)."""
    step = Job.objects.filter(run=OuterRef("pk"), status=Status.WAITING).order_by("order", "id")
    # As `mark_superseded` asks it: the environment's newest started run, off the
    # (environment, -created_at) index. (An EXISTS of a newer one gets planned as a
    # scan of every run, which reads them all for a run nothing replaced.)
    newest = (Run.objects.filter(environment=OuterRef("environment"), started_at__isnull=False)
              .order_by("-created_at").values("created_at")[:1])
    # The connection comes from `prepare`, not a join: one read a page, not fifty.
    return (Run.objects.select_related("project", "environment").defer("raw")
            .filter(status=Status.WAITING)
            .annotate(step_name=Subquery(step.values("name")[:1]),
                      step_started_at=Subquery(step.values("started_at")[:1]),
                      newest_started=Subquery(newest))
            .order_by("created_at", "id"))


def prepare(runs) -> None:
    """What `refusal` asks of runs from `waiting()`, without a query a row: whether a
    newer run replaced each, and its connection's token (runs of one connection share
    one Connection, loaded whole in one query: one decryption, not one a row). Runs
    that ask for variables get `variables` from their payload (one query, only then)."""
    connections = Connection.objects.in_bulk({run.connection_id for run in runs})
    asking = []
    for run in runs:
        run.connection = connections[run.connection_id]
        run.superseded = bool(run.newest_started and run.created_at
                              and run.created_at < run.newest_started)
        run.since = run.step_started_at or run.created_at
        run.variables = []
        if run.raw_status in run.connection.provider_class.variables_statuses:
            asking.append(run)
    if asking:
        payloads = dict(Run.objects.filter(pk__in=[r.pk for r in asking])
                        .values_list("pk", "raw"))
        for run in asking:
            run.variables = run.connection.provider_class.requested_variables(payloads[run.pk])


# -- the inbox's page, read as tuples ----------------------------------------------------


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@functools.lru_cache(maxsize=16)
def _page_sql(offset: int, limit: int) -> str:
    """`limit` runs of `waiting()` from `offset`, with what `prepare` works out, in one
    query of our own: each run's connection (its stored token, see `_token_readable`),
    its first waiting step, since when it waits, whether it is superseded (as
    `mark_superseded` asks it; looked up only where the provider acts on environments,
    the only place `refusal` asks) and, only where the provider asks for variables in
    that status, the payload.

    Written once per process and, for the first page, run as a statement prepared once
    per connection: building the ORM's query, planning it and making fifty models each
    cost more than the database spent reading the rows. Constants only, no parameters:
    PostgreSQL then always keeps the generic plan (given a parameter for the LIMIT it
    planned every run afresh), and 'waiting' in the text lets that plan use the partial
    index of waiting runs. One time a row, as text: Django's loader of timestamptz is
    Python code, about 3 us a value. Plain SQL that SQLite runs too (the demo), but
    for the step's LATERAL join on PostgreSQL (a fifth of the query's time)."""
    def among(values) -> str:
        return f"({', '.join(_literal(value) for value in sorted(values)) or 'NULL'})"

    providers = registry.PROVIDERS.items()
    asks = [f"(c.provider = {_literal(key)} AND page.raw_status IN "
            f"{among(cls.variables_statuses)})"
            for key, cls in providers if cls.variables_statuses]
    raw = "(SELECT v.raw FROM dashboard_run v WHERE v.id = page.id)"
    variables = f"CASE WHEN {' OR '.join(asks)} THEN {raw} END" if asks else "NULL"
    on_environment = among(key for key, cls in providers if cls.acts_on_environment)
    first_step = """SELECT j.name, j.started_at FROM dashboard_job j
          WHERE j.run_id = page.id AND j.status = 'waiting'
          ORDER BY j."order", j.id LIMIT 1"""
    step = (f"LEFT JOIN LATERAL ({first_step}) s ON true" if db.vendor == "postgresql" else
            "LEFT JOIN dashboard_job s ON s.id = (SELECT j.id FROM dashboard_job j"
            " WHERE j.run_id = page.id AND j.status = 'waiting'"
            ' ORDER BY j."order", j.id LIMIT 1)')
    return f"""
        WITH page AS (
          SELECT r.id, r.connection_id, r.project_id, r.environment_id, r.external_id,
                 r.name, r.status, r.raw_status, r.version, r."commit", r.triggered_by,
                 r.created_at, r.web_url, r.pipeline_name
          FROM dashboard_run r WHERE r.status = 'waiting'
          ORDER BY r.created_at, r.id LIMIT {int(limit)} OFFSET {int(offset)})
        SELECT page.id, page.connection_id, c.provider, c.name, c.token,
               page.external_id, page.name, page.status, page.raw_status, page.version,
               page."commit", page.triggered_by, page.web_url, page.pipeline_name,
               p.name, e.name, s.name,
               CAST(COALESCE(s.started_at, page.created_at) AS text),
               CASE WHEN c.provider IN {on_environment} AND page.created_at < (
                 SELECT n.created_at FROM dashboard_run n
                 WHERE n.environment_id = page.environment_id AND n.started_at IS NOT NULL
                 ORDER BY n.created_at DESC LIMIT 1) THEN 1 ELSE 0 END,
               {variables}
        FROM page
        JOIN dashboard_connection c ON c.id = page.connection_id
        LEFT JOIN dashboard_project p ON p.id = page.project_id
        LEFT JOIN dashboard_environment e ON e.id = page.environment_id
        {step}
        ORDER BY page.created_at, page.id
    """  # noqa: S608 (our SQL: whole numbers and the providers' own constants)


TOKEN = Connection._meta.get_field("token")


@functools.lru_cache(maxsize=256)
def _token_readable(keys, ciphertext: str | None) -> bool:
    """`Connection.token_readable` of a stored token, worked out once per process for
    each stored value and set of keys (`keys`: the field's Fernet, made anew when
    SECRET_KEY or its fallbacks change), not decrypted on every render. A token entered
    again is stored as a new value (Fernet encrypts with a random IV)."""
    return not isinstance(TOKEN.from_db_value(ciphertext, None, db), UnreadableSecret)


class Account:
    """A run's connection as the inbox and `actions.refusal` read it. Never a client:
    acting loads the run and its connection (`act`)."""

    __slots__ = ("name", "pk", "provider", "token_readable")

    provider_class = Connection.provider_class

    def __str__(self):
        return self.name


class Waiting:
    """A waiting run as the inbox reads it: what its row shows and what `actions.refusal`
    asks, answered by Run's own methods (fifty models cost more than the query that
    read them). `superseded` is looked up only where the provider acts on environments
    (False elsewhere), as refusal asks it. Never acted on: acting loads the run (`act`)."""

    __slots__ = ("commit", "connection", "environment", "external_id", "name",
                 "pipeline_name", "pk", "project_name", "raw_status", "since", "status",
                 "step_name", "superseded", "triggered_by", "variables", "version", "web_url")

    is_finished = Run.is_finished
    is_superseded = Run.is_superseded
    available_actions = Run.available_actions

    def get_status_display(self) -> str:
        return Status(self.status).label

    def __str__(self):
        return self.name or self.external_id


class WaitingRuns:
    """`waiting()` with what `prepare` adds, for `page_of`: a slice of it is one query."""

    def __getitem__(self, rows: slice) -> list[Waiting]:
        return waiting_runs(rows.start, rows.stop - rows.start)


def waiting_runs(offset: int, limit: int) -> list[Waiting]:
    """`limit` waiting runs from `offset`, oldest first, ready for `describe`: what
    `waiting()[offset:offset + limit]` and `prepare` make, in one query."""
    sql = _page_sql(offset, limit)
    with db.cursor() as cursor:
        if offset:  # a later page, rarely asked for: not worth a statement a connection
            cursor.execute(sql)
        else:
            execute_prepared(cursor, f"runboard_inbox_{int(limit)}", sql, [])
        found = cursor.fetchall()
    connections: dict[int, Account] = {}
    runs = []
    for (pk, connection_id, provider, connection_name, secret, external_id, name, status,
         raw_status, version, commit, triggered_by, web_url, pipeline_name, project_name,
         environment, step_name, since, superseded, raw) in found:
        connection = connections.get(connection_id)
        if connection is None:
            connection = connections[connection_id] = Account()
            connection.pk, connection.provider, connection.name = (
                connection_id, provider, connection_name)
            connection.token_readable = _token_readable(TOKEN.f, secret)
        run = Waiting()
        run.pk, run.connection, run.external_id, run.name = pk, connection, external_id, name
        run.status, run.raw_status, run.version, run.commit = status, raw_status, version, commit
        run.triggered_by, run.web_url, run.pipeline_name = triggered_by, web_url, pipeline_name
        run.project_name, run.environment, run.step_name = project_name, environment, step_name
        run.superseded = bool(superseded)
        if since is not None:
            since = datetime.fromisoformat(since)
            if since.tzinfo is None:  # SQLite keeps UTC without saying so
                since = since.replace(tzinfo=UTC)
        run.since = since
        run.variables = connection.provider_class.requested_variables(
            json.loads(raw) if isinstance(raw, str) else raw) if raw is not None else []
        runs.append(run)
    return runs


def reject_kind(run) -> str | None:
    """How this platform refuses a waiting run: its reject, else a cancel."""
    supported = run.connection.provider_class.actions
    if Action.REJECT in supported:
        return Action.REJECT
    return Action.CANCEL if Action.CANCEL in supported else None


def describe(run, user) -> dict:
    return {
        "run": run,
        "step": run.step_name,
        "since": run.since,
        "release": run.version or run.commit,
        "refusal": actions.refusal(run, Action.APPROVE, user),
        "reject_kind": reject_kind(run),
    }


# Stand-ins a URL is built around once a page, not reversed once a row.
PK, KIND = "987654321", "the-kind"


def _row(row: dict, can_act: bool, csrf: str, urls: dict, tz) -> str:
    """One inbox row, every value escaped. Python rather than a template: fifty rows
    through the template engine (or format_html) cost several times the rest of the
    page rendered afresh (bench/pages.py)."""
    e = escape
    run = row["run"]
    connection = run.connection
    label = connection.provider_class.label
    where = [label, " · ", connection.name]
    if run.project_name:
        where += [" · ", run.project_name]
    if run.pipeline_name:
        where += [" / ", run.pipeline_name]
    where = e("".join(where))
    if run.environment:
        where += f" · <strong>{e(run.environment)}</strong>"
    if row["refusal"]:
        decide = f'<span class="why">{e(row["refusal"])}</span>'
        if run.web_url:
            decide += (f' <a href="{e(run.web_url)}" rel="noopener noreferrer"'
                       f' target="_blank">Open in {e(label)}</a>')
    elif can_act:
        act = urls["act"].replace(PK, str(run.pk))
        # What the run asks for before it goes on (Buddy's "Wait for variables").
        variables = "".join(
            f'<input type="text" name="{e(ApproveForm.PREFIX + var["key"])}"'
            f' value="{e(var["value"])}" maxlength="2000" placeholder="{e(var["key"])}"'
            f' aria-label="{e(var["key"])}" title="{e(var["description"] or var["key"])}">'
            for var in run.variables)
        decide = (
            f'<form method="post" action="{act.replace(KIND, "approve")}" class="inline">'
            f'{csrf}{variables}<input type="text" name="comment" maxlength="2000"'
            ' placeholder="Comment (optional)" aria-label="Approval comment">'
            '<button type="submit" class="primary">Approve</button></form>')
        if row["reject_kind"]:
            cancels = " (cancels)" if row["reject_kind"] == Action.CANCEL else ""
            decide += (
                f'<form method="post" action="{act.replace(KIND, "reject")}" class="inline">'
                f'{csrf}<input type="text" name="comment" maxlength="2000" required'
                ' placeholder="Why reject? (required)" aria-label="Rejection comment">'
                f'<button type="submit" class="danger">Reject{cancels}</button></form>')
    else:
        decide = '<span class="muted">Release managers decide.</span>'
    step = f' <span class="muted">· {e(row["step"])}</span>' if row["step"] else ""
    release = f"<code>{e(row['release'])}</code>" if row["release"] else ""
    return (
        f'<tr id="inbox-{run.pk}" data-provider="{e(connection.provider)}">'
        f'<td data-label="Waiting since">{time_html(row["since"], tz)}</td>'
        f'<td class="name"><a href="{urls["run"].replace(PK, str(run.pk))}">'
        f"{e(run.name or run.external_id)}</a>{step}</td>"
        f'<td data-label="Where">{where}</td>'
        f'<td data-label="Release">{release}</td>'
        f'<td data-label="Triggered by">{e(run.triggered_by or "—")}</td>'
        f'<td data-label="Decide" class="decide">{decide}</td></tr>\n')


def _inbox_context(request) -> dict:
    page = page_of(WaitingRuns(), request.GET.get("page"))
    rows = [describe(run, request.user) for run in page["rows"]]
    releases = {}
    for row in rows:
        if row["release"]:
            releases.setdefault(row["release"], []).append(row)
    bulk = [{"release": key, "count": len(found),
             "approvable": sum(1 for r in found if not r["refusal"])}
            for key, found in releases.items() if len(found) > 1]
    can_act = shows_actions(request)
    csrf = CSRF_INPUT  # the token put in per request (rendered_for)
    urls = {"run": reverse("run-detail", args=[PK]),
            "act": reverse("inbox-act", args=[PK, KIND])}
    tz = get_current_timezone()  # once, not once a row
    return {"rows": rows, "page": page, "page_query": "", "bulk": bulk, "can_act": can_act,
            "lines": mark_safe("".join(_row(row, can_act, csrf, urls, tz)  # noqa: S308 (escaped)
                                       for row in rows))}


@login_required
def inbox(request):
    """Rendered once per data version, page and kind of user (see `rendered_for`)."""
    content = rendered_for(request, "inbox/_content.html",
                           (data_version(), request.GET.get("page", ""),
                            *personal_key(request)),
                           lambda: _inbox_context(request))
    return render(request, "inbox/list.html", {"content": content})


@require_POST
@login_required
@permission_required("dashboard.act_on_run", raise_exception=True)
def act(request, pk, kind):
    run = get_object_or_404(Run.objects.for_list(), pk=pk)
    comment = request.POST.get("comment", "").strip()[:MAX_COMMENT]
    if "\x00" in comment:  # the audit (PostgreSQL) cannot store it
        messages.error(request, f"{run}: the comment holds a NUL character; type it again.")
        return redirect("inbox")
    if kind == "reject":
        if not comment:
            messages.error(request, f"{run}: a comment is required to reject.")
            return redirect("inbox")
        kind = reject_kind(run)
    if kind not in (Action.APPROVE, Action.REJECT, Action.CANCEL):
        raise Http404("No such action")
    variables = None
    if kind == Action.APPROVE:
        form = approve_form(run, request.POST)
        if not form.is_valid():
            problems = " ".join(e for errors in form.errors.values() for e in errors)
            messages.error(request, f"{run}: {problems}")
            return redirect("inbox")
        variables = form.variables() or None
    try:
        actions.perform(run, request.user, kind, comment=comment, variables=variables)
        messages.success(request, f"{Action(kind).label} sent to {run.connection}: {run}.")
    except actions.ActionRefused as exc:
        messages.error(request, f"{run}: {exc.message}")
    return redirect("inbox")


def _release_runs(release: str):
    return waiting().filter(Q(version=release) | Q(commit=release))


@login_required
@permission_required("dashboard.act_on_run", raise_exception=True)
def approve_release(request):
    """GET: what approving this release everywhere would do (the confirmation).
    POST: approve each run ticked, one provider call and audit record each."""
    release = (request.POST if request.method == "POST" else request.GET).get("release", "")
    release = release.strip()[:200]
    comment = request.POST.get("comment", "").strip()[:MAX_COMMENT]
    if not release or "\x00" in release + comment:  # PostgreSQL cannot take NUL
        return redirect("inbox")
    runs = list(_release_runs(release)[:200])
    prepare(runs)
    rows = [describe(run, request.user) for run in runs]
    results = None
    if request.method == "POST":
        chosen = set(request.POST.getlist("run"))
        results = []
        for row in rows:
            if str(row["run"].pk) not in chosen:
                continue
            try:
                record = actions.perform(row["run"], request.user, Action.APPROVE,
                                         comment=comment)
                results.append({"run": row["run"], "ok": True, "record": record,
                                "message": f"Approve sent to {row['run'].connection}."})
            except actions.ActionRefused as exc:
                results.append({"run": row["run"], "ok": False, "record": exc.record,
                                "message": exc.message})
    return render(request, "inbox/release.html", {
        "release": release, "rows": rows, "results": results,
        "approvable": [r for r in rows if not r["refusal"]],
        "blocked": [r for r in rows if r["refusal"]],
    })
