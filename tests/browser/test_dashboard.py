"""The dashboard in a real browser: filters in the URL, approve, retry, viewers, errors."""

import re

import pytest
from playwright.sync_api import expect

from dashboard import sync
from dashboard.models import ActionRecord, Run
from providers.simulators.buddy import BUILD_PLAN, DEPLOY_PLAN, FAILING_PLAN

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def three_runs(buddy_sim, buddy_connection):
    runs = {
        "ok": buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=900, branch="main"),
        "failed": buddy_sim.add_execution("web-shop", 1, FAILING_PLAN, age=600,
                                          branch="hotfix/login"),
        "waiting": buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN, age=30,
                                           branch="release/2.4"),
    }
    sync.sync_connection(buddy_connection.pk)
    return {key: Run.objects.get(external_id=f"web-shop/1/{sim_run.id[2]}")
            for key, sim_run in runs.items()}


def test_filter_and_share_the_url(page, log_in, viewer, three_runs):
    log_in("viewer", "viewer-pass")
    expect(page.locator("#runs tbody tr")).to_have_count(3)
    page.get_by_text("Filters").click()  # collapsed until one is set
    page.select_option("select[name=group]", "failed")
    expect(page).to_have_url(re.compile(r"group=failed"))
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    expect(page.locator("#runs tbody tr .badge")).to_have_text("Failed")
    shared = page.url

    other = page.context.new_page()  # a colleague pastes the link
    other.goto(shared)
    expect(other.locator("#runs tbody tr")).to_have_count(1)
    expect(other.locator("select[name=group]")).to_have_value("failed")
    other.close()


def test_viewer_sees_no_action_buttons(page, log_in, viewer, three_runs):
    log_in("viewer", "viewer-pass", next_url=f"/runs/{three_runs['waiting'].pk}/")
    expect(page.locator("#run-live h1 .badge")).to_have_text("Waiting")
    expect(page.locator(".actions button")).to_have_count(0)


def test_approve_a_waiting_run(page, log_in, manager, three_runs):
    run = three_runs["waiting"]
    log_in("manager", "manager-pass", next_url=f"/runs/{run.pk}/")
    page.fill("#approve-comment", "Looks good in staging")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#run-live h1 .badge")).to_have_text("Running")
    expect(page.locator(".flash.success")).to_contain_text("Approve sent to Buddy")
    assert ActionRecord.objects.get().comment == "Looks good in staging"


def test_retry_a_failed_run(page, log_in, manager, three_runs):
    run = three_runs["failed"]
    log_in("manager", "manager-pass", next_url=f"/runs/{run.pk}/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#run-live h1 .badge")).to_have_text("Queued")


def test_the_providers_refusal_is_shown(page, log_in, manager, buddy_sim, three_runs):
    run = three_runs["waiting"]
    sim_run = buddy_sim.runs[("web-shop", 1, int(run.locator["id"]))]
    log_in("manager", "manager-pass", next_url=f"/runs/{run.pk}/")
    buddy_sim.transition(sim_run, [DEPLOY_PLAN[-1]])  # finishes before our next sync
    page.fill("#cancel-comment", "stop it")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator(".flash.error")).to_have_text(
        "The provider refused: Execution is already finished")


def test_dismissing_the_confirmation_sends_nothing(page, log_in, manager, buddy_sim,
                                                  three_runs):
    run = three_runs["waiting"]
    log_in("manager", "manager-pass", next_url=f"/runs/{run.pk}/")
    sent = len(buddy_sim.requests)
    page.fill("#cancel-comment", "maybe not")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Cancel run").click()
    page.wait_for_timeout(500)
    assert len(buddy_sim.requests) == sent
    assert not ActionRecord.objects.exists()
