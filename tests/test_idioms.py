"""get_or_set (single-flight, refresh-ahead, the Redis lease), add, touch and @cached.

Most tests take the ``harness`` fixture, so they run on both local cores, one Redis
server and a Redis Cluster; the cross-process ones start real worker processes
(``tests/idioms_worker.py``) against one Redis server.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import inspect
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import memkv
from memkv import LocalMemoryStore, MemoryManager, cached
from memkv.caching import encode_value
from memkv.errors import InvalidArgumentError, InvalidKeyError, InvalidTTLError, MemKVError
from memkv.store import BaseMemoryStore, MemoryStore
from tests.helpers import REDIS_KINDS, StoreHarness, local_store_type
from tests.redis_servers import unique_namespace

ROOT = Path(__file__).resolve().parent.parent
#: Where the memkv under test is imported from (src/ in a checkout, or site-packages),
#: for the worker processes.
MEMKV_PATH = str(Path(memkv.__file__).resolve().parent.parent)


class Factory:
    """An async factory that counts its runs, sleeps, then returns (or raises)."""

    def __init__(self, value: Any = "v", seconds: float = 0.0, error: Exception | None = None):
        self.value = value
        self.seconds = seconds
        self.error = error
        self.calls = 0
        self.cancelled = 0
        self.started = asyncio.Event()

    async def __call__(self) -> Any:
        self.calls += 1
        self.started.set()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture(params=REDIS_KINDS)
async def redis_harness(request: pytest.FixtureRequest) -> AsyncIterator[StoreHarness]:
    """The ``harness`` of the Redis kinds only, for what exists on Redis only (leases)."""
    factory = request.getfixturevalue(
        "redis_harness_factory" if request.param == "redis" else "cluster_harness_factory"
    )
    made: StoreHarness = await factory()
    yield made
    for store in [made.store, *made.opened]:
        await store.close()


def fills_in_flight(store: MemoryStore[Any]) -> int:
    state = store._fill_state()
    return len(state.fills) + len(state.refreshes) + len(state.lookups)


async def real_time_store(harness: StoreHarness) -> MemoryStore[Any]:
    """A store of the harness's kind whose time is the real clock."""
    if harness.fake_time:
        store: MemoryStore[Any] = type(harness.store)()
        harness.opened.append(store)
        return store
    return harness.store


# -- get_or_set: single-flight in one process --------------------------------------------


async def test_1000_concurrent_callers_of_a_missing_key_share_one_factory_call(
    harness: StoreHarness,
) -> None:
    factory = Factory("computed", seconds=0.05)
    entries = await asyncio.gather(
        *[harness.store.get_or_set("hot", factory, ttl=60) for _ in range(1000)]
    )
    assert factory.calls == 1
    assert {entry.value for entry in entries} == {"computed"}
    assert (await harness.store.get("hot")).value == "computed"
    stats = harness.store.stats()
    assert stats.flights.factory_calls == 1
    # A caller whose first get answers after the fill (slow servers) hits instead of waiting.
    assert stats.operations["get_or_set", "miss"] == stats.flights.waits + 1
    assert stats.operations["get_or_set", "miss"] + stats.operations["get_or_set", "hit"] == 1000
    assert fills_in_flight(harness.store) == 0


async def test_get_or_set_returns_a_live_entry_without_calling_the_factory(
    harness: StoreHarness,
) -> None:
    await harness.store.set("k", "stored", metadata={"m": 1})
    factory = Factory()
    entry = await harness.store.get_or_set("k", factory, ttl=60)
    assert (entry.value, entry.metadata, factory.calls) == ("stored", {"m": 1}, 0)
    assert harness.store.stats().operations["get_or_set", "hit"] == 1


async def test_get_or_set_stores_with_ttl_and_metadata_and_returns_the_stored_entry(
    harness: StoreHarness,
) -> None:
    entry = await harness.store.get_or_set("k", Factory([1, 2]), ttl=0.3, metadata={"a": "b"})
    assert entry == await harness.store.get("k")
    assert entry.metadata == {"a": "b"}
    assert entry.expires_at is not None
    await harness.advance(0.5)
    assert await harness.store.get("k") is None


async def test_a_failing_factory_reaches_every_waiter_stores_nothing_and_is_retried(
    harness: StoreHarness,
) -> None:
    failing = Factory(seconds=0.02, error=LookupError("upstream down"))
    results = await asyncio.gather(
        *[harness.store.get_or_set("k", failing, ttl=60) for _ in range(20)],
        return_exceptions=True,
    )
    assert failing.calls == 1
    assert all(isinstance(result, LookupError) for result in results)
    assert await harness.store.get("k") is None
    assert fills_in_flight(harness.store) == 0
    assert harness.store.stats().flights.factory_errors == 1
    assert harness.store.stats().operations["get_or_set", "error"] == 20
    entry = await harness.store.get_or_set("k", Factory("second try"), ttl=60)
    assert entry.value == "second try"


