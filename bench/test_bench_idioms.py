"""Benchmarks of the caching idioms (issue 12): ``@cached`` hits and refresh-ahead latency.

Each figure is a ratio against a baseline timed in the same run, in alternating bursts
(``bench/conftest.py``): a ``@cached`` hit against a plain awaited ``store.get`` of the
same entry, against aiocache's ``@cached`` and cashews' ``@cache`` hits (the ``peers``
extra), and the callers' p99 latency on a key kept fresh by ``refresh_after`` against
the same callers doing a plain ``get``.

``pytest bench/test_bench_idioms.py -p no:randomly``
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bench.conftest import GATE, Figure, assert_floor, paired, rate, record, run_fresh
from bench.test_bench_local import store_on
from memkv import LocalMemoryStore, cached

#: Distinct arguments called in a burst, and calls per burst.
ARGUMENTS = 1_000
CALLS = 20_000 if GATE else 100_000


def arguments() -> list[str]:
    return [f"prompt-{i:06d}" for i in range(ARGUMENTS)]


def call_order() -> list[str]:
    rng = random.Random(12)
    names = arguments()
    return [rng.choice(names) for _ in range(CALLS)]


def burst(
    loop: asyncio.AbstractEventLoop, call: Callable[[str], Awaitable[Any]], order: list[str]
) -> Callable[[], Any]:
    async def run() -> None:
        for argument in order:
            await call(argument)

    return run_fresh(loop, run)


async def call_each(decorated: Callable[[str], Awaitable[Any]]) -> None:
    """Fill: one call per argument."""
    for name in arguments():
        await decorated(name)


async def answer(prompt: str) -> str:
    return prompt.upper()


def hits_vs_gets(
    loop: asyncio.AbstractEventLoop, store: Any, complete: Any
) -> tuple[list[str], float, float]:
    """Fill ``complete``'s entries, then time its hits against awaited ``get``s of the
    same entries (alternate rounds): the call order and both times."""
    order = call_order()
    loop.run_until_complete(call_each(complete))
    keys = [complete.key_for(name) for name in order]

    async def plain_gets() -> None:
        get = store.get
        for key in keys:
            await get(key)

    subject, baseline = paired(burst(loop, complete, order), run_fresh(loop, plain_gets))
    return order, subject, baseline


@pytest.mark.parametrize("core_name", ["cython", "python"])
def test_cached_hit_vs_a_plain_get_of_the_same_entry(
    benchmark: Any, loop: asyncio.AbstractEventLoop, core_name: str
) -> None:
    store = store_on(core_name)

    @cached(store, ttl=3600)
    async def complete(prompt: str) -> str:
        return await answer(prompt)

    order, subject, baseline = hits_vs_gets(loop, store, complete)
    ratio = subject / baseline
    goal = core_name == "cython"
    record(
        Figure(
            f"`@cached` hit vs awaited `get` of its entry (one str argument), {core_name} core",
            rate(CALLS / subject),
            rate(CALLS / baseline),
            f"{ratio:.2f}x the time",
            "<= 2.0x the time" if goal else "reference",
            ratio <= 2.0 if goal else None,
        )
    )
    assert_floor(CALLS, subject)
    benchmark.extra_info["time_ratio_vs_get"] = ratio
    benchmark.pedantic(burst(loop, complete, order), rounds=1 if GATE else 3)


def test_cached_hit_of_two_arguments_vs_a_plain_get(
    benchmark: Any, loop: asyncio.AbstractEventLoop
) -> None:
    """The general key path (bind, defaults, encoding), for reference."""
    store = store_on("cython")

    @cached(store, ttl=3600)
    async def complete(prompt: str, temperature: float = 0.0) -> str:
        return await answer(prompt)

    order, subject, baseline = hits_vs_gets(loop, store, complete)
    ratio = subject / baseline
    record(
        Figure(
            "`@cached` hit vs awaited `get`, two arguments (one defaulted), cython core",
            rate(CALLS / subject),
            rate(CALLS / baseline),
            f"{ratio:.2f}x the time",
            "reference",
            None,
        )
    )
    assert_floor(CALLS, subject)
    benchmark.pedantic(burst(loop, complete, order), rounds=1)


@pytest.mark.parametrize("peer", ["aiocache", "cashews"])
def test_cached_hit_vs_peer_decorator_hits(
    benchmark: Any, loop: asyncio.AbstractEventLoop, peer: str
) -> None:
    pytest.importorskip(peer)  # the peers extra: pip install "memkv[peers]"
    store: LocalMemoryStore[Any] = LocalMemoryStore()

    @cached(store, ttl=3600)
    async def ours(prompt: str) -> str:
        return await answer(prompt)

    computed = 0

    async def counted(prompt: str) -> str:
        nonlocal computed
        computed += 1
        return await answer(prompt)

    theirs: Callable[[str], Awaitable[str]]
    if peer == "aiocache":
        from aiocache import cached as aiocache_cached

        theirs = aiocache_cached(ttl=3600)(counted)
    else:
        from cashews import Cache

        cache = Cache()
        cache.setup("mem://")
        theirs = cache(ttl="1h")(counted)
    order = call_order()
    for decorated in (ours, theirs):
        loop.run_until_complete(call_each(decorated))
    subject, baseline = paired(burst(loop, ours, order), burst(loop, theirs, order))
    assert computed == ARGUMENTS, "the peer must serve every timed call from its cache"
    ratio = baseline / subject
    record(
        Figure(
            f"`@cached` hit vs {peer} `@{'cached' if peer == 'aiocache' else 'cache'}` hit",
            rate(CALLS / subject),
            rate(CALLS / baseline),
            f"{ratio:.2f}x faster",
            "> 1x (memkv ahead)",
            ratio > 1.0,
        )
    )
    assert_floor(CALLS, subject)
    benchmark.pedantic(burst(loop, ours, order), rounds=1)


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def readers(read: Callable[[], Awaitable[Any]], seconds: float, tasks: int) -> list[float]:
    """``tasks`` tasks calling ``read`` for ``seconds`` (5 ms apart); every call's latency."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []

    async def reader() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await read()
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)

    await asyncio.gather(*[reader() for _ in range(tasks)])
    return latencies


