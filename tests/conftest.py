import json
import random
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test.testcases import QuietWSGIRequestHandler

from dashboard import sync
from dashboard.models import Connection, Run, release_managers_group
from providers.simulators import SIMULATORS
from providers.simulators.base import SimClock
from providers.simulators.buddy import DEPLOY_PLAN, BuddySimulator

FIXTURES = Path(__file__).parent / "fixtures"

# live_server writes a response's headers and body apart; with Nagle on, each request on
# a kept-alive connection (a browser's) then waited out the delayed ACK, ~40 ms.
QuietWSGIRequestHandler.disable_nagle_algorithm = True


def load_fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(autouse=True)
def _empty_cache():
    """Rendered fragments are keyed by data version; no test sees another's."""
    cache.clear()


@pytest.fixture
def clock():
    """Simulated time that only moves when a test advances it."""
    return SimClock(speed=0)


@pytest.fixture
def buddy_sim(clock):
    with BuddySimulator(token="buddy-test-token", clock=clock) as sim:
        sim.add_pipeline("web-shop", 1, "Deploy to production")
        yield sim


@pytest.fixture
def buddy_connection(db, buddy_sim):
    return Connection.objects.create(
        provider="buddy", name="Buddy", base_url=buddy_sim.url, token=buddy_sim.token,
        scope={"workspace": buddy_sim.workspace},
    )


@pytest.fixture
def synced_run(buddy_sim, buddy_connection):
    """A Buddy deployment, running, as the first sync wrote it (`sim_run`: its simulator
    side)."""
    sim_run = buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    run.sim_run = sim_run
    return run


@pytest.fixture
def viewer(db):
    return User.objects.create_user("viewer", password="viewer-pass")


@pytest.fixture
def manager(db):
    user = User.objects.create_user("manager", password="manager-pass")
    user.groups.add(release_managers_group())
    return user


@pytest.fixture(params=sorted(SIMULATORS))
def demo(request, db):
    """Each provider's simulator filled with its demo data, and a connection to it."""
    key = request.param
    sim = SIMULATORS[key](token=f"{key}-token", clock=SimClock(speed=0))
    scope = sim.seed_demo(random.Random(2))
    with sim:
        connection = Connection.objects.create(
            provider=key, name=f"Demo {key}", base_url=sim.url, token=sim.token, scope=scope)
        yield sim, connection
