"""Logging in: local-login modes and single sign-on's failure paths (no browser needed)."""

from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import RequestFactory

from dashboard.management.commands.oidc_endpoints import discover

CLOSED = "http://127.0.0.1:9"  # discard port: nothing listens


@pytest.fixture
def oidc_to_nowhere(settings):
    settings.OIDC_RP_CLIENT_ID = "runboard"
    settings.OIDC_RP_CLIENT_SECRET = "secret"
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{CLOSED}/auth"
    settings.OIDC_OP_TOKEN_ENDPOINT = f"{CLOSED}/token"
    settings.OIDC_OP_USER_ENDPOINT = f"{CLOSED}/me"
    settings.OIDC_OP_JWKS_ENDPOINT = f"{CLOSED}/jwks"
    settings.OIDC_TIMEOUT = 2


def test_sso_routes_are_404_while_unconfigured(client, db):
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404
    assert b"single sign-on" not in client.get("/accounts/login/").content


def test_login_page_offers_sso_when_configured(client, db, oidc_to_nowhere):
    page = client.get("/accounts/login/?next=/audit/").content.decode()
    assert 'href="/oidc/authenticate/?next=/audit/"' in page


def test_a_provider_that_is_down_fails_the_login_with_a_message_not_a_500(
        client, db, oidc_to_nowhere):
    start = client.get("/oidc/authenticate/")
    assert start.status_code == 302
    state = parse_qs(urlparse(start["Location"]).query)["state"][0]

    callback = client.get(f"/oidc/callback/?code=abc&state={state}")

    assert callback.status_code == 302
    assert callback["Location"] == "/accounts/login/?sso=failed"
    assert b"Single sign-on did not complete" in client.get(callback["Location"]).content
    assert not User.objects.exists()


def test_a_forged_callback_state_is_refused_without_a_500(client, db, oidc_to_nowhere):
    client.get("/oidc/authenticate/")
    assert client.get("/oidc/callback/?code=abc&state=forged").status_code in {302, 400}


@pytest.mark.parametrize(("mode", "manager_ok", "admin_ok"), [
    ("on", True, True), ("admins", False, True), ("off", False, False),
])
def test_local_login_modes(client, db, settings, mode, manager_ok, admin_ok):
    settings.RUNBOARD_LOCAL_LOGIN = mode
    User.objects.create_user("manager", password="pw-manager-1")
    User.objects.create_superuser("admin", password="pw-admin-1")

    # django-axes checks every login attempt against the request it came with.
    request = RequestFactory().post("/accounts/login/")
    assert client.login(request=request, username="manager", password="pw-manager-1") \
        is manager_ok
    assert client.login(request=request, username="admin", password="pw-admin-1") is admin_ok


def test_login_form_is_hidden_when_local_login_is_off(client, db, settings):
    settings.RUNBOARD_LOCAL_LOGIN = "off"
    assert b'name="password"' not in client.get("/accounts/login/").content


def test_oidc_endpoints_reports_an_unreachable_issuer():
    with pytest.raises(CommandError, match="Could not read"):
        call_command("oidc_endpoints", CLOSED)
    with pytest.raises(CommandError):
        discover(CLOSED, timeout=1)


@pytest.mark.parametrize(("claims", "required", "accepted"), [
    ({"email": "a@example.com", "email_verified": True}, True, True),
    ({"email": "a@example.com"}, True, False),  # the provider does not say: not verified
    ({"email": "a@example.com"}, False, True),  # the operator vouches for the provider
    ({"email": "a@example.com", "email_verified": "false"}, False, False),
    ({"email": "a@example.com", "email_verified": False}, False, False),
])
def test_sso_accepts_only_an_e_mail_the_provider_verified(settings, claims, required, accepted):
    from dashboard.auth import OIDCBackend

    settings.RUNBOARD_OIDC_REQUIRE_VERIFIED_EMAIL = required
    assert OIDCBackend().verify_claims(claims) is accepted


def test_sso_matches_an_e_mail_whatever_its_case(db, oidc_to_nowhere, django_user_model):
    """Providers do not agree on case ("Alice@Example.com" one day, lower case the next):
    one person, one account, whatever the spelling."""
    from dashboard.auth import OIDCBackend

    alice = django_user_model.objects.create_user("alice@example.com", email="alice@example.com")
    backend = OIDCBackend()
    claims = {"email": "Alice@Example.COM ", "email_verified": True}
    assert backend.get_username(claims) == "alice@example.com"
    assert backend.filter_users_by_claims(claims) == [alice]
    # Legacy accounts created with the provider's capitals are still found.
    bob = django_user_model.objects.create_user("Bob@Example.com", email="Bob@Example.com")
    assert backend.filter_users_by_claims({"email": "bob@example.com"}) == [bob]
