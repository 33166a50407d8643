"""Buddy.works simulator: workspaces/projects/pipelines/executions as the API documents.

Written from Buddy's public API reference (REST API pages for projects, pipelines and
executions, the PATCH execution page) and Buddy's own CLI, never from Runboard's client.
Documented, and served as documented:
- GET /workspaces/{domain}/projects and .../pipelines take `page` and `per_page`; their
  answers are {url, html_url, projects|pipelines} with no page count, so a reader pages
  until an empty page. Projects default to 20 a page.
- GET .../executions takes `page` and `per_page` (default 20) and answers
  {url, page, page_size, total_page_count, element_count, total_element_count,
  executions}; list items are the short view, without `action_executions`: a reader
  GETs one execution for its steps.
- PATCH .../executions/{id} with operation RETRY, CANCEL, APPLY or APPLY_VARIABLES
  (`variables` [{key, value}] required for APPLY_VARIABLES). APPLY is for a run
  WAITING_FOR_APPLY; a run WAITING_FOR_VARIABLES or WAITING_FOR_SETTABLE_VARIABLES needs
  APPLY_VARIABLES; a run WAITING_FOR_VT_SESSION cannot be applied; RUN_DELAYED is the
  status of a delayed run. Refusals are answered like every error:
  {"errors": [{"message": ...}]}.
- X-Rate-Limit-Limit and X-Rate-Limit-Remaining on every answer, no reset header.
- Hosts: api.buddy.works, api.eu.buddy.works, on-premise https://<host>/api (`prefix`).
Assumed (not in any reference we could read), each the strictest plausible reading:
- pipelines default to 20 a page like projects; `per_page` above 100 is cut to 100;
- a refusal is 400 (the status Buddy gives other bad PATCH bodies); its wording is ours;
- the variables a run waits for are listed on the waiting action as `variables`
  [{key, value, description}], and APPLY_VARIABLES must give every one and no other;
- a 429 carries Retry-After (only in this simulator's fault injection; Buddy documents
  none), so tests can wait short.
"""

from __future__ import annotations

import itertools
import json
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

API = "https://api.buddy.works"
APP = "https://app.buddy.works"

# A deployment that needs an approval half-way; the demo and tests use this shape.
DEPLOY_PLAN = [
    Phase("ENQUEUED", 5), Phase("INPROGRESS", 20), Phase("WAITING_FOR_APPLY", None),
    Phase("INPROGRESS", 20), Phase("SUCCESSFUL", None),
]
BUILD_PLAN = [Phase("ENQUEUED", 5), Phase("INPROGRESS", 30), Phase("SUCCESSFUL", None)]
FAILING_PLAN = [Phase("ENQUEUED", 5), Phase("INPROGRESS", 15), Phase("FAILED", None)]
# CANCEL is asynchronous: the execution passes through TERMINATING.
CANCEL_PLAN = [Phase("TERMINATING", 3), Phase("TERMINATED", None)]
# Waits for someone to give the variables the pipeline asks for (APPLY_VARIABLES).
VARIABLES_PLAN = [
    Phase("ENQUEUED", 5), Phase("INPROGRESS", 20), Phase("WAITING_FOR_VARIABLES", None),
    Phase("INPROGRESS", 20), Phase("SUCCESSFUL", None),
]
# Waits for a visual-test session to be resolved in Buddy itself: no API operation moves it.
VT_SESSION_PLAN = [Phase("ENQUEUED", 5), Phase("INPROGRESS", 20),
                   Phase("WAITING_FOR_VT_SESSION", None)]
# A delayed run waits before it is queued.
DELAYED_PLAN = [Phase("RUN_DELAYED", 120), Phase("ENQUEUED", 5), Phase("INPROGRESS", 30),
                Phase("SUCCESSFUL", None)]
AFTER_APPLY_PLAN = [Phase("INPROGRESS", 20), Phase("SUCCESSFUL", None)]
FINAL = {"SUCCESSFUL", "FAILED", "TERMINATED", "NOT_EXECUTED", "SKIPPED"}

