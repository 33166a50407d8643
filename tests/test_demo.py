"""`manage.py demo`: when its worker dies, nothing of the demo keeps running."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited, it only waits to be reaped


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")



def test_when_the_demo_worker_dies_its_beat_and_everything_else_stop(tmp_path):
    # Before: the worker's embedded beat (and pool) outlived it, queueing syncs forever.
    env = {k: v for k, v in os.environ.items()
           if k not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "CELERY_BROKER_URL",
                        "SECRET_KEY", "CACHE_URL"}}
    env.update({"DEBUG": "true", "RUNBOARD_VAR_DIR": str(tmp_path),
                "RUNBOARD_SYNC_INTERVAL": "1"})  # embedded SQLite + filesystem broker
    demo = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--port", str(free_port())], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    started = set()
    try:
        def worker():
            return next((p for p in children(demo.pid) if "worker" in cmdline(p)), None)

        worker_pid = wait_for(worker, 90, "the demo's worker")
        # Beat writes its schedule once it runs; by then the pool has started too.
        wait_for(lambda: list(tmp_path.glob("celerybeat-schedule*")), 90, "the embedded beat")
        wait_for(lambda: len(children(worker_pid)) >= 3, 60, "the pool and beat processes")
        started = descendants(demo.pid)
        assert len(started) >= 5, [cmdline(p) for p in started]  # worker, 2 pool, beat, web

        os.kill(worker_pid, signal.SIGKILL)

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(p) for p in started | {demo.pid}):
            time.sleep(0.25)
        left = {p: cmdline(p) for p in started | {demo.pid} if alive(p)}
        assert left == {}
    finally:
        for pid in started | {demo.pid}:  # only the processes this test started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        demo.wait(timeout=10)


def test_the_demo_registers_webhooks_and_its_simulators_deliver_them(tmp_path):
    """The demo is as fresh as a real account with webhooks: each simulator announces its
    changes to Runboard, which accepts them (counted in the demo's own database)."""
    import sqlite3

    env = {k: v for k, v in os.environ.items()
           if k not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "CELERY_BROKER_URL",
                        "SECRET_KEY", "CACHE_URL"}}
    env.update({"DEBUG": "true", "RUNBOARD_VAR_DIR": str(tmp_path)})
    demo = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--port", str(free_port()), "--spawn-every", "2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def accepted_providers():
        database = tmp_path / "runboard.sqlite3"
        if not database.exists():
            return set()
        try:
            with contextlib.closing(sqlite3.connect(database, timeout=5)) as db:
                rows = db.execute(
                    "SELECT DISTINCT c.provider FROM dashboard_webhookdelivery d"
                    " JOIN dashboard_connection c ON c.id = d.connection_id"
                    " WHERE d.outcome = 'accepted' AND c.webhooks_enabled").fetchall()
        except sqlite3.Error:  # not migrated yet
            return set()
        return {provider for (provider,) in rows}

    try:
        found = wait_for(lambda: (p := accepted_providers()) >= {"buddy", "qovery"} and p,
                         120, "webhooks from the demo's simulators")
        assert {"buddy", "qovery"} <= found
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(timeout=30)
