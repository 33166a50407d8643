"""SECRET_KEY rotation: fallbacks read from the environment, an undecryptable token fails
loudly (never sent, never re-saved), `rotate_tokens`, and the README's procedure as written."""

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection as db
from django.test import override_settings

from dashboard import sync
from dashboard.models import ActionRecord, ApiToken, Connection, Run
from providers.base import ProviderError
from providers.simulators.buddy import DEPLOY_PLAN

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "buddy-test-token"


@contextmanager
def keys(secret: str, fallbacks=()):
    """Run as a server configured with these keys. The encryption library caches the keys
    it derived on the field, so the cache is dropped here as a restart would."""
    field = Connection._meta.get_field("token")

    def forget():
        field.__dict__.pop("keys", None)
        field.__dict__.pop("f", None)

    forget()
    try:
        with override_settings(SECRET_KEY=secret, SECRET_KEY_FALLBACKS=list(fallbacks)):
            forget()
            yield
    finally:
        forget()


def stored_token(pk) -> str:
    with db.cursor() as cursor:
        cursor.execute("SELECT token FROM dashboard_connection WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def authorisations(sim) -> list:
    """Every Authorization header the simulator received."""
    seen = []
    check = sim.authorised

    def recording(headers):
        seen.append(headers.get("authorization"))
        return check(headers)

    sim.authorised = recording
    return seen


@pytest.fixture
def old_key_connection(db, buddy_sim):
    """A connection whose token was stored under a key this server no longer has."""
    with keys("the-old-key"):
        connection = Connection.objects.create(
            provider="buddy", name="Buddy", base_url=buddy_sim.url, token=TOKEN,
            scope={"workspace": buddy_sim.workspace})
    return connection


@pytest.mark.django_db
def test_an_undecryptable_token_is_never_sent_to_the_provider(buddy_sim, old_key_connection):
    # Before: the library handed back the ciphertext and the sync sent it as the token.
    seen = authorisations(buddy_sim)
    ciphertext = stored_token(old_key_connection.pk)
    with keys("the-new-key"), pytest.raises(ProviderError):
        sync.sync_connection(old_key_connection.pk)
    assert f"Bearer {ciphertext}" not in seen
    assert seen == []  # nothing at all went out with an unusable token
    old_key_connection.refresh_from_db()
    assert "Token unreadable: re-enter it" in old_key_connection.last_error


@pytest.mark.django_db
def test_the_old_key_as_fallback_still_reads_the_token(buddy_sim, old_key_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    with keys("the-new-key", fallbacks=["the-old-key"]):
        assert Connection.objects.get().token == TOKEN
        sync.sync_connection(old_key_connection.pk)
    assert Run.objects.count() == 1


@pytest.mark.django_db
def test_actions_refuse_an_unreadable_token_without_calling_the_provider(
        client, manager, buddy_sim, old_key_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    with keys("the-old-key"):
        sync.sync_connection(old_key_connection.pk)
    run = Run.objects.get()
    _, key = ApiToken.issue(manager, "bot")
    seen = authorisations(buddy_sim)
    with keys("the-new-key"):
        response = client.post(f"/api/runs/{run.pk}/cancel/", {"comment": "stop"},
                               content_type="application/json",
                               headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 409
    assert "Token unreadable: re-enter it" in response.json()["error"]
    assert seen == []
    record = ActionRecord.objects.get()
    assert record.state == ActionRecord.State.FAILED
    assert "Token unreadable" in record.response


@pytest.mark.django_db
def test_connections_page_and_admin_say_the_token_is_unreadable(client, old_key_connection):
    ciphertext = stored_token(old_key_connection.pk)
    with keys("the-new-key"):  # sessions are signed with the key too: log in under it
        client.force_login(User.objects.create_superuser("root", password="pw"))
        page = client.get("/connections/")
        change = client.get(f"/admin/dashboard/connection/{old_key_connection.pk}/change/")
        listing = client.get("/admin/dashboard/connection/")
    assert b"Token unreadable: re-enter it" in page.content
    assert b"Token unreadable: re-enter it" in change.content
    assert b"Token unreadable: re-enter it" in listing.content
    for response in (page, change, listing):
        assert ciphertext.encode() not in response.content
        assert TOKEN.encode() not in response.content


def admin_form(connection, **changes):
    data = {"provider": connection.provider, "name": connection.name,
            "base_url": connection.base_url, "token": "", "scope": '{"workspace": "acme"}',
            "enabled": "on"}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.django_db
def test_saving_the_admin_form_never_re_encrypts_an_unreadable_token(client, old_key_connection):
    # Before: the form kept "the stored token", i.e. the ciphertext, and encrypted it
    # again: the token was then lost under the old key as well.
    ciphertext = stored_token(old_key_connection.pk)
    url = f"/admin/dashboard/connection/{old_key_connection.pk}/change/"
    with keys("the-new-key"):
        client.force_login(User.objects.create_superuser("root", password="pw"))
        response = client.post(url, admin_form(old_key_connection, enabled=None))
    assert response.status_code == 302
    assert stored_token(old_key_connection.pk) == ciphertext
    assert Connection.objects.get().enabled is False  # the rest of the form was saved
    with keys("the-old-key"):
        assert Connection.objects.get().token == TOKEN  # the old key still reads it


@pytest.mark.django_db
def test_a_readable_token_is_not_rewritten_when_the_form_leaves_it_empty(client,
                                                                          buddy_connection):
    before = stored_token(buddy_connection.pk)
    client.force_login(User.objects.create_superuser("root", password="pw"))
    response = client.post(f"/admin/dashboard/connection/{buddy_connection.pk}/change/",
                           admin_form(buddy_connection, name="Buddy prod"))
    assert response.status_code == 302
    assert stored_token(buddy_connection.pk) == before
    assert Connection.objects.get().name == "Buddy prod"


@pytest.mark.django_db
def test_re_entering_the_token_in_the_admin_repairs_the_connection(client, old_key_connection):
    url = f"/admin/dashboard/connection/{old_key_connection.pk}/change/"
    with keys("the-new-key"):
        client.force_login(User.objects.create_superuser("root", password="pw"))
        response = client.post(url, admin_form(old_key_connection, token=TOKEN))
        assert response.status_code == 302
        assert Connection.objects.get().token == TOKEN


@pytest.mark.django_db
def test_changing_the_base_url_requires_the_token_again(client, buddy_connection):
    # Before: the stored token went along to whatever host the URL now names.
    client.force_login(User.objects.create_superuser("root", password="pw"))
    url = f"/admin/dashboard/connection/{buddy_connection.pk}/change/"
    elsewhere = "http://127.0.0.1:9/"
    response = client.post(url, admin_form(buddy_connection, base_url=elsewhere))
    assert response.status_code == 200
    assert b"Enter the token again: the base URL changed" in response.content
    assert Connection.objects.get().base_url == buddy_connection.base_url
    response = client.post(url, admin_form(buddy_connection, base_url=elsewhere,
                                           token="a-token-for-that-host"))
    assert response.status_code == 302
    saved = Connection.objects.get()
    assert (saved.base_url, saved.token) == (elsewhere, "a-token-for-that-host")


@pytest.mark.django_db
def test_rotate_tokens_re_encrypts_under_the_current_key(old_key_connection, capsys):
    with keys("the-new-key", fallbacks=["the-old-key"]):
        call_command("rotate_tokens")
    assert "Re-encrypted 1 token(s)" in capsys.readouterr().out
    with keys("the-new-key"):
        assert Connection.objects.get().token == TOKEN


@pytest.mark.django_db
def test_rotate_tokens_leaves_unreadable_tokens_alone_and_says_so(old_key_connection,
                                                                   buddy_sim):
    ciphertext = stored_token(old_key_connection.pk)
    Connection.objects.create(provider="buddy", name="Readable", base_url=buddy_sim.url,
                              token="other-token", scope={})
    with keys("the-new-key"), pytest.raises(CommandError, match="Buddy"):
        call_command("rotate_tokens")
    assert stored_token(old_key_connection.pk) == ciphertext


# --- the README's procedure, as an operator runs it: separate processes, env vars -------


def manage(*args, secret, fallbacks="", env=None, tmp_path):
    settings = db.settings_dict
    environment = {
        key: value for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "SECRET_KEY", "SECRET_KEY_FALLBACKS"}
    }
    environment.update({
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "DATABASE_URL": f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT']}"
                        f"/{settings['NAME']}",
        "RUNBOARD_VAR_DIR": str(tmp_path),
        "SECRET_KEY": secret,
        **({"SECRET_KEY_FALLBACKS": fallbacks} if fallbacks else {}),
        **(env or {}),
    })
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.django_db(transaction=True)
def test_the_readme_rotation_procedure_keeps_every_token(buddy_sim, tmp_path):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    seen = authorisations(buddy_sim)
    old, new = "old-secret-key-0123456789", "new-secret-key-9876543210"

    def run(*args, **kwargs):
        result = manage(*args, tmp_path=tmp_path, **kwargs)
        return result.returncode, result.stdout + result.stderr

    code, out = run("add_connection", "buddy", "Buddy", "--base-url", buddy_sim.url,
                    "--scope", f"workspace={buddy_sim.workspace}", secret=old,
                    env={"RUNBOARD_TOKEN": TOKEN})
    assert code == 0, out
    ciphertext = stored_token(Connection.objects.get().pk)

    # 1. The new key, the old one in SECRET_KEY_FALLBACKS: everything still works.
    code, out = run("sync", secret=new, fallbacks=old)
    assert code == 0, out
    # 2. Re-encrypt every token under the new key.
    code, out = run("rotate_tokens", secret=new, fallbacks=old)
    assert code == 0, out
    assert stored_token(Connection.objects.get().pk) != ciphertext
    # 3. The old key removed: the tokens are still readable.
    code, out = run("sync", secret=new)
    assert code == 0, out
    assert Run.objects.count() == 1
    assert set(seen) == {f"Bearer {TOKEN}"}

    # Skipping step 2 (or a wrong key) fails loudly and sends nothing.
    sent = len(seen)
    code, out = run("sync", secret="a-third-key-000000000000")
    assert code != 0
    assert "Token unreadable: re-enter it" in out
    assert len(seen) == sent


# --- notification channels' Apprise URLs: secrets under the same key -----------------------

CHANNEL_URL = "json://hooks.example.test/a-secret-path"


@pytest.fixture
def old_key_channel(db):
    from dashboard.channels import Channel

    with keys("the-old-key"):
        return Channel.objects.create(name="Ops", url=CHANNEL_URL)


@pytest.mark.django_db
def test_rotate_tokens_re_encrypts_channel_urls_too(old_key_channel, capsys):
    from dashboard.channels import Channel

    with keys("the-new-key", fallbacks=["the-old-key"]):
        call_command("rotate_tokens")
    assert "Re-encrypted 1 channel URL(s)" in capsys.readouterr().out
    with keys("the-new-key"):
        assert Channel.objects.get().url == CHANNEL_URL


@pytest.mark.django_db
def test_an_unreadable_channel_url_fails_loudly_and_is_never_re_encrypted(old_key_channel,
                                                                        client):
    from dashboard.channels import Channel, Delivery
    from dashboard.notifications import send_test

    with db.cursor() as cursor:
        cursor.execute("SELECT url FROM dashboard_channel")
        ciphertext = cursor.fetchone()[0]
    with keys("the-new-key"):
        channel = Channel.objects.get()
        assert "unreadable" in channel.kind and ciphertext not in channel.kind
        delivery = send_test(channel)
        assert delivery.state == Delivery.State.FAILED
        assert "re-enter" in delivery.error
        client.force_login(User.objects.create_superuser("root", password="x"))
        listing = client.get("/admin/dashboard/channel/")
        assert listing.status_code == 200 and ciphertext.encode() not in listing.content
        response = client.post(f"/admin/dashboard/channel/{channel.pk}/change/", {
            "name": "Ops renamed", "url": "", "slack_channel": "", "events": ["failed"],
            "enabled": "on"})
        assert response.status_code == 302
    with db.cursor() as cursor:
        cursor.execute("SELECT name, url FROM dashboard_channel")
        assert cursor.fetchone() == ("Ops renamed", ciphertext)
