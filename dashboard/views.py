import functools
import hashlib
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.cache import cache
from django.http import Http404, HttpResponse, QueryDict, StreamingHttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_http_methods
from django_htmx.http import reswap, retarget

from dashboard import actions, attention, runpage, runrows, schedule
from dashboard import audit_export as audit_export_formats
from dashboard.filters import ActionFilter, RunFilter
from dashboard.forms import ApproveForm, CancelForm, CommentForm, TokenForm
from dashboard.models import (
    ActionRecord,
    ApiToken,
    Connection,
    Environment,
    Run,
    WebhookDelivery,
    data_version,
)
from dashboard.templatetags.runboard import CSRF_MARK
from providers.base import Action, Status

PAGE_SIZE = 50
RUN_FILTERS = frozenset(RunFilter.base_filters)
POLLER_FIELDS = runrows.POLLER_FIELDS


# --- helpers -------------------------------------------------------------------------


def unchanged(request, version: str) -> bool:
    """A poll that already shows `version` needs no new HTML (htmx swaps nothing on 204)."""
    return bool(request.htmx) and request.GET.get("v") == version


# Far past any list anyone pages through, and an OFFSET every database takes.
MAX_PAGE = 100_000


class BadPage(Http404):
    """A page number that is not one: a 404 page, a 400 in the API."""


def page_of(queryset, number, size=None):
    """One page without a COUNT(*): fetch one row more to know whether there is a next."""
    size = size or PAGE_SIZE
    try:
        number = int(number or 1)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PAGE:
        raise BadPage(f"page must be a whole number from 1 to {MAX_PAGE}.")
    rows = list(queryset[(number - 1) * size: number * size + 1])
    return {"rows": rows[:size], "number": number, "has_next": len(rows) > size,
            "has_previous": number > 1}


def query_without(request, *keys) -> str:
    query = request.GET.copy()
    for key in keys:
        query.pop(key, None)
    return query.urlencode()


# --- runs ----------------------------------------------------------------------------


@functools.cache
def _unfiltered() -> RunFilter:
    """The run filter with nothing asked, made once per process: building a FilterSet
    and its form deep-copies a dozen fields (a tenth of the list's render afresh). Only
    its form is read (the same for every request without a filter: runrows takes the
    model choices from the request's own read); its queryset never runs."""
    return RunFilter(QueryDict(), queryset=Run.objects.none())


def _run_list_context(request, version: str, full: bool = False) -> dict:
    """What the run list shows; with `full`, the filter form too (the whole page)."""
    # Rows as tuples, written out by runrows: the afresh render's cost was per row.
    if request.GET.get("page", "1") == "1" and not RUN_FILTERS.intersection(request.GET):
        run_filter = _unfiltered()  # its form is shown; it filters nothing here
        # What most viewers ask (no filter, page 1): the rows, the connections and the
        # filter's choices in one query.
        rows, everyone, choices = runrows.read(PAGE_SIZE, choices=full)
        page = {"rows": rows[:PAGE_SIZE], "number": 1, "has_next": len(rows) > PAGE_SIZE,
                "has_previous": False}
    else:
        run_filter = RunFilter(request.GET, queryset=Run.objects.all())
        page = page_of(run_filter.qs.values_list(*runrows.ROW_FIELDS, named=True),
                       request.GET.get("page"))
        _, everyone, choices = runrows.read(choices=full)
    # Every connection, read once: the filter's choices, the poller's warnings about the
    # enabled ones and the attention strip's stale count (see attention.context).
    if full and not attention.known():
        # The strip's counts expired before the data version: read them with the
        # connections (no query of their own), as a model with them.
        everyone = list(attention.with_counts(Connection.objects.only(*POLLER_FIELDS)))
    connections = request.runboard_connections = [c for c in everyone if c.enabled]
    schedule.watching_read(connections, every=True)  # no query while they are fresh
    page_key = hashlib.blake2s(
        ",".join(str(r.pk) for r in page["rows"]).encode(), digest_size=6
    ).hexdigest()
    query = query_without(request, "v", "p")
    extra = {}
    if full:
        fields = (runrows.unfiltered_fields_html if run_filter is _unfiltered()
                  else runrows.filter_fields_html)
        extra = {"search_field": mark_safe(runrows.search_html(run_filter.form)),  # noqa: S308
                 "filter_fields": mark_safe(  # noqa: S308 (escaped by runrows)
                     fields(run_filter.form, choices))}
    context = {
        **extra,
        "filter": run_filter,
        "active_filters": [f for f in run_filter.form.changed_data if f != "q"],
        "page": page,
        # Called by the template only where it shows them (not by the poll's answer).
        "rows_html": lambda: mark_safe(runrows.rows_html(page["rows"])),  # noqa: S308
        "version": version,
        "page_key": page_key,
        "query": query,
        "page_query": query_without(request, "v", "p", "page"),
        "connections": connections,
        # Written by runrows (the template's loop over the connections cost more).
        "poller": lambda: mark_safe(runrows.poller_html(  # noqa: S308 (escaped by runrows)
            query, version, page_key, connections,
            max((c.last_success_at for c in connections if c.last_success_at), default=None))),
    }
    # The page and its table, written by runrows (shown by runs/_page.html, _table.html).
    context["table_html"] = lambda: mark_safe(runrows.table_html(context))  # noqa: S308
    context["page_html"] = lambda: mark_safe(runrows.page_html(context))  # noqa: S308
    return context


