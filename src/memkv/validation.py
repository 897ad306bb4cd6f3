"""Argument checks shared by every store: keys, prefixes, TTLs, metadata, batches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import SplitResult, urlsplit

from memkv.errors import (
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidTTLError,
)

__all__ = [
    "MAX_TTL_SECONDS",
    "check_batch_size",
    "check_items",
    "check_key",
    "check_keys",
    "check_metadata",
    "check_pair",
    "check_prefix",
    "item_pairs",
    "split_url",
    "ttl_seconds",
]

#: The longest TTL accepted: 100 years (``None`` means no expiry at all).
MAX_TTL_SECONDS = 100 * 365.25 * 86400


def check_key(key: object) -> str:
    """Return ``key`` as an exact ``str``, or raise ``InvalidKeyError``."""
    if type(key) is str:
        return key
    if isinstance(key, str):
        return str.__str__(key)
    raise InvalidKeyError(f"keys must be str, not {type(key).__name__}")


def check_prefix(prefix: object) -> str:
    """Return a scan/clear prefix as a ``str`` (``None`` means every key)."""
    if prefix is None:
        return ""
    if type(prefix) is str:
        return prefix
    if isinstance(prefix, str):
        return str.__str__(prefix)
    raise InvalidKeyError(f"a prefix must be str or None, not {type(prefix).__name__}")


def ttl_seconds(ttl: object) -> float | None:
    """Return a TTL in seconds (``None`` for no expiry), or raise ``InvalidTTLError``."""
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        try:
            seconds = float(ttl)
        except OverflowError:
            raise InvalidTTLError(f"ttl is too large: {ttl!r}") from None
    else:
        raise InvalidTTLError(
            f"ttl must be a timedelta, int or float seconds, or None, not {type(ttl).__name__}"
        )
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise InvalidTTLError(
            f"ttl must be positive and at most {MAX_TTL_SECONDS:.0f} seconds (100 years), "
            f"got {ttl!r}; use ttl=None for no expiry"
        )
    return seconds


def check_metadata(metadata: object) -> dict[str, Any] | None:
    """Return a private copy of ``metadata`` (``None`` when empty), or raise."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(
            f"metadata must be a mapping or None, not {type(metadata).__name__}"
        )
    copied = dict(metadata)
    for name in copied:
        if type(name) is not str:
            raise InvalidMetadataError(f"metadata keys must be str, not {type(name).__name__}")
    return copied or None


def check_items(items: object) -> list[tuple[str, Any]]:
    """Validate ``set_many`` input (a mapping or (key, value) pairs) as a whole."""
    return [check_pair(pair) for pair in item_pairs(items)]


def item_pairs(items: object) -> Iterable[Any]:
    """The pairs of ``set_many`` input, not yet checked: a mapping's items, or ``items``.

    Raises ``InvalidKeyError`` for a ``str``, ``bytes`` or anything not iterable.
    """
    if isinstance(items, Mapping):
        return items.items()
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InvalidKeyError(
            f"items must be a mapping or an iterable of (key, value) pairs, "
            f"not {type(items).__name__}"
        )
    return items


def check_pair(pair: object) -> tuple[str, Any]:
    """One ``(key, value)`` pair of ``set_many`` input, its key checked."""
    if type(pair) is tuple and len(pair) == 2 and type(pair[0]) is str:
        # Already what is returned: a batch of a million needs no second million tuples.
        return pair
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise InvalidKeyError(f"items must be (key, value) pairs, got {type(pair).__name__}")
    return check_key(pair[0]), pair[1]


def check_keys(keys: Iterable[object]) -> list[str]:
    """Validate an iterable of keys as a whole (a lone ``str`` is refused)."""
    if isinstance(keys, (str, bytes)):
        raise InvalidKeyError("keys must be an iterable of str, not a single str")
    return [check_key(key) for key in keys]


def check_batch_size(batch_size: object) -> int:
    """Return ``batch_size`` if it is an int of at least 1, else raise."""
    if type(batch_size) is not int or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return batch_size


def split_url(url: str) -> SplitResult:
    """``urlsplit(url)``, with a malformed URL raised as ``InvalidArgumentError``.

    The message never repeats the URL: it may hold a password.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed lazily; a bad port raises here
    except ValueError:
        # Not urlsplit's message: it quotes the URL (a password, or a piece of one).
        raise InvalidArgumentError(
            "malformed store URL: bad host, port or brackets (percent-encode any "
            "'/', '?', '#' or '@' in the password)"
        ) from None
    return parts