async def test_cancelling_one_waiter_neither_cancels_the_factory_nor_leaves_a_marker(
    harness: StoreHarness,
) -> None:
    factory = Factory("v", seconds=0.1)
    first = asyncio.create_task(harness.store.get_or_set("k", factory, ttl=60))
    others = [
        asyncio.create_task(harness.store.get_or_set("k", factory, ttl=60)) for _ in range(5)
    ]
    await factory.started.wait()
    first.cancel()
    entries = await asyncio.gather(*others)
    assert first.cancelled()
    assert factory.calls == 1
    assert factory.cancelled == 0
    assert {entry.value for entry in entries} == {"v"}
    assert fills_in_flight(harness.store) == 0


async def test_when_every_waiter_is_cancelled_the_factory_still_runs_and_stores(
    harness: StoreHarness,
) -> None:
    factory = Factory("kept", seconds=0.1)
    waiters = [
        asyncio.create_task(harness.store.get_or_set("k", factory, ttl=60)) for _ in range(3)
    ]
    await factory.started.wait()
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    for _ in range(100):
        if fills_in_flight(harness.store) == 0:
            break
        await asyncio.sleep(0.02)
    assert factory.cancelled == 0
    assert (await harness.store.get("k")).value == "kept"
    assert fills_in_flight(harness.store) == 0


async def test_an_abandoned_factory_failure_is_logged_not_lost(
    harness: StoreHarness, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory(seconds=0.05, error=LookupError("nobody listens"))
    waiter = asyncio.create_task(harness.store.get_or_set("k", factory, ttl=60))
    await factory.started.wait()
    waiter.cancel()
    with caplog.at_level(logging.ERROR, logger="memkv"):
        for _ in range(100):
            if fills_in_flight(harness.store) == 0:
                break
            await asyncio.sleep(0.02)
    assert "failed with nobody waiting" in caplog.text
    assert "nobody listens" in caplog.text
    assert await harness.store.get("k") is None


async def test_a_factory_returning_no_awaitable_raises_a_typed_error(
    harness: StoreHarness,
) -> None:
    with pytest.raises(InvalidArgumentError, match="awaitable"):
        await harness.store.get_or_set("k", lambda: "not awaitable", ttl=60)
    assert not await harness.store.exists("k")


# -- get_or_set: bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"factory": "not callable"}, InvalidArgumentError),
        ({"ttl": -1}, InvalidTTLError),
        ({"ttl": 0}, InvalidTTLError),
        ({"ttl": 10, "refresh_after": 10}, InvalidTTLError),
        ({"ttl": 10, "refresh_after": 20}, InvalidTTLError),
        ({"ttl": 10, "refresh_after": -1}, InvalidTTLError),
        ({"ttl": 10, "refresh_after": "soon"}, InvalidTTLError),
        ({"ttl": 10, "refresh_after": 6, "ttl_jitter": 0.5}, InvalidTTLError),
        ({"ttl": 10, "ttl_jitter": 1.0}, InvalidArgumentError),
        ({"ttl": 10, "ttl_jitter": -0.1}, InvalidArgumentError),
        ({"metadata": ["not", "a", "mapping"]}, MemKVError),
    ],
)
async def test_get_or_set_refuses_bad_input_before_writing_anything(
    harness: StoreHarness, arguments: dict[str, Any], error: type[Exception]
) -> None:
    factory = Factory()
    call: dict[str, Any] = {"factory": factory, **arguments}
    with pytest.raises(error):
        await harness.store.get_or_set("k", **call)
    assert factory.calls == 0
    assert not await harness.store.exists("k")


async def test_get_or_set_refuses_a_key_that_is_not_str(harness: StoreHarness) -> None:
    with pytest.raises(InvalidKeyError):
        await harness.store.get_or_set(42, Factory())  # type: ignore[arg-type]


# -- refresh-ahead -------------------------------------------------------------------------


async def test_a_stale_entry_is_returned_at_once_while_one_caller_refreshes_it(
    harness: StoreHarness,
) -> None:
    await harness.store.get_or_set("k", Factory("old"), ttl=5, refresh_after=0.2)
    await harness.advance(0.3)
    refresh = Factory("new", seconds=0.1)
    entries = await asyncio.gather(
        *[harness.store.get_or_set("k", refresh, ttl=5, refresh_after=0.2) for _ in range(50)]
    )
    assert {entry.value for entry in entries} == {"old"}
    for _ in range(100):
        if fills_in_flight(harness.store) == 0:
            break
        await asyncio.sleep(0.02)
    assert refresh.calls == 1
    assert (await harness.store.get("k")).value == "new"
    assert harness.store.stats().flights.refreshes == 1


