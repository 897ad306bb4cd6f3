"""RedisMemoryStore against raw redis-py, aiocache and cashews on the same server.

Single runs on a shared machine vary by +-50 %, so every comparison runs the two
clients in alternating bursts (A B B A A B ...) in the same event loop and reports the
median of the per-pair ratios, in the table bench/conftest.py prints at the end and in
pytest-benchmark's ``extra_info``. Goals are reported, never asserted; with
``MEMKV_BENCH_GATE=1`` runs are short and only a lenient floor is asserted (> 1k ops/s
through the store: a Redis round trip, unlike the local store, is not sub-10-microsecond).

    pytest bench/test_bench_redis.py -p no:randomly
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.redis_servers import RedisServer, server_binary, start_cluster

from bench.conftest import Figure, record
from memkv.redis import RedisMemoryStore

pytestmark = pytest.mark.redis

GATE = bool(os.environ.get("MEMKV_BENCH_GATE"))
#: Alternating pairs per comparison, and operations per burst.
PAIRS = 2 if GATE else 9
BURST = 200 if GATE else 2000
CONCURRENCY = 50
FLOOR_OPS = 1_000
VALUE = {"id": 12345, "name": "Ada Lovelace", "tags": ["math", "engines"], "score": 97.5}


Burst = Callable[[int], Awaitable[None]]


async def paired(first: Burst, second: Burst, ops: int) -> tuple[float, float, float]:
    """Median ops/s of ``first`` and ``second`` and the median of their per-pair ratio."""
    await first(ops // 10)  # warm connections, script cache and code paths
    await second(ops // 10)
    first_rates, second_rates, ratios = [], [], []
    for index in range(PAIRS):
        order = [(first, first_rates), (second, second_rates)]
        for burst, rates in order if index % 2 == 0 else reversed(order):
            started = time.perf_counter()
            await burst(ops)
            rates.append(ops / (time.perf_counter() - started))
        ratios.append(first_rates[-1] / second_rates[-1])
    return (
        statistics.median(first_rates),
        statistics.median(second_rates),
        statistics.median(ratios),
    )


def report(
    benchmark: Any,
    figure: str,
    ours: str,
    theirs: str,
    result: tuple[float, float, float],
    goal: float | None,
) -> None:
    """Record a figure for the session table (bench/conftest.py) and benchmark's JSON."""
    ours_rate, their_rate, ratio = result
    record(
        Figure(
            f"Redis: {figure}",
            f"{ours} {ours_rate:,.0f}/s",
            f"{theirs} {their_rate:,.0f}/s",
            f"{ratio:.2f}x",
            "" if goal is None else f">= {goal:g}x",
            None if goal is None else ratio >= goal,
        )
    )
    benchmark.extra_info.update(
        {"ops_per_s": round(ours_rate), "peer_ops_per_s": round(their_rate), "ratio": ratio}
    )
    if GATE:
        assert ours_rate > FLOOR_OPS, f"{figure}: {ours_rate:.0f} ops/s"


def run_once(benchmark: Any, runner: asyncio.Runner, burst: Burst, ops: int) -> None:
    """Let pytest-benchmark time one burst of ours too (a single round when disabled)."""
    benchmark.pedantic(lambda: runner.run(burst(ops)), rounds=3, iterations=1)


@pytest.fixture
def store(runner: asyncio.Runner, url: str) -> Iterator[RedisMemoryStore[Any]]:
    opened: RedisMemoryStore[Any] = RedisMemoryStore(url, namespace="bench")
    yield opened
    runner.run(opened.clear())
    runner.run(opened.close())


@pytest.fixture
def raw(runner: asyncio.Runner, url: str) -> Iterator[Any]:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    yield client
    runner.run(client.aclose())


