"""Qovery simulator: organizations, projects, environments, their deployments and queue.

Written from Qovery's public OpenAPI spec (a cut of it is in
tests/fixtures/specs/qovery-openapi-subset.yaml, and every answer served here is
validated against it by tests/test_qovery_spec.py), with what Qovery's own console, CLI
and Terraform provider show of the API where the spec is silent:

- Auth (spec securitySchemes; the CLI): API tokens (`qov_…`) go as
  `Authorization: Token <token>`, JWTs as `Authorization: Bearer <jwt>`. The simulator
  holds one token and accepts it only under the scheme its shape calls for: a Bearer
  with an API token (or a Token with a JWT) is refused with 401.
- A deployment is an *execution*: `identifier.execution_id` in deploymentHistoryV2, which
  is what `EnvironmentStatus.last_deployment_id` names (the console matches the two).
  Its format is "environment_id-version" (the spec's DeploymentBuildUsageReportRequest).
  V1 deploymentHistory items have their own uuid `id`, which is NOT the execution id.
- V1 deploymentHistory: 20 a page ("By default it returns the 20 last results"), the
  next page asked with `startId` (a uuid: "Starting point after which to return
  results"). deploymentHistoryV2 takes only `pageSize` (number, nullable, default 20);
  it has no page or startId parameter, so it cannot be paged further.
- Actions answer 202: cancelDeployment and redeploy with the EnvironmentStatus,
  POST /deploymentQueue/{id}/cancelDeployment with no body; 409 where the spec lists it.
- Queued deployment requests: GET /environment/{id}/deploymentQueue answers
  {"results": [QueuedDeploymentRequestWithStages]}. An action answer whose
  `deployment_request_id` is set means the request waits in the queue (the console
  says "Your service is queuing"); null means it started at once.
- StateEnum: 29 values, UNAVAILABLE included (the console shows it as "Status unavailable").
- GET /project/{id}/environment/status (getProjectEnvironmentsStatus, "Returns a list of
  environments with only their id and status"): {"results": [EnvironmentStatus]}, the
  same status objects GET /environment/{id}/status answers; no paging parameter.
- Unknown query parameters are ignored, as a real server does.

Assumed here (not documented anywhere we could read):
- Error bodies: the spec gives them no schema. Qovery's Terraform provider reads
  {"status": <code>, "detail": "<message>"} from them, so that is what is served.
- A redeploy of an idle environment starts its execution at once; the 202 answer is the
  status as it was when the request was taken (still naming the previous execution):
  the console notes it cannot link an action's answer to its execution id.
- A redeploy of a busy environment is queued (202 with `deployment_request_id`); 409
  ("Operation is in progress") is kept for an environment whose deployment is being
  cancelled.
- `deployment_request_id` on the environment status names the newest request waiting
  in the queue, or is null when none waits.
- A request waits QUEUE_PICKUP_SECONDS before the engine takes it, even on an idle
  environment; a cancelled request leaves the queue at once and is not in the history.
- deploymentHistoryV2's `pageSize` has no documented maximum; we cap it at 100, the size
  Qovery's own console asks for (a size known to be served).
- Stage names ("DATABASE DEFAULT", "JOB DEFAULT", "APPLICATION DEFAULT") follow the
  console's fixtures; the job stage's name and the order of stages are assumed.
- DeploymentHistoryServiceDetails is a oneOf whose Helm branch requires nothing, so an
  application's {commit, build_pod_name} also matches it and a strict validator refuses
  the answer. We serve details that match one branch only: {commit} (the Helm branch's
  shape) for services with a commit, {} otherwise. A client must read no more than
  `commit` from `details`.
- `icon_uri`: its values are not documented; an app:// URI stands in.
- Whether the history can lag the status: not documented either way. By default an
  execution is in deploymentHistoryV2 as soon as the status names it; `history_lag`
  (simulated seconds) holds the newest executions out of the history that long, as an
  eventually consistent read model would, so a client must not take an environment
  whose status names an execution its history lacks as read.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from providers.simulators.base import (
    Delivery,
    HttpError,
    Phase,
    Request,
    SimRun,
    Simulator,
    iso,
)

# Deterministic, real-looking ids: the same name always gets the same uuid.
ID_SPACE = uuid.UUID("6f1c2a64-57a4-4f0e-9c1e-0d7a7a2b3c01")

# deploymentHistory (V1): "By default it returns the 20 last results"; no size parameter.
V1_PAGE_SIZE = 20
# deploymentHistoryV2: `pageSize`, documented default 20; maximum not documented (assumed).
V2_PAGE_SIZE_DEFAULT = 20
V2_PAGE_SIZE_MAX = 100  # what Qovery's console asks for
# Assumed: how long a queued request waits before the engine takes it.
QUEUE_PICKUP_SECONDS = 3

DEPLOY_PLAN = [Phase("DEPLOYMENT_QUEUED", 5), Phase("BUILDING", 30), Phase("DEPLOYING", 20),
               Phase("DEPLOYED", None)]
BUILD_FAILS_PLAN = [Phase("DEPLOYMENT_QUEUED", 5), Phase("BUILDING", 25),
                    Phase("BUILD_ERROR", None)]
DEPLOY_FAILS_PLAN = [Phase("DEPLOYMENT_QUEUED", 5), Phase("BUILDING", 30),
                     Phase("DEPLOYING", 15), Phase("DEPLOYMENT_ERROR", None)]
# Cancelling is only requested: the engine stops what it is doing, then reports CANCELED.
CANCEL_PLAN = [Phase("CANCELING", 4), Phase("CANCELED", None)]
CANCELLED_PLAN = DEPLOY_PLAN[:2] + CANCEL_PLAN

# StateEnum, all 29 values of the spec (UNAVAILABLE added in 2026-03).
STATES = (
    "BUILDING", "BUILD_ERROR", "CANCELED", "CANCELING", "DELETED", "DELETE_ERROR",
    "DELETE_QUEUED", "DELETING", "DEPLOYED", "DEPLOYING", "DEPLOYMENT_ERROR",
    "DEPLOYMENT_QUEUED", "EXECUTING", "QUEUED", "READY", "RECAP", "RESTARTED", "RESTARTING",
    "RESTART_ERROR", "RESTART_QUEUED", "STOPPED", "STOPPING", "STOP_ERROR", "STOP_QUEUED",
    "UNAVAILABLE", "WAITING_DELETING", "WAITING_RESTARTING", "WAITING_RUNNING",
    "WAITING_STOPPING",
)
RUNNING = {"BUILDING", "DEPLOYING", "EXECUTING", "RECAP", "RESTARTING", "STOPPING", "DELETING"}
FINAL = {"DEPLOYED", "BUILD_ERROR", "DEPLOYMENT_ERROR", "CANCELED", "STOPPED", "STOP_ERROR",
         "RESTARTED", "RESTART_ERROR", "DELETED", "DELETE_ERROR", "READY"}

# Documented refusals (the 409 descriptions in Qovery's API reference).
CANCEL_REFUSED = "Environment deployment is already cancelled or an operation is in progress"
REQUEST_CANCEL_REFUSED = "Deployment request is already cancelled or an operation is in progress"
OPERATION_IN_PROGRESS = "Operation is in progress"

# Service kinds as V1 groups them, with their V2 service_type and stage (assumed order).
SERVICE_TYPES = {"databases": "DATABASE", "jobs": "JOB", "applications": "APPLICATION",
                 "containers": "CONTAINER", "helms": "HELM"}
STAGES = [("DATABASE DEFAULT", ("databases",)), ("JOB DEFAULT", ("jobs",)),
          ("APPLICATION DEFAULT", ("applications", "containers")),
          ("HELM DEFAULT", ("helms",))]
# A service that failed or never ran in a failed/cancelled deployment.
STAGE_STATUS = {"done": "DONE", "error": "ERROR", "never": "SKIPPED", "canceled": "CANCELED"}

DEMO_ORGANIZATIONS = {
    "Acme Retail": {
        "storefront": ["production", "staging", "preview-123"],
        "payments-api": ["production", "staging"],
    },
    "Acme Labs": {"ml-playground": ["sandbox"]},
}
DEMO_SERVICES = {
    "storefront": [("databases", "postgres-main"), ("applications", "web-frontend"),
                   ("applications", "checkout-api"), ("containers", "redis-cache"),
                   ("jobs", "db-migrations")],
    "payments-api": [("databases", "ledger-db"), ("applications", "payments-api"),
                     ("jobs", "seed-fixtures")],
    "ml-playground": [("applications", "notebook-gateway")],
}
PEOPLE = ["Romain Dupont", "Priya Raman", "Lena Fischer", "Tomás Alvarez"]
COMMIT_MESSAGES = ["Fix basket rounding", "Bump checkout SDK to 4.2", "Add feature flag for "
                   "one-click pay", "Tune Postgres pool size", "Release v2.14.0"]


def make_id(kind: str, name: str) -> str:
    return str(uuid.uuid5(ID_SPACE, f"{kind}:{name}"))


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated base64url parts; Qovery's API tokens (`qov_…`) are not."""
    parts = token.split(".")
    return len(parts) == 3 and all(parts)