# Buddy list executions, documented default; projects, documented default; pipelines, assumed.
PER_PAGE_DEFAULT = 20
PROJECTS_PER_PAGE_DEFAULT = 20
PIPELINES_PER_PAGE_DEFAULT = 20
PER_PAGE_MAX = 100  # assumed: no maximum is documented
APPLY_STATUSES = {"WAITING_FOR_APPLY"}  # documented: APPLY approves these
VARIABLES_STATUSES = {"WAITING_FOR_VARIABLES", "WAITING_FOR_SETTABLE_VARIABLES"}
NOT_APPLICABLE = {"WAITING_FOR_VT_SESSION"}  # documented: cannot be applied
DEMO_VARIABLES = [
    {"key": "RELEASE_NOTES", "value": "", "description": "What this release changes"},
    {"key": "MIGRATE", "value": "yes", "description": "Run the migrations"},
]

DEMO_PIPELINES = [("web-shop", 1, "Deploy to production"), ("web-shop", 2, "Deploy to staging"),
                  ("billing-api", 3, "Release")]
PEOPLE = ["Mike Benson", "Ana Lima", "Kofi Mensah", "Jo Tanaka"]


class BuddySimulator(Simulator):
    name = "buddy"
    running_statuses = {"INPROGRESS"}
    final_statuses = FINAL
    unknown_status_value = "QUANTUM_SUPERPOSITION"

    def __init__(self, *args, workspace: str = "acme", prefix: str = "", **kwargs):
        self.workspace = workspace
        # On-premise Buddy serves its API under a path (https://<host>/api).
        self.prefix = prefix.rstrip("/")
        self.projects: dict[str, dict[int, str]] = {}  # project -> {pipeline id: name}
        self._ids = itertools.count(1)
        super().__init__(*args, **kwargs)

    # -- wire details ------------------------------------------------------------------

    def routes(self) -> None:
        ws = self.prefix + "/workspaces/{workspace}"
        pipe = ws + "/projects/{project}/pipelines/{pipeline}"
        self.route("GET", ws + "/projects", self.list_projects)
        self.route("GET", ws + "/projects/{project}/pipelines", self.list_pipelines)
        self.route("GET", pipe + "/executions", self.list_executions)
        self.route("GET", pipe + "/executions/{execution}", self.get_execution)
        self.route("PATCH", pipe + "/executions/{execution}", self.patch_execution)

    def auth_error(self) -> HttpError:
        return HttpError(401, self.error_body(401, "Invalid or expired token"))

    def error_body(self, status: int, message: str) -> Any:
        return {"errors": [{"message": message}]}

    def response_headers(self) -> dict[str, str]:
        return {
            "X-Rate-Limit-Limit": str(self.rate_limit),
            "X-Rate-Limit-Remaining": str(self.rate_limit_remaining()),
        }

    def rate_limit_headers(self, retry_after: int) -> dict[str, str]:
        return {"X-Rate-Limit-Limit": str(self.rate_limit), "X-Rate-Limit-Remaining": "0",
                "Retry-After": str(retry_after)}

    def without_optional_fields(self, body: Any) -> Any:
        drop = {"branch", "to_revision", "from_revision", "creator", "action_executions",
                "html_url", "finish_date", "comment"}
        if isinstance(body, dict) and "executions" in body:
            return {**body, "executions": [self.without_optional_fields(e)
                                           for e in body["executions"]]}
        if isinstance(body, dict) and "status" in body:
            return {k: v for k, v in body.items() if k not in drop}
        return body

    # -- sample data -------------------------------------------------------------------

    def add_pipeline(self, project: str, pipeline_id: int, name: str) -> None:
        with self.lock:
            self.projects.setdefault(project, {})[pipeline_id] = name

    def add_execution(self, project: str, pipeline_id: int, plan: list[Phase] | None = None,
                      *, age: float = 0, branch: str = "main", creator: str = "Mike Benson",
                      revision: str | None = None, comment: str = "",
                      variables: list[dict[str, str]] | None = None) -> SimRun:
        self.add_pipeline(project, pipeline_id, self.projects.get(project, {}).get(
            pipeline_id, f"pipeline-{pipeline_id}"))
        execution_id = next(self._ids)
        revision = revision or f"{execution_id:04x}".ljust(40, "a")
        return self.add_run(
            (project, pipeline_id, execution_id), list(plan or DEPLOY_PLAN),
            created_at=self.clock.now() - timedelta(seconds=age),
            project=project, pipeline=pipeline_id, id=execution_id, branch=branch,
            creator=creator, revision=revision, comment=comment,
            variables=[dict(v) for v in (variables if variables is not None else DEMO_VARIABLES)],
            applied_variables=None,
            actions=["Build image", "Deploy to cluster", "Smoke tests"],
        )

    # -- demo data ---------------------------------------------------------------------

    def seed_demo(self, rng) -> dict[str, str]:
        """Fill the simulator with history and a few live executions; return the scope."""
        for project, pipeline_id, name in DEMO_PIPELINES:
            self.add_pipeline(project, pipeline_id, name)
            for hours in (48, 30, 20, 9, 5, 2):
                plan = rng.choice([BUILD_PLAN, BUILD_PLAN, FAILING_PLAN,
                                   DEPLOY_PLAN[:2] + CANCEL_PLAN])
                self.add_execution(project, pipeline_id, plan, age=hours * 3600,
                                   creator=rng.choice(PEOPLE))
        self.add_execution("web-shop", 1, DEPLOY_PLAN, age=40, creator="Ana Lima")
        self.add_execution("web-shop", 2, BUILD_PLAN, age=10, creator="Kofi Mensah")
        # One waiting for its variables, one delayed.
        self.add_execution("billing-api", 3, VARIABLES_PLAN, age=60, creator="Jo Tanaka")
        self.add_execution("billing-api", 3, DELAYED_PLAN, age=5, creator="Ana Lima")
        return {"workspace": self.workspace}

    def spawn_demo(self, rng) -> None:
        project, pipeline_id, _ = rng.choice(DEMO_PIPELINES)
        plan = rng.choice([DEPLOY_PLAN, BUILD_PLAN, FAILING_PLAN])
        self.add_execution(project, pipeline_id, plan, creator=rng.choice(PEOPLE),
                           branch=rng.choice(["main", "main", "release/2.4", "hotfix/login"]))

    # -- handlers ----------------------------------------------------------------------

    def _check_workspace(self, request: Request) -> None:
        if request.params["workspace"] != self.workspace:
            raise HttpError(404, self.error_body(404, "Workspace not found"))

    def _pipeline(self, request: Request) -> tuple[str, int, str]:
        self._check_workspace(request)
        project = request.params["project"]
        try:
            pipeline_id = int(request.params["pipeline"])
            return project, pipeline_id, self.projects[project][pipeline_id]
        except (KeyError, ValueError):
            raise HttpError(404, self.error_body(404, "Pipeline not found")) from None

    def _paging(self, request: Request, default: int) -> tuple[int, int]:
        """`page` (from 1) and `per_page`; other query parameters are ignored."""
        try:
            page = max(1, int(request.query.get("page", 1)))
            per_page = min(PER_PAGE_MAX, max(1, int(request.query.get("per_page", default))))
        except ValueError:
            raise HttpError(400, self.error_body(400, "Invalid paging parameters")) from None
        return page, per_page

    def list_projects(self, request: Request) -> Any:
        self._check_workspace(request)
        page, per_page = self._paging(request, PROJECTS_PER_PAGE_DEFAULT)
        names = sorted(self.projects)[(page - 1) * per_page: page * per_page]
        base = f"{API}/workspaces/{self.workspace}/projects"
        return {"url": base, "html_url": f"{APP}/{self.workspace}", "projects": [
            {"url": f"{base}/{p}", "html_url": f"{APP}/{self.workspace}/{p}", "name": p,
             "display_name": p.replace("-", " ").title(), "status": "ACTIVE"}
            for p in names
        ]}

    def list_pipelines(self, request: Request) -> Any:
        self._check_workspace(request)
        project = request.params["project"]
        if project not in self.projects:
            raise HttpError(404, self.error_body(404, "Project not found"))
        page, per_page = self._paging(request, PIPELINES_PER_PAGE_DEFAULT)
        pipelines = sorted(self.projects[project].items())[(page - 1) * per_page: page * per_page]
        base = f"{API}/workspaces/{self.workspace}/projects/{project}/pipelines"
        return {"url": base, "html_url": f"{APP}/{self.workspace}/{project}/pipelines",
                "pipelines": [
                    {"url": f"{base}/{pid}", "html_url": f"{APP}/{self.workspace}/{project}"
                     f"/pipelines/pipeline/{pid}", "id": pid, "name": name, "on": "CLICK",
                     "refs": ["refs/heads/main"]}
                    for pid, name in pipelines
                ]}

    def list_executions(self, request: Request) -> Any:
        project, pipeline_id, _ = self._pipeline(request)
        page, per_page = self._paging(request, PER_PAGE_DEFAULT)
        runs = sorted(
            (r for key, r in self.runs.items() if key[:2] == (project, pipeline_id)),
            key=lambda r: (r.created_at, r.data["id"]), reverse=True,
        )
        chunk = runs[(page - 1) * per_page: page * per_page]
        return {
            "url": f"{API}/workspaces/{self.workspace}/projects/{project}/pipelines/"
                   f"{pipeline_id}/executions",
            "page": page, "page_size": per_page,
            "total_page_count": max(1, -(-len(runs) // per_page)),
            "element_count": len(chunk), "total_element_count": len(runs),
            "executions": [self.render(r, short=True) for r in chunk],
        }

    def _execution(self, request: Request) -> SimRun:
        project, pipeline_id, _ = self._pipeline(request)
        try:
            return self.get((project, pipeline_id, int(request.params["execution"])))
        except ValueError:
            raise HttpError(404, self.error_body(404, "Execution not found")) from None

    def get_execution(self, request: Request) -> Any:
        return self.render(self._execution(request))

    def patch_execution(self, request: Request) -> Any:
        run = self._execution(request)
        body = request.body if isinstance(request.body, dict) else {}
        operation = body.get("operation")
        if operation not in {"RETRY", "CANCEL", "APPLY", "APPLY_VARIABLES"}:
            raise HttpError(400, self.error_body(
                400, "operation must be one of RETRY, CANCEL, APPLY, APPLY_VARIABLES"))
        if operation == "APPLY_VARIABLES" and not body.get("variables"):
            raise HttpError(400, self.error_body(400, "variables are required"))
        if operation == "CANCEL":
            if run.status in FINAL or run.status == "TERMINATING":
                raise HttpError(400, self.error_body(400, "Execution is already finished"))
            self.transition(run, list(CANCEL_PLAN))
        elif operation in ("APPLY", "APPLY_VARIABLES"):
            self._check_apply(run, operation, body.get("variables"))
            self.transition(run, list(AFTER_APPLY_PLAN))
        else:  # RETRY re-runs a failed or terminated execution under the same id
            if run.status not in {"FAILED", "TERMINATED"}:
                raise HttpError(400, self.error_body(400, "Only failed executions can be retried"))
            run.finished_at = None
            self.transition(run, [Phase("ENQUEUED", 5), Phase("INPROGRESS", 20),
                                  Phase("SUCCESSFUL", None)])
        return self.render(run)

    def _check_apply(self, run: SimRun, operation: str, variables: Any) -> None:
        """Refuse what Buddy refuses: the operation must fit what the run waits for."""
        def refuse(message: str):
            raise HttpError(400, self.error_body(400, message))

        if run.status in NOT_APPLICABLE:
            refuse("Execution is waiting for a visual test session and cannot be applied")
        if operation == "APPLY":
            if run.status in VARIABLES_STATUSES:
                refuse("Execution is waiting for variables: use APPLY_VARIABLES")
            if run.status not in APPLY_STATUSES:
                refuse("Execution is not waiting for approval")
            return
        if run.status not in VARIABLES_STATUSES:
            refuse("Execution is not waiting for variables")
        if not isinstance(variables, list) or not all(
                isinstance(v, dict) and isinstance(v.get("key"), str)
                and isinstance(v.get("value"), str) for v in variables):
            refuse("variables must be a list of {key, value} strings")
        given = {v["key"]: v["value"] for v in variables}
        asked = {v["key"] for v in run.data["variables"]}
        if set(given) - asked:
            refuse(f"Unknown variables: {', '.join(sorted(set(given) - asked))}")
        if asked - set(given):
            refuse(f"Missing variables: {', '.join(sorted(asked - set(given)))}")
        run.data["applied_variables"] = given

    @staticmethod
    def _action_statuses(run: SimRun) -> list[str]:
        """Actions before the current one succeeded, the current one shares the
        execution's status, later ones have not run (yet)."""
        count = len(run.data["actions"])
        if run.status == "RUN_DELAYED":  # nothing has started yet
            return ["INITIAL"] * count
        if run.status == "SUCCESSFUL":
            return ["SUCCESSFUL"] * count
        current = min(run.phase, count - 1)
        later = "NOT_EXECUTED" if run.status in FINAL else "ENQUEUED"
        return ["SUCCESSFUL"] * current + [run.status] + [later] * (count - current - 1)

    def render(self, run: SimRun, short: bool = False) -> dict[str, Any]:
        """An execution; `short` is the list's view, without its action executions."""
        d = run.data
        project, pipeline_id = d["project"], d["pipeline"]
        pipe_url = f"{API}/workspaces/{self.workspace}/projects/{project}/pipelines/{pipeline_id}"
        person = {"url": f"{API}/workspaces/{self.workspace}/member/1", "id": 1,
                  "name": d["creator"], "avatar_url": ""}
        revision = {"url": f"{API}/commits/{d['revision']}", "revision": d["revision"],
                    "message": "deploy", "committer": person, "author": person}
        finished = run.status in FINAL
        body = {
            "url": f"{pipe_url}/executions/{d['id']}",
            "html_url": f"{APP}/{self.workspace}/{project}/pipelines/pipeline/{pipeline_id}"
                        f"/execution/{d['id']}",
            "id": d["id"],
            "start_date": iso(run.created_at),
            "finish_date": iso(run.finished_at) if finished else None,
            "triggeredOn": "CLICK",
            "refresh": False,
            "status": run.status,
            "comment": d["comment"],
            "branch": {"url": f"{API}/branches/{d['branch']}", "name": d["branch"],
                       "default": d["branch"] == "main"},
            "from_revision": revision,
            "to_revision": revision,
            "creator": person,
            "pipeline": {"url": pipe_url, "id": pipeline_id,
                         "name": self.projects[project][pipeline_id], "on": "CLICK",
                         "refs": ["refs/heads/main"], "last_execution_status": run.status},
        }
        if short:
            return body
        body["action_executions"] = []
        for i, (name, status) in enumerate(zip(d["actions"], self._action_statuses(run),
                                               strict=True)):
            action = {"url": f"{pipe_url}/actions/{i + 1}", "id": i + 1, "name": name,
                      "type": "BUILD", "trigger_time": "ON_EVERY_EXECUTION"}
            if status in VARIABLES_STATUSES:
                action.update(type="WAIT_FOR_VARIABLES",
                              variables=[dict(v) for v in d["variables"]])
            body["action_executions"].append(
                {"status": status, "progress": 100 if status == "SUCCESSFUL" else 0,
                 "action": action})
        return body

    # -- webhooks (appended) ----------------------------------------------------------
    # Buddy's workspace webhooks: events EXECUTION_STARTED, EXECUTION_SUCCESSFUL,
    # EXECUTION_FAILED, EXECUTION_FINISHED (documented); the `secret_key` is "sent in the
    # payload" (documented), here as the body's top-level field (assumed, as are the body's
    # `event`, `pipeline` and `execution`; the delivery log shows workspace, invoker and
    # project). No event is sent when an execution starts waiting for approval.

    def webhook_deliveries(self, run: SimRun, before, secret: str) -> list[Delivery]:
        status = run.status
        if status == "INPROGRESS" and (before is None or before in {"INITIAL", "ENQUEUED"}):
            events = ["EXECUTION_STARTED"]
        elif status == "SUCCESSFUL":
            events = ["EXECUTION_SUCCESSFUL", "EXECUTION_FINISHED"]
        elif status == "FAILED":
            events = ["EXECUTION_FAILED", "EXECUTION_FINISHED"]
        elif status in FINAL:
            events = ["EXECUTION_FINISHED"]
        else:
            return []
        d = run.data
        project = {"url": f"{API}/workspaces/{self.workspace}/projects/{d['project']}",
                   "html_url": f"{APP}/{self.workspace}/{d['project']}", "name": d["project"],
                   "display_name": d["project"].replace("-", " ").title(), "status": "ACTIVE"}
        execution = self.render(run)
        return [Delivery(headers={}, body=json.dumps({
            "event": event,
            "secret_key": secret,
            "workspace": {"url": f"{API}/workspaces/{self.workspace}",
                          "html_url": f"{APP}/{self.workspace}", "id": 1,
                          "name": self.workspace, "domain": self.workspace},
            "invoker": execution["creator"],
            "project": project,
            "pipeline": execution["pipeline"],
            "execution": execution,
        }).encode()) for event in events]
