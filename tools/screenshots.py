"""Screenshots of every page for review: `make screenshots`.

Fills a PostgreSQL database of its own (`runboard_screenshots` on the server in
DATABASE_URL) from every provider's simulator with its demo data, serves Runboard on
loopback, and drives the system's Chromium (Playwright, no browser download) through
every page at 1366x900 and 390x844, light and dark, into var/screenshots/.

    .venv/bin/python tools/screenshots.py [--out var/screenshots]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings_test")
os.environ["DATABASE_URL"] = os.environ.get(
    "SCREENSHOTS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/runboard_screenshots")
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop beside the ORM
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SIZES = {"desktop": (1366, 900), "phone": (390, 844)}
PASSWORD = "screenshots"


def database() -> None:
    import django
    import psycopg

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    params = connection.settings_dict
    with psycopg.connect(host=params["HOST"], port=params["PORT"] or 5432, user=params["USER"],
                         dbname="postgres", autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                             [params["NAME"]]).fetchone():
            admin.execute(f'CREATE DATABASE "{params["NAME"]}"')
    call_command("migrate", interactive=False, verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE dashboard_connection, auth_user RESTART IDENTITY CASCADE")


def seed(simulators) -> None:
    from django.contrib.auth.models import User

    from dashboard import sync
    from dashboard.models import Connection, release_managers_group
    from providers import registry
    from providers.simulators import SIMULATORS
    from providers.simulators.base import SimClock

    rng = random.Random(7)
    for key, simulator_class in SIMULATORS.items():
        sim = simulator_class(token=f"{key}-screens", clock=SimClock(speed=0))
        scope = sim.seed_demo(rng)
        sim.start()
        simulators.append(sim)
        connection = Connection.objects.create(
            provider=key, name=f"Demo {registry.provider_class(key).label}", base_url=sim.url,
            token=sim.token, scope=scope)
        sync.sync_connection(connection.pk)
    user = User.objects.create_superuser("ana", "ana@example.com", PASSWORD,
                                         first_name="Ana", last_name="Reviewer")
    user.groups.add(release_managers_group())


def serve() -> str:
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadedWSGIServer(("127.0.0.1", 0), Quiet)
    httpd.set_app(StaticFilesHandler(get_wsgi_application()))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}"


def pages() -> list[tuple[str, str]]:
    from dashboard.models import Run
    from providers.base import Status

    found = [("login", "/accounts/login/"), ("runs", "/runs/"), ("inbox", "/inbox/"),
             ("releases", "/releases/"), ("trends", "/trends/?days=30"),
             ("environments", "/environments/"),
             ("connections", "/connections/"), ("audit", "/audit/"),
             ("tokens", "/profile/"), ("admin", "/admin/")]
    waiting = Run.objects.filter(status=Status.WAITING).order_by("created_at")
    for run in waiting[:1]:
        found.append(("run-waiting", run.get_absolute_url()))
        release = run.version or run.commit
        if release:
            found.append(("inbox-release", f"/inbox/release/?release={release}"))
            found.append(("releases-where", f"/releases/?q={release}"))
    blocked = waiting.filter(connection__provider="northflank").first()
    if blocked:
        found.append(("run-not-approvable", blocked.get_absolute_url()))
    failed = Run.objects.filter(status=Status.FAILED).first()
    if failed:
        found.append(("run-failed", failed.get_absolute_url()))
    return found


def shoot(base_url: str, out: Path) -> int:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    targets = pages()
    count = 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        for device, (width, height) in SIZES.items():
            for scheme in ("light", "dark"):
                context = browser.new_context(base_url=base_url, color_scheme=scheme,
                                              viewport={"width": width, "height": height})
                page = context.new_page()
                for name, path in targets:
                    if name == "login":
                        page.goto(path)
                        page.screenshot(path=out / f"{name}-{device}-{scheme}.png")
                        page.fill("input[name=username]", "ana")
                        page.fill("input[name=password]", PASSWORD)
                        page.click("button[type=submit]")
                        page.wait_for_url("**/runs/")
                    else:
                        page.goto(path)
                        # Not "networkidle": live pages poll every 500 ms, so the network
                        # is never idle that long. Their first answers come within this.
                        page.wait_for_load_state("load")
                        page.wait_for_timeout(700)
                        page.screenshot(path=out / f"{name}-{device}-{scheme}.png")
                    count += 1
                context.close()
        browser.close()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "var" / "screenshots"))
    args = parser.parse_args()
    database()
    simulators = []
    try:
        seed(simulators)
        count = shoot(serve(), Path(args.out))
    finally:
        for sim in simulators:
            sim.stop()
    print(f"{count} screenshots in {args.out}")


if __name__ == "__main__":
    main()
