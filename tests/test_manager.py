"""MemoryManager: routing by name, the default store, registration and URLs."""

from __future__ import annotations

from typing import Any

import pytest

from memkv import LocalMemoryStore, MemoryManager, MemoryStore
from memkv import manager as manager_module
from memkv.errors import InvalidArgumentError, StoreNotFoundError


@pytest.fixture
def manager() -> MemoryManager[Any]:
    manager: MemoryManager[Any] = MemoryManager()
    manager.register_store("a", LocalMemoryStore(), default=True)
    manager.register_store("b", LocalMemoryStore())
    return manager


async def test_calls_go_to_the_default_store(manager: MemoryManager[Any]) -> None:
    await manager.set("k", "v", ttl=60, metadata={"m": 1})
    entry = await manager.store("a").get("k")
    assert entry is not None
    assert entry.value == "v"
    assert entry.metadata == {"m": 1}
    assert await manager.store("b").get("k") is None


async def test_every_method_routes_by_name(manager: MemoryManager[Any]) -> None:
    await manager.set("k", 1, store="b")
    assert await manager.exists("k", store="b")
    assert not await manager.exists("k")
    got = await manager.get("k", store="b")
    assert got is not None
    assert got.value == 1
    await manager.set_many({"x:1": 1, "x:2": 2}, store="b")
    assert [e.value for e in await manager.get_many(["x:1", "x:2"], store="b") if e] == [1, 2]
    assert sorted([k async for k in manager.scan("x:", store="b")]) == ["x:1", "x:2"]
    assert [k async for k in manager.scan("x:")] == []
    assert await manager.delete_many(["x:1"], store="b") == 1
    assert await manager.clear("x:", store="b") == 1
    assert await manager.delete("k", store="b")
    assert await manager.clear(store="b") == 0


async def test_unknown_name_raises_store_not_found(manager: MemoryManager[Any]) -> None:
    with pytest.raises(StoreNotFoundError) as info:
        await manager.get("k", store="nope")
    assert isinstance(info.value, ValueError)
    with pytest.raises(StoreNotFoundError):
        manager.scan(store="nope")


async def test_no_default_raises_store_not_found() -> None:
    manager: MemoryManager[str] = MemoryManager()
    manager.register_store("only", LocalMemoryStore())
    with pytest.raises(StoreNotFoundError):
        await manager.get("k")
    with pytest.raises(StoreNotFoundError):
        manager.store()


def test_duplicate_name_raises_unless_replace(manager: MemoryManager[Any]) -> None:
    replacement: LocalMemoryStore[Any] = LocalMemoryStore()
    with pytest.raises(ValueError, match="already registered"):
        manager.register_store("a", replacement)
    manager.register_store("a", replacement, replace=True)
    assert manager.store("a") is replacement
    assert manager.default == "a"


def test_unregister_returns_the_store_without_closing(manager: MemoryManager[Any]) -> None:
    store = manager.store("a")
    assert manager.unregister_store("a") is store
    assert manager.names == ["b"]
    assert manager.default is None
    with pytest.raises(StoreNotFoundError):
        manager.unregister_store("a")


def test_register_rejects_non_stores(manager: MemoryManager[Any]) -> None:
    with pytest.raises(TypeError):
        manager.register_store("x", {})  # type: ignore[arg-type]


async def test_async_with_closes_every_store_once() -> None:
    closed: list[str] = []

    class Recording(LocalMemoryStore[Any]):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        async def close(self) -> None:
            closed.append(self.name)

    shared = Recording("shared")
    async with MemoryManager[Any]() as manager:
        manager.register_store("one", shared, default=True)
        manager.register_store("alias", shared)
        manager.register_store("two", Recording("two"))
    assert closed == ["shared", "two"]


async def test_from_urls_builds_and_routes() -> None:
    manager = MemoryManager.from_urls(
        {"local": "memory://", "small": "memory://?max_entries=2"}, default="local"
    )
    assert manager.default == "local"
    small = manager.store("small")
    assert isinstance(small, LocalMemoryStore)
    assert small.max_entries == 2
    await manager.set("k", "v")
    assert await manager.exists("k", store="local")
    await manager.close()


def test_from_urls_with_unknown_default_raises() -> None:
    with pytest.raises(StoreNotFoundError):
        MemoryManager.from_urls({"local": "memory://"}, default="other")


def test_from_urls_opens_no_store_when_a_later_url_is_bad(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[object] = []
    real_open_store = manager_module.open_store

    def recording_open_store(url: Any) -> MemoryStore[Any]:
        opened.append(url)
        return real_open_store(url)

    monkeypatch.setattr(manager_module, "open_store", recording_open_store)
    with pytest.raises(InvalidArgumentError, match="max_entries"):
        MemoryManager.from_urls(
            {"cache": "redis://localhost:6379/0", "local": "memory://?max_entries=-1"}
        )
    assert opened == []


def test_from_urls_refuses_a_name_that_is_not_str_before_the_default() -> None:
    with pytest.raises(StoreNotFoundError, match="store names must be str"):
        MemoryManager.from_urls({1: "memory://", "local": "memory://"}, default="other")  # type: ignore[dict-item]


async def test_a_third_party_store_needs_only_four_methods() -> None:
    from collections.abc import AsyncIterator, Mapping

    from memkv import BaseMemoryStore, MemoryEntry
    from memkv.store import TTL

    class DictStore(BaseMemoryStore[Any]):
        def __init__(self) -> None:
            self.data: dict[str, Any] = {}

        async def get(self, key: str) -> MemoryEntry[Any] | None:
            return MemoryEntry(key, self.data[key]) if key in self.data else None

        async def set(
            self, key: str, value: Any, ttl: TTL = None, metadata: Mapping[str, Any] | None = None
        ) -> None:
            self.data[key] = value

        async def delete(self, key: str) -> bool:
            return self.data.pop(key, None) is not None

        async def scan(
            self, pattern: str | None = None, batch_size: int = 100
        ) -> AsyncIterator[str]:
            for key in sorted(self.data):
                if key.startswith(pattern or ""):
                    yield key

    store = DictStore()
    assert isinstance(store, MemoryStore)
    await store.set_many({"a:1": 1, "a:2": 2, "b": 3})
    assert await store.exists("a:1")
    assert [e.value for e in await store.get_many(["a:1", "b"]) if e] == [1, 3]
    assert await store.delete_many(["b", "zz"]) == 1
    assert await store.clear("a:") == 2
    assert store.data == {}
    assert store.stats().gets == 0
    async with store:
        pass