def test_get_vs_raw_redis_py(benchmark: Any, runner: asyncio.Runner, store: Any, raw: Any) -> None:
    runner.run(store.set("k", VALUE))
    envelope = runner.run(raw.get(b"bench:k"))
    runner.run(raw.set(b"raw:k", envelope))

    async def ours(ops: int) -> None:
        get = store.get
        for _ in range(ops):
            await get("k")

    async def theirs(ops: int) -> None:
        get = raw.get
        for _ in range(ops):
            await get(b"raw:k")

    result = runner.run(paired(ours, theirs, BURST))
    report(benchmark, "get vs raw GET, one connection", "store.get", "redis-py GET", result, 0.8)
    run_once(benchmark, runner, ours, BURST // 4)


def test_get_with_latency_histograms_vs_without(
    benchmark: Any, runner: asyncio.Runner, store: Any, url: str
) -> None:
    """``record_latency()`` on a Redis store: its cost next to a network round trip."""
    timed: RedisMemoryStore[Any] = RedisMemoryStore(url, namespace="bench")
    timed.record_latency()
    runner.run(store.set("k", VALUE))

    def gets(target: RedisMemoryStore[Any]) -> Burst:
        async def burst(ops: int) -> None:
            get = target.get
            for _ in range(ops):
                await get("k")

        return burst

    try:
        result = runner.run(paired(gets(timed), gets(store), BURST))
        report(benchmark, "get with latency histograms vs without", "timed", "plain", result, None)
        run_once(benchmark, runner, gets(timed), BURST // 4)
    finally:
        runner.run(timed.close())


def test_set_vs_raw_redis_py(benchmark: Any, runner: asyncio.Runner, store: Any, raw: Any) -> None:
    runner.run(store.set("k", VALUE))
    envelope = runner.run(raw.get(b"bench:k"))

    async def ours(ops: int) -> None:
        set_ = store.set
        for index in range(ops):
            await set_(f"k{index % 100}", VALUE)

    async def theirs(ops: int) -> None:
        set_ = raw.set
        for index in range(ops):
            await set_(f"raw:k{index % 100}", envelope)

    result = runner.run(paired(ours, theirs, BURST))
    report(benchmark, "set vs raw SET, one connection", "store.set", "redis-py SET", result, 0.8)
    run_once(benchmark, runner, ours, BURST // 4)


def test_get_many_vs_sequential_gets(benchmark: Any, runner: asyncio.Runner, store: Any) -> None:
    keys = [f"m{index}" for index in range(100)]
    runner.run(store.set_many(dict.fromkeys(keys, VALUE)))

    async def batched(ops: int) -> None:
        for _ in range(ops // 100):
            await store.get_many(keys)

    async def sequential(ops: int) -> None:
        get = store.get
        for _ in range(ops // 100):
            for key in keys:
                await get(key)

    result = runner.run(paired(batched, sequential, BURST * 2))
    report(benchmark, "get_many(100) vs 100 gets (keys/s)", "get_many", "100 x get", result, 10)
    run_once(benchmark, runner, batched, BURST)


def test_concurrent_mixed_vs_raw(
    benchmark: Any, runner: asyncio.Runner, store: Any, raw: Any, request: pytest.FixtureRequest
) -> None:
    runner.run(store.set_many({f"c{index}": VALUE for index in range(100)}))
    envelope = runner.run(raw.get(b"bench:c0"))
    runner.run(raw.mset({f"raw:c{index}": envelope for index in range(100)}))

    def fan_out(one_task: Callable[[int, int], Awaitable[None]]) -> Burst:
        async def burst(ops: int) -> None:
            per_task = ops // CONCURRENCY
            await asyncio.gather(*(one_task(task, per_task) for task in range(CONCURRENCY)))

        return burst

    async def ours_task(task: int, ops: int) -> None:
        for index in range(ops):
            key = f"c{(task + index) % 100}"
            if index % 2:
                await store.set(key, VALUE)
            else:
                await store.get(key)

    async def raw_task(task: int, ops: int) -> None:
        for index in range(ops):
            key = f"raw:c{(task + index) % 100}"
            if index % 2:
                await raw.set(key, envelope)
            else:
                await raw.get(key)

    ours, theirs = fan_out(ours_task), fan_out(raw_task)
    result = runner.run(paired(ours, theirs, BURST * 5))
    report(benchmark, f"{CONCURRENCY} tasks mixed get/set", "store", "redis-py", result, 0.8)
    run_once(benchmark, runner, ours, BURST)
    # The ceiling is measured on the module's own server, not on a REDIS_URL one.
    ceiling = None if os.environ.get("REDIS_URL") else redis_benchmark_ceiling(request)
    if ceiling:
        record(Figure("Redis: redis-benchmark -c 50 (ceiling)", ceiling, "", "", "", None))
        benchmark.extra_info["redis_benchmark_c50"] = ceiling


def redis_benchmark_ceiling(request: pytest.FixtureRequest) -> str | None:
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        return None
    server: RedisServer = request.getfixturevalue("server")
    requests = "20000" if GATE else "200000"
    completed = subprocess.run(
        [binary, "-p", str(server.port), "-c", "50", "-t", "get,set", "-q", "-n", requests],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    rates = re.findall(r"(SET|GET): ([\d.]+) requests per second", completed.stdout)
    return ", ".join(f"{name} {float(rate):,.0f}/s" for name, rate in rates) or None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("operation", ["get", "set"])
def test_vs_aiocache_and_cashews(
    benchmark: Any, runner: asyncio.Runner, store: Any, url: str, operation: str
) -> None:
    from urllib.parse import urlsplit

    aiocache = pytest.importorskip("aiocache")
    cashews = pytest.importorskip("cashews")
    parts = urlsplit(url)
    peer_aiocache = aiocache.RedisCache(
        endpoint=parts.hostname, port=parts.port, namespace="aiocache"
    )
    peer_cashews = cashews.Cache()
    peer_cashews.setup(f"redis://{parts.hostname}:{parts.port}/0", client_side=False)

    async def prepare() -> None:
        await store.set("p", VALUE)
        await peer_aiocache.set("p", VALUE)
        await peer_cashews.set("cashews:p", VALUE)

    runner.run(prepare())

    def burst(call: Callable[[str], Awaitable[Any]]) -> Burst:
        async def run(ops: int) -> None:
            for _ in range(ops):
                await call("p")

        return run

    if operation == "get":
        ours = burst(store.get)
        peers = {"aiocache": burst(peer_aiocache.get), "cashews": burst(peer_cashews.get)}
    else:
        ours = burst(lambda key: store.set(key, VALUE))
        peers = {
            "aiocache": burst(lambda key: peer_aiocache.set(key, VALUE)),
            "cashews": burst(lambda key: peer_cashews.set("cashews:" + key, VALUE)),
        }
    try:
        for name, peer in peers.items():
            result = runner.run(paired(ours, peer, BURST))
            report(benchmark, f"{operation} vs {name}", f"store.{operation}", name, result, 1.0)
        run_once(benchmark, runner, ours, BURST // 4)
    finally:

        async def close() -> None:
            await peer_aiocache.close()
            await peer_cashews.close()

        runner.run(close())


def test_cluster_get_set(benchmark: Any, runner: asyncio.Runner, tmp_path: Path) -> None:
    """The cluster store against raw RedisCluster GET/SET (one command per key)."""
    from redis.asyncio.cluster import RedisCluster

    external = os.environ.get("REDIS_CLUSTER_URL")
    servers = [] if external else start_cluster(server_binary(), tmp_path / "cluster")
    url = external or f"redis+cluster://127.0.0.1:{servers[0].port}"
    try:
        store: RedisMemoryStore[Any] = RedisMemoryStore(url, namespace="bench")
        raw = RedisCluster.from_url(url.replace("+cluster", ""))
        runner.run(store.set("k", VALUE))
        envelope = runner.run(raw.get(b"bench:k"))
        runner.run(raw.set(b"raw:k", envelope))

        async def ours(ops: int) -> None:
            for index in range(ops):
                if index % 2:
                    await store.set("k", VALUE)
                else:
                    await store.get("k")

        async def theirs(ops: int) -> None:
            for index in range(ops):
                if index % 2:
                    await raw.set(b"raw:k", envelope)
                else:
                    await raw.get(b"raw:k")

        result = runner.run(paired(ours, theirs, BURST))
        report(benchmark, "cluster get/set vs raw", "store", "RedisCluster", result, None)
        run_once(benchmark, runner, ours, BURST // 4)
        runner.run(store.clear())
        runner.run(store.close())
        runner.run(raw.aclose())
    finally:
        for server in servers:
            server.stop()
