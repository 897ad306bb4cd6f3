"""Helpers shared by the tests: the fake clock, the core chooser and the store harness.

Fixtures live in ``conftest.py``; this module holds what tests import by name.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from memkv import LocalMemoryStore, MemoryStore, _core_py

NO_EXTENSIONS = bool(os.environ.get("MEMKV_NO_EXTENSIONS"))


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def core_module(name: str) -> Any:
    """The core module for ``"python"`` or ``"cython"``; skips cython without extensions."""
    if name == "python":
        return _core_py
    if NO_EXTENSIONS:
        pytest.skip("MEMKV_NO_EXTENSIONS=1: the Cython core is not built")
    return importlib.import_module("memkv._core_c")


@functools.cache
def local_store_type(core: str) -> type[LocalMemoryStore[Any]]:
    """``LocalMemoryStore`` on the named core (``core=`` bound); skips cython without
    extensions. A class, so that tests may subclass it."""
    core_module(core)

    class OnCore(LocalMemoryStore[Any]):
        def __init__(
            self, max_entries: int | None = None, *, clock: Callable[[], float] | None = None
        ) -> None:
            super().__init__(max_entries, clock=clock, core=core)

    OnCore.__name__ = OnCore.__qualname__ = f"LocalMemoryStore_{core}"
    return OnCore


@dataclass
class StoreHarness:
    """One store under test, how to make siblings of it, and how to let time pass."""

    kind: str
    store: MemoryStore[Any]
    make: Callable[..., Awaitable[MemoryStore[Any]]]
    advance: Callable[[float], Awaitable[None]]
    entry_type: type[Any]
    #: Whether time is simulated (local) or real (Redis: the server expires keys).
    fake_time: bool = True
    opened: list[MemoryStore[Any]] = field(default_factory=list)


LOCAL_KINDS = ("local-python", "local-cython")
REDIS_KINDS = ("redis", "redis-cluster")
#: Every kind of store, for adapter tests parametrised over all of them.
ALL_KINDS = [*LOCAL_KINDS, *REDIS_KINDS]


def make_store(request: pytest.FixtureRequest, kind: str, **options: Any) -> MemoryStore[Any]:
    """An empty store of ``kind`` (Redis: in a fresh namespace of the session's server
    or cluster, started by the fixtures on first use)."""
    if kind.startswith("local-"):
        store: MemoryStore[Any] = local_store_type(kind.removeprefix("local-"))(**options)
        return store
    from memkv.redis import RedisMemoryStore
    from tests.redis_servers import unique_namespace

    url = request.getfixturevalue("redis_url" if kind == "redis" else "cluster_url")
    return RedisMemoryStore(url, namespace=unique_namespace(), **options)


async def make_local_harness(kind: str) -> StoreHarness:
    """A harness over a local store on the core ``kind`` names, with a fake clock."""
    core = kind.removeprefix("local-")
    store_type = local_store_type(core)
    clock = FakeClock()

    async def make(**options: Any) -> MemoryStore[Any]:
        return store_type(clock=clock, **options)

    async def advance(seconds: float) -> None:
        clock.tick(seconds)

    return StoreHarness(
        kind=kind,
        store=await make(),
        make=make,
        advance=advance,
        entry_type=core_module(core).MemoryEntry,
    )
