"""Template filters: the provider's answer in words, durations; `route` and `asset`."""

from __future__ import annotations

import functools
import json
from datetime import timedelta

from django import template
from django.contrib.staticfiles.storage import staticfiles_storage
from django.templatetags.static import StaticNode
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils.functional import empty
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


@register.simple_tag
def attention_strip(attention) -> str:
    """The attention strip for `attention` (its counts): see attention.strip_html."""
    from dashboard.attention import strip_html  # it imports `route` from here

    return mark_safe(strip_html(attention))  # noqa: S308 (escaped there)


@functools.lru_cache(maxsize=256)
def _asset(path: str, storage) -> str:
    return StaticNode.handle_simple(path)


@functools.cache
def _route(name: str, urlconf, prefix: str) -> str:
    return reverse(name, urlconf)


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
