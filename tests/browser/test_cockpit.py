"""The cockpit in a real browser: the inbox's bulk approve, the releases matrix, the
attention strip changing live, and the fixes a day of use found."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from dashboard import sync
from dashboard.models import ActionRecord, ApiToken, Connection, Run
from providers.base import EnvironmentData, JobData, ProjectData, RunData, Status
from providers.simulators.buddy import BUILD_PLAN, DEPLOY_PLAN, BuddySimulator
from providers.simulators.northflank import APPROVAL_PLAN, NorthflankSimulator

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RELEASE = "feed42".ljust(40, "0")


def applies(sim):
    return [path for method, path, body in sim.requests
            if method == "PATCH" and isinstance(body, dict) and body.get("operation") == "APPLY"]


@pytest.fixture
def two_workspaces(clock, buddy_sim, buddy_connection):
    """One release waiting for approval in two Buddy workspaces (two accounts), and a
    Northflank release flow waiting for an approval only Northflank's UI can give."""
    with BuddySimulator(token="billing-token", clock=clock, workspace="billing-co") as other, \
            NorthflankSimulator(token="nf-token", clock=clock) as northflank:
        buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN, age=300, revision=RELEASE)
        other.add_execution("billing", 7, DEPLOY_PLAN, age=200, revision=RELEASE,
                            creator="Ana Lima")
        northflank.add_release("web", "production", APPROVAL_PLAN, age=40)
        clock.advance(30)
        connections = [buddy_connection, Connection.objects.create(
            provider="buddy", name="Buddy billing", base_url=other.url, token=other.token,
            scope={"workspace": other.workspace}), Connection.objects.create(
            provider="northflank", name="Northflank", base_url=northflank.url,
            token=northflank.token, scope={"project": northflank.project})]
        for connection in connections:
            sync.sync_connection(connection.pk)
        yield buddy_sim, other, northflank


def test_inbox_bulk_approve_one_release_in_two_accounts(page, log_in, manager, two_workspaces):
    buddy, other, _ = two_workspaces
    log_in("manager", "manager-pass", next_url="/inbox/")
    rows = page.locator("table.inbox tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(2)).to_contain_text("Northflank does not support approve")
    expect(rows.nth(2).get_by_role("button")).to_have_count(0)

    page.get_by_role("link", name=re.compile("approve it everywhere")).click()
    page.wait_for_url("**/inbox/release/?release=*")
    expect(page.locator("input[name=run]:checked")).to_have_count(2)
    questions = []
    page.once("dialog", lambda d: (questions.append(d.message), d.accept()))
    page.get_by_role("button", name="Approve 2 runs").click()
    expect(page.locator(".results li.state-succeeded")).to_have_count(2)
    assert questions and "Approve feed42000000 in 2 places" in questions[0]
    assert len(applies(buddy)) == 1 and len(applies(other)) == 1
    assert list(ActionRecord.objects.values_list("kind", "state")) == [
        ("approve", "succeeded")] * 2


def test_inbox_dismissed_confirmation_sends_nothing(page, log_in, manager, two_workspaces):
    buddy, other, _ = two_workspaces
    log_in("manager", "manager-pass", next_url="/inbox/")
    page.get_by_role("link", name=re.compile("approve it everywhere")).click()
    page.once("dialog", lambda d: d.dismiss())
    page.get_by_role("button", name="Approve 2 runs").click()
    page.wait_for_timeout(500)
    assert applies(buddy) == [] and applies(other) == []
    assert not ActionRecord.objects.exists()


def test_reject_from_the_inbox_needs_a_comment(page, log_in, manager, two_workspaces):
    log_in("manager", "manager-pass", next_url="/inbox/")
    first = page.locator("table.inbox tbody tr").first
    first.get_by_role("button", name="Reject (cancels)").click()
    assert first.get_by_placeholder("Why reject? (required)").evaluate(
        "el => el.matches(':invalid')")
    first.get_by_placeholder("Why reject? (required)").fill("Wrong build")
    first.get_by_role("button", name="Reject (cancels)").click()
    expect(page.locator(".flash.success")).to_contain_text("Cancel sent to Buddy")
    assert ActionRecord.objects.get().comment == "Wrong build"


def _workflow(external_id, version, statuses, age):
    project = ProjectData("shop", "shop")
    names = ["Development", "Staging", "Production"]
    jobs = [JobData(f"{external_id}-{i}", f"Deploy to {n}", s, s.value, order=i,
                    environment=EnvironmentData(n.lower(), n, project))
            for i, (n, s) in enumerate(zip(names, statuses, strict=False))]
    done = all(s == Status.SUCCEEDED for s in statuses)
    status = Status.SUCCEEDED if done else Status.WAITING
    return RunData(external_id=external_id, status=status, raw_status=status.value, locator={},
                   name=f"Release {version}", version=version, pipeline_name="checkout",
                   project=project, environment=jobs[-1].environment, jobs=jobs,
                   created_at=timezone.now() - timedelta(seconds=age))


def test_releases_matrix_and_where_is_a_release(page, log_in, viewer, buddy_connection):
    S, W = Status.SUCCEEDED, Status.WAITING
    sync.upsert_runs(buddy_connection, [_workflow("r1", "3.0.0", [S, S, S], 900),
                                        _workflow("r2", "3.1.0", [S, W], 60)])
    log_in("viewer", "viewer-pass", next_url="/releases/")
    expect(page.locator("#matrix thead th")).to_have_text(
        ["Project / pipeline", "Development", "Staging", "Production"])
    row = page.locator("#matrix tbody tr").first
    expect(row.locator("td[data-environment=Development]")).to_contain_text("3.1.0")
    staging = row.locator("td[data-environment=Staging]")
    expect(staging).to_contain_text("3.0.0")
    expect(staging.locator(".now")).to_contain_text("Waiting")
    expect(staging.locator(".now")).to_contain_text("3.1.0")
    page.fill("input[name=q]", "3.1.0")
    page.keyboard.press("Enter")
    expect(page.locator(".where")).to_contain_text("deployed in Development")
    expect(page.locator(".where")).to_contain_text("waiting in Staging")
    expect(page.locator("#matrix td.hit")).to_have_count(2)


def test_attention_counts_change_live(page, log_in, viewer, buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=900)
    sync.sync_connection(buddy_connection.pk)
    log_in("viewer", "viewer-pass")
    waiting = page.locator("#attention [data-count=waiting] strong")
    expect(waiting).to_have_text("0")
    expect(page).to_have_title("Runs · Runboard")
    page.evaluate("window.__sameDocument = true")

    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN, age=100)
    sync.sync_connection(buddy_connection.pk)
    expect(waiting).to_have_text("1", timeout=12_000)
    expect(page).to_have_title("(1) Runs · Runboard")
    expect(page.locator("#favicon")).to_have_attribute("href", re.compile("favicon-alert"))
    assert page.evaluate("window.__sameDocument") is True
    page.locator("#attention [data-count=waiting]").click()
    page.wait_for_url("**/inbox/")
    expect(page.locator("table.inbox tbody tr")).to_have_count(1)


