"""The async store interface every backend implements, and the stats snapshot it reports."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import timedelta
from types import MappingProxyType, TracebackType
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from memkv._core import MemoryEntry
from memkv.latency import LatencyHistogram, LatencySnapshot, timed_call, timed_scan
from memkv.validation import check_items, check_keys, check_metadata, check_prefix, ttl_seconds

__all__ = [
    "OPERATIONS",
    "TTL",
    "BaseMemoryStore",
    "MemoryStore",
    "NearCacheStats",
    "OperationCounts",
    "StoreStats",
    "operation_counts",
]

T = TypeVar("T")

#: A time to live: a ``timedelta`` or seconds as ``int``/``float``; ``None`` never expires.
TTL = timedelta | int | float | None


#: Every operation a store counts, with the results a call can have. ``get``,
#: ``exists`` and ``delete`` end in a ``hit`` (a live entry was found) or a ``miss``;
#: the others in ``ok``; any call that raises counts as an ``error``.
OPERATIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "get": ("hit", "miss", "error"),
        "set": ("ok", "error"),
        "delete": ("hit", "miss", "error"),
        "exists": ("hit", "miss", "error"),
        "scan": ("ok", "error"),
        "clear": ("ok", "error"),
        "get_many": ("ok", "error"),
        "set_many": ("ok", "error"),
        "delete_many": ("ok", "error"),
    }
)


class OperationCounts(Mapping[tuple[str, str], int]):
    """Calls by ``(operation, result)``: an immutable, hashable, picklable mapping."""

    __slots__ = ("_counts",)

    def __init__(self, counts: Mapping[tuple[str, str], int] | None = None) -> None:
        self._counts = dict(counts or {})

    def __getitem__(self, key: tuple[str, str]) -> int:
        return self._counts[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def __hash__(self) -> int:
        return hash(frozenset(self._counts.items()))

    def __reduce__(self) -> tuple[type[OperationCounts], tuple[dict[tuple[str, str], int]]]:
        return (OperationCounts, (self._counts,))

    def __repr__(self) -> str:
        return f"OperationCounts({self._counts!r})"


def operation_counts(counted: Mapping[tuple[str, str], int]) -> OperationCounts:
    """Every ``(operation, result)`` of ``OPERATIONS`` with its count in ``counted``
    (zero where absent)."""
    return OperationCounts(
        {
            (operation, result): counted.get((operation, result), 0)
            for operation, results in OPERATIONS.items()
            for result in results
        }
    )


class NearCacheStats(NamedTuple):
    """An immutable snapshot of a near cache's counters (``RedisMemoryStore(near_cache=N)``).

    ``hits``/``misses`` count keys looked up in the near cache (a miss is then read from
    the server); ``invalidations`` counts keys the server said another write changed;
    ``flushes`` counts times the whole near cache was emptied (a ``FLUSHDB``/``FLUSHALL``,
    a lost, timed-out or replaced connection, a fork); ``entries`` is how many copies it
    holds now (known absences included), at most ``max_entries``.
    """

    max_entries: int
    entries: int
    hits: int
    misses: int
    invalidations: int
    flushes: int


class StoreStats(NamedTuple):
    """An immutable snapshot of a store's counters.

    ``gets`` counts keys looked up (each key of ``get_many`` once) and equals
    ``hits + misses``; ``sets`` counts entries written; ``deletes`` counts live entries
    removed by ``delete``, ``delete_many`` and ``clear``; ``expired`` counts entries
    dropped because their TTL ran out; ``evictions`` counts entries dropped to respect
    ``max_entries``. ``entries`` is how many entries the store holds (including expired
    ones not yet purged), or ``None`` where the store cannot tell cheaply.

    ``operations`` counts calls by ``(operation, result)`` for every pair of
    ``OPERATIONS`` (``("get", "hit")``, ``("set", "error")``, …): one per call, so a
    ``get_many`` of 100 keys is one ``("get_many", "ok")`` and 100 ``gets``. A scan
    counts once, when it ends: ``ok`` when exhausted or closed early, ``error`` if it
    fails (counters only ever grow). Stores that do not count calls leave it empty.

    ``near_cache`` holds the near cache's own counters on a ``RedisMemoryStore`` made
    with ``near_cache=N`` (``None`` otherwise); ``hits``/``misses`` above count what
    the store returned, wherever it was found.
    """

    gets: int = 0
    hits: int = 0
    misses: int = 0
    sets: int = 0
    deletes: int = 0
    expired: int = 0
    evictions: int = 0
    entries: int | None = None
    operations: OperationCounts = OperationCounts()
    near_cache: NearCacheStats | None = None

    @property
    def hit_rate(self) -> float:
        """``hits / gets``, or 0.0 before the first get."""
        return self.hits / self.gets if self.gets else 0.0


class MemoryStore(abc.ABC, Generic[T]):
    """The async key-value interface shared by every memkv store.

    Keys are ``str``; any other type raises ``InvalidKeyError``. Every method is a
    coroutine except ``scan`` (which returns an async iterator) and ``stats``.
    Stores are async context managers that ``close()`` on exit.
    """

    #: Whether the store's coroutines may run without an event loop: they keep no
    #: loop-bound state and never wait on a future (at most a bare ``asyncio.sleep(0)``),
    #: so a sync adapter can drive them to the end in the calling thread instead of on
    #: a loop of its own. ``LocalMemoryStore`` declares ``True``; a subclass whose
    #: operations wait (I/O, locks, sleeps) must declare ``False`` again.
    runs_inline: ClassVar[bool] = False

    @abc.abstractmethod
    async def get(self, key: str) -> MemoryEntry[T] | None:
        """Return the live entry for ``key``, or ``None`` when missing or expired."""

    @abc.abstractmethod
    async def set(
        self,
        key: str,
        value: T,
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Store ``value`` under ``key``.

        ``ttl`` is a ``timedelta`` or seconds (``int``/``float``); ``None`` never
        expires; ``ttl <= 0`` raises ``InvalidTTLError`` and stores nothing. Overwriting
        keeps ``created_at``, sets ``updated_at`` to now and replaces value, expiry and
        metadata.
        """

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove ``key``; ``True`` when a live entry was removed."""

    @abc.abstractmethod
    def scan(self, pattern: str | None = None, batch_size: int = 100) -> AsyncIterator[str]:
        """Yield each live key that starts with the literal prefix ``pattern`` once.

        ``pattern`` is a plain prefix, not a glob (``*``, ``?`` and ``[`` are ordinary
        characters); ``None`` yields every key. Keys written or removed during a scan
        may or may not appear, and a scan never fails because the store changed under
        it. ``batch_size < 1`` raises ``InvalidArgumentError`` (a ``ValueError``).
        """

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """``True`` when ``key`` holds a live entry."""

    @abc.abstractmethod
    async def clear(self, pattern: str | None = None) -> int:
        """Remove the live entries whose key starts with ``pattern`` (all when ``None``).

        Only this store's entries are touched. Returns how many were removed.
        """

    @abc.abstractmethod
    async def get_many(self, keys: Iterable[str]) -> list[MemoryEntry[T] | None]:
        """Entries for ``keys``, aligned with them (``None`` where missing or expired)."""

    @abc.abstractmethod
    async def set_many(
        self,
        items: Mapping[str, T] | Iterable[tuple[str, T]],
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Store every ``(key, value)`` of ``items`` with the same ``ttl`` and metadata.

        The whole batch is validated before anything is written.
        """

    @abc.abstractmethod
    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; returns how many live entries were removed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and other resources. Safe to call twice."""

    @abc.abstractmethod
    def stats(self) -> StoreStats:
        """A snapshot of this store's counters (see ``StoreStats``)."""

    def record_latency(self, enabled: bool = True) -> None:
        """Opt this store in to (or out of) operation latency histograms.

        Enabled, every operation of ``OPERATIONS`` on this store object is timed into
        a per-operation histogram that ``latency()`` reads and the Prometheus exporter
        publishes as ``memkv_operation_duration_seconds`` (a scan counts once, for the
        time spent inside the store). It costs a wrapper coroutine, two clock reads
        and a bucket count per call: about 0.5-0.8 µs measured in ``bench/``, which
        halves a local ``get``'s rate but is noise next to a Redis round trip.
        Disabled (the default), no operation is touched. Enabling twice keeps the
        histograms; disabling drops them.
        """
        if not enabled:
            for name in (*OPERATIONS, "_latency"):
                vars(self).pop(name, None)
            return
        if "_latency" in vars(self):
            return
        histograms = {name: LatencyHistogram() for name in OPERATIONS}
        for name, histogram in histograms.items():
            method = getattr(self, name)
            timed = (
                timed_scan(method, histogram) if name == "scan" else timed_call(method, histogram)
            )
            # An instance attribute shadows the class's method for this object only.
            setattr(self, name, timed)
        self._latency = histograms

    def latency(self) -> Mapping[str, LatencySnapshot]:
        """Latency histograms by operation (empty unless ``record_latency()`` is on)."""
        histograms: dict[str, LatencyHistogram] = vars(self).get("_latency", {})
        return {name: histogram.snapshot() for name, histogram in histograms.items()}

    async def __aenter__(self: _S) -> _S:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


_S = TypeVar("_S", bound=MemoryStore[Any])


class BaseMemoryStore(MemoryStore[T]):
    """A ``MemoryStore`` built from four methods: ``get``, ``set``, ``delete``, ``scan``.

    Third-party stores subclass this and implement those four; the rest is derived
    from them (one call per key), and ``stats()`` reports zeros unless overridden.

    A minimal store (without expiry, to stay short):

    >>> import asyncio
    >>> from memkv import MemoryEntry
    >>> from memkv.validation import check_key, check_prefix
    >>> class DictStore(BaseMemoryStore[str]):
    ...     def __init__(self) -> None:
    ...         self.entries: dict[str, MemoryEntry[str]] = {}
    ...     async def get(self, key):
    ...         return self.entries.get(check_key(key))
    ...     async def set(self, key, value, ttl=None, metadata=None):
    ...         self.entries[check_key(key)] = MemoryEntry(key, value, metadata=metadata)
    ...     async def delete(self, key):
    ...         return self.entries.pop(check_key(key), None) is not None
    ...     async def scan(self, pattern=None, batch_size=100):
    ...         prefix = check_prefix(pattern)
    ...         for key in sorted(self.entries):
    ...             if key.startswith(prefix):
    ...                 yield key
    >>> async def main() -> int:
    ...     store = DictStore()
    ...     await store.set_many({"a": "1", "b": "2"})
    ...     return await store.delete_many(["a", "b", "c"])
    >>> asyncio.run(main())
    2
    """

    # The derived methods call the class's own get/set/delete/scan, so that a store
    # timed by record_latency() observes the call made, not the calls it is made of.

    async def exists(self, key: str) -> bool:
        return await type(self).get(self, key) is not None

    async def clear(self, pattern: str | None = None) -> int:
        prefix = check_prefix(pattern)
        cls = type(self)
        keys = [key async for key in cls.scan(self, prefix or None)]
        removed = 0
        for key in keys:
            removed += await cls.delete(self, key)
        return removed

    async def get_many(self, keys: Iterable[str]) -> list[MemoryEntry[T] | None]:
        get = type(self).get
        return [await get(self, key) for key in check_keys(keys)]

    async def set_many(
        self,
        items: Mapping[str, T] | Iterable[tuple[str, T]],
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        pairs = check_items(items)
        ttl_seconds(ttl)
        check_metadata(metadata)
        set_ = type(self).set
        for key, value in pairs:
            await set_(self, key, value, ttl, metadata)

    async def delete_many(self, keys: Iterable[str]) -> int:
        delete = type(self).delete
        removed = 0
        for key in check_keys(keys):
            removed += await delete(self, key)
        return removed

    async def close(self) -> None:
        return None

    def stats(self) -> StoreStats:
        return StoreStats()
