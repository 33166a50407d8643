"""Northflank simulator: a project's pipelines with their release-flow runs per stage, and
its workflows (the newer Environments + Workflows model) with their runs.

Written from Northflank's public API reference pages (Pipelines, Workflows, "Use the API",
the API overview), never from Runboard's client. What the reference documents:
- every project route also in its team form, /v1/teams/{teamId}/projects/{projectId}/...;
- lists take per_page (at most 100; 50 by default), page and cursor, and answer
  {"data": {...}, "pagination": {"hasNextPage", "cursor", "count"}};
- the release-flow runs list also filters by status and concluded;
- GET pipeline answers name, description, preview, stages and nfObjects[] {id, type, stage}
  with stage one of Development, Staging, Production; list-pipelines items carry id,
  name, description, createdAt and updatedAt ("time of update");
- the list of workflows answers its items under data.pipelines (sic);
- run statuses pending, running, success, failure, aborted, aborting, queued, unknown,
  skipped, waiting, retrying, async_wait, approval_wait; a run's root node has its own enum;
- run-release-flow POST .../release-flows/{stage}/runs and run-workflow
  POST .../workflows/{workflowId}/runs take {name, description, arguments, overrides,
  releaseNodeOverrides}, name 3-39 characters and description at most 200, both patterned;
- 1000 requests per hour, the window resetting one hour after its first request, and
  x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset (seconds to reset) on answers;
- error bodies {"error": {"status", "message", "id", "details"}}.
Assumed here, because the reference does not say (see the client's docstring too):
- what run-release-flow and run-workflow answer ("200 OK: success", no schema): by default
  {"data": <the new run, as get shows it>}; `run_answer = "empty"` answers {"data": {}};
- the items of GET pipeline's `stages` (their type is not given): stage names, as
  nfObjects[].stage spells them; `serve_stages = False` leaves the field out, as the
  reference's own example does;
- stage path values are the stage names in lower case (the reference's examples use
  "development"); any other spelling is an unknown release flow (404);
- per_page above 100 or below 1, or a page below 1, is refused with 400 rather than clamped;
- a project that belongs to a team is found only under its team form (404 otherwise);
- a 429 carries the same x-ratelimit-* headers, the wait being x-ratelimit-reset;
- aborting a concluded or aborting run answers 409; unknown query parameters are ignored;
- a pipeline's updatedAt moves when the pipeline itself changes (add_pipeline again),
  not when one of its release flows runs (the reference says only "time of update");
- no conditional requests: no ETag is sent and If-None-Match is ignored (the reference
  documents neither).
"""

from __future__ import annotations

import base64
import json
import random
import re
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

RATE_LIMIT_PER_HOUR = 1000  # Use the API, "Rate limits": the default
RATE_WINDOW_SECONDS = 3600.0  # "resets one hour after the first request is sent"
PER_PAGE_DEFAULT = 50  # API overview, "Pagination": default page size
PER_PAGE_MAX = 100  # every list endpoint: "Maximum of 100 results per page"
# GET pipeline: nfObjects[].stage is one of these.
PIPELINE_STAGES = ("Development", "Staging", "Production")
STAGES = tuple(s.lower() for s in PIPELINE_STAGES)  # path values (assumed: lower case)
RUN_STATUSES = {"pending", "running", "success", "failure", "aborted", "aborting", "queued",
                "unknown", "skipped", "waiting", "retrying", "async_wait", "approval_wait"}
# Run release flow / run workflow request body.
RUN_BODY_KEYS = {"name", "description", "arguments", "overrides", "releaseNodeOverrides"}
RUN_NAME = re.compile(r"^[a-zA-Z]((-|\s)?[a-zA-Z0-9]+((-|\s)[a-zA-Z0-9]+)*)?$")
DESCRIPTION = re.compile(r"^[a-zA-Z0-9.,?\s\\/'\"()\[\];`%^&*\-_:!]+$")

