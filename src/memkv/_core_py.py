"""Pure-Python local core: the reference behaviour that the Cython core is fuzzed against.

``LocalCore`` keeps entries in a dict, keys in a ``SortedList`` (prefix scans in
O(log n + k)) and TTL deadlines in a min-heap with lazy deletion. Every operation is
synchronous and never awaits, so it is atomic within one event loop; a
``threading.RLock`` keeps it consistent across threads. Objects that may run user code
when released (old entries and their values) are dropped only after the lock is
released, so a value's ``__del__`` may call back into the store.

An exception can arrive between any two bytecodes (a ``KeyboardInterrupt`` from a
signal handler, or from a trace function). The lock is a C lock taken by ``with``, so
an exception inside the block releases it; one raised by a trace function as the block
ends can skip the release, and the next call on that thread tells this from re-entry
and releases it. An operation marks the core busy while it updates the structures, and
the next operation that finds the mark left behind rebuilds the index and the heap
from the entries dict (the one structure updated in single, atomic steps) first.
"""

from __future__ import annotations

import heapq
import itertools
import math
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, SupportsIndex, TypeVar

from sortedcontainers import SortedList

from memkv._counters import CoreCounters, CoreOperations
from memkv.entry import MemoryEntry as AnyCoreEntry
from memkv.errors import (
    FrozenEntryError,
    InvalidTTLError,
    ReentrantCallError,
)
from memkv.validation import (
    bad_clock_reading,
    check_clock,
    check_items,
    check_key,
    check_keys,
    check_max_entries,
    check_metadata,
    check_prefix,
    ttl_seconds,
)

__all__ = ["LocalCore", "MemoryEntry", "make_entry"]

T = TypeVar("T")

_UTC = timezone.utc
#: Expired heap items a write may pop; more than one, so purging outpaces new TTLs.
PURGE_BUDGET = 4
#: Stale heap items allowed beyond the live ones before the heap is rebuilt.
HEAP_SLACK = 64
# Positions in ``LocalCore._ops``, in the order of ``CoreOperations``' fields.
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
) = range(len(CoreOperations._fields))


def _to_datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, _UTC)


