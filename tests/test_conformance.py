"""The contract every store keeps (CONTRACT.md), run on every kind of store.

Each test takes the ``harness`` fixture, so it runs on the pure-Python and Cython
local cores, one Redis/Valkey server and a Redis Cluster. Expiry uses short TTLs and
``harness.advance``: a fake clock tick locally, a real sleep on Redis.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from memkv.errors import (
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidTTLError,
    MemKVError,
)
from memkv.store import OPERATIONS
from tests.helpers import StoreHarness

TTL = 0.3  # seconds; long enough for a Redis round trip, short enough to sleep through
PAST_TTL = 0.5


async def keys_of(harness: StoreHarness, prefix: str | None = None, **kw: Any) -> list[str]:
    return [key async for key in harness.store.scan(prefix, **kw)]


# -- get / set -------------------------------------------------------------------------


async def test_get_missing_returns_none(harness: StoreHarness) -> None:
    assert await harness.store.get("nope") is None


async def test_set_then_get_returns_entry(harness: StoreHarness) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    await harness.store.set("k", "v", metadata={"source": "test"})
    entry = await harness.store.get("k")
    assert entry is not None
    assert isinstance(entry, harness.entry_type)
    assert entry.key == "k"
    assert entry.value == "v"
    assert entry.metadata == {"source": "test"}
    assert entry.expires_at is None
    assert entry.created_at == entry.updated_at
    assert entry.created_at.tzinfo is not None
    assert entry.created_at.utcoffset() == timedelta(0)
    assert before <= entry.created_at <= datetime.now(timezone.utc) + timedelta(seconds=1)


async def test_metadata_is_empty_dict_when_not_given(harness: StoreHarness) -> None:
    await harness.store.set("k", 1)
    entry = await harness.store.get("k")
    assert entry is not None
    assert entry.metadata == {}


@pytest.mark.parametrize(
    "value",
    ["text", 42, 3.5, None, True, [1, 2, "x"], {"nested": {"a": [1, 2]}}, "ünïcødé ✓"],
    ids=["str", "int", "float", "none", "bool", "list", "dict", "unicode"],
)
async def test_values_round_trip(harness: StoreHarness, value: Any) -> None:
    await harness.store.set("k", value)
    entry = await harness.store.get("k")
    assert entry is not None
    assert entry.value == value


async def test_overwrite_keeps_created_at_and_replaces_the_rest(harness: StoreHarness) -> None:
    store = harness.store
    await store.set("k", "first", ttl=60, metadata={"v": 1})
    first = await store.get("k")
    assert first is not None
    await harness.advance(0.05)
    await store.set("k", "second")
    second = await store.get("k")
    assert second is not None
    assert second.value == "second"
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    assert second.expires_at is None
    assert second.metadata == {}
    # The entry returned earlier is a snapshot, not changed by the overwrite.
    assert first.value == "first"


async def test_ttl_timedelta_int_and_float_set_expires_at(harness: StoreHarness) -> None:
    store = harness.store
    for key, ttl in (("td", timedelta(seconds=60)), ("int", 60), ("float", 60.0)):
        await store.set(key, "v", ttl=ttl)
        entry = await store.get(key)
        assert entry is not None
        assert entry.expires_at is not None
        remaining = (entry.expires_at - entry.updated_at).total_seconds()
        assert 59.0 <= remaining <= 60.5


async def test_entry_expires_after_ttl(harness: StoreHarness) -> None:
    store = harness.store
    await store.set("short", "v", ttl=TTL)
    await store.set("long", "v", ttl=60)
    await store.set("forever", "v")
    assert await store.get("short") is not None
    await harness.advance(PAST_TTL)
    assert await store.get("short") is None
    assert not await store.exists("short")
    assert await store.get("long") is not None
    assert await store.get("forever") is not None
    assert sorted(await keys_of(harness)) == ["forever", "long"]


async def test_overwrite_without_ttl_removes_expiry(harness: StoreHarness) -> None:
    await harness.store.set("k", "v", ttl=TTL)
    await harness.store.set("k", "v2")
    await harness.advance(PAST_TTL)
    entry = await harness.store.get("k")
    assert entry is not None
    assert entry.value == "v2"


async def test_set_after_expiry_starts_a_new_created_at(harness: StoreHarness) -> None:
    await harness.store.set("k", "old", ttl=TTL)
    first = await harness.store.get("k")
    assert first is not None
    await harness.advance(PAST_TTL)
    await harness.store.set("k", "new")
    second = await harness.store.get("k")
    assert second is not None
    assert second.created_at > first.created_at


@pytest.mark.parametrize(
    "ttl",
    [
        0,
        -1,
        0.0,
        -0.5,
        timedelta(0),
        timedelta(seconds=-5),
        float("nan"),
        float("inf"),
        10**12,
        10**400,
        timedelta.max,
    ],
    ids=repr,
)
async def test_out_of_range_ttl_raises_and_stores_nothing(harness: StoreHarness, ttl: Any) -> None:
    await harness.store.set("kept", "original")
    with pytest.raises(InvalidTTLError):
        await harness.store.set("new", "v", ttl=ttl)
    with pytest.raises(InvalidTTLError):
        await harness.store.set("kept", "changed", ttl=ttl)
    assert await harness.store.get("new") is None
    kept = await harness.store.get("kept")
    assert kept is not None
    assert kept.value == "original"


@pytest.mark.parametrize("ttl", ["10", True, [1], object()], ids=["str", "bool", "list", "object"])
async def test_ttl_of_wrong_type_raises(harness: StoreHarness, ttl: Any) -> None:
    with pytest.raises(InvalidTTLError) as info:
        await harness.store.set("k", "v", ttl=ttl)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, MemKVError)
    assert await harness.store.get("k") is None


@pytest.mark.parametrize("key", [1, None, b"bytes", ("t",), 1.5], ids=repr)
async def test_non_str_key_raises_invalid_key(harness: StoreHarness, key: Any) -> None:
    store = harness.store
    for call in (
        lambda: store.get(key),
        lambda: store.set(key, "v"),
        lambda: store.delete(key),
        lambda: store.exists(key),
        lambda: store.get_many(["ok", key]),
        lambda: store.delete_many(["ok", key]),
    ):
        with pytest.raises(InvalidKeyError) as info:
            await call()
        assert isinstance(info.value, TypeError)
    assert await keys_of(harness) == []


async def test_str_subclass_key_is_accepted_as_plain_str(harness: StoreHarness) -> None:
    class Name(str):
        pass

    await harness.store.set(Name("k"), "v")
    entry = await harness.store.get("k")
    assert entry is not None
    assert type(entry.key) is str


async def test_bad_metadata_raises_and_stores_nothing(harness: StoreHarness) -> None:
    with pytest.raises(InvalidMetadataError):
        await harness.store.set("k", "v", metadata=["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(InvalidMetadataError):
        await harness.store.set("k", "v", metadata={1: "non-str key"})  # type: ignore[dict-item]
    assert await harness.store.get("k") is None


async def test_metadata_is_copied_on_set(harness: StoreHarness) -> None:
    metadata = {"a": 1}
    await harness.store.set("k", "v", metadata=metadata)
    metadata["a"] = 2
    entry = await harness.store.get("k")
    assert entry is not None
    assert entry.metadata == {"a": 1}


async def test_empty_and_odd_keys_are_ordinary(harness: StoreHarness) -> None:
    keys = ["", " ", "a:b:c", "emoji-🙂", "tab\tkey", "x" * 500]
    for index, key in enumerate(keys):
        await harness.store.set(key, index)
    for index, key in enumerate(keys):
        entry = await harness.store.get(key)
        assert entry is not None
        assert entry.value == index


# -- delete / exists -------------------------------------------------------------------


async def test_delete_reports_whether_a_live_entry_was_removed(harness: StoreHarness) -> None:
    store = harness.store
    await store.set("k", "v")
    assert await store.delete("k") is True
    assert await store.delete("k") is False
    assert await store.get("k") is None
    await store.set("gone", "v", ttl=TTL)
    await harness.advance(PAST_TTL)
    assert await store.delete("gone") is False


async def test_exists(harness: StoreHarness) -> None:
    store = harness.store
    assert await store.exists("k") is False
    await store.set("k", None)
    assert await store.exists("k") is True
    await store.delete("k")
    assert await store.exists("k") is False


# -- scan ------------------------------------------------------------------------------


async def test_scan_yields_each_matching_key_once(harness: StoreHarness) -> None:
    store = harness.store
    await store.set_many({f"user:{i:03}": i for i in range(250)})
    await store.set_many({f"order:{i}": i for i in range(20)})
    found = await keys_of(harness, "user:", batch_size=7)
    assert len(found) == 250
    assert set(found) == {f"user:{i:03}" for i in range(250)}
    assert len(await keys_of(harness)) == 270
    assert await keys_of(harness, "nothing:") == []


async def test_original_scan_example(harness: StoreHarness) -> None:
    await harness.store.set("prefix:1", "value1")
    await harness.store.set("prefix:2", "value2")
    await harness.store.set("other", "value3")
    assert sorted(await keys_of(harness, "prefix:")) == ["prefix:1", "prefix:2"]


@pytest.mark.parametrize("special", ["*", "?", "[", "]", "\\", "[a-z]", "a*b?", "^$.+"])
async def test_scan_prefix_is_literal_not_a_glob(harness: StoreHarness, special: str) -> None:
    store = harness.store
    literal = f"p{special}"
    await store.set(f"{literal}1", 1)
    await store.set(f"{literal}2", 2)
    for decoy in ("px1", "pa1", "pz", "p\\\\1", "pab1", "p"):
        if not decoy.startswith(literal):
            await store.set(decoy, 0)
    assert sorted(await keys_of(harness, literal)) == [f"{literal}1", f"{literal}2"]
    assert await store.clear(literal) == 2
    assert await keys_of(harness, literal) == []
    assert await store.exists("px1")


async def test_scan_skips_expired_keys(harness: StoreHarness) -> None:
    await harness.store.set("p:live", 1)
    await harness.store.set("p:dying", 2, ttl=TTL)
    await harness.advance(PAST_TTL)
    assert await keys_of(harness, "p:") == ["p:live"]


async def test_scan_survives_deletes_during_iteration(harness: StoreHarness) -> None:
    store = harness.store
    await store.set_many({f"k:{i:04}": i for i in range(300)})
    seen: list[str] = []
    async for key in store.scan("k:", batch_size=10):
        seen.append(key)
        # Delete this key, a later one and an earlier one while the scan runs.
        await store.delete(key)
        number = int(key[2:6])
        await store.delete(f"k:{(number + 37) % 300:04}")
        await store.set(f"k:{number:04}-new", number)
    assert len(seen) == len(set(seen)), "a key was yielded twice"
    assert all(key.startswith("k:") for key in seen)


@pytest.mark.parametrize("batch_size", [0, -1])
async def test_scan_rejects_batch_size_below_one(harness: StoreHarness, batch_size: int) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        [key async for key in harness.store.scan(None, batch_size=batch_size)]
    assert isinstance(info.value, ValueError)


async def test_scan_and_clear_reject_non_str_prefix(harness: StoreHarness) -> None:
    with pytest.raises(InvalidKeyError):
        [key async for key in harness.store.scan(b"p")]  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        await harness.store.clear(7)  # type: ignore[arg-type]


# -- clear -----------------------------------------------------------------------------


async def test_clear_prefix_returns_count(harness: StoreHarness) -> None:
    store = harness.store
    await store.set_many({f"a:{i}": i for i in range(30)})
    await store.set_many({f"b:{i}": i for i in range(5)})
    assert await store.clear("a:") == 30
    assert await keys_of(harness, "a:") == []
    assert len(await keys_of(harness)) == 5
    assert await store.clear() == 5
    assert await keys_of(harness) == []
    assert await store.clear() == 0


async def test_clear_counts_only_live_entries(harness: StoreHarness) -> None:
    await harness.store.set("p:live", 1)
    await harness.store.set("p:dying", 2, ttl=TTL)
    await harness.advance(PAST_TTL)
    assert await harness.store.clear("p:") == 1


async def test_clear_never_touches_another_store(harness: StoreHarness) -> None:
    other = await harness.make()
    await harness.store.set("shared:1", "mine")
    await other.set("shared:1", "theirs")
    await other.set("shared:2", "theirs")
    assert await harness.store.clear() == 1
    assert sorted([key async for key in other.scan("shared:")]) == ["shared:1", "shared:2"]
    entry = await other.get("shared:1")
    assert entry is not None
    assert entry.value == "theirs"
    assert await other.clear("shared:") == 2


# -- batches ---------------------------------------------------------------------------


async def test_get_many_is_aligned_with_keys(harness: StoreHarness) -> None:
    store = harness.store
    await store.set_many([("a", 1), ("c", 3)])
    entries = await store.get_many(["a", "b", "c", "a"])
    assert [None if e is None else e.value for e in entries] == [1, None, 3, 1]
    assert await store.get_many([]) == []


async def test_set_many_accepts_mapping_and_pairs_with_ttl_and_metadata(
    harness: StoreHarness,
) -> None:
    store = harness.store
    await store.set_many({"a": 1, "b": 2}, ttl=60, metadata={"m": True})
    await store.set_many(iter([("c", 3)]))
    a, b, c = await store.get_many(["a", "b", "c"])
    assert a is not None
    assert b is not None
    assert c is not None
    assert (a.value, b.value, c.value) == (1, 2, 3)
    assert a.metadata == {"m": True}
    assert a.expires_at is not None
    assert c.expires_at is None
    assert c.metadata == {}


async def test_set_many_validates_everything_before_writing(harness: StoreHarness) -> None:
    store = harness.store
    await store.set("a", "original")
    with pytest.raises(InvalidKeyError):
        await store.set_many([("a", "changed"), ("b", 2), (3, "bad key")])  # type: ignore[list-item]
    with pytest.raises(InvalidKeyError):
        await store.set_many([("a", "changed"), ("b",)])  # type: ignore[list-item]
    with pytest.raises(InvalidTTLError):
        await store.set_many({"a": "changed", "b": 2}, ttl=0)
    with pytest.raises(InvalidMetadataError):
        await store.set_many({"a": "changed"}, metadata="bad")  # type: ignore[arg-type]
    entry = await store.get("a")
    assert entry is not None
    assert entry.value == "original"
    assert await store.get("b") is None


async def test_set_many_overwrite_keeps_created_at(harness: StoreHarness) -> None:
    await harness.store.set("a", 1)
    first = await harness.store.get("a")
    await harness.advance(0.05)
    await harness.store.set_many({"a": 2})
    second = await harness.store.get("a")
    assert first is not None
    assert second is not None
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at


async def test_delete_many_counts_live_entries(harness: StoreHarness) -> None:
    store = harness.store
    await store.set_many({"a": 1, "b": 2, "c": 3})
    await store.set("d", 4, ttl=TTL)
    await harness.advance(PAST_TTL)
    assert await store.delete_many(["a", "b", "missing", "d"]) == 2
    assert await keys_of(harness) == ["c"]
    assert await store.delete_many([]) == 0


async def test_batch_methods_reject_a_lone_string(harness: StoreHarness) -> None:
    with pytest.raises(InvalidKeyError):
        await harness.store.get_many("abc")
    with pytest.raises(InvalidKeyError):
        await harness.store.delete_many("abc")


# -- stats, close ----------------------------------------------------------------------


async def test_stats_count_operations(harness: StoreHarness) -> None:
    store = harness.store
    start = store.stats()
    await store.set("a", 1)
    await store.get("a")
    await store.get("missing")
    await store.get_many(["a", "missing"])
    await store.delete("a")
    stats = store.stats()
    assert stats.gets - start.gets == 4
    assert stats.hits - start.hits == 2
    assert stats.misses - start.misses == 2
    assert stats.sets - start.sets == 1
    assert stats.deletes - start.deletes == 1
    assert stats.hits + stats.misses == stats.gets
    assert 0.0 <= stats.hit_rate <= 1.0


async def test_stats_count_calls_by_operation_and_result(harness: StoreHarness) -> None:
    store = harness.store
    start = store.stats().operations
    assert set(start) == {(op, result) for op, results in OPERATIONS.items() for result in results}
    await store.set("a", 1)
    await store.set_many({"b": 2, "c": 3})
    await store.get("a")
    await store.get("missing")
    await store.get_many(["a", "missing"])
    await store.exists("a")
    await store.exists("missing")
    [key async for key in store.scan("")]
    [key async for key in store.scan("nothing-here")]
    await store.delete("a")
    await store.delete("a")
    await store.delete_many(["b", "missing"])
    await store.clear("c")
    for call in (
        store.get(1),  # type: ignore[arg-type]
        store.set("k", 1, ttl=-1),
        store.get_many([1]),  # type: ignore[list-item]
    ):
        with pytest.raises(MemKVError):
            await call
    with pytest.raises(MemKVError):
        store.scan(batch_size=0)
    ops = store.stats().operations
    moved = {pair: ops[pair] - start[pair] for pair in ops if ops[pair] != start[pair]}
    assert moved == {
        ("set", "ok"): 1,
        ("set_many", "ok"): 1,
        ("get", "hit"): 1,
        ("get", "miss"): 1,
        ("get_many", "ok"): 1,
        ("exists", "hit"): 1,
        ("exists", "miss"): 1,
        ("scan", "ok"): 2,
        ("delete", "hit"): 1,
        ("delete", "miss"): 1,
        ("delete_many", "ok"): 1,
        ("clear", "ok"): 1,
        ("get", "error"): 1,
        ("set", "error"): 1,
        ("get_many", "error"): 1,
        ("scan", "error"): 1,
    }


async def test_store_is_an_async_context_manager(harness: StoreHarness) -> None:
    sibling = await harness.make()
    async with sibling as entered:
        assert entered is sibling
        await sibling.set("k", "v")
    await sibling.close()  # closing twice is harmless
