"""Freshness benchmark: how soon a change at a provider shows in a page's live answer, and
what that costs in provider requests, with webhooks on and off.

Each provider's simulator runs in a process of its own (a provider is another machine)
with its rate window: Northflank's documented 1000 requests an hour is enforced on a fast
clock, as 1000/F requests per 3600/F seconds (F = --nf-divisor), which is stricter than the
hour (a burst the hour would allow is refused). The other simulators keep their default
window.

The load, per provider: 10 pipelines x 3 stages (dev, staging, production). Each pipeline
releases as a Poisson process, one release every --release-every minutes on average
(default 25); a release runs in dev, then, if that succeeded, in staging, then in
production (a stage runs one release at a time; one in ten runs fails; half of
Northflank's production runs wait for approval). Runs move through their plans in real
time. --period P instead is the STRESS load of earlier rounds (a new run every P s in any
idle flow: all 30 flows always busy, thousands of changes an hour, beyond every budget).
Phases: first passes and --settle (until the passes' clock has paid them back), --idle
(nothing happens), --load (releases arrive), --tail (what is under way finishes).

Runboard runs as in production, minus nginx: a threaded WSGI server in this process (the
webhook endpoint, the pages), a real Celery worker on Redis (--concurrency 2), and beat's
tick (sync_all every RUNBOARD_SCHEDULER_TICK) from a thread here. A page per provider polls
the run list's live answer every 0.5 s, as an open browser tab does; a change counts as
shown when that answer first carries the run's new status (or a later one). The run list
shows the 50 newest runs: a change to a run that has fallen off it (a long approval, a
run finishing after 50 newer ones started) is shown only on the run's own page, so the
watcher also reads, every 0.5 s, which runs were written since its last look: such a
change counts as shown then (when the run's own page, polling as often, would show it),
and is counted in "off list". A run entering the status it already had (a GoRules run
moving on to its next environment, still in_progress) changes nothing a page's status
shows: it is not counted as a change (the count is printed).

    .venv/bin/python bench/freshness.py [--idle 240] [--load 240] [--tail 60] [--modes on,off]
        [--release-every 25] [--settle 60] [--period P (stress)] [--one-queue]

Prints per provider and mode: change->page delay p50/p95 (all changes, and those the
platform announces by webhook), changes never shown, requests/hour at idle and under load
beside the budget Runboard plans with, and 429s received; the affordability arithmetic
(changes an hour at this load, requests per change, the share, the most changes an hour
the share serves, what passes every 10 s would cost); and the densest provider window
(the simulated hour) with the setup's one-time cost apart, against the share of it.
A realistic load yields a few changes a minute: p95 over a 4-minute load is over a few
dozen changes; run --load 900 or more for steadier figures.
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


# What a stage's run ends in when it succeeded: the release moves on to the next stage.
SUCCESS = {"SUCCESSFUL", "success", "DEPLOYED", "completed"}


def build(key: str, nf_divisor: int):
    """A simulator of `key` with 10 pipelines x 3 stages and no history;
    (sim, scope, pipelines, spawn): `pipelines` lists each pipeline's stage flows in
    order (dev, staging, production), `spawn(flow, rng)` starts a run in one."""
    from providers.simulators import buddy, northflank, qovery, workflows
    from providers.simulators.base import SimClock

    clock = SimClock(speed=1.0)
    if key == "buddy":
        sim = buddy.BuddySimulator(token="bench", clock=clock)
        # Buddy has no stages: pipeline p of project "stage-s" stands in for p's stage s.
        pipelines = [[(f"stage-{s}", p + 1) for s in range(STAGES)] for p in range(PIPELINES)]
        for project, pipeline in (flow for flows in pipelines for flow in flows):
            sim.add_pipeline(project, pipeline, f"Deploy {pipeline}")

        def spawn(flow, rng):
            # No approval step: Buddy's waits for APPLY for ever, no one applies here.
            plan = rng.choices([buddy.BUILD_PLAN, buddy.FAILING_PLAN], weights=[9, 1])[0]
            return sim.add_execution(*flow, plan)
        return sim, {"workspace": sim.workspace}, pipelines, spawn
    if key == "northflank":
        sim = northflank.NorthflankSimulator(token="bench", clock=clock)
        # Documented: 1000 an hour; enforced as the same rate over a window F times shorter.
        sim.rate_limit, sim.rate_window = 1000 // nf_divisor, 3600.0 / nf_divisor
        pipelines = [[(f"pipeline-{p}", stage) for stage in northflank.STAGES]
                     for p in range(PIPELINES)]
        for flows in pipelines:
            sim.add_pipeline(flows[0][0])

        def spawn(flow, rng):
            plans, weights = [northflank.RELEASE_PLAN, northflank.FAILING_PLAN], [9, 1]
            if flow[1] == "production":  # half the production releases wait for approval
                plans, weights = [*plans, northflank.APPROVAL_PLAN], [5, 1, 4]
            return sim.add_release(*flow, rng.choices(plans, weights=weights)[0])
        return sim, {"project": sim.project}, pipelines, spawn
    if key == "qovery":
        sim = qovery.QoverySimulator(token="bench", clock=clock)
        organization = sim.add_organization("Bench")
        pipelines = []
        for p in range(PIPELINES):
            project = sim.add_project(organization, f"project-{p}")
            pipelines.append([sim.add_environment(project, name)
                              for name in ("development", "staging", "production")])

        def spawn(flow, rng):
            plan = rng.choices([qovery.DEPLOY_PLAN, qovery.DEPLOY_FAILS_PLAN], weights=[9, 1])[0]
            return sim.add_deployment(flow, plan)
        return sim, {"organization": organization}, pipelines, spawn
    sim = workflows.WorkflowsSimulator(token="bench", clock=clock)
    # A workflow run deploys its release through the project's 3 environments itself: one
    # run per release, the stages inside it.
    pipelines = [[p] for p in range(PIPELINES)]
    return sim, {"project": sim.project_id}, pipelines, lambda flow, rng: sim.add_workflow_run()


def external_id(key: str, run) -> str:
    d = run.data
    return {"buddy": lambda: f"{d['project']}/{d['pipeline']}/{d['id']}",
            "northflank": lambda: f"{d['pipeline']}/{d['stage']}/{d['id']}",
            "qovery": lambda: f"{d['environment']}/{run.id}",
            "workflows": lambda: str(d["id"])}[key]()


class Releases:
    """The realistic load: each pipeline releases as a Poisson process (one release every
    `every` seconds on average); a release runs in its pipeline's first stage, then, if
    that run succeeded, in the next, in order; a stage runs one release at a time (the
    next waits its turn). Call `step` under the simulator's lock."""

    def __init__(self, pipelines, spawn, every: float, rng):
        self.pipelines, self.spawn, self.every, self.rng = pipelines, spawn, every, rng
        self.next_at: dict[int, float] = {}
        self.waiting: dict[object, list] = {}  # stage flow -> releases waiting for it
        self.running: dict[object, tuple] = {}  # stage flow -> (release, its run)
        self.started = 0

    def step(self, now: float, arriving: bool, final: set[str]) -> None:
        for p, flows in enumerate(self.pipelines):
            if not arriving:
                self.next_at.pop(p, None)
                continue
            at = self.next_at.setdefault(p, now + self.rng.expovariate(1 / self.every))
            while at <= now:
                self.started += 1
                self.waiting.setdefault(flows[0], []).append((p, 0))
                at += self.rng.expovariate(1 / self.every)
            self.next_at[p] = at
        for flow, (release, run) in list(self.running.items()):
            if run.status not in final:
                continue
            del self.running[flow]
            p, stage = release
            if run.status in SUCCESS and stage + 1 < len(self.pipelines[p]):
                self.waiting.setdefault(self.pipelines[p][stage + 1], []).append((p, stage + 1))
        for flow, queue in self.waiting.items():
            if queue and flow not in self.running:
                release = queue.pop(0)
                self.running[flow] = (release, self.spawn(flow, self.rng))