def rendered_once(template: str, request, version: str, context) -> str:
    """`template` rendered for this URL and data version, shared by every viewer.

    The run list is the same for everyone who asks the same URL while no run or
    connection changed (the data version), so it is rendered once and served from
    the cache until then. A short lifetime bounds what depends on the clock alone
    (a connection turning stale when syncs stop). The fragment holds nothing
    user-specific: no CSRF token, no user name, no action buttons.
    """
    key = "runboard:fragment:" + hashlib.blake2s(
        f"{template}|{version}|{request.get_full_path()}".encode(), digest_size=16
    ).hexdigest()
    html = cache.get(key)
    if html is None:
        # Without the request: nothing per user goes in, and the context processors
        # (a fifth of rendering the run list's table) are not run for it.
        html = render_to_string(template, context())
        cache.set(key, html, settings.RUNBOARD_FRAGMENT_CACHE_SECONDS)
    return mark_safe(html)  # noqa: S308 (our own template's output)


def rendered_for(request, template: str, key_parts, context) -> str:
    """Like `rendered_once`, for content with forms and per-user parts: cached per
    `key_parts` (which must name everything the content depends on: the data version,
    whether the user may act, ...). Its forms' CSRF token is put in per request."""
    key = "runboard:content:" + hashlib.blake2s(
        "|".join(str(part) for part in (template, *key_parts)).encode(), digest_size=16
    ).hexdigest()
    html = cache.get(key)
    if html is None:
        html = render_to_string(template, {**context(), "csrf_token": CSRF_MARK})
        cache.set(key, html, settings.RUNBOARD_FRAGMENT_CACHE_SECONDS)
    return mark_safe(html.replace(CSRF_MARK, get_token(request)))  # noqa: S308 (ours)


CAN_ACT_SECONDS = 30


def shows_actions(request) -> bool:
    """Whether pages show this user action buttons: the permission, remembered for
    CAN_ACT_SECONDS (two queries a page otherwise). Only what is shown waits that long
    after a change of rights: every action re-checks the permission when it is sent."""
    key = f"runboard:can-act:{request.user.pk}"
    found = cache.get(key)
    if found is None:
        found = request.user.has_perm("dashboard.act_on_run")
        cache.set(key, found, CAN_ACT_SECONDS)
    return found


def personal_key(request) -> tuple:
    """What of the user a page with actions depends on: whether they may act and, with
    separation of duties on, who they are."""
    return (shows_actions(request),
            request.user.pk if settings.RUNBOARD_SEPARATION_OF_DUTIES else "")


def _poll_since(request) -> float:
    """When the data a poll shows was written (its data version's first part); 0 for a
    version that is not ours, so that every row of the page is sent."""
    try:
        return float(request.GET.get("v", "0-0").split("-")[0] or 0)
    except ValueError:
        return 0.0


@login_required
def run_list(request):
    response = _run_list(request)
    # An open list speeds its connections' polling up (a render just now saw to it).
    schedule.watching_all()
    return response