async def test_a_failing_refresh_is_logged_and_keeps_the_old_entry(
    harness: StoreHarness, caplog: pytest.LogCaptureFixture
) -> None:
    await harness.store.get_or_set("k", Factory("old"), ttl=5, refresh_after=0.2)
    await harness.advance(0.3)
    failing = Factory(error=LookupError("refresh broke"))
    with caplog.at_level(logging.ERROR, logger="memkv"):
        entry = await harness.store.get_or_set("k", failing, ttl=5, refresh_after=0.2)
        for _ in range(100):
            if fills_in_flight(harness.store) == 0:
                break
            await asyncio.sleep(0.02)
    assert entry.value == "old"
    assert failing.calls == 1
    assert "background refresh" in caplog.text
    assert "refresh broke" in caplog.text
    assert (await harness.store.get("k")).value == "old"


async def test_close_cancels_and_awaits_background_refreshes(harness: StoreHarness) -> None:
    store = await harness.make()
    harness.opened.append(store)
    await store.get_or_set("k", Factory("old"), ttl=5, refresh_after=0.2)
    await harness.advance(0.3)
    endless = Factory(seconds=3600)
    await store.get_or_set("k", endless, ttl=5, refresh_after=0.2)
    await endless.started.wait()
    assert endless.calls == 1
    assert fills_in_flight(store) == 1
    await store.close()
    assert endless.cancelled == 1
    assert fills_in_flight(store) == 0


async def test_refresh_after_keeps_a_hot_key_served_with_one_factory_call_per_window(
    harness: StoreHarness,
) -> None:
    store = await real_time_store(harness)
    factory = Factory(seconds=0.05)
    deadline = time.monotonic() + 2.5

    async def reader() -> None:
        while time.monotonic() < deadline:
            await store.get_or_set("hot", factory, ttl=1.0, refresh_after=0.3)
            await asyncio.sleep(0.005)

    await asyncio.gather(*[reader() for _ in range(50)])
    await store.close()
    # One fill, then one refresh per ~0.35 s (0.3 s of age plus the 50 ms factory).
    assert 5 <= factory.calls <= 10, factory.calls
    # Every call after the first fill was a refresh in the background: no caller
    # waited for the factory again (latency figures: bench/test_bench_idioms.py).
    assert store.stats().flights.refreshes == factory.calls - 1
    assert store.stats().operations["get_or_set", "error"] == 0


# -- TTL jitter ----------------------------------------------------------------------------


async def test_ttl_jitter_spreads_expiries_within_the_fraction(harness: StoreHarness) -> None:
    entries = [
        await harness.store.get_or_set(f"k{i}", Factory(i), ttl=100, ttl_jitter=0.5)
        for i in range(20)
    ]
    lifetimes = [(entry.expires_at - entry.updated_at).total_seconds() for entry in entries]
    assert all(49.9 <= lifetime <= 100.01 for lifetime in lifetimes), lifetimes
    assert len({round(lifetime, 2) for lifetime in lifetimes}) > 5


# -- add -----------------------------------------------------------------------------------


async def test_100_concurrent_adds_of_one_key_have_exactly_one_winner(
    harness: StoreHarness,
) -> None:
    won = await asyncio.gather(*[harness.store.add("k", i, ttl=60) for i in range(100)])
    assert sum(won) == 1
    assert (await harness.store.get("k")).value == won.index(True)
    assert harness.store.stats().operations["add", "ok"] == 1
    assert harness.store.stats().operations["add", "exists"] == 99


async def test_add_keeps_a_live_entry_and_replaces_an_expired_one(
    harness: StoreHarness,
) -> None:
    await harness.store.set("k", "first", ttl=0.3)
    assert await harness.store.add("k", "second") is False
    assert (await harness.store.get("k")).value == "first"
    await harness.advance(0.5)
    assert await harness.store.add("k", "third", metadata={"m": 1}) is True
    entry = await harness.store.get("k")
    assert (entry.value, entry.metadata, entry.expires_at) == ("third", {"m": 1}, None)


async def test_add_refuses_bad_input_before_writing(harness: StoreHarness) -> None:
    with pytest.raises(InvalidTTLError):
        await harness.store.add("k", 1, ttl=-1)
    with pytest.raises(InvalidKeyError):
        await harness.store.add(1, 1)  # type: ignore[arg-type]
    assert not await harness.store.exists("k")


