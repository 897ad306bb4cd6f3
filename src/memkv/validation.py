"""Argument checks shared by every store and the manager: keys, prefixes, TTLs, metadata,
batches, store options and store names."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from memkv.errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidTTLError,
    StoreNotFoundError,
)

if TYPE_CHECKING:
    from memkv.store import MemoryStore

__all__ = [
    "MAX_COUNT",
    "MAX_TTL_SECONDS",
    "bad_clock_reading",
    "check_batch_size",
    "check_clock",
    "check_items",
    "check_key",
    "check_keys",
    "check_max_entries",
    "check_metadata",
    "check_pair",
    "check_prefix",
    "check_store",
    "check_store_name",
    "item_pairs",
    "ttl_seconds",
]

#: The largest batch or pool size passed on: a larger one means the same (everything at
#: once, or no limit) and would overflow the C integers of the server or the client.
MAX_COUNT = 2**31 - 1

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


def ttl_seconds(ttl: object, name: str = "ttl") -> float | None:
    """Return a TTL in seconds (``None`` for no expiry), or raise ``InvalidTTLError``.

    ``name`` is the argument the message names (``refresh_after`` checks the same way).
    """
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        try:
            seconds = float(ttl)
        except OverflowError:
            # Not repr(): an int past sys.get_int_max_str_digits() has no decimal text.
            raise InvalidTTLError(
                f"{name} must be at most {MAX_TTL_SECONDS:.0f} seconds (100 years)"
            ) from None
    else:
        raise InvalidTTLError(
            f"{name} must be a timedelta, int or float seconds, or None, not {type(ttl).__name__}"
        )
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise InvalidTTLError(
            f"{name} must be positive and at most {MAX_TTL_SECONDS:.0f} seconds (100 years), "
            f"got {ttl!r}; use {name}=None for no expiry"
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
    """Validate an iterable of keys as a whole (a lone ``str`` or ``bytes`` is refused)."""
    if isinstance(keys, (str, bytes)):
        raise InvalidKeyError(
            f"keys must be an iterable of str, not a single {type(keys).__name__}"
        )
    if not isinstance(keys, Iterable):
        raise InvalidKeyError(f"keys must be an iterable of str, not {type(keys).__name__}")
    return [check_key(key) for key in keys]


def check_batch_size(batch_size: object) -> int:
    """Return ``batch_size`` (at most ``MAX_COUNT``) if it is an int of at least 1, else
    raise ``InvalidArgumentError``."""
    if type(batch_size) is not int:
        raise InvalidArgumentError(
            f"batch_size must be an int >= 1, not {type(batch_size).__name__}"
        )
    if batch_size < 1:
        raise InvalidArgumentError("batch_size must be an int >= 1")
    return min(batch_size, MAX_COUNT)


def check_max_entries(max_entries: object, name: str = "max_entries") -> int | None:
    """Return a store bound: ``None`` (unbounded) or an ``int`` of at least 1.

    Another type (``bool`` and ``"5"`` included) raises ``InvalidArgumentTypeError``;
    an ``int`` below 1 raises ``InvalidArgumentError``. Messages call it ``name``.
    """
    if max_entries is None:
        return None
    if type(max_entries) is not int:
        raise InvalidArgumentTypeError(
            f"{name} must be an int or None, not {type(max_entries).__name__}"
        )
    if max_entries < 1:
        raise InvalidArgumentError(f"{name} must be at least 1")
    return max_entries


def check_clock(clock: object) -> Callable[[], float] | None:
    """Return an injected clock (``None``: the store's own), after reading it once.

    A clock that is not callable, or whose reading is not an ``int`` or ``float``,
    raises ``InvalidArgumentTypeError``; a reading that is not finite raises
    ``InvalidArgumentError``. (An exception the clock raises itself propagates.)
    """
    if clock is None:
        return None
    if not callable(clock):
        raise InvalidArgumentTypeError(
            f"clock must be a zero-argument callable returning seconds, not {type(clock).__name__}"
        )
    now = clock()
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise bad_clock_reading(now)
    try:
        finite = math.isfinite(now)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise bad_clock_reading(now)
    return clock


def bad_clock_reading(reading: object) -> InvalidArgumentError | InvalidArgumentTypeError:
    """The error for a clock reading that is not finite ``int``/``float`` seconds (at
    construction, or when a core's ``now + offset`` fails): a reading of another type
    is an ``InvalidArgumentTypeError``, a number that is not finite (NaN, an infinity,
    an int too large for a float) an ``InvalidArgumentError``."""
    if isinstance(reading, bool) or not isinstance(reading, (int, float)):
        return InvalidArgumentTypeError(
            f"the clock must return int or float seconds, not {type(reading).__name__}"
        )
    return InvalidArgumentError("the clock returned a time that is not finite")


def check_store(store: object) -> MemoryStore[Any]:
    """Return ``store`` if it is a ``MemoryStore``, else raise ``InvalidArgumentTypeError``."""
    from memkv.store import MemoryStore  # memkv.store imports this module

    if not isinstance(store, MemoryStore):
        raise InvalidArgumentTypeError(f"expected a memkv MemoryStore, not {type(store).__name__}")
    return store


def check_store_name(name: object) -> str:
    """Return a manager's store name, or raise ``StoreNotFoundError`` if it is not a ``str``."""
    if not isinstance(name, str):
        raise StoreNotFoundError(f"store names must be str, not {type(name).__name__}")
    return name
