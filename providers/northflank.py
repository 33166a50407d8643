"""Northflank: release-flow runs of a project's pipeline stages, and workflow runs of the
newer Environments + Workflows model.

A release-flow run belongs to one stage of one pipeline; that stage is its environment. A
workflow run belongs to one workflow; with no environment in the workflow's API answer,
the workflow stands for its environment. A project on the newer model has no pipelines.

Documented (the seed page and Northflank's public API reference, whose examples and enums
are in tests/fixtures/northflank/):
- every project route also in its team form /v1/teams/{teamId}/projects/{projectId}/...;
  used here when the connection's scope names a `team`;
- GET /v1/projects/{p}/pipelines and GET /v1/projects/{p}/workflows (the latter's items
  under data.pipelines); GET /v1/projects/{p}/pipelines/{id} answers name, stages and
  nfObjects[].stage (Development, Staging, Production): stages are read from there;
- release flows: GET .../release-flows/{stage}/runs, GET .../runs/{runId},
  POST .../runs/{runId}/abort ({"data": run}), POST .../release-flows/{stage}/runs (run
  the release flow); workflows: GET/POST .../workflows/{workflowId}/runs, GET
  .../runs/{runId}, POST .../runs/{runId}/abort;
- lists take per_page (at most 100; 50 by default), page and cursor and answer
  pagination {hasNextPage, cursor, count};
- run status pending, running, success, failure, aborted, aborting, queued, unknown,
  skipped, waiting, retrying, async_wait, approval_wait (the same enum for both kinds);
  concluded, startedAt, concludedAt, createdAt, updatedAt, times like
  "2021-01-01 12:01:00.000Z";
- 1000 requests per hour by default, the window resetting one hour after its first
  request; x-ratelimit-limit, x-ratelimit-remaining and x-ratelimit-reset (seconds to the
  reset) on answers; error bodies {"error": {"status", "message", "id", "details"}};
- no endpoint approves or rejects a run waiting in approval_wait: that is done in
  Northflank's UI. Abort is the only action on a run; retry starts a new run.
Not documented anywhere we could read, and so assumed here:
- what run-release-flow and run-workflow answer ("200 OK: success", no schema): retry
  reads a run id from data.id where there is one, and otherwise takes the stage's (or
  workflow's) newest run that was not there before it asked;
- the item type of GET pipeline's `stages` (strings or objects naming the stage are both
  read); without any stage in the answer the pipeline has no release flow to list;
- stage path values are the stage names in lower case (the reference's examples);
- runs are listed newest first; listing the runs of a stage with no release flow answers
  404 (that stage is skipped); aborting a concluded or aborting run answers 409;
- a 429 carries the same x-ratelimit-* headers, so x-ratelimit-reset is the wait
  (Retry-After is honoured if it is there);
- the run's retry body: only a description naming the run retried; the release flow's
  arguments and overrides are not repeated (the run's answer does not say which it used);
- there is no documented link to a run in Northflank's UI, so web_url stays empty.
Where the reference disagrees with itself, the endpoint's own page wins: the API overview
lists POST .../release-flows/{flowId}/run and POST .../workflows/{workflowId}/run, the
endpoint pages (and the seed) .../release-flows/{stage}/runs and .../workflows/{id}/runs.
Rate budget: a pass costs 1 (pipelines) + 1 per stage with a release flow + 1
(workflows) + 1 per workflow requests, plus one per active run outside the incremental
window, plus 1 per pipeline whose stages are read: a pipeline's name and stages are kept
between passes (`change_state`) for as long as its listed `updatedAt` ("time of
update") stays the same; the unchanged ones are still read again, a few a pass, the
least recently read first, each within RUNBOARD_FULL_READ_EVERY (`Rotation`).
`rate_budget` (1000 an hour) is what the scheduler spaces passes and webhook reads by, at
Runboard's share of it.
What the reference offers to spend less, checked: no listing above a stage carries its
release flows' state (list/get pipeline answer name, description, stages, nfObjects,
createdAt, updatedAt; whether running a release flow moves a pipeline's updatedAt is not
documented, so it is not used as a sign of new runs); no conditional requests (no ETag
or If-None-Match anywhere in the reference); the runs lists filter by `status` and
`concluded`, which cannot replace the newest-first read of a stage (a run that began and
concluded between two passes would be filtered out). So a stage's runs are listed every
pass (one request a stage); webhooks are what spares them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from providers.base import (
    FINISHED,
    Action,
    BadPayload,
    Discovery,
    EnvironmentData,
    InvalidRequest,
    NotFound,
    ProjectData,
    Provider,
    ProviderError,
    RateBudget,
    RateLimitInfo,
    Rotation,
    RunData,
    Status,
    WebhookEvent,
    WebhookRejected,
    parse_time,
    require,
    retry_after_seconds,
    text,
    webhook_header,
    webhook_json,
)

logger = logging.getLogger(__name__)

# The run status enum of release-flow runs and workflow runs alike.
STATUS_MAP: dict[str, Status] = {
    "pending": Status.QUEUED,
    "queued": Status.QUEUED,
    "running": Status.RUNNING,
    "retrying": Status.RUNNING,  # a node failed and is being attempted again
    "async_wait": Status.RUNNING,  # a node waits for work it started (a build, a job run)
    # A node waits on its inputs or a condition, not on a person (approval_wait is that).
    "waiting": Status.RUNNING,
    "approval_wait": Status.WAITING,  # a person must approve it in Northflank's UI
    "success": Status.SUCCEEDED,
    "failure": Status.FAILED,
    "aborting": Status.CANCELLING,
    "aborted": Status.CANCELLED,
    "skipped": Status.SKIPPED,
    "unknown": Status.UNKNOWN,  # documented: Northflank itself does not know
}

# nfObjects[].stage's documented enum, as path values (lower case, as in the examples).
STAGES = ("development", "staging", "production")
# The documented maximum: the fewest requests from an hourly budget of 1000.
PAGE_SIZE = 100
# How many of a stage's newest runs retry compares before and after it starts a run.
RETRY_LOOKBACK = 20


class NorthflankProvider(Provider):
    key = "northflank"
    label = "Northflank"
    # Abort and run-again are all the API offers; abort takes no comment and has no force.
    actions = frozenset({Action.CANCEL, Action.RETRY})
    unsupported_reasons = {
        Action.APPROVE: "Northflank's API has no endpoint to approve a run waiting for "
                        "approval: approve it in Northflank.",
        Action.REJECT: "Northflank's API has no endpoint to reject a run waiting for "
                       "approval: reject it in Northflank, or cancel (abort) it here.",
    }
    scope_required = ("project",)
    scope_optional = ("team", "pipeline", "stage", "workflow")
    status_map = STATUS_MAP
    default_base_url = "https://api.northflank.com"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stage = self.scope.get("stage")
        if stage and stage not in STAGES:
            raise InvalidRequest(f"Northflank stage must be one of {', '.join(STAGES)}")
        if self.scope.get("workflow") and (self.scope.get("pipeline") or stage):
            raise InvalidRequest("A Northflank connection follows a workflow or a pipeline, "
                                 "not both")
        self._pipeline_info: dict[str, dict[str, Any]] = {}  # id -> {"name", "stages"}
        self._pipeline_updated: dict[str, str] = {}  # id -> updatedAt, as listed this pass
        self._workflow_names: dict[str, str] = {}
        self._unnamed: set[str] = set()  # pipelines whose name could not be read
        self._reread_state: Rotation | None = None

    @property
    def _reread(self) -> Rotation:
        """The pass's safety re-read of pipelines (made once change_state is handed in)."""
        if self._reread_state is None:
            self._reread_state = self.rotation("reread")
        return self._reread_state

    # -- rate limits -------------------------------------------------------------------

    @staticmethod
    def _int_header(response: httpx.Response, name: str) -> int | None:
        try:
            return int(float(response.headers[name]))
        except (KeyError, ValueError):
            return None

    def rate_limit_info(self, response: httpx.Response) -> RateLimitInfo:
        reset = self._int_header(response, "x-ratelimit-reset")  # seconds, not a time
        return RateLimitInfo(
            limit=self._int_header(response, "x-ratelimit-limit"),
            remaining=self._int_header(response, "x-ratelimit-remaining"),
            reset_at=time.time() + reset if reset is not None else None,
        )

    def retry_after(self, response: httpx.Response) -> float:
        if "Retry-After" in response.headers:
            return retry_after_seconds(response)
        reset = self._int_header(response, "x-ratelimit-reset")
        return float(max(0, reset)) if reset is not None else retry_after_seconds(response)

    # -- paths -----------------------------------------------------------------------

    @property
    def _project(self) -> str:
        return str(self.scope["project"])

    def _project_path(self) -> str:
        project = quote(self._project, safe="")
        team = self.scope.get("team")
        if team:  # a team's project is addressed through its team
            return f"/v1/teams/{quote(str(team), safe='')}/projects/{project}"
        return f"/v1/projects/{project}"

    def _pipelines_path(self) -> str:
        return f"{self._project_path()}/pipelines"

    def _runs_path(self, pipeline_id: str, stage: str) -> str:
        return (f"{self._pipelines_path()}/{quote(pipeline_id, safe='')}"
                f"/release-flows/{quote(stage, safe='')}/runs")

    def _workflow_runs_path(self, workflow_id: str) -> str:
        return f"{self._project_path()}/workflows/{quote(workflow_id, safe='')}/runs"

    def _collection_path(self, locator: Mapping[str, Any]) -> str:
        """Where a run's siblings are listed and a new one is started."""
        if locator.get("workflow"):
            return self._workflow_runs_path(str(locator["workflow"]))
        return self._runs_path(str(locator["pipeline"]), str(locator["stage"]))

    def _run_path(self, locator: Mapping[str, Any]) -> str:
        return f"{self._collection_path(locator)}/{quote(str(locator['id']), safe='')}"

    # -- pipelines, their stages, and workflows --------------------------------------

    def _pipeline(self, pipeline_id: str) -> dict[str, Any]:
        """The pipeline's name and stages (path values), read once per client."""
        if pipeline_id not in self._pipeline_info:
            body = self.request("GET", f"{self._pipelines_path()}/{quote(pipeline_id, safe='')}")
            self._reread.read(pipeline_id)
            data = self._data(body)
            self._pipeline_info[pipeline_id] = {
                "name": text(data.get("name"), 200) or pipeline_id,
                "stages": pipeline_stages(data),
            }
        return self._pipeline_info[pipeline_id]

    def _pipeline_ids(self) -> list[str]:
        if self.scope.get("pipeline"):
            return [str(self.scope["pipeline"])]
        remembered = self.change_state.get("pipelines")
        remembered = remembered if isinstance(remembered, dict) and not self.full_read else {}
        ids, unchanged = [], {}
        for item in self._paged(self._pipelines_path(), "pipelines"):
            pipeline_id = text(require(item, "id"), 200)
            ids.append(pipeline_id)
            updated = text(item.get("updatedAt"), 64)
            if not updated:
                continue  # optional: without it the pipeline is read every pass
            self._pipeline_updated[pipeline_id] = updated
            known = remembered.get(pipeline_id)
            # The pipeline has not been changed since the last pass read its stages.
            if (isinstance(known, dict) and known.get("updated") == updated
                    and isinstance(known.get("stages"), list)):
                unchanged[pipeline_id] = known
        # Should updatedAt ever stay put through a change, a few unchanged pipelines are
        # read again each pass, the least recently read first.
        for pipeline_id in unchanged.keys() - self._reread.pick(unchanged):
            known = unchanged[pipeline_id]
            self._pipeline_info.setdefault(pipeline_id, {
                "name": text(known.get("name"), 200) or pipeline_id,
                "stages": tuple(text(stage, 64) for stage in known["stages"])})
        return ids

    def _stages(self, pipeline_id: str) -> tuple[str, ...]:
        if self.scope.get("stage"):
            return (self.scope["stage"],)
        stages = self._pipeline(pipeline_id)["stages"]
        if not stages:
            logger.info("northflank: pipeline %s reports no stages", pipeline_id)
        return stages

    def _workflows(self) -> list[str]:
        if self.scope.get("pipeline") or self.scope.get("stage"):
            return []
        if self.scope.get("workflow"):
            workflow_id = str(self.scope["workflow"])
            self._workflow_names.setdefault(workflow_id, workflow_id)
            return [workflow_id]
        ids = []
        for item in self._paged(f"{self._project_path()}/workflows", "pipelines"):
            workflow_id = text(require(item, "id"), 200)
            self._workflow_names[workflow_id] = text(item.get("name"), 200) or workflow_id
            ids.append(workflow_id)
        return ids

    def _follows_pipelines(self) -> bool:
        return not self.scope.get("workflow")

    def discover(self) -> Discovery:
        project = ProjectData(self._project, self._project)
        found = Discovery(projects=[project])
        if self._follows_pipelines():
            for pipeline_id in self._pipeline_ids():
                found.pipelines.append({"project": self._project, "id": pipeline_id,
                                        "name": self._pipeline(pipeline_id)["name"]})
                for stage in self._stages(pipeline_id):
                    found.environments.append(self._environment(pipeline_id, stage))
        for workflow_id in self._workflows():
            found.pipelines.append({"project": self._project, "id": workflow_id,
                                    "name": self._workflow_names[workflow_id]})
            found.environments.append(self._workflow_environment(workflow_id))
        return found

    # -- paging ----------------------------------------------------------------------

    @staticmethod
    def _data(body: Any) -> dict[str, Any]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise BadPayload("response has no 'data' object")
        return data

    def _pages(self, path: str, key: str, per_page: int | None = None
               ) -> Iterator[list[dict[str, Any]]]:
        """Pages of a documented list endpoint, following its cursor (or page number)."""
        size = per_page or PAGE_SIZE
        params: dict[str, Any] = {"per_page": size, "page": 1}
        while True:
            body = self.request("GET", path, params=params)
            items = self._data(body).get(key)
            if not isinstance(items, list):
                raise BadPayload(f"response has no {key!r} list")
            yield [item for item in items if isinstance(item, dict)]
            pagination = body.get("pagination")
            if not isinstance(pagination, dict):
                raise BadPayload("response has no 'pagination' object")
            if not pagination.get("hasNextPage") or not items:
                return
            cursor = pagination.get("cursor")
            if cursor:
                params = {"per_page": size, "cursor": cursor}
            else:
                params = {"per_page": size, "page": params.get("page", 1) + 1}

    def _paged(self, path: str, key: str) -> Iterator[dict[str, Any]]:
        for page in self._pages(path, key):
            yield from page

    # -- runs ------------------------------------------------------------------------

    def list_runs(self, since: datetime | None = None) -> Iterator[list[RunData]]:
        if self._follows_pipelines():
            for pipeline_id in self._pipeline_ids():
                for stage in self._stages(pipeline_id):
                    yield from self._list_stage(pipeline_id, stage, since)
        for workflow_id in self._workflows():
            yield from self._list(self._workflow_runs_path(workflow_id), since,
                                  lambda item, w=workflow_id: self.parse_workflow_run(item, w))
        # Each pipeline's name and stages, for as long as its updatedAt stays the same.
        self.change_state = {"pipelines": {
            pipeline_id: {"updated": updated, "name": self._pipeline_info[pipeline_id]["name"],
                          "stages": list(self._pipeline_info[pipeline_id]["stages"])}
            for pipeline_id, updated in self._pipeline_updated.items()
            if pipeline_id in self._pipeline_info},
            "reread": self._reread.state(self._pipeline_updated)}

    def _list_stage(self, pipeline_id: str, stage: str, since) -> Iterator[list[RunData]]:
        try:
            yield from self._list(self._runs_path(pipeline_id, stage), since,
                                  lambda item: self.parse_run(item, pipeline_id, stage))
        except NotFound:
            if self.scope.get("stage"):
                raise  # the connection asked for this stage: say it is not there
            logger.info("northflank: %s/%s has no release flow", pipeline_id, stage)

    def _list(self, path: str, since, parse) -> Iterator[list[RunData]]:
        for items in self._pages(path, "runs"):
            runs = [parse(item) for item in items]
            if runs:
                yield runs
            if since and all(r.created_at and r.created_at < since for r in runs):
                return

    def _parse_any(self, item: Any, locator: Mapping[str, Any]) -> RunData:
        if locator.get("workflow"):
            return self.parse_workflow_run(item, str(locator["workflow"]))
        return self.parse_run(item, str(locator["pipeline"]), str(locator["stage"]))

    def get_run(self, locator: Mapping[str, Any]) -> RunData:
        return self._parse_any(self._data(self.request("GET", self._run_path(locator))), locator)

    def cancel(self, locator, comment="", force=False) -> RunData:
        # Abort takes no body: the comment stays in Runboard's audit trail.
        body = self.request("POST", f"{self._run_path(locator)}/abort")
        return self._parse_any(self._data(body), locator)

    def retry(self, locator: Mapping[str, Any]) -> RunData | None:
        """Run the release flow (or workflow) again; answer the new run where it is known.

        Northflank has no retry of a run: run-release-flow / run-workflow start a new one.
        """
        path = self._collection_path(locator)
        before = {item.get("id") for item in next(self._pages(path, "runs", RETRY_LOOKBACK))}
        body = {"description": f"Retry of run {text(locator['id'], 100)} from Runboard"}
        answer = self.request("POST", path, json=body)
        data = answer.get("data") if isinstance(answer, dict) else None
        new_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(new_id, str) or not new_id:
            # The answer does not say which run it started: the newest one we had not seen.
            items = next(self._pages(path, "runs", RETRY_LOOKBACK))
            fresh = [item for item in items if item.get("id") not in before]
            if not fresh:
                logger.info("northflank: the run started by a retry of %s is not listed yet",
                            locator["id"])
                return None
            return self._parse_any(fresh[0], locator)
        return self.get_run({**locator, "id": new_id})

    # -- parsing ---------------------------------------------------------------------

    def _environment(self, pipeline_id: str, stage: str) -> EnvironmentData:
        name = self._pipeline_info.get(pipeline_id, {}).get("name") or pipeline_id
        return EnvironmentData(
            external_id=f"{pipeline_id}/{stage}",
            name=f"{name} · {stage}",
            project=ProjectData(self._project, self._project),
        )

    def _workflow_environment(self, workflow_id: str) -> EnvironmentData:
        # A pipeline id cannot hold a colon, so this never meets a pipeline's stage.
        return EnvironmentData(
            external_id=f"workflow:{workflow_id}",
            name=f"{self._workflow_names.get(workflow_id, workflow_id)} · workflow",
            project=ProjectData(self._project, self._project),
        )

    def _parse_common(self, item: Any) -> dict[str, Any]:
        run_id = text(require(item, "id"), 100)
        raw_status = text(require(item, "status"), 64)
        concluded = require_bool(item, "concluded")
        created = parse_time(require(item, "createdAt"))
        status = self.map_status(raw_status)
        if concluded and status not in FINISHED and status != Status.UNKNOWN:
            # Northflank says it is over but names an active state: show neither a live
            # run nor a guessed outcome, and offer no action on it.
            logger.warning("northflank: run %s is concluded but %r", run_id, raw_status)
            status = Status.UNKNOWN
        return {
            "status": status, "raw_status": raw_status,
            "name": text(item.get("name"), 300) or run_id,
            "project": ProjectData(self._project, self._project),
            "created_at": created,
            "started_at": parse_time(item.get("startedAt")),
            "finished_at": parse_time(item.get("concludedAt")),
            "raw": item,
        }, run_id

    def parse_run(self, item: Any, pipeline_id: str, stage: str) -> RunData:
        fields, run_id = self._parse_common(item)
        if pipeline_id not in self._pipeline_info and pipeline_id not in self._unnamed:
            try:  # the pipeline's display name, once per client
                self._pipeline(pipeline_id)
            except ProviderError as exc:  # an answer in hand is never lost over a name
                logger.info("northflank: pipeline %s name unavailable: %s", pipeline_id, exc)
                self._unnamed.add(pipeline_id)
        environment = self._environment(pipeline_id, stage)
        return RunData(
            external_id=f"{pipeline_id}/{stage}/{run_id}",
            locator={"pipeline": pipeline_id, "stage": stage, "id": run_id},
            pipeline_id=pipeline_id,
            pipeline_name=environment.name.rsplit(" · ", 1)[0],
            environment=environment,
            **fields,
        )

    def parse_workflow_run(self, item: Any, workflow_id: str) -> RunData:
        fields, run_id = self._parse_common(item)
        return RunData(
            external_id=f"workflow:{workflow_id}/{run_id}",
            locator={"workflow": workflow_id, "id": run_id},
            pipeline_id=workflow_id,
            pipeline_name=self._workflow_names.get(workflow_id, workflow_id),
            environment=self._workflow_environment(workflow_id),
            **fields,
        )


    # -- webhooks and rate budget (appended) -----------------------------------------
    # Documented: 1000 requests an hour, the hour starting at the first request;
    # notification integrations of type RAW_WEBHOOK (POST /v1/teams/{teamId}/integrations/
    # notifications, permission Account > Team > Notifications > Manage) with an optional
    # `secret` "sent in the webhook header"; events trigger:release-flow-template-run:
    # {start,update,success,failure,aborted}; headers X-Northflank-Notification-Integration-
    # {Id,Name,Token,Event-Id,Event-Type} (Token is the secret itself); body {event, data}.
    # ASSUMED (no payload reference we could read): `data` names the run as `id` (or
    # `runId`), its pipeline as `pipelineId` (or pipeline.id) and its stage as `stage`;
    # where it does not, the delivery re-reads the run lists instead.

    rate_budget = RateBudget(1000, 3600.0)
    webhook_events = tuple(f"trigger:release-flow-template-run:{e}"
                           for e in ("start", "update", "success", "failure", "aborted"))
    webhook_setup = (
        "In Northflank: Team → Integrations → Notification integrations → Add, type Raw "
        "webhook (or POST /v1/teams/<team>/integrations/notifications). Webhook URL: {url}. "
        "Secret: the webhook secret Runboard showed you. Events: every Release flow run "
        "event (start, update, success, failure, aborted). Restrict it to this connection's "
        "project."
    )

    @classmethod
    def webhook_secret(cls, headers, query, body: bytes) -> str:
        return webhook_header(headers, NF_WEBHOOK_PREFIX + "Token")

    @classmethod
    def parse_webhook(cls, headers, body: bytes) -> WebhookEvent:
        data = webhook_json(body)
        event = text(webhook_header(headers, NF_WEBHOOK_PREFIX + "Event-Type")
                     or data.get("event"), 100)
        if not event:
            raise WebhookRejected("no event type in the headers or the body")
        delivery = text(webhook_header(headers, NF_WEBHOOK_PREFIX + "Event-Id"), 128)
        if not event.startswith(NF_RUN_EVENTS):
            return WebhookEvent(event, delivery_id=delivery, relevant=False)
        run = data.get("data") if isinstance(data.get("data"), dict) else {}
        pipeline = run.get("pipeline") if isinstance(run.get("pipeline"), dict) else {}
        pipeline_id = run.get("pipelineId") or pipeline.get("id")
        stage = str(run.get("stage") or "").lower()
        run_id = run.get("runId") or run.get("id")
        hints = []
        if all(isinstance(v, str) and v for v in (pipeline_id, run_id)) and stage in STAGES:
            hints = [{"pipeline": pipeline_id[:200], "stage": stage, "id": run_id[:100]}]
        return WebhookEvent(event, delivery_id=delivery, hints=hints)

    def runs_from_webhook(self, event: WebhookEvent) -> list[RunData]:
        """One request a run: the run itself. Its pipeline's name comes from what the last
        pass remembered (`change_state`), not another read."""
        remembered = self.change_state.get("pipelines")
        for pipeline_id, known in (remembered if isinstance(remembered, dict) else {}).items():
            if isinstance(known, dict) and isinstance(known.get("stages"), list):
                self._pipeline_info.setdefault(pipeline_id, {
                    "name": text(known.get("name"), 200) or pipeline_id,
                    "stages": tuple(text(stage, 64) for stage in known["stages"])})
        pipeline, stage = self.scope.get("pipeline"), self.scope.get("stage")
        return [self.get_run(hint) for hint in event.hints
                if (not pipeline or hint["pipeline"] == pipeline)
                and (not stage or hint["stage"] == stage)]


