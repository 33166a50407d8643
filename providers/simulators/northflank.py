"""Northflank simulator: a project's pipelines and their release-flow runs, per stage."""

from __future__ import annotations

import base64
import json
import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from providers.simulators.base import HttpError, Phase, Request, SimRun, Simulator, iso

STAGES = ("development", "staging", "production")

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

RUNNING = {"running", "retrying", "async_wait", "waiting", "approval_wait"}
FINAL = {"success", "failure", "aborted", "skipped"}
# The run's root Workflow node has no pending/queued/running of its own (its enum differs).
NODE_STATUS = {"pending": "waiting", "queued": "waiting", "running": "waiting"}

DEMO_PIPELINES = {"web": "web", "api": "api"}
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

    def __init__(self, *args, project: str = "shop", seed: int = 0, **kwargs):
        self.project = project
        self.pipelines: dict[str, str] = {}  # pipeline id -> name
        # Stages without a release flow: listing their runs answers 404.
        self.missing_flows: set[tuple[str, str]] = set()
        self._ids = random.Random(seed)
        self._sequence = 0
        super().__init__(*args, **kwargs)

    # -- wire details ------------------------------------------------------------------

    def routes(self) -> None:
        pipelines = "/v1/projects/{project}/pipelines"
        runs = pipelines + "/{pipeline}/release-flows/{stage}/runs"
        self.route("GET", pipelines, self.list_pipelines)
        self.route("GET", pipelines + "/{pipeline}", self.get_pipeline)
        self.route("GET", runs, self.list_runs)
        self.route("GET", runs + "/{run}", self.get_run)
        self.route("POST", runs + "/{run}/abort", self.abort_run)

    def error_body(self, status: int, message: str) -> Any:
        return {"error": {"status": status, "message": message, "id": str(uuid.uuid4())}}

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

    def add_pipeline(self, pipeline_id: str, name: str | None = None) -> None:
        with self.lock:
            self.pipelines[pipeline_id] = name or pipeline_id

    def new_id(self) -> str:
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    def add_release(self, pipeline_id: str, stage: str, plan: list[Phase] | None = None, *,
                    age: float = 0, name: str | None = "Release v1.0.0",
                    description: str = "", author: str = "ana-lima",
                    version: str = "1.0.0") -> SimRun:
        if pipeline_id not in self.pipelines:
            self.add_pipeline(pipeline_id)
        with self.lock:
            run_id = self.new_id()
            self._sequence += 1
            return self.add_run(
                (pipeline_id, stage, run_id), list(plan or RELEASE_PLAN),
                created_at=self.clock.now() - timedelta(seconds=age),
                pipeline=pipeline_id, stage=stage, id=run_id, name=name,
                description=description, author=author, version=version,
                sequence=self._sequence,
            )

    # -- demo data ---------------------------------------------------------------------

    def seed_demo(self, rng) -> dict[str, str]:
        """History for both pipelines in every stage, plus a few runs still going."""
        for pipeline_id, name in DEMO_PIPELINES.items():
            self.add_pipeline(pipeline_id, name)
            minor = rng.randint(3, 9)
            for hours in (60, 40, 26, 12, 6, 3):
                minor += 1
                for stage in STAGES:
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
        stage = rng.choice(STAGES)
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

    # -- handlers ----------------------------------------------------------------------

    def _check_project(self, request: Request) -> None:
        if request.params["project"] != self.project:
            raise HttpError(404, self.error_body(404, "Project not found"))

    def _pipeline(self, request: Request) -> str:
        self._check_project(request)
        pipeline_id = request.params["pipeline"]
        if pipeline_id not in self.pipelines:
            raise HttpError(404, self.error_body(404, "Pipeline not found"))
        return pipeline_id

    def _flow(self, request: Request) -> tuple[str, str]:
        pipeline_id = self._pipeline(request)
        stage = request.params["stage"]
        if stage not in STAGES or (pipeline_id, stage) in self.missing_flows:
            raise HttpError(404, self.error_body(404, "Release flow not found"))
        return pipeline_id, stage

    def _page(self, request: Request, items: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        """Cursor (or page number) pagination, as the reference documents it."""
        try:
            per_page = min(100, max(1, int(request.query.get("per_page", 50))))
            if "cursor" in request.query:
                cursor = json.loads(base64.urlsafe_b64decode(request.query["cursor"]))
                offset = int(cursor["offset"])
            else:
                offset = (max(1, int(request.query.get("page", 1))) - 1) * per_page
        except (ValueError, KeyError, TypeError):
            raise HttpError(400, self.error_body(400, "Invalid pagination parameters")) from None
        chunk = items[offset: offset + per_page]
        more = offset + per_page < len(items)
        pagination: dict[str, Any] = {"hasNextPage": more, "count": len(chunk)}
        if more:
            pagination["cursor"] = base64.urlsafe_b64encode(
                json.dumps({"offset": offset + per_page}).encode()).decode()
        return chunk, pagination

    def list_pipelines(self, request: Request) -> Any:
        self._check_project(request)
        items = [{"name": name, "id": pid, "description": f"{name} releases"}
                 for pid, name in sorted(self.pipelines.items())]
        chunk, pagination = self._page(request, items)
        return {"data": {"pipelines": chunk}, "pagination": pagination}

    def get_pipeline(self, request: Request) -> Any:
        pipeline_id = self._pipeline(request)
        return {"data": {
            "name": self.pipelines[pipeline_id],
            "description": f"{self.pipelines[pipeline_id]} releases",
            "nfObjects": [{"id": f"{pipeline_id}-{stage}", "type": "service",
                           "stage": stage.title()} for stage in STAGES],
        }}

    def list_runs(self, request: Request) -> Any:
        pipeline_id, stage = self._flow(request)
        runs = sorted((r for key, r in self.runs.items() if key[:2] == (pipeline_id, stage)),
                      key=lambda r: (r.created_at, r.data["sequence"]), reverse=True)
        chunk, pagination = self._page(request, runs)
        return {"data": {"runs": [self.render_summary(r) for r in chunk]},
                "pagination": pagination}

    def _run(self, request: Request) -> SimRun:
        pipeline_id, stage = self._flow(request)
        run = self.runs.get((pipeline_id, stage, request.params["run"]))
        if run is None:
            raise HttpError(404, self.error_body(404, "Release flow run not found"))
        return run

    def get_run(self, request: Request) -> Any:
        return {"data": self.render(self._run(request))}

    def abort_run(self, request: Request) -> Any:
        run = self._run(request)
        if run.status in FINAL:
            raise HttpError(409, self.error_body(409, "Release flow run has already concluded"))
        if run.status == "aborting":
            raise HttpError(409, self.error_body(409, "Release flow run is already aborting"))
        self.transition(run, list(ABORT_PLAN))
        return {"data": self.render(run)}

    # -- rendering ---------------------------------------------------------------------

    def render_summary(self, run: SimRun) -> dict[str, Any]:
        """A run as the list endpoint shows it (without the template that ran)."""
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
        """A run as get and abort show it: the release-flow template, then the run."""
        d = run.data
        repo = f"https://github.com/acme-shop/{d['pipeline']}"
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
                       "branch": "main", "filePath": f"/release-flows/{d['stage']}.json"},
            "spec": {
                "settings": {"maxAttempts": 3, "backoff": {"type": "fixed", "delay": 60}},
                "kind": "Workflow",
                "response": response,
            },
            **self.render_summary(run),
        }
