"""Qovery: deployments of the environments of an organization.

A run is one *execution* of one Qovery environment (external id
"<environment id>/<execution id>"), or one deployment request still waiting in the
environment's queue ("<environment id>/request/<deployment request id>"). The
environment is Runboard's environment, its Qovery project Runboard's project; the
services of the execution's stages are its jobs.

Documented (Qovery's public OpenAPI spec — a cut is in
tests/fixtures/specs/qovery-openapi-subset.yaml and every request this client sends is
validated against it — and the seed page):
- auth: API tokens as "Authorization: Token <token>" (ApiKeyAuth), JWTs as
  "Authorization: Bearer <jwt>" (bearerAuth); Qovery's CLI picks the scheme by the
  token's shape, as we do;
- GET /organization/{id}/project, GET /project/{id}/environment ({"results": [...]}),
  GET /project/{id}, GET /environment/{id} (environment.project is a {id} reference);
- GET /environment/{id}/status: {id, state, last_deployment_state, last_deployment_date,
  last_deployment_id, total_deployment_duration_in_seconds, origin, triggered_by,
  deployment_status, deployment_request_id}; `state` and `last_deployment_state` take the
  29 StateEnum values (UNAVAILABLE included);
- GET /environment/{id}/deploymentHistoryV2?pageSize=N (default 20): executions newest
  first, {page, page_size, results: [{identifier {execution_id, environment_id},
  auditing_data {created_at, updated_at, triggered_by, origin}, status, trigger_action,
  total_duration, stages [{name, status, duration, services [...]}], action_status}]};
  it has no page or startId parameter. `last_deployment_id` is an execution id: Qovery's
  console matches it against `identifier.execution_id` (format "environment_id-version").
  V1 deploymentHistory (startId paging, 20 a page) is not read: its item `id` is another
  identifier, which matches nothing in the status, and it lacks trigger action and stages;
- GET /environment/{id}/deploymentQueue: {"results": [{identifier
  {deployment_request_id, environment_id}, auditing_data {triggered_by, origin},
  trigger_action, stages}]}; POST /deploymentQueue/{id}/cancelDeployment answers 202
  (no body) or 409 "Deployment request is already cancelled or an operation is in progress";
- POST /environment/{id}/cancelDeployment {"force_cancel": bool} answers 202 with the
  environment status (cancelling is only *requested*) or 409; POST
  /environment/{id}/redeploy answers 202 with the environment status, or 409;
- an action answer whose `deployment_request_id` is set went to the queue (Qovery's
  console then says "Your service is queuing");
- there is no approval step in this API (approve/reject stay unsupported);
- GET /project/{id}/environment/status (getProjectEnvironmentsStatus): "a list of
  environments with only their id and status", {"results": [EnvironmentStatus]}.
How requests are spent: a pass reads each project's environment statuses (one request
a project, plus the organization's project list) and reads an environment's queue and
history (two requests) only where its status differs from the one the last pass
remembered (`change_state`), or its deployment is under way, or a request waits in its
queue; the environment list only to name an environment not seen before. A pass over an
organization where nothing changed costs 1 + projects requests (an environment scope:
one status read). What the statuses let a pass skip is still re-read, a few a pass: the
environments read least recently (queue and history), and the project environment lists
(names) listed least recently, each within RUNBOARD_FULL_READ_EVERY (`Rotation`); all
is read only by the first pass and after the connection is edited.
Qovery documents no conditional requests (no ETag / If-None-Match) and no status
filter on these lists.
Not documented anywhere we could read, and so assumed here:
- error bodies (the spec gives them no schema): Qovery's Terraform provider reads
  {"status", "detail"}; the base client reads `detail` (and `message`) from them;
- rate limits: none documented, no rate-limit headers; we rely on 429 + Retry-After;
- paging: V2 can only be asked for its newest `pageSize`; we ask 100 (what Qovery's
  console asks; no maximum is documented), so older executions are not listed;
- `last_deployment_state` is the state of the execution `last_deployment_id` names;
- what moves an environment's status: we take it that a new execution changes
  `last_deployment_id` and a queued request sets `deployment_request_id` (the simulator
  serves it so), and that a settled environment's stages and queue do not change
  without its status changing; the full read bounds what a wrong guess could hide;
- the project's status list names every environment of the project, not a page;
- a redeploy's answer may or may not name the new execution (the console notes it
  cannot link an action answer to its execution id): we look for the new run in the
  queue (by `deployment_request_id`), then in the newest execution;
- a queued request carries no timestamp: its run has no creation time (it sorts as the
  newest); a request that left the queue without our cancel started as an execution (or
  was cancelled in Qovery): its run ends as SKIPPED with raw status "DEQUEUED" (a
  Runboard word, not a Qovery value), the execution being a run of its own;
- `details` of a V2 service: only `commit` is read (the spec's oneOf is ambiguous);
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
    parse_time,
    require,
    text,
    webhook_header,
    webhook_json,
)

# All 29 StateEnum values. Each names an operation (deploy, restart, stop, delete) and
# how far it got; an execution may be any of these operations.
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
    # Stopping, restarting or deleting was what this execution ran, and it worked.
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
    # Qovery cannot tell the state ("Status unavailable" in its console): neither we.
    "UNAVAILABLE": Status.UNKNOWN,
}

# Runboard's raw status of a queued request's run (Qovery's console shows "QUEUED"),
# and of one that left the queue without our cancel (see the module docstring).
REQUEST_QUEUED = "QUEUED"
REQUEST_DEQUEUED = "DEQUEUED"

# deploymentHistoryV2 `pageSize`: what Qovery's console asks for (no documented maximum).
HISTORY_PAGE_SIZE = 100
# What a webhook read asks it for: a delivery announces one of the newest few.
WEBHOOK_HISTORY_SIZE = 10

IN_PROGRESS = frozenset({Status.QUEUED, Status.RUNNING, Status.WAITING})
RETRYABLE = frozenset({Status.FAILED, Status.CANCELLED})


# The EnvironmentStatus fields that tell whether anything happened in an environment.
# Left out: total_deployment_duration_in_seconds (counts while running; a running
# environment is read every pass anyway), metrics, origin, triggered_by (they belong
# to the execution `last_deployment_id` names).
STATUS_SIGNAL = ("state", "last_deployment_state", "last_deployment_id",
                 "last_deployment_date", "deployment_request_id", "deployment_status")


def status_fingerprint(status: Mapping[str, Any]) -> str:
    return "|".join(str(status.get(key) or "") for key in STATUS_SIGNAL)


def looks_like_jwt(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and all(parts)


class QoveryProvider(Provider):
    key = "qovery"
    label = "Qovery"
    actions = frozenset({Action.CANCEL, Action.RETRY})
    has_force_cancel = True
    unsupported_reasons = {
        Action.APPROVE: "Qovery's API has no approval step to approve.",
        Action.REJECT: "Qovery's API has no approval step to reject.",
    }
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
        return [environment for project in self._projects()
                for environment in self._list_environments(project)]

    def _list_environments(self, project: ProjectData) -> list[EnvironmentData]:
        found = []
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

    # -- reading ---------------------------------------------------------------------

    def _status(self, environment_id: str) -> dict[str, Any]:
        body = self.request("GET", f"/environment/{environment_id}/status")
        if not isinstance(body, dict):
            raise BadPayload("environment status is not an object")
        return body

    def _executions(self, environment_id: str, size: int = HISTORY_PAGE_SIZE) -> list[dict]:
        """The environment's newest executions, newest first (V2 cannot page further)."""
        body = self.request("GET", f"/environment/{environment_id}/deploymentHistoryV2",
                            params={"pageSize": size})
        return self._results(body)

    def _queue(self, environment_id: str) -> list[dict[str, Any]]:
        return self._results(
            self.request("GET", f"/environment/{environment_id}/deploymentQueue"))

    @staticmethod
    def _execution_id(item: Mapping[str, Any]) -> str:
        return text(require(require(item, "identifier"), "execution_id"), 100)

    @staticmethod
    def _request_id(item: Mapping[str, Any]) -> str:
        return text(require(require(item, "identifier"), "deployment_request_id"), 100)

    def list_runs(self, since: datetime | None = None) -> Iterator[list[RunData]]:
        """One page per environment read in detail (V2 has no further pages, so `since`
        saves nothing). Which ones are read is decided by the statuses of all of a
        project's environments, one request (see `_needs_reading`)."""
        seen: dict[str, str] = {}
        # Names are kept between passes too: each list they come from is read again
        # within RUNBOARD_FULL_READ_EVERY (a rename), a few a pass.
        names = self.rotation("names")
        if self.scope.get("environment"):
            named = self.scope["environment"]
            if not names.pick([named]):
                self._remembered_environment(named)
            if named not in self._environments_by_id:
                names.read(named)
            environment = self._environment(named)
            statuses = [(environment, self._status(environment.external_id))]
        else:
            projects = self._projects()
            relist = names.pick(p.external_id for p in projects)
            statuses = []
            for project in projects:
                if self._project_statuses(project, project.external_id in relist,
                                          statuses):
                    names.read(project.external_id)
        remembered = self.change_state.get("seen")
        remembered = remembered if isinstance(remembered, dict) else {}
        detail = self.rotation("reread")
        skipped = set()
        for environment, status in statuses:
            fingerprint = status_fingerprint(status)
            seen[environment.external_id] = fingerprint
            if not self._needs_reading(status, remembered.get(environment.external_id),
                                       fingerprint):
                skipped.add(environment.external_id)
        # What the statuses say is settled and unchanged: a few of it re-read anyway,
        # the least recently read first, in case a status hid a change.
        skipped -= detail.pick(skipped)
        for environment, status in statuses:
            if environment.external_id in skipped:
                continue
            detail.read(environment.external_id)
            runs = self._environment_runs(environment, status)
            if not self._history_caught_up(status, runs):
                seen[environment.external_id] = ""  # matches no status: read next pass
            if runs:
                yield runs
        # Assigned once every environment was read: the sync stores it after the pass.
        self.change_state = {
            "seen": seen,
            "environments": {e.external_id: [e.name, e.project.external_id, e.project.name]
                             for e, _ in statuses if e.project},
            "reread": detail.state(seen),
            "names": names.state(
                [self.scope["environment"]] if self.scope.get("environment")
                else {e.project.external_id for e, _ in statuses if e.project}
                | {p.external_id for p in self._projects_by_id.values()}),
        }

    def _needs_reading(self, status: Mapping[str, Any], remembered: Any,
                       fingerprint: str) -> bool:
        """Whether an environment's queue and history must be read this pass.

        Skipped only when its status is the one remembered from the last pass that read
        it, and that status is settled: a finished state and no request in the queue. A
        new execution changes `last_deployment_id` (even one ending in the same state
        as the last), a queued request `deployment_request_id`; a deployment under way
        is read every pass, as its stages move without its status changing.
        """
        if self.full_read or remembered != fingerprint:
            return True
        if status.get("deployment_request_id"):
            return True
        states = (status.get("state"), status.get("last_deployment_state"))
        return not all(self.status_map.get(raw) in FINISHED for raw in states)

    @staticmethod
    def _history_caught_up(status: Mapping[str, Any], runs: list[RunData]) -> bool:
        """Whether the history read lists the execution the status names. Until it does
        (Qovery does not say the two are read from one place), the environment is not
        taken as read: remembering its status would skip that execution until the
        safety re-read, up to RUNBOARD_FULL_READ_EVERY later."""
        current = status.get("last_deployment_id")
        return not current or any(run.locator.get("execution") == current for run in runs)

    def _remembered_environment(self, environment_id: str) -> None:
        """Name the environment (and its project) from the last pass, saving the two
        reads that would learn them again."""
        known = self.change_state.get("environments")
        names = known.get(environment_id) if isinstance(known, dict) else None
        if (self.full_read or environment_id in self._environments_by_id
                or not isinstance(names, list) or len(names) != 3):
            return
        project = ProjectData(text(names[1], 100), text(names[2], 200))
        self._environments_by_id[environment_id] = EnvironmentData(
            environment_id, text(names[0], 200), project)

    def _project_statuses(self, project: ProjectData, relist: bool,
                          found: list[tuple[EnvironmentData, dict[str, Any]]]) -> bool:
        """Add every environment of the project with its status to `found`: one request
        for the statuses, and the environment list only for names not yet known (or
        with `relist`). True where the environment list was read."""
        body = self.request("GET", f"/project/{project.external_id}/environment/status")
        statuses = {text(require(item, "id"), 100): item for item in self._results(body)}
        known = self.change_state.get("environments")
        known = known if isinstance(known, dict) and not (self.full_read or relist) else {}
        for environment_id in statuses:
            names = known.get(environment_id)
            if (environment_id not in self._environments_by_id and isinstance(names, list)
                    and len(names) == 3 and names[1] == project.external_id):
                # The project's name as listed this pass, the environment's as remembered.
                self._environments_by_id[environment_id] = EnvironmentData(
                    environment_id, text(names[0], 200), project)
        listed = any(e not in self._environments_by_id for e in statuses)
        if listed:
            self._list_environments(project)
        for environment_id, status in statuses.items():
            environment = self._environments_by_id.get(environment_id)
            if environment is None:  # gone between the two lists: next pass sees
                continue
            found.append((environment, status))
        return listed or relist

    def _environment_runs(self, environment: EnvironmentData,
                          status: dict[str, Any] | None = None, *,
                          size: int = HISTORY_PAGE_SIZE,
                          every_queue: bool = True) -> list[RunData]:
        """The environment's queued requests and `size` newest executions (two requests,
        and one for the status unless it is given). Without `every_queue` the queue is
        read only when the status names a request waiting in it."""
        if status is None:
            status = self._status(environment.external_id)
        queued = [self.parse_request(item, environment)
                  for item in self._queue(environment.external_id)
                  ] if every_queue or status.get("deployment_request_id") else []
        executions = [self.parse_execution(item, environment, status)
                      for item in self._executions(environment.external_id, size)]
        return queued + executions

    def get_run(self, locator: Mapping[str, Any]) -> RunData:
        environment = self._environment(locator["environment"])
        if locator.get("deployment_request"):
            return self._get_request(locator, environment)
        if not locator.get("execution"):
            # A run stored before executions were the identity (a V1 history id).
            raise NotFound("Qovery knows this deployment by another id now")
        status = self._status(environment.external_id)
        for item in self._executions(environment.external_id):
            if self._execution_id(item) == locator["execution"]:
                return self.parse_execution(item, environment, status)
        raise NotFound(f"Qovery lists no execution {locator['execution']} among the "
                       f"{HISTORY_PAGE_SIZE} newest of this environment")

    def _get_request(self, locator: Mapping[str, Any], environment: EnvironmentData):
        request_id = locator["deployment_request"]
        for item in self._queue(environment.external_id):
            if self._request_id(item) == request_id:
                return self.parse_request(item, environment, locator)
        # Gone from the queue: cancelled if we asked for it, otherwise it started.
        cancelled = bool(locator.get("cancel_requested"))
        return self.parse_request(
            {"identifier": {"deployment_request_id": request_id}}, environment, locator,
            raw_status="CANCELED" if cancelled else REQUEST_DEQUEUED)

    # -- actions ---------------------------------------------------------------------

    def _current(self, locator: Mapping[str, Any], verb: str) -> tuple[dict, Status]:
        """The environment status, refusing unless this run is its current execution:
        Qovery's actions address the environment, not one execution."""
        status = self._status(locator["environment"])
        current = status.get("last_deployment_id")
        if not locator.get("execution") or current != locator["execution"]:
            raise Conflict(
                f"Cannot {verb}: this deployment is no longer the environment's current "
                f"deployment (that is {current or 'none'}); Qovery would act on that one "
                "instead."
            )
        raw = text(require(status, "last_deployment_state"), 64)
        return status, self.map_status(raw)

    def cancel(self, locator, comment="", force=False) -> RunData:
        # Qovery's cancel takes no comment: it is kept in Runboard's audit only.
        environment = self._environment(locator["environment"])
        if locator.get("deployment_request"):
            return self._cancel_request(locator, environment)
        _, state = self._current(locator, "cancel")
        if state not in IN_PROGRESS:
            raise Conflict(f"Cannot cancel: the deployment is {state.label.lower()}, "
                           "not in progress.")
        answer = self.request(
            "POST", f"/environment/{environment.external_id}/cancelDeployment",
            json={"force_cancel": bool(force)},
        )
        for item in self._executions(environment.external_id):
            if self._execution_id(item) == locator["execution"]:
                return self.parse_execution(item, environment, answer)
        raise NotFound(f"Qovery no longer lists execution {locator['execution']}")

    def _cancel_request(self, locator, environment: EnvironmentData) -> RunData:
        if self._get_request(locator, environment).raw_status != REQUEST_QUEUED:
            raise Conflict("Cannot cancel: the deployment request has left the queue.")
        self.request("POST", f"/deploymentQueue/{locator['deployment_request']}"
                             "/cancelDeployment", json={})
        # Cancelling is requested; the run ends once the request has left the queue.
        return self.parse_request(
            {"identifier": {"deployment_request_id": locator["deployment_request"]}},
            environment, {**locator, "cancel_requested": True}, raw_status="CANCELING")

    def retry(self, locator) -> RunData | dict[str, Any]:
        """Redeploy the environment: a NEW run (a queued request or an execution),
        returned so that Runboard can link to it."""
        environment = self._environment(locator["environment"])
        _, state = self._current(locator, "redeploy")
        if state not in RETRYABLE:
            raise Conflict(f"Cannot redeploy: the deployment is {state.label.lower()}; "
                           "only a failed or cancelled deployment is retried.")
        answer = self.request("POST", f"/environment/{environment.external_id}/redeploy")
        answer = answer if isinstance(answer, dict) else {}
        request_id = answer.get("deployment_request_id")
        if request_id:  # it went to the queue
            for item in self._queue(environment.external_id):
                if self._request_id(item) == request_id:
                    return self.parse_request(item, environment)
        newest = next(iter(self._executions(environment.external_id, size=1)), None)
        if newest and self._execution_id(newest) != locator["execution"]:
            return self.parse_execution(newest, environment, self._status(
                environment.external_id))
        # Qovery has not shown the new run yet: keep the answer as the action's record;
        # the next sync picks the run up.
        return answer

    # -- parsing ---------------------------------------------------------------------

    @staticmethod
    def _where(environment: EnvironmentData) -> str:
        project = environment.project
        return f"{project.name}/{environment.name}" if project else environment.name

    def parse_execution(self, item: Any, environment: EnvironmentData,
                        status: Any = None) -> RunData:
        """A V2 history record; when it is the environment's current execution the
        environment status is laid over it, as it is the fresher of the two."""
        execution_id = self._execution_id(item)
        auditing = item.get("auditing_data")
        auditing = auditing if isinstance(auditing, dict) else {}
        current = isinstance(status, dict) and status.get("last_deployment_id") == execution_id
        raw_status = text(require(item, "status"), 64)
        if current and status.get("last_deployment_state"):
            raw_status = text(status["last_deployment_state"], 64)
        run_status = self.map_status(raw_status)
        jobs, commit = self._parse_stages(item.get("stages"))
        created = parse_time(auditing.get("created_at"))
        updated = parse_time(auditing.get("updated_at"))
        raw = dict(item)
        if current:
            raw["environment_status"] = status
            # deployment_status (NEVER_DEPLOYED / UP_TO_DATE / OUT_OF_DATE) describes the
            # environment against its configuration, not this run: kept for display.
            raw["deployment_status"] = status.get("deployment_status")
        commit_id = text(commit.get("git_commit_id"), 64)
        # "environment_id-version": the version is what tells executions apart.
        prefix = f"{environment.external_id}-"
        short = execution_id[len(prefix):] if execution_id.startswith(prefix) else execution_id
        action = text(item.get("trigger_action"), 32).lower() or "deployment"
        return RunData(
            external_id=f"{environment.external_id}/{execution_id}",
            locator={"environment": environment.external_id, "execution": execution_id},
            status=run_status,
            raw_status=raw_status,
            name=f"{self._where(environment)} {action} #{short[:40]}",
            version=text(commit.get("tag"), 200) or commit_id[:12],
            commit=commit_id,
            triggered_by=text(auditing.get("triggered_by"), 200),
            project=environment.project,
            environment=environment,
            created_at=created,
            started_at=created,
            finished_at=(updated or created) if run_status in FINISHED else None,
            raw=raw,
            jobs=jobs,
        )

    def _parse_stages(self, stages: Any) -> tuple[list[JobData], dict[str, Any]]:
        """The services of every stage, in order, as jobs; and the first commit found
        (Qovery records one per service; the first stands for the execution)."""
        jobs: list[JobData] = []
        commit: dict[str, Any] = {}
        for stage in stages if isinstance(stages, list) else []:
            services = stage.get("services") if isinstance(stage, dict) else None
            for service in services if isinstance(services, list) else []:
                if not isinstance(service, dict):
                    continue
                identifier = service.get("identifier")
                identifier = identifier if isinstance(identifier, dict) else {}
                auditing = service.get("auditing_data")
                auditing = auditing if isinstance(auditing, dict) else {}
                details = service.get("details")
                found = details.get("commit") if isinstance(details, dict) else None
                if not commit and isinstance(found, dict):
                    commit = found
                raw = text(service.get("status"), 64)
                state = self.map_status(raw) if raw else Status.UNKNOWN
                kind = text(identifier.get("service_type"), 32).lower() or "service"
                jobs.append(JobData(
                    external_id=f"{kind}/{text(identifier.get('service_id'), 100)}",
                    name=text(identifier.get("name"), 300) or kind,
                    status=state,
                    raw_status=raw,
                    order=len(jobs),
                    started_at=parse_time(auditing.get("created_at")),
                    finished_at=parse_time(auditing.get("updated_at"))
                    if state in FINISHED else None,
                ))
        return jobs, commit

    def parse_request(self, item: Any, environment: EnvironmentData,
                      locator: Mapping[str, Any] | None = None,
                      raw_status: str = REQUEST_QUEUED) -> RunData:
        """A deployment request of the queue (or one that left it): a run of its own,
        without a creation time, as Qovery gives it none."""
        request_id = self._request_id(item)
        auditing = item.get("auditing_data")
        auditing = auditing if isinstance(auditing, dict) else {}
        status = {REQUEST_QUEUED: Status.QUEUED, "CANCELING": Status.CANCELLING,
                  "CANCELED": Status.CANCELLED, REQUEST_DEQUEUED: Status.SKIPPED}[raw_status]
        return RunData(
            external_id=f"{environment.external_id}/request/{request_id}",
            locator={**(locator or {}), "environment": environment.external_id,
                     "deployment_request": request_id},
            status=status,
            raw_status=raw_status,
            name=f"{self._where(environment)} queued request {request_id[:8]}",
            triggered_by=text(auditing.get("triggered_by"), 200),
            project=environment.project,
            environment=environment,
            # The stages it will run are kept for display; they are a plan, not jobs.
            raw=dict(item),
        )

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

    # A read costs the environment's status and its newest executions; its queue only
    # when the status names a request waiting in it.
    webhook_read_cost = 2

    def runs_from_webhook(self, event: WebhookEvent) -> list[RunData]:
        """The environment's newest executions (and queued requests, where the status
        names one), named as the last pass left them (`change_state`)."""
        runs: list[RunData] = []
        for hint in event.hints:
            wanted = self.scope.get("environment")
            if wanted and hint["environment"] != wanted:
                continue
            self._remembered_environment(hint["environment"])
            environment = self._environment(hint["environment"])
            project = self.scope.get("project")
            if project and (not environment.project
                            or environment.project.external_id != project):
                continue
            status = self._status(environment.external_id)
            # What a delivery announces is the current execution or the one it followed:
            # the newest few, not the hundred a pass reads.
            read = self._environment_runs(environment, status, size=WEBHOOK_HISTORY_SIZE,
                                          every_queue=False)
            runs.extend(read)
            if self._history_caught_up(status, read):
                # Read as a pass reads it: the next pass skips it while its status stays
                # this one and settled (`_needs_reading`), instead of reading it again.
                self.learned.setdefault("seen", {})[environment.external_id] = (
                    status_fingerprint(status))
        return runs
