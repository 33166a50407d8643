"""The audit trail as CSV or JSON Lines, streamed row by row with the audit page's filters."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

COLUMNS = ["id", "created_at", "finished_at", "user", "action", "force_cancel", "state",
           "response_code", "run_id", "run", "run_external_id", "provider", "connection",
           "comment", "provider_response"]
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


def rows(queryset) -> Iterator[dict]:
    records = (queryset.select_related("run__connection", "user")
               .defer("run__raw", "run__connection__token", "run__connection__cursor")
               .order_by("created_at", "id"))
    for record in records.iterator(chunk_size=500):
        run = record.run
        yield {
            "id": record.pk,
            "created_at": record.created_at,
            "finished_at": record.finished_at,
            "user": record.user.get_username(),
            "action": record.kind,
            "force_cancel": bool(record.options.get("force_cancel")),
            "state": record.state,
            "response_code": record.response_code,
            "run_id": run.pk,
            "run": str(run),
            "run_external_id": run.external_id,
            "provider": run.connection.provider,
            "connection": run.connection.name,
            "comment": record.comment,
            "provider_response": record.response,
        }


class _Line:
    """A file-like for csv.writer that hands back each line instead of storing it."""

    def write(self, value: str) -> str:
        return value


def _cell(value) -> str:
    if value is None:
        return ""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    # Comments and provider text are untrusted: a spreadsheet must not run them as formulas.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def as_csv(queryset) -> Iterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(COLUMNS)
    for row in rows(queryset):
        yield writer.writerow([_cell(row[c]) for c in COLUMNS])


def as_jsonl(queryset) -> Iterator[str]:
    for row in rows(queryset):
        yield json.dumps(row, cls=DjangoJSONEncoder, ensure_ascii=False) + "\n"


def filename(fmt: str) -> str:
    return f"runboard-audit-{timezone.now():%Y%m%d-%H%M%S}.{fmt}"


STREAMS = {"csv": as_csv, "jsonl": as_jsonl}
