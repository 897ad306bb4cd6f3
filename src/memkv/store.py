"""The async store interface every backend implements, and the stats snapshot it reports."""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from types import MappingProxyType, TracebackType
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from memkv._core import make_entry
from memkv.entry import MemoryEntry
from memkv.latency import LatencyHistogram, LatencySnapshot, timed_call, timed_scan
from memkv.singleflight import (
    Fill,
    FillState,
    FlightStats,
    call_factory,
    check_fill_options,
    jittered_ttl,
)
from memkv.validation import (
    check_items,
    check_key,
    check_keys,
    check_metadata,
    check_prefix,
    ttl_seconds,
)

__all__ = [
    "OPERATIONS",
    "TTL",
    "BaseMemoryStore",
    "FlightStats",
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
        # get_or_set: "hit" returned a live entry at once (a stale one too, while it is
        # refreshed), "miss" waited for a fill. add: "ok" wrote, "exists" found a live
        # entry and wrote nothing.
        "get_or_set": ("hit", "miss", "error"),
        "add": ("ok", "exists", "error"),
        "touch": ("hit", "miss", "error"),
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

    ``flights`` counts what ``get_or_set`` and ``cached`` do beyond their calls:
    factory runs and failures, callers that waited for another caller's factory call,
    background refreshes and waits on another process's lease (``FlightStats``).

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
    flights: FlightStats = FlightStats()
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

    # -- get_or_set, add and touch -------------------------------------------------------
    # Derived from get/set, so every store has them (a store that subclasses MemoryStore
    # directly too); the built-in stores override add and touch atomically and
    # RedisMemoryStore overrides _fill with a cross-process lease.

    @property
    def _get_now(self) -> Callable[[str], MemoryEntry[T] | None] | None:
        """A synchronous ``get`` for stores whose ``get`` never waits (the local store),
        else ``None``: a ``cached`` hit then costs no coroutine of the store's."""
        return None

    async def get_or_set(
        self,
        key: str,
        factory: Callable[[], Awaitable[T]],
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        refresh_after: TTL = None,
        ttl_jitter: float = 0.0,
    ) -> MemoryEntry[T]:
        """The live entry for ``key``; when there is none, ``await factory()`` stores one.

        ``factory`` is a zero-argument callable returning an awaitable (an ``async
        def``, a ``functools.partial`` of one, a lambda). Concurrent callers of a
        missing key on one event loop share one factory call (single-flight): its
        value is stored with ``ttl`` and ``metadata`` and every caller gets the stored
        entry; if it raises, every caller gets that exception, nothing is stored and
        the next call tries again. (On a store whose ``get`` waits on a server,
        concurrent callers of one key also share the first read.) Cancelling a caller
        never cancels the factory call
        others wait for; if every caller is cancelled it still runs to its end and
        stores its value (an exception is then logged on the ``memkv`` logger).
        ``RedisMemoryStore`` also shares the call across processes through a lease.

        ``refresh_after`` (seconds or ``timedelta``, below ``ttl``): an entry whose
        ``updated_at`` is older than that is returned at once while one background
        task (one per key and loop; one per namespace and key across processes on
        Redis) calls the factory and rewrites it; its failure is logged and the old
        entry stays until it expires. ``ttl_jitter`` (a fraction in ``[0, 1)``)
        shortens each written TTL by a random part of up to that fraction, so that
        entries filled together do not expire together.

        A hit costs one ``get``; a fill one ``get`` more, the factory, a ``set`` and
        a ``get`` of what was stored. Bad arguments (a non-callable factory, a
        negative TTL, ``refresh_after >= ttl``) raise before anything is read or
        written: ``InvalidArgumentError``, ``InvalidTTLError``, ``InvalidKeyError``.
        ``close()`` cancels and awaits background refreshes.
        """
        state = self._fill_state()
        try:
            key = check_key(key)
            seconds = ttl_seconds(ttl)
            meta = check_metadata(metadata)
            refresh, jitter = check_fill_options(factory, seconds, refresh_after, ttl_jitter)
            get_now = self._get_now
            if get_now is not None:
                entry = get_now(key)
            else:
                # A server round trip: concurrent callers of one key share one read too,
                # so that a thousand callers of a hot key cost one GET, not a thousand.
                entry = await state.lookups.run(key, lambda: type(self).get(self, key))
            fill = Fill(key, factory, seconds, meta, jitter)
            if entry is not None:
                if refresh is not None and self._store_time() - entry._updated >= refresh:
                    self._start_refresh(state, fill, entry)
                state.operations["get_or_set", "hit"] += 1
                return entry
            filled: MemoryEntry[T] | None = await state.fills.run(
                key, lambda: self._fill(fill, None)
            )
        except Exception:
            state.operations["get_or_set", "error"] += 1
            raise
        state.operations["get_or_set", "miss"] += 1
        assert filled is not None  # only a refresh may find nothing to do
        return filled

    async def add(
        self,
        key: str,
        value: T,
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store ``value`` like ``set`` only if ``key`` holds no live entry; ``True`` when
        written.

        Atomic on the built-in stores: among concurrent callers (and processes, on
        Redis) exactly one writes. Derived here for third-party stores as a ``get``
        then a ``set``, which is NOT atomic: two concurrent callers may both write.
        """
        key = check_key(key)
        ttl_seconds(ttl)
        check_metadata(metadata)
        cls = type(self)
        if await cls.get(self, key) is not None:
            return False
        await cls.set(self, key, value, ttl, metadata)
        return True

    async def touch(self, key: str, ttl: TTL = None) -> bool:
        """Give the live entry at ``key`` a new expiry, ``ttl`` from now (``None``: never);
        ``True`` when there was one.

        The built-in stores keep value, metadata, ``created_at`` and ``updated_at``
        and do it atomically. Derived here for third-party stores as a ``get`` then a
        ``set`` of the same value and metadata, which moves ``updated_at`` and may
        overwrite a concurrent write.
        """
        key = check_key(key)
        ttl_seconds(ttl)
        cls = type(self)
        entry = await cls.get(self, key)
        if entry is None:
            return False
        await cls.set(self, key, entry.value, ttl, entry.metadata)
        return True

    async def _fill(self, fill: Fill, stale: MemoryEntry[T] | None) -> MemoryEntry[T] | None:
        """Store the factory's value for ``fill.key`` unless another caller just did.

        ``stale`` is the entry a refresh replaces (``None`` for a fill). Returns the
        entry stored, or ``None`` when a refresh found nothing to do. Runs inside the
        single flight; ``RedisMemoryStore`` overrides it to add a cross-process lease.
        """
        entry = await type(self).get(self, fill.key)
        if entry is not None and (stale is None or entry._updated > stale._updated):
            return entry
        return await self._compute(fill)

    async def _compute(self, fill: Fill) -> MemoryEntry[T]:
        """Run the factory, store its value, and return the entry stored."""
        state = self._fill_state()
        state.factory_calls += 1
        try:
            value = await call_factory(fill.factory)
        except Exception:
            state.factory_errors += 1
            raise
        seconds = jittered_ttl(fill.seconds, fill.jitter)
        cls = type(self)
        await cls.set(self, fill.key, value, seconds, fill.metadata)
        entry = await cls.get(self, fill.key)
        if entry is None:  # deleted, or evicted, between the two calls
            now = self._store_time()
            expires = None if seconds is None else now + seconds
            entry = make_entry(fill.key, value, fill.metadata, now, now, expires)
        return entry

    def _start_refresh(self, state: FillState, fill: Fill, stale: MemoryEntry[T]) -> None:
        if state.refreshes.start(fill.key, lambda: self._fill(fill, stale)):
            state.refresh_count += 1

    def _store_time(self) -> float:
        """Now, in the store's UNIX seconds (what ``updated_at`` is measured in)."""
        return time.time()

    def _fill_state(self) -> FillState:
        state: FillState | None = vars(self).get("_fills")
        if state is None:
            # setdefault: two threads racing here must end up sharing one state.
            state = vars(self).setdefault("_fills", FillState())
        return state

    async def _close_fills(self) -> None:
        """Cancel and await background refreshes (and fills nobody waits for)."""
        state: FillState | None = vars(self).get("_fills")
        if state is not None:
            await state.aclose()


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
        await self._close_fills()

    def stats(self) -> StoreStats:
        return StoreStats(flights=self._fill_state().stats())
