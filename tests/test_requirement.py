"""The original requirement's validation test, kept verbatim (it sleeps for real)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from memkv import LocalMemoryStore, MemoryManager


@pytest.mark.slow
async def test_original_requirement_validation() -> None:
    # fmt: off
    manager = MemoryManager[str](); local_store = LocalMemoryStore[str]()  # noqa: E702
    manager.register_store("local", local_store, default=True)
    await manager.set("test", "value"); entry = await manager.get("test")  # noqa: E702
    assert entry is not None and entry.value == "value"  # noqa: PT018
    await manager.set("temp", "value", ttl=timedelta(seconds=1)); assert await manager.get("temp") is not None  # noqa: E501, E702
    await asyncio.sleep(1.1); assert await manager.get("temp") is None  # noqa: E702
    await manager.set("prefix:1", "value1"); await manager.set("prefix:2", "value2")  # noqa: E702
    keys = [k async for k in local_store.scan("prefix:")]; assert len(keys) == 2  # noqa: E702
    # fmt: on
