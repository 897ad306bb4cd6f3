"""LocalMemoryStore behaviour beyond the shared contract, on both local cores."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import memkv
from memkv import LocalMemoryStore, open_store
from memkv.errors import InvalidArgumentError, MemKVError
from memkv.store import StoreStats
from tests.helpers import FakeClock, StoreHarness, core_module, local_store_type


def check(harness: StoreHarness) -> None:
    harness.store._core._check()  # type: ignore[attr-defined]


async def test_values_are_held_by_reference(local_harness: StoreHarness) -> None:
    value = {"mutable": [1]}
    await local_harness.store.set("k", value)
    entry = await local_harness.store.get("k")
    assert entry is not None
    assert entry.value is value


async def test_expiry_follows_the_injected_clock(local_harness: StoreHarness) -> None:
    store = local_harness.store
    await store.set("k", "v", ttl=10)
    await local_harness.advance(9.999)
    assert await store.get("k") is not None
    await local_harness.advance(0.002)
    assert await store.get("k") is None
    check(local_harness)


async def test_expires_at_is_wall_clock_time_computed_from_the_clock(
    local_harness: StoreHarness,
) -> None:
    store = local_harness.store
    before = datetime.now(timezone.utc)
    await store.set("k", "v", ttl=timedelta(hours=1))
    entry = await store.get("k")
    assert entry is not None
    assert entry.expires_at is not None
    assert entry.expires_at - entry.updated_at == timedelta(hours=1)
    assert timedelta(minutes=59) < entry.expires_at - before < timedelta(minutes=61)
    await local_harness.advance(600)
    await store.set("k", "v2")
    later = await store.get("k")
    assert later is not None
    assert later.updated_at - entry.updated_at >= timedelta(seconds=600)


async def test_max_entries_evicts_least_recently_used(clock: FakeClock, core: str) -> None:
    store = local_store_type(core)(max_entries=3, clock=clock)
    await store.set_many({"a": 1, "b": 2, "c": 3})
    await store.get("a")  # a is now the most recently used; b is the oldest
    await store.set("d", 4)
    assert sorted([k async for k in store.scan()]) == ["a", "c", "d"]
    assert store.stats().evictions == 1
    store._core._check()


async def test_lru_uses_are_get_get_many_and_set_not_exists_or_scan(
    clock: FakeClock, core: str
) -> None:
    store = local_store_type(core)(max_entries=3, clock=clock)
    await store.set_many({"a": 1, "b": 2, "c": 3})
    await store.exists("a")
    [k async for k in store.scan()]
    await store.set("d", 4)  # a was not used by exists/scan: it goes
    assert not await store.exists("a")
    await store.get_many(["b"])
    await store.set("c", 30)  # an overwrite is a use
    await store.set("e", 5)  # d is now the least recently used
    assert sorted([k async for k in store.scan()]) == ["b", "c", "e"]
    store._core._check()


async def test_max_entries_drops_expired_entries_before_live_ones(
    clock: FakeClock, core: str
) -> None:
    store = local_store_type(core)(max_entries=3, clock=clock)
    await store.set("old", 1)
    await store.set("dying", 2, ttl=5)
    await store.set("young", 3)
    clock.tick(10)
    await store.set("new", 4)
    assert sorted([k async for k in store.scan()]) == ["new", "old", "young"]
    stats = store.stats()
    assert stats.evictions == 0
    assert stats.expired == 1
    store._core._check()


async def test_overwrite_at_capacity_evicts_nothing(clock: FakeClock, core: str) -> None:
    store = local_store_type(core)(max_entries=2, clock=clock)
    await store.set_many({"a": 1, "b": 2})
    await store.set("a", 10)
    assert len(store) == 2
    assert store.stats().evictions == 0


@pytest.mark.parametrize("bad", [0, -5])
def test_max_entries_must_be_positive(core: str, bad: int) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        local_store_type(core)(max_entries=bad)


def test_max_entries_must_be_an_int(core: str) -> None:
    with pytest.raises(TypeError, match="max_entries"):
        local_store_type(core)(max_entries="10")  # type: ignore[arg-type]


async def test_purge_expired_and_len(clock: FakeClock, core: str) -> None:
    store = local_store_type(core)(clock=clock)
    await store.set_many({f"t{i}": i for i in range(50)}, ttl=5)
    await store.set_many({f"p{i}": i for i in range(10)})
    assert len(store) == 60
    clock.tick(6)
    assert store.purge_expired() == 50
    assert store.purge_expired() == 0
    assert len(store) == 10
    assert store.stats().expired == 50
    store._core._check()


async def test_len_purges_expired_entries_first(clock: FakeClock, core: str) -> None:
    store = local_store_type(core)(clock=clock)
    await store.set("a", 1, ttl=1)
    await store.set("b", 2)
    clock.tick(2)
    assert len(store) == 1
    assert store.stats().entries == 1


async def test_writes_purge_a_bounded_number_of_expired_entries(
    clock: FakeClock, core: str
) -> None:
    module = core_module(core)
    store = local_store_type(core)(clock=clock)
    await store.set_many({f"k{i}": i for i in range(5_000)}, ttl=1)
    clock.tick(2)
    await store.set("trigger", 0)
    held = store.stats().entries
    assert held is not None
    # One write does a little purging, never the whole backlog.
    assert 5_001 - module.PURGE_BUDGET <= held < 5_001
    for i in range(2_000):
        await store.set(f"n{i}", i)
    assert store.stats().entries == 2_001  # the backlog is gone after enough writes
    store._core._check()


async def test_rewriting_one_key_keeps_the_heap_small(clock: FakeClock, core: str) -> None:
    module = core_module(core)
    store = local_store_type(core)(clock=clock)
    for i in range(20_000):
        await store.set("hot", i, ttl=60)
        clock.tick(0.0001)
    assert store._core._heap_size() <= 2 + module.HEAP_SLACK  # type: ignore[attr-defined]
    store._core._check()


async def test_dropped_values_are_released(clock: FakeClock, core: str) -> None:
    class Value:
        pass

    store = local_store_type(core)(clock=clock)
    refs: list[weakref.ref[Any]] = []
    for name in ("deleted", "overwritten", "expired", "cleared"):
        value = Value()
        refs.append(weakref.ref(value))
        await store.set(name, value, ttl=5 if name == "expired" else None)
        del value
    await store.delete("deleted")
    await store.set("overwritten", "new")
    clock.tick(6)
    store.purge_expired()
    await store.clear("cleared")
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None, None]


async def test_clear_all_resets_the_store(local_harness: StoreHarness) -> None:
    store = local_harness.store
    await store.set_many({f"k{i}": i for i in range(100)}, ttl=10)
    assert await store.clear() == 100
    check(local_harness)
    await store.set("again", 1, ttl=10)
    assert [k async for k in store.scan()] == ["again"]
    check(local_harness)


async def test_scan_yields_keys_in_code_point_order(local_harness: StoreHarness) -> None:
    keys = ["b", "a", "ab", "B", "é", "z", "\U0001f600", "\uffff", "a\x00"]
    for key in keys:
        await local_harness.store.set(key, 1)
    found = [k async for k in local_harness.store.scan(batch_size=2)]
    assert found == sorted(keys)


async def test_invariants_hold_after_mixed_operations(local_harness: StoreHarness) -> None:
    store = local_harness.store
    for i in range(500):
        await store.set(f"k{i % 97}", i, ttl=(i % 7) + 1 if i % 3 else None)
        if i % 5 == 0:
            await store.delete(f"k{(i * 7) % 97}")
        if i % 11 == 0:
            await local_harness.advance(1.5)
        await store.get(f"k{(i * 3) % 97}")
    check(local_harness)
    await store.clear("k1")
    check(local_harness)


def test_local_errors_share_the_root(local_harness: StoreHarness) -> None:
    assert issubclass(InvalidArgumentError, MemKVError)
    assert isinstance(local_harness.store, LocalMemoryStore)


async def test_entry_key_is_read_only(local_harness: StoreHarness) -> None:
    await local_harness.store.set("a", [1])
    entry = await local_harness.store.get("a")
    assert entry is not None
    with pytest.raises(AttributeError):
        entry.key = "b"  # type: ignore[misc]
    assert entry.key == "a"


async def test_scan_accepts_any_positive_batch_size(local_harness: StoreHarness) -> None:
    await local_harness.store.set("a", 1)
    assert [k async for k in local_harness.store.scan(batch_size=2**70)] == ["a"]


def test_core_init_runs_only_once(core: str) -> None:
    store = core_module(core).LocalCore()
    store.set("a", 1)
    with pytest.raises(RuntimeError):
        store.__init__(max_entries=1)
    store.set("b", 2)
    store._check()


# -- choosing the core --------------------------------------------------------------------


def test_core_argument_runs_the_store_on_the_named_core(core: str) -> None:
    engine = core_module(core).LocalCore
    store = LocalMemoryStore[int](core=core)
    assert store.core == core
    assert type(store._core) is engine
    if memkv.IMPLEMENTATION == "cython":
        # Both cores in one process, each store on its own.
        other = "python" if core == "cython" else "cython"
        assert LocalMemoryStore[int](core=other).core == other


def test_core_none_is_the_implementation_in_use() -> None:
    assert LocalMemoryStore().core == memkv.IMPLEMENTATION
    assert LocalMemoryStore(core=None).core == memkv.IMPLEMENTATION


@pytest.mark.parametrize("bad", ["pypy", "Cython", "", 1, b"python"])
def test_core_argument_refuses_an_unknown_core(bad: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="core must be"):
        LocalMemoryStore(core=bad)


def test_cython_core_without_the_extension_is_a_typed_import_error() -> None:
    # A fresh interpreter: MEMKV_NO_EXTENSIONS is read once, when memkv is imported.
    script = (
        "import memkv\n"
        "from memkv.errors import ExtensionUnavailableError, MemKVError\n"
        "try:\n"
        "    memkv.LocalMemoryStore(core='cython')\n"
        "except ExtensionUnavailableError as err:\n"
        "    assert isinstance(err, ImportError) and isinstance(err, MemKVError)\n"
        "    print(err)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "MEMKV_NO_EXTENSIONS": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Cython core is not in use" in result.stdout
    assert "MEMKV_NO_EXTENSIONS" in result.stdout


def test_memory_url_chooses_the_core(core: str) -> None:
    core_module(core)
    store = open_store(f"memory://?core={core}&max_entries=5")
    assert isinstance(store, LocalMemoryStore)
    assert (store.core, store.max_entries) == (core, 5)
    with pytest.raises(InvalidArgumentError, match="'core': expected 'cython' or 'python'"):
        open_store("memory://?core=fast")


async def test_stats_read_the_core_counters_by_name(clock: FakeClock, core: str) -> None:
    store = local_store_type(core)(max_entries=1, clock=clock)
    await store.set("a", 1, ttl=5)
    await store.get("a")
    await store.exists("b")
    await store.set("b", 2)  # evicts a
    await store.delete("b")
    stats = store.stats()
    counters = store._core.counters()
    assert counters._fields == StoreStats._fields[: len(counters)]
    assert stats[: len(counters)] == tuple(counters)
    assert (stats.gets, stats.hits, stats.sets, stats.deletes, stats.evictions) == (1, 1, 2, 1, 1)
    assert stats.operations["exists", "miss"] == store._core.operations().exists_miss == 1
    assert stats.operations["set", "ok"] == 2


class Held:
    """A value whose release a weak reference can observe."""


@pytest.mark.parametrize(
    ("items", "ttl", "metadata"),
    [
        (lambda v: [("a", v[0]), ("b", v[1]), (3, v[2])], None, None),
        (lambda v: [("a", v[0]), ("b", v[1]), ("c",)], None, None),
        (lambda v: {"a": v[0], "b": v[1], 3: v[2]}, None, None),
        (lambda v: iter([("a", v[0]), ("b", v[1]), "c"]), None, None),
        (lambda v: {"a": v[0], "b": v[1], "c": v[2]}, -1, None),
        (lambda v: [("a", v[0]), ("b", v[1]), ("c", v[2])], 5, {1: "not a str key"}),
    ],
)
async def test_refused_set_many_writes_nothing_and_keeps_nothing(
    core: str, items: Any, ttl: Any, metadata: Any
) -> None:
    store = local_store_type(core)()
    await store.set("kept", 1)
    values = [Held(), Held(), Held()]
    released = [weakref.ref(value) for value in values]
    with pytest.raises(MemKVError):
        await store.set_many(items(values), ttl, metadata)
    del values
    gc.collect()
    assert [ref() for ref in released] == [None, None, None]
    assert [key async for key in store.scan()] == ["kept"]
    assert store.stats().operations["set_many", "error"] == 1
    store._core._check()


async def test_set_many_accepts_every_shape_of_input_alike(core: str) -> None:
    class Pairs:
        def __iter__(self) -> Any:
            return iter([("g", 7), ("h", 8)])

    store = local_store_type(core)()
    await store.set_many({"a": 1, "b": 2})
    await store.set_many([("c", 3), ("d", 4)], ttl=60, metadata={"m": 1})
    await store.set_many((("e", 5),))
    await store.set_many(iter([("f", 6)]))
    await store.set_many(Pairs())
    entries = await store.get_many(list("abcdefgh"))
    assert [entry.value for entry in entries if entry is not None] == [1, 2, 3, 4, 5, 6, 7, 8]
    c, d = entries[2:4]
    assert c is not None
    assert d is not None
    assert c.metadata == d.metadata == {"m": 1}
    assert c.metadata is not d.metadata  # each entry its own copy
    store._core._check()
