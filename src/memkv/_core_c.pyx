# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Cython local core: the compiled twin of ``memkv._core_py``, behaving identically.

Entries live in a dict; keys are also held in ``KeyIndex`` (a sortedcontainers-style
list of sorted C arrays), TTL deadlines in ``ExpiryQueue`` (an indexed C min-heap: no
stale items, so no compaction stalls), LRU order in a doubly linked list threaded
through the entries, and the counters are C integers. An entry holding no container is
hidden from the cyclic GC, and an overwrite reuses the old entry when nothing outside
the store holds it.

Both cores purge expired entries in the same order (deadline, then key) and count only
live entries against a write's purge budget, so every answer and counter agrees,
``purge_expired()``'s count and the entries held included.

Python code can reach an entry while a store files it by pointer (in the heap and the
LRU list): ``MemoryEntry`` therefore refuses a second ``__init__`` and any attribute
write but ``value`` (``FrozenEntryError``), and its key survives the cyclic GC.

Thread safety without a per-call lock: with the default clock, an operation never runs
Python code between reading the clock and leaving its structures consistent, so the GIL
makes it atomic. Objects that can run Python code (new entries, result lists) are made
before that window; objects it drops (old entries and their values, whose ``__del__``
may call back into the store) are released after it. An injected clock is Python code
that may switch threads, so such a core also takes a lock around the clock read and the
update, as the pure-Python core does.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_get_thread_ident,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.math cimport INFINITY, NAN, isfinite, isinf
from libc.string cimport memmove

import time
from datetime import datetime, timezone
from types import GenericAlias

from memkv._counters import CoreCounters, CoreOperations
from memkv.entry import MemoryEntry as AnyCoreEntry
from memkv.errors import (
    FrozenEntryError,
    InvalidTTLError,
    ReentrantCallError,
)
from memkv.validation import (
    MAX_TTL_SECONDS,
    bad_clock_reading,
    check_clock,
    check_key,
    check_keys,
    check_max_entries,
    check_metadata,
    check_pair,
    check_prefix,
    item_pairs,
    ttl_seconds,
)

__all__ = ["LocalCore", "MemoryEntry", "make_entry"]


cdef extern from "Python.h":
    ctypedef struct PyObject
    void incref "Py_INCREF"(PyObject*)
    void decref "Py_DECREF"(PyObject*)
    PyObject* PyDict_GetItem(PyObject*, PyObject*)
    int PyDict_SetItem(PyObject*, PyObject*, PyObject*) except -1
    int PyDict_DelItem(PyObject*, PyObject*) except -1
    int PyDict_Next(PyObject*, Py_ssize_t*, PyObject**, PyObject**)
    Py_ssize_t PyDict_GET_SIZE(PyObject*)
    int PyList_Append(object, object) except -1
    void PyList_SET_ITEM(object, Py_ssize_t, object)
    object PyList_New(Py_ssize_t)
    int PyObject_GC_IsTracked(PyObject*)
    Py_ssize_t Py_REFCNT(PyObject*)
    void PyObject_GC_Track(void*)
    void PyObject_GC_UnTrack(void*)


cdef extern from "_core_c.h":
    double memkv_monotonic() nogil
    double memkv_monotonic_coarse() nogil
    int memkv_key_cmp(PyObject*, PyObject*)
    bint memkv_startswith(PyObject*, PyObject*)
    bint memkv_may_be_tracked(PyObject*)
    int memkv_ready(PyObject*) except -1


#: Expired heap items a write may pop; more than one, so purging outpaces new TTLs.
PURGE_BUDGET = 4
#: Stale heap items the reference core allows beyond the live ones; this core's
#: indexed heap never holds a stale item.
HEAP_SLACK = 64

cdef enum:
    C_PURGE_BUDGET = 4
    # A sublist splits in two when it reaches this size: small enough that an insert's
    # memmove stays cheap, large enough that the index costs ~1.2 pointers per key.
    MAX_SUBLIST = 512

# Call counters, in the order of ``CoreOperations``' fields.
cdef enum:
    OP_GET_HIT
    OP_GET_MISS
    OP_SET
    OP_DELETE_HIT
    OP_DELETE_MISS
    OP_EXISTS_HIT
    OP_EXISTS_MISS
    OP_CLEAR
    OP_GET_MANY
    OP_SET_MANY
    OP_DELETE_MANY
    N_OPS

cdef double C_MAX_TTL = MAX_TTL_SECONDS
# How far the coarse clock may lag the precise one and still prove an entry live. It
# lags by at most a timer tick (1-10 ms); an entry due within this margin makes the
# read take the precise clock.
cdef double COARSE_MARGIN = 0.05
_UTC = timezone.utc
_fromtimestamp = datetime.fromtimestamp
_monotonic = time.monotonic


cdef inline object _to_datetime(double timestamp):
    return _fromtimestamp(timestamp, _UTC)


cdef inline object exact_key(object key):
    """``key`` as an exact, ready ``str``, validated like ``check_key``."""
    if type(key) is not str:
        key = check_key(key)
    memkv_ready(<PyObject*>key)
    return key


# -- objects dropped during an operation, released once it is done -----------------

cdef struct Dropped:
    PyObject** items
    Py_ssize_t size
    Py_ssize_t capacity
    PyObject* inline_items[8]


cdef inline void dropped_init(Dropped* dropped) noexcept:
    dropped.items = dropped.inline_items
    dropped.size = 0
    dropped.capacity = 8


cdef void dropped_add(Dropped* dropped, PyObject* obj) noexcept:
    """Take over one reference to ``obj`` (the caller gives its reference away)."""
    cdef PyObject** grown
    if dropped.size == dropped.capacity:
        if dropped.items == dropped.inline_items:
            grown = <PyObject**>PyMem_Malloc(2 * dropped.capacity * sizeof(PyObject*))
            if grown != NULL:
                memmove(grown, dropped.items, dropped.size * sizeof(PyObject*))
        else:
            grown = <PyObject**>PyMem_Realloc(
                dropped.items, 2 * dropped.capacity * sizeof(PyObject*)
            )
        if grown == NULL:
            # Out of memory: keeping the object alive forever is safe, releasing it
            # now could run Python code while the structures are mid-update.
            return
        dropped.items = grown
        dropped.capacity *= 2
    dropped.items[dropped.size] = obj
    dropped.size += 1


cdef void dropped_release(Dropped* dropped) noexcept:
    """Release everything dropped; may run arbitrary Python code (``__del__``)."""
    cdef Py_ssize_t i
    cdef PyObject** items = dropped.items
    cdef Py_ssize_t size = dropped.size
    dropped.size = 0
    for i in range(size):
        decref(items[i])
    if items != dropped.inline_items:
        PyMem_Free(items)
        dropped.items = dropped.inline_items
        dropped.capacity = 8


# -- MemoryEntry --------------------------------------------------------------------