def _run_list(request):
    version = data_version()
    if unchanged(request, version):
        return HttpResponse(status=204)
    if request.htmx and request.htmx.trigger == "runs-poller":
        context = _run_list_context(request, version)
        since = _poll_since(request)
        if request.GET.get("p") == context["page_key"]:
            # Same runs on the page: send only the rows that changed, out of band.
            context["changed"] = [r for r in context["page"]["rows"]
                                  if r.updated_at.timestamp() > since]
            context["changed_html"] = mark_safe(  # noqa: S308 (escaped by runrows)
                "".join(f"<template>{html}</template>"
                        for html in runrows.row_list(context["changed"], oob=True)))
            return render(request, "runs/_changed.html", context)
        response = render(request, "runs/_table.html", context)
        return reswap(retarget(response, "#runs"), "outerHTML")
    template = "runs/_table.html" if request.htmx else "runs/_page.html"
    html = rendered_once(template, request, version,
                         lambda: _run_list_context(request, version, full=not request.htmx))
    if request.htmx:
        return HttpResponse(html)
    return render(request, "runs/list.html", {"content": html})


def _blocked(run, user, newer=None) -> dict | None:
    """Why the platform cannot do what this run seems to wait for, in one line: a
    waiting run Runboard cannot approve, or a run a newer one replaced (`newer`: the
    environment's newest run, read with `run.superseded` by runpage.details)."""
    provider = run.connection.provider_class
    if provider.acts_on_environment and run.superseded:
        return {"reason": actions.refusal(run, Action.CANCEL), "newer": newer}
    if run.status == Status.WAITING:
        reason = actions.refusal(run, Action.APPROVE, user)
        if reason:
            return {"reason": reason}
    return None


def _new_runs(run, history) -> list[dict]:
    """Runs an action from Runboard started (a retry or redeploy answered with a new
    run, which the action path stored): linked from the old run's page."""
    started = {}
    for record in history:
        try:
            body = json.loads(record.response or "{}")
        except ValueError:
            continue
        if isinstance(body, dict) and isinstance(body.get("run"), str):
            started.setdefault(body["run"], record.get_kind_display().lower())
    if not started:
        return []
    found = Run.objects.filter(connection=run.connection_id, external_id__in=started)
    return [{"run": r, "via": started[r.external_id]} for r in found]


def _run_names(request, run, provider) -> dict:
    """What the page and its live part call the run (a dozen lookups in the templates)."""
    url = run.get_absolute_url()
    facts = " · ".join([provider.label, *([run.environment.name] if run.environment else []),
                        *([run.version] if run.version else [])])
    return {"run_title": run.name or run.external_id, "run_status": run.get_status_display(),
            "run_facts": facts, "run_url": url, "permalink": request.build_absolute_uri(url)}


def _detail_context(request, run, names=None, **extra):
    # The steps, audit records and the environment's newest run: one statement.
    jobs, history, newer = runpage.details(run)
    provider = run.connection.provider_class
    # Credit a cancel to the Runboard user who sent it, not the provider account.
    runboard_cancel = next((r for r in history if r.kind == Action.CANCEL
                            and r.state == ActionRecord.State.SUCCEEDED), None)
    return {
        "run": run,
        # Written by runpage (escaped there): the template's lookups cost more than the reads.
        "header_html": mark_safe(runpage.header_html(run, provider, runboard_cancel)),  # noqa: S308
        "steps_html": mark_safe(runpage.steps_html(jobs)),  # noqa: S308
        "history_html": mark_safe(runpage.history_html(history)),  # noqa: S308
        "blocked": _blocked(run, request.user, newer),
        "new_runs": _new_runs(run, history),
        # The latest attempt got no answer: say so before offering the buttons again.
        "unanswered": history[0] if history and history[0].state == "unknown" else None,
        "version": f"{run.updated_at.timestamp():.6f}",
        "can_act": shows_actions(request),
        "provider": provider,
        # Made only where the template shows it (building a form copies its fields).
        "approve_form": lambda: approve_form(run),
        **(names or _run_names(request, run, provider)),
        **extra,
    }


def approve_form(run, data=None):
    """The approve form, with inputs for the variables the run asks for (if any)."""
    requested = (run.connection.provider_class.requested_variables(run.raw)
                 if run.status == Status.WAITING else [])
    return ApproveForm(data, requested=requested)


