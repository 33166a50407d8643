"""Real Celery worker processes for tests, on Redis, against the test database."""

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from django.db import connection

from dashboard.celery import app

ROOT = Path(__file__).resolve().parent.parent


def new_queue() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@contextmanager
def use_queue(queue: str):
    """Send this test's tasks to `queue`, which only its own workers consume."""
    previous = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    try:
        yield queue
    finally:
        app.conf.task_default_queue = previous


class Worker:
    def __init__(self, queue: str, *, name: str, concurrency: int = 1, pool: str = "prefork",
                 env: dict[str, str] | None = None):
        db = connection.settings_dict
        self.queue, self.hostname = queue, f"{name}-{queue}@{os.uname().nodename}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "--loglevel", "warning",
             "--pool", pool, "--concurrency", str(concurrency), "--queues", queue,
             "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--hostname", self.hostname],
            cwd=ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "dashboard.settings_test",
                "DATABASE_URL":
                    f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
                "CELERY_QUEUE": queue,
                "RUNBOARD_RETRY_BACKOFF": "0.5",
                **(env or {}),
            },
            start_new_session=True,  # so kill() reaches the pool's children too
        )
        wait_for(lambda: app.control.ping(destination=[self.hostname], timeout=0.5),
                 timeout=30, what=f"worker {name} to start")

    def kill(self) -> None:
        """SIGKILL, as when a machine dies: no clean-up, no acknowledgement."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def celery_worker(concurrency: int = 1, **kwargs):
    """One worker on a queue of its own, stopped afterwards."""
    with use_queue(new_queue()) as queue:
        worker = Worker(queue, name="w", concurrency=concurrency, **kwargs)
        try:
            yield worker
        finally:
            worker.stop()


def wait_for(condition, timeout: float = 20, what: str = "condition", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
