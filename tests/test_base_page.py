"""What every page pays for base.html (the header, the attention strip, the CSRF token):
the same markup and counts as before they were made cheaper (bench/pages.py's `empty`
row measures the time)."""

import itertools
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from dashboard import attention, sync
from dashboard.models import Connection, data_changed
from providers.base import EnvironmentData, JobData, ProjectData, RunData, Status

pytestmark = pytest.mark.django_db


def _run(connection_, n, status):
    now = timezone.now()
    project = ProjectData("p1", "Shop")
    sync.upsert_runs(connection_, [RunData(
        external_id=f"r{n}", status=status, raw_status=status.value, locator={},
        name=f"Deploy #{n}", version=f"1.{n}", project=project,
        environment=EnvironmentData("e1", "production", project), pipeline_name="Deploy",
        created_at=now, started_at=now, jobs=[JobData("j1", "build", status, status.value)])])


def test_the_stale_count_is_what_connection_is_stale_says(buddy_connection, settings):
    """The strip counts stale connections in SQL: in every state (and near every bound)
    it counts a connection exactly when Connection.is_stale says it is stale."""
    grace, poll_max = settings.RUNBOARD_STALE_AFTER, settings.RUNBOARD_POLL_MAX
    now = timezone.now()

    def ago(seconds):
        return None if seconds is None else now - timedelta(seconds=seconds)

    successes = [None, 10, grace - 5, grace + 5, grace + poll_max - 5, grace + poll_max + 5]
    plans = [None, -60, 10, grace - 5, grace + 5]  # negative: planned in the future
    errors = [("", None), ("timeout", None), ("timeout", 1), ("timeout", grace + 10)]
    checked = stale = 0
    for n, (enabled, success, plan, (error, error_at)) in enumerate(
            itertools.product([True, False], successes, plans, errors)):
        Connection.objects.filter(pk=buddy_connection.pk).update(
            enabled=enabled, last_success_at=ago(success), next_poll_at=ago(plan),
            last_error=error, last_error_at=ago(error_at))
        expected = Connection.objects.get(pk=buddy_connection.pk).is_stale
        cache.clear()
        assert attention.counts(current=f"check-{n}")["stale"] == int(expected), (
            enabled, success, plan, error, error_at)
        checked += 1
        stale += expected
    assert checked == 240 and 0 < stale < checked


def test_the_strip_is_written_as_its_template_wrote_it(manager_client, buddy_connection):
    for n in range(3):
        _run(buddy_connection, n, Status.WAITING)
    _run(buddy_connection, 3, Status.FAILED)
    strip = manager_client.get("/attention/", headers={"HX-Request": "true"})
    version = strip.context["attention"]["version"]
    assert strip.content.decode() == (
        f'<div id="attention" class="attention" data-total="4" data-label="4"\n'
        f'     hx-get="/attention/?v={version}" hx-trigger="every 5s"\n'
        '     hx-swap="outerHTML" aria-label="Needs attention">\n'
        '  <a href="/inbox/" class="attention-item hot-wait" data-count="waiting">'
        '<strong>3</strong> waiting for a person</a>\n'
        '  <a href="/runs/?group=failed&amp;range=24h" class="attention-item hot-fail"'
        ' data-count="failed"><strong>1</strong> failed in 24 h</a>\n'
        '  <a href="/connections/" class="attention-item" data-count="stale">'
        '<strong>0</strong> stale connections</a>\n'
        '  <span id="live-state" class="live-state muted small" data-state="live"'
        ' aria-live="polite">live</span>\n'
        '</div>\n')
    page = manager_client.get("/inbox/").content.decode()
    assert strip.content.decode() in page
    assert "<title>(4) " in page


def test_a_change_shows_in_every_pages_strip(manager_client, buddy_connection):
    """The strip's markup and counts are kept per data version: a change shows on the
    next page (and the strip's poll), not the markup made for the version before."""
    page = manager_client.get("/environments/").content.decode()
    assert "<strong>0</strong> waiting for a person" in page
    _run(buddy_connection, 0, Status.WAITING)  # the sync calls data_changed()
    page = manager_client.get("/environments/").content.decode()
    assert "<strong>1</strong> waiting for a person" in page
    assert "<title>(1) " in page
    Connection.objects.filter(pk=buddy_connection.pk).update(
        last_success_at=timezone.now() - timedelta(hours=2), last_error="timeout",
        last_error_at=timezone.now(), updated_at=timezone.now())
    data_changed()
    strip = manager_client.get("/attention/", headers={"HX-Request": "true"}).content.decode()
    assert "<strong>1</strong> stale connection</a>" in strip


@pytest.fixture
def manager_client(manager):
    client = Client()
    client.force_login(manager)
    return client


HEADER = """<header class="topbar">
    <a class="brand" href="/runs/">Runboard</a>
    {}
  </header>"""
NAV = """
      <nav>
        <a href="/runs/">Runs</a>
        <a href="/inbox/">Inbox</a>
        <a href="/releases/">Releases</a>
        <a href="/trends/">Trends</a>
        <a href="/environments/">Environments</a>
        <a href="/connections/">Connections</a>
        <a href="/audit/">Audit</a>
        <a href="/profile/">API tokens</a>
        {}
      </nav>
      <form class="logout" method="post" action="/accounts/logout/">\
<input type="hidden" name="csrfmiddlewaretoken" value="{}">
        <span class="muted">{}</span> <button type="submit" class="link">Log out</button>
      </form>
    """


@pytest.mark.parametrize("staff", [False, True])
def test_the_header_is_written_as_its_template_wrote_it(staff):
    """The header is rendered once per kind of user: each user's own name (escaped) and
    a CSRF token of their own session are put in, and only staff see the admin link."""
    from django.contrib.auth.models import User

    pages = []
    for name in ('Ana "<b>"', "Kofi"):
        user = User.objects.create_user(f"{name}{staff}", password="x", is_staff=staff)
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        body = client.get("/runs/").content.decode()
        token = body.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
        escaped = user.username.replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
        admin = '<a href="/admin/">Admin</a>' if staff else ""
        assert HEADER.format(NAV.format(admin, token, escaped)) in body
        pages.append((client, token, body))
    (ana, ana_token, _), (kofi, kofi_token, _) = pages
    # Each form's token is its own session's: it logs that user out, not the other.
    assert kofi.post("/accounts/logout/", {"csrfmiddlewaretoken": ana_token}).status_code == 403
    assert ana.post("/accounts/logout/", {"csrfmiddlewaretoken": ana_token}).status_code == 302
    assert kofi.post("/accounts/logout/", {"csrfmiddlewaretoken": kofi_token}).status_code == 302


def test_a_signed_out_page_has_the_brand_alone():
    body = Client().get("/accounts/login/").content.decode()
    assert HEADER.format("") in body
    assert 'id="attention"' not in body
