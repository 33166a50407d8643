"""Run pages show exactly the actions each provider has and the run's state allows;
cancel needs a comment; force cancel only where the provider has it."""

import random
import re

import pytest

from dashboard import sync
from dashboard.models import ActionRecord, Connection, Run
from providers import registry
from providers.base import Action, Status
from providers.simulators import SIMULATORS
from providers.simulators.base import SimClock
from providers.simulators.buddy import DEPLOY_PLAN

pytestmark = pytest.mark.django_db

# Written out here rather than taken from Run.available_actions, so the page is checked
# against the rule and not against itself.
ALLOWED_BY_STATE = {
    Action.CANCEL: {Status.QUEUED, Status.RUNNING, Status.WAITING},
    Action.APPROVE: {Status.WAITING},
    Action.REJECT: {Status.WAITING},
    Action.RETRY: {Status.FAILED, Status.CANCELLED},
}
BUTTON_LABELS = {Action.CANCEL: "Cancel run", Action.APPROVE: "Approve",
                 Action.REJECT: "Reject", Action.RETRY: "Retry"}


def expected_actions(provider, run) -> set[str]:
    newer_in_environment = Run.objects.filter(
        environment=run.environment, created_at__gt=run.created_at).exists()
    if provider.acts_on_environment and run.environment and newer_in_environment:
        return set()  # its actions would reach the environment's newer run
    return {a.value for a in Action
            if a in provider.actions and run.status in ALLOWED_BY_STATE[a]}


def action_forms(html: str, run: Run) -> set[str]:
    """The actions the page offers: forms posting to /runs/<pk>/<kind>/."""
    return set(re.findall(rf'<form[^>]*\saction="/runs/{run.pk}/(\w+)/"', html))


def buttons(html: str) -> set[str]:
    return {label for label in re.findall(r"<button[^>]*>([^<]+)</button>", html)}


@pytest.fixture
def synced(demo):
    """One provider's simulator with its demo data (see conftest), synced."""
    sync.sync_connection(demo[1].pk)
    return demo


def one_run_per_status(connection) -> list[Run]:
    """The newest run of each status, plus one that a newer run in its environment
    superseded (where the provider acts on environments)."""
    runs = {}
    for run in Run.objects.filter(connection=connection).order_by("-created_at"):
        if connection.provider_class.acts_on_environment and run.is_superseded():
            runs.setdefault("superseded", run)
        else:
            runs.setdefault(run.status, run)
    return list(runs.values())


def test_run_pages_show_exactly_the_allowed_actions(client, manager, synced):
    _sim, connection = synced
    provider = connection.provider_class
    client.force_login(manager)
    runs = one_run_per_status(connection)
    assert runs, "the demo data should have runs"
    offered_anywhere = set()
    for run in runs:
        html = client.get(f"/runs/{run.pk}/").content.decode()
        expected = expected_actions(provider, run)
        offered = action_forms(html, run)
        assert offered == expected, (provider.key, run.status, offered)
        offered_anywhere |= offered
        labels = buttons(html)
        for action in Action:
            shown = BUTTON_LABELS[action] in labels
            assert shown == (action.value in expected), (provider.key, run.status, action)
        has_force = 'name="force_cancel"' in html
        assert has_force == (provider.has_force_cancel and "cancel" in expected)
        if has_force:
            assert provider.force_cancel_help
            assert provider.force_cancel_help in html
    # The demo data exercises every action the provider has, or the test proves little.
    live = {Status.QUEUED, Status.RUNNING, Status.WAITING}
    assert any(r.status in live for r in runs) and any(r.status not in live for r in runs)
    assert offered_anywhere == {a.value for a in provider.actions}


def test_a_viewer_sees_no_actions(client, viewer, synced):
    _sim, connection = synced
    client.force_login(viewer)
    for run in one_run_per_status(connection):
        html = client.get(f"/runs/{run.pk}/").content.decode()
        assert action_forms(html, run) == set()
        assert not buttons(html) & set(BUTTON_LABELS.values())
        assert 'name="force_cancel"' not in html
        assert 'name="comment"' not in html


def test_providers_say_what_force_cancel_does():
    for provider in registry.PROVIDERS.values():
        if provider.has_force_cancel:
            assert Action.CANCEL in provider.actions
            assert provider.force_cancel_help.strip(), provider.key


# --- cancel needs a comment; force only where the provider has it -------------------


@pytest.fixture
def qovery(db):
    sim = SIMULATORS["qovery"](token="qovery-ui-token", clock=SimClock(speed=0))
    scope = sim.seed_demo(random.Random(2))
    with sim:
        connection = Connection.objects.create(
            provider="qovery", name="Qovery", base_url=sim.url, token=sim.token, scope=scope)
        sync.sync_connection(connection.pk)
        yield sim, connection


def live_run(connection) -> Run:
    return Run.objects.filter(connection=connection, status=Status.RUNNING).first()


@pytest.mark.parametrize("comment", ["", "   "])
def test_htmx_cancel_without_a_comment_is_refused(client, manager, qovery, comment):
    sim, connection = qovery
    run = live_run(connection)
    client.force_login(manager)
    sent = len(sim.requests)
    data = {"comment": comment, "force_cancel": "on"}
    response = client.post(f"/runs/{run.pk}/cancel/", data, headers={"HX-Request": "true"})
    # htmx swaps only 2xx answers: the refusal comes as the run panel with the message
    # where the form was (see run_action), shown as an alert.
    assert response.status_code == 200
    html = response.content.decode()
    assert '<p class="flash error" role="alert">A comment is required to cancel a run.</p>' in html
    assert "<html" not in html
    assert f'action="/runs/{run.pk}/cancel/"' in html  # the form is still there to fix
    assert len(sim.requests) == sent
    assert not ActionRecord.objects.filter(state=ActionRecord.State.SUCCEEDED).exists()
    assert not ActionRecord.objects.exists()
    run.refresh_from_db()
    assert run.status == Status.RUNNING

    # Without htmx (no JavaScript) the same refusal is a 400 page.
    response = client.post(f"/runs/{run.pk}/cancel/", data)
    assert response.status_code == 400
    assert b"A comment is required to cancel a run." in response.content
    assert len(sim.requests) == sent
    assert not ActionRecord.objects.exists()


def test_htmx_force_cancel_is_sent_and_audited(client, manager, qovery):
    sim, connection = qovery
    run = live_run(connection)
    client.force_login(manager)
    response = client.post(f"/runs/{run.pk}/cancel/",
                           {"comment": "force it", "force_cancel": "on"},
                           headers={"HX-Request": "true"})
    assert b"Cancel sent to Qovery." in response.content
    assert ("POST", f"/environment/{run.locator['environment']}/cancelDeployment",
            {"force_cancel": True}) in sim.requests
    record = ActionRecord.objects.get()
    assert (record.state, record.options, record.comment) == (
        "succeeded", {"force_cancel": True}, "force it")
    assert b"Cancel (force)" in response.content


def test_force_cancel_is_refused_where_the_provider_has_none(client, manager, buddy_sim,
                                                            buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    client.force_login(manager)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "cancel" in action_forms(page, run)
    assert 'name="force_cancel"' not in page
    sent = len(buddy_sim.requests)
    response = client.post(f"/runs/{run.pk}/cancel/", {"comment": "x", "force_cancel": "on"},
                           headers={"HX-Request": "true"})
    assert b"Buddy.works has no force cancel." in response.content
    assert len(buddy_sim.requests) == sent
    assert not ActionRecord.objects.exists()
