"""Sync benchmark: how close a full sync comes to the cost of merely reading the API.

Fills a Buddy.works simulator with N executions, serving real HTTP on loopback from a
process of its own (as a provider is another machine), then measures
  fetch  the client listing every page over HTTP and parsing it into RunData (the limit:
         a sync cannot be faster than reading what it syncs);
  sync   `dashboard.sync.sync_connection` writing all N runs and their jobs into an empty
         PostgreSQL database, the same call the Celery task makes;
and prints both, their ratio, and the database queries it takes to write a page of
several sizes.

    .venv/bin/python bench/sync.py [--runs 10000] [--repeat 7]

Targets (issue #4): ratio <= 1.5, queries per page the same whatever the page size.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics

from common import best_of, setup_django

PIPELINES = 4


def serve_simulator(runs: int, conn) -> None:
    """Child process: a Buddy simulator holding `runs` finished executions."""
    from providers.simulators.base import SimClock
    from providers.simulators.buddy import BUILD_PLAN, BuddySimulator

    sim = BuddySimulator(token="bench", clock=SimClock(speed=0))
    sim.rate_limit = 10**9  # measuring throughput, not the provider's limit
    for i in range(runs):
        sim.add_execution("web-shop", 1 + i % PIPELINES, BUILD_PLAN, age=(runs - i) * 30)
    sim.advance(3600)  # every run finished: the pass is pure listing, no per-run refetch
    sim.start()
    conn.send((sim.url, sim.token, sim.workspace))
    conn.recv()  # until the benchmark is done
    sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    setup_django()

    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    from dashboard import sync
    from dashboard.models import Connection
    from providers import buddy

    ours, theirs = multiprocessing.Pipe()
    simulator = multiprocessing.Process(target=serve_simulator, args=(args.runs, theirs),
                                        daemon=True)
    simulator.start()
    url, token, workspace = ours.recv()
    connection = Connection.objects.create(
        provider="buddy", name="bench", base_url=url, token=token,
        scope={"workspace": workspace},
    )

    def fetch() -> int:
        with connection.client() as client:
            return sum(len(page) for page in client.list_runs())

    def empty() -> None:
        with db.cursor() as cursor:
            cursor.execute("TRUNCATE dashboard_run, dashboard_project RESTART IDENTITY CASCADE")
        Connection.objects.filter(pk=connection.pk).update(cursor={})

    def full_sync() -> sync.SyncResult:
        result = sync.sync_connection(connection.pk)
        assert result.runs_written == args.runs, result
        return result

    assert fetch() == args.runs
    # Alternate the two, so a slow moment of this machine weighs on both alike.
    fetch_times, sync_times = [], []
    for _ in range(args.repeat):
        fetch_times.append(best_of(1, fetch)[0])
        sync_times.append(best_of(1, full_sync, setup=empty)[0])
    incremental_best, _ = best_of(args.repeat, lambda: sync.sync_connection(connection.pk))
    fetch_best, fetch_median = min(fetch_times), statistics.median(fetch_times)
    sync_best, sync_median = min(sync_times), statistics.median(sync_times)
    ratios = sorted(s / f for f, s in zip(fetch_times, sync_times, strict=True))

    print(f"runs: {args.runs} in {PIPELINES} pipelines, {buddy.PAGE_SIZE} per page, "
          f"3 jobs each; {args.repeat} rounds, best (median)")
    print(f"fetch + parse over HTTP:    {fetch_best:5.2f} s ({fetch_median:.2f})"
          f"  {args.runs / fetch_best:6.0f} runs/s")
    print(f"full sync into an empty db: {sync_best:5.2f} s ({sync_median:.2f})"
          f"  {args.runs / sync_best:6.0f} runs/s")
    print(f"ratio sync / fetch: median {statistics.median(ratios):.2f}, of best times "
          f"{sync_best / fetch_best:.2f}, per round {ratios[0]:.2f} to {ratios[-1]:.2f}"
          f"  (target <= 1.5)")
    print(f"incremental re-sync (nothing new): {incremental_best * 1000:.0f} ms")

    # Queries to write one page, whatever its size (COPY counts as one).
    with connection.client() as client:
        runs = [run for page in client.list_runs() for run in page]
    for size in (25, 50, 100, 500):
        empty()
        db.queries_log.clear()
        with CaptureQueriesContext(db) as queries:
            written = sync.upsert_runs(connection, runs[:size])
        assert written == size
        print(f"writing a page of {size:3} runs (and their jobs): {len(queries)} queries")
    empty()
    db.queries_log.clear()
    with CaptureQueriesContext(db) as queries:
        result = sync.sync_connection(connection.pk)
    print(f"a full sync: {result.pages} pages fetched, {len(queries)} queries in all "
          f"(pages fetched while a write runs are written together)")
    ours.send("stop")
    simulator.join(timeout=10)


if __name__ == "__main__":
    main()
