"""Under the Content-Security-Policy the pages still work: nothing blocked, polls still run."""

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from dashboard import sync
from dashboard.models import Run
from providers.simulators.buddy import DEPLOY_PLAN

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_no_page_trips_the_policy_and_live_polls_still_run(page, log_in, buddy_sim,
                                                          buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    User.objects.create_superuser("root", password="root-pass")
    blocked = []
    page.on("console", lambda msg: blocked.append(msg.text)
            if "Content Security Policy" in msg.text or "unsafe-eval" in msg.text else None)

    log_in("root", "root-pass")
    # The run list polls (every 3 s) without an evaluated hx-trigger filter.
    with page.expect_request(lambda r: r.headers.get("hx-request") == "true"
                             and "/runs/" in r.url, timeout=10_000):
        pass
    for url in (f"/runs/{run.pk}/", "/environments/", "/connections/", "/audit/",
                "/profile/", "/api/docs", "/admin/", "/admin/dashboard/connection/add/",
                f"/admin/dashboard/run/{run.pk}/change/"):
        page.goto(url)
        page.wait_for_load_state("load")
    page.goto(f"/runs/{run.pk}/")
    expect(page.locator("#run-live")).to_be_visible()
    with page.expect_request(lambda r: r.headers.get("hx-request") == "true", timeout=10_000):
        pass
    assert blocked == []
