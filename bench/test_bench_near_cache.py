"""The near cache of ``RedisMemoryStore`` (issue 11): hot reads, invalidation delay, memory.

Same-run ratios, in alternating bursts (bench/test_bench_redis.py's ``paired``):

- a hot ``get`` through a near-cached Redis store vs ``LocalMemoryStore.get`` (goal
  >= 0.5x) and vs the same Redis store without a near cache;
- the time from another client's write returning to the store no longer serving the old
  value (p99 over 1,000 writes, loopback; goal <= 5 ms): the writer is a second
  connection on the same event loop, the reader polls ``get`` between event-loop turns;
- memory of a near cache of N entries vs a ``LocalMemoryStore`` of the same N entries
  (tracemalloc).

Goals are reported, never asserted; ``MEMKV_BENCH_GATE=1`` shrinks the runs.

    pytest bench/test_bench_near_cache.py -p no:randomly
"""

from __future__ import annotations

import asyncio
import statistics
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from bench.conftest import Figure, record
from bench.test_bench_redis import BURST, GATE, VALUE, Burst, paired, report
from memkv import LocalMemoryStore
from memkv.redis import RedisMemoryStore
from memkv.redis.transport import Connection, ConnectionSpec

pytestmark = pytest.mark.redis

#: Keys read in the hot-get bursts, and entries in the memory figure.
HOT_KEYS = 100
MEMORY_ENTRIES = 2_000 if GATE else 20_000
WRITES = 200 if GATE else 1_000


@pytest.fixture
def near(runner: asyncio.Runner, url: str) -> Iterator[RedisMemoryStore[Any]]:
    opened: RedisMemoryStore[Any] = RedisMemoryStore(
        url, namespace="bench-near", near_cache=MEMORY_ENTRIES
    )
    yield opened
    runner.run(opened.clear())
    runner.run(opened.close())


def gets(store: Any, keys: list[str]) -> Burst:
    async def burst(ops: int) -> None:
        get = store.get
        count = len(keys)
        for index in range(ops):
            await get(keys[index % count])

    return burst


def test_hot_get_through_the_near_cache_vs_a_local_store(
    benchmark: Any, runner: asyncio.Runner, near: Any
) -> None:
    keys = [f"hot:{index}" for index in range(HOT_KEYS)]
    runner.run(near.set_many(dict.fromkeys(keys, VALUE)))
    local: LocalMemoryStore[Any] = LocalMemoryStore()
    runner.run(local.set_many(dict.fromkeys(keys, VALUE)))
    result = runner.run(paired(gets(near, keys), gets(local, keys), BURST * 20))
    report(
        benchmark,
        "hot get, near cache vs LocalMemoryStore",
        "near-cached get",
        "LocalMemoryStore.get",
        result,
        0.5,
    )
    assert near.stats().near_cache.hits > 0
    benchmark.pedantic(lambda: runner.run(gets(near, keys)(BURST)), rounds=3, iterations=1)


def test_hot_get_through_the_near_cache_vs_plain_redis(
    benchmark: Any, runner: asyncio.Runner, near: Any, url: str
) -> None:
    keys = [f"hot:{index}" for index in range(HOT_KEYS)]
    runner.run(near.set_many(dict.fromkeys(keys, VALUE)))
    plain: RedisMemoryStore[Any] = RedisMemoryStore(url, namespace="bench-near")
    try:
        result = runner.run(paired(gets(near, keys), gets(plain, keys), BURST))
        report(benchmark, "hot get, near cache vs plain Redis", "near", "plain", result, 50)
        benchmark.pedantic(lambda: runner.run(gets(near, keys)(BURST)), rounds=3, iterations=1)
    finally:
        runner.run(plain.close())


def test_time_until_another_clients_write_stops_being_served(
    benchmark: Any, runner: asyncio.Runner, near: Any, url: str
) -> None:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)

    async def measure() -> list[float]:
        writer = await Connection.open(ConnectionSpec(host=host, port=int(port)))
        delays: list[float] = []
        try:
            await near.set("k", 0)
            raw_key = b"bench-near:k"
            for write in range(1, WRITES + 1):
                await near.get("k")  # cached (or filled now)
                await near.get("k")
                # The envelope of the new value, written raw as any other client would.
                await near.set("scratch", write)
                envelope = await writer.execute(b"GET", b"bench-near:scratch")
                await writer.execute(b"SET", raw_key, envelope)
                returned = time.perf_counter()
                while True:
                    entry = await near.get("k")
                    if entry is not None and entry.value == write:
                        break
                    await asyncio.sleep(0)
                delays.append(time.perf_counter() - returned)
        finally:
            writer.close()
        return delays

    delays = runner.run(measure())
    delays.sort()
    p99 = delays[len(delays) * 99 // 100 - 1]
    median = statistics.median(delays)
    record(
        Figure(
            f"Near cache: write returned -> old value gone (p99 of {len(delays)})",
            f"p99 {p99 * 1e3:.2f} ms",
            f"median {median * 1e3:.2f} ms",
            "",
            "<= 5 ms",
            p99 <= 0.005,
        )
    )
    benchmark.extra_info.update({"p99_ms": p99 * 1e3, "median_ms": median * 1e3})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_memory_of_a_near_cache_vs_a_local_store(
    benchmark: Any, runner: asyncio.Runner, near: Any
) -> None:
    keys = [f"mem:{index:06d}" for index in range(MEMORY_ENTRIES)]
    values = {key: {"id": index, "name": f"user-{index}"} for index, key in enumerate(keys)}
    runner.run(near.set_many(values))

    async def fill_near() -> None:
        for start in range(0, len(keys), 500):
            await near.get_many(keys[start : start + 500])

    async def fill_local() -> LocalMemoryStore[Any]:
        local: LocalMemoryStore[Any] = LocalMemoryStore()
        for index, key in enumerate(keys):
            await local.set(key, {"id": index, "name": f"user-{index}"})
        return local

    # The near cache's copies are decoded from the server, so they own their values;
    # the local store's values are built inside the traced window as well.
    del values
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        runner.run(fill_near())
        near_bytes = tracemalloc.get_traced_memory()[0] - before
        before = tracemalloc.get_traced_memory()[0]
        local = runner.run(fill_local())
        local_bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert near.stats().near_cache.entries == MEMORY_ENTRIES
    assert len(local) == MEMORY_ENTRIES
    ratio = near_bytes / local_bytes
    record(
        Figure(
            f"Near cache memory, {MEMORY_ENTRIES:,} entries (small dict values)",
            f"{near_bytes / MEMORY_ENTRIES:.0f} B/entry",
            f"LocalMemoryStore {local_bytes / MEMORY_ENTRIES:.0f} B/entry",
            f"{ratio:.2f}x",
            "~ 1x",
            None,
        )
    )
    benchmark.extra_info.update({"ratio": ratio})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
