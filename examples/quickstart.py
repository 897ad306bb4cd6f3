"""A tour of memkv's local store: set with TTL and metadata, get, prefix scan, stats."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import memkv
from memkv import LocalMemoryStore, MemoryManager


async def main() -> None:
    async with MemoryManager[str]() as manager:
        manager.register_store("local", LocalMemoryStore[str](max_entries=10_000), default=True)
        await manager.set("session:42:user", "ada", ttl=timedelta(minutes=30), metadata={"v": 1})
        await manager.set_many({"session:42:lang": "en", "session:7:user": "grace"})
        entry = await manager.get("session:42:user")
        assert entry is not None
        print(f"{entry.key} = {entry.value!r}, expires {entry.expires_at:%H:%M:%S} UTC")
        keys = [key async for key in manager.scan("session:42:")]
        print("session 42 keys:", keys)
        print("removed:", await manager.clear("session:42:"))
        print(manager.store().stats(), f"(core: {memkv.IMPLEMENTATION})")


if __name__ == "__main__":
    asyncio.run(main())
