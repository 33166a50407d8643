"""Start a real Celery worker process for a test, on Redis, against the test database."""

import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from django.db import connection

from dashboard.celery import app

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def celery_worker(concurrency: int = 1):
    """Yield a running worker consuming a queue of its own; stop it afterwards."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dashboard.settings_test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_QUEUE": queue,
    }
    previous_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "--loglevel", "warning",
         "--concurrency", str(concurrency), "--queues", queue, "--without-gossip",
         "--without-mingle", "--without-heartbeat", "--hostname", f"{queue}@%h"],
        cwd=ROOT, env=env,
    )
    try:
        wait_for(lambda: app.control.ping(destination=[f"{queue}@{os.uname().nodename}"],
                                          timeout=0.5), timeout=30, what="worker to start")
        yield process
    finally:
        app.conf.task_default_queue = previous_queue
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition, timeout: float = 20, what: str = "condition", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