def serve(key: str, nf_divisor: int, args, seed: int, conn) -> None:
    """Child process: one simulator, driven by commands over `conn`."""
    sim, scope, pipelines, spawn = build(key, nf_divisor)
    flows = [flow for stages in pipelines for flow in stages]
    stamps: list[float] = []  # when each request arrived
    refused = [0]
    dispatch = sim.dispatch

    def counting(request):
        stamps.append(time.time())
        status, body, headers = dispatch(request)
        refused[0] += status == 429
        return status, body, headers

    sim.dispatch = counting
    sim.start()
    conn.send((sim.url, sim.token, scope))
    rng = random.Random(seed)
    sender, loading, owner = None, threading.Event(), {}
    mark = {"requests": 0, "refused": 0}
    first_pass = None  # requests before the first mark: every connection's first pass
    releases = Releases(pipelines, spawn, args.release_every * 60, rng)

    def stress():
        # The old heavy load: a new run every `period` s in a flow with none running.
        while True:
            time.sleep(args.period)
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
                    releases.started += 1

    def realistic():
        while True:
            time.sleep(0.2)
            with sim.lock:
                sim.tick()
                releases.step(time.time(), loading.is_set(), sim.final_statuses)

    threading.Thread(target=stress if args.period else realistic, daemon=True).start()
    while True:
        command, arg = conn.recv()
        if command == "webhooks":
            sender = sim.send_webhooks(*arg)
        elif command == "mark":  # start counting requests and 429s afresh
            if first_pass is None:
                first_pass = len(stamps)
            mark = {"requests": len(stamps), "refused": refused[0], "at": time.time(),
                    "releases": releases.started}
        elif command == "count":
            conn.send({"requests": len(stamps) - mark["requests"],
                       "refused": refused[0] - mark["refused"],
                       "seconds": time.time() - mark["at"],
                       "releases": releases.started - mark["releases"]})
        elif command == "window":  # the densest provider window, with and without pass 1
            window = arg
            conn.send({"first_pass": first_pass or 0, "window": window,
                       "span": (stamps[-1] - stamps[0]) if stamps else 0.0,
                       "densest": densest(stamps, window),
                       "densest_after_first": densest(stamps[first_pass or 0:], window)})
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