def test_refresh_after_keeps_callers_latency_low(
    benchmark: Any, loop: asyncio.AbstractEventLoop
) -> None:
    """50 tasks read one key for 2.5 s: 1 s TTL, refreshed after 0.3 s by a 50 ms
    factory; baseline: the same tasks reading a key that never expires with ``get``."""
    store = store_on("cython")
    calls = 0

    async def factory() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "fresh"

    async def refreshed() -> Any:
        return await store.get_or_set("hot", factory, ttl=1.0, refresh_after=0.3)

    async def plain() -> Any:
        return await store.get("permanent")

    loop.run_until_complete(store.set("permanent", "v"))
    seconds = 1.0 if GATE else 2.5
    subject = loop.run_until_complete(readers(refreshed, seconds, 50))
    baseline = loop.run_until_complete(readers(plain, seconds, 50))
    ours, theirs = p99(subject), p99(baseline)
    windows = seconds / 0.35  # 0.3 s of age, then the 50 ms factory
    record(
        Figure(
            f"`get_or_set(refresh_after=0.3)` p99 latency, 50 tasks, {seconds} s "
            f"({calls} factory calls for ~{windows:.0f} refresh windows + 1 fill)",
            f"{ours * 1e3:.2f} ms",
            f"{theirs * 1e3:.2f} ms (plain `get` of a permanent key)",
            f"{ours / theirs:.2f}x",
            "p99 <= 20 ms",
            ours <= 0.020,
        )
    )
    benchmark.extra_info.update({"p99_ms": ours * 1e3, "factory_calls": calls})
    benchmark.pedantic(lambda: loop.run_until_complete(refreshed()), rounds=1)