# Release flows: a node may wait on an asynchronous action (a build, a job run) on the way.
RELEASE_PLAN = [Phase("pending", 3), Phase("running", 15), Phase("async_wait", 20),
                Phase("running", 10), Phase("success", None)]
# Behind another run of the same flow (concurrency policy "queue").
QUEUED_PLAN = [Phase("pending", 3), Phase("queued", 20), Phase("running", 25),
               Phase("success", None)]
FAILING_PLAN = [Phase("pending", 3), Phase("running", 15), Phase("retrying", 10),
                Phase("failure", None)]
# Production waits for someone to approve it in Northflank's UI: the API cannot, so here
# the run resumes on its own after a while, as if someone had.
APPROVAL_PLAN = [Phase("pending", 3), Phase("running", 20), Phase("approval_wait", 90),
                 Phase("running", 20), Phase("success", None)]
SKIPPED_PLAN = [Phase("pending", 3), Phase("skipped", None)]
# Abort is asynchronous: the run passes through aborting.
ABORT_PLAN = [Phase("aborting", 3), Phase("aborted", None)]
# A workflow run: waits on its inputs, runs, then a node waits on a deployment.
WORKFLOW_PLAN = [Phase("pending", 2), Phase("waiting", 5), Phase("running", 20),
                 Phase("async_wait", 15), Phase("success", None)]

RUNNING = {"running", "retrying", "async_wait", "waiting", "approval_wait"}
FINAL = {"success", "failure", "aborted", "skipped"}
# The run's root Workflow node has no pending/queued/running of its own (its enum differs).
NODE_STATUS = {"pending": "waiting", "queued": "waiting", "running": "waiting"}

DEMO_PIPELINES = {"web": ("web", PIPELINE_STAGES),
                  # A pipeline need not use every stage: this one has no development.
                  "api": ("api", PIPELINE_STAGES[1:])}
PEOPLE = ["ana-lima", "kofi-mensah", "jo-tanaka", "mike-benson"]
RUN_NAMES = ["Release v{v}", "Hotfix v{v}", "Promote v{v}", "Nightly release {v}"]
DESCRIPTIONS = ["Promote the image built from main", "Roll out the new checkout flow",
                "Database migration, then deploy", "Patch for the login redirect", ""]


def nf_time(value: datetime | None) -> str | None:
    """Northflank writes times with a space: "2021-01-01 12:01:00.000Z"."""
    text = iso(value)
    return text.replace("T", " ") if text else None