@login_required
def run_detail(request, pk):
    # With its connection and its newest audit record's id; for the page (not its
    # poll, which mostly hears nothing changed) with what the live part shows.
    run = runpage.run(pk, with_details="v" not in request.GET)
    if run is None:
        raise Http404("No such run")
    schedule.watching_read([run.connection])
    if unchanged(request, f"{run.updated_at.timestamp():.6f}"):
        return HttpResponse(status=204)
    names = _run_names(request, run, run.connection.provider_class)
    # The live part depends on the run, the audit records of it, other runs (superseded
    # or not: the data version) and the user's rights.
    live = rendered_for(request, "runs/_live.html",
                        (run.pk, data_version(), run.updated_at.timestamp(), run.last_action,
                         *personal_key(request)),
                        lambda: _detail_context(request, run, names))
    if request.htmx:
        return HttpResponse(live)
    return render(request, "runs/detail.html", {"run": run, "live": live, **names})


@login_required
def run_permalink(request, provider, external_id):
    """/runs/<provider>/<external id>/: a link built from the provider's own ids."""
    runs = list(Run.objects.permalink(provider, external_id).order_by("-updated_at")[:2])
    if not runs:
        raise Http404("No such run")
    if len(runs) > 1:  # the same id under two connections of one provider
        query = urlencode({"provider": provider, "q": external_id})
        return redirect(f"{reverse('run-list')}?{query}")
    return redirect(runs[0])


@require_http_methods(["GET", "POST"])
@login_required
def run_action(request, pk, kind):
    if request.method == "GET":
        # An action's address pasted into chat or opened from history: the run's page
        # holds its forms, where a blank 405 would say nothing.
        return redirect("run-detail", pk=pk)
    return _act(request, pk, kind)


@permission_required("dashboard.act_on_run", raise_exception=True)
def _act(request, pk, kind):
    run = get_object_or_404(Run.objects.for_list(), pk=pk)
    if kind not in Action.values:
        raise Http404("No such action")
    if kind == Action.APPROVE:
        form = approve_form(run, request.POST)
    else:
        form = (CancelForm if kind == Action.CANCEL else CommentForm)(request.POST)
    status, extra = 200, {}
    if not form.is_valid():
        status = 400
        extra["action_error"] = " ".join(e for errs in form.errors.values() for e in errs)
    else:
        try:
            record = actions.perform(
                run, request.user, kind, comment=form.cleaned_data["comment"],
                force=form.cleaned_data.get("force_cancel", False),
                variables=form.variables() if kind == Action.APPROVE else None)
            extra["action_message"] = (getattr(record, "notice", "")
                                       or f"{Action(kind).label} sent to {run.connection}.")
        except actions.ActionRefused as exc:
            status = exc.status
            extra["action_error"] = exc.message
    run.refresh_from_db()
    if request.htmx:
        # Always 200 for htmx, so the explanation is swapped in where the button was.
        return render(request, "runs/_live.html", _detail_context(request, run, **extra))
    if "action_error" in extra:
        return render(request, "runs/detail.html", _detail_context(request, run, **extra),
                      status=status)
    messages.success(request, extra["action_message"])
    return redirect(run)


# --- environments ------------------------------------------------------------------------


def _environment_rows() -> dict:
    """One row per environment: what is deployed there, and what is happening now."""
    rows = []
    for (pk, name, connection, project, latest, status, raw_status, latest_name,
         latest_version, updated_at, deployed, deployed_name, deployed_version
         ) in Environment.objects.board():
        rows.append({
            "environment": SimpleNamespace(
                pk=pk, name=name, connection=SimpleNamespace(name=connection),
                project=SimpleNamespace(name=project) if project is not None else None),
            "latest": latest and SimpleNamespace(
                pk=latest, status=status, raw_status=raw_status, name=latest_name,
                version=latest_version, updated_at=updated_at),
            "deployed": deployed and SimpleNamespace(
                pk=deployed, name=deployed_name, version=deployed_version)})
    # Written by runrows: the template spent ~0.2 ms a row on lookups and includes.
    return {"rows": rows, "rows_html": mark_safe(runrows.board_rows_html(rows))}  # noqa: S308


