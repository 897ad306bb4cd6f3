"""MemoryEntry as users build and read it, on both cores' classes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import memkv
import memkv._core
from memkv.errors import InvalidKeyError, InvalidMetadataError, InvalidTTLError
from tests.helpers import core_module


@pytest.fixture
def entry_type(core: str) -> Any:
    return core_module(core).MemoryEntry


def test_new_entry_has_equal_aware_utc_timestamps(entry_type: Any) -> None:
    entry = entry_type("k", "v")
    assert entry.key == "k"
    assert entry.value == "v"
    assert entry.metadata == {}
    assert entry.expires_at is None
    assert entry.created_at == entry.updated_at
    assert entry.created_at.tzinfo is not None
    assert abs(entry.created_at - datetime.now(timezone.utc)) < timedelta(seconds=5)


def test_entry_keeps_expires_at_and_metadata(entry_type: Any) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    entry = entry_type("k", [1], expires_at=when, metadata={"a": 1})
    assert entry.expires_at == when
    assert entry.metadata == {"a": 1}
    other_zone = when.astimezone(timezone(timedelta(hours=5)))
    assert entry_type("k", 1, expires_at=other_zone).expires_at == when


def test_entry_is_generic(entry_type: Any) -> None:
    alias = entry_type[str]
    assert alias("k", "v").value == "v"
    assert memkv.MemoryEntry[int] is not None


def test_metadata_dict_is_kept_when_mutated(entry_type: Any) -> None:
    entry = entry_type("k", "v")
    entry.metadata["added"] = True
    assert entry.metadata == {"added": True}


def test_entry_validates_its_arguments(entry_type: Any) -> None:
    with pytest.raises(InvalidKeyError):
        entry_type(1, "v")
    with pytest.raises(InvalidTTLError):
        entry_type("k", "v", expires_at=datetime(2030, 1, 1))  # naive
    with pytest.raises(InvalidTTLError):
        entry_type("k", "v", expires_at=5)
    with pytest.raises(InvalidMetadataError):
        entry_type("k", "v", metadata=[("a", 1)])


def test_equality_and_repr(entry_type: Any) -> None:
    entry = entry_type("k", "v", metadata={"a": 1})
    assert entry == entry
    assert entry != entry_type("k", "other")
    assert "key='k'" in repr(entry)


def test_repr_shows_no_stored_value_or_metadata(entry_type: Any) -> None:
    entry = entry_type("k", "SECRET-VALUE", metadata={"token": "SECRET-META"})
    shown = repr(entry)
    assert "SECRET" not in shown
    assert shown == "MemoryEntry(key='k', value=<str>, expires_at=None, metadata=<1 items>)"
    with pytest.raises(TypeError):
        hash(entry)


async def test_entries_of_either_core_are_memkv_memory_entries(core: str) -> None:
    module = core_module(core)
    store = memkv.LocalMemoryStore[str](core=core)
    await store.set("k", "v")
    for entry in (
        await store.get("k"),
        (await store.get_many(["k"]))[0],
        module.MemoryEntry("k", "v"),
        module.make_entry("k", "v", None, 1.0, 1.0, None),
    ):
        assert type(entry) is module.MemoryEntry
        assert isinstance(entry, memkv.MemoryEntry)
    assert issubclass(module.MemoryEntry, memkv.MemoryEntry)


def test_memory_entry_builds_one_entry_of_either_core_when_it_is_in_use(
    core: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = core_module(core)
    monkeypatch.setattr(memkv._core, "MemoryEntry", module.MemoryEntry)
    entry = memkv.MemoryEntry("k", "v", metadata={"a": 1})
    assert type(entry) is module.MemoryEntry
    assert (entry.key, entry.value, entry.metadata) == ("k", "v", {"a": 1})
    with pytest.raises(InvalidKeyError):
        memkv.MemoryEntry(5, "v")  # type: ignore[arg-type]


def test_memory_entry_builds_an_entry_of_the_core_in_use() -> None:
    when = datetime(2030, 1, 2, tzinfo=timezone.utc)
    entry = memkv.MemoryEntry("k", [1], expires_at=when, metadata={"a": 1})
    assert type(entry) is core_module(memkv.IMPLEMENTATION).MemoryEntry
    assert (entry.key, entry.value, entry.expires_at, entry.metadata) == ("k", [1], when, {"a": 1})
    assert entry.created_at == entry.updated_at
    assert memkv.MemoryEntry[str]("k", "v").value == "v"
    with pytest.raises(InvalidKeyError):
        memkv.MemoryEntry(1, "v")  # type: ignore[arg-type]


def test_other_objects_are_not_memory_entries() -> None:
    assert not isinstance({"key": "k", "value": "v"}, memkv.MemoryEntry)
    assert not isinstance(None, memkv.MemoryEntry)
