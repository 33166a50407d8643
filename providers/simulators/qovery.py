"""Qovery simulator: organizations, projects, environments and their deployments.

Speaks the documented paths and shapes (see providers/qovery.py for what is documented
and what is assumed): environment status, deployment history paged with startId,
cancelDeployment (asynchronous: CANCELING, then CANCELED) and redeploy.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from datetime import timedelta
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

DEPLOY_PLAN = [Phase("DEPLOYMENT_QUEUED", 5), Phase("BUILDING", 30), Phase("DEPLOYING", 20),
               Phase("DEPLOYED", None)]
BUILD_FAILS_PLAN = [Phase("DEPLOYMENT_QUEUED", 5), Phase("BUILDING", 25),
                    Phase("BUILD_ERROR", None)]
DEPLOY_FAILS_PLAN = [Phase("DEPLOYMENT_QUEUED", 5), Phase("BUILDING", 30),
                     Phase("DEPLOYING", 15), Phase("DEPLOYMENT_ERROR", None)]
# Cancelling is only requested: the engine stops what it is doing, then reports CANCELED.
CANCEL_PLAN = [Phase("CANCELING", 4), Phase("CANCELED", None)]
CANCELLED_PLAN = DEPLOY_PLAN[:2] + CANCEL_PLAN

RUNNING = {"BUILDING", "DEPLOYING", "EXECUTING", "RECAP", "RESTARTING", "STOPPING", "DELETING"}
FINAL = {"DEPLOYED", "BUILD_ERROR", "DEPLOYMENT_ERROR", "CANCELED", "STOPPED", "STOP_ERROR",
         "RESTARTED", "RESTART_ERROR", "DELETED", "DELETE_ERROR"}

# Documented refusals (the 409 descriptions in Qovery's API reference).
CANCEL_REFUSED = "Environment deployment is already cancelled or an operation is in progress"
OPERATION_IN_PROGRESS = "Operation is in progress"

# Service-level status of an application/container/database for an environment state
# (GlobalDeploymentStatus has no cancel states: a cancelled service was never deployed).
SERVICE_STATUS = {"DEPLOYMENT_QUEUED": "QUEUED", "BUILDING": "BUILDING",
                  "DEPLOYING": "DEPLOYING", "DEPLOYED": "DEPLOYED",
                  "BUILD_ERROR": "BUILD_ERROR", "DEPLOYMENT_ERROR": "DEPLOYMENT_ERROR",
                  "CANCELED": "READY"}

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


class QoverySimulator(Simulator):
    name = "qovery"
    running_statuses = RUNNING
    final_statuses = FINAL
    unknown_status_value = "TELEPORTING"
    page_size = 20  # Qovery's deployment history answers 20 records a page

    def __init__(self, *args, **kwargs):
        self.organizations: dict[str, str] = {}  # id -> name
        self.projects: dict[str, dict[str, Any]] = {}  # id -> {name, organization}
        self.environments: dict[str, dict[str, Any]] = {}  # id -> {name, project, ...}
        self._sequence = itertools.count(1)
        super().__init__(*args, **kwargs)

    # -- wire details ------------------------------------------------------------------

    def routes(self) -> None:
        env = "/environment/{environment}"
        self.route("GET", "/organization/{organization}/project", self.list_projects)
        self.route("GET", "/project/{project}", self.get_project)
        self.route("GET", "/project/{project}/environment", self.list_environments)
        self.route("GET", env, self.get_environment)
        self.route("GET", env + "/status", self.get_status)
        self.route("GET", env + "/deploymentHistory", self.list_history)
        self.route("POST", env + "/cancelDeployment", self.cancel_deployment)
        self.route("POST", env + "/redeploy", self.redeploy)

    def authorised(self, headers: dict[str, str]) -> bool:
        # API tokens come as "Token ...", human JWTs as "Bearer ...": accept either form.
        return headers.get("authorization") in (f"Token {self.token}", f"Bearer {self.token}")

    def auth_error(self) -> HttpError:
        return HttpError(401, self.error_body(401, "Access token is missing or invalid"))

    def with_unknown_status(self, body: Any) -> Any:
        body = super().with_unknown_status(body)
        if isinstance(body, dict) and "last_deployment_state" in body:
            body = {**body, "last_deployment_state": self.unknown_status_value}
        return body

    def without_optional_fields(self, body: Any) -> Any:
        """Drop what the API documents as optional (keeping `status`, which is what makes
        a record a run at all, and `last_deployment_id`, which names the deployment)."""
        optional = {"updated_at", "origin", "triggered_by", "last_deployment_date",
                    "total_deployment_duration_in_seconds", "deployment_status",
                    "applications", "containers", "databases", "jobs", "helms"}
        if isinstance(body, dict) and isinstance(body.get("results"), list):
            return {**body, "results": [self.without_optional_fields(r)
                                        for r in body["results"]]}
        if isinstance(body, dict) and ("status" in body or "state" in body):
            return {k: v for k, v in body.items() if k not in optional}
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
                "name": name, "project": project_id, "mode": mode,
                "services": list(services or [("applications", "app")]),
            }
        return environment_id

    def add_deployment(self, environment_id: str, plan: list[Phase] | None = None, *,
                       age: float = 0, triggered_by: str = "Priya Raman", origin: str = "GIT",
                       commit: str | None = None, message: str = "Release") -> SimRun:
        sequence = next(self._sequence)
        deployment_id = make_id("deployment", f"{environment_id}/{sequence}")
        commit = commit or hashlib.sha256(f"commit:{sequence}".encode()).hexdigest()[:40]
        return self.add_run(
            deployment_id, list(plan or DEPLOY_PLAN),
            created_at=self.clock.now() - timedelta(seconds=age),
            environment=environment_id, sequence=sequence, triggered_by=triggered_by,
            origin=origin, commit=commit, message=message,
        )

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
        idle = [e for e in self.environments if not self._busy(e)]
        if idle:  # Qovery runs one operation at a time per environment
            plan = rng.choice([DEPLOY_PLAN, DEPLOY_PLAN, BUILD_FAILS_PLAN, DEPLOY_FAILS_PLAN])
            self._demo_deployment(rng, rng.choice(sorted(idle)), plan, 0)

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
        return {"id": project_id, "created_at": "2024-03-04T09:12:00Z",
                "updated_at": "2025-01-20T16:40:00Z", "name": project["name"],
                "description": "", "organization": {"id": project["organization"]}}

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
            "cloud_provider": {"provider": "AWS", "cluster": "eu-west-3"},
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

    def render_status(self, environment_id: str) -> dict[str, Any]:
        latest = self._latest(environment_id)
        if latest is None:
            return {"id": environment_id, "state": "READY", "last_deployment_state": "READY",
                    "last_deployment_date": None, "last_deployment_id": None,
                    "total_deployment_duration_in_seconds": None, "origin": None,
                    "triggered_by": None, "deployment_status": "NEVER_DEPLOYED"}
        ever_deployed = any(r.status == "DEPLOYED" for r in self._deployments(environment_id))
        ended = latest.finished_at if latest.status in FINAL else self.clock.now()
        return {
            "id": environment_id,
            "state": latest.status,
            "last_deployment_state": latest.status,
            "last_deployment_date": iso(latest.created_at, millis=False),
            "last_deployment_id": latest.id,
            "total_deployment_duration_in_seconds": int(
                (ended - latest.created_at).total_seconds()),
            "origin": latest.data["origin"],
            "triggered_by": latest.data["triggered_by"],
            "deployment_status": "UP_TO_DATE" if latest.status == "DEPLOYED" else (
                "OUT_OF_DATE" if ever_deployed else "NEVER_DEPLOYED"),
        }

    def get_status(self, request: Request) -> Any:
        return self.render_status(self._environment_id(request))

    def list_history(self, request: Request) -> Any:
        environment_id = self._environment_id(request)
        deployments = self._deployments(environment_id)
        start = 0
        start_id = request.query.get("startId")
        if start_id:
            ids = [r.id for r in deployments]
            # Unknown start: nothing after it (assumed; Qovery does not document this case).
            start = ids.index(start_id) + 1 if start_id in ids else len(ids)
        chunk = deployments[start:start + self.page_size]
        return {"page": start // self.page_size + 1, "page_size": self.page_size,
                "results": [self.render_deployment(r) for r in chunk]}

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
        if self._busy(environment_id):
            raise HttpError(409, self.error_body(409, OPERATION_IN_PROGRESS))
        previous = self._latest(environment_id)
        self.add_deployment(environment_id, list(DEPLOY_PLAN), triggered_by="Runboard API token",
                            origin="API", commit=previous.data["commit"] if previous else None,
                            message=previous.data["message"] if previous else "Release")
        return self.render_status(environment_id)

    # -- rendering ---------------------------------------------------------------------

    def _state_before_cancel(self, run: SimRun) -> str:
        for status, _ in reversed(run.history):
            if status not in ("CANCELING", "CANCELED"):
                return status
        return "DEPLOYMENT_QUEUED"

    def render_deployment(self, run: SimRun) -> dict[str, Any]:
        d = run.data
        state = self._state_before_cancel(run) if run.status == "CANCELING" else run.status
        finished = run.status in FINAL
        record: dict[str, Any] = {
            "id": run.id,
            "created_at": iso(run.created_at),
            "updated_at": iso(run.updated_at),
            "status": run.status,
            "origin": d["origin"],
            "triggered_by": d["triggered_by"],
            "applications": [], "containers": [], "databases": [], "jobs": [], "helms": [],
        }
        commit = {"created_at": iso(run.created_at - timedelta(minutes=7)),
                  "git_commit_id": d["commit"], "tag": "", "message": d["message"],
                  "author_name": d["triggered_by"],
                  "commit_page_url": f"https://github.com/acme/app/commit/{d['commit']}"}
        failed = state in ("BUILD_ERROR", "DEPLOYMENT_ERROR")
        for kind, name in self.environments[d["environment"]]["services"]:
            if failed and kind == "databases":
                status = "DEPLOYED"  # deployed first; what failed came after
            elif failed and kind in ("jobs", "helms"):
                status = "READY"  # never reached
            elif kind in ("jobs", "helms"):  # these use the environment's own states
                status = "EXECUTING" if state == "DEPLOYING" else state
            else:
                status = SERVICE_STATUS.get(state, "QUEUED")
            record[kind].append({
                "id": make_id(kind, f"{d['environment']}/{name}"),
                "created_at": iso(run.created_at),
                "updated_at": iso(run.finished_at if finished else run.updated_at),
                "name": name,
                "status": status,
                **({"commit": commit} if kind in ("applications", "jobs") else {}),
            })
        return record

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