class MemoryEntry(AnyCoreEntry[T]):
    """One stored value with its key, metadata and timestamps.

    ``created_at``, ``updated_at`` and ``expires_at`` are timezone-aware UTC datetimes,
    made on access from the float timestamps the entry keeps. ``metadata`` is a dict,
    never ``None``. Entries returned by a store are snapshots: a later ``set`` of the
    same key makes a new entry and leaves this one as it was. Only ``value`` (and the
    contents of the ``metadata`` dict) may change after the entry is made: a second
    ``__init__``, or writing or deleting any other attribute, raises
    ``FrozenEntryError``, since a store files the entry by its key and expiry.

    >>> entry = MemoryEntry("greeting", "hello", metadata={"lang": "en"})
    >>> entry.created_at == entry.updated_at
    True
    """

    __slots__ = ("_created", "_expires", "_key", "_metadata", "_updated", "value")

    value: T
    _key: str
    _metadata: dict[str, Any] | None
    _created: float
    _updated: float
    _expires: float | None

    def __init__(
        self,
        key: str,
        value: T,
        expires_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if _has_key(self):
            # A store files its entries under their key and expiry.
            raise FrozenEntryError("a MemoryEntry is initialised once; make a new one")
        now = time.time()
        key = check_key(key)
        checked = check_metadata(metadata)
        expires: float | None
        if expires_at is None:
            expires = None
        elif not isinstance(expires_at, datetime):
            raise InvalidTTLError(
                f"expires_at must be a datetime or None, not {type(expires_at).__name__}"
            )
        elif expires_at.tzinfo is None or expires_at.utcoffset() is None:
            raise InvalidTTLError("expires_at must be timezone-aware")
        else:
            expires = expires_at.timestamp()
        _fill(self, key, value, checked, now, now, expires)

    if not TYPE_CHECKING:  # declared, mypy would let any attribute be assigned

        def __setattr__(self, name: str, value: Any) -> None:
            if name != "value":
                raise FrozenEntryError(
                    f"MemoryEntry.{name} cannot be set: only value may change after creation"
                )
            _set_value(self, value)

        def __delattr__(self, name: str) -> None:
            raise FrozenEntryError(f"MemoryEntry.{name} cannot be deleted")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            make_entry,
            (self._key, self.value, self._metadata, self._created, self._updated, self._expires),
        )

    @property
    def key(self) -> str:
        """The entry's key (read-only: the store files the entry under it)."""
        return self._key

    @property
    def metadata(self) -> dict[str, Any]:
        """The entry's metadata dict (empty when none was given)."""
        metadata = self._metadata
        if metadata is None:
            metadata = {}
            _set_metadata(self, metadata)
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
        # The value and metadata are the user's data: a repr (in a log line, a
        # traceback) shows only their shape.
        return (
            f"MemoryEntry(key={self.key!r}, value=<{type(self.value).__name__}>, "
            f"expires_at={self.expires_at!r}, metadata=<{len(self.metadata)} items>)"
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


# Slot writers that bypass MemoryEntry.__setattr__ (which refuses all but ``value``).
_set_key = MemoryEntry.__dict__["_key"].__set__
_set_value = MemoryEntry.__dict__["value"].__set__
_set_metadata = MemoryEntry.__dict__["_metadata"].__set__
_set_created = MemoryEntry.__dict__["_created"].__set__
_set_updated = MemoryEntry.__dict__["_updated"].__set__
_set_expires = MemoryEntry.__dict__["_expires"].__set__


def _has_key(entry: MemoryEntry[Any]) -> bool:
    try:
        entry._key  # noqa: B018 - an unset slot raises
    except AttributeError:
        return False
    return True


def _fill(
    entry: MemoryEntry[Any],
    key: str,
    value: Any,
    metadata: dict[str, Any] | None,
    created: float,
    updated: float,
    expires: float | None,
) -> None:
    # The key goes last: an entry with a key is complete, and __init__ refuses it.
    _set_value(entry, value)
    _set_metadata(entry, metadata)
    _set_created(entry, created)
    _set_updated(entry, updated)
    _set_expires(entry, expires)
    _set_key(entry, key)


def make_entry(
    key: str,
    value: T,
    metadata: dict[str, Any] | None,
    created: float,
    updated: float,
    expires: float | None,
) -> MemoryEntry[T]:
    """Build an entry from float UNIX timestamps without validation (for stores)."""
    # object.__new__: memkv.MemoryEntry.__new__ only adds a call to this hot path.
    entry: MemoryEntry[T] = _new_object(MemoryEntry)
    _fill(entry, key, value, metadata or None, created, updated, expires)
    return entry


_new_object = object.__new__


class LocalCore:
    """The synchronous engine behind ``LocalMemoryStore``.

    Complexities, n entries held: ``get`` and ``exists`` O(1), or O(log n) when the
    entry read has expired and is removed; ``delete`` O(log n); ``set`` O(log n) (the
    sorted index and the heap), plus up to ``PURGE_BUDGET`` expired entries removed at
    O(log n) each; the ``_many`` forms the single form per key. ``scan_batch`` O(log n +
    limit); ``clear(prefix)`` O(k log n) for k matching keys (each leaves the sorted
    index on its own); ``clear()`` O(n); ``purge_expired`` O((k + s) log n) for k
    expired entries and s stale heap items. Two amortised costs on top: the sorted
    index moves O(n / 1000) sublist pointers when a sublist splits or empties
    (``SortedList``'s load), and the heap is rebuilt in O(n) once stale items outnumber
    live ones (``HEAP_SLACK``), which a write triggers about once per n overwrites.
    Expired entries are removed lazily when read, a few at a time on each write
    (``PURGE_BUDGET``) and all at once by ``purge_expired``.
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
        # A C lock entered by ``with``: released even if an exception arrives anywhere.
        self._exclusive = threading.RLock()
        # Set while an operation updates the structures; found set, it was interrupted.
        self._busy = False
        self._hits = self._misses = self._sets = 0
        self._deletes = self._expired = self._evictions = 0
        self._ops = [0] * len(CoreOperations._fields)

    @property
    def max_entries(self) -> int | None:
        return self._max_entries

    def now(self) -> float:
        """Current store time: UNIX seconds advanced by the injected clock."""
        reading = self._clock()
        try:
            now = reading + self._offset
        except (TypeError, OverflowError):  # not a number, or an int past any float
            raise bad_clock_reading(reading) from None
        if not math.isfinite(now):
            # NaN or an infinite deadline would break the expiry heap's order.
            raise bad_clock_reading(now)
        return now

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        # A copy would share the entries dict but not the counts kept about it.
        raise TypeError("a LocalCore cannot be copied or pickled")

    # -- the exclusive section -------------------------------------------------------

    def _refuse_reentry(self) -> None:
        """Raise ``ReentrantCallError`` when called from inside one of our operations.

        Only code that runs in the middle of an operation on the same thread can get
        here with the lock held: a finalizer run by the cyclic GC when the operation
        allocates, or the injected clock. The structures may be mid-update then, so
        the call is refused instead of deadlocking or corrupting them. (Values released
        by the store itself are dropped after the operation, so their ``__del__`` may
        use the store freely.)
        """
        lock = self._exclusive
        if not lock._is_owned():  # type: ignore[attr-defined]
            return
        # The frames above the operation that called us.
        frame: FrameType | None = sys._getframe(2)
        while frame is not None:
            if frame.f_code in _LOCKING_CODE and frame.f_locals.get("self") is self:
                raise ReentrantCallError(
                    "the pure-Python memkv core was called from its injected clock or "
                    "from a finalizer that ran during one of its own operations"
                )
            frame = frame.f_back
        # Held by this thread, yet none of our operations runs on it: a trace function
        # raised as a ``with`` block ended, before the lock's release (CPython runs no
        # signal handler there). Release it; ``_begin`` repairs the structures.
        lock._release_save()  # type: ignore[attr-defined]

    def _begin(self) -> float:
        """Start an update (with the lock held); returns the current store time.

        Rebuilds what an interrupted operation may have left half-updated first.
        """
        if self._busy:
            self._repair()
        now = self.now()
        self._busy = True
        return now

    def _repair(self) -> None:
        """Rebuild the index, the heap and their counts from the entries dict. O(n log n).

        Every change to the dict is one atomic step, so it is consistent whenever an
        exception arrives; the other structures are derived from it.
        """
        entries = self._entries
        heap = [(e._expires, key) for key, e in entries.items() if e._expires is not None]
        heapq.heapify(heap)
        self._index = SortedList(entries)
        self._heap = heap
        self._n_expiring = len(heap)
        self._busy = False

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
        # Stale items cost no budget: both cores purge the same entries, earliest
        # (deadline, key) first, the Cython core's heap having no stale items.
        heap = self._heap
        entries = self._entries
        purged = 0
        while budget and heap and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            entry = entries.get(key)
            if entry is not None and entry._expires == deadline:
                self._unlink(key, entry)
                dead.append(entry)
                self._expired += 1
                purged += 1
                budget -= 1
        return purged

    def _make_room(self, now: float, dead: list[MemoryEntry[Any]]) -> None:
        assert self._max_entries is not None
        entries = self._entries
        while len(entries) >= self._max_entries:
            if self._purge(now, 1, dead):
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
        times: tuple[float, float] | None = None,
    ) -> None:
        """Put ``value`` at ``key`` expiring at ``expires`` (store time). ``times`` is
        ``(created, updated)`` for a copy (``put``); else ``created_at`` is kept from the
        entry replaced and ``updated_at`` is ``now``."""
        entries = self._entries
        old = self._lookup(key, now, dead)
        if old is None:
            if self._lru and len(entries) >= self._max_entries:  # type: ignore[operator]
                self._make_room(now, dead)
            created, updated = times or (now, now)
            entries[key] = make_entry(key, value, metadata, created, updated, expires)
            self._index.add(key)
        else:
            dead.append(old)
            created, updated = times or (old._created, now)
            entries[key] = make_entry(key, value, metadata, created, updated, expires)
            if self._lru:
                entries.move_to_end(key)  # type: ignore[attr-defined]
            if old._expires is not None:
                self._n_expiring -= 1
        if expires is not None:
            self._n_expiring += 1
            heapq.heappush(self._heap, (expires, key))
        self._compact_if_needed()
        self._sets += 1

    def _fetch(
        self, key: str, now: float, dead: list[MemoryEntry[Any]]
    ) -> MemoryEntry[Any] | None:
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

    def get(self, key: str) -> AnyCoreEntry[Any] | None:
        """Return the live entry for ``key`` or ``None``; counts as a use for LRU."""
        key = check_key(key)
        dead: list[MemoryEntry[Any]] = []
        self._refuse_reentry()
        with self._exclusive:
            entry = self._fetch(key, self._begin(), dead)
            self._ops[_GET_MISS if entry is None else _GET_HIT] += 1
            self._busy = False
            return entry

    def set(self, key: str, value: Any, ttl: object = None, metadata: object = None) -> None:
        """Store ``value`` under ``key``; an overwrite keeps ``created_at``."""
        key = check_key(key)
        seconds = ttl_seconds(ttl)
        checked = check_metadata(metadata)
        dead: list[MemoryEntry[Any]] = []
        self._refuse_reentry()
        with self._exclusive:
            now = self._begin()
            expires = None if seconds is None else now + seconds
            self._store(key, value, expires, checked, now, dead)
            self._purge(now, PURGE_BUDGET, dead)
            self._ops[_SET] += 1
            self._busy = False

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
        self._refuse_reentry()
        with self._exclusive:
            now = self._begin()
            self._store(key, value, expires, metadata or None, now, dead, (created, updated))
            self._purge(now, PURGE_BUDGET, dead)
            self._busy = False

    def delete(self, key: str) -> bool:
        """Remove ``key``; ``True`` when a live entry was removed."""
        key = check_key(key)
        dead: list[MemoryEntry[Any]] = []
        self._refuse_reentry()
        with self._exclusive:
            removed = self._remove(key, self._begin(), dead)
            self._ops[_DELETE_HIT if removed else _DELETE_MISS] += 1
            self._busy = False
            return removed

    def exists(self, key: str) -> bool:
        """``True`` when ``key`` holds a live entry; not a use for LRU."""
        key = check_key(key)
        dead: list[MemoryEntry[Any]] = []
        self._refuse_reentry()
        with self._exclusive:
            found = self._lookup(key, self._begin(), dead) is not None
            self._ops[_EXISTS_HIT if found else _EXISTS_MISS] += 1
            self._busy = False
            return found

    def get_many(self, keys: Iterable[str]) -> list[AnyCoreEntry[Any] | None]:
        """Entries for ``keys``, aligned with them (``None`` where missing)."""
        checked = check_keys(keys)
        dead: list[MemoryEntry[Any]] = []
        self._refuse_reentry()
        with self._exclusive:
            now = self._begin()
            entries: list[AnyCoreEntry[Any] | None] = [
                self._fetch(key, now, dead) for key in checked
            ]
            self._ops[_GET_MANY] += 1
            self._busy = False
            return entries

    def set_many(self, items: object, ttl: object = None, metadata: object = None) -> None:
        """Store every pair of ``items``; all are validated before any is written."""
        pairs = check_items(items)
        seconds = ttl_seconds(ttl)
        checked = check_metadata(metadata)
        dead: list[MemoryEntry[Any]] = []
        self._refuse_reentry()
        with self._exclusive:
            now = self._begin()
            # One float for the whole batch: a million entries share it (and ``now``).
            expires = None if seconds is None else now + seconds
            for key, value in pairs:
                copy = None if checked is None else dict(checked)
                self._store(key, value, expires, copy, now, dead)
            self._purge(now, PURGE_BUDGET * max(1, len(pairs)), dead)
            self._ops[_SET_MANY] += 1
            self._busy = False

    def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; returns how many live entries were removed."""
        checked = check_keys(keys)
        dead: list[MemoryEntry[Any]] = []
        self._refuse_reentry()
        with self._exclusive:
            now = self._begin()
            removed = sum(self._remove(key, now, dead) for key in checked)
            self._ops[_DELETE_MANY] += 1
            self._busy = False
            return removed

    def scan_batch(
        self, prefix: str, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """Up to ``limit`` index positions of keys starting with ``prefix`` past ``after``.

        Returns the live keys found, in code-point order, and the cursor to pass as
        ``after`` next time (``None`` when the prefix range is exhausted). Expired keys
        are skipped, not removed. O(log n + limit).
        """
        self._refuse_reentry()
        with self._exclusive:
            if self._busy:
                self._repair()
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
        self._refuse_reentry()
        with self._exclusive:
            now = self._begin()
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
            self._busy = False
        del old
        return removed

    def purge_expired(self) -> int:
        """Remove every expired entry now; returns how many.

        O((k + s) log n) for k expired entries and s stale heap items popped with them.
        """
        dead: list[MemoryEntry[Any]] = []
        self._refuse_reentry()
        with self._exclusive:
            purged = self._purge(self._begin(), -1, dead)
            self._busy = False
            return purged

    def __len__(self) -> int:
        self.purge_expired()
        return len(self._entries)

    def counters(self) -> CoreCounters:
        """What the core has done to entries, and how many it holds."""
        self._refuse_reentry()
        with self._exclusive:
            return CoreCounters(
                self._hits + self._misses,
                self._hits,
                self._misses,
                self._sets,
                self._deletes,
                self._expired,
                self._evictions,
                len(self._entries),
            )

    def operations(self) -> CoreOperations:
        """Calls by outcome (scans and failed calls are counted by the store)."""
        self._refuse_reentry()
        with self._exclusive:
            return CoreOperations(*self._ops)

    def _heap_size(self) -> int:
        """Items in the expiry heap, stale ones included (for tests)."""
        return len(self._heap)

    def _check(self) -> None:
        """Assert the internal invariants (for tests and fuzzing)."""
        self._refuse_reentry()
        with self._exclusive:
            if self._busy:
                self._repair()
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
        self._refuse_reentry()
        with self._exclusive:
            now = self._begin()
            written = self._lookup(key, now, dead) is None
            if written:
                expires = None if seconds is None else now + seconds
                self._store(key, value, expires, checked, now, dead)
                self._purge(now, PURGE_BUDGET, dead)
            self._busy = False
            return written

    def touch(self, key: str, ttl: object = None) -> bool:
        """Give the live entry at ``key`` a new expiry (``None``: never); ``True`` if found.

        Value, metadata, ``created_at``, ``updated_at`` and the LRU position are kept;
        the entry a caller already holds keeps its old expiry (entries are snapshots).
        """
        key = check_key(key)
        seconds = ttl_seconds(ttl)
        dead: list[MemoryEntry[Any]] = []
        self._refuse_reentry()
        with self._exclusive:
            now = self._begin()
            old = self._lookup(key, now, dead)
            if old is None:
                self._busy = False
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
            self._busy = False
            return True


#: The code of every method that takes the lock, to tell a re-entrant call from a lock
#: left held by an interrupted one.
_LOCKING_CODE = frozenset(
    getattr(LocalCore, name).__code__
    for name in [
        "get", "set", "delete", "exists", "get_many", "set_many", "delete_many",
        "scan_batch", "clear", "purge_expired", "counters", "operations", "_check",
        "add", "touch", "put",
    ]
)  # fmt: skip
