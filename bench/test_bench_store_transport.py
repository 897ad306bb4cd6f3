"""Issue 10's figures: ``RedisMemoryStore`` on memkv's coalescing transport.

Every figure runs its clients in the same event loop against the same server, in
rotating order (A B C, B C A, ...), and reports the median of the per-round ratios and
the client CPU per operation (``time.process_time()`` over a burst divided by its
operations; the server is another process). The workload is issue 10's: tasks sharing
one client do 90 % ``get`` / 10 % ``set`` of 100-byte values over 10,000 keys.

- ``store``: ``RedisMemoryStore(url)``, every command on the transport;
- ``store on redis-py``: ``RedisMemoryStore(redis.asyncio.Redis(...))``, the redis-py
  path every store took before (main's store), still used for a client passed in;
- ``redis-py``: raw ``redis.asyncio.Redis`` (default pool, hiredis) sending GET/SET of
  the same envelopes;
- ``transport``: the store's transport ``Node`` reached directly with raw GET/SET (what
  the store costs above its transport);
- ``bare``: the ~60-line coalescing protocol client of ``bench/test_bench_transport.py``
  (no timeouts, no errors, no reconnection), the ceiling reference;
- ``glide``: valkey-glide's ``GlideClient`` when it is installed (the ``peers`` extra).

Goals are reported in the table bench/conftest.py prints, never asserted; with
``MEMKV_BENCH_GATE=1`` runs are short and only a floor of 1,000 ops/s is asserted.

    pytest bench/test_bench_store_transport.py -p no:randomly
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
from bench.test_bench_transport import BareClient, workload
from memkv.redis import RedisMemoryStore

pytestmark = pytest.mark.redis

GATE = bool(os.environ.get("MEMKV_BENCH_GATE"))
ROUNDS = 2 if GATE else 5
KEYS = 10_000
VALUE = b"v" * 100
CONCURRENT_OPS = 4_000 if GATE else 20_000
SEQUENTIAL_OPS = 500 if GATE else 2_000
BATCH_OPS = 2_000 if GATE else 20_000
FLOOR_OPS = 1_000

#: A burst: runs its workload once and returns how many operations it made.
Burst = Callable[[], Awaitable[int]]
Plans = list[list[tuple[bytes, ...]]]


class Result:
    """Median ops/s and CPU µs/op of each client, and the median per-round ratios."""

    def __init__(self, rates: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
        self.rates = {name: statistics.median(values) for name, values in rates.items()}
        self.cpu = {name: statistics.median(values) for name, values in cpu.items()}
        self._rounds = rates

    def ratio(self, name: str, other: str) -> float:
        pairs = zip(self._rounds[name], self._rounds[other], strict=True)
        return statistics.median(a / b for a, b in pairs)


async def rotate(bursts: dict[str, Burst]) -> Result:
    names = list(bursts)
    for name in names:  # warm-up: connections, script cache, code paths
        await bursts[name]()
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(ROUNDS):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            wall, process = time.perf_counter(), time.process_time()
            ops = await bursts[name]()
            cpu[name].append((time.process_time() - process) / ops * 1e6)
            rates[name].append(ops / (time.perf_counter() - wall))
    return Result(rates, cpu)


def report(
    figure: str, result: Result, ours: str, baseline: str, goal: float | None, unit: str = "/s"
) -> None:
    rate, base = result.rates[ours], result.rates[baseline]
    if GATE:
        assert rate > FLOOR_OPS, f"{figure}: {rate:.0f} ops/s"
    ratio = result.ratio(ours, baseline)
    record(
        Figure(
            f"Store on the transport: {figure}",
            f"{ours} {rate:,.0f}{unit}, {result.cpu[ours]:.1f} µs CPU/op",
            f"{baseline} {base:,.0f}{unit}, {result.cpu[baseline]:.1f} µs CPU/op",
            f"{ratio:.2f}x",
            "" if goal is None else f">= {goal:g}x",
            None if goal is None else ratio >= goal,
        )
    )


# -- clients ---------------------------------------------------------------------------------


def store_plans(plans: Plans) -> list[list[tuple[bool, str]]]:
    """The plans as store calls: ``(is_set, key)`` with the namespace stripped."""
    return [
        [(command[0] == b"SET", command[1][6:].decode()) for command in plan] for plan in plans
    ]


def on_store(store: RedisMemoryStore[Any], plans: Plans) -> Burst:
    calls = store_plans(plans)
    ops = sum(len(plan) for plan in calls)

    async def one_task(plan: list[tuple[bool, str]]) -> None:
        get, set_ = store.get, store.set
        for is_set, key in plan:
            if is_set:
                await set_(key, VALUE)
            else:
                await get(key)

    async def burst() -> int:
        await asyncio.gather(*(one_task(plan) for plan in calls))
        return ops

    return burst


def on_execute(
    execute: Callable[..., Awaitable[Any]], plans: Plans, envelope: bytes, *, names: bool = False
) -> Burst:
    """Raw clients send the store's envelope, so that every client reads valid entries.
    ``names``: command names as ``str`` (``RedisCluster`` looks them up as such)."""
    commands: list[list[tuple[Any, ...]]] = [
        [
            ("SET" if names else b"SET", command[1], envelope)
            if command[0] == b"SET"
            else ("GET" if names else b"GET", command[1])
            for command in plan
        ]
        for plan in plans
    ]
    ops = sum(len(plan) for plan in commands)

    async def one_task(plan: list[tuple[Any, ...]]) -> None:
        for command in plan:
            await execute(*command)

    async def burst() -> int:
        await asyncio.gather(*(one_task(plan) for plan in commands))
        return ops

    return burst


def on_glide(client: Any, plans: Plans, envelope: bytes) -> Burst:
    ops = sum(len(plan) for plan in plans)

    async def one_task(plan: list[tuple[bytes, ...]]) -> None:
        get, set_ = client.get, client.set
        for command in plan:
            if command[0] == b"SET":
                await set_(command[1], envelope)
            else:
                await get(command[1])

    async def burst() -> int:
        await asyncio.gather(*(one_task(plan) for plan in plans))
        return ops

    return burst


async def open_glide(port: int, cluster: bool = False) -> Any:
    try:
        import glide
    except ImportError:
        return None
    address = [glide.NodeAddress("127.0.0.1", port)]
    if cluster:
        return await glide.GlideClusterClient.create(
            glide.GlideClusterClientConfiguration(address)
        )
    return await glide.GlideClient.create(glide.GlideClientConfiguration(address))


@pytest.fixture(scope="module")
def clients(runner: asyncio.Runner, server: RedisServer) -> Iterator[dict[str, Any]]:
    from redis.asyncio import ConnectionPool, Redis

    async def open_all() -> dict[str, Any]:
        store: RedisMemoryStore[Any] = RedisMemoryStore(server.url, namespace="bench")
        # main's store: a redis-py client with an unbounded pool, as it made one.
        pool = ConnectionPool.from_url(server.url, max_connections=2**31 - 1)
        old: RedisMemoryStore[Any] = RedisMemoryStore(Redis.from_pool(pool), namespace="bench")
        raw = Redis(port=server.port)
        bare = await BareClient.open("127.0.0.1", server.port)
        for start in range(0, KEYS, 1000):
            await store.set_many({str(key): VALUE for key in range(start, start + 1000)})
        envelope = await raw.get(b"bench:0")
        glide_client = await open_glide(server.port)
        return {
            "store": store,
            "store on redis-py": old,
            "redis-py": raw,
            "bare": bare,
            "glide": glide_client,
            "envelope": envelope,
        }

    opened = runner.run(open_all())
    yield opened

    async def close_all() -> None:
        await opened["store"].close()
        await opened["store on redis-py"].client.aclose()
        await opened["redis-py"].aclose()
        opened["bare"].close()
        if opened["glide"] is not None:
            await opened["glide"].close()

    runner.run(close_all())


def bursts(clients: dict[str, Any], plans: Plans, *names: str) -> dict[str, Burst]:
    envelope = clients["envelope"]
    made: dict[str, Callable[[], Burst]] = {
        "store": lambda: on_store(clients["store"], plans),
        "store on redis-py": lambda: on_store(clients["store on redis-py"], plans),
        "redis-py": lambda: on_execute(clients["redis-py"].execute_command, plans, envelope),
        "bare": lambda: on_execute(clients["bare"].execute, plans, envelope),
        "transport": lambda: on_execute(clients["store"]._redis.node.execute, plans, envelope),
        "glide": lambda: on_glide(clients["glide"], plans, envelope),
    }
    return {
        name: made[name]() for name in names if name != "glide" or clients["glide"] is not None
    }


# -- figures ---------------------------------------------------------------------------------


def test_fifty_tasks_on_one_store(runner: asyncio.Runner, clients: dict[str, Any]) -> None:
    plans = workload(50, CONCURRENT_OPS)
    names = ("store", "store on redis-py", "redis-py", "transport", "bare", "glide")
    result = runner.run(rotate(bursts(clients, plans, *names)))
    figure = "50 tasks, 90/10 get/set, 100 B, 10k keys"
    report(figure, result, "store", "redis-py", 5.0)
    report(figure, result, "store", "bare", 0.7)
    report(figure, result, "store", "store on redis-py", None)
    report(figure, result, "store", "transport", None)
    report(figure, result, "transport", "bare", None)
    if "glide" in result.rates:
        report(figure, result, "store", "glide", None)


@pytest.mark.parametrize("operation", ["get", "set"])
def test_one_task_sequential(
    runner: asyncio.Runner, clients: dict[str, Any], operation: str
) -> None:
    command = operation.upper().encode()
    plan = [(command, b"bench:%d" % (index % KEYS)) for index in range(SEQUENTIAL_OPS)]
    names = ("store", "store on redis-py", "redis-py")
    result = runner.run(rotate(bursts(clients, [plan], *names)))
    report(f"1 task, sequential {operation}", result, "store", "redis-py", 0.95)
    report(f"1 task, sequential {operation}", result, "store", "store on redis-py", None)


def test_two_hundred_tasks_on_one_store(runner: asyncio.Runner, clients: dict[str, Any]) -> None:
    envelope = clients["envelope"]
    store_burst = on_store(clients["store"], workload(200, CONCURRENT_OPS))
    raw_burst = on_execute(
        clients["redis-py"].execute_command, workload(50, CONCURRENT_OPS), envelope
    )
    result = runner.run(rotate({"store, 200 tasks": store_burst, "redis-py, 50 tasks": raw_burst}))
    report("200 tasks vs redis-py's 50", result, "store, 200 tasks", "redis-py, 50 tasks", 5.0)

    async def redis_py_two_hundred() -> str:
        try:
            await on_execute(
                clients["redis-py"].execute_command, workload(200, CONCURRENT_OPS), envelope
            )()
        except Exception as err:
            return f"raises {type(err).__name__}"
        return "completes"

    record(
        Figure(
            "Store on the transport: 200 tasks, errors",
            "store: none",
            f"redis-py default pool: {runner.run(redis_py_two_hundred())}",
            "",
            "",
            None,
        )
    )


@pytest.mark.parametrize("operation", ["get_many", "set_many"])
def test_batches_of_a_hundred(
    runner: asyncio.Runner, clients: dict[str, Any], operation: str
) -> None:
    keys = [str(index) for index in range(100)]

    def batches(store: RedisMemoryStore[Any]) -> Burst:
        items = dict.fromkeys(keys, VALUE)

        async def burst() -> int:
            for _ in range(BATCH_OPS // 100):
                if operation == "get_many":
                    await store.get_many(keys)
                else:
                    await store.set_many(items)
            return BATCH_OPS // 100 * 100

        return burst

    result = runner.run(
        rotate(
            {
                "store": batches(clients["store"]),
                "store on redis-py": batches(clients["store on redis-py"]),
            }
        )
    )
    report(f"{operation}(100), keys/s", result, "store", "store on redis-py", 1.0)


def test_server_ceiling(server: RedisServer) -> None:
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        pytest.skip("no redis-benchmark or valkey-benchmark binary")
    requests = "20000" if GATE else "500000"
    options = ["-c", "50", "-P", "16", "-d", "100", "-t", "get,set", "-q", "-n", requests]
    completed = subprocess.run(
        [binary, "-p", str(server.port), *options],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    rates = re.findall(r"(SET|GET): ([\d.]+) requests per second", completed.stdout)
    record(
        Figure(
            "Store on the transport: server ceiling, redis-benchmark -c 50 -P 16 -d 100",
            ", ".join(f"{name} {float(rate):,.0f}/s" for name, rate in rates) or "no output",
            "",
            "",
            "",
            None,
        )
    )


def test_fifty_tasks_on_a_cluster_store(runner: asyncio.Runner, tmp_path: Path) -> None:
    from redis.asyncio.cluster import RedisCluster

    servers = start_cluster(server_binary(), tmp_path / "cluster")
    url = f"redis+cluster://127.0.0.1:{servers[0].port}"
    try:

        async def open_all() -> tuple[RedisMemoryStore[Any], RedisCluster, bytes, Any]:
            store: RedisMemoryStore[Any] = RedisMemoryStore(url, namespace="bench")
            raw = RedisCluster.from_url(url.replace("+cluster", ""))
            for start in range(0, KEYS, 1000):
                await store.set_many({str(key): VALUE for key in range(start, start + 1000)})
            envelope = await raw.get(b"bench:0")
            return store, raw, envelope, await open_glide(servers[0].port, cluster=True)

        store, raw, envelope, glide_client = runner.run(open_all())
        plans = workload(50, CONCURRENT_OPS)
        cluster_bursts = {
            "store": on_store(store, plans),
            "RedisCluster": on_execute(raw.execute_command, plans, envelope, names=True),
        }
        if glide_client is not None:
            cluster_bursts["glide"] = on_glide(glide_client, plans, envelope)
        result = runner.run(rotate(cluster_bursts))
        figure = "3-primary cluster, 50 tasks, 90/10"
        report(figure, result, "store", "RedisCluster", 4.0)
        if glide_client is not None:
            report(figure, result, "store", "glide", None)

        async def close_all() -> None:
            await store.close()
            await raw.aclose()
            if glide_client is not None:
                await glide_client.close()

        runner.run(close_all())
    finally:
        for server in servers:
            server.stop()
