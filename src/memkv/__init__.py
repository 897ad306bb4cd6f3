"""memkv: one async key-value memory store interface over local and Redis backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memkv._core import IMPLEMENTATION
from memkv.caching import cached
from memkv.entry import MemoryEntry
from memkv.local import LocalMemoryStore
from memkv.manager import MemoryManager
from memkv.store import BaseMemoryStore, MemoryStore, StoreStats
from memkv.urls import open_store

if TYPE_CHECKING:
    from memkv.redis import RedisMemoryStore

__all__ = [
    "IMPLEMENTATION",
    "BaseMemoryStore",
    "LocalMemoryStore",
    "MemoryEntry",
    "MemoryManager",
    "MemoryStore",
    "RedisMemoryStore",
    "StoreStats",
    "cached",
    "open_store",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # RedisMemoryStore needs the optional redis extra: import it only when asked for.
    if name == "RedisMemoryStore":
        from memkv.redis import RedisMemoryStore

        return RedisMemoryStore
    raise AttributeError(f"module 'memkv' has no attribute {name!r}")