@cython.freelist(64)
cdef class MemoryEntry:
    """One stored value with its key, metadata and timestamps.

    ``created_at``, ``updated_at`` and ``expires_at`` are timezone-aware UTC datetimes,
    made on access from the C doubles the entry keeps. ``metadata`` is a dict, never
    ``None``. Entries returned by a store are snapshots: a later ``set`` of the same key
    makes a new entry and leaves this one as it was. Only ``value`` (and the contents of
    the ``metadata`` dict) may change after the entry is made: a second ``__init__``, or
    writing or deleting any other attribute, raises ``FrozenEntryError``, since a store
    files the entry by its key and expiry.

    >>> entry = MemoryEntry("greeting", "hello", metadata={"lang": "en"})
    >>> entry.created_at == entry.updated_at
    True
    """

    # Typed str: the cyclic GC's tp_clear leaves it alone, so an entry still filed in a
    # store never loses its key (a str cannot be part of a reference cycle).
    cdef str c_key
    cdef object c_value
    cdef object c_metadata
    cdef double c_created
    cdef double c_updated
    # INFINITY when the entry never expires.
    cdef double c_expires
    # LRU neighbours (borrowed: the store's dict owns the entries it links).
    cdef PyObject* lru_prev
    cdef PyObject* lru_next
    # Position in the store's ExpiryQueue, -1 when not in one.
    cdef Py_ssize_t heap_pos

    def __init__(self, key, value, expires_at=None, metadata=None):
        cdef double expires
        if self.c_key is not None:
            # A store holds its entries by pointer, filed under their key and expiry.
            raise FrozenEntryError("a MemoryEntry is initialised once; make a new one")
        now = time.time()
        key = check_key(key)
        metadata = check_metadata(metadata)
        if expires_at is None:
            expires = INFINITY
        elif not isinstance(expires_at, datetime):
            raise InvalidTTLError(
                f"expires_at must be a datetime or None, not {type(expires_at).__name__}"
            )
        elif expires_at.tzinfo is None or expires_at.utcoffset() is None:
            raise InvalidTTLError("expires_at must be timezone-aware")
        else:
            expires = expires_at.timestamp()
        self.heap_pos = -1
        self.c_value = value
        self.c_metadata = metadata
        self.c_created = now
        self.c_updated = now
        self.c_expires = expires
        self.c_key = key

    def __setattr__(self, name, value):
        if name != "value":
            raise FrozenEntryError(
                f"MemoryEntry.{name} cannot be set: only value may change after creation"
            )
        self.c_value = value
        self.track()

    def __delattr__(self, name):
        raise FrozenEntryError(f"MemoryEntry.{name} cannot be deleted")

    def __class_getitem__(cls, item):
        return GenericAlias(cls, item)

    cdef inline void track(self) noexcept:
        if not PyObject_GC_IsTracked(<PyObject*>self):
            PyObject_GC_Track(<void*>self)

    cdef inline void untrack_if_atomic(self) noexcept:
        # Like CPython's dicts and tuples: an entry holding no container cannot be part
        # of a reference cycle, so the cyclic GC need not walk a million of them.
        if self.c_metadata is None and not memkv_may_be_tracked(<PyObject*>self.c_value):
            PyObject_GC_UnTrack(<void*>self)

    @property
    def key(self):
        """The entry's key."""
        return self.c_key

    @property
    def value(self):
        """The stored value (held by reference; the one attribute that may be set)."""
        return self.c_value

    @property
    def metadata(self):
        """The entry's metadata dict (empty when none was given)."""
        metadata = self.c_metadata
        if metadata is None:
            metadata = self.c_metadata = {}
        # The caller may store anything in the dict, the entry itself included.
        self.track()
        return metadata

    @property
    def created_at(self):
        """When the key was first written (kept across overwrites)."""
        return _to_datetime(self.c_created)

    @property
    def updated_at(self):
        """When the entry was last written."""
        return _to_datetime(self.c_updated)

    @property
    def expires_at(self):
        """When the entry expires, or ``None`` if it never does."""
        if isinf(self.c_expires):
            return None
        return _to_datetime(self.c_expires)

    @property
    def _created(self):
        return self.c_created

    @property
    def _updated(self):
        return self.c_updated

    @property
    def _expires(self):
        return None if isinf(self.c_expires) else self.c_expires

    @property
    def _metadata(self):
        self.track()
        return self.c_metadata

    def __repr__(self):
        # The value and metadata are the user's data: a repr (in a log line, a
        # traceback) shows only their shape.
        return (
            f"MemoryEntry(key={self.key!r}, value=<{type(self.value).__name__}>, "
            f"expires_at={self.expires_at!r}, metadata=<{len(self.metadata)} items>)"
        )

    def __eq__(self, other):
        if not isinstance(other, MemoryEntry):
            return NotImplemented
        cdef MemoryEntry that = <MemoryEntry>other
        return (
            self.c_key == that.c_key
            and self.c_value == that.c_value
            and (self.c_metadata or {}) == (that.c_metadata or {})
            and self.c_created == that.c_created
            and self.c_updated == that.c_updated
            and self.c_expires == that.c_expires
        )

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None

    def __reduce__(self):
        return (
            make_entry,
            (self.c_key, self.c_value, self.c_metadata, self.c_created, self.c_updated,
             self._expires),
        )


# A cdef class cannot subclass the abstract entry, so it is registered as one.
AnyCoreEntry.register(MemoryEntry)


cdef inline MemoryEntry new_entry(object key, object value, object metadata):
    cdef MemoryEntry entry = MemoryEntry.__new__(MemoryEntry)
    entry.heap_pos = -1
    entry.c_key = key
    entry.c_value = value
    entry.c_metadata = metadata
    entry.untrack_if_atomic()
    return entry


def make_entry(key, value, metadata, double created, double updated, expires):
    """Build an entry from float UNIX timestamps without validation (for stores)."""
    cdef MemoryEntry entry = new_entry(key, value, metadata or None)
    entry.c_created = created
    entry.c_updated = updated
    entry.c_expires = INFINITY if expires is None else <double>expires
    return entry


# -- entries made ahead of a batch write ----------------------------------------------

cdef struct Chain:
    # Entries not yet stored, each holding one reference owned by the chain, linked
    # through their ``lru_next`` (unused until an entry is stored). A batch of a million
    # needs no list of a million pointers, nor pairs, to be freed after the write: such
    # temporaries, freed among the long-lived entries, fragment the heap.
    PyObject* head
    PyObject* tail
    Py_ssize_t size


cdef inline void chain_init(Chain* chain) noexcept:
    chain.head = NULL
    chain.tail = NULL
    chain.size = 0


cdef inline void chain_add(Chain* chain, MemoryEntry entry) noexcept:
    incref(<PyObject*>entry)
    if chain.tail == NULL:
        chain.head = <PyObject*>entry
    else:
        (<MemoryEntry>chain.tail).lru_next = <PyObject*>entry
    chain.tail = <PyObject*>entry
    chain.size += 1


cdef void chain_release(Chain* chain) noexcept:
    """Drop the entries left in ``chain``; may run Python code (their values' ``__del__``)."""
    cdef PyObject* node = chain.head
    cdef PyObject* following
    chain.head = NULL
    chain.tail = NULL
    while node != NULL:
        following = (<MemoryEntry>node).lru_next
        (<MemoryEntry>node).lru_next = NULL
        decref(node)
        node = following


cdef inline MemoryEntry checked_entry(object key, object value):
    return new_entry(exact_key(key), value, None)


cdef int make_entries(object items, Chain* made) except -1:
    """An entry for every pair of ``set_many``'s ``items``, validated as ``check_items`` does."""
    if type(items) is dict:
        for key, value in (<dict>items).items():
            chain_add(made, checked_entry(key, value))
        return 0
    for pair in item_pairs(items):
        if type(pair) is tuple and len(<tuple>pair) == 2:
            chain_add(made, checked_entry((<tuple>pair)[0], (<tuple>pair)[1]))
        else:
            key, value = check_pair(pair)
            chain_add(made, checked_entry(key, value))
    return 0


