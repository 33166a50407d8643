"""The approval inbox: every run waiting for a person, across providers, oldest first.

Acting from here goes through `dashboard.actions.perform`, like every other way of
acting, so permission, separation of duties and the audit are the same. A bulk
approve of one release (version or commit) is one confirmed step that makes one
provider call, and one audit record, per run.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.db.models import Prefetch, Q
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dashboard import actions
from dashboard.models import Job, Run, data_version, mark_superseded
from dashboard.views import page_of, personal_key, rendered_for, shows_actions
from providers.base import Action, Status

MAX_COMMENT = 2000


def waiting():
    """Runs waiting for a person, oldest first (a waiting step makes its run waiting)."""
    return (Run.objects.for_list().filter(status=Status.WAITING)
            .prefetch_related(Prefetch("jobs", to_attr="waiting_jobs",
                                       queryset=Job.objects.filter(status=Status.WAITING)))
            .order_by("created_at", "id"))


def reject_kind(run) -> str | None:
    """How this platform refuses a waiting run: its reject, else a cancel."""
    supported = run.connection.provider_class.actions
    if Action.REJECT in supported:
        return Action.REJECT
    return Action.CANCEL if Action.CANCEL in supported else None


def describe(run, user) -> dict:
    job = run.waiting_jobs[0] if getattr(run, "waiting_jobs", None) else None
    return {
        "run": run,
        "step": job,
        "since": (job.started_at if job and job.started_at else None) or run.created_at,
        "release": run.version or run.commit,
        "refusal": actions.refusal(run, Action.APPROVE, user),
        "reject_kind": reject_kind(run),
    }


def _inbox_context(request) -> dict:
    page = page_of(waiting(), request.GET.get("page"))
    mark_superseded(page["rows"])  # for refusal(), one query for the page
    rows = [describe(run, request.user) for run in page["rows"]]
    releases = {}
    for row in rows:
        if row["release"]:
            releases.setdefault(row["release"], []).append(row)
    bulk = [{"release": key, "count": len(found),
             "approvable": sum(1 for r in found if not r["refusal"])}
            for key, found in releases.items() if len(found) > 1]
    return {"rows": rows, "page": page, "page_query": "", "bulk": bulk,
            "can_act": shows_actions(request)}


@login_required
def inbox(request):
    """Rendered once per data version, page and kind of user (see `rendered_for`)."""
    content = rendered_for(request, "inbox/_content.html",
                           (data_version(), request.GET.get("page", ""),
                            *personal_key(request)),
                           lambda: _inbox_context(request))
    return render(request, "inbox/list.html", {"content": content})


@require_POST
@login_required
@permission_required("dashboard.act_on_run", raise_exception=True)
def act(request, pk, kind):
    run = get_object_or_404(Run.objects.for_list(), pk=pk)
    comment = request.POST.get("comment", "").strip()[:MAX_COMMENT]
    if "\x00" in comment:  # the audit (PostgreSQL) cannot store it
        messages.error(request, f"{run}: the comment holds a NUL character; type it again.")
        return redirect("inbox")
    if kind == "reject":
        if not comment:
            messages.error(request, f"{run}: a comment is required to reject.")
            return redirect("inbox")
        kind = reject_kind(run)
    if kind not in (Action.APPROVE, Action.REJECT, Action.CANCEL):
        raise Http404("No such action")
    try:
        actions.perform(run, request.user, kind, comment=comment)
        messages.success(request, f"{Action(kind).label} sent to {run.connection}: {run}.")
    except actions.ActionRefused as exc:
        messages.error(request, f"{run}: {exc.message}")
    return redirect("inbox")


def _release_runs(release: str):
    return waiting().filter(Q(version=release) | Q(commit=release))


@login_required
@permission_required("dashboard.act_on_run", raise_exception=True)
def approve_release(request):
    """GET: what approving this release everywhere would do (the confirmation).
    POST: approve each run ticked, one provider call and audit record each."""
    release = (request.POST if request.method == "POST" else request.GET).get("release", "")
    release = release.strip()[:200]
    comment = request.POST.get("comment", "").strip()[:MAX_COMMENT]
    if not release or "\x00" in release + comment:  # PostgreSQL cannot take NUL
        return redirect("inbox")
    runs = list(_release_runs(release)[:200])
    mark_superseded(runs)
    rows = [describe(run, request.user) for run in runs]
    results = None
    if request.method == "POST":
        chosen = set(request.POST.getlist("run"))
        results = []
        for row in rows:
            if str(row["run"].pk) not in chosen:
                continue
            try:
                record = actions.perform(row["run"], request.user, Action.APPROVE,
                                         comment=comment)
                results.append({"run": row["run"], "ok": True, "record": record,
                                "message": f"Approve sent to {row['run'].connection}."})
            except actions.ActionRefused as exc:
                results.append({"run": row["run"], "ok": False, "record": exc.record,
                                "message": exc.message})
    return render(request, "inbox/release.html", {
        "release": release, "rows": rows, "results": results,
        "approvable": [r for r in rows if not r["refusal"]],
        "blocked": [r for r in rows if r["refusal"]],
    })
