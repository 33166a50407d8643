"""Shared set-up for the benchmarks: Django on a PostgreSQL database of their own.

The benchmarks never touch the test or demo databases: they create (if needed) and
empty `runboard_bench` on the server in DATABASE_URL (default: the local one the test
suite uses), then migrate it.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/runboard_bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings_test")
warnings.filterwarnings("ignore", message="No directory at")  # no collectstatic here


def setup_django() -> None:
    import django
    import psycopg

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    params = connection.settings_dict
    admin = psycopg.connect(host=params["HOST"], port=params["PORT"] or 5432,
                            user=params["USER"], dbname="postgres", autocommit=True)
    with admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                               [params["NAME"]]).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{params["NAME"]}"')
    call_command("migrate", interactive=False, verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE dashboard_connection, auth_user RESTART IDENTITY CASCADE")


def best_of(repeat: int, fn, setup=None) -> tuple[float, float]:
    """Run fn `repeat` times (after an untimed `setup`); return (best, median) seconds."""
    times = []
    for _ in range(repeat):
        if setup:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)
