"""Northflank: release-flow runs of a project's pipeline stages.

A run is one release-flow run of one pipeline stage; the stage is its environment.

Documented (seed page): POST .../pipelines/{pipelineId}/release-flows/{stage}/runs/{runId}/abort
(permission Project > Pipelines > General > Update) answers {"data": run}; the run carries the
template that ran (apiVersion, triggers, options, gitops, spec) plus id, name, description,
status (pending, running, success, failure, aborted, aborting, queued, unknown, skipped),
concluded, startedAt, concludedAt, createdAt, updatedAt, with times like
"2021-01-01 12:01:00.000Z"; Bearer API token.
From Northflank's public API reference:
- GET /v1/projects/{projectId}/pipelines (per_page up to 100, page, cursor) and
  GET /v1/projects/{projectId}/pipelines/{pipelineId} ({"data": {"name", ...}});
- GET .../release-flows/{stage}/runs (per_page up to 100, page, cursor) answering
  {"data": {"runs": [...]}, "pagination": {"hasNextPage", "cursor", "count"}}, and
  GET .../release-flows/{stage}/runs/{runId} answering {"data": run};
- the current status enum adds waiting, retrying, async_wait and approval_wait;
- stage path values development, staging and production (the reference's examples);
- every answer carries x-ratelimit-limit, x-ratelimit-remaining and x-ratelimit-reset
  (seconds until the hourly window resets);
- error bodies {"error": {"status", "message", "id", "details"}};
- no endpoint approves, rejects or retries a release-flow run: only abort exists.
Not documented anywhere we could read, and so assumed here:
- runs are listed newest first;
- listing the runs of a stage that has no release flow answers 404: that stage is skipped;
- aborting a run that has concluded (or is already aborting) answers 409 with an error body;
- a 429 carries the same x-ratelimit-* headers, so x-ratelimit-reset is the wait (Retry-After
  is honoured if it is there);
- there is no documented link to a run in Northflank's UI, so web_url stays empty.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

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
    RateLimitInfo,
    RunData,
    Status,
    parse_time,
    require,
    retry_after_seconds,
    text,
)

logger = logging.getLogger(__name__)

# The run status enum: the seed's nine values plus the four the current reference adds.
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

STAGES = ("development", "staging", "production")
PAGE_SIZE = 50  # the reference's default; its maximum is 100


class NorthflankProvider(Provider):
    key = "northflank"
    label = "Northflank"
    # Abort is the only run action the API has; it takes no comment and has no force.
    actions = frozenset({Action.CANCEL})
    scope_required = ("project",)
    scope_optional = ("pipeline", "stage")
    status_map = STATUS_MAP
    default_base_url = "https://api.northflank.com"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stage = self.scope.get("stage")
        if stage and stage not in STAGES:
            raise InvalidRequest(f"Northflank stage must be one of {', '.join(STAGES)}")
        self._pipeline_names: dict[str, str] = {}

    # -- rate limits -------------------------------------------------------------------

    @staticmethod
    def _int_header(response: httpx.Response, name: str) -> int | None:
        try:
            return int(float(response.headers[name]))
        except (KeyError, ValueError):
            return None

    def rate_limit_info(self, response: httpx.Response) -> RateLimitInfo:
        reset = self._int_header(response, "x-ratelimit-reset")
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

    # -- discovery -------------------------------------------------------------------

    @property
    def _project(self) -> str:
        return str(self.scope["project"])

    def _pipelines_path(self) -> str:
        return f"/v1/projects/{self._project}/pipelines"

    def _pipelines(self) -> list[dict[str, str]]:
        """The pipelines in scope, as {"id", "name"}; a scoped pipeline is checked to exist."""
        if self.scope.get("pipeline"):
            pipeline_id = str(self.scope["pipeline"])
            body = self.request("GET", f"{self._pipelines_path()}/{pipeline_id}")
            data = self._data(body)
            pipelines = [{"id": pipeline_id, "name": text(data.get("name"), 200)}]
        else:
            pipelines = []
            for item in self._paged(self._pipelines_path(), "pipelines"):
                pipelines.append({"id": text(require(item, "id"), 200),
                                  "name": text(item.get("name"), 200)})
        for pipeline in pipelines:
            pipeline["name"] = pipeline["name"] or pipeline["id"]
            self._pipeline_names[pipeline["id"]] = pipeline["name"]
        return pipelines

    def _pipeline_name(self, pipeline_id: str) -> str:
        """The pipeline's display name, read once per client; its id if it cannot be read."""
        if pipeline_id not in self._pipeline_names:
            try:
                body = self.request("GET", f"{self._pipelines_path()}/{pipeline_id}")
                name = text(self._data(body).get("name"), 200)
            except ProviderError as exc:
                logger.info("northflank: pipeline %s name unavailable: %s", pipeline_id, exc)
                return pipeline_id
            self._pipeline_names[pipeline_id] = name or pipeline_id
        return self._pipeline_names[pipeline_id]

    def _stages(self) -> tuple[str, ...]:
        return (self.scope["stage"],) if self.scope.get("stage") else STAGES

    def discover(self) -> Discovery:
        project = ProjectData(self._project, self._project)
        found = Discovery(projects=[project])
        for pipeline in self._pipelines():
            found.pipelines.append(
                {"project": self._project, "id": pipeline["id"], "name": pipeline["name"]}
            )
            for stage in self._stages():
                found.environments.append(self._environment(pipeline["id"], stage))
        return found

    # -- paging ----------------------------------------------------------------------

    @staticmethod
    def _data(body: Any) -> dict[str, Any]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise BadPayload("response has no 'data' object")
        return data

    def _pages(self, path: str, key: str) -> Iterator[list[dict[str, Any]]]:
        """Pages of a documented list endpoint, following its cursor (or page number)."""
        params: dict[str, Any] = {"per_page": PAGE_SIZE, "page": 1}
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
                params = {"per_page": PAGE_SIZE, "cursor": cursor}
            else:
                params = {"per_page": PAGE_SIZE, "page": params.get("page", 1) + 1}

    def _paged(self, path: str, key: str) -> Iterator[dict[str, Any]]:
        for page in self._pages(path, key):
            yield from page

    # -- runs ------------------------------------------------------------------------

    def _runs_path(self, pipeline_id: str, stage: str) -> str:
        return f"{self._pipelines_path()}/{pipeline_id}/release-flows/{stage}/runs"

    def _run_path(self, locator: Mapping[str, Any]) -> str:
        return f"{self._runs_path(locator['pipeline'], locator['stage'])}/{locator['id']}"

    def list_runs(self, since: datetime | None = None) -> Iterator[list[RunData]]:
        for pipeline in self._pipelines():
            for stage in self._stages():
                yield from self._list_stage(pipeline["id"], stage, since)

    def _list_stage(self, pipeline_id: str, stage: str, since) -> Iterator[list[RunData]]:
        pages = self._pages(self._runs_path(pipeline_id, stage), "runs")
        while True:
            try:
                items = next(pages)
            except StopIteration:
                return
            except NotFound:
                if self.scope.get("stage"):
                    raise  # the connection asked for this stage: say it is not there
                logger.info("northflank: %s/%s has no release flow", pipeline_id, stage)
                return
            runs = [self.parse_run(item, pipeline_id, stage) for item in items]
            if runs:
                yield runs
            if since and all(r.created_at and r.created_at < since for r in runs):
                return

    def get_run(self, locator: Mapping[str, Any]) -> RunData:
        body = self.request("GET", self._run_path(locator))
        return self.parse_run(self._data(body), locator["pipeline"], locator["stage"])

    def cancel(self, locator, comment="", force=False) -> RunData:
        # Abort takes no body: the comment stays in Runboard's audit trail.
        body = self.request("POST", f"{self._run_path(locator)}/abort")
        return self.parse_run(self._data(body), locator["pipeline"], locator["stage"])

    # -- parsing ---------------------------------------------------------------------

    def _environment(self, pipeline_id: str, stage: str) -> EnvironmentData:
        return EnvironmentData(
            external_id=f"{pipeline_id}/{stage}",
            name=f"{self._pipeline_name(pipeline_id)} · {stage}",
            project=ProjectData(self._project, self._project),
        )

    def parse_run(self, item: Any, pipeline_id: str, stage: str) -> RunData:
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
        pipeline_name = self._pipeline_name(pipeline_id)
        return RunData(
            external_id=f"{pipeline_id}/{stage}/{run_id}",
            locator={"pipeline": pipeline_id, "stage": stage, "id": run_id},
            status=status,
            raw_status=raw_status,
            name=text(item.get("name"), 300) or run_id,
            pipeline_id=pipeline_id,
            pipeline_name=pipeline_name,
            project=ProjectData(self._project, self._project),
            environment=self._environment(pipeline_id, stage),
            created_at=created,
            started_at=parse_time(item.get("startedAt")),
            finished_at=parse_time(item.get("concludedAt")),
            raw=item,
        )


def require_bool(payload: Mapping[str, Any], key: str) -> bool:
    """A documented-required boolean: require() would accept any non-empty value."""
    value = payload.get(key)
    if not isinstance(value, bool):
        raise BadPayload(f"response is missing required field {key!r}")
    return value