def densest(stamps: list[float], window: float) -> int:
    """The most requests in any `window` seconds."""
    best, start = 0, 0
    for end, at in enumerate(stamps):
        while at - stamps[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


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


def start_worker(queue: str, consumes: str, concurrency: int,
                 hooks: str) -> subprocess.Popen:
    from django.db import connection

    db = connection.settings_dict
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "--loglevel", "error",
         "--concurrency", str(concurrency), "--queues", consumes, "--without-gossip",
         "--without-mingle", "--without-heartbeat", "--hostname", f"bench-{consumes}@%h"],
        cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings_test",
             "CELERY_QUEUE": queue, "CELERY_BROKER_URL": os.environ["CELERY_BROKER_URL"],
             "RUNBOARD_WEBHOOK_QUEUE": hooks,
             "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
             "PYTHONWARNINGS": "ignore"})


ROW = re.compile(r'<tr id="run-(\d+)"[^>]*>\s*<td><span class="badge[^"]*" title="([^"]*)"')
POLLER = re.compile(r'v=([0-9.\-]+)&amp;p=([0-9a-f]+)')


class PageWatcher:
    """An open run list per provider, polled every 0.5 s like the browser does: each page
    in a thread of its own on a steady 0.5 s cadence (a browser tab's poll does not wait
    for the other tabs), and the runs written since the last look in another."""

    def __init__(self, make_client, connections):
        self.connections = connections
        # provider:external id -> [(raw status, when it was first shown), ...], a new entry
        # each time the status shown changes (a run may come back to a status it had).
        self.seen: dict[str, list[tuple[str, float]]] = {}
        self.written: dict[str, list[tuple[str, float]]] = {}  # the same, from the database
        self._ids: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self.page, args=(key, make_client()),
                                         daemon=True) for key in connections]
        self.threads.append(threading.Thread(target=self.writes, daemon=True))
        for thread in self.threads:
            thread.start()

    def ticks(self):
        """Every 0.5 s from now, skipping a tick already missed."""
        at = time.time()
        while True:
            at += 0.5
            if self._stop.wait(max(0.0, at - time.time())):
                return
            at = max(at, time.time() - 0.5)
            yield

    def writes(self):
        from django.db import close_old_connections

        from dashboard.models import Run

        since = None
        for _ in self.ticks():
            # Runs written since the last look, at any position: their own pages show them.
            now = time.time()
            written = Run.objects.all() if since is None else Run.objects.filter(
                updated_at__gte=since)
            rows = list(written.values_list("connection__provider", "external_id",
                                            "raw_status", "updated_at"))
            with self._lock:
                for provider, external, raw, updated in rows:
                    note(self.written, f"{provider}:{external}", raw, now)
                    since = updated if since is None or updated > since else since
        close_old_connections()

    def page(self, key, client):
        from django.db import close_old_connections

        from dashboard.models import Run

        version, page = "", ""
        for _ in self.ticks():
            response = client.get(
                f"/runs/?provider={key}&v={version}&p={page}", HTTP_HX_REQUEST="true",
                HTTP_HX_TRIGGER="runs-poller")
            now = time.time()
            if response.status_code == 204:
                continue
            html = response.content.decode()
            found = POLLER.search(html)
            if found:
                version, page = found.groups()
            rows = [(int(pk), raw) for pk, raw in ROW.findall(html)]
            missing = [pk for pk, _ in rows if pk not in self._ids]
            if missing:
                ids = dict(Run.objects.filter(pk__in=missing).values_list("pk", "external_id"))
                with self._lock:
                    self._ids.update(ids)
            with self._lock:
                for pk, raw in rows:
                    note(self.seen, f"{key}:{self._ids.get(pk)}", raw, now)
        close_old_connections()

    def stop(self):
        self._stop.set()
        for thread in self.threads:
            thread.join(timeout=5)


