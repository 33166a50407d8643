"""Cancelling from a run page in a real browser: force cancel (Qovery), no force where a
provider has none (Buddy), and a comment that cannot be left out."""

import random

import pytest
from playwright.sync_api import expect

from dashboard import sync
from dashboard.models import ActionRecord, Connection, Run
from providers.base import FINISHED, Status
from providers.qovery import QoveryProvider
from providers.simulators.buddy import DEPLOY_PLAN
from providers.simulators.qovery import QoverySimulator

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HEADER_BADGE = "#run-live h1 .badge"


@pytest.fixture
def qovery(clock):
    """A Qovery simulator with its demo data (two live deployments), synced."""
    with QoverySimulator(token="qovery-ui-token", clock=clock) as sim:
        scope = sim.seed_demo(random.Random(11))
        connection = Connection.objects.create(
            provider="qovery", name="Qovery prod", base_url=sim.url, token=sim.token,
            scope=scope)
        sync.sync_connection(connection.pk)
        yield sim, connection


def live_qovery_run(connection, environment="preview-123") -> Run:
    # seed_demo leaves preview-123 building (12 s old) and production deploying (40 s old).
    run = Run.objects.get(connection=connection, environment__name=environment,
                          status=Status.RUNNING)
    assert run.status not in FINISHED
    return run


def cancel_requests(sim):
    return [(path, body) for method, path, body in sim.requests
            if method == "POST" and path.endswith("/cancelDeployment")]


def test_force_cancel_a_live_qovery_run(page, log_in, manager, qovery):
    sim, connection = qovery
    run = live_qovery_run(connection)
    log_in("manager", "manager-pass", next_url=f"/runs/{run.pk}/")
    expect(page.locator(HEADER_BADGE)).to_have_text("Running")

    force = page.get_by_role("checkbox", name="Force cancel")
    expect(force).to_be_visible()
    expect(force).not_to_be_checked()
    expect(page.locator("form.cancel")).to_contain_text(QoveryProvider.force_cancel_help)
    # The explanation is tied to the checkbox, for screen readers too.
    expect(force).to_have_accessible_description(QoveryProvider.force_cancel_help)

    force.check()
    page.get_by_label("Comment").first.fill("Stuck lifecycle job, forcing it")
    dialogs = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Cancel run").click()

    expect(page.locator(HEADER_BADGE)).to_have_text("Cancelling")
    expect(page.locator(".flash.success")).to_contain_text("Cancel sent to Qovery prod")
    expect(page.locator(".history")).to_contain_text("Cancel (force)")
    expect(page.locator(".history")).to_contain_text("Stuck lifecycle job, forcing it")
    assert dialogs and run.name in dialogs[0] and "preview-123" in dialogs[0], dialogs

    environment_id = run.locator["environment"]
    assert cancel_requests(sim) == [
        (f"/environment/{environment_id}/cancelDeployment", {"force_cancel": True})]
    record = ActionRecord.objects.get(run=run)
    assert (record.kind, record.state, record.user) == ("cancel", "succeeded", manager)
    assert record.options == {"force_cancel": True}
    assert record.comment == "Stuck lifecycle job, forcing it"

    sim.advance(10)  # CANCELING lasts 4 s in the simulator
    sync.sync_connection(connection.pk)
    page.reload()
    expect(page.locator(HEADER_BADGE)).to_have_text("Cancelled")
    expect(page.locator(".facts")).to_contain_text("CANCELED")
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    expect(page.get_by_role("checkbox", name="Force cancel")).to_have_count(0)


def test_a_cancel_without_force_sends_force_false(page, log_in, manager, qovery):
    sim, connection = qovery
    run = live_qovery_run(connection, "production")
    log_in("manager", "manager-pass", next_url=f"/runs/{run.pk}/")
    page.get_by_label("Comment").first.fill("Wrong commit")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator(HEADER_BADGE)).to_have_text("Cancelling")
    assert [body for _, body in cancel_requests(sim)] == [{"force_cancel": False}]
    assert ActionRecord.objects.get().options == {}


def test_force_and_comment_survive_a_live_refresh(page, log_in, manager, qovery):
    """The page refreshes itself while the user fills the form: what they ticked and
    wrote must still be there when they click, or they would cancel without force."""
    sim, connection = qovery
    run = live_qovery_run(connection)
    log_in("manager", "manager-pass", next_url=f"/runs/{run.pk}/")
    page.get_by_role("checkbox", name="Force cancel").check()
    page.get_by_label("Comment").first.fill("Forcing after the refresh")

    sim.advance(25)  # BUILDING -> DEPLOYING: still cancellable, but the run changed
    sync.sync_connection(connection.pk)
    expect(page.locator(".facts")).to_contain_text("DEPLOYING", timeout=10_000)

    expect(page.get_by_role("checkbox", name="Force cancel")).to_be_checked()
    expect(page.get_by_label("Comment").first).to_have_value("Forcing after the refresh")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator(HEADER_BADGE)).to_have_text("Cancelling")
    assert [body for _, body in cancel_requests(sim)] == [{"force_cancel": True}]


def test_buddy_cancel_form_has_no_force_checkbox(page, log_in, manager, buddy_sim,
                                                 buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    assert run.status == Status.RUNNING
    log_in("manager", "manager-pass", next_url=f"/runs/{run.pk}/")
    form = page.locator("form.cancel")
    expect(form.get_by_role("button", name="Cancel run")).to_be_visible()
    expect(form.get_by_label("Comment")).to_be_visible()
    expect(page.locator("input[name=force_cancel]")).to_have_count(0)
    expect(page.get_by_text("Force cancel")).to_have_count(0)


def test_an_empty_comment_cannot_be_sent(page, log_in, manager, qovery):
    sim, connection = qovery
    run = live_qovery_run(connection)
    log_in("manager", "manager-pass", next_url=f"/runs/{run.pk}/")
    sent = len(sim.requests)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    comment = page.get_by_label("Comment").first

    # Nothing written: the browser refuses to submit and says why, before any dialog.
    page.get_by_role("checkbox", name="Force cancel").check()
    page.get_by_role("button", name="Cancel run").click()
    page.wait_for_timeout(300)
    assert comment.evaluate("el => el.matches(':invalid')")
    assert comment.evaluate("el => el.validationMessage")
    assert dialogs == []
    expect(page.locator(HEADER_BADGE)).to_have_text("Running")

    # Only spaces: the browser lets it through, Runboard refuses it and says why.
    comment.fill("   ")
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator(".flash.error")).to_have_text("A comment is required to cancel a run.")
    assert len(dialogs) == 1  # confirmed, then refused by Runboard
    expect(page.locator(HEADER_BADGE)).to_have_text("Running")
    expect(page.get_by_role("button", name="Cancel run")).to_be_visible()

    assert len(sim.requests) == sent
    assert cancel_requests(sim) == []
    assert not ActionRecord.objects.filter(state=ActionRecord.State.SUCCEEDED).exists()
    run.refresh_from_db()
    assert run.status == Status.RUNNING
