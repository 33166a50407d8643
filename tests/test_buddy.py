"""Buddy.works: status mapping, the seed's payload, and the client against its simulator."""

from datetime import timedelta

import pytest

from providers.base import AuthError, InvalidRequest, RateLimited, Status
from providers.buddy import STATUS_MAP, BuddyProvider
from providers.simulators.buddy import BUILD_PLAN, DEPLOY_PLAN
from tests.conftest import load_fixture

EXPECTED = {
    "INITIAL": Status.QUEUED, "ENQUEUED": Status.QUEUED, "INPROGRESS": Status.RUNNING,
    "WAITING_FOR_APPLY": Status.WAITING, "WAITING_FOR_VARIABLES": Status.WAITING,
    "WAITING_FOR_SETTABLE_VARIABLES": Status.WAITING, "WAITING_FOR_VT_SESSION": Status.WAITING,
    "SUCCESSFUL": Status.SUCCEEDED, "FAILED": Status.FAILED, "TERMINATING": Status.CANCELLING,
    "TERMINATED": Status.CANCELLED, "NOT_EXECUTED": Status.SKIPPED, "SKIPPED": Status.SKIPPED,
}


@pytest.fixture
def client(buddy_sim):
    with BuddyProvider(buddy_sim.url, buddy_sim.token, {"workspace": "acme"}, timeout=1) as c:
        yield c


def locator(run):
    return {"project": run.data["project"], "pipeline": str(run.data["pipeline"]),
            "id": run.data["id"]}


@pytest.mark.parametrize(("raw", "expected"), EXPECTED.items())
def test_every_documented_status_maps(raw, expected):
    provider = BuddyProvider.__new__(BuddyProvider)
    assert provider.map_status(raw) == expected


def test_status_map_has_no_untested_values():
    assert set(STATUS_MAP) == set(EXPECTED)


def test_seed_example_payload_parses():
    payload = load_fixture("buddy_execution.json")
    provider = BuddyProvider.__new__(BuddyProvider)
    run = provider.parse_execution(payload, "company-website", {"id": 2})
    assert run.status == Status.RUNNING
    assert run.raw_status == "INPROGRESS"
    assert run.external_id == "company-website/2/4"
    assert run.locator == {"project": "company-website", "pipeline": "2", "id": 4}
    assert run.name == "dev #4"
    assert run.branch == "master"
    assert run.commit == "506a3963507943d6908154f4bc9646e829128a08"
    assert run.triggered_by == "Mike Benson"
    assert run.finished_at is None
    assert run.started_at.isoformat() == "2016-03-29T08:12:04.132000+00:00"
    assert run.web_url.startswith("https://app.buddy.works/buddy/company-website/")
    assert [(j.name, j.status, j.progress) for j in run.jobs] == [
        ("Upload files to dev", Status.RUNNING, 0)
    ]


def test_lists_executions_across_pages_newest_first(buddy_sim, client, monkeypatch):
    monkeypatch.setattr("providers.buddy.PAGE_SIZE", 2)
    for age in (500, 400, 300, 200, 100):
        buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=age)
    pages = list(client.list_runs())
    assert [len(p) for p in pages] == [2, 2, 1]
    ids = [r.locator["id"] for page in pages for r in page]
    assert ids == [5, 4, 3, 2, 1]
    assert client.rate_limit.limit == 1000
    assert client.rate_limit.remaining is not None


def test_incremental_listing_stops_at_older_pages(buddy_sim, client, monkeypatch):
    monkeypatch.setattr("providers.buddy.PAGE_SIZE", 2)
    for age in (5000, 4000, 3000, 20, 10):
        buddy_sim.add_execution("web-shop", 1, BUILD_PLAN, age=age)
    since = buddy_sim.clock.now() - timedelta(seconds=100)
    pages = list(client.list_runs(since=since))
    # Page 1 holds the two recent runs, page 2 is all older than `since`: no page 3.
    assert [len(p) for p in pages] == [2, 2]


def test_cancel_passes_through_terminating(buddy_sim, client):
    run = buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    assert client.get_run(locator(run)).status == Status.RUNNING
    answer = client.cancel(locator(run), comment="bad build")
    assert (answer.raw_status, answer.status) == ("TERMINATING", Status.CANCELLING)
    assert buddy_sim.requests[-1] == (
        "PATCH", "/workspaces/acme/projects/web-shop/pipelines/1/executions/1",
        {"operation": "CANCEL"},
    )
    buddy_sim.advance(5)
    assert client.get_run(locator(run)).status == Status.CANCELLED


def test_approve_moves_a_waiting_execution_on(buddy_sim, client):
    run = buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(30)
    assert client.get_run(locator(run)).raw_status == "WAITING_FOR_APPLY"
    assert client.approve(locator(run)).status == Status.RUNNING
    buddy_sim.advance(30)
    assert client.get_run(locator(run)).status == Status.SUCCEEDED


def test_retry_restarts_a_failed_execution(buddy_sim, client):
    from providers.simulators.buddy import FAILING_PLAN

    run = buddy_sim.add_execution("web-shop", 1, FAILING_PLAN)
    buddy_sim.advance(60)
    assert client.get_run(locator(run)).status == Status.FAILED
    assert client.retry(locator(run)).status == Status.QUEUED


def test_cancel_of_finished_execution_keeps_providers_message(buddy_sim, client):
    run = buddy_sim.add_execution("web-shop", 1, BUILD_PLAN)
    buddy_sim.advance(60)
    with pytest.raises(InvalidRequest) as err:
        client.cancel(locator(run), comment="too late")
    assert err.value.message == "Execution is already finished"
    assert err.value.status_code == 400


def test_bad_token_is_an_auth_error(buddy_sim):
    bad = BuddyProvider(buddy_sim.url, "wrong", {"workspace": "acme"})
    with pytest.raises(AuthError, match="Invalid or expired token"):
        list(bad.list_runs())


def test_rate_limit_carries_retry_after(buddy_sim, client):
    buddy_sim.inject("rate_limit", retry_after=7)
    with pytest.raises(RateLimited) as err:
        list(client.list_runs())
    assert err.value.retry_after == 7
    assert client.rate_limit.remaining == 0


def test_unknown_status_from_server_maps_to_unknown(buddy_sim, client):
    buddy_sim.add_execution("web-shop", 1)
    buddy_sim.inject("unknown_status", times=5)
    runs = [r for page in client.list_runs() for r in page]
    assert [r.status for r in runs] == [Status.UNKNOWN]
    assert runs[0].raw_status == "QUANTUM_SUPERPOSITION"


def test_missing_optional_fields_still_parse(buddy_sim, client):
    buddy_sim.add_execution("web-shop", 1)
    buddy_sim.inject("missing_fields", times=5)
    [run] = [r for page in client.list_runs() for r in page]
    assert run.status == Status.QUEUED
    assert (run.branch, run.web_url, run.jobs) == ("", "", [])


