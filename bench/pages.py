"""Page benchmark: the run list and its live refresh, beside a trivial Django view.

Loads runs (with three jobs each, across four connections, 12 environments) into a
PostgreSQL database of its own through the sync's own upsert, then measures in-process,
through the whole middleware stack with a logged-in session:
  trivial   a login-required view that returns "ok" (the floor any page pays);
  list      GET /runs/ (the full page: filters, 50 rows, connection health), as most
            viewers get it: rendered once per data change and URL, then cached;
  list*     the same page rendered afresh (the first viewer after a change);
  refresh   the live poll when nothing changed (HTMX GET /runs/?v=<version> -> 204);
  changed   the live poll after one run changed (only that row comes back);
  inbox, releases, where (releases?q=<version>), trends (30 days), attention (the strip's unchanged
  poll), run (a run page), environments: the cockpit's pages, each as most viewers
  get it and (marked *) rendered afresh, with every cache emptied first;
at 1,000 runs and again at 100,000, with the database queries each makes.

    .venv/bin/python bench/pages.py [--sizes 1000 100000] [--repeat 200]

Targets (issues #5, #12): every page <= 3 x trivial, unchanged refresh <= 1.2 x trivial,
query counts the same at 1k and 100k (and 1M: --sizes 1000 100000 1000000).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time
from datetime import timedelta

from common import setup_django


def timed(client, path: str, repeat: int, before=None, **headers) -> tuple[float, int]:
    """Median milliseconds of `repeat` requests, after a warm-up; the status code.
    `before` runs untimed before each request."""
    for _ in range(5):
        response = client.get(path, headers=headers)
    samples = []
    for _ in range(repeat):
        if before:
            before()
        start = time.perf_counter()
        response = client.get(path, headers=headers)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000, response.status_code


def queries(client, path: str, **headers) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        client.get(path, headers=headers)
    return len(captured)


def load(connections, total: int, start: int) -> None:
    """Add runs until `total` exist, newest last, through the sync's upsert."""
    from django.utils import timezone

    from dashboard.sync import upsert_runs
    from providers.base import EnvironmentData, JobData, ProjectData, RunData, Status

    rng = random.Random(start)
    statuses = [Status.SUCCEEDED] * 6 + [Status.FAILED, Status.CANCELLED, Status.RUNNING,
                                         Status.WAITING]
    now = timezone.now()
    page: list[RunData] = []
    for n in range(start, total):
        connection = connections[n % len(connections)]
        project = ProjectData(f"p{n % 3}", f"project {n % 3}")
        env = EnvironmentData(f"e{n % 3}", ["production", "staging", "dev"][n % 3], project)
        status = rng.choice(statuses)
        created = now - timedelta(minutes=(total - n) * 2)
        page.append(RunData(
            external_id=f"run-{n}", status=status, raw_status=status.value,
            locator={"id": n}, name=f"Deploy web #{n}", version=f"2.{n // 1000}.{n % 1000}",
            branch=rng.choice(["main", "release/2.4", "hotfix/login"]),
            commit=f"{n:040x}", triggered_by=rng.choice(["Ana", "Kofi", "Jo", "Mike"]),
            pipeline_id="1", pipeline_name="Deploy web", project=project, environment=env,
            created_at=created, started_at=created,
            finished_at=created + timedelta(minutes=3) if status not in (
                Status.RUNNING, Status.WAITING) else None,
            raw={"id": n, "status": status.value},
            jobs=[JobData(f"j{i}", f"step {i}", status, status.value, order=i)
                  for i in range(3)],
        ))
        if len(page) == 1000:
            upsert_runs(connection, page)
            page = []
    if page:
        upsert_runs(connection, page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    setup_django()

    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.cache import cache
    from django.db import connection as db
    from django.test import Client
    from django.utils import timezone

    from dashboard.models import Connection, Run, data_changed, data_version, release_managers_group
    from dashboard.views import PAGE_SIZE

    settings.ROOT_URLCONF = "bench_urls"
    settings.ALLOWED_HOSTS = ["*"]
    connections = [
        Connection.objects.create(provider=key, name=f"bench {key}", base_url="http://127.0.0.1:9",
                                  token="x", scope={}, last_success_at=timezone.now())
        for key in ("buddy", "qovery", "northflank", "workflows")
    ]
    user = User.objects.create_user("bench", password="x")
    user.groups.add(release_managers_group())
    client = Client()
    client.force_login(user)
    htmx = {"HX-Request": "true", "HX-Trigger": "runs-poller"}

    loaded = 0
    print(f"median of {args.repeat} requests each, in-process through all middleware")
    print(f"{'runs':>8} {'view':<8} {'ms':>7} {'x trivial':>9} {'queries':>7}")
    for size in args.sizes:
        load(connections, size, loaded)
        loaded = size
        with db.cursor() as cursor:
            cursor.execute("ANALYZE")
        assert Run.objects.count() == size

        # What the page a browser shows would send back on its next poll.
        first_page = Run.objects.for_list().order_by("-created_at", "-id")[:PAGE_SIZE]
        page_key = hashlib.blake2s(",".join(str(r.pk) for r in first_page).encode(),
                                   digest_size=6).hexdigest()
        unchanged = f"/runs/?v={data_version()}&p={page_key}"
        trivial_ms, _ = timed(client, "/trivial/", args.repeat)
        rows = [("trivial", trivial_ms, queries(client, "/trivial/"))]
        list_ms, code = timed(client, "/runs/", args.repeat)
        assert code == 200
        rows.append(("list", list_ms, queries(client, "/runs/")))
        # The same page when it must be rendered: the first viewer after a change.
        cold_ms, _ = timed(client, "/runs/", max(20, args.repeat // 10), before=cache.clear)
        cache.clear()
        rows.append(("list*", cold_ms, queries(client, "/runs/")))
        refresh_ms, code = timed(client, unchanged, args.repeat, **htmx)
        assert code == 204, code
        rows.append(("refresh", refresh_ms, queries(client, unchanged, **htmx)))
        # One run on the page changes: the poll answers with that row alone.
        newest = Run.objects.order_by("-created_at", "-id").first()
        Run.objects.filter(pk=newest.pk).update(updated_at=timezone.now())
        data_changed()  # as the sync does after a write
        changed_ms, code = timed(client, unchanged, args.repeat, **htmx)
        assert code == 200, code
        rows.append(("changed", changed_ms, queries(client, unchanged, **htmx)))
        # The cockpit's pages.
        run_pk = Run.objects.order_by("-created_at", "-id").values_list("pk", flat=True)[500]
        version = Run.objects.order_by("-created_at").values_list("version", flat=True)[40]
        from dashboard import attention
        pages = [("inbox", "/inbox/", {}), ("releases", "/releases/", {}),
                 ("where", f"/releases/?q={version}", {}), ("trends", "/trends/?days=30", {}),
                 ("run", f"/runs/{run_pk}/", {}), ("envs", "/environments/", {})]
        for name, path, headers in pages:
            ms, code = timed(client, path, args.repeat, **headers)
            assert code == 200, (path, code)
            rows.append((name, ms, queries(client, path, **headers)))
            cold, _ = timed(client, path, max(20, args.repeat // 10), before=cache.clear,
                            **headers)
            cache.clear()
            rows.append((name + "*", cold, queries(client, path, **headers)))
        strip = f"/attention/?v={attention.version()}"
        ms, code = timed(client, strip, args.repeat, **{"HX-Request": "true"})
        assert code == 204, code
        rows.append(("strip", ms, queries(client, strip, **{"HX-Request": "true"})))
        for name, ms, count in rows:
            print(f"{size:>8} {name:<8} {ms:7.2f} {ms / trivial_ms:9.2f} {count:>7}")


if __name__ == "__main__":
    main()
