"""The audit is append-only (admin, foreign keys, the database itself) and exportable."""

import csv
import io
import json

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db import connection as db
from django.db.models import ProtectedError

from dashboard import sync
from dashboard.models import ActionRecord, Connection, Run
from providers.simulators.buddy import DEPLOY_PLAN

pytestmark = pytest.mark.django_db


@pytest.fixture
def audited(buddy_sim, buddy_connection, manager):
    """A synced run with two finished action records and one in flight."""
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    sync.sync_connection(buddy_connection.pk)
    run = Run.objects.get()
    done = ActionRecord.objects.create(run=run, user=manager, kind="cancel",
                                       comment="=HYPERLINK(\"http://evil\")",
                                       state=ActionRecord.State.SUCCEEDED, response_code=200)
    refused = ActionRecord.objects.create(run=run, user=manager, kind="approve",
                                          comment="looks fine", state=ActionRecord.State.FAILED,
                                          response="Refused by Runboard: no")
    pending = ActionRecord.objects.create(run=run, user=manager, kind="retry")
    return run, done, refused, pending


@pytest.fixture
def superuser_client(client):
    client.force_login(User.objects.create_superuser("root", password="pw"))
    return client


def test_admin_cannot_add_change_or_delete_action_records(superuser_client, audited):
    # Before: the admin offered delete on action records.
    _, done, _, _ = audited
    base = "/admin/dashboard/actionrecord/"
    assert superuser_client.get(f"{base}{done.pk}/delete/").status_code == 403
    assert superuser_client.post(f"{base}{done.pk}/delete/", {"post": "yes"}).status_code == 403
    assert superuser_client.get(f"{base}add/").status_code == 403
    listing = superuser_client.get(base)
    assert listing.status_code == 200
    assert b"delete_selected" not in listing.content
    bulk = superuser_client.post(base, {"action": "delete_selected", "_selected_action":
                                        [done.pk], "post": "yes"})
    assert bulk.status_code in (200, 302)
    assert ActionRecord.objects.count() == 3


def test_admin_shows_runs_and_jobs_read_only(superuser_client, audited):
    # Before: runs were editable (and deletable, taking their audit with them).
    run, *_ = audited
    base = "/admin/dashboard/run/"
    view = superuser_client.get(f"{base}{run.pk}/change/")
    assert view.status_code == 200
    assert b'name="status"' not in view.content  # shown, not an input
    changed = superuser_client.post(f"{base}{run.pk}/change/", {"name": "renamed",
                                                              "status": "failed"})
    assert changed.status_code == 403
    assert superuser_client.get(f"{base}{run.pk}/delete/").status_code == 403
    assert superuser_client.get(f"{base}add/").status_code == 403
    run.refresh_from_db()
    assert run.name != "renamed"


def test_a_connection_with_action_history_cannot_be_deleted(superuser_client, audited,
                                                            buddy_connection):
    # Before: deleting the connection cascaded to its runs and their action records.
    page = superuser_client.get(f"/admin/dashboard/connection/{buddy_connection.pk}/delete/")
    assert b"Cannot delete connection" in page.content  # it lists the protected records
    superuser_client.post(f"/admin/dashboard/connection/{buddy_connection.pk}/delete/",
                          {"post": "yes"})
    assert Connection.objects.filter(pk=buddy_connection.pk).exists()
    with pytest.raises(ProtectedError):
        buddy_connection.delete()
    assert ActionRecord.objects.count() == 3


def test_a_connection_without_history_can_still_be_deleted(buddy_connection):
    buddy_connection.delete()
    assert not Connection.objects.exists()


def test_the_database_refuses_to_delete_or_rewrite_finished_records(audited):
    _, done, refused, pending = audited
    for sql, params in [
        ("DELETE FROM dashboard_actionrecord WHERE id = %s", [done.pk]),
        ("DELETE FROM dashboard_actionrecord WHERE id = %s", [pending.pk]),
        ("UPDATE dashboard_actionrecord SET comment = 'edited' WHERE id = %s", [done.pk]),
        ("UPDATE dashboard_actionrecord SET state = 'succeeded' WHERE id = %s", [refused.pk]),
    ]:
        with pytest.raises(IntegrityError, match="append-only"), transaction.atomic(), \
                db.cursor() as cursor:
            cursor.execute(sql, params)
    # The action path still records the outcome of what is in flight.
    pending.state, pending.response_code = ActionRecord.State.SUCCEEDED, 200
    pending.save()
    assert ActionRecord.objects.get(pk=pending.pk).state == "succeeded"
    assert ActionRecord.objects.get(pk=done.pk).comment.startswith("=HYPERLINK")


def test_export_needs_login(client, audited):
    for fmt in ("csv", "jsonl"):
        response = client.get(f"/audit/export.{fmt}")
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_export_csv_streams_the_filtered_audit(client, viewer, audited):
    _, done, _, _ = audited
    client.force_login(viewer)
    page = client.get("/audit/?state=succeeded")
    assert b"/audit/export.csv?state=succeeded" in page.content
    response = client.get("/audit/export.csv?state=succeeded")
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [int(r["id"]) for r in rows] == [done.pk]
    row = rows[0]
    assert (row["user"], row["action"], row["state"], row["connection"]) == (
        "manager", "cancel", "succeeded", "Buddy")
    # An untrusted comment is never a spreadsheet formula.
    assert row["comment"] == "'=HYPERLINK(\"http://evil\")"


def test_export_jsonl_has_one_object_per_record(client, viewer, audited):
    _, done, refused, pending = audited
    client.force_login(viewer)
    response = client.get("/audit/export.jsonl")
    assert response.status_code == 200
    assert response.streaming
    lines = b"".join(response.streaming_content).decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == [done.pk, refused.pk, pending.pk]  # oldest first
    assert records[1]["provider_response"] == "Refused by Runboard: no"
    assert records[0]["comment"] == "=HYPERLINK(\"http://evil\")"  # JSON keeps it verbatim
    filtered = client.get("/audit/export.jsonl?kind=approve")
    assert [json.loads(x)["id"] for x in b"".join(filtered.streaming_content).splitlines()] \
        == [refused.pk]
    assert client.get("/audit/export.xml").status_code == 404
