"""What an operator expects: login lockout, CSP without inline code, HTTPS settings from the
environment, `check --deploy` clean, API tokens that expire and can be read-only."""

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from dashboard import sync
from dashboard.models import ActionRecord, ApiToken, Run
from providers.simulators.buddy import DEPLOY_PLAN

ROOT = Path(__file__).resolve().parent.parent

# The production environment the README shows (with placeholder values).
README_PRODUCTION_ENV = {
    "SECRET_KEY": "Zq3v-8xN_7Lr2kWp9sT4bYc6Hd1Fj5Gm0Qa8Ue3Io7Pz2Xw6Rt9Ly4Kv1Ns5Mb8Cd",
    "DATABASE_URL": "postgres://runboard:pw@db:5432/runboard",
    "CELERY_BROKER_URL": "redis://redis:6379/0",
    "CACHE_URL": "redis://redis:6379/1",
    "ALLOWED_HOSTS": "runboard.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://runboard.example.com",
    "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "TRUSTED_PROXY_COUNT": "1",
}


def production(*args, env):
    """Run a command as production would: dashboard.settings, only these variables."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60,
                          env={**keep, "DJANGO_SETTINGS_MODULE": "dashboard.settings", **env})


def test_check_deploy_is_clean_under_the_readme_production_environment(tmp_path):
    # Before: HSTS, SSL redirect and the proxy header could not be set from the environment.
    result = production("manage.py", "check", "--deploy", "--fail-level", "WARNING",
                        env={**README_PRODUCTION_ENV, "RUNBOARD_VAR_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_https_and_proxy_settings_come_from_the_environment(tmp_path):
    script = ("import django, json; django.setup(); from django.conf import settings as s; "
              "print(json.dumps([s.SECURE_SSL_REDIRECT, s.SECURE_PROXY_SSL_HEADER, "
              "s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_PRELOAD, "
              "s.SECRET_KEY_FALLBACKS, s.AXES_IPWARE_PROXY_COUNT]))")
    env = {**README_PRODUCTION_ENV, "RUNBOARD_VAR_DIR": str(tmp_path),
           "SECRET_KEY_FALLBACKS": "older-key,oldest-key"}
    result = production("-c", script, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        True, ["HTTP_X_FORWARDED_PROTO", "https"], 31536000, True, True,
        ["older-key", "oldest-key"], 1]


@pytest.mark.django_db
def test_repeated_failed_logins_lock_the_username_out(client, viewer):
    # Before: unlimited guesses.
    for _ in range(4):
        failed = client.post("/accounts/login/", {"username": "viewer", "password": "guess"})
        assert failed.status_code == 200  # the form again, with its error
    fifth = client.post("/accounts/login/", {"username": "viewer", "password": "guess"})
    assert fifth.status_code == 429  # AXES_FAILURE_LIMIT (5) reached: locked out
    locked = client.post("/accounts/login/", {"username": "viewer", "password": "viewer-pass"})
    assert locked.status_code == 429
    assert b"Too many failed logins" in locked.content
    assert "_auth_user_id" not in client.session
    # Another user at the same address is not locked out by someone guessing viewer's.
    User.objects.create_user("other", password="other-pass")
    ok = client.post("/accounts/login/", {"username": "other", "password": "other-pass"})
    assert ok.status_code == 302


@pytest.mark.django_db
def test_pages_send_a_content_security_policy_without_inline_code(client, viewer):
    client.force_login(viewer)
    for url in ("/runs/", "/connections/", "/audit/", "/profile/", "/accounts/login/"):
        policy = client.get(url).headers.get("Content-Security-Policy", "")
        directives = dict(
            (part.split()[0], part.split()[1:]) for part in policy.split(";") if part.strip())
        assert directives.get("script-src") == ["'self'"], (url, policy)
        assert directives.get("style-src") == ["'self'"], (url, policy)
        assert directives.get("frame-ancestors") == ["'none'"], (url, policy)
        assert "unsafe" not in policy


INLINE_CODE = {
    "inline <script>": re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I),
    "inline event handler": re.compile(r"\son[a-z]+\s*=", re.I),
    "inline style": re.compile(r"\sstyle\s*=|<style", re.I),
    "hx-on (evaluated)": re.compile(r"\shx-on", re.I),
    "js: value (evaluated)": re.compile(r"hx-(vals|headers)='?\"?\s*(js|javascript):", re.I),
}


def has_trigger_filter(text: str) -> bool:
    """An hx-trigger event filter (`every 3s [cond]`, `click[ctrlKey]`) is evaluated as
    JavaScript; a CSS selector after `from:` (`from:input[name=q]`) is not."""
    for trigger in re.findall(r'hx-trigger="([^"]*)"', text):
        if "[" in re.sub(r"from:[^\s,]+", "", trigger):
            return True
    return False


def test_no_template_has_inline_code_the_policy_would_block():
    # Before: the live polls used hx-trigger filters, which htmx evaluates (eval).
    found = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        text = path.read_text()
        found += [f"{path.relative_to(ROOT)}: {what}" for what, pattern in INLINE_CODE.items()
                  if pattern.search(text)]
        if has_trigger_filter(text):
            found.append(f"{path.relative_to(ROOT)}: hx-trigger filter (evaluated)")
    assert found == []


# --- API tokens: expiry and a read-only scope ------------------------------------------


@pytest.fixture
def active_run(buddy_sim, buddy_connection):
    buddy_sim.add_execution("web-shop", 1, DEPLOY_PLAN)
    buddy_sim.advance(10)
    sync.sync_connection(buddy_connection.pk)
    return Run.objects.get()


@pytest.mark.django_db
def test_a_read_only_token_can_read_but_not_act(client, manager, active_run, buddy_sim):
    _, key = ApiToken.issue(manager, "dashboard screen", read_only=True)
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/runs/", headers=headers).status_code == 200
    assert client.get(f"/api/runs/{active_run.pk}/", headers=headers).status_code == 200
    sent = len(buddy_sim.requests)
    response = client.post(f"/api/runs/{active_run.pk}/cancel/", {"comment": "stop"},
                           content_type="application/json", headers=headers)
    assert response.status_code == 403
    assert "read-only" in response.json()["error"]
    assert len(buddy_sim.requests) == sent
    assert not ActionRecord.objects.exists()
    _, full = ApiToken.issue(manager, "bot")
    acted = client.post(f"/api/runs/{active_run.pk}/cancel/", {"comment": "stop"},
                        content_type="application/json",
                        headers={"Authorization": f"Bearer {full}"})
    assert acted.status_code == 200


@pytest.mark.django_db
def test_tokens_expire(client, viewer):
    token, key = ApiToken.issue(viewer, "short", expires_in=timedelta(days=7))
    assert token.expires_at - timezone.now() > timedelta(days=6, hours=23)
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/runs/", headers=headers).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.get("/api/runs/", headers=headers)
    assert response.status_code == 401
    assert "expired" in response.json()["error"]


@pytest.mark.django_db
def test_profile_issues_tokens_with_a_scope_and_an_expiry(client, viewer):
    client.force_login(viewer)
    response = client.post("/profile/", {"name": "screen", "expires_in": "30", "read_only": "on"})
    assert response.status_code == 302  # post/redirect/get: a reload creates no second token
    token = ApiToken.objects.get()
    assert token.read_only
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    listing = client.get("/profile/").content.decode()
    assert "read only" in listing
    assert token.expires_at.strftime("%Y-%m-%d") in listing


@pytest.mark.django_db
def test_an_admin_lists_and_revokes_everyones_tokens(client, viewer, manager):
    theirs, key = ApiToken.issue(viewer, "viewer laptop")
    ApiToken.issue(manager, "manager bot")
    client.force_login(User.objects.create_superuser("root", password="pw"))
    listing = client.get("/admin/dashboard/apitoken/")
    assert listing.status_code == 200
    assert b"viewer laptop" in listing.content and b"manager bot" in listing.content
    assert theirs.key_hash.encode() not in listing.content
    response = client.post("/admin/dashboard/apitoken/", {
        "action": "revoke", "_selected_action": [theirs.pk]})
    assert response.status_code == 302
    theirs.refresh_from_db()
    assert theirs.revoked_at is not None
    assert client.get("/api/runs/", headers={"Authorization": f"Bearer {key}"}).status_code \
        == 401
    assert client.get(f"/admin/dashboard/apitoken/{theirs.pk}/delete/").status_code == 403


def test_health_probes_are_not_redirected_to_https(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/runs/").status_code == 301  # everything else goes to HTTPS
    assert client.get("/healthz").status_code == 200
