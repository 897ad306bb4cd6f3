"""Builds a store from a URL: ``memory://``, ``redis://``, ``rediss://``, ``unix://``, cluster."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from memkv.errors import InvalidArgumentError
from memkv.store import MemoryStore
from memkv.validation import split_url

__all__ = ["REDIS_SCHEMES", "open_store"]

REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+cluster", "rediss+cluster"})


def open_store(url: str) -> MemoryStore[Any]:
    """Open the store a URL describes.

    - ``memory://?max_entries=N&core=python`` — a ``LocalMemoryStore`` (``core``:
      ``cython`` or ``python``; the one in use when absent);
    - ``redis://[user:password@]host:port/db?namespace=NAME&codec=json``, ``rediss://…``
      (TLS), ``unix:///path/to/redis.sock?…`` and ``redis+cluster://host:port?…`` — a
      ``RedisMemoryStore`` (needs ``pip install "memkv[redis]"``).

    An unknown scheme or a bad query parameter raises ``InvalidArgumentError`` (a
    ``ValueError``) naming it.
    """
    if not isinstance(url, str):
        raise InvalidArgumentError(f"a store URL must be a str, not {type(url).__name__}")
    scheme = split_url(url).scheme.lower()
    if scheme == "memory":
        return _open_memory(url)
    if scheme in REDIS_SCHEMES:
        from memkv.redis import RedisMemoryStore

        return RedisMemoryStore.from_url(url)
    raise InvalidArgumentError(
        # The URL itself is not repeated: it may hold a password.
        f"unknown store URL scheme {scheme!r}; expected memory://, redis://, "
        "rediss://, unix:// or redis+cluster://"
    )


def _open_memory(url: str) -> MemoryStore[Any]:
    from memkv.local import LocalMemoryStore

    parts = split_url(url)
    if parts.netloc or parts.path not in ("", "/"):
        raise InvalidArgumentError("memory:// takes no host or path")
    max_entries: int | None = None
    core: str | None = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "core":
            core = value
            continue
        if name != "max_entries":
            raise InvalidArgumentError(f"unknown memory:// parameter {name!r}")
        try:
            max_entries = int(value)
        except ValueError:
            raise InvalidArgumentError(
                f"max_entries must be a positive integer, got {value!r}"
            ) from None
        if max_entries < 1:
            raise InvalidArgumentError(f"max_entries must be a positive integer, got {value!r}")
    return LocalMemoryStore(max_entries, core=core)