# -- the fixes ----------------------------------------------------------------------------


def test_an_ended_session_sends_the_live_page_to_login(page, log_in, viewer, buddy_connection):
    log_in("viewer", "viewer-pass", next_url="/runs/?group=failed")
    page.context.clear_cookies()
    page.wait_for_url(re.compile(r"/accounts/login/\?next=/runs/%3Fgroup%3Dfailed"),
                      timeout=12_000)
    expect(page.locator("form input[name=username]")).to_have_count(1)
    expect(page.locator("#runs")).to_have_count(0)  # not nested inside the old page


def test_live_indicator_says_offline(page, log_in, viewer, buddy_connection):
    log_in("viewer", "viewer-pass")
    state = page.locator("#live-state")
    expect(state).to_have_text("live")
    page.route(re.compile(r"/(runs|attention)/\?"), lambda route: route.abort())
    expect(state).to_have_text("offline", timeout=12_000)
    expect(page.locator(".live-label")).to_have_text("offline")
    page.unroute(re.compile(r"/(runs|attention)/\?"))
    expect(state).to_have_text("live", timeout=12_000)


def test_run_page_title_follows_its_status(page, log_in, viewer, buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    log_in("viewer", "viewer-pass", next_url=f"/runs/{run.pk}/")
    expect(page).to_have_title(re.compile(r"Deploy to production #1 · Running · Runboard$"))
    buddy_sim.advance(30)
    sync.sync_connection(buddy_connection.pk)
    expect(page).to_have_title("(1) Deploy to production #1 · Waiting · Runboard",
                               timeout=12_000)


def test_focus_survives_a_live_refresh(page, log_in, viewer, buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=900)
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN, age=10)
    sync.sync_connection(buddy_connection.pk)
    newest = Run.objects.order_by("-created_at").first()
    log_in("viewer", "viewer-pass")
    page.keyboard.press("j")
    row = page.locator(f"#run-{newest.pk}")
    expect(row.locator("a").first).to_be_focused()
    buddy_sim.advance(30)  # the newest now waits: its row is swapped in
    sync.sync_connection(buddy_connection.pk)
    expect(row.locator(".badge")).to_have_text("Waiting", timeout=12_000)
    expect(row.locator("a").first).to_be_focused()
    page.keyboard.press("j")  # and the keys carry on from there
    expect(page.locator("#runs tbody tr").nth(1).locator("a").first).to_be_focused()


