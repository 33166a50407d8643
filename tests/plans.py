"""What PostgreSQL plans for a query: which index serves it."""

from django.db import connection as db


def plan_of(queryset) -> str:
    """EXPLAIN of `queryset`, its table analyzed first (the test's rows, uncommitted,
    count) and sequential scans off: the question is which index serves the query."""
    sql, params = queryset.query.sql_with_params()
    with db.cursor() as cursor:
        cursor.execute(f"ANALYZE {queryset.model._meta.db_table}")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())
