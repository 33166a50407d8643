"""A release manager watches a run change live and cancels it, in a real browser."""

import pytest
from playwright.sync_api import expect

from dashboard import sync
from dashboard.models import Run
from providers.simulators.buddy import DEPLOY_PLAN

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_live_status_change_then_cancel_with_comment(page, log_in, manager, buddy_sim,
                                                     buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()

    log_in("manager", "manager-pass")
    row = page.locator(f"#run-{run.pk}")
    expect(row.locator(".badge")).to_have_text("Running")
    page.evaluate("window.__sameDocument = true")

    buddy_sim.advance(30)  # the execution now waits for approval
    sync.sync_connection(buddy_connection.pk)
    expect(row.locator(".badge")).to_have_text("Waiting")
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"

    row.get_by_role("link").click()
    page.wait_for_url(f"**/runs/{run.pk}/")
    page.fill("#cancel-comment", "Wrong version, rolling forward instead")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel run").click()
    header = page.locator("#run-live h1 .badge")
    expect(header).to_have_text("Cancelling")
    expect(page.locator(".history")).to_contain_text("Wrong version, rolling forward instead")

    buddy_sim.advance(5)
    sync.sync_connection(buddy_connection.pk)
    expect(header).to_have_text("Cancelled")
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
