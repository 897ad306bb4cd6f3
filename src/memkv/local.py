"""The in-process store: an async face over the synchronous local core."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

from memkv import _core_py
from memkv._core import IMPLEMENTATION, LocalCore
from memkv.entry import MemoryEntry
from memkv.errors import ExtensionUnavailableError, InvalidArgumentError
from memkv.store import TTL, BaseMemoryStore, StoreStats, operation_counts
from memkv.validation import check_batch_size, check_prefix

__all__ = ["CORES", "LocalMemoryStore"]

T = TypeVar("T")

#: The values of ``LocalMemoryStore(core=...)``: the compiled core and its pure-Python twin.
CORES = ("cython", "python")


class LocalMemoryStore(BaseMemoryStore[T]):
    """An in-process store that holds values by reference (no copies, no encoding).

    ``max_entries`` bounds the store: when a new key would exceed it, an expired
    entry goes first, else the least recently used one (``get``, ``get_many`` and
    ``set`` count as a use; ``exists`` and ``scan`` do not). ``clock`` is a
    zero-argument callable returning monotonic seconds, for tests that must not sleep.
    ``core`` picks the engine: ``"cython"`` (compiled), ``"python"`` (its pure-Python
    twin, same behaviour) or ``None`` for ``memkv.IMPLEMENTATION``. ``"cython"`` where
    that core is not in use raises ``ExtensionUnavailableError`` (an ``ImportError``);
    any other value raises ``InvalidArgumentError``.

    Expiry needs no timers and no running loop: an expired entry is dropped when read,
    a few are purged on each write, and ``purge_expired()`` drops them all. With n
    entries, each key read or written costs O(1) or O(log n); ``scan(prefix)`` costs
    O(log n + matches) and yields keys in code-point order; ``clear(prefix)`` and
    ``purge_expired()`` cost O(log n) per entry removed, ``clear()`` O(n).

    >>> import asyncio
    >>> async def main() -> list[str]:
    ...     store = LocalMemoryStore[str](max_entries=10_000)
    ...     await store.set("user:1", "Ada", ttl=60)
    ...     return [key async for key in store.scan("user:")]
    >>> asyncio.run(main())
    ['user:1']
    """

    #: Its operations never wait: sync adapters run them in the caller, without a loop.
    runs_inline: ClassVar[bool] = True

    def __init__(
        self,
        max_entries: int | None = None,
        *,
        clock: Callable[[], float] | None = None,
        core: str | None = None,
    ) -> None:
        self._core = _core_class(core)(max_entries, clock)
        self._counts: Counter[tuple[str, str]] = Counter()
        # Reentrant: a finalizer run by the cyclic GC inside the lock may fail a call too.
        self._counts_lock = threading.RLock()

    @property
    def max_entries(self) -> int | None:
        """The bound given at construction, or ``None``."""
        return self._core.max_entries

    @property
    def core(self) -> str:
        """The local core this store runs on: ``"cython"`` or ``"python"``."""
        return "python" if type(self._core) is _core_py.LocalCore else "cython"

    # Each operation counts its failures here (rare, so a locked Counter will do); the
    # core counts the rest. A try block costs nothing until something raises.

    async def get(self, key: str) -> MemoryEntry[T] | None:
        try:
            return self._core.get(key)
        except Exception:
            self._count("get", "error")
            raise

    async def set(
        self,
        key: str,
        value: T,
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            self._core.set(key, value, ttl, metadata)
        except Exception:
            self._count("set", "error")
            raise

    async def delete(self, key: str) -> bool:
        try:
            return self._core.delete(key)
        except Exception:
            self._count("delete", "error")
            raise

    async def exists(self, key: str) -> bool:
        try:
            return self._core.exists(key)
        except Exception:
            self._count("exists", "error")
            raise

    async def get_many(self, keys: Iterable[str]) -> list[MemoryEntry[T] | None]:
        try:
            return self._core.get_many(keys)
        except Exception:
            self._count("get_many", "error")
            raise

    async def set_many(
        self,
        items: Mapping[str, T] | Iterable[tuple[str, T]],
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            self._core.set_many(items, ttl, metadata)
        except Exception:
            self._count("set_many", "error")
            raise

    async def delete_many(self, keys: Iterable[str]) -> int:
        try:
            return self._core.delete_many(keys)
        except Exception:
            self._count("delete_many", "error")
            raise

    async def clear(self, pattern: str | None = None) -> int:
        try:
            return self._core.clear(pattern)
        except Exception:
            self._count("clear", "error")
            raise

    def scan(self, pattern: str | None = None, batch_size: int = 100) -> AsyncIterator[str]:
        try:
            prefix = check_prefix(pattern)
            # The cores take a C-sized batch; a larger one means "everything" anyway.
            batch_size = min(check_batch_size(batch_size), sys.maxsize)
        except Exception:
            self._count("scan", "error")
            raise
        return self._scan(prefix, batch_size)

    async def _scan(self, prefix: str, batch_size: int) -> AsyncIterator[str]:
        core = self._core
        outcome = "ok"
        try:
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
        except Exception:
            outcome = "error"
            raise
        finally:
            # Once, when the scan ends: exhausted or closed early (ok), or failed.
            self._count("scan", outcome)

    def _count(self, operation: str, result: str) -> None:
        """Count a call the core does not: a failed one, or a scan that ended."""
        # Locked: threads may share a local store, and a Counter's += is not atomic.
        with self._counts_lock:
            self._counts[operation, result] += 1

    def purge_expired(self) -> int:
        """Remove every expired entry now; returns how many."""
        return self._core.purge_expired()

    def __len__(self) -> int:
        """The number of live entries (expired ones are purged first)."""
        return len(self._core)

    def stats(self) -> StoreStats:
        core = self._core
        counted = core.operations().by_outcome()
        fills = self._fill_state()
        with self._counts_lock:
            counted.update(self._counts)
        counted.update(fills.operations)
        return StoreStats(
            **core.counters()._asdict(),
            operations=operation_counts(counted),
            flights=fills.stats(),
        )

    def __repr__(self) -> str:
        return f"LocalMemoryStore(max_entries={self.max_entries!r})"

    # -- add and touch: one critical section of the core each --------------------------

    async def add(
        self,
        key: str,
        value: T,
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store ``value`` like ``set`` only if ``key`` holds no live entry; ``True`` when
        written. Atomic across tasks and threads: exactly one concurrent caller wins."""
        try:
            written = self._core.add(key, value, ttl, metadata)
        except Exception:
            self._count("add", "error")
            raise
        self._count("add", "ok" if written else "exists")
        return written

    async def touch(self, key: str, ttl: TTL = None) -> bool:
        """Give the live entry at ``key`` a new expiry, ``ttl`` from now (``None``: never);
        ``True`` when there was one. Value, metadata, timestamps and LRU order are
        kept; an entry already returned to a caller keeps its old ``expires_at``."""
        try:
            found = self._core.touch(key, ttl)
        except Exception:
            self._count("touch", "error")
            raise
        self._count("touch", "hit" if found else "miss")
        return found

    @property
    def _get_now(self) -> Callable[[str], MemoryEntry[T] | None]:
        # The core's own get: no coroutine and no frame of ours (for cached()); the
        # core counts it like a get.
        return self._core.get

    def _store_time(self) -> float:
        # The core's clock: an injected fake clock moves refresh_after's "now" too.
        return self._core.now()


def _core_class(core: object) -> Callable[..., LocalCore]:
    """The ``LocalCore`` class of the core named by ``LocalMemoryStore(core=...)``."""
    if core is None or core == IMPLEMENTATION:
        return LocalCore
    if core == "python":
        return _core_py.LocalCore
    if core == "cython":
        raise ExtensionUnavailableError(
            "the Cython core is not in use here: MEMKV_NO_EXTENSIONS is set, or this is "
            'not CPython (memkv.IMPLEMENTATION is "python")'
        )
    raise InvalidArgumentError(f"core must be 'cython', 'python' or None, got {core!r}")