# -- KeyIndex -----------------------------------------------------------------------

cdef struct SubList:
    PyObject** keys
    Py_ssize_t size
    Py_ssize_t capacity


cdef inline Py_ssize_t sublist_bisect_left(SubList* sub, PyObject* key) noexcept:
    cdef Py_ssize_t lo = 0, hi = sub.size, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if memkv_key_cmp(sub.keys[mid], key) < 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t sublist_bisect_right(SubList* sub, PyObject* key) noexcept:
    cdef Py_ssize_t lo = 0, hi = sub.size, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if memkv_key_cmp(key, sub.keys[mid]) < 0:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef inline Py_ssize_t sublist_growth(Py_ssize_t capacity) noexcept:
    """The next capacity of a full sublist: doubling while small, then by half, at most
    ``MAX_SUBLIST`` (it splits on reaching that size)."""
    if capacity == 0:
        return 16
    capacity = 2 * capacity if capacity < 128 else capacity + (capacity >> 1)
    return MAX_SUBLIST if capacity > MAX_SUBLIST else capacity


cdef inline Py_ssize_t split_capacity(Py_ssize_t size) noexcept:
    """The capacity of a sublist of ``size`` keys made by a split: an eighth to spare."""
    return size + (size >> 3)


@cython.final
cdef class KeyIndex:
    """The keys in code-point order: a list of sorted C arrays (sortedcontainers' shape).

    ``maxes[i]`` is the last key of ``lists[i]``, so finding a key is two bisections,
    O(log n); inserting or removing one moves at most ``MAX_SUBLIST`` key pointers,
    plus the sublist records after it (O(n / MAX_SUBLIST)) when its sublist splits or
    empties. Holds a reference to each key.
    """

    cdef SubList* lists
    cdef PyObject** maxes
    cdef Py_ssize_t n_lists
    cdef Py_ssize_t lists_capacity
    cdef Py_ssize_t size

    def __dealloc__(self):
        self.clear()
        PyMem_Free(self.lists)
        PyMem_Free(self.maxes)

    cdef void clear(self) noexcept:
        cdef Py_ssize_t i, j
        cdef SubList* sub
        for i in range(self.n_lists):
            sub = &self.lists[i]
            for j in range(sub.size):
                decref(sub.keys[j])
            PyMem_Free(sub.keys)
        self.n_lists = 0
        self.size = 0

    cdef inline Py_ssize_t find_list_left(self, PyObject* key) noexcept:
        # The first sublist whose last key is >= key (n_lists when none is).
        cdef Py_ssize_t lo = 0, hi = self.n_lists, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if memkv_key_cmp(self.maxes[mid], key) < 0:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef inline Py_ssize_t find_list_right(self, PyObject* key) noexcept:
        # The first sublist whose last key is > key (n_lists when none is).
        cdef Py_ssize_t lo = 0, hi = self.n_lists, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if memkv_key_cmp(key, self.maxes[mid]) < 0:
                hi = mid
            else:
                lo = mid + 1
        return lo

    cdef int insert_list(self, Py_ssize_t at) except -1:
        """Open an empty sublist at position ``at``."""
        cdef Py_ssize_t capacity
        cdef SubList* lists
        cdef PyObject** maxes
        if self.n_lists == self.lists_capacity:
            capacity = 2 * self.lists_capacity if self.lists_capacity else 8
            lists = <SubList*>PyMem_Realloc(self.lists, capacity * sizeof(SubList))
            if lists == NULL:
                raise MemoryError()
            self.lists = lists
            maxes = <PyObject**>PyMem_Realloc(self.maxes, capacity * sizeof(PyObject*))
            if maxes == NULL:
                raise MemoryError()
            self.maxes = maxes
            self.lists_capacity = capacity
        memmove(&self.lists[at + 1], &self.lists[at], (self.n_lists - at) * sizeof(SubList))
        memmove(&self.maxes[at + 1], &self.maxes[at], (self.n_lists - at) * sizeof(PyObject*))
        self.lists[at].keys = NULL
        self.lists[at].size = 0
        self.lists[at].capacity = 0
        self.maxes[at] = NULL
        self.n_lists += 1
        return 0

    cdef void remove_list(self, Py_ssize_t at) noexcept:
        PyMem_Free(self.lists[at].keys)
        self.n_lists -= 1
        memmove(&self.lists[at], &self.lists[at + 1], (self.n_lists - at) * sizeof(SubList))
        memmove(&self.maxes[at], &self.maxes[at + 1], (self.n_lists - at) * sizeof(PyObject*))

    cdef int insert(self, PyObject* key) except -1:
        """Add ``key`` (not present yet). O(log n) comparisons."""
        cdef Py_ssize_t i, j, capacity
        cdef SubList* sub
        cdef PyObject** keys
        if self.n_lists == 0:
            self.insert_list(0)
            i = 0
        else:
            i = self.find_list_left(key)
            if i == self.n_lists:
                i -= 1
        sub = &self.lists[i]
        if sub.size == sub.capacity:
            capacity = sublist_growth(sub.capacity)
            keys = <PyObject**>PyMem_Realloc(sub.keys, capacity * sizeof(PyObject*))
            if keys == NULL:
                raise MemoryError()
            sub.keys = keys
            sub.capacity = capacity
        j = sublist_bisect_left(sub, key)
        memmove(&sub.keys[j + 1], &sub.keys[j], (sub.size - j) * sizeof(PyObject*))
        incref(key)
        sub.keys[j] = key
        sub.size += 1
        self.size += 1
        self.maxes[i] = sub.keys[sub.size - 1]
        if sub.size >= MAX_SUBLIST:
            self.split(i)
        return 0

    cdef void split(self, Py_ssize_t i) noexcept:
        cdef Py_ssize_t half, count
        cdef SubList* lower
        cdef SubList* upper
        cdef PyObject** keys
        try:
            self.insert_list(i + 1)
        except MemoryError:
            # A sublist over the target size is only slower, not wrong.
            return
        lower = &self.lists[i]
        half = lower.size >> 1
        count = lower.size - half
        keys = <PyObject**>PyMem_Malloc(split_capacity(count) * sizeof(PyObject*))
        if keys == NULL:
            self.remove_list(i + 1)
            return
        upper = &self.lists[i + 1]
        memmove(keys, &lower.keys[half], count * sizeof(PyObject*))
        upper.keys = keys
        upper.size = count
        upper.capacity = split_capacity(count)
        lower.size = half
        # Keys written in order never land in the lower half again: give back the room
        # it no longer needs (if shrinking fails, it keeps that room).
        keys = <PyObject**>PyMem_Realloc(lower.keys, split_capacity(half) * sizeof(PyObject*))
        if keys != NULL:
            lower.keys = keys
            lower.capacity = split_capacity(half)
        self.maxes[i] = lower.keys[half - 1]
        self.maxes[i + 1] = upper.keys[count - 1]

    cdef void remove(self, PyObject* key) noexcept:
        """Remove ``key``, which must be present. O(log n) comparisons."""
        cdef Py_ssize_t i = self.find_list_left(key), j
        cdef SubList* sub
        if i == self.n_lists:
            return
        sub = &self.lists[i]
        j = sublist_bisect_left(sub, key)
        if j == sub.size or memkv_key_cmp(sub.keys[j], key) != 0:
            return
        decref(sub.keys[j])
        sub.size -= 1
        self.size -= 1
        memmove(&sub.keys[j], &sub.keys[j + 1], (sub.size - j) * sizeof(PyObject*))
        if sub.size == 0:
            self.remove_list(i)
        else:
            self.maxes[i] = sub.keys[sub.size - 1]

    cdef inline void bisect_left(self, PyObject* key, Py_ssize_t* i, Py_ssize_t* j) noexcept:
        """The position of the first key >= ``key`` (``i == n_lists`` at the end)."""
        i[0] = self.find_list_left(key)
        j[0] = 0 if i[0] == self.n_lists else sublist_bisect_left(&self.lists[i[0]], key)

    cdef inline void bisect_right(self, PyObject* key, Py_ssize_t* i, Py_ssize_t* j) noexcept:
        """The position of the first key > ``key`` (``i == n_lists`` at the end)."""
        i[0] = self.find_list_right(key)
        j[0] = 0 if i[0] == self.n_lists else sublist_bisect_right(&self.lists[i[0]], key)

    cdef list keys_list(self):
        cdef list keys = []
        cdef Py_ssize_t i, j
        for i in range(self.n_lists):
            for j in range(self.lists[i].size):
                keys.append(<object>self.lists[i].keys[j])
        return keys

    cdef void check(self) except *:
        cdef Py_ssize_t i, total = 0
        for i in range(self.n_lists):
            assert self.lists[i].size > 0, "empty sublist"
            assert self.maxes[i] == self.lists[i].keys[self.lists[i].size - 1], "stale max"
            total += self.lists[i].size
        assert total == self.size, (total, self.size)


