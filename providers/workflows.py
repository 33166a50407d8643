"""Deployment workflows (GoRules BRMS): runs that deploy one release through a project's
environments.

A run holds one job per environment, in order; a job may wait for a reviewer's
conclusion before it deploys. The seed pages show only a placeholder host
(api.example.com), so there is no default base URL: a connection must give its own.

Documented (seed page):
- GET  /api/projects/{projectId}/runs/{runId}: a run with its jobs;
- POST /api/projects/{projectId}/runs/{runId}/cancel, body {"comment": "<reason>"} (required,
  minimum length 1), answering 200 with the cancelled run: cancel is synchronous, no
  intermediate "cancelling" state is documented;
- Authorization: Bearer <personal access token>;
- the run payload (id, name, status, releaseId, projectId, createdById, createdAt, jobs,
  release, createdBy, completedAt, cancelledBy, cancelledComment, ...) and the job payload
  (id, status, order, environment {id, name, key}, reviewedAt, reviewedBy, reviewedComment,
  reviewedConclusion, previousRelease, event, data);
- run statuses in_progress, completed, cancelled, waiting, failure; the job status example
  not_started; the reviewedConclusion example approved.
From the provider's public API reference:
- GET /api/projects/{projectId}/runs exists ("a paginated list of deployment workflow runs
  for a project") and answers {"results": [run, ...]}, each run in the get endpoint's shape;
- GET /api/projects exists (discovery); the host is the customer's own
  (https://<tenant>.<region>.gorules.io or self-hosted).
Unconfirmed, so the client is right under every reading:
- the lists' paging. Most likely (GoRules' other lists; a third-party Terraform provider
  reads them so) `page` + `perPage`, 10 a page, answering `paginate` {current, from, to,
  total, pageSize}. The client sends `page` and `perPage`, follows the answer's own paging
  (`paginate` where present, else an empty page ends the list), and never takes a page
  shorter than it asked for as the last: a server that ignores `perPage` or caps it still
  gets read to the end. A server that ignores `page` (repeats a page) ends the list.
Not found in any reference (searched GoRules' docs and API reference pages, GoRules' CLI
and public code for "deployment workflow approve/reject job", ".../runs/{runId}/jobs"):
the endpoints that approve or reject a job. The reference says the "Deployment workflows"
API group manages job approvals, but their paths were not retrievable, so approve and
reject stay NotSupported (jobs show their reviews, read-only).
Not documented anywhere we could read, and so assumed here:
- runs are listed newest first;
- job statuses besides not_started: we assume jobs share the run vocabulary;
- reviewedConclusion `rejected` beside the documented `approved`;
- error bodies {"message": "..."}, with 401 for a bad token, 404 for an unknown project or
  run, and 409 when the run is no longer cancellable;
- rate limits: none documented; we rely on 429 with Retry-After;
- retry: no endpoint we could read, so it stays NotSupported;
- a link to the run in the product's own UI: none documented, so web_url stays empty;
- when a run started: only createdAt exists, so started_at is createdAt;
- environments: no endpoint we could read, so discovery returns the environments seen in
  the first page of runs; project items carry {id, name} (and key, protected).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from providers.base import (
    Action,
    BadPayload,
    Discovery,
    EnvironmentData,
    InvalidRequest,
    JobData,
    ProjectData,
    Provider,
    RunData,
    Status,
    WebhookEvent,
    parse_time,
    require,
    text,
    webhook_json,
)

logger = logging.getLogger(__name__)

# Run statuses (documented) and job statuses. Jobs document only `not_started`; the other
# job values are ASSUMED to be the run vocabulary (a job waits for its reviewer, etc.).
STATUS_MAP: dict[str, Status] = {
    "not_started": Status.QUEUED,
    "in_progress": Status.RUNNING,
    "waiting": Status.WAITING,  # a job waits for a reviewer's conclusion
    "completed": Status.SUCCEEDED,
    "failure": Status.FAILED,
    "cancelled": Status.CANCELLED,
}

# reviewedConclusion: `approved` is documented; `rejected` is assumed.
REVIEW_CONCLUSIONS = frozenset({"approved", "rejected"})

# Paging of GoRules lists, most likely reading (unconfirmed): what we send. What we read
# back is the answer's own `paginate`, else an empty page: see `_pages`.
PAGE_PARAM, PER_PAGE_PARAM = "page", "perPage"
PAGE_SIZE = 50


def person_name(person: Any) -> str:
    """A user object as "firstName lastName", else its email."""
    if not isinstance(person, dict):
        return ""
    full = " ".join(text(person.get(k), 100).strip() for k in ("firstName", "lastName"))
    return full.strip() or text(person.get("email"), 200)


class WorkflowsProvider(Provider):
    key = "workflows"
    label = "Deployment workflows"
    actions = frozenset({Action.CANCEL})
    unsupported_reasons = {
        Action.APPROVE: "No endpoint to approve a workflow run's job is documented; review"
                        " it in GoRules BRMS.",
        Action.REJECT: "No endpoint to reject a workflow run's job is documented; review it"
                       " in GoRules BRMS.",
        Action.RETRY: "GoRules' public API reference names no endpoint to run a deployment "
                      "workflow again.",
    }
    cancel_requires_comment = True
    scope_required = ("project",)
    # The API we could read has no project endpoint: a display name can be given here.
    scope_optional = ("project_name",)
    status_map = STATUS_MAP
    default_base_url = ""

    def __init__(self, base_url: str, token: str, scope: Mapping[str, Any] | None = None,
                 **kwargs):
        if not base_url:
            raise InvalidRequest(f"{self.label} has no public host: the connection needs its "
                                 "base URL")
        project = (scope or {}).get("project")
        if project:
            try:
                uuid.UUID(str(project))
            except ValueError:
                raise InvalidRequest(
                    f"{self.label} scope project must be the project's id (a uuid)") from None
        super().__init__(base_url, token, scope, **kwargs)

    @property
    def _project(self) -> str:
        return str(self.scope["project"])

    def _project_data(self, project_id: str) -> ProjectData:
        name = self.scope.get("project_name") if project_id == self._project else None
        return ProjectData(project_id, text(name, 200) or project_id)

    def _runs_path(self, project_id: str) -> str:
        return f"/api/projects/{project_id}/runs"

    def _run_path(self, locator: Mapping[str, Any]) -> str:
        return f"{self._runs_path(locator['project'])}/{locator['id']}"

    # -- discovery -------------------------------------------------------------------

    def discover(self) -> Discovery:
        """The scoped project, named as GoRules lists it, and the environments its runs
        deploy to."""
        project = self._project_data(self._project)
        for page in self._pages("/api/projects"):
            for item in page:
                if text(item.get("id"), 100) == self._project and item.get("name"):
                    project = ProjectData(self._project, text(item["name"], 200))
        found = Discovery(projects=[project])
        first_page = next(self.list_runs(), [])
        seen: set[str] = set()
        for run in first_page:
            for job in run.jobs:
                env = job.environment
                if env and env.external_id not in seen:
                    seen.add(env.external_id)
                    found.environments.append(env)
        return found

    # -- runs ------------------------------------------------------------------------

    def list_runs(self, since: datetime | None = None) -> Iterator[list[RunData]]:
        for items in self._pages(self._runs_path(self._project)):
            runs = [self.parse_run(item) for item in items]
            yield runs
            if since and all(r.created_at and r.created_at < since for r in runs):
                return

    def _pages(self, path: str) -> Iterator[list[dict[str, Any]]]:
        """Non-empty pages of a list, by the answer's own paging: its `paginate` object
        where present, else until an empty page. Never stops at a page merely shorter
        than PAGE_SIZE: the server may ignore or cap `perPage`."""
        page = 1
        seen: set[str] = set()
        while True:
            body = self.request("GET", path, params={PAGE_PARAM: page, PER_PAGE_PARAM: PAGE_SIZE})
            items = self._results(body)
            if not items:
                return
            ids = {text(item.get("id"), 100) for item in items}
            if ids <= seen:
                # The paging is unconfirmed: a server that ignores `page` repeats itself.
                logger.warning("%s: page %s repeated the previous one; stopping", self.key, page)
                return
            seen |= ids
            yield items
            if self._last_page(body.get("paginate")):
                return
            page += 1

    @staticmethod
    def _last_page(paginate: Any) -> bool:
        """Whether a well-formed `paginate` says this page is the last; a missing or
        malformed one says nothing (the next page is read)."""
        if not isinstance(paginate, dict):
            return False
        current, size, total = (paginate.get(k) for k in ("current", "pageSize", "total"))
        if not all(type(v) is int and v >= 0 for v in (current, size, total)) or size == 0:
            return False
        return current * size >= total

    @staticmethod
    def _results(body: Any) -> list[dict[str, Any]]:
        items = body.get("results") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise BadPayload("response has no 'results' list")
        return [item for item in items if isinstance(item, dict)]

    def get_run(self, locator: Mapping[str, Any]) -> RunData:
        return self.parse_run(self.request("GET", self._run_path(locator)))

    def cancel(self, locator, comment="", force=False) -> RunData:
        # The API requires a reason of at least one character; refuse before sending.
        if not comment or not comment.strip():
            raise InvalidRequest(f"{self.label} requires a comment to cancel a run")
        body = self.request("POST", f"{self._run_path(locator)}/cancel", json={"comment": comment})
        return self.parse_run(body)

    # -- parsing ---------------------------------------------------------------------

    def parse_run(self, item: Any) -> RunData:
        run_id = text(require(item, "id"), 100)
        project_id = text(require(item, "projectId"), 100)
        raw_status = text(require(item, "status"), 64)
        created = parse_time(require(item, "createdAt"))
        project = self._project_data(project_id)
        release = item.get("release") if isinstance(item.get("release"), dict) else {}
        release_name = text(release.get("name"), 200)
        version = text(release.get("version"), 200) or release_name
        jobs = self._parse_jobs(item.get("jobs"), project)
        return RunData(
            # A run id is a uuid and a connection watches one project: the id alone is
            # unique within the connection, and stays so if the scope is edited.
            external_id=run_id,
            locator={"project": project_id, "id": run_id},
            status=self.map_status(raw_status),
            raw_status=raw_status,
            name=self._run_name(item, release_name, version, run_id),
            version=version,
            triggered_by=person_name(item.get("createdBy")),
            project=project,
            environment=self._current_environment(jobs),
            created_at=created,
            started_at=created,  # the API has no separate start time
            finished_at=parse_time(item.get("completedAt")),
            cancelled_by=person_name(item.get("cancelledBy")),
            cancel_comment=text(item.get("cancelledComment"), 2000),
            # `event` and `data` (run and jobs) are free-form provider data: kept in raw only.
            raw=item,
            jobs=jobs,
        )

    @staticmethod
    def _run_name(item: Mapping[str, Any], release_name: str, version: str, run_id: str) -> str:
        name = text(item.get("name"), 300).strip()
        if name:
            return name
        if release_name:
            return release_name if version in release_name else f"{release_name} {version}"
        return f"run {run_id[:8]}"

    @staticmethod
    def _current_environment(jobs: list[JobData]) -> EnvironmentData | None:
        # Where the run is now: the first job (in order) that has not succeeded. For a live
        # run that is the job deploying or waiting for review; for a failed or cancelled
        # run, where it stopped. Once every job succeeded, the last environment.
        for job in jobs:
            if job.status != Status.SUCCEEDED:
                return job.environment
        return jobs[-1].environment if jobs else None

    def _parse_jobs(self, items: Any, project: ProjectData) -> list[JobData]:
        jobs = []
        for index, job in enumerate(items if isinstance(items, list) else []):
            if not isinstance(job, dict):
                continue
            env = job.get("environment") if isinstance(job.get("environment"), dict) else {}
            env_name = text(env.get("name"), 200) or text(env.get("key"), 200)
            env_id = text(env.get("id") or job.get("environmentId"), 100)
            # Only a named environment is reported: a bare id would rename a known one.
            environment = (
                EnvironmentData(env_id, env_name, project) if env_id and env_name else None
            )
            raw_status = text(job.get("status"), 64)
            order = job.get("order")
            jobs.append(JobData(
                external_id=text(job.get("id") or env_id or index, 100),
                name=f"Deploy to {env_name}" if env_name else f"job {index + 1}",
                status=self.map_status(raw_status),
                raw_status=raw_status,
                order=order if isinstance(order, int) else index,
                environment=environment,
                reviewed_by=person_name(job.get("reviewedBy")),
                reviewed_at=parse_time(job.get("reviewedAt")),
                review_comment=text(job.get("reviewedComment"), 2000),
                review_conclusion=self._conclusion(job.get("reviewedConclusion")),
            ))
        jobs.sort(key=lambda j: j.order)
        return jobs

    def _conclusion(self, value: Any) -> str:
        conclusion = text(value, 32)
        if conclusion and conclusion not in REVIEW_CONCLUSIONS:
            logger.warning("%s: unrecognised review conclusion %r", self.key, conclusion)
        return conclusion

    # -- webhooks (appended) ---------------------------------------------------------
    # Documented (GoRules BRMS, Enterprise plan): project webhooks (Settings → Webhooks),
    # type REST webhook, POSTed on events such as Release Created and Release Deployed,
    # with a signing secret GoRules generates "for payload verification". NOT documented
    # anywhere we could read: the signature's header and algorithm, the body's shape, and
    # any event about a deployment workflow run. So Runboard authenticates a delivery by
    # its own secret in the URL's query (`?secret=...`), and a delivery only says
    # "something changed in this project": the newest page of the run list is read back
    # from the API (one request; a run further down is left to the next pass).
    # No rate limit is documented (rate_budget stays the conservative default).

    webhook_events = ("Release Created", "Release Deployed")
    webhook_setup = (
        "In GoRules: the project's Settings → Webhooks → Add webhook, type REST webhook. "
        "URL: {url}?secret=<the webhook secret Runboard showed you> (GoRules' own signing "
        "secret is not used: its scheme is not documented). Events: every release and "
        "deployment event."
    )

    @classmethod
    def webhook_secret(cls, headers, query, body: bytes) -> str:
        secret = query.get("secret", "")
        return secret if isinstance(secret, str) else ""

    @classmethod
    def parse_webhook(cls, headers, body: bytes) -> WebhookEvent:
        data = webhook_json(body)
        event = data.get("event") or data.get("type") or "project event"
        # No run is named: the newest page of the run list is read (one request), where
        # a run that just changed is if runs are listed newest first (assumed, see the
        # module docstring); a run further down waits for the next pass.
        return WebhookEvent(text(event, 100), hints=[NEWEST_RUNS])

    def runs_from_webhook(self, event: WebhookEvent) -> list[RunData]:
        # The only hint a delivery makes (at most one read however many named it).
        return next(self.list_runs(), []) if NEWEST_RUNS in event.hints else []


# A delivery's hint: "read the newest page of the project's runs".
NEWEST_RUNS = {"runs": "newest"}