def pipeline_stages(data: Mapping[str, Any]) -> tuple[str, ...]:
    """The stages a pipeline reports (GET pipeline), as path values, in pipeline order.

    `stages` has no documented item type: a string or an object naming the stage is read.
    nfObjects[].stage (documented) adds the stages that hold resources.
    """
    names: list[str] = []
    stages = data.get("stages")
    for stage in stages if isinstance(stages, list) else []:
        if isinstance(stage, dict):
            stage = stage.get("name") or stage.get("id") or stage.get("stage")
        if isinstance(stage, str):
            names.append(stage)
    objects = data.get("nfObjects")
    for nf_object in objects if isinstance(objects, list) else []:
        if isinstance(nf_object, dict) and isinstance(nf_object.get("stage"), str):
            names.append(nf_object["stage"])
    found = {name.strip().lower() for name in names if name.strip()}
    ordered = [s for s in STAGES if s in found]
    return (*ordered, *sorted(found - set(STAGES)))


def require_bool(payload: Mapping[str, Any], key: str) -> bool:
    """A documented-required boolean: require() would accept any non-empty value."""
    value = payload.get(key)
    if not isinstance(value, bool):
        raise BadPayload(f"response is missing required field {key!r}")
    return value


NF_WEBHOOK_PREFIX = "X-Northflank-Notification-Integration-"
NF_RUN_EVENTS = ("trigger:release-flow-template-run:", "trigger:template-run:")
