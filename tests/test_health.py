"""Probes: /healthz always, /readyz only while the database and the broker answer."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent



def test_healthz_answers_without_login_and_touches_nothing(client):
    # No `db` fixture: any database access here would raise.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ok_with_the_database_and_broker_up(client, db):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content


def test_readyz_fails_when_the_broker_does_not_answer(client, db, settings):
    from dashboard.celery import app

    previous = app.conf.broker_write_url
    app.conf.broker_write_url = "redis://127.0.0.1:9/0"  # nothing listens there
    try:
        response = client.get("/readyz")
    finally:
        app.conf.broker_write_url = previous
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "failing": ["broker"]}
    assert "127.0.0.1" not in response.content.decode()  # details go to the log only


METRICS_TOKEN = "readyz-test-metrics-token-0123456789"


class PrivatePostgres:
    """A PostgreSQL server of this test's own, so that it can be stopped."""

    def __init__(self):
        versions = sorted(os.listdir("/usr/lib/postgresql")) if os.path.isdir(
            "/usr/lib/postgresql") else []
        if not versions:
            pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = Path("/usr/lib/postgresql") / versions[-1] / "bin"
        self.dir = Path(tempfile.mkdtemp(prefix="runboard-readyz-"))
        self.port = free_port()
        self.as_postgres = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]

    def run(self, *argv):
        # No pipes: the server pg_ctl starts would hold them open.
        subprocess.run([*self.as_postgres, *argv], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)

    def start(self):
        self.run(str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust",
                 "-U", "postgres")
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-w",
                 "-l", str(self.dir / "log"), "-o",
                 f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def stop(self):
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-w", "-m",
                 "immediate", "stop")

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres():
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        subprocess.run([*server.as_postgres, str(server.bin / "pg_ctl"), "-D",
                        str(server.dir / "data"), "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        server.remove()


def test_readyz_fails_when_postgresql_is_stopped(private_postgres):
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload",
         "--skip-checks"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings_test",
             "DATABASE_URL": f"postgres://postgres@127.0.0.1:{private_postgres.port}/postgres",
             "RUNBOARD_METRICS_TOKEN": METRICS_TOKEN},
    )
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                first = httpx.get(url, timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert first.status_code == 200, first.text

        private_postgres.stop()

        second = httpx.get(url, timeout=10)
        assert second.status_code == 503
        assert second.json()["failing"] == ["database"]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        # A scrape says why it has no figures, rather than failing as a server error.
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10,
                           headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert scrape.status_code == 503, scrape.text
        assert scrape.text == "The database is unavailable.\n"
    finally:
        web.terminate()
        web.wait(timeout=10)
