"""No usable answer is not a refusal: the outcome is unknown until the run, re-read at
once, shows it. The simulators carry the action out and then drop the connection,
answer garbage, or answer after the client gave up."""

import time
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.db import connection as db

from dashboard import sync
from dashboard.models import ActionRecord, ApiToken, Run
from providers.base import Status
from providers.simulators.buddy import BUILD_PLAN, DEPLOY_PLAN

pytestmark = pytest.mark.django_db

PATCH = "PATCH"


@pytest.fixture
def running(synced_run):
    return synced_run


def cancel(client, user, run, comment="stop it"):
    _, key = ApiToken.issue(user, "bot")
    return client.post(f"/api/runs/{run.pk}/cancel/", {"comment": comment},
                       content_type="application/json", headers={"Authorization": f"Bearer {key}"})


def patches(sim):
    return [r for r in sim.requests if r[0] == PATCH]


@pytest.mark.parametrize("fault", ["disconnect", "malformed"])
def test_no_answer_but_the_run_shows_it_done_is_reconciled(client, manager, running, buddy_sim,
                                                           fault):
    buddy_sim.inject(fault)  # the simulator cancels, then drops the answer or garbles it
    response = cancel(client, manager, running)
    assert response.status_code == 200
    body = response.json()
    assert body["result"] == "reconciled"
    assert body["message"].startswith("No answer came from Buddy.works (")
    assert "Runboard re-read the run: it is now cancelling, so the cancel was carried out." \
        in body["message"]
    assert body["run"]["status"] == "cancelling"
    assert len(patches(buddy_sim)) == 1
    record = ActionRecord.objects.get()
    assert record.state == ActionRecord.State.RECONCILED
    assert "refused" not in record.response
    assert Run.objects.get().status == Status.CANCELLING


def test_a_timeout_is_unknown_and_the_user_is_told_to_check_first(client, manager, running,
                                                                  buddy_sim, settings):
    settings.RUNBOARD_PROVIDER_TIMEOUT = 0.5
    buddy_sim.inject("slow", seconds=1.5)  # the cancel lands after the client gave up
    response = cancel(client, manager, running)
    assert response.status_code == 502
    body = response.json()
    assert body["result"] == "unknown"
    assert "refused" not in body["error"]
    assert body["error"].startswith("No answer came from Buddy.works (Buddy.works did not "
                                    "answer in time")
    assert ("Runboard re-read the run: it is now running. The cancel may or may not have been "
            "carried out: check the run's state before trying again.") in body["error"]
    record = ActionRecord.objects.get()
    assert (record.state, record.finished_at is not None) == ("unknown", True)
    # The run page says so where the buttons are, so nobody clicks again blindly.
    client.force_login(manager)
    page = client.get(f"/runs/{running.pk}/").content.decode()
    assert ("The cancel sent by manager got no answer from Buddy.works: it may or may not "
            "have been carried out. Check the run's state above before acting again.") in page
    assert 'class="state-unknown">Outcome unknown<' in page
    time.sleep(1.2)  # the simulator carries the late cancel out; the next sync shows it
    sync.sync_connection(running.connection_id)
    assert Run.objects.get().status == Status.CANCELLING
    assert len(patches(buddy_sim)) == 1


def test_when_the_re_read_fails_too_the_outcome_stays_unknown(client, manager, running,
                                                              buddy_sim):
    buddy_sim.inject("disconnect", times=2)  # the cancel's answer and the re-read's
    response = cancel(client, manager, running)
    assert response.status_code == 502
    message = response.json()["error"]
    assert "Runboard could not re-read the run either" in message
    assert "check the run's state before trying again" in message
    assert ActionRecord.objects.get().state == "unknown"


def test_htmx_shows_the_reconciled_outcome_in_plain_words(client, manager, running, buddy_sim):
    buddy_sim.inject("disconnect")
    client.force_login(manager)
    response = client.post(f"/runs/{running.pk}/cancel/", {"comment": "stop"},
                           headers={"HX-Request": "true"})
    html = response.content.decode()
    assert "No answer came from Buddy.works" in html
    assert "it is now cancelling, so the cancel was carried out." in html
    assert "The provider refused" not in html


def test_a_provider_refusal_stays_failed(client, manager, running, buddy_sim):
    buddy_sim.transition(running.sim_run, [DEPLOY_PLAN[-1]])  # finished meanwhile: a 400
    response = cancel(client, manager, running)
    assert response.status_code == 502
    assert response.json()["result"] == "failed"
    assert response.json()["error"] == "The provider refused: Execution is already finished"
    assert ActionRecord.objects.get().state == "failed"


