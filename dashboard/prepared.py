"""Statements prepared once per database connection.

The pages rendered afresh, the data version and the permissions query each run a
statement whose planning took longer than running it (about 0.2 ms of 0.5 ms for the
data version). On PostgreSQL each is PREPAREd the first time a database connection
runs it and EXECUTEd after that; elsewhere (SQLite, the demo's database) it runs
plainly. Prepared statements live per session: they need a direct or session-mode
database connection (see the README's `DATABASE_URL`).
"""

from __future__ import annotations

import weakref

# The raw connections on which each statement is prepared (a new connection has none).
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def numbered(sql: str) -> str:
    """Django's SQL (%s placeholders, a literal % doubled) with PostgreSQL's $1, $2, ..."""
    *parts, last = sql.split("%s")
    return ("".join(f"{part}${n}" for n, part in enumerate(parts, 1)) + last).replace("%%", "%")


def execute_prepared(cursor, name: str, sql: str, params) -> None:
    """Execute `sql` (Django's placeholders) on `cursor` as the statement `name`,
    prepared once per database connection; elsewhere than PostgreSQL, plainly."""
    wrapper = cursor.db  # (not the `db` proxy: each look through it costs a thread-local's)
    if wrapper.vendor != "postgresql":
        cursor.execute(sql, params)
        return
    done = _prepared.setdefault(wrapper.connection, set())
    if name not in done:
        cursor.execute(f"PREPARE {name} AS {numbered(sql)}")
        done.add(name)
    cursor.execute(f"EXECUTE {name}({', '.join(['%s'] * len(params))})" if params
                   else f"EXECUTE {name}", params)
