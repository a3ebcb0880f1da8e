"""Symmetric encryption for secrets at rest (Fernet; several keys for rotation)."""

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

SEALED = "__sealed__"


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "SECRETS_ENCRYPTION_KEYS: each key must be 32 url-safe base64-encoded bytes "
            "(make one with `python manage.py rotate_secrets_key --generate`)"
        ) from exc


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.SECRETS_ENCRYPTION_KEYS))


def encrypt(value: str) -> str:
    return fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "SECRETS_ENCRYPTION_KEYS: no configured key decrypts a stored secret; "
            "was a key removed before rotate_secrets_key ran?"
        ) from None


def rotate(token: str) -> str:
    """The same value encrypted with the newest key."""
    return fernet().rotate(token.encode()).decode()


def seal(value: str) -> dict:
    """A value wrapped so that it can sit in a Job's params without being readable."""
    return {SEALED: encrypt(value)}


def unseal(value):
    if isinstance(value, dict) and set(value) == {SEALED}:
        return decrypt(value[SEALED])
    return value


def redact(value):
    """A structure with every sealed value replaced by a marker, for pages and the API."""
    if isinstance(value, dict):
        if set(value) == {SEALED}:
            return "********"
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
