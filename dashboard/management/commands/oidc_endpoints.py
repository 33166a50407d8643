"""Print an OpenID Connect provider's endpoints as environment lines for Runboard."""

import httpx
from django.core.management.base import BaseCommand, CommandError

# Runboard's setting ← the discovery document's field.
SETTINGS = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}


def discover(issuer: str, timeout: float = 10.0) -> dict[str, str]:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise CommandError(f"Could not read {url}: {exc}") from exc
    missing = [field for field in SETTINGS.values() if not document.get(field)]
    if missing:
        raise CommandError(f"{url} lacks {', '.join(missing)}.")
    return {setting: document[field] for setting, field in SETTINGS.items()}


class Command(BaseCommand):
    help = "Read ISSUER's discovery document and print the OIDC_OP_* lines to set."

    def add_arguments(self, parser):
        parser.add_argument("issuer", help="e.g. https://login.example.com/realms/acme")

    def handle(self, issuer, **options):
        for setting, value in discover(issuer).items():
            self.stdout.write(f"{setting}={value}")
