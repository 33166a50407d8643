from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.db.models import Max
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dashboard import actions
from dashboard.filters import RunFilter
from dashboard.forms import CancelForm, CommentForm
from dashboard.models import Connection, Run
from providers.base import Action

PAGE_SIZE = 50


def data_version() -> str:
    """Changes whenever any run or connection changes; two index lookups."""
    runs = Run.objects.aggregate(v=Max("updated_at"))["v"]
    connections = Connection.objects.aggregate(v=Max("updated_at"))["v"]
    return "-".join(f"{v.timestamp() if v else 0:.6f}" for v in (runs, connections))


def unchanged(request, version: str) -> bool:
    """A poll that already shows `version` needs no new HTML (htmx swaps nothing on 204)."""
    return bool(request.htmx) and request.GET.get("v") == version


@login_required
def run_list(request):
    version = data_version()
    if unchanged(request, version):
        return HttpResponse(status=204)
    run_filter = RunFilter(request.GET, queryset=Run.objects.for_list())
    page = Paginator(run_filter.qs, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("v", None)
    context = {
        "filter": run_filter,
        "page": page,
        "version": version,
        "query": query.urlencode(),
        "connections": Connection.objects.filter(enabled=True),
    }
    template = "runs/_table.html" if request.htmx else "runs/list.html"
    return render(request, template, context)


def _detail_context(request, run, **extra):
    return {
        "run": run,
        "jobs": run.jobs.select_related("environment"),
        "history": run.actions.select_related("user")[:50],
        "version": f"{run.updated_at.timestamp():.6f}",
        "can_act": request.user.has_perm("dashboard.act_on_run"),
        "provider": run.connection.provider_class,
        "cancel_form": CancelForm(),
        **extra,
    }


@login_required
def run_detail(request, pk):
    run = get_object_or_404(Run.objects.for_list(), pk=pk)
    if unchanged(request, f"{run.updated_at.timestamp():.6f}"):
        return HttpResponse(status=204)
    template = "runs/_live.html" if request.htmx else "runs/detail.html"
    return render(request, template, _detail_context(request, run))


@require_POST
@login_required
@permission_required("dashboard.act_on_run", raise_exception=True)
def run_action(request, pk, kind):
    run = get_object_or_404(Run.objects.for_list(), pk=pk)
    if kind not in Action.values:
        return HttpResponse(status=404)
    form = (CancelForm if kind == Action.CANCEL else CommentForm)(request.POST)
    status, extra = 200, {}
    if not form.is_valid():
        status = 400
        extra["action_error"] = " ".join(e for errs in form.errors.values() for e in errs)
        if kind == Action.CANCEL:
            extra["cancel_form"] = form
    else:
        try:
            actions.perform(run, request.user, kind, comment=form.cleaned_data["comment"],
                            force=form.cleaned_data.get("force_cancel", False))
            extra["action_message"] = f"{Action(kind).label} sent to {run.connection}."
        except actions.ActionRefused as exc:
            status = exc.status
            extra["action_error"] = exc.message
    run.refresh_from_db()
    if request.htmx:
        # 200 even for refusals, so htmx swaps in the explanation.
        return render(request, "runs/_live.html", _detail_context(request, run, **extra))
    if "action_error" in extra:
        messages.error(request, extra["action_error"])
        return render(request, "runs/detail.html", _detail_context(request, run, **extra),
                      status=status)
    messages.success(request, extra["action_message"])
    return redirect(run)
