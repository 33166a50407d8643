"""The JSON API for scripts and chat bots: what the pages show and the buttons do.

Built with django-ninja, so the OpenAPI document (`/api/openapi.json`, browsable at
`/api/docs`) is generated from the same type hints that validate requests: it cannot
drift from the code. Authentication is a personal token (`Authorization: Bearer rb_...`)
or the browser session; with a session, POSTs need the CSRF token like any form.
Actions go through the same `dashboard.actions.perform` as the buttons: same rules,
permission and audit. Every error is JSON: `{"error": "..."}`.
"""

from __future__ import annotations

from datetime import datetime
from functools import wraps
from typing import Annotated, Literal

import django_filters
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, JsonResponse
from django.urls import reverse
from ninja import Field, NinjaAPI, Query, Schema
from ninja import Status as Answer
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer, SessionAuth
from pydantic import StrictBool, StrictStr, StringConstraints

from dashboard import actions
from dashboard.filters import RANGES, STATUS_GROUPS, RunFilter
from dashboard.models import ApiToken, Run, mark_superseded
from dashboard.views import MAX_PAGE, page_of
from providers import registry
from providers.base import Action, Status

MAX_COMMENT = 2000


class InvalidToken(Exception):
    pass


class ReadOnlyToken(Exception):
    pass


class BearerToken(HttpBearer):
    """A personal API token from the profile page."""

    def authenticate(self, request, token):
        found = ApiToken.find(token)
        if found is None:
            raise InvalidToken
        if found.read_only and request.method not in ("GET", "HEAD", "OPTIONS"):
            raise ReadOnlyToken
        request.user = found.user
        return found.user