def iso_duration(seconds: float) -> str:
    """An ISO 8601 duration ("PT1M5S"), the spec's `format: duration`."""
    seconds = max(0, int(seconds))
    minutes, rest = divmod(seconds, 60)
    return f"PT{minutes}M{rest}S" if minutes else f"PT{rest}S"


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class QoverySimulator(Simulator):
    name = "qovery"
    running_statuses = RUNNING
    final_statuses = FINAL
    unknown_status_value = "TELEPORTING"
    v1_page_size = V1_PAGE_SIZE  # tests may shrink it to page with few records
    history_lag = 0.0  # seconds an execution stays out of deploymentHistoryV2

    def __init__(self, *args, **kwargs):
        self.organizations: dict[str, str] = {}  # id -> name
        self.projects: dict[str, dict[str, Any]] = {}  # id -> {name, organization}
        self.environments: dict[str, dict[str, Any]] = {}  # id -> {name, project, ...}
        # Every deployment request ever made: id -> {environment, state, ...}; state is
        # "queued", "started" (as an execution) or "cancelled".
        self.deployment_requests: dict[str, dict[str, Any]] = {}
        # (request, status, body, headers) of every API call, for the spec tests.
        self.exchanges: list[tuple[Request, int, Any, dict[str, str]]] = []
        self._sequence = itertools.count(1)
        super().__init__(*args, **kwargs)

    # -- wire details ------------------------------------------------------------------

    def routes(self) -> None:
        env = "/environment/{environment}"
        self.route("GET", "/organization/{organization}/project", self.list_projects)
        self.route("GET", "/project/{project}", self.get_project)
        self.route("GET", "/project/{project}/environment", self.list_environments)
        self.route("GET", "/project/{project}/environment/status", self.list_statuses)
        self.route("GET", env, self.get_environment)
        self.route("GET", env + "/status", self.get_status)
        self.route("GET", env + "/deploymentHistory", self.list_history)
        self.route("GET", env + "/deploymentHistoryV2", self.list_history_v2)
        self.route("GET", env + "/deploymentQueue", self.list_queue)
        self.route("POST", env + "/cancelDeployment", self.cancel_deployment)
        self.route("POST", env + "/redeploy", self.redeploy)
        self.route("POST", "/deploymentQueue/{request}/cancelDeployment", self.cancel_request)

    def dispatch(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        status, body, headers = super().dispatch(request)
        if request.path.startswith("/_sim/"):
            return status, body, headers
        # Every POST Runboard sends answers 202 in the spec ("... has been requested").
        if status == 200 and request.method == "POST":
            status = 202
            if request.path.startswith("/deploymentQueue/"):
                body = b""  # documented with no content
        with self.lock:
            self.exchanges.append((request, status, body, headers))
        return status, body, headers

    def authorised(self, headers: dict[str, str]) -> bool:
        scheme = "Bearer" if looks_like_jwt(self.token) else "Token"
        return headers.get("authorization") == f"{scheme} {self.token}"

    def error_body(self, status: int, message: str) -> Any:
        return {"status": status, "detail": message}

    def auth_error(self) -> HttpError:
        return HttpError(401, self.error_body(401, "Access token is missing or invalid"))

    def with_unknown_status(self, body: Any) -> Any:
        body = super().with_unknown_status(body)
        if isinstance(body, dict) and "last_deployment_state" in body:
            body = {**body, "last_deployment_state": self.unknown_status_value}
        return body

    def without_optional_fields(self, body: Any) -> Any:
        """Drop what the spec leaves optional (keeping what a run is addressed by)."""
        optional = {"updated_at", "origin", "triggered_by", "last_deployment_date",
                    "total_deployment_duration_in_seconds", "deployment_status",
                    "deployment_request_id", "applications", "containers", "databases",
                    "jobs", "helms", "commit"}
        if isinstance(body, list):
            return [self.without_optional_fields(item) for item in body]
        if isinstance(body, dict):
            return {k: self.without_optional_fields(v) for k, v in body.items()
                    if k not in optional}
        return body

    # -- sample data -------------------------------------------------------------------

    def add_organization(self, name: str) -> str:
        organization_id = make_id("organization", name)
        with self.lock:
            self.organizations[organization_id] = name
        return organization_id

    def add_project(self, organization_id: str, name: str) -> str:
        project_id = make_id("project", f"{organization_id}/{name}")
        with self.lock:
            self.projects[project_id] = {"name": name, "organization": organization_id}
        return project_id

    def add_environment(self, project_id: str, name: str,
                        services: list[tuple[str, str]] | None = None) -> str:
        environment_id = make_id("environment", f"{project_id}/{name}")
        mode = "PRODUCTION" if name == "production" else (
            "PREVIEW" if name.startswith("preview") else "STAGING")
        with self.lock:
            self.environments[environment_id] = {
                "name": name, "project": project_id, "mode": mode, "version": 0,
                "services": list(services or [("applications", "app")]),
            }
        return environment_id

    def add_deployment(self, environment_id: str, plan: list[Phase] | None = None, *,
                       age: float = 0, triggered_by: str = "Priya Raman", origin: str = "GIT",
                       commit: str | None = None, message: str = "Release",
                       request_id: str | None = None, at: datetime | None = None) -> SimRun:
        """A new execution of the environment (one that started at once, unless
        `request_id` names the queued request it came from)."""
        with self.lock:
            sequence = next(self._sequence)
            environment = self.environments[environment_id]
            environment["version"] += 1
            execution_id = f"{environment_id}-{environment['version']}"
            commit = commit or hashlib.sha256(f"commit:{sequence}".encode()).hexdigest()[:40]
            run = self.add_run(
                execution_id, list(plan or DEPLOY_PLAN),
                created_at=at or self.clock.now() - timedelta(seconds=age),
                environment=environment_id, sequence=sequence, triggered_by=triggered_by,
                origin=origin, commit=commit, message=message, trigger_action="DEPLOY",
                # V1 history knows the deployment by another id than the execution id.
                history_id=make_id("deployment-history", execution_id),
                deployment_request_id=request_id,
            )
            if run.status in FINAL and run.finished_at is None:  # a plan that starts done
                run.finished_at = run.created_at
            return run

    def queue_deployment(self, environment_id: str, plan: list[Phase] | None = None, *,
                         triggered_by: str = "Priya Raman", origin: str = "CONSOLE",
                         commit: str | None = None, message: str = "Release") -> str:
        """A deployment request waiting in the environment's queue; returns its id."""
        with self.lock:
            request_id = make_id("deployment-request", f"{environment_id}/{next(self._sequence)}")
            self.deployment_requests[request_id] = {
                "environment": environment_id, "state": "queued", "plan": list(
                    plan or DEPLOY_PLAN), "triggered_by": triggered_by, "origin": origin,
                "commit": commit, "message": message, "trigger_action": "DEPLOY",
                "queued_at": self.clock.now(), "execution_id": None,
            }
            return request_id

    def seed_demo(self, rng) -> dict[str, str]:
        """History for every environment, plus two live deployments; returns the scope."""
        scope = {}
        for organization, projects in DEMO_ORGANIZATIONS.items():
            organization_id = self.add_organization(organization)
            scope = scope or {"organization": organization_id}
            for project, environments in projects.items():
                project_id = self.add_project(organization_id, project)
                for environment in environments:
                    environment_id = self.add_environment(project_id, environment,
                                                          DEMO_SERVICES[project])
                    for hours in (70, 46, 27, 12, 5, 2):
                        plan = rng.choice([DEPLOY_PLAN] * 6 + [
                            BUILD_FAILS_PLAN, DEPLOY_FAILS_PLAN, CANCELLED_PLAN])
                        self._demo_deployment(rng, environment_id, plan, hours * 3600)
        storefront = make_id("project", f"{scope['organization']}/storefront")
        self._demo_deployment(rng, make_id("environment", f"{storefront}/production"),
                              DEPLOY_PLAN, 40)
        self._demo_deployment(rng, make_id("environment", f"{storefront}/preview-123"),
                              DEPLOY_PLAN, 12)
        return scope

    def spawn_demo(self, rng) -> None:
        """A new deployment on an idle environment, or now and then one queued behind a
        busy environment's deployment (Qovery runs one operation at a time)."""
        with self.lock:
            idle = sorted(e for e in self.environments if not self._busy(e))
            waiting = {r["environment"] for _, r in self._queued()}
            busy = sorted(e for e in self.environments if self._busy(e) and e not in waiting)
            if busy and (not idle or rng.random() < 0.25):
                self.queue_deployment(rng.choice(busy), triggered_by=rng.choice(PEOPLE),
                                      message=rng.choice(COMMIT_MESSAGES))
            elif idle:
                plan = rng.choice([DEPLOY_PLAN, DEPLOY_PLAN, BUILD_FAILS_PLAN,
                                   DEPLOY_FAILS_PLAN])
                self._demo_deployment(rng, rng.choice(idle), plan, 0)

    def _demo_deployment(self, rng, environment_id: str, plan, age: float) -> None:
        self.add_deployment(environment_id, plan, age=age, triggered_by=rng.choice(PEOPLE),
                            origin=rng.choice(["GIT", "GIT", "CONSOLE", "API"]),
                            message=rng.choice(COMMIT_MESSAGES))

    # -- state -------------------------------------------------------------------------

    def _deployments(self, environment_id: str) -> list[SimRun]:
        """Newest first."""
        return sorted((r for r in self.runs.values() if r.data["environment"] == environment_id),
                      key=lambda r: (r.created_at, r.data["sequence"]), reverse=True)

    def _latest(self, environment_id: str) -> SimRun | None:
        deployments = self._deployments(environment_id)
        return deployments[0] if deployments else None

    def _busy(self, environment_id: str) -> bool:
        latest = self._latest(environment_id)
        return latest is not None and latest.status not in FINAL

    def _queued(self, environment_id: str | None = None) -> list[tuple[str, dict]]:
        """Requests waiting, oldest first, as (id, request)."""
        return [(rid, r) for rid, r in self.deployment_requests.items()
                if r["state"] == "queued"
                and (environment_id is None or r["environment"] == environment_id)]

    def tick(self) -> None:
        super().tick()
        with self.lock:
            self._start_queued()

    def _start_queued(self) -> None:
        """The engine takes the oldest waiting request of each idle environment."""
        now = self.clock.now()
        for environment_id in self.environments:
            while True:
                queued = self._queued(environment_id)
                if not queued:
                    break
                request_id, request = queued[0]
                starts = request["queued_at"] + timedelta(seconds=QUEUE_PICKUP_SECONDS)
                latest = self._latest(environment_id)
                if latest is not None and latest.status not in FINAL:
                    break
                if latest is not None:
                    starts = max(starts, latest.finished_at or latest.updated_at)
                if starts > now:
                    break
                run = self.add_deployment(
                    environment_id, request["plan"], triggered_by=request["triggered_by"],
                    origin=request["origin"], commit=request["commit"],
                    message=request["message"], request_id=request_id, at=starts)
                request.update(state="started", execution_id=run.id)

    def _not_found(self) -> HttpError:
        return HttpError(404, self.error_body(404, "Resource not found"))

    def _environment_id(self, request: Request) -> str:
        environment_id = request.params["environment"]
        if environment_id not in self.environments:
            raise self._not_found()
        return environment_id

    # -- handlers ----------------------------------------------------------------------

    def _render_project(self, project_id: str) -> dict[str, Any]:
        project = self.projects[project_id]
        count = sum(1 for e in self.environments.values() if e["project"] == project_id)
        return {"id": project_id, "created_at": "2024-03-04T09:12:00Z",
                "updated_at": "2025-01-20T16:40:00Z", "name": project["name"],
                "description": "", "associated_environments_count": count,
                "organization": {"id": project["organization"]}}

    def list_projects(self, request: Request) -> Any:
        organization_id = request.params["organization"]
        if organization_id not in self.organizations:
            raise self._not_found()
        return {"results": [self._render_project(p) for p, data in sorted(
            self.projects.items(), key=lambda kv: kv[1]["name"])
            if data["organization"] == organization_id]}

    def get_project(self, request: Request) -> Any:
        if request.params["project"] not in self.projects:
            raise self._not_found()
        return self._render_project(request.params["project"])

    def _render_environment(self, environment_id: str) -> dict[str, Any]:
        environment = self.environments[environment_id]
        organization_id = self.projects[environment["project"]]["organization"]
        return {
            "id": environment_id, "created_at": "2024-03-04T09:30:00Z",
            "updated_at": "2025-02-11T08:05:00Z", "name": environment["name"],
            "organization": {"id": organization_id}, "project": {"id": environment["project"]},
            "cloud_provider": {"provider": "aws", "cluster": "eu-west-3"},
            "mode": environment["mode"], "cluster_id": make_id("cluster", organization_id),
        }

    def list_environments(self, request: Request) -> Any:
        project_id = request.params["project"]
        if project_id not in self.projects:
            raise self._not_found()
        return {"results": [self._render_environment(e) for e, data in sorted(
            self.environments.items(), key=lambda kv: kv[1]["name"])
            if data["project"] == project_id]}

    def get_environment(self, request: Request) -> Any:
        return self._render_environment(self._environment_id(request))

    def render_status(self, environment_id: str,
                      latest: SimRun | None = None) -> dict[str, Any]:
        latest = latest or self._latest(environment_id)
        waiting = self._queued(environment_id)
        request_id = waiting[-1][0] if waiting else None
        if latest is None:
            return {"id": environment_id, "state": "READY", "last_deployment_state": "READY",
                    "last_deployment_date": None, "last_deployment_id": None,
                    "total_deployment_duration_in_seconds": None, "origin": None,
                    "triggered_by": None, "deployment_status": "NEVER_DEPLOYED",
                    "deployment_request_id": request_id}
        ever_deployed = any(r.status == "DEPLOYED" for r in self._deployments(environment_id))
        ended = latest.finished_at if latest.status in FINAL else self.clock.now()
        return {
            "id": environment_id,
            "state": latest.status,
            "last_deployment_state": latest.status,
            "last_deployment_date": iso(latest.created_at, millis=False),
            "last_deployment_id": latest.id,
            "total_deployment_duration_in_seconds": int(
                ((ended or latest.updated_at) - latest.created_at).total_seconds()),
            "origin": latest.data["origin"],
            "triggered_by": latest.data["triggered_by"],
            "deployment_status": "UP_TO_DATE" if latest.status == "DEPLOYED" else (
                "OUT_OF_DATE" if ever_deployed else "NEVER_DEPLOYED"),
            "deployment_request_id": request_id,
        }

    def get_status(self, request: Request) -> Any:
        return self.render_status(self._environment_id(request))

    def list_statuses(self, request: Request) -> Any:
        """getProjectEnvironmentsStatus: every environment of the project, each as
        EnvironmentStatus, under `results` (EnvironmentStatusList); no paging."""
        project_id = request.params["project"]
        if project_id not in self.projects:
            raise self._not_found()
        return {"results": [self.render_status(e) for e, data in sorted(
            self.environments.items(), key=lambda kv: kv[1]["name"])
            if data["project"] == project_id]}

    def list_history(self, request: Request) -> Any:
        """V1: 20 a page, the next page after `startId` (a V1 record id)."""
        environment_id = self._environment_id(request)
        deployments = self._deployments(environment_id)
        start = 0
        start_id = request.query.get("startId")
        if start_id:
            if not _is_uuid(start_id):
                raise HttpError(400, self.error_body(400, "startId must be a uuid"))
            ids = [r.data["history_id"] for r in deployments]
            # Unknown start: nothing after it (assumed; Qovery does not document this case).
            start = ids.index(start_id) + 1 if start_id in ids else len(ids)
        chunk = deployments[start:start + self.v1_page_size]
        return {"page": start // self.v1_page_size + 1, "page_size": self.v1_page_size,
                "results": [self.render_deployment(r) for r in chunk]}

    def list_history_v2(self, request: Request) -> Any:
        """V2: the newest `pageSize` executions (default 20); no further pages."""
        environment_id = self._environment_id(request)
        raw = request.query.get("pageSize")
        size = V2_PAGE_SIZE_DEFAULT
        if raw not in (None, ""):
            try:
                size = int(float(raw))
            except ValueError:
                raise HttpError(400, self.error_body(400, "pageSize must be a number")) from None
            if size < 1:
                raise HttpError(400, self.error_body(400, "pageSize must be positive"))
        size = min(size, V2_PAGE_SIZE_MAX)
        listed = self._deployments(environment_id)
        if self.history_lag:
            shown_before = self.clock.now() - timedelta(seconds=self.history_lag)
            listed = [r for r in listed if r.created_at <= shown_before]
        chunk = listed[:size]
        return {"page": 1, "page_size": size,
                "results": [self.render_execution(r) for r in chunk]}

    def list_queue(self, request: Request) -> Any:
        environment_id = self._environment_id(request)
        return {"results": [self.render_request(rid, r)
                            for rid, r in self._queued(environment_id)]}

    def cancel_deployment(self, request: Request) -> Any:
        environment_id = self._environment_id(request)
        body = request.body if request.body is not None else {}
        force = body.get("force_cancel", False) if isinstance(body, dict) else None
        if not isinstance(force, bool):
            raise HttpError(400, self.error_body(400, "force_cancel must be a boolean"))
        latest = self._latest(environment_id)
        if latest is None or latest.status in FINAL or latest.status == "CANCELING":
            raise HttpError(409, self.error_body(409, CANCEL_REFUSED))
        latest.data["force_cancel"] = force
        self.transition(latest, list(CANCEL_PLAN))
        return self.render_status(environment_id)

    def redeploy(self, request: Request) -> Any:
        environment_id = self._environment_id(request)
        latest = self._latest(environment_id)
        if latest is not None and latest.status == "CANCELING":
            raise HttpError(409, self.error_body(409, OPERATION_IN_PROGRESS))
        commit = latest.data["commit"] if latest else None
        message = latest.data["message"] if latest else "Release"
        if self._busy(environment_id) or self._queued(environment_id):
            self.queue_deployment(environment_id, triggered_by="Runboard API token",
                                  origin="API", commit=commit, message=message)
            return self.render_status(environment_id)
        # Started at once; the answer is the status as the request found it.
        answer = self.render_status(environment_id, latest)
        answer.update(state="DEPLOYMENT_QUEUED", deployment_request_id=None)
        self.add_deployment(environment_id, list(DEPLOY_PLAN), triggered_by="Runboard API token",
                            origin="API", commit=commit, message=message)
        return answer

    def cancel_request(self, request: Request) -> Any:
        request_id = request.params["request"]
        found = self.deployment_requests.get(request_id)
        if found is None:
            raise self._not_found()
        if found["state"] != "queued":
            raise HttpError(409, self.error_body(409, REQUEST_CANCEL_REFUSED))
        found["state"] = "cancelled"
        return None

    # -- rendering ---------------------------------------------------------------------

    def _state_before_cancel(self, run: SimRun) -> str:
        for status, _ in reversed(run.history):
            if status not in ("CANCELING", "CANCELED"):
                return status
        return "DEPLOYMENT_QUEUED"

    def _commit(self, run: SimRun) -> dict[str, Any]:
        d = run.data
        return {"created_at": iso(run.created_at - timedelta(minutes=7)),
                "git_commit_id": d["commit"], "tag": "", "message": d["message"],
                "author_name": d["triggered_by"],
                "commit_page_url": f"https://github.com/acme/app/commit/{d['commit']}"}

    def _service_states(self, run: SimRun) -> list[tuple[str, str, str]]:
        """(kind, name, StateEnum value) of each service in this deployment."""
        state = self._state_before_cancel(run) if run.status == "CANCELING" else run.status
        failed = state in ("BUILD_ERROR", "DEPLOYMENT_ERROR")
        services = []
        for kind, name in self.environments[run.data["environment"]]["services"]:
            if failed and kind == "databases":
                status = "DEPLOYED"  # deployed first; what failed came after
            elif failed and kind in ("jobs", "helms"):
                status = "READY"  # never reached
            elif state == "CANCELED":
                status = "CANCELED"
            elif kind in ("jobs", "helms") and state == "DEPLOYING":
                status = "EXECUTING"
            else:
                status = state
            services.append((kind, name, status))
        return services

    def render_deployment(self, run: SimRun) -> dict[str, Any]:
        """A V1 deploymentHistory record (its `id` is not the execution id)."""
        d = run.data
        finished = run.status in FINAL
        record: dict[str, Any] = {
            "id": d["history_id"],
            "created_at": iso(run.created_at),
            "updated_at": iso(run.updated_at),
            "status": run.status,
            "origin": d["origin"],
            "triggered_by": d["triggered_by"],
            "applications": [], "containers": [], "databases": [], "jobs": [], "helms": [],
        }
        for kind, name, status in self._service_states(run):
            entry: dict[str, Any] = {
                "id": make_id(kind, f"{d['environment']}/{name}"),
                "created_at": iso(run.created_at),
                "updated_at": iso(run.finished_at if finished else run.updated_at),
                "name": name,
                "status": status,
            }
            if kind in ("applications", "jobs"):
                entry["commit"] = self._commit(run)
            if kind in ("containers", "jobs"):
                entry.update(image_name=name, tag="latest")
            record[kind].append(entry)
        return record

    @staticmethod
    def _action_status(state: str) -> str:
        """DeploymentHistoryActionStatus for a StateEnum value."""
        if state in ("CANCELED", "CANCELING"):
            return "CANCELED" if state == "CANCELED" else "CANCELING"
        if state.endswith("_ERROR"):
            return "ERROR"
        if state in FINAL:
            return "NEVER" if state == "READY" else "SUCCESS"
        if state in RUNNING:
            return "ONGOING"
        if state == "UNAVAILABLE":
            return "NEVER"  # assumed: nothing is known of the action
        return "QUEUED"

    @staticmethod
    def _stage_status(states: list[str]) -> str:
        if any(s.endswith("_ERROR") for s in states):
            return "ERROR"
        if any(s in ("CANCELED", "CANCELING") for s in states):
            return "CANCELED"
        if all(s == "READY" for s in states):
            return "SKIPPED"
        if all(s in FINAL for s in states):
            return "DONE"
        if any(s in RUNNING for s in states):
            return "ONGOING"
        return "QUEUED"

    def _render_service(self, run: SimRun, kind: str, name: str, status: str) -> dict:
        d = run.data
        finished = run.status in FINAL
        return {
            "identifier": {"name": name, "service_id": make_id(kind, f"{d['environment']}/{name}"),
                           "service_type": SERVICE_TYPES[kind], "execution_id": run.id},
            "status": status,
            "auditing_data": {"created_at": iso(run.created_at),
                              "updated_at": iso(run.finished_at if finished
                                                else run.updated_at),
                              "triggered_by": d["triggered_by"], "origin": d["origin"]},
            # One oneOf branch only (see the module docstring).
            "details": {"commit": self._commit(run)} if kind in ("applications", "jobs")
            else {},
            "status_details": {"action": "DEPLOY", "status": self._action_status(status),
                               "sub_action": "NONE"},
            "icon_uri": f"app://qovery-console/{SERVICE_TYPES[kind].lower()}",
            "total_duration": iso_duration(((run.finished_at or self.clock.now())
                                            - run.created_at).total_seconds()),
        }

    def render_execution(self, run: SimRun) -> dict[str, Any]:
        """A deploymentHistoryV2 record: the execution, its stages and services."""
        d = run.data
        services = self._service_states(run)
        ended = run.finished_at or self.clock.now()
        stages = []
        for stage, kinds in STAGES:
            members = [(k, n, s) for k, n, s in services if k in kinds]
            if not members:
                continue
            stages.append({
                "name": stage,
                "status": self._stage_status([s for _, _, s in members]),
                "duration": iso_duration((ended - run.created_at).total_seconds()),
                "services": [self._render_service(run, k, n, s) for k, n, s in members],
            })
        return {
            "identifier": {"execution_id": run.id, "environment_id": d["environment"]},
            "auditing_data": {"created_at": iso(run.created_at), "updated_at": iso(run.updated_at),
                              "triggered_by": d["triggered_by"], "origin": d["origin"]},
            "status": run.status,
            "trigger_action": d["trigger_action"],
            "total_duration": iso_duration((ended - run.created_at).total_seconds()),
            "stages": stages,
            "action_status": self._action_status(run.status),
        }

    def render_request(self, request_id: str, request: dict[str, Any]) -> dict[str, Any]:
        services = self.environments[request["environment"]]["services"]
        stages = []
        for stage, kinds in STAGES:
            members = [(k, n) for k, n in services if k in kinds]
            if members:
                stages.append({"name": stage, "status": "QUEUED", "services": [
                    {"identifier": {"service_id": make_id(k, f"{request['environment']}/{n}"),
                                    "service_type": SERVICE_TYPES[k], "name": n},
                     "status": "QUEUED"} for k, n in members]})
        return {
            "identifier": {"deployment_request_id": request_id,
                           "environment_id": request["environment"]},
            "auditing_data": {"triggered_by": request["triggered_by"],
                              "origin": request["origin"]},
            "trigger_action": request["trigger_action"],
            "stages": stages,
        }

    # -- webhooks (appended) ----------------------------------------------------------
    # Organization webhooks (documented): events DEPLOYMENT_STARTED, DEPLOYMENT_CANCELLED,
    # DEPLOYMENT_FAILURE, DEPLOYMENT_SUCCESSFUL; header `Qovery-Signature: <the secret>`;
    # body {created_at, event_type, payload_type: "DEPLOYMENT", payload_id, payload}.
    # ASSUMED: the payload's fields (environment_id, project_id, organization_id,
    # deployment_id, state) and that STARTED fires when the deployment leaves the queue.

    def webhook_deliveries(self, run: SimRun, before, secret: str) -> list[Delivery]:
        status = run.status
        if status in ("DEPLOYED",):
            event = "DEPLOYMENT_SUCCESSFUL"
        elif status == "CANCELED":
            event = "DEPLOYMENT_CANCELLED"
        elif status in FINAL:
            event = "DEPLOYMENT_FAILURE"
        elif status in RUNNING and (before is None or before not in RUNNING):
            event = "DEPLOYMENT_STARTED"
        else:
            return []
        environment_id = run.data["environment"]
        project_id = self.environments[environment_id]["project"]
        return [Delivery(headers={"Qovery-Signature": secret}, body=json.dumps({
            "created_at": iso(self.clock.now()),
            "event_type": event,
            "payload_type": "DEPLOYMENT",
            "payload_id": run.id,
            "payload": {"deployment_id": run.id, "environment_id": environment_id,
                        "project_id": project_id,
                        "organization_id": self.projects[project_id]["organization"],
                        "state": status},
        }).encode())]