def test_question_mark_shows_keys_and_escape_leaves_search(page, log_in, viewer,
                                                           buddy_connection):
    log_in("viewer", "viewer-pass")
    expect(page.locator("#keys")).not_to_be_visible()
    page.keyboard.press("?")
    expect(page.locator("#keys")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#keys")).not_to_be_visible()
    page.keyboard.press("/")
    search = page.locator("input[name=q]")
    expect(search).to_be_focused()
    page.keyboard.press("Escape")
    expect(search).not_to_be_focused()
    page.keyboard.press("?")  # keys work again: focus left the field
    expect(page.locator("#keys")).to_be_visible()


def test_token_creation_redirects_so_a_reload_creates_nothing(page, log_in, viewer):
    log_in("viewer", "viewer-pass", next_url="/profile/")
    page.fill("input[name=name]", "chat bot")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#new-token")).to_be_visible()
    page.reload()
    expect(page.locator("#new-token")).to_have_count(0)
    assert ApiToken.objects.count() == 1


def test_force_cancel_confirmation_says_it_forces(page, log_in, manager, clock):
    from providers.simulators.qovery import QoverySimulator
    with QoverySimulator(token="q-token", clock=clock) as sim:
        org = sim.add_organization("Acme")
        env = sim.add_environment(sim.add_project(org, "shop"), "production")
        sim.add_deployment(env, age=10)
        connection = Connection.objects.create(provider="qovery", name="Qovery",
                                               base_url=sim.url, token=sim.token,
                                               scope={"organization": org})
        sync.sync_connection(connection.pk)
        run = Run.objects.get()
        log_in("manager", "manager-pass", next_url=f"/runs/{run.pk}/")
        page.get_by_label("Comment").first.fill("stuck")
        page.get_by_role("checkbox", name="Force cancel").check()
        questions = []
        page.once("dialog", lambda d: (questions.append(d.message), d.dismiss()))
        page.get_by_role("button", name="Cancel run").click()
        page.wait_for_timeout(300)
        assert questions and questions[0].startswith("FORCE cancel"), questions
        page.get_by_role("checkbox", name="Force cancel").uncheck()
        page.once("dialog", lambda d: (questions.append(d.message), d.dismiss()))
        page.get_by_role("button", name="Cancel run").click()
        page.wait_for_timeout(300)
        assert questions[1].startswith("Cancel "), questions


def test_times_show_their_timezone(page, log_in, viewer, buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=900)
    sync.sync_connection(buddy_connection.pk)
    log_in("viewer", "viewer-pass")  # the browser is in Europe/Paris (UTC+1 in November)
    created = page.locator("#runs tbody time").first
    expect(created).to_have_attribute("title", re.compile(r"(GMT\+1|CET)$"))


def _many_runs(connection, count):
    sync.upsert_runs(connection, [RunData(
        external_id=f"many-{i}", status=Status.SUCCEEDED, raw_status="SUCCESSFUL", locator={},
        name=f"Deploy web-shop to production with a long descriptive name #{i}",
        branch="release/2026-11-with-a-long-branch-name", version=f"2.4.{i}",
        commit=f"{i:040x}", triggered_by="Anastasia Lima-Oyelaran",
        pipeline_name="Deploy to production", project=ProjectData("web-shop", "web-shop"),
        environment=EnvironmentData("prod", "production"),
        created_at=timezone.now() - timedelta(minutes=i),
        started_at=timezone.now() - timedelta(minutes=i),
        finished_at=timezone.now() - timedelta(minutes=i) + timedelta(seconds=90),
    ) for i in range(count)])


def _visible_rows(page, height):
    return page.evaluate("""(height) => [...document.querySelectorAll('#runs tbody tr')]
        .filter(tr => tr.getBoundingClientRect().bottom <= height).length""", height)


def test_25_runs_fit_on_a_laptop_and_a_phone_sees_runs_first(browser, live_server, viewer,
                                                            buddy_connection):
    _many_runs(buddy_connection, 40)
    for size, check in (({"width": 1366, "height": 900}, "laptop"),
                        ({"width": 390, "height": 844}, "phone")):
        context = browser.new_context(base_url=live_server.url, viewport=size)
        page = context.new_page()
        page.goto("/accounts/login/?next=/runs/")
        page.fill("input[name=username]", "viewer")
        page.fill("input[name=password]", "viewer-pass")
        page.click("button[type=submit]")
        page.wait_for_url("**/runs/")
        if check == "laptop":
            assert _visible_rows(page, size["height"]) >= 25
            heights = page.evaluate("""() => [...document.querySelectorAll('#runs tbody tr')]
                .map(tr => Math.round(tr.getBoundingClientRect().height))""")
            assert max(heights) <= 30, heights  # one line each
        else:
            top = page.evaluate(
                "() => document.querySelector('#runs tbody tr').getBoundingClientRect().top")
            assert top < size["height"] / 2, top
            expect(page.locator(".more-filters select").first).not_to_be_visible()
        context.close()