def _signed_in(view):
    """The schema and its docs page: for a session or an API token, like the API."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            user = ApiToken.authenticate(header.removeprefix("Bearer ").strip())
            if user is None:
                return error(401, "Invalid, expired or revoked API token.")
            request.user = user
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapper


api = NinjaAPI(
    docs_decorator=_signed_in,
    title="Runboard API",
    version="1",
    description=(
        "Deployment runs across providers, and the actions release managers take on them. "
        "Authenticate with a personal token from /profile/ (`Authorization: Bearer rb_…`)."
    ),
    auth=[BearerToken(), SessionAuth(csrf=True)],
    urls_namespace="api",
)


# --- errors: always {"error": "..."} --------------------------------------------------


class Error(Schema):
    error: str
    result: str | None = Field(None, description="The action's audit record: failed or unknown")
    provider_response: str | None = None
    fields: dict | None = None


def error(status: int, message: str, **extra) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


@api.exception_handler(InvalidToken)
def _invalid_token(request, exc):
    return error(401, "Invalid, expired or revoked API token.")


@api.exception_handler(ReadOnlyToken)
def _read_only_token(request, exc):
    return error(403, "This API token is read-only: it cannot act on runs.")


@api.exception_handler(AuthenticationError)
def _no_credentials(request, exc):
    return error(401, "Authentication required: send Authorization: Bearer <token>.")


@api.exception_handler(HttpError)
def _http_error(request, exc):
    if exc.status_code == 403 and "CSRF" in str(exc):
        return error(403, "CSRF check failed; use a bearer token from scripts.")
    return error(exc.status_code, str(exc))


@api.exception_handler(ValidationError)
def _invalid_input(request, exc):
    if any(e["loc"][0] == "path" for e in exc.errors):
        # e.g. /api/runs/1/explode/: no such resource, rather than bad input.
        return error(404, f"No such path; actions are {', '.join(Action.values)}.")
    fields = {".".join(str(part) for part in e["loc"] if part not in {"body", "query", "path",
                                                                          "payload"}):
              e["msg"] for e in exc.errors}
    return error(400, "Invalid input.", fields=fields)


@api.exception_handler(Http404)
def _not_found(request, exc):
    return error(404, str(exc) or "Not found.")


# --- schemas ---------------------------------------------------------------------------

StatusValue = Literal[tuple(Status.values)]  # type: ignore[valid-type]
ActionKind = Literal[tuple(Action.values)]  # type: ignore[valid-type]


class Review(Schema):
    conclusion: str
    by: str
    at: datetime | None
    comment: str


class JobOut(Schema):
    name: str
    order: int
    status: StatusValue
    provider_status: str
    environment: str | None
    review: Review | None


class ActionOut(Schema):
    kind: ActionKind
    user: str
    at: datetime
    comment: str
    options: dict
    result: str = Field(description="pending, succeeded, failed, unknown (no usable answer "
                        "came) or reconciled (no answer came; the run, re-read, shows it done)")
    provider_response: str


class RunOut(Schema):
    id: int
    url: str = Field(description="The run's page in Runboard: paste it into chat.")
    provider: str
    connection: str
    external_id: str = Field(description="The provider's own id of the run.")
    name: str
    status: StatusValue
    provider_status: str
    version: str
    branch: str
    commit: str
    triggered_by: str
    project: str | None
    pipeline: str | None
    environment: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    provider_url: str | None = Field(description="The run on the provider's own site.")
    available_actions: list[ActionKind]


class RunDetailOut(RunOut):
    force_cancel_supported: bool
    jobs: list[JobOut]
    actions: list[ActionOut]


class RunPage(Schema):
    results: list[RunOut]
    page: int
    next: str | None
    previous: str | None


# Database ids are positive 64-bit integers; text never carries a NUL (PostgreSQL refuses it).
Id = Annotated[int, Field(ge=1, le=2**63 - 1)]
Text = Annotated[str, Field(max_length=200, pattern=r"^[^\x00]*$")]


class RunQuery(Schema):
    """The run list page's filters: a filtered page's query string works here too."""

    q: Text | None = Field(None, description="Search name, version, branch and commit.")
    group: Literal[tuple(STATUS_GROUPS)] | None = None  # type: ignore[valid-type]
    status: list[StatusValue] | None = None
    provider: Literal[tuple(registry.PROVIDERS)] | None = None  # type: ignore[valid-type]
    connection: Id | None = None
    project: Id | None = None
    pipeline: Text | None = None
    environment: Id | None = None
    by: Text | None = Field(None, description="Who triggered the run (substring).")
    range: Literal[tuple(RANGES)] | None = None  # type: ignore[valid-type]
    page: int = Field(1, ge=1, le=MAX_PAGE)


class ApiRunFilter(RunFilter):
    """The page's filters, where an id that names nothing matches no run (the page's
    select boxes refuse it instead)."""

    connection = django_filters.NumberFilter(field_name="connection_id")
    project = django_filters.NumberFilter(field_name="project_id")
    environment = django_filters.NumberFilter(field_name="environment_id")


VariableName = Annotated[StrictStr, StringConstraints(min_length=1, max_length=100)]
VariableValue = Annotated[StrictStr, StringConstraints(max_length=MAX_COMMENT)]


class ActionIn(Schema):
    comment: StrictStr = Field("", max_length=MAX_COMMENT, pattern=r"^[^\x00]*$",
                               description="Required to cancel; kept in the audit.")
    force_cancel: StrictBool = Field(False, description="Only where the provider has it.")
    variables: dict[VariableName, VariableValue] | None = Field(
        None, max_length=100,
        description="Approve only: values for the variables a waiting run asks for "
                    "(e.g. Buddy's APPLY_VARIABLES); a variable left out keeps the run's own "
                    "value. The audit keeps their names, not their values.")


class ActionResult(Schema):
    result: str
    provider_response: str
    message: str | None = Field(None, description="What happened, where no answer came")
    run: RunOut


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


# --- endpoints -------------------------------------------------------------------------

ERRORS = {400: Error, 401: Error, 403: Error, 404: Error}


@api.get("/runs/", response={200: RunPage, **ERRORS}, url_name="runs",
         summary="List runs, newest first, 50 a page")
def runs(request, filters: Query[RunQuery]):
    run_filter = ApiRunFilter(request.GET, queryset=Run.objects.for_list())
    if not run_filter.is_valid():
        return Answer(400, {"error": "Invalid filter.",
                            "fields": run_filter.errors.get_json_data()})
    page = page_of(run_filter.qs, filters.page)
    base = reverse("api:runs")
    query = request.GET.copy()

    def link(number):
        query["page"] = number
        return request.build_absolute_uri(f"{base}?{query.urlencode()}")

    mark_superseded(page["rows"])  # for available_actions, without a query per run
    return {
        "results": [run_json(request, run) for run in page["rows"]],
        "page": page["number"],
        "next": link(page["number"] + 1) if page["has_next"] else None,
        "previous": link(page["number"] - 1) if page["has_previous"] else None,
    }


def _get_run(pk) -> Run:
    found = Run.objects.for_list().filter(pk=pk).first()
    if found is None:
        raise Http404("No such run.")
    return found


@api.get("/runs/{pk}/", response={200: RunDetailOut, **ERRORS}, url_name="run",
         summary="One run with its jobs, reviews and action history")
def run(request, pk: Id):
    return run_json(request, _get_run(pk), detail=True)


@api.post("/runs/{pk}/{kind}/",
          response={200: ActionResult, **ERRORS, 409: Error, 502: Error},
          url_name="run-action", summary="Cancel, approve, reject or retry a run",
          description=(
              "Needs the release-manager permission. 409: refused by Runboard (e.g. the run "
              "already finished, or the same action is in flight); 502: refused at the "
              "provider (`result` failed), or no usable answer came (`result` unknown: the "
              "run was re-read and may or may not show it done; check before trying again)."))
def run_action(request, pk: Id, kind: ActionKind, payload: ActionIn = None):
    if not request.user.has_perm("dashboard.act_on_run"):
        return Answer(403, {"error": "You need the release-manager permission to act on runs."})
    found = _get_run(pk)
    payload = payload or ActionIn()
    try:
        record = actions.perform(found, request.user, kind, comment=payload.comment,
                                 force=payload.force_cancel, variables=payload.variables)
    except actions.ActionRefused as exc:
        return Answer(exc.status, {
            "error": exc.message, "result": exc.record.state if exc.record else None,
            "provider_response": exc.record.response if exc.record else None})
    found.refresh_from_db()
    return {"result": record.state, "provider_response": record.response,
            "message": getattr(record, "notice", None), "run": run_json(request, found)}