# -- ExpiryQueue --------------------------------------------------------------------

cdef struct Deadline:
    double when
    # Borrowed: the store's dict owns the entry, and removing an entry from the store
    # removes its item here first.
    PyObject* entry


cdef inline bint earlier(Deadline a, Deadline b) noexcept:
    """Heap order: by deadline, then by key, as the reference core's (deadline, key).

    Entries due at the same time (a ``set_many`` with a TTL) are then purged in the
    same order by both cores, so a bounded purge drops the same ones.
    """
    if a.when != b.when:
        return a.when < b.when
    return memkv_key_cmp(
        <PyObject*>(<MemoryEntry>a.entry).c_key, <PyObject*>(<MemoryEntry>b.entry).c_key
    ) < 0


@cython.final
cdef class ExpiryQueue:
    """A binary min-heap of expiring entries, indexed: each entry knows its position.

    The reference core's heap deletes lazily and compacts once stale items outnumber
    live ones; rebuilding then stalls one operation for O(n). Here a removal takes the
    item out at once (O(log n)), so the heap holds exactly one item per expiring entry,
    never a stale one, and never needs compacting.

    An overwrite hands the item to the new entry in place. When the new deadline is
    later (the usual case: same TTL, later write) the item keeps the old, earlier
    deadline as a lower bound, which leaves the heap order intact and costs O(1);
    ``expired_top`` raises it to the true deadline only when it reaches the top.
    """

    cdef Deadline* items
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity

    def __dealloc__(self):
        PyMem_Free(self.items)

    cdef int reserve(self, Py_ssize_t wanted) except -1:
        cdef Py_ssize_t capacity
        cdef Deadline* items
        if wanted <= self.capacity:
            return 0
        capacity = self.capacity + (self.capacity >> 1) if self.capacity else 64
        if capacity < wanted:
            capacity = wanted
        items = <Deadline*>PyMem_Realloc(self.items, capacity * sizeof(Deadline))
        if items == NULL:
            raise MemoryError()
        self.items = items
        self.capacity = capacity
        return 0

    cdef inline void place(self, Py_ssize_t pos, Deadline item) noexcept:
        self.items[pos] = item
        (<MemoryEntry>item.entry).heap_pos = pos

    cdef void sift_up(self, Py_ssize_t pos) noexcept:
        cdef Deadline item = self.items[pos]
        cdef Py_ssize_t parent
        while pos > 0:
            parent = (pos - 1) >> 1
            if not earlier(item, self.items[parent]):
                break
            self.place(pos, self.items[parent])
            pos = parent
        self.place(pos, item)

    cdef void sift_down(self, Py_ssize_t pos) noexcept:
        cdef Deadline item = self.items[pos]
        cdef Py_ssize_t child
        cdef Py_ssize_t size = self.size
        while True:
            child = 2 * pos + 1
            if child >= size:
                break
            if child + 1 < size and earlier(self.items[child + 1], self.items[child]):
                child += 1
            if not earlier(self.items[child], item):
                break
            self.place(pos, self.items[child])
            pos = child
        self.place(pos, item)

    cdef void push(self, MemoryEntry entry) noexcept:
        """Add ``entry`` at its deadline; the caller has reserved room for it."""
        cdef Deadline item
        item.when = entry.c_expires
        item.entry = <PyObject*>entry
        self.size += 1
        self.place(self.size - 1, item)
        self.sift_up(self.size - 1)

    cdef void replace(self, MemoryEntry old, MemoryEntry entry) noexcept:
        """Put ``entry`` (same key, new deadline) in the place of ``old``."""
        cdef Py_ssize_t pos = old.heap_pos
        old.heap_pos = -1
        self.items[pos].entry = <PyObject*>entry
        entry.heap_pos = pos
        if entry.c_expires < self.items[pos].when:
            self.items[pos].when = entry.c_expires
            self.sift_up(pos)

    cdef MemoryEntry expired_top(self, double now):
        """The entry at the top if it has expired at ``now``, else ``None``.

        Raises deadlines kept as lower bounds to the true ones on the way, so every
        expired entry surfaces in (deadline, key) order, as the reference core purges
        them: an entry whose item still holds a lower bound is not returned before the
        bound is raised, even when it has expired, since another expired entry may be
        due before it.
        """
        cdef MemoryEntry entry
        while self.size and self.items[0].when <= now:
            entry = <MemoryEntry>self.items[0].entry
            if entry.c_expires == self.items[0].when:
                return entry
            self.items[0].when = entry.c_expires
            self.sift_down(0)
        return None

    cdef void remove(self, MemoryEntry entry) noexcept:
        cdef Py_ssize_t pos = entry.heap_pos
        cdef Deadline removed
        entry.heap_pos = -1
        self.size -= 1
        if pos == self.size:
            return
        removed = self.items[pos]
        self.place(pos, self.items[self.size])
        if earlier(self.items[pos], removed):
            self.sift_up(pos)
        else:
            self.sift_down(pos)

    cdef void clear(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self.size):
            (<MemoryEntry>self.items[i].entry).heap_pos = -1
        self.size = 0
        if self.capacity > 1024:
            PyMem_Free(self.items)
            self.items = NULL
            self.capacity = 0

    cdef void check(self) except *:
        cdef Py_ssize_t i
        cdef MemoryEntry entry
        for i in range(self.size):
            entry = <MemoryEntry>self.items[i].entry
            assert entry.heap_pos == i, "heap position not recorded"
            assert self.items[i].when <= entry.c_expires, "heap deadline above the entry's"
            if i:
                assert not earlier(self.items[i], self.items[(i - 1) >> 1]), "heap order broken"


# -- LocalCore ----------------------------------------------------------------------

cdef inline bint is_expired(MemoryEntry entry, double now) noexcept:
    return entry.c_expires <= now


