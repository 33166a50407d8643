"""Webhook log benchmark: what a delivery's flush pays to find what is still unread, as
the delivery log grows.

Every accepted delivery queues a flush (`webhooks.flush`), which asks whether anything
is unread and then reads those rows; the connections page asks every 5 s how many are
unread per connection. The log keeps a month of deliveries (RUNBOARD_LOG_RETENTION_DAYS),
almost all of them read. This fills it with --deliveries read deliveries shared by four
connections, one unread, and times those lookups
  baseline  on an empty log (the same queries, nothing to skip);
  indexed   on the full log, with the `delivery_unread` partial index;
  no index  on the full log, that index dropped for the measurement (then restored):
            what every flush paid before it.
Prints the median and the spread across --repeat rounds, in milliseconds.

    .venv/bin/python bench/webhook_log.py [--deliveries 300000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import setup_django


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    setup_django()

    from django.db import connection as db

    from dashboard import webhooks
    from dashboard.models import Connection, WebhookDelivery

    table = WebhookDelivery._meta.db_table
    connections = [Connection.objects.create(provider="buddy", name=f"bench {n}",
                                             base_url="http://127.0.0.1:9", token="bench",
                                             scope={"workspace": "bench"})
                   for n in range(4)]
    first = connections[0].pk

    def lookups() -> None:
        """A flush's two lookups and the connections page's count."""
        webhooks.pending(first).exists()
        list(webhooks.pending(first).order_by("received_at").values_list("pk", "hints"))
        WebhookDelivery.objects.unread_by_connection()

    def measure() -> list[float]:
        lookups()  # warm
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            lookups()
            times.append((time.perf_counter() - start) * 1000)
        return times

    def unread_one() -> None:
        WebhookDelivery.objects.create(connection_id=first, outcome="accepted",
                                       http_status=202, event="EXECUTION_STARTED",
                                       hints=[{"project": "p", "pipeline": "1", "id": 1}])

    unread_one()
    figures = {"baseline (empty log)": measure()}
    with db.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (connection_id, received_at, outcome, http_status, event,"
            " delivery_id, reason, hints, processed_at, runs_written)"
            " SELECT (ARRAY[%s, %s, %s, %s])[1 + g %% 4], now() - g * interval '8 seconds',"
            " 'accepted', 202, 'EXECUTION_SUCCESSFUL', g::text, '',"
            " '[{\"project\": \"p\", \"pipeline\": \"1\", \"id\": 1}]',"
            " now() - g * interval '8 seconds', 1"
            " FROM generate_series(1, %s) AS g",
            [*(c.pk for c in connections), args.deliveries])
        cursor.execute(f"ANALYZE {table}")
    figures[f"indexed ({args.deliveries:,} read)"] = measure()
    with db.cursor() as cursor:
        cursor.execute("SELECT pg_get_indexdef('delivery_unread'::regclass)")
        definition = cursor.fetchone()[0]
        cursor.execute("DROP INDEX delivery_unread")
        try:
            figures["no index"] = measure()
        finally:
            cursor.execute(definition)
    print(f"finding a connection's unread webhook deliveries (a flush's two lookups and the"
          f" connections page's count), ms over {args.repeat} rounds")
    for label, times in figures.items():
        print(f"  {label:32} median {statistics.median(times):7.2f}"
              f"  ({min(times):.2f} to {max(times):.2f})")
    with db.cursor() as cursor:
        cursor.execute(f"TRUNCATE {table}")


if __name__ == "__main__":
    main()
