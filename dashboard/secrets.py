"""Provider tokens encrypted at rest, and failing loudly when they cannot be read.

django-fernet-encrypted-fields returns the stored ciphertext when no key decrypts
it (e.g. after SECRET_KEY changed without the old key in SECRET_KEY_FALLBACKS), so
the ciphertext would be sent to the provider as the token, and saving the row again
would encrypt the ciphertext and lose the token under every key. `SecretTextField`
loads such a value as `UnreadableSecret` instead: it is not a string, cannot be used
as a token, and is written back byte for byte, never re-encrypted.
"""

from __future__ import annotations

from cryptography.fernet import InvalidToken
from django.core.signals import setting_changed
from django.dispatch import receiver
from encrypted_fields.fields import EncryptedFieldMixin, EncryptedTextField

from providers.base import AuthError

UNREADABLE_MESSAGE = (
    "Token unreadable: re-enter it (it was encrypted with a SECRET_KEY that is no longer "
    "configured; see SECRET_KEY_FALLBACKS)."
)


class UnreadableSecret:
    """A stored value no configured key decrypts. Holds the ciphertext only to keep it."""

    __slots__ = ("ciphertext",)

    def __init__(self, ciphertext: str):
        self.ciphertext = ciphertext

    def __str__(self) -> str:
        return "(unreadable)"

    __repr__ = __str__

    def __eq__(self, other) -> bool:
        return isinstance(other, UnreadableSecret) and other.ciphertext == self.ciphertext

    def __hash__(self) -> int:
        return hash(self.ciphertext)


class TokenUnreadable(AuthError):
    """Raised instead of calling a provider with a token that could not be decrypted."""

    user_message = UNREADABLE_MESSAGE


class SecretTextField(EncryptedTextField):
    def from_db_value(self, value, expression, connection):
        if value is None:
            return value
        try:
            return self.f.decrypt(value.encode("utf-8")).decode("utf-8")
        except (InvalidToken, UnicodeEncodeError):
            return UnreadableSecret(value)

    def to_python(self, value):
        if isinstance(value, UnreadableSecret):
            return value
        return super().to_python(value)

    def get_prep_value(self, value):
        if isinstance(value, UnreadableSecret):
            return value.ciphertext  # unchanged: re-encrypting it would lose the token
        return super().get_prep_value(value)


def forget_keys() -> None:
    """Derive the keys again on next use (the library caches them per field)."""
    from django.apps import apps

    for model in apps.get_models():
        for field in model._meta.get_fields():
            if isinstance(field, EncryptedFieldMixin):
                field.__dict__.pop("keys", None)
                field.__dict__.pop("f", None)


@receiver(setting_changed)
def _keys_changed(*, setting, **kwargs):
    if setting in {"SECRET_KEY", "SECRET_KEY_FALLBACKS", "SALT_KEY"}:
        forget_keys()