@cython.no_gc_clear
cdef class LocalCore:
    """The synchronous engine behind ``LocalMemoryStore``.

    Complexities, n entries held: ``get`` and ``exists`` O(1), or O(log n) when the
    entry read has expired and is removed; ``delete`` O(log n); ``set`` of a new key
    O(log n) (the key index and the heap), an overwrite O(1) (O(log n) when it
    gains, loses or brings forward a deadline), plus up to ``PURGE_BUDGET`` expired
    entries removed at O(log n) each; the ``_many`` forms the single form per key.
    ``scan_batch`` O(log n + limit); ``clear(prefix)`` O(k log n) for k matching keys
    (each leaves the index and the heap on its own); ``clear()`` O(n);
    ``purge_expired`` O(k log n) for k expired entries, plus O(log n) for each
    overwritten entry whose kept, earlier deadline has passed (see ``ExpiryQueue``).
    On top, amortised: the key index moves O(n / MAX_SUBLIST) sublist records when a
    sublist splits or empties. Expired entries are removed lazily when read, a few at
    a time on each write (``PURGE_BUDGET``) and all at once by ``purge_expired``.
    """

    cdef dict entries
    cdef KeyIndex index
    cdef ExpiryQueue heap
    cdef object clock
    cdef double offset
    cdef object max_entries_obj
    cdef Py_ssize_t max_size
    cdef bint lru
    cdef PyObject* lru_head
    cdef PyObject* lru_tail
    # NULL with the built-in clock: then every operation is atomic under the GIL.
    cdef PyThread_type_lock lock
    cdef unsigned long lock_owner
    cdef unsigned long long gets, hits, misses, sets, deletes, expired, evictions
    cdef unsigned long long ops[N_OPS]

    def __cinit__(self):
        self.entries = {}
        self.index = KeyIndex()
        self.heap = ExpiryQueue()

    def __init__(self, max_entries=None, clock=None):
        if self.clock is not None or PyDict_GET_SIZE(<PyObject*>self.entries):
            # A core made by __new__ works unbounded; turning on LRU for the entries it
            # holds would leave them out of the LRU list.
            raise RuntimeError("LocalCore.__init__ may run only once, before any entry")
        max_entries = check_max_entries(max_entries)
        clock = check_clock(clock)
        if clock is None:
            clock = _monotonic
        self.max_entries_obj = max_entries
        self.lru = max_entries is not None
        if max_entries is not None:
            self.max_size = min(max_entries, 2**62)
        self.clock = clock
        # Store time is wall-clock seconds that advance with the injected clock.
        if clock is _monotonic:
            self.offset = time.time() - memkv_monotonic()
        else:
            self.offset = time.time() - clock()
            if self.lock == NULL:
                self.lock = PyThread_allocate_lock()
                if self.lock == NULL:
                    raise MemoryError()

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    @property
    def max_entries(self):
        return self.max_entries_obj

    def now(self):
        """Current store time: UNIX seconds advanced by the injected clock."""
        if self.lock == NULL:
            return memkv_monotonic() + self.offset
        return self.read_clock()

    cdef double read_clock(self) except? -1.0:
        cdef double now
        reading = self.clock()
        try:
            now = reading + self.offset
        except (TypeError, OverflowError):  # not a number, or an int past any float
            raise bad_clock_reading(reading) from None
        if not isfinite(now):
            # NaN or an infinite deadline would break the expiry heap's order.
            raise bad_clock_reading(now)
        return now

    # -- the critical section: clock read plus update, atomic ----------------------

    cdef inline double begin(self) except? -1.0:
        """Enter the critical section; returns the current store time."""
        if self.lock == NULL:
            return memkv_monotonic() + self.offset
        return self.begin_locked()

    cdef inline double begin_read(self) except? -1.0:
        """``begin`` for reads: with the built-in clock, NaN (read on demand)."""
        if self.lock == NULL:
            return NAN
        return self.begin_locked()

    cdef double begin_locked(self) except? -1.0:
        cdef unsigned long me = PyThread_get_thread_ident()
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            if self.lock_owner == me:
                raise ReentrantCallError(
                    "the memkv core was called from its own injected clock, or from a "
                    "finalizer that ran while that clock was being read"
                )
            with nogil:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)
        self.lock_owner = me
        try:
            return self.read_clock()
        except BaseException:
            self.end()
            raise

    cdef inline void end(self) noexcept:
        if self.lock != NULL:
            self.lock_owner = 0
            PyThread_release_lock(self.lock)

    # -- LRU list ------------------------------------------------------------------

    cdef inline void lru_append(self, MemoryEntry entry) noexcept:
        entry.lru_prev = self.lru_tail
        entry.lru_next = NULL
        if self.lru_tail != NULL:
            (<MemoryEntry>self.lru_tail).lru_next = <PyObject*>entry
        else:
            self.lru_head = <PyObject*>entry
        self.lru_tail = <PyObject*>entry

    cdef inline void lru_remove(self, MemoryEntry entry) noexcept:
        if entry.lru_prev != NULL:
            (<MemoryEntry>entry.lru_prev).lru_next = entry.lru_next
        else:
            self.lru_head = entry.lru_next
        if entry.lru_next != NULL:
            (<MemoryEntry>entry.lru_next).lru_prev = entry.lru_prev
        else:
            self.lru_tail = entry.lru_prev
        entry.lru_prev = NULL
        entry.lru_next = NULL

    cdef inline void lru_touch(self, MemoryEntry entry) noexcept:
        if <PyObject*>entry != self.lru_tail:
            self.lru_remove(entry)
            self.lru_append(entry)

    # -- internal helpers (inside the critical section; no Python code runs) -------

    cdef void unlink(self, PyObject* key, MemoryEntry entry, Dropped* dropped) noexcept:
        """Remove ``entry`` (held under ``key``) from every structure."""
        incref(<PyObject*>entry)
        dropped_add(dropped, <PyObject*>entry)
        # Cannot fail: the key is an exact str that is present.
        try:
            PyDict_DelItem(<PyObject*>self.entries, key)
        except KeyError:
            pass
        self.index.remove(key)
        if self.lru:
            self.lru_remove(entry)
        if entry.heap_pos >= 0:
            self.heap.remove(entry)

    cdef inline bint has_expired(self, MemoryEntry entry, double* now) noexcept:
        """Whether ``entry`` has expired; reads the clock only if it must.

        ``now`` is NaN until read (reads with the built-in clock start that way): an
        entry without a TTL, or one the coarse clock proves live, needs no precise read.
        """
        cdef double expires = entry.c_expires
        if expires == INFINITY:
            return False
        if now[0] != now[0]:
            if expires > memkv_monotonic_coarse() + self.offset + COARSE_MARGIN:
                return False
            now[0] = memkv_monotonic() + self.offset
        return expires <= now[0]

    cdef inline MemoryEntry lookup(self, PyObject* key, double* now, Dropped* dropped):
        cdef PyObject* found = PyDict_GetItem(<PyObject*>self.entries, key)
        if found == NULL:
            return None
        cdef MemoryEntry entry = <MemoryEntry>found
        if self.has_expired(entry, now):
            self.unlink(key, entry, dropped)
            self.expired += 1
            return None
        return entry

    cdef Py_ssize_t purge(self, double now, Py_ssize_t budget, Dropped* dropped) noexcept:
        cdef Py_ssize_t purged = 0
        cdef MemoryEntry entry
        while budget:
            entry = self.heap.expired_top(now)
            if entry is None:
                break
            budget -= 1
            self.unlink(<PyObject*>entry.c_key, entry, dropped)
            purged += 1
        self.expired += purged
        return purged

    cdef void make_room(self, double now, Dropped* dropped) noexcept:
        cdef MemoryEntry oldest
        while PyDict_GET_SIZE(<PyObject*>self.entries) >= self.max_size:
            if self.purge(now, 1, dropped):
                continue
            oldest = <MemoryEntry>self.lru_head
            self.unlink(<PyObject*>oldest.c_key, oldest, dropped)
            self.evictions += 1

    cdef int store(self, MemoryEntry entry, double now, Dropped* dropped) except -1:
        """Put a new ``entry`` (key, value, metadata and expiry set) in place."""
        cdef PyObject* key = <PyObject*>entry.c_key
        cdef MemoryEntry old
        cdef bint expiring = not isinf(entry.c_expires)
        if expiring:
            self.heap.reserve(self.heap.size + 1)
        old = self.lookup(key, &now, dropped)
        # Held only by the dict and this frame: nobody can see the old entry, so it
        # takes the new contents in place (no dealloc, no dict or heap item rewrite).
        if old is not None and Py_REFCNT(<PyObject*>old) <= 2:
            self.update_in_place(old, entry, now, dropped)
            self.sets += 1
            return 0
        entry.c_updated = now
        if old is None:
            if self.lru and PyDict_GET_SIZE(<PyObject*>self.entries) >= self.max_size:
                self.make_room(now, dropped)
            entry.c_created = now
            PyDict_SetItem(<PyObject*>self.entries, key, <PyObject*>entry)
            try:
                self.index.insert(key)
            except MemoryError:
                # Out of memory: undo, so the index never holds a key the dict lacks.
                PyDict_DelItem(<PyObject*>self.entries, key)
                raise
            if self.lru:
                self.lru_append(entry)
            if expiring:
                self.heap.push(entry)
        else:
            entry.c_created = old.c_created
            incref(<PyObject*>old)
            dropped_add(dropped, <PyObject*>old)
            # The dict keeps its key object: the entry and the index share it.
            entry.c_key = old.c_key
            PyDict_SetItem(<PyObject*>self.entries, <PyObject*>old.c_key, <PyObject*>entry)
            if self.lru:
                self.lru_remove(old)
                self.lru_append(entry)
            if old.heap_pos >= 0:
                if expiring:
                    self.heap.replace(old, entry)
                else:
                    self.heap.remove(old)
            elif expiring:
                self.heap.push(entry)
        self.sets += 1
        return 0

    cdef void update_in_place(
        self, MemoryEntry old, MemoryEntry entry, double now, Dropped* dropped
    ) noexcept:
        cdef ExpiryQueue heap = self.heap
        cdef double expires = entry.c_expires
        cdef Py_ssize_t pos = old.heap_pos
        incref(<PyObject*>old.c_value)
        dropped_add(dropped, <PyObject*>old.c_value)
        incref(<PyObject*>old.c_metadata)
        dropped_add(dropped, <PyObject*>old.c_metadata)
        old.c_value = entry.c_value
        old.c_metadata = entry.c_metadata
        old.c_updated = now
        old.c_expires = expires
        if old.c_metadata is not None or memkv_may_be_tracked(<PyObject*>old.c_value):
            old.track()
        if pos >= 0:
            if isinf(expires):
                heap.remove(old)
            elif expires < heap.items[pos].when:
                heap.items[pos].when = expires
                heap.sift_up(pos)
            # A later deadline: the item keeps the earlier one as a lower bound.
        elif not isinf(expires):
            heap.push(old)
        if self.lru:
            self.lru_touch(old)

    cdef inline MemoryEntry fetch(self, PyObject* key, double* now, Dropped* dropped):
        self.gets += 1
        cdef MemoryEntry entry = self.lookup(key, now, dropped)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        if self.lru:
            self.lru_touch(entry)
        return entry

    cdef inline bint remove(self, PyObject* key, double* now, Dropped* dropped) noexcept:
        cdef MemoryEntry entry = self.lookup(key, now, dropped)
        if entry is None:
            return False
        self.unlink(key, entry, dropped)
        self.deletes += 1
        return True

    # -- operations ----------------------------------------------------------------

    def get(self, key):
        """Return the live entry for ``key`` or ``None``; counts as a use for LRU."""
        key = exact_key(key)
        cdef Dropped dropped
        dropped_init(&dropped)
        cdef double now = self.begin_read()
        entry = self.fetch(<PyObject*>key, &now, &dropped)
        self.ops[OP_GET_MISS if entry is None else OP_GET_HIT] += 1
        self.end()
        if dropped.size:
            dropped_release(&dropped)
        return entry

    def set(self, key, value, ttl=None, metadata=None):
        """Store ``value`` under ``key``; an overwrite keeps ``created_at``."""
        cdef double seconds
        key = exact_key(key)
        if ttl is None:
            seconds = INFINITY
        elif type(ttl) is float or type(ttl) is int:
            try:
                seconds = ttl
            except OverflowError:
                seconds = ttl_seconds(ttl)
            if not 0 < seconds <= C_MAX_TTL:
                seconds = ttl_seconds(ttl)
        else:
            seconds = ttl_seconds(ttl)
        if metadata is not None:
            metadata = check_metadata(metadata)
        # Made before the critical section: allocating may run the cyclic GC.
        cdef MemoryEntry entry = new_entry(key, value, metadata)
        cdef Dropped dropped
        dropped_init(&dropped)
        cdef double now = self.begin()
        try:
            entry.c_expires = now + seconds
            self.store(entry, now, &dropped)
            self.purge(now, C_PURGE_BUDGET, &dropped)
            self.ops[OP_SET] += 1
        finally:
            self.end()
            dropped_release(&dropped)

    def put(self, key, value, metadata, double created, double updated, expires):
        """Store a copy of an entry kept elsewhere, with its timestamps (store-time UNIX
        seconds; ``expires`` ``None``: never), as ``set`` stores one: a use for LRU, the
        least recently used out when full, gone at ``expires``. For a near cache, which
        holds what the server sent: only the key is checked; ``metadata`` must be a dict
        or ``None``."""
        key = exact_key(key)
        cdef double deadline = INFINITY if expires is None else <double>expires
        # Made before the critical section: allocating may run the cyclic GC.
        cdef MemoryEntry entry = new_entry(key, value, metadata or None)
        cdef MemoryEntry stored
        cdef Dropped dropped
        dropped_init(&dropped)
        cdef double now = self.begin()
        try:
            entry.c_expires = deadline
            self.store(entry, now, &dropped)
            # store() may have moved the contents into the entry it replaces.
            stored = <MemoryEntry>PyDict_GetItem(<PyObject*>self.entries, <PyObject*>key)
            stored.c_created = created
            stored.c_updated = updated
            self.purge(now, C_PURGE_BUDGET, &dropped)
        finally:
            self.end()
            dropped_release(&dropped)

    def delete(self, key):
        """Remove ``key``; ``True`` when a live entry was removed."""
        key = exact_key(key)
        cdef Dropped dropped
        dropped_init(&dropped)
        cdef double now = self.begin_read()
        cdef bint removed = self.remove(<PyObject*>key, &now, &dropped)
        self.ops[OP_DELETE_HIT if removed else OP_DELETE_MISS] += 1
        self.end()
        dropped_release(&dropped)
        return removed

    def exists(self, key):
        """``True`` when ``key`` holds a live entry; not a use for LRU."""
        key = exact_key(key)
        cdef Dropped dropped
        dropped_init(&dropped)
        cdef double now = self.begin_read()
        found = self.lookup(<PyObject*>key, &now, &dropped) is not None
        self.ops[OP_EXISTS_HIT if found else OP_EXISTS_MISS] += 1
        self.end()
        if dropped.size:
            dropped_release(&dropped)
        return found

    cdef tuple exact_keys(self, keys):
        """A private tuple of ``keys``, validated like ``check_keys``.

        A tuple cannot change under the loop that reads it, even if another thread
        mutates the caller's list while an injected clock runs.
        """
        cdef tuple checked
        cdef Py_ssize_t i
        if type(keys) is tuple:
            checked = <tuple>keys
        elif type(keys) is list:
            checked = tuple(<list>keys)
        else:
            checked = tuple(check_keys(keys))
        for i in range(len(checked)):
            key = checked[i]
            if type(key) is not str:
                checked = tuple(check_keys(checked))
                break
        for key in checked:
            memkv_ready(<PyObject*>key)
        return checked

    def get_many(self, keys):
        """Entries for ``keys``, aligned with them (``None`` where missing)."""
        cdef tuple checked = self.exact_keys(keys)
        cdef Py_ssize_t i, n = len(checked)
        # Made before the critical section: allocating may run the cyclic GC.
        result = PyList_New(n)
        cdef Dropped dropped
        dropped_init(&dropped)
        cdef MemoryEntry entry
        cdef double now = self.begin_read()
        for i in range(n):
            key = checked[i]
            entry = self.fetch(<PyObject*>key, &now, &dropped)
            incref(<PyObject*>entry)
            PyList_SET_ITEM(result, i, entry)
        self.ops[OP_GET_MANY] += 1
        self.end()
        dropped_release(&dropped)
        return result

    def set_many(self, items, ttl=None, metadata=None):
        """Store every pair of ``items``; all are validated before any is written."""
        cdef Chain made
        chain_init(&made)
        cdef PyObject* node
        cdef PyObject* current = NULL
        cdef MemoryEntry entry
        cdef double seconds
        cdef Dropped dropped
        dropped_init(&dropped)
        try:
            make_entries(items, &made)
            seconds_obj = ttl_seconds(ttl)
            seconds = INFINITY if seconds_obj is None else seconds_obj
            checked = check_metadata(metadata)
            if checked is not None:
                node = made.head
                while node != NULL:
                    entry = <MemoryEntry>node
                    entry.c_metadata = dict(checked)
                    entry.track()
                    node = entry.lru_next
        except BaseException:
            chain_release(&made)
            raise
        cdef Py_ssize_t budget = C_PURGE_BUDGET * max(1, made.size)
        cdef double now
        try:
            now = self.begin()
        except BaseException:
            chain_release(&made)
            raise
        try:
            while made.head != NULL:
                current = made.head
                made.head = (<MemoryEntry>current).lru_next
                (<MemoryEntry>current).lru_next = NULL
                (<MemoryEntry>current).c_expires = now + seconds
                self.store(<MemoryEntry>current, now, &dropped)
                # The chain's reference: the store holds its own when it kept the entry
                # (so no dealloc here); one merged into an old entry is released later.
                if Py_REFCNT(current) > 1:
                    decref(current)
                else:
                    dropped_add(&dropped, current)
                current = NULL
            self.purge(now, budget, &dropped)
            self.ops[OP_SET_MANY] += 1
        finally:
            self.end()
            if current != NULL:
                dropped_add(&dropped, current)
            dropped_release(&dropped)
            chain_release(&made)

    def delete_many(self, keys):
        """Remove ``keys``; returns how many live entries were removed."""
        cdef tuple checked = self.exact_keys(keys)
        cdef Py_ssize_t i, removed = 0, n = len(checked)
        cdef Dropped dropped
        dropped_init(&dropped)
        cdef double now = self.begin_read()
        for i in range(n):
            key = checked[i]
            removed += self.remove(<PyObject*>key, &now, &dropped)
        self.ops[OP_DELETE_MANY] += 1
        self.end()
        dropped_release(&dropped)
        return removed

    def scan_batch(self, prefix, after, Py_ssize_t limit):
        """Up to ``limit`` index positions of keys starting with ``prefix`` past ``after``.

        Returns the live keys found, in code-point order, and the cursor to pass as
        ``after`` next time (``None`` when the prefix range is exhausted). Expired keys
        are skipped, not removed. O(log n + limit).
        """
        if type(prefix) is not str:
            prefix = check_prefix(prefix)
        memkv_ready(<PyObject*>prefix)
        if after is not None:
            if type(after) is not str:
                after = check_key(after)
            memkv_ready(<PyObject*>after)
        found = PyList_New(0)
        cdef KeyIndex index = self.index
        cdef Py_ssize_t i, j, visited = 0
        cdef PyObject* key = NULL
        cdef PyObject* cursor = NULL
        cdef double now = self.begin()
        try:
            if after is None:
                index.bisect_left(<PyObject*>prefix, &i, &j)
            else:
                index.bisect_right(<PyObject*>after, &i, &j)
            while i < index.n_lists and visited < limit:
                key = index.lists[i].keys[j]
                if not memkv_startswith(key, <PyObject*>prefix):
                    break
                visited += 1
                if not is_expired(
                    <MemoryEntry>PyDict_GetItem(<PyObject*>self.entries, key), now
                ):
                    # Appending reallocates at most: no cyclic GC, no Python code.
                    PyList_Append(found, <object>key)
                j += 1
                if j == index.lists[i].size:
                    i += 1
                    j = 0
            else:
                if i < index.n_lists and key != NULL:
                    cursor = key
                    incref(cursor)
        finally:
            self.end()
        if cursor == NULL:
            return found, None
        result = (found, <object>cursor)
        decref(cursor)
        return result

    def clear(self, prefix=None):
        """Remove every live entry whose key starts with ``prefix``; returns the count."""
        prefix = check_prefix(prefix)
        cdef Dropped dropped
        dropped_init(&dropped)
        cdef Py_ssize_t removed = 0, total = 0, i, j, n
        cdef PyObject* key
        cdef PyObject* pos_value
        cdef Py_ssize_t pos = 0
        cdef MemoryEntry entry
        cdef KeyIndex index
        cdef list keys
        fresh = {}
        keys = []
        cdef double now = self.begin()
        try:
            if not prefix:
                old = self.entries
                while PyDict_Next(<PyObject*>old, &pos, &key, &pos_value):
                    entry = <MemoryEntry>pos_value
                    entry.lru_prev = NULL
                    entry.lru_next = NULL
                    entry.heap_pos = -1
                    if not is_expired(entry, now):
                        removed += 1
                total = PyDict_GET_SIZE(<PyObject*>old)
                self.entries = fresh
                incref(<PyObject*>old)
                dropped_add(&dropped, <PyObject*>old)
                old = None
                self.index.clear()
                self.heap.clear()
                self.lru_head = NULL
                self.lru_tail = NULL
            else:
                index = self.index
                index.bisect_left(<PyObject*>prefix, &i, &j)
                while i < index.n_lists:
                    key = index.lists[i].keys[j]
                    if not memkv_startswith(key, <PyObject*>prefix):
                        break
                    # Appending reallocates at most: no cyclic GC, no Python code.
                    PyList_Append(keys, <object>key)
                    j += 1
                    if j == index.lists[i].size:
                        i += 1
                        j = 0
                total = len(keys)
                for n in range(total):
                    key = <PyObject*>keys[n]
                    entry = <MemoryEntry>PyDict_GetItem(<PyObject*>self.entries, key)
                    if not is_expired(entry, now):
                        removed += 1
                    self.unlink(key, entry, &dropped)
            self.deletes += removed
            self.expired += total - removed
            self.ops[OP_CLEAR] += 1
        finally:
            self.end()
            dropped_release(&dropped)
        return removed

    def purge_expired(self):
        """Remove every expired entry now; returns how many.

        O(k log n) for k expired entries, plus O(log n) for each overwritten entry whose
        kept, earlier deadline has passed.
        """
        cdef Dropped dropped
        dropped_init(&dropped)
        cdef double now = self.begin()
        purged = self.purge(now, -1, &dropped)
        self.end()
        dropped_release(&dropped)
        return purged

    def __len__(self):
        self.purge_expired()
        return len(self.entries)

    def counters(self):
        """What the core has done to entries, and how many it holds."""
        return CoreCounters(
            self.gets,
            self.hits,
            self.misses,
            self.sets,
            self.deletes,
            self.expired,
            self.evictions,
            len(self.entries),
        )

    def operations(self):
        """Calls by outcome (scans and failed calls are counted by the store)."""
        return CoreOperations(*[self.ops[i] for i in range(N_OPS)])

    def _heap_size(self):
        """Items in the expiry heap: one per expiring entry, never a stale one."""
        return self.heap.size

    def _check(self):
        """Assert the internal invariants (for tests and fuzzing)."""
        cdef MemoryEntry entry
        cdef PyObject* node
        cdef Py_ssize_t count, i
        self.begin()
        try:
            entries = self.entries
            self.index.check()
            keys = self.index.keys_list()
            assert len(keys) == len(entries), (len(keys), len(entries))
            assert keys == sorted(entries), "index differs from the entries"
            expiring = {
                (e._expires, k) for k, e in entries.items() if e._expires is not None
            }
            assert self.heap.size == len(expiring), (self.heap.size, len(expiring))
            self.heap.check()
            for i in range(self.heap.size):
                entry = <MemoryEntry>self.heap.items[i].entry
                assert entries.get(entry.c_key) is entry, "heap item not in the store"
            assert self.hits + self.misses == self.gets
            for key, value in entries.items():
                entry = <MemoryEntry?>value
                assert entry.c_key == key
                assert entry.c_created <= entry.c_updated
            if self.lru:
                assert len(entries) <= self.max_size
                count = 0
                node = self.lru_head
                previous = None
                while node != NULL:
                    entry = <MemoryEntry>node
                    assert entries.get(entry.c_key) is entry, "LRU node not in the store"
                    assert (
                        entry.lru_prev == NULL if previous is None
                        else entry.lru_prev == <PyObject*>previous
                    ), "LRU links broken"
                    previous = entry
                    node = entry.lru_next
                    count += 1
                    assert count <= len(entries), "LRU list has a cycle"
                assert count == len(entries), (count, len(entries))
                assert self.lru_tail == (NULL if previous is None else <PyObject*>previous)
            else:
                assert self.lru_head == NULL and self.lru_tail == NULL
        finally:
            self.end()

    def _lru_keys(self):
        """Keys from least to most recently used (for tests); empty without LRU."""
        cdef PyObject* node = self.lru_head
        keys = []
        while node != NULL:
            keys.append((<MemoryEntry>node).c_key)
            node = (<MemoryEntry>node).lru_next
        return keys

    # -- conditional writes (get_or_set, add and touch build on these) ---------------

    def add(self, key, value, ttl=None, metadata=None):
        """Store like ``set``, but only when ``key`` holds no live entry; ``True`` if written.

        The check and the write are one critical section, so among concurrent callers
        (tasks or threads) exactly one wins.
        """
        key = exact_key(key)
        seconds_obj = ttl_seconds(ttl)
        cdef double seconds = INFINITY if seconds_obj is None else seconds_obj
        if metadata is not None:
            metadata = check_metadata(metadata)
        # Made before the critical section: allocating may run the cyclic GC.
        cdef MemoryEntry entry = new_entry(key, value, metadata)
        cdef Dropped dropped
        dropped_init(&dropped)
        cdef double now = self.begin()
        try:
            if self.lookup(<PyObject*>key, &now, &dropped) is not None:
                return False
            entry.c_expires = now + seconds
            self.store(entry, now, &dropped)
            self.purge(now, C_PURGE_BUDGET, &dropped)
            return True
        finally:
            self.end()
            dropped_release(&dropped)

    def touch(self, key, ttl=None):
        """Give the live entry at ``key`` a new expiry (``None``: never); ``True`` if found.

        Value, metadata, ``created_at``, ``updated_at`` and the LRU position are kept;
        the entry a caller already holds keeps its old expiry (entries are snapshots).
        """
        key = exact_key(key)
        seconds_obj = ttl_seconds(ttl)
        cdef double seconds = INFINITY if seconds_obj is None else seconds_obj
        # Made before the critical section, in case the entry is held outside the store.
        cdef MemoryEntry fresh = new_entry(key, None, None)
        cdef MemoryEntry entry
        cdef Dropped dropped
        dropped_init(&dropped)
        cdef double now = self.begin()
        try:
            entry = self.lookup(<PyObject*>key, &now, &dropped)
            if entry is None:
                return False
            # Held by the dict and this frame only: nobody can see the change.
            if Py_REFCNT(<PyObject*>entry) > 2:
                self.swap_entry(entry, fresh, &dropped)
                entry = fresh
            self.set_expiry(entry, now + seconds)
            return True
        finally:
            self.end()
            dropped_release(&dropped)

    cdef void swap_entry(self, MemoryEntry old, MemoryEntry fresh, Dropped* dropped) noexcept:
        """Put ``fresh``, a copy of ``old``, in its place in every structure."""
        fresh.c_key = old.c_key
        fresh.c_value = old.c_value
        fresh.c_metadata = old.c_metadata
        fresh.c_created = old.c_created
        fresh.c_updated = old.c_updated
        fresh.c_expires = old.c_expires
        if fresh.c_metadata is not None or memkv_may_be_tracked(<PyObject*>fresh.c_value):
            fresh.track()
        incref(<PyObject*>old)
        dropped_add(dropped, <PyObject*>old)
        # The key is present: the dict replaces a value without resizing.
        PyDict_SetItem(<PyObject*>self.entries, <PyObject*>old.c_key, <PyObject*>fresh)
        if self.lru:
            fresh.lru_prev = old.lru_prev
            fresh.lru_next = old.lru_next
            if old.lru_prev != NULL:
                (<MemoryEntry>old.lru_prev).lru_next = <PyObject*>fresh
            else:
                self.lru_head = <PyObject*>fresh
            if old.lru_next != NULL:
                (<MemoryEntry>old.lru_next).lru_prev = <PyObject*>fresh
            else:
                self.lru_tail = <PyObject*>fresh
            old.lru_prev = NULL
            old.lru_next = NULL
        if old.heap_pos >= 0:
            self.heap.replace(old, fresh)

    cdef int set_expiry(self, MemoryEntry entry, double expires) except -1:
        cdef ExpiryQueue heap = self.heap
        cdef Py_ssize_t pos = entry.heap_pos
        if isinf(expires):
            if pos >= 0:
                heap.remove(entry)
        elif pos >= 0:
            # A later deadline: the item keeps the earlier one as a lower bound.
            if expires < heap.items[pos].when:
                heap.items[pos].when = expires
                heap.sift_up(pos)
        else:
            heap.reserve(heap.size + 1)
            entry.c_expires = expires
            heap.push(entry)
        entry.c_expires = expires
        return 0
