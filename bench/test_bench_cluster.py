"""ClusterRouter over the coalescing transport against redis-py's ``RedisCluster``.

The workload of issue 10: a 3-primary cluster, 50 tasks, 90 % GET / 10 % SET of
100-byte values over 10,000 keys, and a ``get_many`` of 100 keys spread over every node.
Both clients run in alternating bursts in the same event loop (``paired``); the figures
go to the session table.

    pytest bench/test_bench_cluster.py -p no:randomly
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from tests.redis_servers import server_binary, start_cluster

from bench.test_bench_redis import BURST, GATE, Burst, paired, report, run_once
from memkv.redis.cluster import ClusterRouter, node_factory, slot_of
from memkv.redis.transport import ConnectionSpec

pytestmark = pytest.mark.redis

TASKS = 50
KEYS = 1_000 if GATE else 10_000
VALUE = bytes(range(100))
#: Out of every 10 operations of a task, this many are SETs.
SETS_PER_TEN = 1
BENCH_KEYS = [f"bench-router:{index}".encode() for index in range(KEYS)]


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    external = os.environ.get("REDIS_CLUSTER_URL")
    if external:
        host, port = external.split("://", 1)[1].split("?", 1)[0].rsplit(":", 1)
        yield host, int(port)
        return
    servers = start_cluster(server_binary(), tmp_path_factory.mktemp("bench-cluster"))
    try:
        yield "127.0.0.1", servers[0].port
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def clients(runner: asyncio.Runner, seed: tuple[str, int]) -> Iterator[tuple[Any, Any]]:
    router = runner.run(ClusterRouter.open([seed], node_factory(ConnectionSpec())))
    raw = RedisCluster(host=seed[0], port=seed[1])
    # Initialised before the first burst: 50 tasks racing redis-py's lazy
    # initialisation fail with "'NoneType' object has no attribute 'writelines'".
    runner.run(raw.initialize())
    runner.run(router.execute_many([(key, ("SET", key, VALUE)) for key in BENCH_KEYS]))
    yield router, raw
    for start in range(0, KEYS, 500):
        chunk = BENCH_KEYS[start : start + 500]
        runner.run(router.execute_many([(key, ("DEL", key)) for key in chunk]))
    runner.run(router.close())
    runner.run(raw.aclose())


def ninety_ten(
    get: Callable[[bytes], Awaitable[Any]], set_: Callable[[bytes], Awaitable[Any]]
) -> Callable[[int, int], Awaitable[None]]:
    """One task's loop: ``ops`` operations on random keys (seeded by the task number),
    ``SETS_PER_TEN`` in ten of them ``set_``, the others ``get``."""

    async def task(number: int, ops: int) -> None:
        rng = random.Random(number)
        for index in range(ops):
            key = BENCH_KEYS[rng.randrange(KEYS)]
            if index % 10 < SETS_PER_TEN:
                await set_(key)
            else:
                await get(key)

    return task


def fan_out(one_task: Any) -> Burst:
    async def burst(ops: int) -> None:
        per_task = ops // TASKS
        await asyncio.gather(*(one_task(task, per_task) for task in range(TASKS)))

    return burst


def test_router_mixed_get_set_vs_redis_cluster(
    benchmark: Any, runner: asyncio.Runner, clients: tuple[ClusterRouter, RedisCluster]
) -> None:
    router, raw = clients
    execute = router.execute
    router_task = ninety_ten(
        lambda key: execute(key, "GET", key), lambda key: execute(key, "SET", key, VALUE)
    )
    raw_task = ninety_ten(raw.get, lambda key: raw.set(key, VALUE))

    ours, theirs = fan_out(router_task), fan_out(raw_task)
    result = runner.run(paired(ours, theirs, BURST * 5))
    report(
        benchmark,
        f"cluster, {TASKS} tasks 90/10 get/set, {KEYS:,} keys",
        "ClusterRouter",
        "RedisCluster",
        result,
        4,
    )
    run_once(benchmark, runner, ours, BURST)


def test_router_execute_many_vs_redis_cluster_mget_nonatomic(
    benchmark: Any, runner: asyncio.Runner, clients: tuple[ClusterRouter, RedisCluster]
) -> None:
    """100 keys on every node per call (keys/s): one batch per node against redis-py's
    per-slot MGETs."""
    router, raw = clients
    rng = random.Random(1)
    batches = [rng.sample(BENCH_KEYS, 100) for _ in range(50)]

    async def ours(ops: int) -> None:
        for index in range(ops // 100):
            batch = batches[index % len(batches)]
            await router.execute_many([(key, ("GET", key)) for key in batch])

    async def theirs(ops: int) -> None:
        for index in range(ops // 100):
            await raw.mget_nonatomic(batches[index % len(batches)])

    result = runner.run(paired(ours, theirs, BURST * 10))
    report(
        benchmark,
        "cluster, 100-key batch (keys/s)",
        "execute_many",
        "mget_nonatomic",
        result,
        None,
    )
    run_once(benchmark, runner, ours, BURST)


def test_router_vs_the_transport_alone(
    benchmark: Any, runner: asyncio.Runner, clients: tuple[ClusterRouter, RedisCluster]
) -> None:
    """The routing's own cost: the same workload sent straight to each key's node."""
    router, _ = clients
    connect = node_factory(ConnectionSpec())
    nodes = {address: connect(*address) for address in router.primaries()}
    node_of_key = {key: nodes[router._slots[slot_of(key)]] for key in BENCH_KEYS}  # type: ignore[index]

    execute = router.execute
    router_task = ninety_ten(
        lambda key: execute(key, "GET", key), lambda key: execute(key, "SET", key, VALUE)
    )
    node_task = ninety_ten(
        lambda key: node_of_key[key].execute("GET", key),
        lambda key: node_of_key[key].execute("SET", key, VALUE),
    )

    ours, theirs = fan_out(router_task), fan_out(node_task)
    result = runner.run(paired(ours, theirs, BURST * 5))
    report(
        benchmark,
        f"cluster, {TASKS} tasks 90/10, router vs pre-routed Node",
        "ClusterRouter",
        "Node",
        result,
        None,
    )
    run_once(benchmark, runner, ours, BURST)
    for node in nodes.values():
        node.close()
