"""Link previews without a session, for chat unfurlers (RUNBOARD_PUBLIC_PREVIEWS).

With the setting on, an anonymous GET of a run link gets a minimal page whose Open
Graph tags carry the run's title, status, environment and version: nothing else is
put in the template's context, so nothing else can leak. Every other request, and
every request with the setting off, goes to the normal, login-protected view.
"""

from functools import wraps

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render

from dashboard.models import Run


def public_preview(view):
    """Wrap a run view taking `pk`, or `provider` and `external_id` (the permalink)."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if (settings.RUNBOARD_PUBLIC_PREVIEWS and not request.user.is_authenticated
                and request.method in ("GET", "HEAD")
                and not request.headers.get("HX-Request")):
            return preview(request, **kwargs)
        return view(request, *args, **kwargs)

    return wrapper


def preview(request, pk=None, provider=None, external_id=None):
    runs = Run.objects.select_related("environment").only(
        "name", "external_id", "status", "version", "environment__name")
    runs = runs.filter(pk=pk) if pk is not None else runs.permalink(provider, external_id)
    found = list(runs[:2])
    if len(found) != 1:  # missing or ambiguous: as without previews
        return redirect_to_login(request.get_full_path())
    run = found[0]
    response = render(request, "runs/preview.html", {
        "title": run.name or run.external_id,
        "status": run.get_status_display(),
        "environment": run.environment.name if run.environment else "",
        "version": run.version,
        "link": request.build_absolute_uri(run.get_absolute_url()),
    })
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Cache-Control"] = "no-store"
    return response
