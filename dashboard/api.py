"""The JSON API for scripts and chat bots: what the pages show and the buttons do.

Authentication is a personal token (`Authorization: Bearer rb_...`) or the browser
session; with a session, POSTs need the CSRF token like any form. Actions go through
the same `dashboard.actions.perform` as the buttons: same rules, permission and audit.
"""

from __future__ import annotations

import json
from functools import wraps

from django.contrib.auth.models import AnonymousUser
from django.http import JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from dashboard import actions
from dashboard.filters import RunFilter
from dashboard.models import ApiToken, Run, mark_superseded
from dashboard.views import page_of
from providers.base import Action

MAX_COMMENT = 2000


def error(status: int, message: str, **extra) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def _csrf_refusal(request):
    check = CsrfViewMiddleware(lambda r: None)
    check.process_request(request)
    return check.process_view(request, None, (), {})


def api_view(view):
    """Authenticate by bearer token or session; JSON errors instead of redirects."""

    @csrf_exempt
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            user = ApiToken.authenticate(header.removeprefix("Bearer ").strip())
            if user is None:
                return error(401, "Invalid or revoked API token.")
            request.user = user
        elif not request.user.is_authenticated:
            request.user = AnonymousUser()
            return error(401, "Authentication required: send Authorization: Bearer <token>.")
        elif request.method == "POST" and _csrf_refusal(request) is not None:
            return error(403, "CSRF check failed; use a bearer token from scripts.")
        return view(request, *args, **kwargs)

    return wrapper


def run_json(request, run: Run, *, detail: bool = False) -> dict:
    data = {
        "id": run.pk,
        "url": request.build_absolute_uri(run.get_absolute_url()),
        "provider": run.connection.provider,
        "connection": run.connection.name,
        "external_id": run.external_id,
        "name": run.name,
        "status": run.status,
        "provider_status": run.raw_status,
        "version": run.version,
        "branch": run.branch,
        "commit": run.commit,
        "triggered_by": run.triggered_by,
        "project": run.project.name if run.project else None,
        "pipeline": run.pipeline_name or None,
        "environment": run.environment.name if run.environment else None,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "provider_url": run.web_url or None,
        "available_actions": [str(a) for a in run.available_actions()],
    }
    if detail:
        data["force_cancel_supported"] = run.connection.provider_class.has_force_cancel
        data["jobs"] = [
            {"name": job.name, "order": job.order, "status": job.status,
             "provider_status": job.raw_status,
             "environment": job.environment.name if job.environment else None,
             "review": {"conclusion": job.review_conclusion, "by": job.reviewed_by,
                        "at": job.reviewed_at, "comment": job.review_comment}
             if job.review_conclusion else None}
            for job in run.jobs.select_related("environment")
        ]
        data["actions"] = [
            {"kind": a.kind, "user": a.user.get_username(), "at": a.created_at,
             "comment": a.comment, "options": a.options, "result": a.state,
             "provider_response": a.response}
            for a in run.actions.select_related("user")[:50]
        ]
    return data


@api_view
@require_GET
def runs(request):
    run_filter = RunFilter(request.GET, queryset=Run.objects.for_list())
    if not run_filter.is_valid():
        return error(400, "Invalid filter.", fields=run_filter.errors.get_json_data())
    page = page_of(run_filter.qs, request.GET.get("page"))
    base = reverse("api-runs")
    query = request.GET.copy()

    def link(number):
        query["page"] = number
        return request.build_absolute_uri(f"{base}?{query.urlencode()}")

    mark_superseded(page["rows"])  # for available_actions, without a query per run
    return JsonResponse({
        "results": [run_json(request, run) for run in page["rows"]],
        "page": page["number"],
        "next": link(page["number"] + 1) if page["has_next"] else None,
        "previous": link(page["number"] - 1) if page["has_previous"] else None,
    })


def _get_run(pk):
    return Run.objects.for_list().filter(pk=pk).first()


@api_view
@require_GET
def run(request, pk):
    found = _get_run(pk)
    if found is None:
        return error(404, "No such run.")
    return JsonResponse(run_json(request, found, detail=True))


@api_view
@require_POST
def run_action(request, pk, kind):
    if kind not in Action.values:
        return error(404, f"No action {kind!r}; use one of {', '.join(Action.values)}.")
    if not request.user.has_perm("dashboard.act_on_run"):
        return error(403, "You need the release-manager permission to act on runs.")
    found = _get_run(pk)
    if found is None:
        return error(404, "No such run.")
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return error(400, "The body must be JSON.")
    if not isinstance(body, dict):
        return error(400, "The body must be a JSON object.")
    comment = body.get("comment", "")
    force = body.get("force_cancel", False)
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        return error(400, f"comment must be a string of at most {MAX_COMMENT} characters.")
    if not isinstance(force, bool):
        return error(400, "force_cancel must be true or false.")
    try:
        record = actions.perform(found, request.user, kind, comment=comment, force=force)
    except actions.ActionRefused as exc:
        return error(exc.status, exc.message,
                     provider_response=exc.record.response if exc.record else None)
    found.refresh_from_db()
    return JsonResponse({"result": record.state, "provider_response": record.response,
                         "run": run_json(request, found)})
