"""Middleware of Runboard's own.

ApiJsonErrors: under /api/ every answer is JSON, including the errors Django and ninja
produce themselves (a path that matches no endpoint, a method an endpoint does not take).
HtmxLoginRedirect: a live page whose session ended goes to the login page.
"""

from http import HTTPStatus
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse, JsonResponse
from django.shortcuts import resolve_url

API_PREFIX = "/api/"


class ApiJsonErrors:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (response.status_code < 400 or not request.path.startswith(API_PREFIX)
                or response.get("Content-Type", "").startswith("application/json")):
            return response
        status = response.status_code
        if status == 404:
            message = "No such API path; see /api/docs."
        elif status == 405:
            message = f"{request.method} is not allowed here; use {response.get('Allow', '')}."
        else:
            message = HTTPStatus(status).phrase
        replacement = JsonResponse({"error": message}, status=status)
        if "Allow" in response:
            replacement["Allow"] = response["Allow"]
        return replacement


class HtmxLoginRedirect:
    """When the session ends, a live page (an htmx poll or form) goes to the login page.

    Without this, the XHR follows the login redirect and htmx swaps the login page into
    the live part of the page. `HX-Redirect` makes htmx load it as a page instead, with
    `next` pointing at the page the user was on (not at the partial it polled).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        htmx = getattr(request, "htmx", None)
        if not htmx or response.status_code != 302:
            return response
        login = resolve_url(settings.LOGIN_URL)
        if urlsplit(response["Location"]).path != login:
            return response
        current = urlsplit(htmx.current_url or "")
        page = current.path + (f"?{current.query}" if current.query else "") or "/"
        redirect = HttpResponse(status=200)
        redirect["HX-Redirect"] = redirect_to_login(page, login)["Location"]
        return redirect
