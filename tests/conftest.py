"""Fixtures shared by every test: the fake clock and one harness per kind of store.

``harness`` is parametrised over every store kind, so a conformance test written once
runs on the pure-Python local core, the Cython local core, one Redis/Valkey server and
a Redis Cluster. ``local_harness`` runs only the two local cores.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from memkv import LocalMemoryStore, MemoryStore, _core_py

pytest_plugins = ["tests.redis_servers"]

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
        def __init__(self, max_entries: int | None = None, **options: Any) -> None:
            super().__init__(max_entries, core=core, **options)

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


LOCAL_KINDS = ["local-python", "local-cython"]
REDIS_KINDS = ["redis", "redis-cluster"]


async def _local_harness(kind: str) -> StoreHarness:
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


@pytest.fixture(params=LOCAL_KINDS)
async def local_harness(request: pytest.FixtureRequest) -> AsyncIterator[StoreHarness]:
    harness = await _local_harness(request.param)
    yield harness
    await harness.store.close()


@pytest.fixture(params=LOCAL_KINDS + REDIS_KINDS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[StoreHarness]:
    if request.param in LOCAL_KINDS:
        made = await _local_harness(request.param)
    else:
        factory = request.getfixturevalue(
            "redis_harness_factory" if request.param == "redis" else "cluster_harness_factory"
        )
        made = await factory()
    yield made
    for store in [made.store, *made.opened]:
        await store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["python", "cython"])
def core(request: pytest.FixtureRequest) -> str:
    """The name of each local core, for tests that build their own stores."""
    core_module(request.param)
    return str(request.param)
