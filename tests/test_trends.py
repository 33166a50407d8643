"""Trends per pipeline and environment: DORA-style figures from Runboard's own history."""

from datetime import timedelta

import pytest
from django.utils import timezone

from dashboard import sync
from providers.base import EnvironmentData, ProjectData, RunData, Status

pytestmark = pytest.mark.django_db

S, F = Status.SUCCEEDED, Status.FAILED


def deployment(n, status, hours_ago, minutes, environment="production", pipeline="deploy"):
    started = timezone.now() - timedelta(hours=hours_ago)
    return RunData(
        external_id=f"{pipeline}-{environment}-{n}", status=status, raw_status=status.value,
        locator={}, project=ProjectData("shop", "shop"), pipeline_name=pipeline,
        environment=EnvironmentData(environment, environment), created_at=started,
        started_at=started, finished_at=started + timedelta(minutes=minutes))


@pytest.fixture
def history(buddy_connection):
    sync.upsert_runs(buddy_connection, [
        deployment(1, S, 200, 4),  # 8 days ago: only in the 30-day window
        deployment(2, S, 100, 2),
        deployment(3, F, 50, 10),
        deployment(4, F, 49, 10),
        deployment(5, S, 47, 6),  # restores: 3 h after the first failure ended
        deployment(6, S, 10, 8),
        deployment(7, S, 5, 3, environment="staging"),
        RunData(external_id="running", status=Status.RUNNING, raw_status="x", locator={},
                pipeline_name="deploy", environment=EnvironmentData("production", "production"),
                created_at=timezone.now()),
    ])


def test_trends_per_pipeline_and_environment(client, viewer, history):
    client.force_login(viewer)
    response = client.get("/trends/")
    rows = {r["environment"]: r for r in response.context["rows"]}
    prod = rows["production"]
    assert (prod["deployments"], prod["success_rate"], prod["change_failure_rate"]) == (5, 60, 40)
    assert prod["median"] == timedelta(minutes=8)
    assert prod["p90"] == timedelta(minutes=10)
    # from the first failure's end (50 h ago + 10 min) to the next success's (47 h + 6 min)
    assert round(prod["restore"].total_seconds()) == 3 * 3600 - 4 * 60
    assert not prod["unrestored"]
    assert rows["staging"]["deployments"] == 1
    body = response.content.decode()
    assert '<svg class="spark"' in body
    assert '<rect class="bad"' in body and '<rect class="ok"' in body
    month = client.get("/trends/?days=30").context["rows"]
    assert {r["environment"]: r["deployments"] for r in month} == {"production": 6, "staging": 1}
    assert client.get("/trends/?days=nonsense").context["days"] == 7


def test_a_failure_not_yet_restored_is_flagged(client, viewer, buddy_connection):
    sync.upsert_runs(buddy_connection, [deployment(1, S, 20, 2), deployment(2, F, 10, 2)])
    client.force_login(viewer)
    [row] = client.get("/trends/").context["rows"]
    assert row["unrestored"] and row["restore"] is None
    assert b'status-failed">failing' in client.get("/trends/").content
