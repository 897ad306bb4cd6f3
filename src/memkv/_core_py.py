"""Pure-Python local core: the reference behaviour that the Cython core is fuzzed against.

``LocalCore`` keeps entries in a dict, keys in a ``SortedList`` (prefix scans in
O(log n + k)) and TTL deadlines in a min-heap with lazy deletion. Every operation is
synchronous and never awaits, so it is atomic within one event loop; a
``threading.Lock`` keeps it consistent across threads. Objects that may run user code
when released (old entries and their values) are dropped only after the lock is
released, so a value's ``__del__`` may call back into the store.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from sortedcontainers import SortedList

from memkv.errors import InvalidTTLError, ReentrantCallError
from memkv.validation import (
    check_clock,
    check_items,
    check_key,
    check_keys,
    check_max_entries,
    check_metadata,
    check_prefix,
    ttl_seconds,
)

__all__ = ["OPERATION_COUNTERS", "LocalCore", "MemoryEntry", "make_entry"]

T = TypeVar("T")

_UTC = timezone.utc
#: Expired heap items a write may pop; more than one, so purging outpaces new TTLs.
PURGE_BUDGET = 4
#: Stale heap items allowed beyond the live ones before the heap is rebuilt.
HEAP_SLACK = 64
#: What each item of ``LocalCore.operations()`` counts: (operation, result).
OPERATION_COUNTERS = (
    ("get", "hit"),
    ("get", "miss"),
    ("set", "ok"),
    ("delete", "hit"),
    ("delete", "miss"),
    ("exists", "hit"),
    ("exists", "miss"),
    ("clear", "ok"),
    ("get_many", "ok"),
    ("set_many", "ok"),
    ("delete_many", "ok"),
)
(
    _GET_HIT,
    _GET_MISS,
    _SET,
    _DELETE_HIT,
    _DELETE_MISS,
    _EXISTS_HIT,
    _EXISTS_MISS,
    _CLEAR,
    _GET_MANY,
    _SET_MANY,
    _DELETE_MANY,
) = range(len(OPERATION_COUNTERS))


def _deadline(now: float, seconds: float | None) -> float | None:
    return None if seconds is None else now + seconds


def _to_datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, _UTC)


class MemoryEntry(Generic[T]):
    """One stored value with its key, metadata and timestamps.

    ``created_at``, ``updated_at`` and ``expires_at`` are timezone-aware UTC datetimes,
    made on access from the float timestamps the entry keeps. ``metadata`` is a dict,
    never ``None``. Entries returned by a store are snapshots: a later ``set`` of the
    same key makes a new entry and leaves this one as it was.

    >>> entry = MemoryEntry("greeting", "hello", metadata={"lang": "en"})
    >>> entry.created_at == entry.updated_at
    True
    """

    __slots__ = ("_created", "_expires", "_key", "_metadata", "_updated", "value")

    value: T

    def __init__(
        self,
        key: str,
        value: T,
        expires_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        now = time.time()
        self._key = check_key(key)
        self.value = value
        self._metadata = check_metadata(metadata)
        self._created = now
        self._updated = now
        if expires_at is None:
            self._expires: float | None = None
        elif not isinstance(expires_at, datetime):
            raise InvalidTTLError(
                f"expires_at must be a datetime or None, not {type(expires_at).__name__}"
            )
        elif expires_at.tzinfo is None or expires_at.utcoffset() is None:
            raise InvalidTTLError("expires_at must be timezone-aware")
        else:
            self._expires = expires_at.timestamp()

    @property
    def key(self) -> str:
        """The entry's key (read-only: the store files the entry under it)."""
        return self._key

    @property
    def metadata(self) -> dict[str, Any]:
        """The entry's metadata dict (empty when none was given)."""
        metadata = self._metadata
        if metadata is None:
            metadata = self._metadata = {}
        return metadata

    @property
    def created_at(self) -> datetime:
        """When the key was first written (kept across overwrites)."""
        return _to_datetime(self._created)

    @property
    def updated_at(self) -> datetime:
        """When the entry was last written."""
        return _to_datetime(self._updated)

    @property
    def expires_at(self) -> datetime | None:
        """When the entry expires, or ``None`` if it never does."""
        expires = self._expires
        return None if expires is None else _to_datetime(expires)

    def __repr__(self) -> str:
        return (
            f"MemoryEntry(key={self.key!r}, value={self.value!r}, "
            f"expires_at={self.expires_at!r}, metadata={self.metadata!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MemoryEntry):
            return NotImplemented
        return (
            self.key == other.key
            and self.value == other.value
            and self.metadata == other.metadata
            and self._created == other._created
            and self._updated == other._updated
            and self._expires == other._expires
        )

    __hash__ = None  # type: ignore[assignment]


def make_entry(
    key: str,
    value: T,
    metadata: dict[str, Any] | None,
    created: float,
    updated: float,
    expires: float | None,
) -> MemoryEntry[T]:
    """Build an entry from float UNIX timestamps without validation (for stores)."""
    entry: MemoryEntry[T] = MemoryEntry.__new__(MemoryEntry)
    entry._key = key
    entry.value = value
    entry._metadata = metadata or None
    entry._created = created
    entry._updated = updated
    entry._expires = expires
    return entry


class _Exclusive:
    """One operation at a time: a lock across threads, an error on re-entry.

    A re-entrant call can only come from code that runs in the middle of an operation
    on the same thread: a finalizer run by the cyclic GC when the operation allocates.
    The structures may be mid-update then, so the call raises ``ReentrantCallError``
    instead of deadlocking or corrupting them. (Values released by the store itself are
    dropped after the operation, so their ``__del__`` may use the store freely.)
    """

    __slots__ = ("_busy", "_lock")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._busy = False

    def __enter__(self) -> None:
        self._lock.acquire()
        if self._busy:
            self._lock.release()
            raise ReentrantCallError(
                "the pure-Python memkv core was called from a finalizer that ran during "
                "one of its own operations; the Cython core allows this"
            )
        self._busy = True

    def __exit__(self, *exc_info: object) -> None:
        self._busy = False
        self._lock.release()


class LocalCore:
    """The synchronous engine behind ``LocalMemoryStore``.

    Complexities (n entries, k keys returned): ``get``/``exists``/``delete`` O(1) plus
    O(log n) when a key is added or removed from the sorted index; ``set`` O(log n);
    ``scan_batch`` O(log n + k); ``clear(prefix)`` O(log n + k). Expired entries are
    removed lazily when read, a few at a time on each write (``PURGE_BUDGET``) and all
    at once by ``purge_expired``.
    """

    def __init__(
        self, max_entries: int | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        if hasattr(self, "_entries"):
            raise RuntimeError("LocalCore.__init__ may run only once")
        max_entries = check_max_entries(max_entries)
        clock = check_clock(clock)
        if clock is None:
            clock = time.monotonic
        self._max_entries = max_entries
        self._lru = max_entries is not None
        self._entries: dict[str, MemoryEntry[Any]] = OrderedDict() if self._lru else {}
        self._index: SortedList = SortedList()
        self._heap: list[tuple[float, str]] = []
        self._n_expiring = 0
        self._clock = clock
        # Store time is wall-clock seconds that advance with the injected clock.
        self._offset = time.time() - clock()
        self._exclusive = _Exclusive()
        self._gets = self._hits = self._misses = self._sets = 0
        self._deletes = self._expired = self._evictions = 0
        self._ops = [0] * len(OPERATION_COUNTERS)

    @property
    def max_entries(self) -> int | None:
        return self._max_entries

    def now(self) -> float:
        """Current store time: UNIX seconds advanced by the injected clock."""
        return self._clock() + self._offset

    # -- internal helpers (call with the lock held) --------------------------------

    def _unlink(self, key: str, entry: MemoryEntry[Any]) -> None:
        del self._entries[key]
        self._index.remove(key)
        if entry._expires is not None:
            self._n_expiring -= 1
            self._compact_if_needed()

    def _compact_if_needed(self) -> None:
        # Lazy deletion leaves stale (deadline, key) items behind; rebuild the heap
        # once they outnumber the live ones, so rewriting keys keeps memory flat.
        heap = self._heap
        if len(heap) > 2 * self._n_expiring + HEAP_SLACK:
            heap[:] = [
                (entry._expires, key)
                for key, entry in self._entries.items()
                if entry._expires is not None
            ]
            heapq.heapify(heap)

    def _lookup(
        self, key: str, now: float, dead: list[MemoryEntry[Any]]
    ) -> MemoryEntry[Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires = entry._expires
        if expires is not None and expires <= now:
            self._unlink(key, entry)
            self._expired += 1
            dead.append(entry)
            return None
        return entry

    def _purge(self, now: float, budget: int, dead: list[MemoryEntry[Any]]) -> int:
        heap = self._heap
        entries = self._entries
        purged = 0
        while heap and budget and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            budget -= 1
            entry = entries.get(key)
            if entry is not None and entry._expires == deadline:
                self._unlink(key, entry)
                dead.append(entry)
                purged += 1
        self._expired += purged
        return purged

    def _make_room(self, now: float, dead: list[MemoryEntry[Any]]) -> None:
        assert self._max_entries is not None
        entries = self._entries
        heap = self._heap
        while len(entries) >= self._max_entries:
            if heap and heap[0][0] <= now:
                self._purge(now, 1, dead)
                continue
            key, entry = next(iter(entries.items()))
            self._unlink(key, entry)
            self._evictions += 1
            dead.append(entry)

    def _store(
        self,
        key: str,
        value: Any,
        expires: float | None,
        metadata: dict[str, Any] | None,
        now: float,
        dead: list[MemoryEntry[Any]],
    ) -> MemoryEntry[Any]:
        """Put ``value`` at ``key`` expiring at ``expires`` (store time) and return the
        new entry (``created_at`` kept from the entry it replaces)."""
        entries = self._entries
        old = self._lookup(key, now, dead)
        if old is None:
            if self._lru and len(entries) >= self._max_entries:  # type: ignore[operator]
                self._make_room(now, dead)
            entries[key] = make_entry(key, value, metadata, now, now, expires)
            self._index.add(key)
        else:
            dead.append(old)
            entries[key] = make_entry(key, value, metadata, old._created, now, expires)
            if self._lru:
                entries.move_to_end(key)  # type: ignore[attr-defined]
            if old._expires is not None:
                self._n_expiring -= 1
        if expires is not None:
            self._n_expiring += 1
            heapq.heappush(self._heap, (expires, key))
        self._compact_if_needed()
        self._sets += 1
        return entries[key]

    def _fetch(
        self, key: str, now: float, dead: list[MemoryEntry[Any]]
    ) -> MemoryEntry[Any] | None:
        self._gets += 1
        entry = self._lookup(key, now, dead)
        if entry is None:
            self._misses += 1
            return None
        self._hits += 1
        if self._lru:
            self._entries.move_to_end(key)  # type: ignore[attr-defined]
        return entry

    def _remove(self, key: str, now: float, dead: list[MemoryEntry[Any]]) -> bool:
        entry = self._lookup(key, now, dead)
        if entry is None:
            return False
        self._unlink(key, entry)
        self._deletes += 1
        dead.append(entry)
        return True

    # -- operations -------------------------------------------------------------

    def get(self, key: str) -> MemoryEntry[Any] | None:
        """Return the live entry for ``key`` or ``None``; counts as a use for LRU."""
        key = check_key(key)
        dead: list[MemoryEntry[Any]] = []
        with self._exclusive:
            entry = self._fetch(key, self.now(), dead)
            self._ops[_GET_MISS if entry is None else _GET_HIT] += 1
            return entry

    def set(self, key: str, value: Any, ttl: object = None, metadata: object = None) -> None:
        """Store ``value`` under ``key``; an overwrite keeps ``created_at``."""
        key = check_key(key)
        seconds = ttl_seconds(ttl)
        checked = check_metadata(metadata)
        dead: list[MemoryEntry[Any]] = []
        with self._exclusive:
            now = self.now()
            self._store(key, value, _deadline(now, seconds), checked, now, dead)
            self._purge(now, PURGE_BUDGET, dead)
            self._ops[_SET] += 1

    def put(
        self,
        key: str,
        value: Any,
        metadata: dict[str, Any] | None,
        created: float,
        updated: float,
        expires: float | None,
    ) -> None:
        """Store a copy of an entry kept elsewhere, with its timestamps (store-time UNIX
        seconds; ``expires`` ``None``: never), as ``set`` stores one: a use for LRU, the
        least recently used out when full, gone at ``expires``. For a near cache, which
        holds what the server sent: only the key is checked; ``metadata`` must be a dict
        or ``None``."""
        key = check_key(key)
        dead: list[MemoryEntry[Any]] = []
        with self._exclusive:
            now = self.now()
            entry = self._store(key, value, expires, metadata or None, now, dead)
            entry._created = created
            entry._updated = updated
            self._purge(now, PURGE_BUDGET, dead)

    def delete(self, key: str) -> bool:
        """Remove ``key``; ``True`` when a live entry was removed."""
        key = check_key(key)
        dead: list[MemoryEntry[Any]] = []
        with self._exclusive:
            removed = self._remove(key, self.now(), dead)
            self._ops[_DELETE_HIT if removed else _DELETE_MISS] += 1
            return removed

    def exists(self, key: str) -> bool:
        """``True`` when ``key`` holds a live entry; not a use for LRU."""
        key = check_key(key)
        dead: list[MemoryEntry[Any]] = []
        with self._exclusive:
            found = self._lookup(key, self.now(), dead) is not None
            self._ops[_EXISTS_HIT if found else _EXISTS_MISS] += 1
            return found

    def get_many(self, keys: Iterable[str]) -> list[MemoryEntry[Any] | None]:
        """Entries for ``keys``, aligned with them (``None`` where missing)."""
        checked = check_keys(keys)
        dead: list[MemoryEntry[Any]] = []
        with self._exclusive:
            now = self.now()
            entries = [self._fetch(key, now, dead) for key in checked]
            self._ops[_GET_MANY] += 1
            return entries

    def set_many(self, items: object, ttl: object = None, metadata: object = None) -> None:
        """Store every pair of ``items``; all are validated before any is written."""
        pairs = check_items(items)
        seconds = ttl_seconds(ttl)
        checked = check_metadata(metadata)
        dead: list[MemoryEntry[Any]] = []
        with self._exclusive:
            now = self.now()
            for key, value in pairs:
                copy = None if checked is None else dict(checked)
                self._store(key, value, _deadline(now, seconds), copy, now, dead)
            self._purge(now, PURGE_BUDGET * max(1, len(pairs)), dead)
            self._ops[_SET_MANY] += 1

    def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; returns how many live entries were removed."""
        checked = check_keys(keys)
        dead: list[MemoryEntry[Any]] = []
        with self._exclusive:
            now = self.now()
            removed = sum(self._remove(key, now, dead) for key in checked)
            self._ops[_DELETE_MANY] += 1
            return removed

    def scan_batch(
        self, prefix: str, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """Up to ``limit`` index positions of keys starting with ``prefix`` past ``after``.

        Returns the live keys found, in code-point order, and the cursor to pass as
        ``after`` next time (``None`` when the prefix range is exhausted). Expired keys
        are skipped, not removed. O(log n + limit).
        """
        with self._exclusive:
            now = self.now()
            index = self._index
            start = index.bisect_left(prefix) if after is None else index.bisect_right(after)
            stop = min(len(index), start + limit)
            entries = self._entries
            found: list[str] = []
            for key in index.islice(start, stop):
                if not key.startswith(prefix):
                    return found, None
                expires = entries[key]._expires
                if expires is None or expires > now:
                    found.append(key)
            if stop >= len(index):
                return found, None
            return found, index[stop - 1]

    def clear(self, prefix: str | None = None) -> int:
        """Remove every live entry whose key starts with ``prefix``; returns the count."""
        prefix = check_prefix(prefix)
        with self._exclusive:
            now = self.now()
            if not prefix:
                old = self._entries
                removed = sum(
                    1 for entry in old.values() if entry._expires is None or entry._expires > now
                )
                self._entries = OrderedDict() if self._lru else {}
                self._index = SortedList()
                self._heap = []
                self._n_expiring = 0
            else:
                index = self._index
                keys = list(
                    itertools.takewhile(
                        lambda key: key.startswith(prefix),
                        index.islice(index.bisect_left(prefix)),
                    )
                )
                old = {key: self._entries[key] for key in keys}
                removed = 0
                for key, entry in old.items():
                    self._unlink(key, entry)
                    if entry._expires is None or entry._expires > now:
                        removed += 1
            self._deletes += removed
            self._expired += len(old) - removed
            self._ops[_CLEAR] += 1
        del old
        return removed

    def purge_expired(self) -> int:
        """Remove every expired entry now; returns how many. O(k log n)."""
        dead: list[MemoryEntry[Any]] = []
        with self._exclusive:
            return self._purge(self.now(), -1, dead)

    def __len__(self) -> int:
        self.purge_expired()
        return len(self._entries)

    def counters(self) -> tuple[int, int, int, int, int, int, int, int]:
        """(gets, hits, misses, sets, deletes, expired, evictions, entries held)."""
        with self._exclusive:
            return (
                self._gets,
                self._hits,
                self._misses,
                self._sets,
                self._deletes,
                self._expired,
                self._evictions,
                len(self._entries),
            )

    def operations(self) -> tuple[int, ...]:
        """Calls by outcome, in the order of ``OPERATION_COUNTERS``."""
        with self._exclusive:
            return tuple(self._ops)

    def _heap_size(self) -> int:
        """Items in the expiry heap, stale ones included (for tests)."""
        return len(self._heap)

    def _check(self) -> None:
        """Assert the internal invariants (for tests and fuzzing)."""
        with self._exclusive:
            entries = self._entries
            index = self._index
            assert len(index) == len(entries), (len(index), len(entries))
            assert list(index) == sorted(entries), "index differs from the entries"
            expiring = {(e._expires, k) for k, e in entries.items() if e._expires is not None}
            assert self._n_expiring == len(expiring), (self._n_expiring, len(expiring))
            assert expiring <= set(self._heap), "an expiring entry is missing from the heap"
            heap = self._heap
            for i in range(1, len(heap)):
                assert heap[(i - 1) // 2] <= heap[i], "heap order broken"
            assert len(heap) <= 2 * self._n_expiring + HEAP_SLACK, "heap not compacted"
            assert self._hits + self._misses == self._gets
            for key, entry in entries.items():
                assert entry.key == key
                assert entry._created <= entry._updated
            if self._max_entries is not None:
                assert len(entries) <= self._max_entries

    # -- conditional writes (get_or_set, add and touch build on these) ----------------

    def add(self, key: str, value: Any, ttl: object = None, metadata: object = None) -> bool:
        """Store like ``set``, but only when ``key`` holds no live entry; ``True`` if written.

        The check and the write happen under one lock hold, so among concurrent callers
        (tasks or threads) exactly one wins.
        """
        key = check_key(key)
        seconds = ttl_seconds(ttl)
        checked = check_metadata(metadata)
        dead: list[MemoryEntry[Any]] = []
        with self._exclusive:
            now = self.now()
            if self._lookup(key, now, dead) is not None:
                return False
            self._store(key, value, _deadline(now, seconds), checked, now, dead)
            self._purge(now, PURGE_BUDGET, dead)
            return True

    def touch(self, key: str, ttl: object = None) -> bool:
        """Give the live entry at ``key`` a new expiry (``None``: never); ``True`` if found.

        Value, metadata, ``created_at``, ``updated_at`` and the LRU position are kept;
        the entry a caller already holds keeps its old expiry (entries are snapshots).
        """
        key = check_key(key)
        seconds = ttl_seconds(ttl)
        dead: list[MemoryEntry[Any]] = []
        with self._exclusive:
            now = self.now()
            old = self._lookup(key, now, dead)
            if old is None:
                return False
            expires = None if seconds is None else now + seconds
            # Assigning an existing key keeps its place in the LRU order.
            self._entries[key] = make_entry(
                key, old.value, old._metadata, old._created, old._updated, expires
            )
            dead.append(old)
            if old._expires is not None:
                self._n_expiring -= 1
            if expires is not None:
                self._n_expiring += 1
                heapq.heappush(self._heap, (expires, key))
            self._compact_if_needed()
            return True
