"""Every page of Runboard on SQLite, the embedded default `make demo` runs on.

Run as a script in a process of its own (the suite's settings are PostgreSQL's):
    DATABASE_URL=sqlite:///<file> python tests/sqlite_sweep.py
Starts each provider's simulator with the demo's sample runs, syncs a connection to
each as the demo's worker does, then asks every page as a release manager and as a
viewer (full pages, their htmx polls, a run page of each provider, an action) and
prints one JSON object: {"<who> <method> <path>": status, ...}.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings_test")


def main() -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.cache import cache
    from django.core.management import call_command
    from django.test import Client

    from dashboard import attention, sync
    from dashboard.models import Connection, Run, data_version, release_managers_group
    from providers.simulators import SIMULATORS
    from providers.simulators.base import SimClock

    assert settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"), "SQLite only"
    call_command("migrate", interactive=False, verbosity=0)
    rng = random.Random(7)
    simulators = []
    for key, simulator_class in sorted(SIMULATORS.items()):
        sim = simulator_class(token=f"{key}-token", clock=SimClock(speed=0))
        scope = sim.seed_demo(rng)
        sim.start()
        simulators.append(sim)
        connection = Connection.objects.create(provider=key, name=f"{key} demo",
                                               base_url=sim.url, token=sim.token, scope=scope)
        sync.sync_connection(connection.pk)

    manager = User.objects.create_user("manager")
    manager.groups.add(release_managers_group())
    viewer = User.objects.create_user("viewer")
    answers: dict[str, int] = {}
    runs = {run.connection.provider: run for run in Run.objects.select_related("connection")}
    try:  # what a page that polls would send back (a page asks for it first)
        version, strip_version = data_version(), attention.version()
        answers["data version"] = 200
    except Exception as exc:  # reported with every page's answer
        print(f"data version: {exc!r}", file=sys.stderr)
        version, strip_version = "0-0", "0-0"
        answers["data version"] = 500
    htmx = {"HX-Request": "true"}
    poller = {**htmx, "HX-Trigger": "runs-poller"}
    pages = [
        ("/runs/", {}), ("/runs/?status=failed&page=1", {}), ("/runs/?q=deploy", {}),
        ("/runs/?page=2", {}), ("/runs/", htmx), (f"/runs/?v={version}", poller),
        ("/runs/?v=0-0&p=x", poller), ("/inbox/", {}), ("/releases/", {}),
        ("/releases/?q=1", {}), ("/trends/", {}), ("/trends/?days=7", {}),
        ("/environments/", {}), ("/connections/", {}), ("/audit/", {}),
        ("/audit/export.csv", {}), ("/profile/", {}), ("/attention/", htmx),
        (f"/attention/?v={strip_version}", htmx), ("/api/runs/", {}),
    ]
    for run in runs.values():
        pages += [(run.get_absolute_url(), {}), (run.get_absolute_url(), htmx),
                  (f"{run.get_absolute_url()}?v=0", htmx)]
    for who, user in (("manager", manager), ("viewer", viewer)):
        client = Client(raise_request_exception=False)
        client.force_login(user)
        for path, headers in pages:
            cache.clear()  # each page rendered afresh: what a change makes the next viewer do
            answers[f"{who} GET {path} {sorted(headers)}"] = (
                client.get(path, headers=headers).status_code)
        # An action, then the pages again: the audit and the run page show it.
        run = next(r for r in Run.objects.all() if r.status in ("running", "waiting"))
        answers[f"{who} POST cancel"] = client.post(
            f"{run.get_absolute_url()}cancel/", {"comment": "sweep"}).status_code
        for path in (run.get_absolute_url(), "/audit/", "/runs/"):
            cache.clear()
            answers[f"{who} GET {path} after cancel"] = client.get(path).status_code
    for sim in simulators:
        sim.stop()
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
