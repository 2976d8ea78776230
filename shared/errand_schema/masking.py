"""Masking of sensitive payload fields wherever a payload leaves its owner's own read.

Keys are matched case-insensitively anywhere in the payload (nested objects and lists).
"""

from collections.abc import Iterable
from typing import Any

#: Keys masked unless configured otherwise (``ERRAND_MASKED_FIELDS``).
DEFAULT_MASKED_FIELDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "access_token",
    "refresh_token",
    "client_secret",
    "card_number",
    "cvv",
    "ssn",
)
#: What a masked value is replaced with.
MASK = "***"

_keys: frozenset[str] = frozenset(DEFAULT_MASKED_FIELDS)


def configure_masking(keys: Iterable[str]) -> None:
    """Set the masked keys for this process (each service's entry point calls it)."""
    global _keys
    _keys = frozenset(k.lower() for k in keys)


def mask_payload(value: Any, keys: Iterable[str] | None = None) -> Any:
    """Return a copy of ``value`` with the values of sensitive keys replaced by ``***``."""
    lowered = _keys if keys is None else frozenset(k.lower() for k in keys)
    return _mask(value, lowered)


def _mask(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: MASK if str(k).lower() in keys else _mask(v, keys) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, keys) for v in value]
    return value
