"""Deployment-workflow simulator (GoRules BRMS): a project's runs deploying releases
through its environments.

Written from GoRules' BRMS API reference pages (get, cancel and list deployment workflow
runs) and the seed pages, never from Runboard's client:
- GET /api/projects/{projectId}/runs/{runId}, POST .../cancel {"comment"} (min length 1,
  answers 200 with the cancelled run), GET /api/projects/{projectId}/runs
  ({"results": [...]}), GET /api/projects; Authorization: Bearer <personal access token>.
The most likely reading, served here because the reference does not show it:
- lists page with `page` (from 1) and `perPage`, 10 a page by default
  (PER_PAGE_DEFAULT), and answer a `paginate` object {current, from, to, total,
  pageSize} beside `results`, as GoRules' other list endpoints do (a third-party
  Terraform provider for GoRules reads groups exactly so); unknown query parameters
  (e.g. `limit`) are ignored, as a real server would.
Assumed: runs newest first; `from`/`to` count items from 1; 400 for a page or perPage
that is not a positive integer; no maximum perPage; project items {id, name, key,
protected} (the fields the Terraform provider reads).
Not found in any reference (searched GoRules' docs, API reference and public code):
the endpoints that approve or reject a job. So there are none here: a simulated reviewer
concludes after REVIEW_SECONDS, approved, or rejected, which fails the run.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from providers.simulators.base import (
    Delivery,
    HttpError,
    Phase,
    Request,
    SimRun,
    Simulator,
    iso,
)

# GoRules list endpoints, most likely reading (unconfirmed): `page` + `perPage`, 10 a page.
PAGE_PARAM, PER_PAGE_PARAM, PER_PAGE_DEFAULT = "page", "perPage", 10

DEPLOY_SECONDS = 20
REVIEW_SECONDS = 90
FINAL = {"completed", "failure", "cancelled"}

# (key, name, needs review)
ENVIRONMENTS = [("dev", "Development", False), ("staging", "Staging", False),
                ("production", "Production", True)]
PEOPLE = [("Ana", "Lima"), ("Kofi", "Mensah"), ("Jo", "Tanaka"), ("Mike", "Benson"),
          ("Priya", "Raman")]
TOKEN_USER = ("Sam", "Okafor")  # whose personal access token the connection uses
APPROVE_COMMENTS = ["Change window is open, go ahead", "Smoke tests green on staging",
                    "Approved for the release train"]
REJECT_COMMENTS = ["Not during the payment freeze", "Staging error rate still too high"]
RUN_NAMES = ["Weekly release train", "Hotfix rollout", "Pricing rules update"]


@dataclass
class Step(Phase):
    """A run's status while it is at job `job` (an index into the environments)."""

    job: int = 0


def deploy_plan(reviews: list[bool], outcome: str = "approved",
                fail_at: int | None = None) -> list[Phase]:
    """Deploy through environments in order; one needing review waits for the reviewer first.

    `outcome` is the reviewer's conclusion (a rejection fails the run); `fail_at` makes the
    deploy to that environment fail.
    """
    plan: list[Phase] = []
    for index, needs_review in enumerate(reviews):
        if needs_review:
            plan.append(Step("waiting", REVIEW_SECONDS, index))
            if outcome == "rejected":
                return [*plan, Step("failure", None, index)]
        plan.append(Step("in_progress", DEPLOY_SECONDS, index))
        if fail_at == index:
            return [*plan, Step("failure", None, index)]
    return [*plan, Step("completed", None, len(reviews) - 1)]


def person(first: str, last: str) -> dict[str, str]:
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"user:{first}.{last}")),
            "email": f"{first}.{last}@example.com".lower(), "firstName": first, "lastName": last}


