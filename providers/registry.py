"""Provider key -> provider class. Adding a provider: one module plus one line here."""

from providers.base import Provider
from providers.buddy import BuddyProvider

PROVIDERS: dict[str, type[Provider]] = {
    cls.key: cls
    for cls in (
        BuddyProvider,
    )
}


def provider_class(key: str) -> type[Provider]:
    return PROVIDERS[key]


def choices() -> list[tuple[str, str]]:
    return [(key, cls.label) for key, cls in PROVIDERS.items()]