def test_a_server_error_is_unknown_not_refused(client, manager, running, buddy_sim):
    """A 5xx may come after the work was done; the re-read shows it was not."""
    buddy_sim.inject("error_503")
    response = cancel(client, manager, running)
    assert response.status_code == 502
    body = response.json()
    assert body["result"] == "unknown"
    assert "it is now running" in body["error"]
    assert "Internal error" in body["provider_response"]  # the provider's own words, kept


def test_an_answer_that_does_not_move_the_run_still_ends_the_intent(client, manager, running,
                                                                    buddy_sim):
    """Where the answer leaves the run as we hold it (here: we hold a later observation,
    so the answer is not written), the state check is no wiser: the record of the
    action done, newer than the run's last change, refuses the same action again."""
    Run.objects.filter(pk=running.pk).update(
        observed_at=running.observed_at + timedelta(hours=1))
    assert cancel(client, manager, running).status_code == 200
    assert Run.objects.get().status == Status.RUNNING  # the answer was not written
    again = cancel(client, manager, running)
    assert again.status_code == 409
    assert "was already sent by manager" in again.json()["error"]
    assert len(patches(buddy_sim)) == 1
    assert list(ActionRecord.objects.order_by("id").values_list("state", flat=True)) == [
        "succeeded", "failed"]
    # Once the run changes (the next sync shows it), the rule no longer applies.
    buddy_sim.transition(running.sim_run, [DEPLOY_PLAN[1]])
    Run.objects.filter(pk=running.pk).update(observed_at=running.observed_at, fingerprint="")
    sync.sync_connection(running.connection_id)
    assert "was already sent" not in cancel(client, manager, running).json().get("error", "")


def test_the_database_keeps_unknown_and_reconciled_records_as_written(client, manager, running,
                                                                      buddy_sim):
    buddy_sim.inject("disconnect")
    cancel(client, manager, running)  # reconciled
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    sync.sync_connection(running.connection_id)
    other = Run.objects.exclude(pk=running.pk).get()
    buddy_sim.inject("disconnect", times=2)
    cancel(client, manager, other)  # unknown: the re-read failed too
    states = dict(ActionRecord.objects.values_list("state", "pk"))
    assert set(states) == {"unknown", "reconciled"}
    for pk in states.values():
        with pytest.raises(IntegrityError, match="append-only"), transaction.atomic(), \
                db.cursor() as cursor:
            cursor.execute("UPDATE dashboard_actionrecord SET state = 'succeeded' WHERE id = %s",
                           [pk])


def test_a_later_sync_settles_an_unknown_cancel_that_was_carried_out(client, manager, running,
                                                                     buddy_sim):
    buddy_sim.inject("disconnect", times=2)  # cancelled, but no answer and no re-read
    assert cancel(client, manager, running).status_code == 502
    unknown = ActionRecord.objects.get()
    assert unknown.state == "unknown"

    for _ in range(2):  # the second sync finds it settled already
        buddy_sim.advance(1)
        sync.sync_connection(running.connection_id)
    follow_up = ActionRecord.objects.exclude(pk=unknown.pk).get()
    assert (follow_up.state, follow_up.settles_id, follow_up.user_id) == (
        "reconciled", unknown.pk, manager.pk)
    assert "now shows the run cancel" in follow_up.response
    assert follow_up.response.endswith("so the cancel was carried out.")
    unknown.refresh_from_db()
    assert unknown.state == "unknown"  # the audit keeps what was known then
    assert len(patches(buddy_sim)) == 1


def test_a_later_sync_settles_an_unknown_cancel_of_a_run_that_finished(client, manager,
                                                                       buddy_sim,
                                                                       buddy_connection):
    buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    buddy_sim.advance(10)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    buddy_sim.inject("error_503")  # refused before any work: the run goes on
    assert cancel(client, manager, run).json()["result"] == "unknown"
    buddy_sim.advance(10)
    sync.sync_connection(buddy_connection.pk)  # still running: nothing to judge by
    assert ActionRecord.objects.count() == 1

    buddy_sim.advance(60)
    sync.sync_connection(buddy_connection.pk)
    follow_up = ActionRecord.objects.get(settles__isnull=False)
    assert follow_up.state == "failed"
    assert follow_up.response.endswith(
        "Buddy.works now shows the run succeeded, so the cancel was not carried out.")