@login_required
def environment_board(request):
    version = data_version()
    board = rendered_once("environments/_board.html", request, version,
                          lambda: _environment_rows())
    return render(request, "environments/board.html", {"board": board})


# A delivery is read a few seconds after it arrives (RUNBOARD_WEBHOOK_COALESCE, the
# provider's answer): one unread for longer than this is shown as waiting.
READS_BEHIND_AFTER = timedelta(seconds=30)


@login_required
def connections(request):
    """Sync health of every connection: what users check when data looks stale."""
    connections = list(Connection.objects.defer("token", "cursor"))
    unread = WebhookDelivery.objects.unread_by_connection()
    behind = datetime.now(UTC) - READS_BEHIND_AFTER
    for connection in connections:  # webhook URL and setup steps, per provider
        # Deliveries whose runs are still not read: the budget holds them back (a busy
        # account on a small budget), or the workers are behind.
        waiting = unread.get(connection.pk)
        connection.unread_deliveries = (
            waiting if waiting and waiting["oldest"] < behind else None)
        # The next pass: not before the scheduler's plan, nor before an error's backoff.
        connection.next_pass_at = max(
            filter(None, [connection.next_poll_at, connection.next_attempt_at]),
            default=None) if connection.enabled else None
        provider = connection.provider_class
        connection.webhook_url = request.build_absolute_uri(
            reverse("webhook", args=[connection.webhook_key]))
        connection.webhook_steps = (provider.webhook_setup.format(url=connection.webhook_url)
                                    if provider.webhook_events else "")
        connection.recent_deliveries = connection.webhook_deliveries.all()[:5]
        connection.budget = connection.rate_budget()
        connection.budget_source = (
            "set on the connection" if connection.requests_per_hour
            else "the provider's" if connection.budget.documented
            else "Runboard's default: the provider documents none")
    return render(request, "connections.html", {
        "connections": connections, "share": round(settings.RUNBOARD_BUDGET_SHARE * 100)})


# --- audit and profile ---------------------------------------------------------------------


@login_required
def audit(request):
    action_filter = ActionFilter(
        request.GET, queryset=ActionRecord.objects.select_related("run", "user")
    )
    return render(request, "audit/list.html", {
        "filter": action_filter,
        "page": page_of(action_filter.qs, request.GET.get("page")),
        "page_query": query_without(request, "page"),
    })


@login_required
def audit_export(request, fmt):
    """The audit, with the page's filters, as a download streamed row by row."""
    if fmt not in audit_export_formats.FORMATS:
        raise Http404("No such format")
    action_filter = ActionFilter(request.GET, queryset=ActionRecord.objects.all())
    if not action_filter.is_valid():
        return HttpResponse("Invalid filter.", status=400, content_type="text/plain")
    response = StreamingHttpResponse(audit_export_formats.STREAMS[fmt](action_filter.qs),
                                     content_type=audit_export_formats.FORMATS[fmt])
    response["Content-Disposition"] = (
        f'attachment; filename="{audit_export_formats.filename(fmt)}"')
    return response


@login_required
def profile(request):
    # Post/redirect/get: the new key goes through the session, shown once, so
    # reloading the page neither shows it again nor creates a second token.
    new_key = request.session.pop("new_api_token", None) if request.method == "GET" else None
    form = TokenForm(request.POST or None)
    if request.method == "POST":
        if "revoke" in request.POST:
            pk = request.POST["revoke"]
            revoked = pk.isdecimal() and len(pk) < 19 and ApiToken.objects.active().filter(
                user=request.user, pk=pk
            ).update(revoked_at=datetime.now(UTC))
            if revoked:
                messages.success(request, "Token revoked.")
            else:
                messages.error(request, "No such token of yours to revoke.")
            return redirect("profile")
        if form.is_valid():
            _, request.session["new_api_token"] = ApiToken.issue(
                request.user, form.cleaned_data["name"],
                expires_in=timedelta(days=form.cleaned_data["expires_in"]),
                read_only=form.cleaned_data["read_only"],
            )
            return redirect("profile")
    return render(request, "profile.html", {
        "form": form, "new_key": new_key,
        "tokens": ApiToken.objects.filter(user=request.user),
        "can_act": request.user.has_perm("dashboard.act_on_run"),
    })
