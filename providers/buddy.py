"""Buddy.works: pipeline executions in a workspace.

Documented (seed page, Buddy's REST API reference, Buddy's CLI):
- PATCH .../executions/{id} with operation RETRY, CANCEL, APPLY or APPLY_VARIABLES
  (`variables` [{key, value}] required for APPLY_VARIABLES); APPLY approves a run
  WAITING_FOR_APPLY, runs WAITING_FOR_VARIABLES / WAITING_FOR_SETTABLE_VARIABLES need
  APPLY_VARIABLES, WAITING_FOR_VT_SESSION cannot be applied; RUN_DELAYED is a delayed run;
- Bearer token with scopes WORKSPACE and EXECUTION_RUN (EXECUTION_INFO to read);
- GET /workspaces/{domain}/projects and .../projects/{p}/pipelines take `page` and
  `per_page` (projects: default 20) and answer no page count;
- GET .../executions takes `page` and `per_page` (default 20), answers `total_page_count`,
  newest first; its items are the short view without `action_executions`;
  GET .../executions/{id} has them;
- error bodies {"errors": [{"message": ...}]} (Buddy's CLI reads exactly this);
- X-Rate-Limit-Limit / X-Rate-Limit-Remaining on every answer, no reset header;
- hosts: https://api.buddy.works, EU https://api.eu.buddy.works, on-premise
  https://<host>/api (the connection's base URL; paths are appended to its path).
How requests are spent: the list gives each run's status; one execution is read for its
steps only where they may have changed: a run not finished, a run in the sync's window new
to Runboard or whose status changed (`known_runs`, set by the sync), and on a first pass
only the newest page of each pipeline (older history shows no steps: open it at Buddy).
What Buddy offers to spend less, checked, and why a pass still lists every pipeline's
executions (one request a pipeline, plus the projects and pipelines lists):
- no workspace- or project-wide list of executions is documented, and no conditional
  requests (no ETag / If-None-Match);
- GET pipeline documents `last_execution_status` and `last_execution_revision`, but no
  execution id, and costs a request a pipeline itself; the pipelines list items are
  documented with url, html_url, id and name only. Status and revision alone would miss
  a new execution of the same revision ending as the last did (a retry that fails
  again), so they are not used to skip a pipeline;
- the projects and pipelines lists answer no page count: each costs its pages plus the
  empty page that ends it.
Not documented anywhere we could read, and so assumed here:
- when the rate limit resets (no reset header): we wait Retry-After, else 60 s;
- the default and maximum page size of pipelines (we ask 50 and page to an empty page);
- where a run says which variables it waits for: the waiting action's `variables`
  [{key, value, description}] (else the execution's `variables` marked settable);
- Buddy has no "reject": a run waiting for approval is refused by cancelling it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import httpx

from providers.base import (
    FINISHED,
    Action,
    BadPayload,
    Conflict,
    Discovery,
    InvalidRequest,
    JobData,
    NotFound,
    ProjectData,
    Provider,
    RateBudget,
    RateLimitInfo,
    RunData,
    Status,
    WebhookEvent,
    WebhookRejected,
    parse_time,
    require,
    text,
    webhook_json,
)

# Execution and action-execution statuses. The seed shows INPROGRESS; the rest are
# the values Buddy's API reference lists for executions.
STATUS_MAP: dict[str, Status] = {
    "INITIAL": Status.QUEUED,
    "ENQUEUED": Status.QUEUED,
    "INPROGRESS": Status.RUNNING,
    "WAITING_FOR_APPLY": Status.WAITING,
    "WAITING_FOR_VARIABLES": Status.WAITING,
    "WAITING_FOR_SETTABLE_VARIABLES": Status.WAITING,
    "WAITING_FOR_VT_SESSION": Status.WAITING,
    "RUN_DELAYED": Status.QUEUED,  # a delayed run waits to be queued
    "SUCCESSFUL": Status.SUCCEEDED,
    "FAILED": Status.FAILED,
    "TERMINATING": Status.CANCELLING,
    "TERMINATED": Status.CANCELLED,
    "NOT_EXECUTED": Status.SKIPPED,
    "SKIPPED": Status.SKIPPED,
}

PAGE_SIZE = 50
# What approving means for a run in each waiting status (documented).
APPLY_STATUSES = frozenset({"WAITING_FOR_APPLY"})
VARIABLES_STATUSES = frozenset({"WAITING_FOR_VARIABLES", "WAITING_FOR_SETTABLE_VARIABLES"})
NOT_APPLICABLE = frozenset({"WAITING_FOR_VT_SESSION"})


class BuddyProvider(Provider):
    key = "buddy"
    label = "Buddy.works"
    actions = frozenset({Action.CANCEL, Action.APPROVE, Action.RETRY})
    unsupported_reasons = {
        Action.REJECT: "Buddy has no reject: cancel the run to refuse it.",
    }
    waiting_elsewhere = {
        "WAITING_FOR_VT_SESSION": "Buddy waits for a visual-test session to be reviewed,"
                                  " which happens in Buddy, not through its API.",
    }
    variables_statuses = VARIABLES_STATUSES
    scope_required = ("workspace",)
    scope_optional = ("project", "pipeline")
    status_map = STATUS_MAP
    default_base_url = "https://api.buddy.works"

    def rate_limit_info(self, response: httpx.Response) -> RateLimitInfo:
        def header(name):
            try:
                return int(response.headers[name])
            except (KeyError, ValueError):
                return None

        return RateLimitInfo(
            limit=header("X-Rate-Limit-Limit"), remaining=header("X-Rate-Limit-Remaining")
        )

    def error_message(self, body: Any) -> str:
        if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
            first = body["errors"][0]
            if isinstance(first, dict):
                return text(first.get("message"))
        return super().error_message(body)

    # -- discovery -------------------------------------------------------------------

    @property
    def _workspace(self) -> str:
        return f"/workspaces/{self.scope['workspace']}"

    def _projects(self) -> list[str]:
        if self.scope.get("project"):
            return [self.scope["project"]]
        return [text(p.get("name")) for p in self._all_pages(f"{self._workspace}/projects",
                                                             "projects")]

    def _pipelines(self, project: str) -> list[dict[str, Any]]:
        if self.scope.get("pipeline"):
            return [{"id": self.scope["pipeline"], "name": ""}]
        return self._all_pages(f"{self._workspace}/projects/{project}/pipelines", "pipelines")

    def _all_pages(self, path: str, key: str) -> list[dict[str, Any]]:
        """Every item of a list that answers no page count: read until an empty page
        (a short page is not the last if the server caps `per_page` below ours)."""
        found: list[dict[str, Any]] = []
        previous = None
        page = 1
        while True:
            items = self._items(self.request("GET", path, params={
                "page": page, "per_page": PAGE_SIZE}), key)
            if not items or items == previous:  # a server ignoring `page` repeats itself
                return found
            found.extend(items)
            previous = items
            page += 1

    @staticmethod
    def _items(body: Any, key: str) -> list[dict[str, Any]]:
        items = body.get(key) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise BadPayload(f"response has no {key!r} list")
        return [item for item in items if isinstance(item, dict)]

    def discover(self) -> Discovery:
        found = Discovery()
        for project in self._projects():
            found.projects.append(ProjectData(project, project))
            for pipeline in self._pipelines(project):
                found.pipelines.append(
                    {"project": project, "id": str(pipeline["id"]),
                     "name": text(pipeline.get("name"))}
                )
        return found

    # -- runs ------------------------------------------------------------------------

    def _executions_path(self, project: str, pipeline_id: Any) -> str:
        return f"{self._workspace}/projects/{project}/pipelines/{pipeline_id}/executions"

    def list_runs(self, since: datetime | None = None) -> Iterator[list[RunData]]:
        for project in self._projects():
            for pipeline in self._pipelines(project):
                yield from self._list_pipeline(project, pipeline, since)

    def _list_pipeline(self, project, pipeline, since) -> Iterator[list[RunData]]:
        path = self._executions_path(project, pipeline["id"])
        page = 1
        while True:
            body = self.request("GET", path, params={"page": page, "per_page": PAGE_SIZE})
            runs = [
                self.parse_execution(item, project, pipeline)
                for item in self._items(body, "executions")
            ]
            changed = [read for run in runs if (read := self._with_steps(run, since, page))]
            if changed:
                yield changed
            total_pages = body.get("total_page_count")
            older = since and all(r.created_at and r.created_at < since for r in runs)
            if not runs or older or (isinstance(total_pages, int) and page >= total_pages):
                return
            page += 1

    def _with_steps(self, run: RunData, since: datetime | None, page: int) -> RunData | None:
        """The list's short view lacks the steps: read the execution where they matter.
        None for a finished run Runboard already holds as it is: nothing to write."""
        known = self.known_runs.get(run.external_id)
        if run.status in FINISHED and known == run.raw_status:
            return None
        if run.status in FINISHED and since and run.created_at and run.created_at < since:
            return None  # listed only for sharing a page with the window: not re-read
        if run.status in FINISHED and known is None and since is None and page > 1:
            return run  # old history on a first pass: not worth a request a run
        try:
            return self.get_run(run.locator)
        except NotFound:  # deleted between the list and the read
            return run

    def get_run(self, locator: Mapping[str, Any]) -> RunData:
        body = self.request("GET", self._execution_path(locator))
        return self.parse_execution(body, locator["project"], {"id": locator["pipeline"]})

    def _execution_path(self, locator: Mapping[str, Any]) -> str:
        return f"{self._executions_path(locator['project'], locator['pipeline'])}/{locator['id']}"

    def _operate(self, locator: Mapping[str, Any], operation: str, **extra: Any) -> RunData:
        body = self.request("PATCH", self._execution_path(locator),
                            json={"operation": operation, **extra})
        return self.parse_execution(body, locator["project"], {"id": locator["pipeline"]})

    def cancel(self, locator, comment="", force=False) -> RunData:
        # Buddy's CANCEL takes no comment: it is kept in Runboard's audit only.
        return self._operate(locator, "CANCEL")

    def approve(self, locator, comment="", variables=None) -> RunData:
        """APPLY a run waiting for approval; APPLY_VARIABLES, with every variable the run
        asks for (given ones, else the value it shows), to a run waiting for variables.

        Costs one read first: what the run waits for decides the operation.
        """
        variables = dict(variables or {})
        current = self.get_run(locator)
        if current.raw_status in NOT_APPLICABLE:
            raise Conflict(f"{self.label}: this run waits for a visual-test session, which "
                           "is resolved in Buddy itself, not through its API")
        if current.raw_status not in VARIABLES_STATUSES:
            if variables:
                raise InvalidRequest(f"{self.label}: this run asks for no variables")
            return self._operate(locator, "APPLY")
        asked = self.requested_variables(current.raw)
        unknown = sorted(set(variables) - {v["key"] for v in asked})
        if unknown:
            raise InvalidRequest(f"{self.label}: the run does not ask for {', '.join(unknown)}")
        values = [{"key": v["key"], "value": str(variables.get(v["key"], v["value"]))}
                  for v in asked]
        missing = [v["key"] for v in values if v["value"] == ""]
        if missing:
            raise InvalidRequest(f"{self.label}: give a value for {', '.join(missing)}")
        return self._operate(locator, "APPLY_VARIABLES", variables=values)

    def retry(self, locator) -> RunData:
        return self._operate(locator, "RETRY")

    # -- parsing ---------------------------------------------------------------------

    @classmethod
    def requested_variables(cls, raw: Any) -> list[dict[str, str]]:
        """The variables a run waiting for them asks for: [{key, value, description}]."""
        if not isinstance(raw, dict) or raw.get("status") not in VARIABLES_STATUSES:
            return []
        candidates: list[Any] = []
        for action_exec in raw.get("action_executions") or []:
            if isinstance(action_exec, dict) and action_exec.get("status") in VARIABLES_STATUSES:
                action = action_exec.get("action")
                if isinstance(action, dict) and isinstance(action.get("variables"), list):
                    candidates = action["variables"]
                    break
        else:
            if isinstance(raw.get("variables"), list):
                candidates = [v for v in raw["variables"]
                              if isinstance(v, dict) and v.get("settable")]
        found, seen = [], set()
        for var in candidates:
            key = text(var.get("key"), 100) if isinstance(var, dict) else ""
            if key and key not in seen:
                seen.add(key)
                found.append({"key": key, "value": text(var.get("value"), 2000),
                              "description": text(var.get("description"), 300)})
        return found

    def parse_execution(self, item: Any, project: str, pipeline: Mapping[str, Any]) -> RunData:
        execution_id = require(item, "id")
        raw_status = text(require(item, "status"), 64)
        pipe = item.get("pipeline") if isinstance(item.get("pipeline"), dict) else {}
        pipeline_id = str(pipe.get("id") or pipeline["id"])
        pipeline_name = text(pipe.get("name") or pipeline.get("name") or f"pipeline {pipeline_id}")
        branch = item.get("branch") if isinstance(item.get("branch"), dict) else {}
        revision = item.get("to_revision") if isinstance(item.get("to_revision"), dict) else {}
        creator = item.get("creator") if isinstance(item.get("creator"), dict) else {}
        jobs = []
        for order, action_exec in enumerate(item.get("action_executions") or []):
            if not isinstance(action_exec, dict):
                continue
            action = action_exec.get("action")
            action = action if isinstance(action, dict) else {}
            job_raw = text(action_exec.get("status"), 64)
            jobs.append(JobData(
                external_id=str(action.get("id", order)),
                name=text(action.get("name")) or f"action {order + 1}",
                status=self.map_status(job_raw),
                raw_status=job_raw,
                order=order,
                progress=action_exec.get("progress") if isinstance(
                    action_exec.get("progress"), int) else None,
            ))
        started = parse_time(item.get("start_date"))
        return RunData(
            external_id=f"{project}/{pipeline_id}/{execution_id}",
            locator={"project": project, "pipeline": pipeline_id, "id": execution_id},
            status=self.map_status(raw_status),
            raw_status=raw_status,
            name=f"{pipeline_name} #{execution_id}",
            version=text(revision.get("revision"), 12),
            branch=text(branch.get("name"), 200),
            commit=text(revision.get("revision"), 64),
            triggered_by=text(creator.get("name"), 200),
            pipeline_id=pipeline_id,
            pipeline_name=pipeline_name,
            project=ProjectData(project, project),
            created_at=started,
            started_at=started,
            finished_at=parse_time(item.get("finish_date")),
            web_url=text(item.get("html_url"), 500),
            raw=item,
            jobs=jobs,
        )

    # -- webhooks and rate budget (appended) -----------------------------------------
    # Documented (Buddy's webhook API): POST /workspaces/{domain}/webhooks with events
    # EXECUTION_STARTED, EXECUTION_SUCCESSFUL, EXECUTION_FAILED, EXECUTION_FINISHED and a
    # `secret_key` "sent in the payload". ASSUMED (no payload reference we could read):
    # the key travels as the body's top-level `secret_key`; the body carries `project`
    # {name}, `pipeline` {id} and `execution` {id} (the delivery log shows workspace,
    # invoker and project objects); the event name, if sent, is `event`.
    # No "waiting for approval" event exists: waiting runs are still polled.

    webhook_events = ("EXECUTION_STARTED", "EXECUTION_SUCCESSFUL", "EXECUTION_FAILED",
                      "EXECUTION_FINISHED")
    webhook_setup = (
        "In Buddy: Workspace → Preferences → Webhooks → Add webhook (admins only), or "
        "POST /workspaces/<domain>/webhooks with a WEBHOOK_ADD token. Payload URL: {url}. "
        "Events: Execution started, successful, failed, finished. Projects: those this "
        "connection watches. Secret key: the webhook secret Runboard showed you."
    )

    @classmethod
    def budget_for(cls, seen_limit: int | None = None) -> RateBudget:
        # Buddy documents no number, but says it in X-Rate-Limit-Limit on every answer.
        # ASSUMED: that limit is per hour (no reset header or window is documented).
        if seen_limit and seen_limit > 0:
            return RateBudget(seen_limit, 3600.0)
        return super().budget_for(seen_limit)

    @classmethod
    def webhook_secret(cls, headers, query, body: bytes) -> str:
        secret = webhook_json(body).get("secret_key")
        return secret if isinstance(secret, str) else ""

    @classmethod
    def parse_webhook(cls, headers, body: bytes) -> WebhookEvent:
        data = webhook_json(body)
        project = data.get("project") if isinstance(data.get("project"), dict) else {}
        pipeline = data.get("pipeline") if isinstance(data.get("pipeline"), dict) else {}
        execution = data.get("execution") if isinstance(data.get("execution"), dict) else {}
        event = text(data.get("event"), 64) or "EXECUTION"
        name, pipeline_id, execution_id = (project.get("name"), pipeline.get("id"),
                                           execution.get("id"))
        if event == "PUSH":
            return WebhookEvent(event, relevant=False)
        if not (isinstance(name, str) and name and isinstance(pipeline_id, int)
                and isinstance(execution_id, int)):
            raise WebhookRejected("no project name, pipeline id and execution id in the body")
        # No delivery id is documented: the receiver dedupes on the body's hash.
        return WebhookEvent(
            event, hints=[{"project": name, "pipeline": str(pipeline_id), "id": execution_id}])

    def runs_from_webhook(self, event: WebhookEvent) -> list[RunData]:
        wanted = self.scope.get("project")
        return [self.get_run(hint) for hint in event.hints
                if not wanted or hint["project"] == wanted]
