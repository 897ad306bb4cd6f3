"""The in-process store: an async face over the synchronous local core."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, TypeVar

from memkv._core import LocalCore, MemoryEntry
from memkv.store import TTL, BaseMemoryStore, StoreStats
from memkv.validation import check_batch_size, check_prefix

__all__ = ["LocalMemoryStore"]

T = TypeVar("T")


class LocalMemoryStore(BaseMemoryStore[T]):
    """An in-process store that holds values by reference (no copies, no encoding).

    ``max_entries`` bounds the store: when a new key would exceed it, an expired
    entry goes first, else the least recently used one (``get``, ``get_many`` and
    ``set`` count as a use; ``exists`` and ``scan`` do not). ``clock`` is a
    zero-argument callable returning monotonic seconds, for tests that must not sleep.

    Expiry needs no timers and no running loop: an expired entry is dropped when read,
    a few are purged on each write, and ``purge_expired()`` drops them all. Every
    operation is O(1) or O(log n); ``scan(prefix)`` costs O(log n + matches) and
    yields keys in code-point order.

    >>> store = LocalMemoryStore[str](max_entries=10_000)
    >>> await store.set("user:1", "Ada", ttl=60)        # doctest: +SKIP
    >>> [key async for key in store.scan("user:")]      # doctest: +SKIP
    ['user:1']
    """

    #: The synchronous engine; the tests swap in the other core's twin through it.
    _core_type: Callable[..., LocalCore] = LocalCore

    def __init__(
        self, max_entries: int | None = None, *, clock: Callable[[], float] | None = None
    ) -> None:
        self._core = self._core_type(max_entries, clock)

    @property
    def max_entries(self) -> int | None:
        """The bound given at construction, or ``None``."""
        return self._core.max_entries

    async def get(self, key: str) -> MemoryEntry[T] | None:
        return self._core.get(key)

    async def set(
        self,
        key: str,
        value: T,
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self._core.set(key, value, ttl, metadata)

    async def delete(self, key: str) -> bool:
        return self._core.delete(key)

    async def exists(self, key: str) -> bool:
        return self._core.exists(key)

    async def get_many(self, keys: Iterable[str]) -> list[MemoryEntry[T] | None]:
        return self._core.get_many(keys)

    async def set_many(
        self,
        items: Mapping[str, T] | Iterable[tuple[str, T]],
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self._core.set_many(items, ttl, metadata)

    async def delete_many(self, keys: Iterable[str]) -> int:
        return self._core.delete_many(keys)

    async def clear(self, pattern: str | None = None) -> int:
        return self._core.clear(pattern)

    def scan(self, pattern: str | None = None, batch_size: int = 100) -> AsyncIterator[str]:
        # The cores take a C-sized batch; a larger one means "everything" anyway.
        return self._scan(check_prefix(pattern), min(check_batch_size(batch_size), sys.maxsize))

    async def _scan(self, prefix: str, batch_size: int) -> AsyncIterator[str]:
        core = self._core
        keys, cursor = core.scan_batch(prefix, None, batch_size)
        while True:
            for key in keys:
                yield key
            if cursor is None:
                return
            keys, cursor = core.scan_batch(prefix, cursor, batch_size)
            if keys or cursor is not None:
                # Let other tasks run between batches: a long scan must not stall the
                # loop. (Not after the last, empty batch: a full first batch is common.)
                await asyncio.sleep(0)

    def purge_expired(self) -> int:
        """Remove every expired entry now; returns how many."""
        return self._core.purge_expired()

    def __len__(self) -> int:
        """The number of live entries (expired ones are purged first)."""
        return len(self._core)

    def stats(self) -> StoreStats:
        return StoreStats(*self._core.counters())

    def __repr__(self) -> str:
        return f"LocalMemoryStore(max_entries={self.max_entries!r})"
