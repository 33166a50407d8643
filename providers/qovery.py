"""Qovery: deployments of the environments of an organization.

A run is one deployment of one Qovery environment (external id
"<environment id>/<deployment id>"). The environment is Runboard's environment, its
Qovery project Runboard's project; the services the deployment touched are its jobs.

Documented (seed page): POST /environment/{environmentId}/cancelDeployment with body
{"force_cancel": bool} (forcing also cancels everything else running in the environment,
e.g. lifecycle jobs the deployment started); cancelling is only *requested* (asynchronous);
the answer is the environment status {id, state, last_deployment_state,
last_deployment_date, last_deployment_id, total_deployment_duration_in_seconds, origin,
triggered_by, deployment_status}; the 28 `state` values and the `origin` and
`deployment_status` values; JWTs are sent as "Authorization: Bearer <jwt>".
From Qovery's public API reference (OpenAPI spec and generated clients):
- API tokens are sent as "Authorization: Token <token>" (ApiKeyAuth);
- GET /organization/{id}/project and GET /project/{id}/environment answer {"results": [...]};
  GET /project/{id} and GET /environment/{id} (environment.project is a {id} reference);
- GET /environment/{id}/status answers the environment status above;
- GET /environment/{id}/deploymentHistory lists deployments newest first, 20 a page,
  {page, page_size, results: [{id, created_at, updated_at, status, origin, triggered_by,
  applications, containers, databases, jobs, helms}]}; the next page is asked with
  ?startId=<last id of the page> ("starting point after which to return results"). Its
  V2 (deploymentHistoryV2) has another shape; we use the first, stable one;
- service entries: {id, created_at, updated_at, name, status, commit {git_commit_id, tag,
  message, author_name}}; applications/containers/databases use GlobalDeploymentStatus
  (adds BUILT, RUNNING, RUNNING_ERROR), jobs/helms the same 28 states;
- cancelDeployment answers 202, or 409 "Environment deployment is already cancelled or an
  operation is in progress"; POST /environment/{id}/redeploy answers 202 with the
  environment status, or 409 "Operation is in progress";
- there is no approval step in this API (approve/reject stay unsupported).
Not documented anywhere we could read, and so assumed here:
- the error body shape: {"message": ...} (the spec gives error responses no schema);
- rate limits: none documented, no rate-limit headers; we rely on 429 + Retry-After;
- startId is exclusive (we also skip the start item should it come back);
- `last_deployment_state` is the state of the deployment `last_deployment_id` names
  (`state` is the environment's), so it is the run's status while it is current;
- redeploy's answer names the NEW deployment in `last_deployment_id`;
- a link to a deployment in Qovery's console: no documented URL pattern, so no web_url.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from providers.base import (
    FINISHED,
    Action,
    BadPayload,
    Conflict,
    Discovery,
    EnvironmentData,
    JobData,
    NotFound,
    ProjectData,
    Provider,
    RunData,
    Status,
    WebhookEvent,
    WebhookRejected,
    map_status,
    parse_time,
    require,
    text,
    webhook_header,
    webhook_json,
)

# The 28 documented `state` values. Each names an operation (deploy, restart, stop, delete)
# and how far it got; a deployment record may be any of these operations.
STATUS_MAP: dict[str, Status] = {
    "QUEUED": Status.QUEUED,
    "DEPLOYMENT_QUEUED": Status.QUEUED,
    "RESTART_QUEUED": Status.QUEUED,
    "STOP_QUEUED": Status.QUEUED,
    "DELETE_QUEUED": Status.QUEUED,
    # WAITING_* wait for their turn behind another operation on the environment, not for
    # a person: queued, not Runboard's "waiting" (which means an approval is expected).
    "WAITING_RUNNING": Status.QUEUED,
    "WAITING_RESTARTING": Status.QUEUED,
    "WAITING_STOPPING": Status.QUEUED,
    "WAITING_DELETING": Status.QUEUED,
    "BUILDING": Status.RUNNING,
    "DEPLOYING": Status.RUNNING,
    "RESTARTING": Status.RUNNING,
    "STOPPING": Status.RUNNING,
    "DELETING": Status.RUNNING,
    "EXECUTING": Status.RUNNING,
    # RECAP: the engine's closing summary of a deployment still under way.
    "RECAP": Status.RUNNING,
    "DEPLOYED": Status.SUCCEEDED,
    # Stopping, restarting or deleting was what this deployment record ran, and it worked.
    "RESTARTED": Status.SUCCEEDED,
    "STOPPED": Status.SUCCEEDED,
    "DELETED": Status.SUCCEEDED,
    "BUILD_ERROR": Status.FAILED,
    "DEPLOYMENT_ERROR": Status.FAILED,
    "RESTART_ERROR": Status.FAILED,
    "STOP_ERROR": Status.FAILED,
    "DELETE_ERROR": Status.FAILED,
    "CANCELING": Status.CANCELLING,
    "CANCELED": Status.CANCELLED,
    # Created but never deployed: nothing ran.
    "READY": Status.SKIPPED,
}

# Services in a deployment record: jobs and helms use the states above, applications,
# containers and databases use GlobalDeploymentStatus, which adds these three.
SERVICE_STATUS_MAP: dict[str, Status] = {
    **STATUS_MAP,
    "BUILT": Status.RUNNING,  # image built, not deployed yet
    "RUNNING": Status.SUCCEEDED,  # deployed and running
    "RUNNING_ERROR": Status.FAILED,
}
SERVICE_KINDS = ("databases", "applications", "containers", "helms", "jobs")

IN_PROGRESS = frozenset({Status.QUEUED, Status.RUNNING, Status.WAITING})
RETRYABLE = frozenset({Status.FAILED, Status.CANCELLED})


def looks_like_jwt(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and all(parts)


class QoveryProvider(Provider):
    key = "qovery"
    label = "Qovery"
    actions = frozenset({Action.CANCEL, Action.RETRY})
    has_force_cancel = True
    acts_on_environment = True  # cancelDeployment and redeploy address the environment
    force_cancel_help = (
        "Also cancels everything else running in this environment, such as lifecycle "
        "jobs the deployment started."
    )
    scope_required = ("organization",)
    scope_optional = ("project", "environment")
    status_map = STATUS_MAP
    default_base_url = "https://api.qovery.com"

    def __init__(self, *args, **kwargs):
        self._projects_by_id: dict[str, ProjectData] = {}
        self._environments_by_id: dict[str, EnvironmentData] = {}
        super().__init__(*args, **kwargs)

    def auth_headers(self, token: str) -> dict[str, str]:
        # A human's JWT goes as Bearer; Qovery's own API tokens use the Token scheme.
        scheme = "Bearer" if looks_like_jwt(token) else "Token"
        return {"Authorization": f"{scheme} {token}"}

    # -- discovery -------------------------------------------------------------------

    @staticmethod
    def _results(body: Any) -> list[dict[str, Any]]:
        items = body.get("results") if isinstance(body, dict) else None
        if items is None and isinstance(body, dict):
            return []  # `results` is optional in the documented list shapes
        if not isinstance(items, list):
            raise BadPayload("response has no 'results' list")
        return [item for item in items if isinstance(item, dict)]

    def _remember_project(self, item: Any) -> ProjectData:
        project = ProjectData(text(require(item, "id"), 100), text(require(item, "name"), 200))
        self._projects_by_id[project.external_id] = project
        return project

    def _project(self, project_id: str) -> ProjectData:
        if project_id not in self._projects_by_id:
            self._remember_project(self.request("GET", f"/project/{project_id}"))
        return self._projects_by_id[project_id]

    def _environment(self, environment_id: str) -> EnvironmentData:
        if environment_id not in self._environments_by_id:
            body = self.request("GET", f"/environment/{environment_id}")
            reference = body.get("project") if isinstance(body, dict) else None
            project_id = reference.get("id") if isinstance(reference, dict) else None
            self._environments_by_id[environment_id] = EnvironmentData(
                text(require(body, "id"), 100), text(require(body, "name"), 200),
                self._project(str(project_id)) if project_id else None,
            )
        return self._environments_by_id[environment_id]

    def _projects(self) -> list[ProjectData]:
        if self.scope.get("project"):
            return [self._project(self.scope["project"])]
        body = self.request("GET", f"/organization/{self.scope['organization']}/project")
        return [self._remember_project(item) for item in self._results(body)]

    def _environments(self) -> list[EnvironmentData]:
        if self.scope.get("environment"):
            return [self._environment(self.scope["environment"])]
        found = []
        for project in self._projects():
            body = self.request("GET", f"/project/{project.external_id}/environment")
            for item in self._results(body):
                environment = EnvironmentData(
                    text(require(item, "id"), 100), text(require(item, "name"), 200), project
                )
                self._environments_by_id[environment.external_id] = environment
                found.append(environment)
        return found

    def discover(self) -> Discovery:
        environments = self._environments()
        projects = {e.project.external_id: e.project for e in environments if e.project}
        if not self.scope.get("environment"):
            projects.update(self._projects_by_id)  # projects without environments too
        return Discovery(projects=list(projects.values()), environments=environments)

    # -- runs ------------------------------------------------------------------------

    def _status(self, environment_id: str) -> dict[str, Any]:
        body = self.request("GET", f"/environment/{environment_id}/status")
        if not isinstance(body, dict):
            raise BadPayload("environment status is not an object")
        return body

    def _history_pages(self, environment_id: str) -> Iterator[list[dict[str, Any]]]:
        """The environment's deployment records, a page at a time, newest first."""
        path = f"/environment/{environment_id}/deploymentHistory"
        start_id = None
        while True:
            body = self.request("GET", path, params={"startId": start_id} if start_id else None)
            items = [i for i in self._results(body) if i.get("id") != start_id]
            if items:
                yield items
            page_size = body.get("page_size") if isinstance(body, dict) else None
            last_id = items[-1].get("id") if items else None
            full = isinstance(page_size, int | float) and len(items) >= page_size
            if not items or not full or not last_id or last_id == start_id:
                return
            start_id = last_id

    def list_runs(self, since: datetime | None = None) -> Iterator[list[RunData]]:
        for environment in self._environments():
            status = self._status(environment.external_id)
            for items in self._history_pages(environment.external_id):
                runs = [self.parse_history_item(item, environment, status) for item in items]
                yield runs
                if since and all(r.created_at and r.created_at < since for r in runs):
                    break

    def _find(self, environment_id: str, deployment_id: str) -> dict[str, Any]:
        for items in self._history_pages(environment_id):
            for item in items:
                if item.get("id") == deployment_id:
                    return item
        raise NotFound(f"Qovery has no deployment {deployment_id} in this environment")

    def get_run(self, locator: Mapping[str, Any]) -> RunData:
        environment = self._environment(locator["environment"])
        status = self._status(environment.external_id)
        item = self._find(environment.external_id, locator["deployment"])
        return self.parse_history_item(item, environment, status)

    # -- actions ---------------------------------------------------------------------

    def _current(self, locator: Mapping[str, Any], verb: str) -> tuple[dict, Status]:
        """The environment status, refusing unless this run is its current deployment:
        Qovery's actions address the environment, not one deployment."""
        status = self._status(locator["environment"])
        current = status.get("last_deployment_id")
        if current != locator["deployment"]:
            raise Conflict(
                f"Cannot {verb}: deployment {locator['deployment']} is no longer the "
                f"environment's current deployment (that is {current or 'none'}); Qovery "
                f"would act on that one instead."
            )
        raw = text(require(status, "last_deployment_state"), 64)
        return status, self.map_status(raw)

    def cancel(self, locator, comment="", force=False) -> RunData:
        # Qovery's cancel takes no comment: it is kept in Runboard's audit only.
        environment = self._environment(locator["environment"])
        _, state = self._current(locator, "cancel")
        if state not in IN_PROGRESS:
            raise Conflict(f"Cannot cancel: the deployment is {state.label.lower()}, "
                           "not in progress.")
        item = self._find(environment.external_id, locator["deployment"])
        answer = self.request(
            "POST", f"/environment/{environment.external_id}/cancelDeployment",
            json={"force_cancel": bool(force)},
        )
        return self.parse_history_item(item, environment, answer)

    def retry(self, locator) -> RunData | dict[str, Any]:
        """Redeploy the environment: a NEW deployment, returned as its own run."""
        environment = self._environment(locator["environment"])
        _, state = self._current(locator, "redeploy")
        if state not in RETRYABLE:
            raise Conflict(f"Cannot redeploy: the deployment is {state.label.lower()}; "
                           "only a failed or cancelled deployment is retried.")
        answer = self.request("POST", f"/environment/{environment.external_id}/redeploy")
        new_id = answer.get("last_deployment_id") if isinstance(answer, dict) else None
        if not new_id or new_id == locator["deployment"]:
            # The answer does not name the new deployment yet: keep it as the record of
            # the action and let the next sync pick the deployment up.
            return answer
        for item in next(self._history_pages(environment.external_id), []):
            if item.get("id") == new_id:
                return self.parse_history_item(item, environment, answer)
        return self.parse_environment_status(answer, environment)

    # -- parsing ---------------------------------------------------------------------

    def parse_history_item(self, item: Any, environment: EnvironmentData,
                           status: Any = None) -> RunData:
        require(item, "created_at")
        return self.parse_deployment(item, environment, status)

    def parse_environment_status(self, status: Any, environment: EnvironmentData) -> RunData:
        """The current deployment from the environment status alone (e.g. just after a
        redeploy, before the deployment shows in the history)."""
        item = {"id": require(status, "last_deployment_id"),
                "created_at": status.get("last_deployment_date")}
        return self.parse_deployment(item, environment, status)

    def parse_deployment(self, item: Any, environment: EnvironmentData,
                         status: Any = None) -> RunData:
        """A deployment record; when it is the environment's current deployment the
        environment status is laid over it, as it is the fresher of the two."""
        deployment_id = text(require(item, "id"), 100)
        current = isinstance(status, dict) and status.get("last_deployment_id") == deployment_id
        raw_status = text(item.get("status"), 64)
        if current:
            raw_status = text(require(status, "last_deployment_state"), 64)
        run_status = self.map_status(raw_status)
        latest = status if current else {}
        services = self._parse_services(item)
        # Qovery records a commit per service; the first one stands for the deployment.
        commit = next((c for _, c in services if c), {})
        created = parse_time(item.get("created_at"))
        updated = parse_time(item.get("updated_at"))
        raw = dict(item)
        if current:
            raw["environment_status"] = status
            # deployment_status (NEVER_DEPLOYED / UP_TO_DATE / OUT_OF_DATE) describes the
            # environment against its configuration, not this run: kept here for display.
            raw["deployment_status"] = status.get("deployment_status")
        commit_id = text(commit.get("git_commit_id"), 64)
        project = environment.project
        where = f"{project.name}/{environment.name}" if project else environment.name
        return RunData(
            external_id=f"{environment.external_id}/{deployment_id}",
            locator={"environment": environment.external_id, "deployment": deployment_id},
            status=run_status,
            raw_status=raw_status,
            name=f"{where} deployment {deployment_id[:8]}",
            version=text(commit.get("tag"), 200) or commit_id[:12],
            commit=commit_id,
            triggered_by=text(item.get("triggered_by") or latest.get("triggered_by"), 200),
            project=environment.project,
            environment=environment,
            created_at=created,
            started_at=created,
            finished_at=(updated or created) if run_status in FINISHED else None,
            raw=raw,
            jobs=[job for job, _ in services],
        )

    def _parse_services(self, item: Mapping[str, Any]) -> list[tuple[JobData, dict]]:
        """The services this deployment touched, as jobs, each with its commit (or {})."""
        services: list[tuple[JobData, dict]] = []
        for kind in SERVICE_KINDS:
            entries = item.get(kind)
            for entry in entries if isinstance(entries, list) else []:
                if not isinstance(entry, dict):
                    continue
                raw = text(entry.get("status"), 64)
                state = map_status(self.key, SERVICE_STATUS_MAP, raw) if raw else Status.UNKNOWN
                commit = entry.get("commit")
                services.append((JobData(
                    external_id=f"{kind}/{text(entry.get('id'), 100)}",
                    name=text(entry.get("name"), 300) or kind[:-1],
                    status=state,
                    raw_status=raw,
                    order=len(services),
                    started_at=parse_time(entry.get("created_at")),
                    finished_at=parse_time(entry.get("updated_at")) if state in FINISHED else None,
                ), commit if isinstance(commit, dict) else {}))
        return services

    # -- webhooks and rate budget (appended) -----------------------------------------
    # Documented: organization webhooks (/organization/{id}/webhook), events
    # DEPLOYMENT_STARTED, DEPLOYMENT_CANCELLED, DEPLOYMENT_FAILURE, DEPLOYMENT_SUCCESSFUL,
    # header `Qovery-Signature: <the secret itself>` (not an HMAC), body {created_at,
    # event_type, payload_type: "DEPLOYMENT", payload_id, payload}. No rate limit is
    # documented (rate_budget stays the conservative default).
    # ASSUMED: `payload` names the environment as `environment_id` (or environment.id);
    # where it does not, the delivery re-reads the run lists instead.

    webhook_events = ("DEPLOYMENT_STARTED", "DEPLOYMENT_CANCELLED", "DEPLOYMENT_FAILURE",
                      "DEPLOYMENT_SUCCESSFUL")
    webhook_setup = (
        "In Qovery: Organization settings → Webhooks → Add new (or POST "
        "/organization/<id>/webhook). Target URL: {url}. Kind: Standard. Secret: the webhook "
        "secret Runboard showed you (Qovery sends it as the Qovery-Signature header). Events: "
        "all four DEPLOYMENT_* events. Filters: this connection's projects and environments."
    )

    @classmethod
    def webhook_secret(cls, headers, query, body: bytes) -> str:
        return webhook_header(headers, "Qovery-Signature")

    @classmethod
    def parse_webhook(cls, headers, body: bytes) -> WebhookEvent:
        data = webhook_json(body)
        event = text(data.get("event_type"), 64)
        if not event:
            raise WebhookRejected("no event_type in the body")
        if data.get("payload_type") != "DEPLOYMENT" or event not in cls.webhook_events:
            return WebhookEvent(event, relevant=False)
        payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
        environment = payload.get("environment") if isinstance(
            payload.get("environment"), dict) else {}
        environment_id = payload.get("environment_id") or environment.get("id")
        hints = ([{"environment": environment_id[:100]}]
                 if isinstance(environment_id, str) and environment_id else [])
        return WebhookEvent(event, hints=hints)

    def runs_from_webhook(self, event: WebhookEvent) -> list[RunData]:
        """The environment's newest deployments (status + the first history page)."""
        runs: list[RunData] = []
        for hint in event.hints:
            wanted = self.scope.get("environment")
            if wanted and hint["environment"] != wanted:
                continue
            environment = self._environment(hint["environment"])
            project = self.scope.get("project")
            if project and (not environment.project
                            or environment.project.external_id != project):
                continue
            status = self._status(environment.external_id)
            items = next(self._history_pages(environment.external_id), [])
            runs.extend(self.parse_history_item(i, environment, status) for i in items)
        return runs
