"""Lookup benchmark: what the hot paths pay to find the few rows they want, as the
history the database keeps grows.

  unread   a webhook delivery's flush asks whether anything is unread, then reads those
           rows; the connections page counts them per connection (every 5 s). The log
           keeps a month of deliveries (RUNBOARD_LOG_RETENTION_DAYS), almost all read.
  active   every sync pass asks for the connection's runs still active (to re-read
           them) and whether any is (to plan the next pass), and whether one waits.
           Finished runs are almost all of them.
Each is timed
  baseline  on empty tables (the same queries, nothing to skip);
  indexed   with --deliveries read deliveries and --runs runs (every one finished but
            a few), shared by four connections, with the partial index that serves it
            (`delivery_unread`, `run_active`);
  no index  the same, that index dropped for the measurement (then restored): what
            each flush and each pass paid before it.
Prints the median and the spread across --repeat rounds, in milliseconds.

    .venv/bin/python bench/lookups.py [--deliveries 300000] [--runs 400000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import setup_django
from pages import load_sql


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    setup_django()

    from django.db import connection as db
    from django.db.models import F

    from dashboard import webhooks
    from dashboard.models import ACTIVE_RUN, Connection, Run, WebhookDelivery
    from providers.base import Status

    connections = [Connection.objects.create(provider=key, name=f"bench {key}",
                                             base_url="http://127.0.0.1:9", token="bench",
                                             scope={})
                   for key in ("buddy", "qovery", "northflank", "workflows")]
    first = connections[0]

    def unread() -> None:
        webhooks.pending(first.pk).exists()
        list(webhooks.pending(first.pk).order_by("received_at").values_list("pk", "hints"))
        WebhookDelivery.objects.unread_by_connection()

    def active() -> None:
        list(first.runs.to_refresh().values_list("id", "external_id", "locator"))
        first.runs.active().exists()
        first.runs.filter(status=Status.WAITING).exists()

    def measure(fn) -> list[float]:
        fn()  # warm
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return times

    WebhookDelivery.objects.create(connection=first, outcome="accepted", http_status=202,
                                   event="EXECUTION_STARTED", hints=[{"id": 1}])
    figures = {("unread", "baseline"): measure(unread), ("active", "baseline"): measure(active)}

    started = time.perf_counter()
    table = WebhookDelivery._meta.db_table
    with db.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (connection_id, received_at, outcome, http_status, event,"
            " delivery_id, reason, hints, processed_at, runs_written)"
            " SELECT (%s::bigint[])[1 + g %% 4], now() - g * interval '8 seconds',"
            " 'accepted', 202, 'EXECUTION_SUCCESSFUL', g::text, '', '[{\"id\": 1}]',"
            " now() - g * interval '8 seconds', 1 FROM generate_series(1, %s) AS g",
            [[c.pk for c in connections], args.deliveries])
    load_sql(connections, args.runs, 0)
    # A quiet account: everything finished, but for a few runs of each connection.
    (Run.objects.filter(ACTIVE_RUN).alias(one_in=F("pk") % 10000).exclude(one_in=0)
     .update(status=Status.SUCCEEDED))
    with db.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    print(f"# {args.deliveries:,} deliveries and {args.runs:,} runs written in"
          f" {time.perf_counter() - started:.0f} s")

    for kind, fn, index in (("unread", unread, "delivery_unread"),
                            ("active", active, "run_active")):
        figures[kind, "indexed"] = measure(fn)
        with db.cursor() as cursor:
            cursor.execute("SELECT pg_get_indexdef(%s::regclass)", [index])
            definition = cursor.fetchone()[0]
            cursor.execute(f"DROP INDEX {index}")
            try:
                figures[kind, "no index"] = measure(fn)
            finally:
                cursor.execute(definition)

    print(f"ms over {args.repeat} rounds: unread = a flush's two lookups and the connections"
          " page's count; active = a pass's three")
    for (kind, label), times in sorted(figures.items(), key=lambda item: item[0][0]):
        print(f"  {kind:7} {label:9} median {statistics.median(times):7.2f}"
              f"  ({min(times):.2f} to {max(times):.2f})")
    with db.cursor() as cursor:
        cursor.execute(f"TRUNCATE {table}, {Run._meta.db_table} CASCADE")


if __name__ == "__main__":
    main()