def note(store: dict, ident: str, raw: str, now: float) -> None:
    shown = store.setdefault(ident, [])
    if not shown or shown[-1][0] != raw:
        shown.append((raw, now))


def first_shown(store: dict, ident: str, statuses: set[str], at: float) -> float | None:
    """When `ident` was first shown in one of `statuses` since `at` (a change happens at
    `at`: a status shown before it is an earlier visit of that status, not this change)."""
    return min((t for raw, t in store.get(ident, ()) if raw in statuses and t >= at - 0.01),
               default=None)


def figure(values, q) -> str:
    """A percentile for the table, "—" when there is nothing to take it of."""
    return f"{percentile(values, q):.2f}" if values else "—"


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def run_mode(args, webhooks: bool) -> dict:
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from dashboard import schedule, tasks
    from dashboard.celery import app
    from dashboard.models import Connection
    from providers import registry

    setup_django_tables()
    pipes, processes = {}, []
    for n, key in enumerate(PROVIDERS):
        ours, theirs = multiprocessing.Pipe()
        process = multiprocessing.Process(target=serve, daemon=True, args=(
            key, args.nf_divisor, args, args.seed + n, theirs))
        process.start()
        processes.append(process)
        pipes[key] = ours
    server, base = start_web()
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    app.conf.task_default_queue = queue
    # As README advises: webhook reads on a queue (and a worker) of their own, so that no
    # long pass holds a read back; --one-queue measures without.
    hooks = "" if args.one_queue else f"{queue}-hooks"
    settings.RUNBOARD_WEBHOOK_QUEUE = hooks
    workers = [start_worker(queue, queue, 2, hooks)]
    if hooks:
        workers.append(start_worker(queue, hooks, 1, hooks))
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
    from django.contrib.auth.models import User
    user = User.objects.get(username="bench")

    def make_client():
        client = Client()
        client.force_login(user)
        return client

    ticking = threading.Event()

    def beat():
        from django.conf import settings
        from django.db import close_old_connections

        while not ticking.wait(settings.RUNBOARD_SCHEDULER_TICK):
            tasks.sync_all()
            close_old_connections()

    beat_thread = threading.Thread(target=beat, daemon=True)
    beat_thread.start()
    watcher = PageWatcher(make_client, connections)
    # The first passes (a full read: Qovery's costs 100+ requests) are not idle spending.
    deadline = time.time() + 180
    while time.time() < deadline and Connection.objects.filter(
            pk__in=[c.pk for c in connections.values()], last_pass_requests__isnull=True).exists():
        time.sleep(1)
    # The first pass's cost (beyond its allowance) is charged to the passes' budget clock:
    # passes wait until it is paid back (reads, with webhooks on, do not). Give it
    # --settle s; what is left is reported ("debt").
    ids = [c.pk for c in connections.values()]
    deadline = time.time() + args.settle
    while time.time() < deadline and Connection.objects.filter(
            pk__in=ids, budget_at__gt=timezone.now()).exists():
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

    def ahead(clock):
        return max(0.0, (clock - timezone.now()).total_seconds()) if clock else 0.0

    # How far the passes' clock (and the reads' own, with webhooks) is ahead of now.
    debt = {key: (ahead(c.budget_at), ahead(c.webhook_budget_at))
            for key, c in ((key, Connection.objects.get(pk=connection.pk))
                           for key, connection in connections.items())}
    time.sleep(args.load)
    for pipe in pipes.values():
        pipe.send(("load", False))
    load_ended = time.time()
    time.sleep(args.tail)  # let what changed last be shown
    loaded = {}
    for key, pipe in pipes.items():
        pipe.send(("count", None))
        loaded[key] = pipe.recv()
    windows = {}
    for key, pipe in pipes.items():  # the simulated hour: 3600/F s, as Northflank's
        pipe.send(("window", 3600.0 / args.nf_divisor))
        windows[key] = pipe.recv()
    watcher.stop()
    ticking.set()
    beat_thread.join(timeout=5)
    results = {}
    for key, pipe in pipes.items():
        pipe.send(("changes", None))
        histories, announced_flags = pipe.recv()
        delays, announced_delays, unseen, off_list, same = [], [], 0, 0, 0
        flags = iter(announced_flags)
        for ext, steps in histories:
            for i, (status, at) in enumerate(steps):
                announced = next(flags)
                if not load_started <= at <= load_ended:
                    continue
                if i and steps[i - 1][0] == status:
                    # The same status again (a GoRules run moving on to its next
                    # environment): nothing a page's status shows changes, so it cannot be
                    # seen there (it was counted as seen at the next status, 20 s on).
                    same += 1
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
        connection = Connection.objects.get(pk=connections[key].pk)
        budget = connection.rate_budget()
        changes = sum(1 for ext, steps in histories for i, (status, at) in enumerate(steps)
                      if load_started <= at <= load_ended
                      and not (i and steps[i - 1][0] == status))
        results[key] = {"delays": delays, "announced": announced_delays, "unseen": unseen,
                        "off_list": off_list, "changes": changes, "same": same,
                        "load_seconds": load_ended - load_started,
                        "pass_cost": connection.last_pass_requests or 0,
                        "per_request": schedule.seconds_per_request(connection),
                        "read_part": schedule.budget_part(connection, reads=True),
                        "window": windows[key], "debt": debt[key],
                        "idle": idle[key], "load": loaded[key], "budget": budget}
        pipe.send(("stop", None))
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(timeout=20)
    server.shutdown()
    for process in processes:
        process.join(timeout=5)
    return results


