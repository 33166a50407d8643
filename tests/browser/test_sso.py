"""Single sign-on end to end: Chromium, Runboard and a real OIDC provider on loopback."""

import pytest
from django.contrib.auth.models import User

from dashboard.management.commands.oidc_endpoints import discover
from tests.oidc_provider import oidc_provider

pytestmark = pytest.mark.browser

ACCOUNTS = {
    "alice": {"email": "alice@example.com", "email_verified": True, "name": "Alice",
              "groups": ["developers", "release-managers"]},
    "bob": {"email": "bob@example.com", "email_verified": True, "name": "Bob",
            "groups": ["developers"]},
    # Some providers (Amazon Cognito among them) send the flag as a string.
    "carol": {"email": "carol@example.com", "email_verified": "false", "name": "Carol",
              "groups": ["release-managers"]},
}


@pytest.fixture
def sso(live_server, settings):
    with oidc_provider(redirect_uri=f"{live_server.url}/oidc/callback/",
                       accounts=ACCOUNTS) as provider:
        for setting, value in discover(provider["issuer"]).items():
            setattr(settings, setting, value)
        settings.OIDC_RP_CLIENT_ID = provider["client_id"]
        settings.OIDC_RP_CLIENT_SECRET = provider["client_secret"]
        yield provider


def sso_login(page, login):
    page.goto("/accounts/login/?next=/runs/")
    page.get_by_role("link", name="Log in with single sign-on").click()
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any password")
    page.locator("button[type=submit]").click()
    page.get_by_role("button", name="Continue").click()  # the provider's consent screen
    page.wait_for_url("**/runs/")


def test_sso_login_lands_a_release_manager_through_the_groups_claim(page, sso):
    sso_login(page, "alice")

    user = User.objects.get(username="alice@example.com")
    assert user.email == "alice@example.com"
    assert user.has_perm("dashboard.act_on_run")
    assert not user.has_usable_password()
    assert "alice@example.com" in page.locator("header").inner_text()


def test_sso_user_outside_the_managers_group_only_looks_and_loses_a_former_role(page, sso):
    from dashboard.models import release_managers_group

    bob = User.objects.create_user("bob@example.com", email="bob@example.com")
    bob.set_unusable_password()
    bob.save()
    bob.groups.add(release_managers_group())  # granted once; the IdP no longer says so

    sso_login(page, "bob")

    bob = User.objects.get(username="bob@example.com")
    assert not bob.has_perm("dashboard.act_on_run")
    assert User.objects.filter(username__endswith="@example.com").count() == 1


def test_sso_never_takes_over_or_collides_with_a_local_account(page, sso):
    """A local account named like the IdP's e-mail (it has a password): the login fails
    back to the login page, and the account is neither used nor changed."""
    local = User.objects.create_user("alice@example.com", email="alice@example.com",
                                     password="local-secret")

    page.goto("/accounts/login/?next=/runs/")
    page.get_by_role("link", name="Log in with single sign-on").click()
    page.fill("input[name=login]", "alice")
    page.fill("input[name=password]", "any password")
    page.locator("button[type=submit]").click()
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**/accounts/login/?sso=failed")

    assert page.get_by_text("Server Error").count() == 0
    local.refresh_from_db()
    assert local.check_password("local-secret")
    assert not local.has_perm("dashboard.act_on_run")
    assert User.objects.filter(username__endswith="@example.com").count() == 1


def test_sso_refuses_an_e_mail_the_provider_says_is_unverified_as_a_string(page, sso):
    page.goto("/accounts/login/?next=/runs/")
    page.get_by_role("link", name="Log in with single sign-on").click()
    page.fill("input[name=login]", "carol")
    page.fill("input[name=password]", "any password")
    page.locator("button[type=submit]").click()
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**/accounts/login/?sso=failed")

    assert not User.objects.filter(username="carol@example.com").exists()
