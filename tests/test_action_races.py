"""At most one provider call per action intent, whatever the interleaving.

Twenty requests for the same action on the same run are released at once against a
real multi-threaded server (pytest-django's live server, each thread on its own
PostgreSQL session); the simulators count what reaches the provider.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from dashboard import sync
from dashboard.models import ActionRecord, ApiToken, Connection, Run
from providers.base import Action
from providers.simulators import SIMULATORS
from providers.simulators.base import SimClock
from providers.simulators.buddy import DEPLOY_PLAN
from providers.simulators.qovery import BUILD_FAILS_PLAN
from tests.celery_worker import wait_for
from tests.ports import free_port

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent

CONCURRENT = 20
ROUNDS = 3
STAGGER = 0.005
# Every simulator's action endpoints are its only POST and PATCH routes.
ACTION_METHODS = {"POST", "PATCH"}


def fire(url: str, headers: dict[str, str], body: dict, n: int = CONCURRENT) -> list:
    """Send `n` identical POSTs; return their responses.

    They leave 5 ms apart, so that some arrive while the first is in flight and some
    just as it finishes: the interleaving that reached the provider two or three
    times (released all at once, they mostly collide while the first is in flight).
    """
    barrier = threading.Barrier(n)
    responses: list = [None] * n

    def one(i):
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            time.sleep(i * STAGGER)
            responses[i] = client.post(url, json=body, headers=headers)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def provider_calls(sim, since: int) -> list:
    return [r for r in sim.requests[since:] if r[0] in ACTION_METHODS]


def pick(connection, kind: str) -> Run | None:
    for run in Run.objects.filter(connection=connection).order_by("-created_at"):
        if kind in run.available_actions():
            return run
    return None


# (provider, action): every action some simulator supports; reject has no provider.
CASES = [("buddy", Action.CANCEL), ("buddy", Action.APPROVE), ("buddy", Action.RETRY),
         ("workflows", Action.CANCEL), ("northflank", Action.CANCEL),
         ("qovery", Action.CANCEL), ("qovery", Action.RETRY)]


@pytest.mark.parametrize(("key", "kind"), CASES, ids=[f"{k}-{a}" for k, a in CASES])
def test_twenty_concurrent_actions_reach_the_provider_once(live_server, manager, key, kind):
    _, token = ApiToken.issue(manager, "stress")
    headers = {"Authorization": f"Bearer {token}"}
    comment = {"comment": "stress test"}
    for round_ in range(ROUNDS):
        sim = SIMULATORS[key](token=f"{key}-token", clock=SimClock(speed=0))
        scope = sim.seed_demo(random.Random(round_))
        if key == "qovery" and kind == Action.RETRY:  # an idle environment's deployment failed
            idle = next(e for e in sorted(sim.environments) if not sim._busy(e))
            sim.add_deployment(idle, list(BUILD_FAILS_PLAN), age=60)
        with sim:
            connection = Connection.objects.create(
                provider=key, name=f"{key} {kind} {round_}", base_url=sim.url,
                token=sim.token, scope=scope)
            sync.sync_connection(connection.pk)
            run = pick(connection, kind)
            assert run is not None, f"the demo data has no run to {kind}"
            before = len(sim.requests)
            responses = fire(f"{live_server.url}/api/runs/{run.pk}/{kind}/", headers, comment)
            calls = provider_calls(sim, before)
        codes = sorted(r.status_code for r in responses)
        assert len(calls) == 1, (round_, calls, codes)
        assert codes.count(200) == 1, codes
        assert set(codes) <= {200, 409}, codes
        records = ActionRecord.objects.filter(run=run, kind=kind)
        assert records.count() == CONCURRENT  # one audit record per attempt
        assert records.filter(state=ActionRecord.State.SUCCEEDED).count() == 1
        assert not records.filter(state=ActionRecord.State.PENDING).exists()


def test_reject_is_refused_by_runboard_for_every_provider_and_audited(live_server, manager):
    """No provider here documents a reject endpoint: each attempt is refused before
    reaching it, and each refusal is on record."""
    _, token = ApiToken.issue(manager, "stress")
    headers = {"Authorization": f"Bearer {token}"}
    for key in sorted(SIMULATORS):
        sim = SIMULATORS[key](token=f"{key}-token", clock=SimClock(speed=0))
        scope = sim.seed_demo(random.Random(1))
        with sim:
            connection = Connection.objects.create(
                provider=key, name=f"{key} reject", base_url=sim.url, token=sim.token,
                scope=scope)
            sync.sync_connection(connection.pk)
            run = Run.objects.filter(connection=connection).first()
            before = len(sim.requests)
            responses = fire(f"{live_server.url}/api/runs/{run.pk}/reject/", headers,
                             {"comment": "no"})
            assert provider_calls(sim, before) == []
        assert {r.status_code for r in responses} == {409}
        assert ActionRecord.objects.filter(run=run, kind="reject",
                                           state=ActionRecord.State.FAILED).count() == CONCURRENT


# --- the same on SQLite, the embedded default -------------------------------------

SETUP = """
from django.contrib.auth.models import User
from dashboard import sync
from dashboard.models import ApiToken, Connection, Run, release_managers_group
user = User.objects.create_user("manager")
user.groups.add(release_managers_group())
_, key = ApiToken.issue(user, "stress")
connection = Connection.objects.create(provider="buddy", name="Buddy", base_url={url!r},
                                       token={token!r}, scope={{"workspace": "acme"}})
sync.sync_connection(connection.pk)
print(key, Run.objects.get(status="running").pk)
"""



def test_on_sqlite_too_twenty_concurrent_cancels_reach_the_provider_once(tmp_path, buddy_sim):
    """A threaded server of its own on an SQLite file (no row locks there: the claim
    relies on transactions that begin IMMEDIATE)."""
    database = tmp_path / "runboard.sqlite3"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}",
           "DJANGO_SETTINGS_MODULE": "dashboard.settings_test", "RUNBOARD_VAR_DIR": str(tmp_path)}
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True, cwd=ROOT)
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    setup = SETUP.format(url=buddy_sim.url, token=buddy_sim.token)
    out = subprocess.run([*manage, "shell", "-c", setup], env=env, check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout.split()
    key, run_id = out[-2], out[-1]
    port = free_port()
    server = subprocess.Popen([*manage, "runserver", f"127.0.0.1:{port}", "--noreload"],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{base}/api/runs/"), timeout=30, what="the server")
        before = len(buddy_sim.requests)
        responses = fire(f"{base}/api/runs/{run_id}/cancel/",
                         {"Authorization": f"Bearer {key}"}, {"comment": "stress test"})
        calls = provider_calls(buddy_sim, before)
    finally:
        server.terminate()
        server.wait(timeout=10)
    codes = sorted(r.status_code for r in responses)
    assert len(calls) == 1, (calls, codes)
    assert codes.count(200) == 1 and set(codes) == {200, 409}, codes
    with sqlite3.connect(database) as db:
        states = [state for (state,) in db.execute(
            "SELECT state FROM dashboard_actionrecord WHERE run_id = ?", [run_id])]
    assert len(states) == CONCURRENT
    assert states.count("succeeded") == 1
    assert states.count("failed") == CONCURRENT - 1


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 401
    except httpx.TransportError:
        return False