def setup_django_tables():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE dashboard_connection, auth_user RESTART IDENTITY CASCADE")


def report(mode: str, results: dict, args) -> None:
    share = float(os.environ.get("RUNBOARD_BUDGET_SHARE", 0.5))
    load = (f"STRESS (--period {args.period:g}: a new run every {args.period:g} s in an idle "
            "flow; every flow always busy; far beyond any budget)" if args.period else
            f"realistic: {PIPELINES} pipelines x {STAGES} stages, each pipeline releasing every "
            f"{args.release_every:g} min on average (Poisson), a release going through its "
            "stages in order")
    print(f"\n== webhooks {mode} == load: {load}")
    print(f"{'provider':11} {'changes':>7} {'unseen':>6} {'offlist':>7} {'p50 s':>7} "
          f"{'p95 s':>7} {'p95 announced':>13} {'n ann.':>6} {'req/h idle':>10} "
          f"{'req/h load':>10} {'budget/h':>9} {'429s':>5}")
    for key, r in results.items():
        per_hour = {phase: r[phase]["requests"] * 3600 / max(1, r[phase]["seconds"])
                    for phase in ("idle", "load")}
        r["per_hour"] = per_hour
        budget = r["budget"]
        print(f"{key:11} {len(r['delays']):7} {r['unseen']:6} {r['off_list']:7} "
              f"{figure(r['delays'], 0.5):>7} {figure(r['delays'], 0.95):>7} "
              f"{figure(r['announced'], 0.95):>13} {len(r['announced']):6} "
              f"{per_hour['idle']:10.0f} {per_hour['load']:10.0f} "
              f"{budget.per_hour:8.0f}{'' if budget.documented else '*'} "
              f"{r['idle']['refused'] + r['load']['refused']:5}")
    print("* no limit documented: Runboard's conservative default; —: no such change in "
          "the load phase")
    same = {key: r["same"] for key, r in results.items() if r["same"]}
    if same:
        print("not counted as changes: a run entering the status it had (no page shows "
              "it): " + ", ".join(f"{key} {n}" for key, n in same.items()))

    print(f"\naffordability (webhooks {mode}): what one change costs, and how many changes an "
          f"hour {share:.0%} of the budget serves")
    print(f"{'provider':11} {'releases':>8} {'changes/h':>9} {'req/change':>10} "
          f"{'share/h':>8} {'reads/h':>7} {'max changes/h':>13} {'pass cost':>9} "
          f"{'10 s passes/h':>13} {'pass floor s':>12}")
    for key, r in results.items():
        changes_per_hour = r["changes"] * 3600 / max(1, r["load_seconds"])
        allowed = share * r["budget"].per_hour
        # What the load added over idling, per change: reads, and passes for live runs.
        extra = max(0.0, r["per_hour"]["load"] - r["per_hour"]["idle"])
        per_change = extra / changes_per_hour if changes_per_hour else float("nan")
        spare = max(0.0, allowed - r["per_hour"]["idle"])
        most = spare / per_change if per_change and per_change == per_change else float("inf")
        # Polling alone: p95 <= 15 s needs a pass about every 10 s.
        polled = r["pass_cost"] * 360
        print(f"{key:11} {r['load']['releases']:8} {changes_per_hour:9.0f} {per_change:10.2f} "
              f"{allowed:8.0f} {allowed * r['read_part']:7.0f} {most:13.0f} "
              f"{r['pass_cost']:9} {polled:13.0f} {r['pass_cost'] * r['per_request']:12.1f}")
    print("changes/h: status changes at the provider during the load phase; req/change: "
          "(req/h load - req/h idle) / changes/h; reads/h: the webhook reads' own part of "
          "share/h (they may borrow from the passes' part beyond it); max changes/h: "
          "(share/h - req/h idle) / req/change; 10 s passes/h: requests an hour a pass every "
          "10 s would cost (webhooks off, p95 <= 15 s) beside share/h; pass floor: the "
          "passes' budget's shortest pass interval")

    window = next(iter(results.values()))["window"]["window"]
    print(f"\nthe provider's window ({window:.0f} s: the simulated hour, --nf-divisor "
          f"{args.nf_divisor}), densest, against {share:.0%} of the budget in that window")
    print(f"{'provider':11} {'setup':>10} {'densest':>8} {'w/o setup':>9} "
          f"{'share/window':>12} {'span s':>7} {'debt at load s':>14} {'reads ahead s':>13}")
    for key, r in results.items():
        w = r["window"]
        allowed = share * r["budget"].per_hour * w["window"] / 3600
        passes, reads = r["debt"]
        print(f"{key:11} {w['first_pass']:10} {w['densest']:8} {w['densest_after_first']:9} "
              f"{allowed:12.0f} {w['span']:7.0f} {passes:14.0f} {reads:13.0f}")
    print("setup: requests before the idle phase: the first (full) pass, a one-time cost, "
          "and the passes of --settle; densest: most requests in any window, setup included; "
          "a round shorter than the window measures the whole round (span); debt at load: "
          "how far the passes' budget clock still was ahead when the load began (setup not "
          "yet paid back: passes wait for it; with webhooks on, reads do not); reads ahead: "
          "the reads' own clock then")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=240.0)
    parser.add_argument("--load", type=float, default=240.0)
    parser.add_argument("--tail", type=float, default=60.0)
    parser.add_argument("--release-every", type=float, default=25.0,
                        help="minutes between a pipeline's releases, on average (Poisson)")
    parser.add_argument("--period", type=float, default=0.0,
                        help="STRESS load instead: a new run every PERIOD s in an idle flow "
                        "(the old load, e.g. 2; far beyond any budget)")
    parser.add_argument("--one-queue", action="store_true",
                        help="webhook reads on the passes' queue (no worker of their own)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds to wait for the first pass's cost to be paid back")
    parser.add_argument("--nf-divisor", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--modes", default="on,off")
    args = parser.parse_args()
    os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/13")
    # As in production: one cache for web and worker, so a write is seen by pages at once.
    os.environ.setdefault("CACHE_URL", os.environ["CELERY_BROKER_URL"])
    setup_django()
    for mode in args.modes.split(","):
        report(mode, run_mode(args, webhooks=mode == "on"), args)


if __name__ == "__main__":
    main()