class NorthflankSimulator(Simulator):
    name = "northflank"
    running_statuses = RUNNING
    final_statuses = FINAL
    unknown_status_value = "quantum_wait"
    rate_limit = RATE_LIMIT_PER_HOUR
    rate_window = RATE_WINDOW_SECONDS
    # What run-release-flow / run-workflow answer: "detail" or "empty" (see the docstring).
    run_answer = "detail"
    serve_stages = True

    def __init__(self, *args, project: str = "shop", team: str | None = None, seed: int = 0,
                 rate_limit: int | None = None, **kwargs):
        self.project = project
        self.team = team  # the team the project belongs to, if any
        if rate_limit is not None:  # Northflank raises the limit on request
            self.rate_limit = rate_limit
        self.pipelines: dict[str, dict[str, Any]] = {}  # id -> {"name", "stages"}
        # Stages without a release flow: listing their runs answers 404.
        self.missing_flows: set[tuple[str, str]] = set()
        self.workflows: dict[str, str] = {}  # id -> name
        self._ids = random.Random(seed)
        self._sequence = 0
        super().__init__(*args, **kwargs)

    # -- wire details ------------------------------------------------------------------

    def routes(self) -> None:
        for project in ("/v1/projects/{project}", "/v1/teams/{team}/projects/{project}"):
            pipelines = project + "/pipelines"
            runs = pipelines + "/{pipeline}/release-flows/{stage}/runs"
            self.route("GET", pipelines, self.list_pipelines)
            self.route("GET", pipelines + "/{pipeline}", self.get_pipeline)
            self.route("GET", runs, self.list_runs)
            self.route("POST", runs, self.run_release_flow)
            self.route("GET", runs + "/{run}", self.get_run)
            self.route("POST", runs + "/{run}/abort", self.abort_run)
            workflows = project + "/workflows"
            workflow_runs = workflows + "/{workflow}/runs"
            self.route("GET", workflows, self.list_workflows)
            self.route("GET", workflow_runs, self.list_workflow_runs)
            self.route("POST", workflow_runs, self.run_workflow)
            self.route("GET", workflow_runs + "/{run}", self.get_workflow_run)
            self.route("POST", workflow_runs + "/{run}/abort", self.abort_workflow_run)

    def dispatch(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        status, body, headers = super().dispatch(request)
        if status != -1 and not request.path.startswith("/_sim/"):
            # "sent in the header for each response": refusals and errors included.
            headers = {**self.response_headers(), **headers}
        return status, body, headers

    def rate_clock(self) -> float:
        # The hour is measured on the simulated clock, so tests can fast-forward it.
        return self.clock.now().timestamp()

    def error_body(self, status: int, message: str) -> Any:
        return {"error": {"status": status, "message": message, "id": str(uuid.uuid4()),
                          "details": {}}}

    def auth_error(self) -> HttpError:
        return HttpError(401, self.error_body(401, "Invalid or missing API token"))

    def response_headers(self) -> dict[str, str]:
        return {"x-ratelimit-limit": str(self.rate_limit),
                "x-ratelimit-remaining": str(self.rate_limit_remaining()),
                "x-ratelimit-reset": str(self.seconds_to_window_reset())}

    def rate_limit_headers(self, retry_after: int) -> dict[str, str]:
        return {"x-ratelimit-limit": str(self.rate_limit), "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": str(retry_after)}

    def without_optional_fields(self, body: Any) -> Any:
        """Keep only what the reference marks required."""
        required = {"apiVersion", "spec", "id", "status", "concluded", "createdAt", "updatedAt"}
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            return body
        data = body["data"]
        if isinstance(data.get("runs"), list):
            runs = [{k: v for k, v in r.items() if k in required} for r in data["runs"]]
            return {**body, "data": {**data, "runs": runs}}
        if "status" in data:
            return {**body, "data": {k: v for k, v in data.items() if k in required}}
        return body

    # -- sample data -------------------------------------------------------------------

    def add_pipeline(self, pipeline_id: str, name: str | None = None,
                     stages: tuple[str, ...] = PIPELINE_STAGES) -> None:
        """Add a pipeline, or change an existing one (which moves its updatedAt)."""
        with self.lock:
            now = self.clock.now()
            created = self.pipelines.get(pipeline_id, {}).get("createdAt", now)
            self.pipelines[pipeline_id] = {"name": name or pipeline_id, "stages": tuple(stages),
                                           "createdAt": created, "updatedAt": now}

    def add_workflow(self, workflow_id: str, name: str | None = None) -> None:
        with self.lock:
            self.workflows[workflow_id] = name or workflow_id

    def new_id(self) -> str:
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    def _new_run(self, key_prefix: tuple, plan, age, **data) -> SimRun:
        with self.lock:
            run_id = self.new_id()
            self._sequence += 1
            run = self.add_run(
                (*key_prefix, run_id), list(plan),
                created_at=self.clock.now() - timedelta(seconds=age),
                id=run_id, sequence=self._sequence, **data)
            if run.status in FINAL and run.finished_at is None:  # a plan that starts final
                run.finished_at = run.created_at
            return run

    def add_release(self, pipeline_id: str, stage: str, plan: list[Phase] | None = None, *,
                    age: float = 0, name: str | None = "Release v1.0.0",
                    description: str = "", author: str = "ana-lima",
                    version: str = "1.0.0") -> SimRun:
        if pipeline_id not in self.pipelines:
            self.add_pipeline(pipeline_id)
        return self._new_run(("release", pipeline_id, stage), plan or RELEASE_PLAN, age,
                             pipeline=pipeline_id, stage=stage, name=name,
                             description=description, author=author, version=version)

    def add_workflow_run(self, workflow_id: str, plan: list[Phase] | None = None, *,
                         age: float = 0, name: str | None = "Deploy v1.0.0",
                         description: str = "", author: str = "ana-lima") -> SimRun:
        if workflow_id not in self.workflows:
            self.add_workflow(workflow_id)
        return self._new_run(("workflow", workflow_id), plan or WORKFLOW_PLAN, age,
                             workflow=workflow_id, name=name, description=description,
                             author=author, version="")

    # -- demo data ---------------------------------------------------------------------

    def seed_demo(self, rng) -> dict[str, str]:
        """History for both pipelines in each of their stages, plus a few runs still going."""
        for pipeline_id, (name, stages) in DEMO_PIPELINES.items():
            self.add_pipeline(pipeline_id, name, stages)
            minor = rng.randint(3, 9)
            for hours in (60, 40, 26, 12, 6, 3):
                minor += 1
                for stage in (s.lower() for s in stages):
                    plan = rng.choices(
                        [*self._plans_for(stage), FAILING_PLAN, SKIPPED_PLAN,
                         RELEASE_PLAN[:3] + ABORT_PLAN], weights=[4, 4, 1, 1, 1])[0]
                    self._demo_release(rng, pipeline_id, stage, plan, f"2.{minor}.0",
                                       age=hours * 3600 + rng.randint(0, 1800))
        self._demo_release(rng, "web", "production", APPROVAL_PLAN, "2.20.0", age=30)
        self._demo_release(rng, "api", "staging", RELEASE_PLAN, "2.21.0", age=8)
        self._demo_release(rng, "api", "staging", QUEUED_PLAN, "2.21.1", age=4)
        return {"project": self.project}

    def spawn_demo(self, rng) -> None:
        pipeline_id = rng.choice(sorted(self.pipelines))
        stage = rng.choice(self.pipelines[pipeline_id]["stages"]).lower()
        plan = rng.choice([*self._plans_for(stage), FAILING_PLAN])
        self._demo_release(rng, pipeline_id, stage, plan,
                           f"2.{rng.randint(20, 40)}.{rng.randint(0, 9)}")

    @staticmethod
    def _plans_for(stage: str) -> list[list[Phase]]:
        return [APPROVAL_PLAN, RELEASE_PLAN] if stage == "production" else [RELEASE_PLAN] * 2

    def _demo_release(self, rng, pipeline_id, stage, plan, version, age=0.0) -> SimRun:
        named = rng.random() < 0.8  # unnamed runs show their id, as in Northflank's UI
        return self.add_release(
            pipeline_id, stage, plan, age=age, version=version,
            name=rng.choice(RUN_NAMES).format(v=version) if named else None,
            description=rng.choice(DESCRIPTIONS), author=rng.choice(PEOPLE),
        )

    # -- handlers: lookups ---------------------------------------------------------------

    def _not_found(self, message: str) -> HttpError:
        return HttpError(404, self.error_body(404, message))

    def _bad_request(self, message: str) -> HttpError:
        return HttpError(400, self.error_body(400, message))

    def _check_project(self, request: Request) -> None:
        team = request.params.get("team")
        if team is not None and team != self.team:
            raise self._not_found("Team not found")
        # A team's project is not among an account's own projects: only the team form finds it.
        if request.params["project"] != self.project or (team is None and self.team):
            raise self._not_found("Project not found")

    def _pipeline(self, request: Request) -> str:
        self._check_project(request)
        pipeline_id = request.params["pipeline"]
        if pipeline_id not in self.pipelines:
            raise self._not_found("Pipeline not found")
        return pipeline_id

    def _flow(self, request: Request) -> tuple[str, str]:
        pipeline_id = self._pipeline(request)
        stage = request.params["stage"]
        stages = [s.lower() for s in self.pipelines[pipeline_id]["stages"]]
        if stage not in stages or (pipeline_id, stage) in self.missing_flows:
            raise self._not_found("Release flow not found")
        return pipeline_id, stage

    def _workflow(self, request: Request) -> str:
        self._check_project(request)
        workflow_id = request.params["workflow"]
        if workflow_id not in self.workflows:
            raise self._not_found("Workflow not found")
        return workflow_id

    # -- handlers: paging ----------------------------------------------------------------

    def _page(self, request: Request, items: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        """Cursor or page-number pagination, as the reference documents it."""
        query = request.query
        try:
            per_page = int(query.get("per_page", PER_PAGE_DEFAULT))
            page = int(query.get("page", 1))
        except ValueError:
            raise self._bad_request("per_page and page must be integers") from None
        if not 1 <= per_page <= PER_PAGE_MAX:
            raise self._bad_request(f"per_page must be between 1 and {PER_PAGE_MAX}")
        if page < 1:
            raise self._bad_request("page must be 1 or more")
        if "cursor" in query:
            try:
                offset = int(json.loads(base64.urlsafe_b64decode(query["cursor"]))["offset"])
            except (ValueError, KeyError, TypeError):
                raise self._bad_request("Invalid cursor") from None
        else:
            offset = (page - 1) * per_page
        chunk = items[offset: offset + per_page]
        more = offset + per_page < len(items)
        pagination: dict[str, Any] = {"hasNextPage": more, "count": len(chunk)}
        if more:
            pagination["cursor"] = base64.urlsafe_b64encode(
                json.dumps({"offset": offset + per_page}).encode()).decode()
        return chunk, pagination

    def _filtered(self, request: Request, runs: list[SimRun]) -> list[SimRun]:
        """The release-flow runs list's documented filters: status and concluded."""
        status = request.query.get("status")
        if status is not None:
            if status not in RUN_STATUSES:
                raise self._bad_request(f"status must be one of {', '.join(sorted(RUN_STATUSES))}")
            runs = [r for r in runs if r.status == status]
        concluded = request.query.get("concluded")
        if concluded is not None:
            if concluded not in ("true", "false"):
                raise self._bad_request("concluded must be true or false")
            runs = [r for r in runs if (r.status in FINAL) == (concluded == "true")]
        return runs

    def _newest_first(self, prefix: tuple) -> list[SimRun]:
        return sorted((r for key, r in self.runs.items() if key[:len(prefix)] == prefix),
                      key=lambda r: (r.created_at, r.data["sequence"]), reverse=True)

    # -- handlers: pipelines and release flows ----------------------------------------

    def list_pipelines(self, request: Request) -> Any:
        self._check_project(request)
        items = [{"name": p["name"], "id": pid, "description": f"{p['name']} releases",
                  "createdAt": nf_time(p["createdAt"]), "updatedAt": nf_time(p["updatedAt"])}
                 for pid, p in sorted(self.pipelines.items())]
        chunk, pagination = self._page(request, items)
        return {"data": {"pipelines": chunk}, "pagination": pagination}

    def get_pipeline(self, request: Request) -> Any:
        pipeline = self.pipelines[self._pipeline(request)]
        data: dict[str, Any] = {"name": pipeline["name"],
                                "description": f"{pipeline['name']} releases"}
        if self.serve_stages:
            data["stages"] = list(pipeline["stages"])
        data["nfObjects"] = [
            {"id": f"{request.params['pipeline']}-{stage.lower()}", "type": "service",
             "stage": stage} for stage in pipeline["stages"]]
        return {"data": data}

    def list_runs(self, request: Request) -> Any:
        pipeline_id, stage = self._flow(request)
        runs = self._filtered(request, self._newest_first(("release", pipeline_id, stage)))
        chunk, pagination = self._page(request, runs)
        return {"data": {"runs": [self.render_summary(r) for r in chunk]},
                "pagination": pagination}

    def _run(self, request: Request) -> SimRun:
        pipeline_id, stage = self._flow(request)
        run = self.runs.get(("release", pipeline_id, stage, request.params["run"]))
        if run is None:
            raise self._not_found("Release flow run not found")
        return run

    def get_run(self, request: Request) -> Any:
        return {"data": self.render(self._run(request))}

    def abort_run(self, request: Request) -> Any:
        return {"data": self.render(self._abort(self._run(request), "Release flow run"))}

    def _abort(self, run: SimRun, what: str) -> SimRun:
        if run.status in FINAL:
            raise HttpError(409, self.error_body(409, f"{what} has already concluded"))
        if run.status == "aborting":
            raise HttpError(409, self.error_body(409, f"{what} is already aborting"))
        self.transition(run, list(ABORT_PLAN))
        return run

    def _run_body(self, request: Request) -> dict[str, Any]:
        """A run request's body, checked as the reference describes it."""
        body = request.body if request.body is not None else {}
        if not isinstance(body, dict) or set(body) - RUN_BODY_KEYS:
            raise self._bad_request(f"the body may only hold {', '.join(sorted(RUN_BODY_KEYS))}")
        name, description = body.get("name"), body.get("description")
        if name is not None and not (isinstance(name, str) and 3 <= len(name) <= 39
                                     and RUN_NAME.match(name)):
            raise self._bad_request('"name" does not match the required pattern')
        if description is not None and not (isinstance(description, str)
                                            and len(description) <= 200
                                            and DESCRIPTION.match(description)):
            raise self._bad_request('"description" does not match the required pattern')
        for key in ("arguments", "overrides", "releaseNodeOverrides"):
            if key in body and not isinstance(body[key], dict):
                raise self._bad_request(f'"{key}" must be an object')
        return body

    def _run_answer(self, run: SimRun) -> Any:
        return {"data": self.render(run)} if self.run_answer == "detail" else {"data": {}}

    def run_release_flow(self, request: Request) -> Any:
        pipeline_id, stage = self._flow(request)
        body = self._run_body(request)
        run = self.add_release(pipeline_id, stage, list(RELEASE_PLAN), name=body.get("name"),
                               description=body.get("description", ""), author="api")
        return self._run_answer(run)

    # -- handlers: workflows ------------------------------------------------------------

    def list_workflows(self, request: Request) -> Any:
        self._check_project(request)
        items = [{"name": name, "apiVersion": "v1.2",
                  "options": {"autorun": False, "concurrencyPolicy": "queue"}, "id": wid}
                 for wid, name in sorted(self.workflows.items())]
        chunk, pagination = self._page(request, items)
        # The reference lists workflows under data.pipelines.
        return {"data": {"pipelines": chunk}, "pagination": pagination}

    def list_workflow_runs(self, request: Request) -> Any:
        workflow_id = self._workflow(request)
        chunk, pagination = self._page(request, self._newest_first(("workflow", workflow_id)))
        return {"data": {"runs": [self.render_summary(r) for r in chunk]},
                "pagination": pagination}

    def _workflow_run(self, request: Request) -> SimRun:
        workflow_id = self._workflow(request)
        run = self.runs.get(("workflow", workflow_id, request.params["run"]))
        if run is None:
            raise self._not_found("Workflow run not found")
        return run

    def get_workflow_run(self, request: Request) -> Any:
        return {"data": self.render(self._workflow_run(request))}

    def abort_workflow_run(self, request: Request) -> Any:
        return {"data": self.render(self._abort(self._workflow_run(request), "Workflow run"))}

    def run_workflow(self, request: Request) -> Any:
        workflow_id = self._workflow(request)
        body = self._run_body(request)
        run = self.add_workflow_run(workflow_id, name=body.get("name"),
                                    description=body.get("description", ""), author="api")
        return self._run_answer(run)

    # -- rendering ---------------------------------------------------------------------

    def render_summary(self, run: SimRun) -> dict[str, Any]:
        """A run as the list endpoints show it (without the template that ran)."""
        d = run.data
        body: dict[str, Any] = {"id": d["id"]}
        if d["name"]:
            body["name"] = d["name"]
        if d["description"]:
            body["description"] = d["description"]
        body["status"] = run.status
        if run.started_at:
            body["startedAt"] = nf_time(run.started_at)
        body["concluded"] = run.status in FINAL
        if run.status in FINAL:
            body["concludedAt"] = nf_time(run.finished_at)
        body["createdAt"] = nf_time(run.created_at)
        body["updatedAt"] = nf_time(run.updated_at)
        return body

    def render(self, run: SimRun) -> dict[str, Any]:
        """A run as get and abort show it: the template that ran, then the run."""
        d = run.data
        source = d.get("pipeline") or d.get("workflow")
        repo = f"https://github.com/acme-shop/{source}"
        file_path = (f"/release-flows/{d['stage']}.json" if "stage" in d
                     else f"/workflows/{source}.json")
        response: dict[str, Any] = {
            "status": NODE_STATUS.get(run.status, run.status),
            "retries": {"attempts": 2 if run.status == "retrying" else 1, "maxAttempts": 3,
                        "timestamp": int((run.started_at or run.created_at).timestamp())},
        }
        if run.started_at:
            response["startTime"] = int(run.started_at.timestamp())
        if run.status in FINAL:
            response["endTime"] = int(run.finished_at.timestamp())
        return {
            "apiVersion": "v1.2",
            "triggers": [{"vcsService": "github", "accountLogin": d["author"], "repoUrl": repo,
                          "pathIgnoreRules": ["README.md"], "ciIgnoreFlags": ["[skip ci]"]}],
            "options": {"concurrencyPolicy": "queue", "paused": False},
            "gitops": {"vcsService": "github", "accountLogin": d["author"], "repoUrl": repo,
                       "branch": "main", "filePath": file_path},
            "spec": {
                "settings": {"maxAttempts": 3, "backoff": {"type": "fixed", "delay": 60}},
                "kind": "Workflow",
                "response": response,
            },
            **self.render_summary(run),
        }

    # -- webhooks (appended) ----------------------------------------------------------
    # A RAW_WEBHOOK notification integration (documented): headers
    # X-Northflank-Notification-Integration-{Id,Name,Token,Event-Id,Event-Type}, the Token
    # being the integration's secret itself; body {event, data}; events
    # trigger:release-flow-template-run:{start,update,success,failure,aborted}. ASSUMED:
    # `data` is the run (summary shape) plus pipelineId and stage; no event is sent when a
    # run starts waiting for approval (none is documented for it).
    integration_id = "runboard-hook"

    def webhook_deliveries(self, run: SimRun, before, secret: str) -> list[Delivery]:
        status = run.status
        if status == "approval_wait":
            return []
        kind = {"success": "success", "failure": "failure", "aborted": "aborted"}.get(
            status, "start" if before is None else "update")
        event = f"trigger:release-flow-template-run:{kind}"
        data = {**self.render_summary(run), "pipelineId": run.data["pipeline"],
                "stage": run.data["stage"]}
        return [Delivery(headers={
            "X-Northflank-Notification-Integration-Id": self.integration_id,
            "X-Northflank-Notification-Integration-Name": "Runboard",
            "X-Northflank-Notification-Integration-Token": secret,
            "X-Northflank-Notification-Integration-Event-Id": str(uuid.uuid4()),
            "X-Northflank-Notification-Integration-Event-Type": event,
        }, body=json.dumps({"event": event, "data": data}).encode())]
