"""What PostgreSQL plans for a query: which index serves it."""

from django.db import connection as db


def plan_of(queryset) -> str:
    """EXPLAIN of `queryset`, sequential scans off: a test's tables are tiny, and the
    question is whether an index can serve the query, not whether it pays yet."""
    sql, params = queryset.query.sql_with_params()
    with db.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())
