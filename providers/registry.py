"""Provider key -> provider class. Adding a provider: one module plus one line here."""

from providers.base import Provider
from providers.buddy import BuddyProvider
from providers.northflank import NorthflankProvider
from providers.qovery import QoveryProvider
from providers.workflows import WorkflowsProvider

PROVIDERS: dict[str, type[Provider]] = {
    cls.key: cls
    for cls in (
        BuddyProvider,
        NorthflankProvider,
        QoveryProvider,
        WorkflowsProvider,
    )
}


def provider_class(key: str) -> type[Provider]:
    return PROVIDERS[key]


def choices() -> list[tuple[str, str]]:
    return [(key, cls.label) for key, cls in PROVIDERS.items()]
