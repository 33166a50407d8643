"""Logging in: local passwords and single sign-on with OpenID Connect.

Single sign-on is mozilla-django-oidc (the code flow with PKCE, ID token checked against
the provider's JWKS), on when `OIDC_RP_CLIENT_ID` is set. A user is created on first
login, named by the provider's e-mail claim, and joins or leaves the release managers at
every login according to the groups claim, so a change at the identity provider takes
effect at the next login. Accounts that have a local password are never matched by
single sign-on: an identity provider cannot log someone into the local admin.

Local login (`RUNBOARD_LOCAL_LOGIN`) is `on` for everyone, `admins` (superusers only: the
first admin's way in when single sign-on is down) or `off`.
"""

from __future__ import annotations

import functools
import logging
from functools import wraps

import requests
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Permission
from django.core.exceptions import SuspiciousOperation
from django.db import connection
from django.http import Http404
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from dashboard.models import release_managers_group
from dashboard.prepared import execute_prepared

logger = logging.getLogger(__name__)


def oidc_enabled() -> bool:
    return bool(settings.OIDC_RP_CLIENT_ID)


class LocalBackend(ModelBackend):
    """Username and password, as far as RUNBOARD_LOCAL_LOGIN allows."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        mode = settings.RUNBOARD_LOCAL_LOGIN
        if mode == "off":
            return None
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None and mode == "admins" and not user.is_superuser:
            return None
        return user

    def get_all_permissions(self, user_obj, obj=None):
        """The user's and their groups' permissions in one query, not ModelBackend's two
        (every page that shows actions asks). Kept on the user object, where every
        ModelBackend (the single sign-on one too) finds them."""
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        if not hasattr(user_obj, "_perm_cache"):
            sql, params = _permissions_sql(user_obj.is_superuser)
            with connection.cursor() as cursor:
                # Prepared once per connection: planning these joins took ten times as
                # long as running them (0.8 ms of 0.9 ms).
                execute_prepared(cursor, f"runboard_permissions_{int(user_obj.is_superuser)}",
                                 sql, [user_obj.pk if p == ANY_USER else p for p in params])
                user_obj._perm_cache = {f"{app}.{codename}" for app, codename in cursor}
        return user_obj._perm_cache


ANY_USER = -987654321  # the user id put in per request


@functools.cache
def _permissions_sql(superuser: bool) -> tuple[str, tuple]:
    """The permissions query, compiled once per process (the ORM took as long to build it
    as the database to run it) with ANY_USER where the user's id goes."""
    names = Permission.objects.order_by().values_list("content_type__app_label", "codename")
    if not superuser:
        names = names.filter(user=ANY_USER).union(names.filter(group__user=ANY_USER))
    return names.query.sql_with_params()


class OIDCBackend(OIDCAuthenticationBackend):
    def __init__(self, *args, **kwargs):
        # Django instantiates every backend for every login, the local form's too:
        # without single sign-on configured there is nothing to read.
        if oidc_enabled():
            super().__init__(*args, **kwargs)

    def authenticate(self, request, **kwargs):
        if not oidc_enabled():
            return None
        try:
            return super().authenticate(request, **kwargs)
        except requests.RequestException as exc:
            # The identity provider is down or refused the code: a failed login, not a 500.
            logger.warning("single sign-on failed: %s", exc)
            return None
        except SuspiciousOperation as exc:
            # Claims refused (e.g. an unverified e-mail): back to the login page, told so.
            logger.warning("single sign-on refused: %s", exc)
            return None

    def get_username(self, claims):
        # E-mail addresses are matched without case (as every mail system does): one
        # account per person, however the provider capitalises the address today.
        return claims["email"].strip().lower()[:150]

    def verify_claims(self, claims):
        # An address the provider says it has not verified could be anyone's. Some
        # providers send the flag as a string ("false"), which is still a no. One that
        # does not say counts as unverified unless the operator vouches for the provider.
        verified = claims.get("email_verified",
                              not settings.RUNBOARD_OIDC_REQUIRE_VERIFIED_EMAIL)
        if isinstance(verified, str):
            verified = verified.strip().lower() == "true"
        return isinstance(claims.get("email"), str) and bool(claims["email"]) and verified is True

    def filter_users_by_claims(self, claims):
        users = self.UserModel.objects.filter(username__iexact=self.get_username(claims))
        return [user for user in users if not user.has_usable_password()]

    def create_user(self, claims):
        username = self.get_username(claims)
        if self.UserModel.objects.filter(username__iexact=username).exists():
            # A local account (it has a password) holds the name: not matched above, and
            # a second account of that name cannot exist. A failed login, not a 500.
            logger.warning("single sign-on refused: local account %s has this e-mail", username)
            return None
        user = self.UserModel.objects.create_user(
            username, email=username,
            first_name=str(claims.get("given_name", ""))[:150],
            last_name=str(claims.get("family_name", ""))[:150],
        )
        return self.update_user(user, claims)

    def update_user(self, user, claims):
        groups = claims.get(settings.RUNBOARD_OIDC_GROUPS_CLAIM) or []
        if isinstance(groups, str):
            groups = [groups]
        managers = release_managers_group()
        if set(map(str, groups)) & set(settings.RUNBOARD_OIDC_MANAGER_GROUPS):
            user.groups.add(managers)
        else:
            user.groups.remove(managers)
        return user


def _only_with_oidc(view):
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not oidc_enabled():
            raise Http404("Single sign-on is not configured.")
        return view(request, *args, **kwargs)
    return wrapper


oidc_login = _only_with_oidc(OIDCAuthenticationRequestView.as_view())
oidc_callback = _only_with_oidc(OIDCAuthenticationCallbackView.as_view())


class LoginView(auth_views.LoginView):
    def get_context_data(self, **kwargs):
        return super().get_context_data(
            oidc_enabled=oidc_enabled(), oidc_label=settings.RUNBOARD_OIDC_LABEL,
            local_login=settings.RUNBOARD_LOCAL_LOGIN != "off",
            sso_failed="sso" in self.request.GET, **kwargs,
        )
