"""Template filters: the provider's answer in words, durations; `route` and `asset`."""

from __future__ import annotations

import functools
import json
from datetime import timedelta
from types import SimpleNamespace

from django import template
from django.contrib.staticfiles.storage import staticfiles_storage
from django.dispatch import receiver
from django.template.loader import render_to_string
from django.templatetags.static import StaticNode
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils.autoreload import file_changed
from django.utils.functional import empty
from django.utils.html import conditional_escape
from django.utils.safestring import mark_safe

register = template.Library()

MAX_ANSWER = 300


@register.simple_tag
def route(name: str) -> str:
    """`{% url name %}` for a URL without arguments, reversed once per process (and URL
    configuration): every page's header and strip name a dozen, and reversing them
    took a tenth of a page's rendering. Escaped like `{% url %}`'s."""
    return _route(name, get_urlconf(), get_script_prefix())


@register.simple_tag
def asset(path: str) -> str:
    """`{% static path %}`, worked out once per process and storage (a settings change
    makes a new one): every page names five, and joining their URLs took a fifth of an
    empty page's rendering. Escaped like `{% static %}`'s."""
    if staticfiles_storage._wrapped is empty:
        staticfiles_storage._setup()
    return _asset(path, staticfiles_storage._wrapped)


# Stand-ins, in markup rendered once for many users (the header, `views.rendered_for`),
# for what differs between them: put in per request.
USER_MARK = "runboard-user-name-goes-here"
CSRF_MARK = "runboard-csrf-token-goes-here"
CSRF_INPUT = f'<input type="hidden" name="csrfmiddlewaretoken" value="{CSRF_MARK}">'


@register.simple_tag(takes_context=True)
def topbar(context) -> str:
    """The header (partials/topbar.html), rendered once per process for each kind of
    user (signed in or not, staff or not) and URL configuration: its dozen links and
    conditions were a third of an empty page's rendering. The user's name and the
    logout form's CSRF token are put in per request, escaped as the template would."""
    user = context.get("user")
    if user is None or not user.is_authenticated:
        return _topbar(False, False, get_urlconf(), get_script_prefix())
    html = _topbar(True, bool(user.is_staff), get_urlconf(), get_script_prefix())
    token = context.get("csrf_token")
    if token is None or token == "NOTPROVIDED":  # as {% csrf_token %}: no field
        html = html.replace(CSRF_INPUT, "")
    else:
        html = html.replace(CSRF_MARK, conditional_escape(token))
    return mark_safe(html.replace(USER_MARK, conditional_escape(user.get_username())))  # noqa: S308


@functools.lru_cache(maxsize=64)
def _topbar(authenticated: bool, staff: bool, urlconf, prefix: str) -> str:
    user = SimpleNamespace(is_authenticated=authenticated, is_staff=staff,
                           get_username=USER_MARK)
    return mark_safe(render_to_string(  # noqa: S308 (a template's output)
        "partials/topbar.html", {"user": user, "csrf_token": CSRF_MARK}))


@receiver(file_changed)
def _template_changed(sender, file_path, **kwargs):
    """The development server reloads templates without a restart: so must the header."""
    _topbar.cache_clear()


@register.simple_tag
def pager(page, query: str) -> str:
    """A list's newer/older links (`page` from views.page_of, `query` the URL's other
    parameters): the run list's pager, written by runrows."""
    from dashboard.runrows import pager_html

    return mark_safe(pager_html(page, query or ""))  # noqa: S308 (escaped there)


@register.simple_tag
def attention_strip(attention) -> str:
    """The attention strip for `attention` (its counts): see attention.strip_html."""
    from dashboard.attention import strip_html  # it imports `route` from here

    return mark_safe(strip_html(attention))  # noqa: S308 (escaped there)


# Escaped once, as the tags would on every use (a safe string is not escaped again).
@functools.lru_cache(maxsize=256)
def _asset(path: str, storage) -> str:
    return conditional_escape(StaticNode.handle_simple(path))


@functools.cache
def _route(name: str, urlconf, prefix: str) -> str:
    return conditional_escape(reverse(name, urlconf))


@register.filter
def answer(text: str) -> str:
    """An audit record's provider answer, readable: what the action path stores is
    either the run's new status as JSON, another JSON body, or plain text."""
    if not text:
        return ""
    try:
        body = json.loads(text)
    except ValueError:
        return text[:MAX_ANSWER]
    if isinstance(body, dict) and {"status", "normalized"} <= set(body) <= {
            "status", "normalized", "run"}:
        said = f"Run is now {body['normalized']} (provider status {body['status']})"
        return said + (f"; new run {body['run']}" if body.get("run") else "")
    if isinstance(body, dict):
        parts = []
        for key, value in body.items():
            if isinstance(value, dict | list):
                value = ", ".join(str(v) for v in (value.values() if isinstance(value, dict)
                                                    else value))
            parts.append(f"{str(key).replace('_', ' ')}: {value}")
        return "; ".join(parts)[:MAX_ANSWER]
    if isinstance(body, list):
        return "; ".join(str(item) for item in body)[:MAX_ANSWER]
    return str(body)[:MAX_ANSWER]


@register.filter
def duration(value: timedelta | None) -> str:
    if value is None:
        return ""
    seconds = max(0, int(value.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


@register.filter
def step_duration(job) -> timedelta | None:
    if not job.started_at:
        return None
    if not job.finished_at:
        return None
    return job.finished_at - job.started_at


# Tags for what partials/time.html and partials/status.html write: an {% include %} costs
# a template render of its own, many times a page.
@register.simple_tag
def time_tag(value):
    from dashboard.runrows import time_html

    return mark_safe(time_html(value))  # noqa: S308 (escaped: numbers only)


@register.simple_tag
def status_badge(status, raw=""):
    from dashboard.runrows import status_html

    return mark_safe(status_html(status, raw))  # noqa: S308 (escaped by status_html)