class WorkflowsSimulator(Simulator):
    name = "workflows"
    running_statuses = {"in_progress"}
    final_statuses = FINAL
    unknown_status_value = "paused_by_admin"

    def __init__(self, *args, **kwargs):
        # Ids derived from names: a restarted demo finds the same project and environments.
        self.project_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "project:pricing-rules"))
        self.project_name = "Pricing rules"
        self.environments = [
            {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"environment:{key}")), "key": key,
             "name": name, "review": review}
            for key, name, review in ENVIRONMENTS
        ]
        self.token_user = person(*TOKEN_USER)
        # Other projects the token can see: discovery lists them all, paged.
        self.other_projects: list[dict[str, Any]] = []
        self._release = (2, 3, 0)
        super().__init__(*args, **kwargs)

    # -- wire details ------------------------------------------------------------------

    def routes(self) -> None:
        runs = "/api/projects/{project}/runs"
        self.route("GET", "/api/projects", self.list_projects)
        self.route("GET", runs, self.list_runs)
        self.route("GET", runs + "/{run}", self.get_run)
        self.route("POST", runs + "/{run}/cancel", self.cancel_run)

    def auth_error(self) -> HttpError:
        return HttpError(401, self.error_body(401, "Invalid or expired personal access token"))

    def without_optional_fields(self, body: Any) -> Any:
        """Drop the run fields the seed does not mark required (`name` is required but
        nullable: null it), and all job fields but ids, status, order and createdAt."""
        run_drop = {"runVersion", "release", "createdBy", "completedAt", "cancelledById",
                    "cancelledBy", "cancelledComment"}
        job_keep = {"id", "status", "order", "environmentId", "projectId",
                    "deploymentWorkflowRunId", "createdAt"}
        if isinstance(body, dict) and "results" in body:
            return {**body, "results": [self.without_optional_fields(r) for r in body["results"]]}
        if isinstance(body, dict) and "jobs" in body:
            run = {k: v for k, v in body.items() if k not in run_drop}
            run["name"] = None
            run["jobs"] = [{k: v for k, v in job.items() if k in job_keep} for job in body["jobs"]]
            return run
        return body

    # -- sample data -------------------------------------------------------------------

    def add_project(self, name: str) -> str:
        project_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"project:{name}"))
        key = "-".join(name.lower().split())
        with self.lock:
            self.other_projects.append({"id": project_id, "name": name, "key": key,
                                        "protected": False})
        return project_id

    def _release_payload(self) -> dict[str, str]:
        version = ".".join(map(str, self._release))
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"release:{version}")),
                "name": f"Release {version}", "version": version}

    def add_workflow_run(self, plan: list[Phase] | None = None, *, age: float = 0,
                         creator: tuple[str, str] = PEOPLE[0], name: str | None = None,
                         reviewer: tuple[str, str] = PEOPLE[3],
                         review_comment: str = APPROVE_COMMENTS[0]) -> SimRun:
        # Each run deploys the next patch release over the one before it.
        with self.lock:
            previous = self._release_payload()
            self._release = (*self._release[:2], self._release[2] + 1)
            release = self._release_payload()
        plan = list(plan or deploy_plan([env["review"] for env in self.environments]))
        run_id = str(uuid.uuid4())
        return self.add_run(
            run_id, plan, created_at=self.clock.now() - timedelta(seconds=age),
            id=run_id, name=name, release=release, previous_release=previous,
            creator=person(*creator), reviewer=person(*reviewer), review_comment=review_comment,
            job_ids=[str(uuid.uuid4()) for _ in self.environments],
        )

    # -- demo data ---------------------------------------------------------------------

    def _random_run(self, rng, age: float) -> SimRun:
        reviews = [env["review"] for env in self.environments]
        roll = rng.random()
        if roll < 0.15:
            plan, comment = deploy_plan(reviews, "rejected"), rng.choice(REJECT_COMMENTS)
        elif roll < 0.3:
            plan = deploy_plan(reviews, fail_at=rng.randrange(len(reviews)))
            comment = rng.choice(APPROVE_COMMENTS)
        else:
            plan, comment = deploy_plan(reviews), rng.choice(APPROVE_COMMENTS)
        creator = rng.choice(PEOPLE)
        return self.add_workflow_run(
            plan, age=age, creator=creator,
            reviewer=rng.choice([p for p in PEOPLE if p != creator]),  # no self-review
            review_comment=comment, name=rng.choice([None, None, None, *RUN_NAMES]),
        )

    def seed_demo(self, rng) -> dict[str, str]:
        """History over the last days, one run cancelled, and two live runs; return the scope."""
        for hours in (96, 72, 50, 30, 26, 20, 9, 5, 3):
            self._random_run(rng, hours * 3600)
        cancelled = self.add_workflow_run(
            [Step("in_progress", 15, 0), Step("cancelled", None, 0)], age=2 * 3600,
            creator=rng.choice(PEOPLE))
        cancelled.data.update(cancelled_by=self.token_user, cancel_comment="Wrong release picked")
        # Live: one waiting for its production review, one deploying to staging.
        self.add_workflow_run(age=60, creator=rng.choice(PEOPLE))
        self.add_workflow_run(age=25, creator=rng.choice(PEOPLE), name="Hotfix rollout")
        return {"project": self.project_id, "project_name": self.project_name}

    def spawn_demo(self, rng) -> None:
        self._random_run(rng, 0)

    # -- handlers ----------------------------------------------------------------------

    def _check_project(self, request: Request) -> None:
        if request.params["project"] != self.project_id:
            raise HttpError(404, self.error_body(404, "Project not found"))

    def _run(self, request: Request) -> SimRun:
        self._check_project(request)
        if request.params["run"] not in self.runs:
            raise HttpError(404, self.error_body(404, "Deployment workflow run not found"))
        return self.runs[request.params["run"]]

    def _page(self, request: Request, items: list) -> tuple[list, dict[str, int]]:
        """One page of `items` by `page` and `perPage`; other parameters are ignored."""
        try:
            page = int(request.query.get(PAGE_PARAM, 1))
            per_page = int(request.query.get(PER_PAGE_PARAM, PER_PAGE_DEFAULT))
        except ValueError:
            raise HttpError(400, self.error_body(
                400, "page and perPage must be integers")) from None
        if page < 1 or per_page < 1:
            raise HttpError(400, self.error_body(400, "page and perPage must be at least 1"))
        chunk = items[(page - 1) * per_page: page * per_page]
        first = (page - 1) * per_page + 1 if chunk else 0
        return chunk, {"current": page, "from": first, "to": first + len(chunk) - 1 if chunk
                       else 0, "total": len(items), "pageSize": per_page}

    def list_projects(self, request: Request) -> Any:
        mine = {"id": self.project_id, "name": self.project_name, "key": "pricing-rules",
                "protected": False}
        projects = sorted([mine, *self.other_projects], key=lambda p: p["name"])
        chunk, paginate = self._page(request, projects)
        return {"results": [dict(p) for p in chunk], "paginate": paginate}

    def list_runs(self, request: Request) -> Any:
        self._check_project(request)
        runs = sorted(self.runs.values(), key=lambda r: (r.created_at, r.id), reverse=True)
        chunk, paginate = self._page(request, runs)
        return {"results": [self.render(r) for r in chunk], "paginate": paginate}

    def get_run(self, request: Request) -> Any:
        return self.render(self._run(request))

    def cancel_run(self, request: Request) -> Any:
        run = self._run(request)
        comment = request.body.get("comment") if isinstance(request.body, dict) else None
        if not isinstance(comment, str) or len(comment) < 1:
            raise HttpError(400, self.error_body(
                400, "Validation failed: comment must be a string of at least 1 character"))
        if run.status in FINAL:
            raise HttpError(409, self.error_body(
                409, f"Deployment workflow run is already {run.status} and cannot be cancelled"))
        self.cancel(run, self.token_user, comment)
        return self.render(run)

    def cancel(self, run: SimRun, by: dict[str, str], comment: str) -> None:
        """Cancel at once: the API answers with the run already cancelled."""
        with self.lock:
            self.transition(run, [Step("cancelled", None, self._current_job(run))])
            run.data.update(cancelled_by=by, cancel_comment=comment)

    # -- rendering ---------------------------------------------------------------------

    @staticmethod
    def _current_job(run: SimRun) -> int:
        return getattr(run.plan[run.phase], "job", 0)

    def _job_statuses(self, run: SimRun) -> list[str]:
        """Jobs before the current one completed; the current one shares the run's status;
        later ones have not started, or were cancelled with the run."""
        count = len(self.environments)
        if run.status == "completed":
            return ["completed"] * count
        current = self._current_job(run)
        later = "cancelled" if run.status == "cancelled" else "not_started"
        return ["completed"] * current + [run.status] + [later] * (count - current - 1)

    def _review(self, run: SimRun, job: int) -> dict[str, Any] | None:
        """The reviewer's conclusion on `job`, once the run has left waiting for it."""
        for index in range(run.phase):
            step = run.plan[index]
            if step.status == "waiting" and getattr(step, "job", None) == job:
                after = run.plan[index + 1].status
                if after == "cancelled":
                    return None
                return {"at": run.history[index + 1][1], "by": run.data["reviewer"],
                        "comment": run.data["review_comment"],
                        "conclusion": "approved" if after == "in_progress" else "rejected"}
        return None

    def render(self, run: SimRun) -> dict[str, Any]:
        d = run.data
        created = iso(run.created_at)
        cancelled_by = d.get("cancelled_by")
        jobs = []
        for order, (env, status) in enumerate(zip(self.environments, self._job_statuses(run),
                                                  strict=True)):
            review = self._review(run, order) if env["review"] else None
            jobs.append({
                "id": d["job_ids"][order], "status": status, "order": order + 1,
                "environmentId": env["id"], "projectId": self.project_id,
                "deploymentWorkflowRunId": d["id"], "createdAt": created,
                "environment": {"id": env["id"], "name": env["name"], "key": env["key"]},
                "reviewedAt": iso(review["at"]) if review else None,
                "reviewedBy": review["by"] if review else None,
                "reviewedComment": review["comment"] if review else None,
                "reviewedConclusion": review["conclusion"] if review else None,
                "previousRelease": d["previous_release"],
                "previousReleaseId": d["previous_release"]["id"],
                "event": None, "data": None,
            })
        return {
            "id": d["id"],
            "name": d["name"],
            "status": run.status,
            "releaseId": d["release"]["id"],
            "projectId": self.project_id,
            "createdById": d["creator"]["id"],
            "createdAt": created,
            "jobs": jobs,
            "runVersion": "v2",
            "release": d["release"],
            "createdBy": d["creator"],
            "completedAt": iso(run.finished_at) if run.status in FINAL else None,
            "cancelledById": cancelled_by["id"] if cancelled_by else None,
            "cancelledBy": cancelled_by,
            "cancelledComment": d.get("cancel_comment"),
        }

    # -- webhooks (appended) ----------------------------------------------------------
    # GoRules project webhooks (REST type) fire on release events such as Release Deployed
    # (documented); no run-level event is documented, nor the body's shape or its signature.
    # Here: a run that completed deploys its release, so "Release Deployed" is sent, with
    # Runboard's secret in the URL's query (how Runboard asks GoRules to be set up).

    def webhook_deliveries(self, run: SimRun, before, secret: str) -> list[Delivery]:
        if run.status != "completed":
            return []
        return [Delivery(headers={}, query=urlencode({"secret": secret}), body=json.dumps({
            "event": "Release Deployed", "projectId": self.project_id,
            "release": run.data["release"], "createdAt": iso(self.clock.now()),
        }).encode())]
