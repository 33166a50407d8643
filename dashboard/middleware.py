"""Middleware of Runboard's own.

ApiJsonErrors: under /api/ every answer is JSON, including the errors Django and ninja
produce themselves (a path that matches no endpoint, a method an endpoint does not take).
HtmxLoginRedirect: a live page whose session ended goes to the login page.
csrf_context: the CSRF token every page carries, masked more cheaply than Django does.
"""

import secrets
from http import HTTPStatus
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse, JsonResponse
from django.middleware import csrf
from django.shortcuts import resolve_url
from django.utils.functional import SimpleLazyObject

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


CHARS = csrf.CSRF_ALLOWED_CHARS
EVEN = 256 - 256 % len(CHARS)  # random bytes below this fall evenly on the characters
# A random byte below EVEN stands for a character (bytes.translate), the others are dropped.
BYTE_TO_CHAR = bytes(ord(CHARS[byte % len(CHARS)]) if byte < EVEN else 0 for byte in range(256))
UNEVEN = bytes(range(EVEN, 256))
# A secret's character and a mask's: the token's character (Django's _mask_cipher_secret).
CIPHER = {(s, m): CHARS[(CHARS.index(s) + CHARS.index(m)) % len(CHARS)]
          for s in CHARS for m in CHARS}


def masked_token(request) -> str:
    """`django.middleware.csrf.get_token`, the same token (the cookie's secret under a
    fresh random mask, a new cookie if there was none), with the mask's 32 characters
    drawn from one read of the system's random source: Django's `secrets.choice` reads
    it once a character, a twentieth of an empty page's time."""
    secret = request.META.get("CSRF_COOKIE")  # CsrfViewMiddleware checked its format
    if secret is None:
        return csrf.get_token(request)  # no cookie yet: Django makes and sends one
    # Sent again with the response, as get_token does, to renew its expiry.
    request.META["CSRF_COOKIE_NEEDS_UPDATE"] = True
    mask = b""
    while len(mask) < csrf.CSRF_SECRET_LENGTH:  # 40 bytes nearly always give 32
        mask += secrets.token_bytes(40).translate(BYTE_TO_CHAR, UNEVEN)
    mask = mask[:csrf.CSRF_SECRET_LENGTH].decode()
    return mask + "".join(map(CIPHER.__getitem__, zip(secret, mask, strict=True)))


def csrf_context(request):
    """Template context: `csrf_token`, as Django's own context processor gives it (this
    one comes later and replaces it), masked by `masked_token`."""
    return {"csrf_token": SimpleLazyObject(lambda: masked_token(request))}
