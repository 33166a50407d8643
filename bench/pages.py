"""Page benchmark: the run list and its live refresh, beside a trivial Django view.

Loads runs (with three jobs each, across four connections, 12 environments) into a
PostgreSQL database of its own, then measures in-process,
through the whole middleware stack with a logged-in session:
  trivial   a login-required view that returns "ok" (the floor any page pays);
  list      GET /runs/ (the full page: filters, 50 rows, connection health), as most
            viewers get it: rendered once per data change and URL, then cached;
  list*     the same page rendered afresh (the first viewer after a change);
  refresh   the live poll when nothing changed (HTMX GET /runs/?v=<version> -> 204);
  changed   the live poll after one run changed (only that row comes back);
  inbox, releases, where (releases?q=<version>), trends (30 days), run (a run page),
  envs (environments): the cockpit's pages, each as most viewers get it and (marked *)
  rendered afresh, with every cache emptied first;
  empty     a page that extends base.html and shows nothing else (what every page
            pays: middleware, header, strip, context processors); empty* afresh;
  strip     the attention strip's poll when nothing changed (204); strip* when its
            counts must be made again (every page pays that once per change);
at 1,000 runs and again at 100,000, with the database queries each makes. Runs are
written with SQL (INSERT ... SELECT generate_series; a million in a minute or two), or
with `--loader sync` through the sync's own upsert (about 3 minutes per 100,000).

    .venv/bin/python bench/pages.py [--sizes 1000 100000] [--repeat 200]
        [--pages list refresh changed inbox releases where trends run envs strip empty]

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


def timed(client, path: str, repeat: int, before=None, **headers) -> tuple[float, int, float]:
    """Median milliseconds of `repeat` requests, after a warm-up; the status code; and
    the median of the trivial view timed just before each of them (a shared, noisy
    machine: the ratio compares requests made under the same load). `before` runs
    untimed before each request."""
    for _ in range(5):
        response = client.get(path, headers=headers)
    samples, trivial = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        client.get("/trivial/")
        trivial.append(time.perf_counter() - start)
        if before:
            before()
        start = time.perf_counter()
        response = client.get(path, headers=headers)
        samples.append(time.perf_counter() - start)
    return (statistics.median(samples) * 1000, response.status_code,
            statistics.median(trivial) * 1000)


def queries(client, path: str, **headers) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        client.get(path, headers=headers)
    return len(captured)


STATUSES = ["succeeded"] * 6 + ["failed", "cancelled", "running", "waiting"]


def load_sync(connections, total: int, start: int) -> None:
    """Add runs until `total` exist, newest last, through the sync's upsert (slow:
    about 3 minutes for 100,000 runs; `--loader sync`)."""
    from django.utils import timezone

    from dashboard.sync import upsert_runs
    from providers.base import EnvironmentData, JobData, ProjectData, RunData, Status

    rng = random.Random(start)
    statuses = [Status(s) for s in STATUSES]
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


def load_sql(connections, total: int, start: int) -> None:
    """The same runs as `load_sync` (three jobs each, across the four connections and
    their projects and environments, the same mix of statuses), written by two
    INSERT ... SELECT over generate_series: a million runs in a minute or two."""
    from django.db import connection as db

    from dashboard.models import Environment, Project

    if total <= start:
        return
    for connection in connections:  # the projects and environments the sync would make
        for i in range(3):
            project, _ = Project.objects.get_or_create(
                connection=connection, external_id=f"p{i}", defaults={"name": f"project {i}"})
            Environment.objects.get_or_create(
                connection=connection, external_id=f"e{i}",
                defaults={"name": ["production", "staging", "dev"][i], "project": project})
    ids = [c.pk for c in connections]
    statuses = "ARRAY[" + ",".join(f"'{s}'" for s in STATUSES) + "]"
    with db.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO OFF")
        cursor.execute("SELECT coalesce(max(id), 0) FROM dashboard_run")
        (before,) = cursor.fetchone()
        # A per-run pseudo-random pick that does not depend on the batch: hashint4.
        cursor.execute(f"""
            INSERT INTO dashboard_run (connection_id, external_id, locator, project_id,
              environment_id, pipeline_id, pipeline_name, name, status, raw_status, version,
              branch, commit, triggered_by, created_at, started_at, finished_at, cancelled_by,
              cancel_comment, web_url, raw, fingerprint, observed_at, updated_at)
            SELECT c.id, 'run-' || g.n, jsonb_build_object('id', g.n), p.id, e.id, '1',
              'Deploy web', 'Deploy web #' || g.n, s.status, s.status,
              '2.' || (g.n / 1000) || '.' || (g.n %% 1000),
              (ARRAY['main', 'release/2.4', 'hotfix/login'])[1 + abs(hashint4(g.n + 1)) %% 3],
              lpad(to_hex(g.n), 40, '0'),
              (ARRAY['Ana', 'Kofi', 'Jo', 'Mike'])[1 + abs(hashint4(g.n + 2)) %% 4],
              t.created, t.created,
              CASE WHEN s.status IN ('running', 'waiting') THEN NULL
                   ELSE t.created + interval '3 minutes' END,
              '', '', '', jsonb_build_object('id', g.n, 'status', s.status),
              md5(g.n::text), now(), now()
            FROM generate_series(%s, %s - 1) AS g(n)
            CROSS JOIN LATERAL (SELECT ({statuses})[1 + abs(hashint4(g.n)) %% 10] AS status) s
            CROSS JOIN LATERAL (SELECT now() - (%s - g.n) * interval '2 minutes' AS created) t
            JOIN dashboard_connection c ON c.id = (%s::bigint[])[1 + g.n %% 4]
            JOIN dashboard_project p ON p.connection_id = c.id AND p.external_id = 'p' || g.n %% 3
            JOIN dashboard_environment e
              ON e.connection_id = c.id AND e.external_id = 'e' || g.n %% 3
            ORDER BY g.n
        """, [start, total, total, ids])
        cursor.execute("""
            INSERT INTO dashboard_job (run_id, external_id, name, "order", status, raw_status,
              environment_id, progress, started_at, finished_at, reviewed_by, reviewed_at,
              review_comment, review_conclusion)
            SELECT r.id, 'j' || i, 'step ' || i, i, r.status, r.status, NULL, NULL, NULL, NULL,
              '', NULL, '', ''
            FROM dashboard_run r CROSS JOIN generate_series(0, 2) AS i
            WHERE r.id > %s
        """, [before])
        cursor.execute("SET synchronous_commit TO DEFAULT")
    from dashboard.models import data_changed
    data_changed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--loader", choices=["sql", "sync"], default="sql",
                        help="write runs with SQL (fast) or through the sync's upsert (slow)")
    parser.add_argument("--pages", nargs="+", metavar="NAME",
                        help="measure only these views (e.g. list run envs; the trivial "
                        "view always), each with its afresh variant")
    args = parser.parse_args()
    load = load_sql if args.loader == "sql" else load_sync

    def wanted(name: str) -> bool:
        return not args.pages or name in args.pages
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
    print(f"median of {args.repeat} requests each ({max(20, args.repeat // 10)} afresh), "
          "in-process through all middleware; x trivial: against the trivial view timed "
          "just before each request")
    print(f"{'runs':>8} {'view':<8} {'ms':>7} {'x trivial':>9} {'queries':>7}")
    for size in args.sizes:
        started = time.perf_counter()
        load(connections, size, loaded)
        loaded = size
        if load is load_sql:
            # Written beside the sync, so what it keeps as it writes is built here: the
            # releases matrix's cells and the trends' daily rollup.
            from dashboard import releases, rollup

            releases.rebuild()
            rollup.rebuild()
        with db.cursor() as cursor:
            # As autovacuum would have by then: planner statistics, and the visibility
            # map that lets index-only scans skip the table.
            cursor.execute("VACUUM ANALYZE")
        print(f"# {size} runs loaded in {time.perf_counter() - started:.0f} s")
        assert Run.objects.count() == size

        # What the page a browser shows would send back on its next poll.
        first_page = Run.objects.for_list().order_by("-created_at", "-id")[:PAGE_SIZE]
        page_key = hashlib.blake2s(",".join(str(r.pk) for r in first_page).encode(),
                                   digest_size=6).hexdigest()
        unchanged = f"/runs/?v={data_version()}&p={page_key}"
        trivial_ms, _, _ = timed(client, "/trivial/", args.repeat)
        rows = [("trivial", trivial_ms, 1.0, queries(client, "/trivial/"))]

        def measure(name, path, expect=200, afresh=False, rows=rows, **headers):
            """One row: `path` as most viewers get it or (afresh) with every cache
            emptied before each request; its queries the way it was measured."""
            repeat = max(20, args.repeat // 10) if afresh else args.repeat
            ms, code, trivial = timed(client, path, repeat,
                                      before=cache.clear if afresh else None, **headers)
            assert code == expect, (path, code)
            if afresh:
                cache.clear()
            rows.append((name, ms, ms / trivial, queries(client, path, **headers)))

        if wanted("list"):
            measure("list", "/runs/")
            # The same page when it must be rendered: the first viewer after a change.
            measure("list*", "/runs/", afresh=True)
        if wanted("refresh"):
            measure("refresh", unchanged, expect=204, **htmx)
        if wanted("changed"):
            # One run on the page changes: the poll answers with that row alone.
            newest = Run.objects.order_by("-created_at", "-id").first()
            Run.objects.filter(pk=newest.pk).update(updated_at=timezone.now())
            data_changed()  # as the sync does after a write
            measure("changed", unchanged, **htmx)
        # The cockpit's pages.
        # A run page: the same kind at every size (a Qovery run, whose page also asks
        # whether a newer run replaced it), deep enough not to be the newest.
        run_pk = (Run.objects.filter(connection=connections[1]).order_by("-created_at", "-id")
                  .values_list("pk", flat=True)[100])
        version = Run.objects.order_by("-created_at").values_list("version", flat=True)[40]
        from dashboard import attention
        pages = [("inbox", "/inbox/", {}), ("releases", "/releases/", {}),
                 ("where", f"/releases/?q={version}", {}), ("trends", "/trends/?days=30", {}),
                 ("run", f"/runs/{run_pk}/", {}), ("envs", "/environments/", {})]
        for name, path, headers in pages:
            if wanted(name):
                measure(name, path, **headers)
                measure(name + "*", path, afresh=True, **headers)
        if wanted("empty"):
            measure("empty", "/empty/")
            measure("empty*", "/empty/", afresh=True)
        if wanted("strip"):
            measure("strip", f"/attention/?v={attention.version()}", expect=204,
                    **{"HX-Request": "true"})
            # The strip when its counts must be made again (every page pays this).
            measure("strip*", "/attention/", afresh=True, **{"HX-Request": "true"})
        for name, ms, ratio, count in rows:
            print(f"{size:>8} {name:<8} {ms:7.2f} {ratio:9.2f} {count:>7}", flush=True)


if __name__ == "__main__":
    main()