async def test_local_add_has_one_winner_across_threads(core: str) -> None:
    store = local_store_type(core)()
    barrier = threading.Barrier(8)
    won: list[bool] = []

    def contend(worker: int) -> None:
        barrier.wait()
        for attempt in range(200):
            won.append(asyncio.run(store.add(f"k{attempt}", worker)))

    threads = [threading.Thread(target=contend, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(won) == 200


def test_a_fill_ending_on_one_threads_loop_never_strands_another_loops_callers(
    core: str,
) -> None:
    """Thread A's fill ends and is paused while it unfiles itself; meanwhile thread B runs
    a whole fill of the same key on its own loop; then A resumes. A's caller must get
    its value (it used to hang: A removed B's flight, then failed removing its own)."""
    store = local_store_type(core)()
    single_flight = store._fill_state().fills
    paused, resume = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def pause_once_inside_finish(frame: Any, event: str, arg: Any) -> Any:
        if event != "call" or frame.f_code is not type(single_flight)._finish.__code__:
            return None
        lines = 0

        def on_line(frame: Any, event: str, arg: Any) -> Any:
            nonlocal lines
            if event == "line":
                lines += 1
                if lines == 2 and not paused.is_set():
                    paused.set()
                    resume.wait(10)
            return on_line

        return on_line

    async def fill(name: str) -> None:
        async def factory() -> str:
            return name

        entry = await asyncio.wait_for(store.get_or_set("k", factory), 5)
        results[name] = entry.value

    def thread_a() -> None:
        sys.settrace(pause_once_inside_finish)
        try:
            asyncio.run(fill("a"))
        except BaseException as err:  # reported through results, checked below
            results["a"] = err
        finally:
            sys.settrace(None)

    def thread_b() -> None:
        paused.wait(10)
        try:
            asyncio.run(store.delete("k"))
            asyncio.run(fill("b"))
        finally:
            resume.set()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert paused.is_set()
    assert results == {"a": "a", "b": "b"}
    assert len(single_flight) == 0


# -- touch ---------------------------------------------------------------------------------


async def test_touch_gives_a_live_entry_a_new_expiry_and_keeps_the_rest(
    harness: StoreHarness,
) -> None:
    await harness.store.set("k", {"v": 1}, ttl=0.3, metadata={"m": 2})
    before = await harness.store.get("k")
    assert await harness.store.touch("k", 60) is True
    await harness.advance(0.5)
    after = await harness.store.get("k")
    assert after is not None
    assert (after.value, after.metadata) == ({"v": 1}, {"m": 2})
    assert (after.created_at, after.updated_at) == (before.created_at, before.updated_at)
    assert after.expires_at > before.expires_at
    assert harness.store.stats().operations["touch", "hit"] == 1


async def test_touch_with_none_makes_an_entry_permanent(harness: StoreHarness) -> None:
    await harness.store.set("k", "v", ttl=0.3)
    assert await harness.store.touch("k", None) is True
    await harness.advance(0.5)
    entry = await harness.store.get("k")
    assert entry is not None
    assert entry.expires_at is None


async def test_touch_shortens_an_expiry(harness: StoreHarness) -> None:
    await harness.store.set("k", "v")
    assert await harness.store.touch("k", timedelta(seconds=0.3)) is True
    await harness.advance(0.5)
    assert await harness.store.get("k") is None


async def test_touch_of_a_missing_or_expired_key_is_false(harness: StoreHarness) -> None:
    assert await harness.store.touch("nope", 10) is False
    await harness.store.set("k", "v", ttl=0.3)
    await harness.advance(0.5)
    assert await harness.store.touch("k", 10) is False
    assert await harness.store.get("k") is None
    assert harness.store.stats().operations["touch", "miss"] == 2


async def test_touch_refuses_a_bad_ttl_and_keeps_the_entry(harness: StoreHarness) -> None:
    await harness.store.set("k", "v", ttl=60)
    before = await harness.store.get("k")
    with pytest.raises(InvalidTTLError):
        await harness.store.touch("k", -5)
    assert (await harness.store.get("k")).expires_at == before.expires_at


async def test_touch_leaves_an_entry_already_returned_as_it_was(
    local_harness: StoreHarness,
) -> None:
    await local_harness.store.set("k", "v", ttl=10)
    held = await local_harness.store.get("k")
    expires = held.expires_at
    await local_harness.store.touch("k", 100)
    assert held.expires_at == expires
    local_harness.store._core._check()


# -- a third-party store gets the derived versions ------------------------------------------


class DictStore(BaseMemoryStore[Any]):
    """The four methods a third-party store writes, over a dict (no expiry)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def get(self, key: str) -> Any:
        return self.data.get(key)

    async def set(self, key: str, value: Any, ttl: Any = None, metadata: Any = None) -> None:
        from memkv import MemoryEntry

        self.data[key] = MemoryEntry(key, value, metadata=metadata)

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def scan(self, pattern: str | None = None, batch_size: int = 100) -> Any:
        for key in list(self.data):
            yield key


async def test_a_third_party_store_derives_get_or_set_add_and_touch() -> None:
    store = DictStore()
    factory = Factory("v", seconds=0.02)
    entries = await asyncio.gather(*[store.get_or_set("k", factory) for _ in range(10)])
    assert factory.calls == 1
    assert {entry.value for entry in entries} == {"v"}
    assert await store.add("k", "other") is False
    assert await store.add("new", "x") is True
    assert await store.touch("k", 10) is True
    assert await store.touch("nope", 10) is False
    assert store.stats().flights.factory_calls == 1
    await store.close()


# -- MemoryManager ---------------------------------------------------------------------------


async def test_manager_routes_get_or_set_add_and_touch_to_the_named_store() -> None:
    async with MemoryManager[Any]() as manager:
        first, second = LocalMemoryStore[Any](), LocalMemoryStore[Any]()
        manager.register_store("first", first, default=True)
        manager.register_store("second", second)
        entry = await manager.get_or_set("k", Factory("v"), ttl=60, store="second")
        assert entry.value == "v"
        assert await first.get("k") is None
        assert await manager.add("k", "w") is True
        assert await manager.add("k", "w", store="second") is False
        assert await manager.touch("k", None, store="second") is True


# -- @cached ---------------------------------------------------------------------------------


async def test_cached_calls_the_function_once_per_argument_and_binds_them(
    harness: StoreHarness,
) -> None:
    calls: list[tuple[int, int]] = []

    @cached(harness.store, ttl=60)
    async def add(x: int, y: int = 2) -> int:
        calls.append((x, y))
        return x + y

    assert await add(1) == 3
    assert await add(x=1) == 3
    assert await add(1, 2) == 3
    assert await add(1, y=2) == 3
    assert await add(2) == 4
    assert calls == [(1, 2), (2, 2)]
    assert add.key_for(1) == add.key_for(x=1, y=2) == f"{__name__}:{add.__qualname__}(i1,i2)"


async def test_cached_concurrent_calls_run_the_function_once(harness: StoreHarness) -> None:
    factory = Factory("v", seconds=0.05)

    @cached(harness.store, ttl=60)
    async def slow(name: str) -> Any:
        return await factory()

    assert set(await asyncio.gather(*[slow("a") for _ in range(200)])) == {"v"}
    assert factory.calls == 1


async def test_cached_invalidate_drops_the_entry_of_those_arguments(
    harness: StoreHarness,
) -> None:
    calls = 0

    @cached(harness.store, ttl=60)
    async def fetch(name: str) -> str:
        nonlocal calls
        calls += 1
        return f"{name}-{calls}"

    assert await fetch("a") == "a-1"
    assert await fetch("b") == "b-2"
    assert await fetch.invalidate(name="a") is True
    assert await fetch.invalidate("a") is False
    assert await fetch("a") == "a-3"
    assert await fetch("b") == "b-2"


async def test_cached_refreshes_in_the_background(harness: StoreHarness) -> None:
    versions = iter(range(100))

    @cached(harness.store, ttl=5, refresh_after=0.2)
    async def version() -> int:
        return next(versions)

    assert await version() == 0
    await harness.advance(0.3)
    assert await version() == 0  # stale, returned at once
    for _ in range(100):
        if fills_in_flight(harness.store) == 0:
            break
        await asyncio.sleep(0.02)
    assert await version() == 1


class Colour(enum.Enum):
    RED = "red"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (None, "N"),
        (True, "T"),
        (False, "F"),
        (1, "i1"),
        (-7, "i-7"),
        (1.0, "f1.0"),
        (float("inf"), "finf"),
        ("", "s0:"),
        ("a,b)", "s4:a,b)"),
        (b"\x00\xff", "b00ff"),
        ((1, "x"), "t(i1,s1:x)"),
        ([1, [2]], "l(i1,l(i2))"),
        ({"b": 1, "a": 2}, "d(s1:a=i2,s1:b=i1)"),
        (frozenset({3, 1}), "z(i1,i3)"),
        ({2, 1}, "z(i1,i2)"),
        (Colour.RED, f"e{len(__name__) + 11}:{__name__}:Colour.RED"),
        (10**50 - 1, "i" + "9" * 50),
        (10**50, f"x{10**50:x}"),
        (-(2**1000), "x-1" + "0" * 250),
        (-0.0, "f-0.0"),
        (float("nan"), "fnan"),
    ],
)
def test_encode_value_is_canonical(value: Any, encoded: str) -> None:
    assert encode_value(value) == encoded


def test_cached_keys_are_the_same_in_another_process_with_another_hash_seed() -> None:
    script = (
        "from memkv import LocalMemoryStore, cached\n"
        "@cached(LocalMemoryStore())\n"
        "async def f(a, b, c):\n"
        "    return 1\n"
        "f.__qualname__ = 'f'\n"
        "print(f.key_for({'x': 1, 'y': (2, 3.5)}, frozenset({'p', 'q', 'r'}), b'z'))\n"
    )
    keys = set()
    for seed in ("1", "2", "3"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": MEMKV_PATH},
            check=True,
        )
        keys.add(done.stdout.strip())
    assert len(keys) == 1, keys


async def test_cached_refuses_arguments_it_cannot_encode_naming_them() -> None:
    store = LocalMemoryStore[Any]()

    @cached(store)
    async def describe(label: str, thing: object) -> str:
        return label

    with pytest.raises(InvalidKeyError, match="'thing'"):
        await describe("x", object())
    with pytest.raises(InvalidKeyError, match="'thing'"):
        await describe("x", [1, {2: object()}])
    assert len(store) == 0


async def test_cached_with_key_uses_the_key_it_returns() -> None:
    store = LocalMemoryStore[Any]()

    @cached(store, key=lambda user, session: f"user:{user.id}")
    async def profile(user: Any, session: object) -> str:
        return f"profile-{user.id}"

    class User:
        id = 7

    assert await profile(User(), object()) == "profile-7"
    assert (await store.get("user:7")).value == "profile-7"


async def test_cached_key_function_must_return_a_str() -> None:
    @cached(LocalMemoryStore[Any](), key=lambda x: x)
    async def echo(x: Any) -> Any:
        return x

    with pytest.raises(InvalidKeyError):
        await echo(1)


async def test_cached_methods_leave_self_out_of_the_key() -> None:
    store = LocalMemoryStore[Any]()
    computed: list[str] = []

    class Repository:
        def __init__(self, name: str) -> None:
            self.name = name

        @cached(store, ttl=60)
        async def find(self, item: str) -> str:
            computed.append(self.name)
            return f"{item} via {self.name}"

    first, second = Repository("first"), Repository("second")
    assert await first.find("x") == "x via first"
    assert await second.find("x") == "x via first"
    assert computed == ["first"]
    assert Repository.find.key_for("x") == f"{__name__}:{Repository.find.__qualname__}(s1:x)"
    assert await Repository.find.invalidate("x") is True
    assert await second.find("x") == "x via second"


async def test_cached_accepts_a_manager_and_uses_its_default_store() -> None:
    async with MemoryManager[Any]() as manager:
        store = LocalMemoryStore[Any]()
        manager.register_store("main", store, default=True)

        @cached(manager, ttl=60)
        async def double(x: int) -> int:
            return 2 * x

        assert await double(4) == 8
        assert (await store.get(double.key_for(4))).value == 8


def test_cached_refuses_a_function_that_is_not_async() -> None:
    with pytest.raises(InvalidArgumentError, match="async def"):

        @cached(LocalMemoryStore[Any]())  # type: ignore[arg-type]
        def plain(x: int) -> int:
            return x


async def _echo(x: int) -> int:
    return x


@pytest.mark.parametrize(
    ("wrapped", "message"),
    [
        (staticmethod(_echo), "@staticmethod above @cached"),
        (classmethod(_echo), "@classmethod above @cached"),
        (functools.partial(_echo, 1), "decorate the async def itself"),
    ],
    ids=["staticmethod", "classmethod", "partial"],
)
def test_cached_refuses_wrappers_of_an_async_def_with_a_typed_error(
    wrapped: Any, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        cached(LocalMemoryStore[Any]())(wrapped)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"store": "memory://"}, InvalidArgumentError),
        ({"ttl": -1}, InvalidTTLError),
        ({"ttl": 10, "refresh_after": 10}, InvalidTTLError),
        ({"key": "not callable"}, InvalidArgumentError),
        ({"ttl_jitter": 2}, InvalidArgumentError),
    ],
)
def test_cached_refuses_bad_options_at_decoration(
    arguments: dict[str, Any], error: type[Exception]
) -> None:
    options: dict[str, Any] = {"store": LocalMemoryStore[Any](), **arguments}
    with pytest.raises(error):
        cached(**options)


# -- Redis: the lease across processes --------------------------------------------------------


def run_workers(
    mode: str,
    url: str,
    namespace: str,
    counter: str,
    processes: int,
    callers: int,
    seconds: float,
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    start = time.time() + 2.0  # every worker imported and connected before the first call
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.idioms_worker",
                mode,
                url,
                namespace,
                "k",
                counter,
                str(callers),
                str(seconds),
                str(start),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": MEMKV_PATH, **(env or {})},
        )
        for _ in range(processes)
    ]
    results = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


async def redis_counter(url: str, counter: str) -> int:
    from memkv.redis import RedisMemoryStore

    async with RedisMemoryStore(url) as store:
        count = int(await store.client.get(counter) or 0)
        await store.client.delete(counter)
        return count


async def test_4_processes_of_250_callers_share_one_factory_run_on_redis(redis_url: str) -> None:
    namespace, counter = unique_namespace(), f"{unique_namespace()}-runs"
    results = await asyncio.to_thread(
        run_workers, "fill", redis_url, namespace, counter, 4, 250, 0.2
    )
    assert await redis_counter(redis_url, counter) == 1
    assert len({value for result in results for value in result["values"]}) == 1
    # Each process that found the lease taken waited (one found the entry already written
    # if it started late on a busy machine).
    assert sum(result["lease_waits"] for result in results) <= 3


async def test_4_processes_adding_one_key_have_exactly_one_winner_on_redis(
    redis_url: str,
) -> None:
    namespace, counter = unique_namespace(), "unused"
    results = await asyncio.to_thread(
        run_workers, "add", redis_url, namespace, counter, 4, 100, 0.0
    )
    assert sum(result["won"] for result in results) == 1


async def test_a_lease_of_a_killed_holder_expires_and_another_process_computes(
    redis_url: str,
) -> None:
    from memkv.redis import RedisMemoryStore

    namespace, counter = unique_namespace(), f"{unique_namespace()}-runs"
    holder = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.idioms_worker", "hold", redis_url, namespace, "k"),
        *(counter, "1", "0", "0"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": MEMKV_PATH, "MEMKV_TEST_LEASE_TTL": "0.6"},
    )
    assert holder.stdout is not None
    line = await asyncio.wait_for(holder.stdout.readline(), 30)
    assert json.loads(line) == {"held": True}
    holder.kill()
    await holder.wait()
    async with RedisMemoryStore(redis_url, namespace=namespace) as store:
        started = time.monotonic()
        entry = await store.get_or_set("k", Factory("recomputed"), ttl=60)
        waited = time.monotonic() - started
        assert entry.value == "recomputed"
        assert store.stats().flights.lease_waits == 1
        assert 0.1 < waited < 3.0
    assert await redis_counter(redis_url, counter) == 1


async def test_lease_keys_stay_out_of_scan_and_clear(redis_harness: StoreHarness) -> None:
    store: Any = redis_harness.store
    await store.set("user", 1)
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "v"

    filling = asyncio.create_task(store.get_or_set("k", slow, ttl=60))
    await started.wait()
    lease_key = b"\xffmemkv-lease:" + store.namespace.encode() + b":k"
    assert await store.client.exists(lease_key) == 1
    assert [key async for key in store.scan()] == ["user"]
    assert await store.clear() == 1
    assert (await filling).value == "v"
    assert await store.client.exists(lease_key) == 0


async def test_a_redis_fill_waits_on_a_foreign_lease_then_computes_when_it_expires(
    redis_harness: StoreHarness,
) -> None:
    store: Any = redis_harness.store
    lease_key = b"\xffmemkv-lease:" + store.namespace.encode() + b":k"
    await store.client.set(lease_key, b"someone else", px=400)
    entry = await store.get_or_set("k", Factory("mine"), ttl=60)
    assert entry.value == "mine"
    assert store.stats().flights.lease_waits == 1


async def test_a_hung_holder_stops_renewing_its_lease_and_another_store_computes(
    redis_harness: StoreHarness,
) -> None:
    # Two store objects share no in-process flight: they meet only at the lease, as two
    # processes do. The first one's factory hangs while its process stays alive.
    first: Any = redis_harness.store
    second: Any = await redis_harness.make(namespace=first.namespace)
    redis_harness.opened.append(second)
    for store in (first, second):
        store.lease_ttl, store.max_lease_hold = 0.3, 0.6
    hung = asyncio.Event()

    async def never() -> str:
        hung.set()
        await asyncio.Event().wait()
        return "never"

    holder = asyncio.create_task(first.get_or_set("k", never, ttl=60))
    await hung.wait()
    started = time.monotonic()
    entry = await asyncio.wait_for(second.get_or_set("k", Factory("second"), ttl=60), 10)
    waited = time.monotonic() - started
    assert entry.value == "second"
    assert second.stats().flights.lease_waits == 1
    # Renewed for max_lease_hold, then left to expire: not before, and not for ever.
    assert 0.4 < waited < 5.0
    holder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holder


async def test_a_redis_touch_of_a_foreign_value_raises_codec_error(
    redis_harness: StoreHarness,
) -> None:
    from memkv.errors import CodecError

    store: Any = redis_harness.store
    await store.client.set(store.namespace.encode() + b":foreign", b"plain")
    with pytest.raises(CodecError):
        await store.touch("foreign", 10)


# -- exporters ---------------------------------------------------------------------------------


async def test_prometheus_exports_the_flight_events_of_each_store() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from memkv.metrics.prometheus import StoreCollector

    store = LocalMemoryStore[Any]()
    factory = Factory("v", seconds=0.01)
    await asyncio.gather(*[store.get_or_set("k", factory) for _ in range(3)])
    registry = CollectorRegistry()
    registry.register(StoreCollector({"main": store}))
    text = generate_latest(registry).decode()
    assert 'memkv_flight_events_total{event="factory_call",store="main"} 1.0' in text
    assert 'memkv_flight_events_total{event="wait",store="main"} 2.0' in text
    assert 'memkv_operations_total{operation="get_or_set",result="miss",store="main"} 3.0' in text


async def test_opentelemetry_observes_the_flight_events_of_each_store() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from memkv.metrics.otel import instrument

    store = LocalMemoryStore[Any]()
    await store.get_or_set("k", Factory("v"))
    reader = InMemoryMetricReader()
    instrument(MeterProvider(metric_readers=[reader]).get_meter("test"), {"main": store})
    data = reader.get_metrics_data()
    points = {
        point.attributes["event"]: point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "memkv.flight_events"
        for point in metric.data.data_points
    }
    assert points["factory_call"] == 1
    assert points["refresh"] == 0


async def test_cached_wrapper_keeps_defaults_keywords_and_a_float_argument() -> None:
    store = LocalMemoryStore[Any]()
    calls: list[tuple[Any, ...]] = []

    @cached(store, ttl=60)
    async def scale(value: float, factor: float = 2.0, label: str | None = None) -> float:
        calls.append((value, factor, label))
        return value * factor

    assert await scale(1.5) == 3.0
    assert await scale(value=1.5, factor=2.0) == 3.0
    assert await scale(1, 2.0) == 2
    assert await scale(-0.0) == -0.0
    assert await scale(0.0) == 0.0
    assert calls == [(1.5, 2.0, None), (1, 2.0, None), (-0.0, 2.0, None), (0.0, 2.0, None)]
    with pytest.raises(TypeError):
        await scale()  # type: ignore[call-arg]


def test_encode_value_refuses_what_it_cannot_encode_with_a_typed_error() -> None:
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    looped: list[Any] = []
    looped.append(looped)
    for value in (object(), bytearray(b"x"), nested, looped, {1: {2: object()}}):
        with pytest.raises(InvalidKeyError):
            encode_value(value)


async def test_cached_keys_of_equal_arguments_of_other_types_differ() -> None:
    store = LocalMemoryStore[Any]()

    @cached(store)
    async def echo(x: Any) -> str:
        return repr(x)

    for value in (1, True, 1.0, "1", b"1", (1,), [1], {1}, frozenset({1}) | {2}, {1: 1}):
        assert await echo(value) == repr(value)


async def test_cached_key_of_an_int_past_the_str_digit_limit_is_its_hex() -> None:
    store = LocalMemoryStore[Any]()

    @cached(store)
    async def double(x: int, y: int = 0) -> int:
        return 2 * x

    huge = 10**5000  # no decimal text under sys.get_int_max_str_digits()'s default
    assert await double(huge) == 2 * huge
    assert await double(-huge, 1) == -2 * huge
    assert await double(huge) == 2 * huge
    assert len(store) == 2


async def test_cached_functions_of_a_module_and_a_same_named_class_do_not_share_keys() -> None:
    store = LocalMemoryStore[Any]()

    async def in_module(x: int) -> str:
        return "module a.b, function f"

    async def in_class(x: int) -> str:
        return "module a, class b, method f"

    in_module.__module__, in_module.__qualname__ = "a.b", "f"
    in_class.__module__, in_class.__qualname__ = "a", "b.f"
    module_f, class_f = cached(store)(in_module), cached(store)(in_class)
    assert module_f.key_for(1) != class_f.key_for(1)
    assert await module_f(1) == "module a.b, function f"
    assert await class_f(1) == "module a, class b, method f"


async def test_cached_function_may_name_its_parameters_type_and_str() -> None:
    store = LocalMemoryStore[Any]()

    @cached(store)
    async def kind(type: str) -> str:
        return f"kind {type}"

    @cached(store)
    async def pair(str: str, type: int = 1) -> str:
        return f"{str}/{type}"

    assert [await kind("a"), await kind("a"), await kind(type="b")] == ["kind a"] * 2 + ["kind b"]
    assert [await pair("x"), await pair("x", 2), await pair("x")] == ["x/1", "x/2", "x/1"]


async def test_cached_wrapper_keeps_the_functions_metadata() -> None:
    store = LocalMemoryStore[Any]()

    async def lookup(item: str, *, limit: int = 3) -> list[str]:
        """Look an item up."""
        return [item] * limit

    lookup.marker = "kept"  # type: ignore[attr-defined]
    for function in (lookup, test_cached_function_without_arguments_has_one_entry):
        wrapped = cached(store)(function)
        for name in ("__module__", "__name__", "__qualname__", "__doc__", "__annotations__"):
            assert getattr(wrapped, name) == getattr(function, name), name
        assert wrapped.__wrapped__ is function  # type: ignore[attr-defined]
        assert inspect.signature(wrapped) == inspect.signature(function)
    assert cached(store)(lookup).marker == "kept"  # type: ignore[attr-defined]


async def test_cached_function_without_arguments_has_one_entry() -> None:
    store = LocalMemoryStore[Any]()
    calls = 0

    @cached(store)
    async def constant() -> int:
        nonlocal calls
        calls += 1
        return 42

    assert [await constant() for _ in range(3)] == [42, 42, 42]
    assert calls == 1
    assert constant.key_for() == f"{__name__}:{constant.__qualname__}()"
