"""Freshness benchmark: how soon a change at a provider shows in a page's live answer, and
what that costs in provider requests, with webhooks on and off.

Each provider's simulator runs in a process of its own (a provider is another machine)
with its rate window: Northflank's documented 1000 requests an hour is enforced on a fast
clock, as 1000/F requests per 3600/F seconds (F = --nf-divisor), which is stricter than the
hour (a burst the hour would allow is refused). The other simulators keep their default
window. 10 pipelines x 3 stages of activity per provider: a new run starts every
--period seconds in a flow that is idle, and moves through its plan in real time.

Runboard runs as in production, minus nginx: a threaded WSGI server in this process (the
webhook endpoint, the pages), a real Celery worker on Redis (--concurrency 2), and beat's
tick (sync_all every RUNBOARD_SCHEDULER_TICK) from a thread here. A page per provider polls
the run list's live answer every 0.5 s, as an open browser tab does; a change counts as
shown when that answer first carries the run's new status (or a later one). The run list
shows the 50 newest runs: a change to a run that has fallen off it (a long approval, a
run finishing after 50 newer ones started) is shown only on the run's own page, so the
watcher also reads, every 0.5 s, which runs were written since its last look: such a
change counts as shown then (when the run's own page, polling as often, would show it),
and is counted in "off list".

    .venv/bin/python bench/freshness.py [--idle 240] [--load 240] [--tail 60] [--modes on,off]

Prints per provider and mode: change->page delay p50/p95 (all changes, and those the
platform announces by webhook), changes never shown, requests/hour at idle and under load
beside the budget Runboard plans with, and 429s received.
Targets (issue 10): p95 <= 1 s with webhooks, <= 15 s without; <= 50% of the budget; no 429.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid

os.environ.setdefault(
    "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/runboard_freshness_bench")

from common import ROOT, setup_django

PROVIDERS = ("buddy", "northflank", "qovery", "workflows")
PIPELINES, STAGES = 10, 3


# --- the simulators, each in its own process -----------------------------------------


def build(key: str, nf_divisor: int):
    """A simulator of `key` with 10 x 3 flows and no history; (sim, scope, flows, spawn)."""
    from providers.simulators import buddy, northflank, qovery, workflows
    from providers.simulators.base import SimClock

    clock = SimClock(speed=1.0)
    if key == "buddy":
        sim = buddy.BuddySimulator(token="bench", clock=clock)
        # 10 pipelines in each of 3 projects (Buddy has no stages; projects stand in).
        flows = [(f"project-{s}", p + 1) for s in range(STAGES) for p in range(PIPELINES)]
        for project, pipeline in flows:
            sim.add_pipeline(project, pipeline, f"Deploy {pipeline}")

        def spawn(flow, rng):
            # No approval step: Buddy's waits for APPLY for ever, no one applies here.
            return sim.add_execution(*flow, rng.choice([buddy.BUILD_PLAN, buddy.BUILD_PLAN,
                                                        buddy.FAILING_PLAN]))
        return sim, {"workspace": sim.workspace}, flows, spawn
    if key == "northflank":
        sim = northflank.NorthflankSimulator(token="bench", clock=clock)
        # Documented: 1000 an hour; enforced as the same rate over a window F times shorter.
        sim.rate_limit, sim.rate_window = 1000 // nf_divisor, 3600.0 / nf_divisor
        flows = [(f"pipeline-{p}", stage) for p in range(PIPELINES)
                 for stage in northflank.STAGES]
        for pipeline, _ in flows:
            sim.add_pipeline(pipeline)

        def spawn(flow, rng):
            plans = [northflank.RELEASE_PLAN, northflank.FAILING_PLAN]
            if flow[1] == "production":
                plans.append(northflank.APPROVAL_PLAN)
            return sim.add_release(*flow, rng.choice(plans))
        return sim, {"project": sim.project}, flows, spawn
    if key == "qovery":
        sim = qovery.QoverySimulator(token="bench", clock=clock)
        organization = sim.add_organization("Bench")
        flows = []
        for p in range(PIPELINES):
            project = sim.add_project(organization, f"project-{p}")
            flows += [sim.add_environment(project, name)
                      for name in ("development", "staging", "production")]

        def spawn(flow, rng):
            return sim.add_deployment(flow, rng.choice([qovery.DEPLOY_PLAN, qovery.DEPLOY_PLAN,
                                                        qovery.DEPLOY_FAILS_PLAN]))
        return sim, {"organization": organization}, flows, spawn
    sim = workflows.WorkflowsSimulator(token="bench", clock=clock)
    # One project's runs deploy through its 3 environments; 10 may run side by side.
    flows = list(range(PIPELINES))
    return sim, {"project": sim.project_id}, flows, lambda flow, rng: sim.add_workflow_run()


def external_id(key: str, run) -> str:
    d = run.data
    return {"buddy": lambda: f"{d['project']}/{d['pipeline']}/{d['id']}",
            "northflank": lambda: f"{d['pipeline']}/{d['stage']}/{d['id']}",
            "qovery": lambda: f"{d['environment']}/{run.id}",
            "workflows": lambda: str(d["id"])}[key]()


def serve(key: str, nf_divisor: int, period: float, seed: int, conn) -> None:
    """Child process: one simulator, driven by commands over `conn`."""
    sim, scope, flows, spawn = build(key, nf_divisor)
    refused = [0]
    dispatch = sim.dispatch

    def counting(request):
        status, body, headers = dispatch(request)
        refused[0] += status == 429
        return status, body, headers

    sim.dispatch = counting
    sim.start()
    conn.send((sim.url, sim.token, scope))
    rng = random.Random(seed)
    sender, loading, owner = None, threading.Event(), {}
    mark = {"requests": 0, "refused": 0}

    def load():
        while True:
            time.sleep(period)
            if not loading.is_set():
                continue
            with sim.lock:
                sim.tick()
                busy = {flow for flow, run in owner.items()
                        if run.status not in sim.final_statuses}
                idle = [flow for flow in flows if flow not in busy]
                if idle:
                    flow = rng.choice(idle)
                    owner[flow] = spawn(flow, rng)

    threading.Thread(target=load, daemon=True).start()
    while True:
        command, arg = conn.recv()
        if command == "webhooks":
            sender = sim.send_webhooks(*arg)
        elif command == "mark":  # start counting requests and 429s afresh
            mark = {"requests": len(sim.requests), "refused": refused[0], "at": time.time()}
        elif command == "count":
            conn.send({"requests": len(sim.requests) - mark["requests"],
                       "refused": refused[0] - mark["refused"],
                       "seconds": time.time() - mark["at"]})
        elif command == "load":
            (loading.set if arg else loading.clear)()
        elif command == "changes":  # [(external id, [(raw status, at)]), ...]
            announced = []
            with sim.lock:
                sim.tick()
                result = []
                for run in sim.runs.values():
                    steps = [(status, at.timestamp()) for status, at in run.history]
                    result.append((external_id(key, run), steps))
                    for i, (status, _) in enumerate(run.history):
                        before = run.history[i - 1][0] if i else None
                        announced.append(_announces(sim, run, status, before))
            conn.send((result, announced))
        elif command == "stop":
            if sender:
                sender.stop()
            sim.stop()
            return


def _announces(sim, run, status, before) -> bool:
    """Whether the platform sends a webhook for `run` entering `status` from `before`."""
    saved = run.phase
    try:
        index = next(i for i, p in enumerate(run.plan) if p.status == status and i <= saved)
        run.phase = index
        return bool(sim.webhook_deliveries(run, before, "x"))
    except StopIteration:
        return False
    finally:
        run.phase = saved


# --- Runboard -----------------------------------------------------------------------


def start_web():
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), Quiet)
    server.set_app(get_wsgi_application())
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def start_worker(queue: str) -> subprocess.Popen:
    from django.db import connection

    db = connection.settings_dict
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "--loglevel", "error",
         "--concurrency", "2", "--queues", queue, "--without-gossip", "--without-mingle",
         "--without-heartbeat", "--hostname", f"bench-{queue}@%h"],
        cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings_test",
             "CELERY_QUEUE": queue, "CELERY_BROKER_URL": os.environ["CELERY_BROKER_URL"],
             "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
             "PYTHONWARNINGS": "ignore"})


ROW = re.compile(r'<tr id="run-(\d+)"[^>]*>\s*<td><span class="badge[^"]*" title="([^"]*)"')
POLLER = re.compile(r'v=([0-9.\-]+)&amp;p=([0-9a-f]+)')


class PageWatcher:
    """An open run list per provider, polled every 0.5 s like the browser does."""

    def __init__(self, client, connections):
        self.client, self.connections = client, connections
        # provider:external id -> [(raw status, when it was first shown), ...], a new entry
        # each time the status shown changes (a run may come back to a status it had).
        self.seen: dict[str, list[tuple[str, float]]] = {}
        self.written: dict[str, list[tuple[str, float]]] = {}  # the same, from the database
        self._ids: dict[int, str] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        from django.db import close_old_connections

        from dashboard.models import Run

        state = {key: ("", "") for key in self.connections}
        since = None
        while not self._stop.wait(0.5):
            # Runs written since the last look, at any position: their own pages show them.
            now = time.time()
            written = Run.objects.all() if since is None else Run.objects.filter(
                updated_at__gte=since)
            for provider, external, raw, updated in written.values_list(
                    "connection__provider", "external_id", "raw_status", "updated_at"):
                note(self.written, f"{provider}:{external}", raw, now)
                since = updated if since is None or updated > since else since
            for key in self.connections:
                version, page = state[key]
                response = self.client.get(
                    f"/runs/?provider={key}&v={version}&p={page}", HTTP_HX_REQUEST="true",
                    HTTP_HX_TRIGGER="runs-poller")
                now = time.time()
                if response.status_code == 204:
                    continue
                html = response.content.decode()
                found = POLLER.search(html)
                if found:
                    state[key] = found.groups()
                rows = [(int(pk), raw) for pk, raw in ROW.findall(html)]
                missing = [pk for pk, _ in rows if pk not in self._ids]
                if missing:
                    self._ids.update(Run.objects.filter(pk__in=missing)
                                     .values_list("pk", "external_id"))
                for pk, raw in rows:
                    note(self.seen, f"{key}:{self._ids.get(pk)}", raw, now)
            close_old_connections()

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=5)


def note(store: dict, ident: str, raw: str, now: float) -> None:
    shown = store.setdefault(ident, [])
    if not shown or shown[-1][0] != raw:
        shown.append((raw, now))


def first_shown(store: dict, ident: str, statuses: set[str], at: float) -> float | None:
    """When `ident` was first shown in one of `statuses` since `at` (a change happens at
    `at`: a status shown before it is an earlier visit of that status, not this change)."""
    return min((t for raw, t in store.get(ident, ()) if raw in statuses and t >= at - 0.01),
               default=None)


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def run_mode(args, webhooks: bool) -> dict:
    from django.core.management import call_command
    from django.test import Client

    from dashboard import tasks
    from dashboard.celery import app
    from dashboard.models import Connection
    from providers import registry

    setup_django_tables()
    pipes, processes = {}, []
    for n, key in enumerate(PROVIDERS):
        ours, theirs = multiprocessing.Pipe()
        process = multiprocessing.Process(target=serve, daemon=True, args=(
            key, args.nf_divisor, args.period, args.seed + n, theirs))
        process.start()
        processes.append(process)
        pipes[key] = ours
    server, base = start_web()
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    app.conf.task_default_queue = queue
    worker = start_worker(queue)
    connections = {}
    for key, pipe in pipes.items():
        url, token, scope = pipe.recv()
        connection = Connection.objects.create(provider=key, name=f"bench {key}", base_url=url,
                                               token=token, scope=scope)
        connections[key] = connection
        if webhooks and registry.provider_class(key).webhook_events:
            secret = connection.set_webhook_secret()
            Connection.objects.filter(pk=connection.pk).update(webhooks_enabled=True)
            pipe.send(("webhooks", (f"{base}/hooks/{connection.webhook_key}/", secret)))
    call_command("createsuperuser", "--noinput", username="bench", email="b@example.com",
                 verbosity=0)
    client = Client()
    from django.contrib.auth.models import User
    client.force_login(User.objects.get(username="bench"))

    ticking = threading.Event()

    def beat():
        from django.conf import settings
        from django.db import close_old_connections

        while not ticking.wait(settings.RUNBOARD_SCHEDULER_TICK):
            tasks.sync_all()
            close_old_connections()

    beat_thread = threading.Thread(target=beat, daemon=True)
    beat_thread.start()
    watcher = PageWatcher(client, connections)
    # The first passes (a full read: Qovery's costs 100+ requests) are not idle spending.
    deadline = time.time() + 180
    while time.time() < deadline and Connection.objects.filter(
            pk__in=[c.pk for c in connections.values()], last_pass_requests__isnull=True).exists():
        time.sleep(1)
    # Idle: nothing happening at the providers; pages open.
    for pipe in pipes.values():
        pipe.send(("mark", None))
    time.sleep(args.idle)
    idle = {}
    for key, pipe in pipes.items():
        pipe.send(("count", None))
        idle[key] = pipe.recv()
        pipe.send(("mark", None))
        pipe.send(("load", True))
    load_started = time.time()
    time.sleep(args.load)
    for pipe in pipes.values():
        pipe.send(("load", False))
    load_ended = time.time()
    time.sleep(args.tail)  # let what changed last be shown
    loaded = {}
    for key, pipe in pipes.items():
        pipe.send(("count", None))
        loaded[key] = pipe.recv()
    watcher.stop()
    ticking.set()
    beat_thread.join(timeout=5)
    results = {}
    for key, pipe in pipes.items():
        pipe.send(("changes", None))
        histories, announced_flags = pipe.recv()
        delays, announced_delays, unseen, off_list = [], [], 0, 0
        flags = iter(announced_flags)
        for ext, steps in histories:
            for i, (_status, at) in enumerate(steps):
                announced = next(flags)
                if not load_started <= at <= load_ended:
                    continue
                statuses = {s for s, _ in steps[i:]}  # this change, or a later one
                listed = first_shown(watcher.seen, f"{key}:{ext}", statuses, at)
                written = first_shown(watcher.written, f"{key}:{ext}", statuses, at)
                shown = min((t for t in (listed, written) if t), default=None)
                if shown is None:
                    unseen += 1
                    continue
                off_list += listed is None
                delays.append(max(0.0, shown - at))
                if announced and webhooks:
                    announced_delays.append(max(0.0, shown - at))
        budget = registry.provider_class(key).budget_for(
            Connection.objects.get(pk=connections[key].pk).rate_limit_seen)
        results[key] = {"delays": delays, "announced": announced_delays, "unseen": unseen,
                        "off_list": off_list,
                        "idle": idle[key], "load": loaded[key], "budget": budget}
        pipe.send(("stop", None))
    worker.terminate()
    worker.wait(timeout=20)
    server.shutdown()
    for process in processes:
        process.join(timeout=5)
    return results


def setup_django_tables():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE dashboard_connection, auth_user RESTART IDENTITY CASCADE")


def report(mode: str, results: dict) -> None:
    print(f"\n== webhooks {mode} ==")
    print(f"{'provider':11} {'changes':>7} {'unseen':>6} {'offlist':>7} {'p50 s':>7} "
          f"{'p95 s':>7} "
          f"{'p95 announced':>13} {'req/h idle':>10} {'req/h load':>10} {'budget/h':>9} "
          f"{'429s':>5}")
    for key, r in results.items():
        per_hour = {phase: r[phase]["requests"] * 3600 / max(1, r[phase]["seconds"])
                    for phase in ("idle", "load")}
        budget = r["budget"]
        print(f"{key:11} {len(r['delays']):7} {r['unseen']:6} {r['off_list']:7} "
              f"{percentile(r['delays'], 0.5):7.2f} {percentile(r['delays'], 0.95):7.2f} "
              f"{percentile(r['announced'], 0.95):13.2f} {per_hour['idle']:10.0f} "
              f"{per_hour['load']:10.0f} {budget.per_hour:8.0f}{'' if budget.documented else '*'} "
              f"{r['idle']['refused'] + r['load']['refused']:5}")
    print("* no limit documented: Runboard's conservative default")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=240.0)
    parser.add_argument("--load", type=float, default=240.0)
    parser.add_argument("--tail", type=float, default=60.0)
    parser.add_argument("--period", type=float, default=2.0,
                        help="seconds between new runs, per provider")
    parser.add_argument("--nf-divisor", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--modes", default="on,off")
    args = parser.parse_args()
    os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/13")
    setup_django()
    for mode in args.modes.split(","):
        report(mode, run_mode(args, webhooks=mode == "on"))


if __name__ == "__main__":
    main()
