"""``RedisMemoryStore(near_cache=N)`` against real servers, with a second client.

The coherence cases of issue 11 through the store's API: another client's writes (a
memkv store, and raw redis-py commands on the namespaced key), the fetch/invalidate
race held open deterministically, this store's own writes, FLUSHDB/FLUSHALL, a killed
connection, an empty restart, a cluster; the goal figures; bad input; the counters and
their exporters.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from memkv import MemoryManager, RedisMemoryStore, open_store
from memkv.errors import InvalidArgumentError, InvalidArgumentTypeError, TrackingUnavailableError
from memkv.metrics.otel import instrument
from memkv.metrics.prometheus import StoreCollector
from tests.redis_servers import RedisServer, unique_namespace

pytestmark = pytest.mark.redis


@pytest.fixture
async def near(redis_url: str) -> AsyncIterator[RedisMemoryStore[Any]]:
    store: RedisMemoryStore[Any] = RedisMemoryStore(
        redis_url, namespace=unique_namespace(), near_cache=1000
    )
    yield store
    await store.clear()
    await store.close()


@pytest.fixture
async def writer(
    redis_url: str, near: RedisMemoryStore[Any]
) -> AsyncIterator[RedisMemoryStore[Any]]:
    """Another memkv client on the same namespace, without a near cache."""
    store: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=near.namespace)
    yield store
    await store.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client that is not memkv at all."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def near_stats(store: RedisMemoryStore[Any]) -> Any:
    stats = store.stats().near_cache
    assert stats is not None
    return stats


async def wait_until(condition: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.001)


def raw_key(store: RedisMemoryStore[Any], key: str) -> bytes:
    return f"{store.namespace}:{key}".encode()


# -- served locally, dropped when others write ---------------------------------------------


async def test_a_second_get_is_served_from_the_near_cache(
    near: RedisMemoryStore[Any], writer: RedisMemoryStore[Any]
) -> None:
    await writer.set("k", {"v": 1}, metadata={"m": 1})
    first = await near.get("k")
    second = await near.get("k")
    assert first is not None
    assert second == first
    assert second.metadata == {"m": 1}
    stats = near.stats()
    assert (stats.gets, stats.hits, stats.misses) == (2, 2, 0)
    assert stats.operations["get", "hit"] == 2
    assert (near_stats(near).hits, near_stats(near).misses) == (1, 1)


async def test_another_memkv_clients_write_drops_the_copy(
    near: RedisMemoryStore[Any], writer: RedisMemoryStore[Any]
) -> None:
    await writer.set("k", 1)
    assert (await near.get("k")).value == 1  # type: ignore[union-attr]
    await writer.set("k", 2)
    await wait_until(lambda: near_stats(near).invalidations == 1)
    assert (await near.get("k")).value == 2  # type: ignore[union-attr]


async def test_raw_commands_on_the_namespaced_key_drop_the_copy(
    near: RedisMemoryStore[Any], writer: RedisMemoryStore[Any], raw: redis.asyncio.Redis
) -> None:
    await writer.set("k", "old")
    await writer.set("other", "new")
    assert (await near.get("k")).value == "old"  # type: ignore[union-attr]
    envelope = await raw.get(raw_key(near, "other"))
    await raw.set(raw_key(near, "k"), envelope)  # a raw SET, as any client would
    await wait_until(lambda: near_stats(near).invalidations == 1)
    assert (await near.get("k")).value == "new"  # type: ignore[union-attr]
    await raw.delete(raw_key(near, "k"))
    await wait_until(lambda: near_stats(near).invalidations == 2)
    assert await near.get("k") is None
    assert await near.exists("k") is False


async def test_an_expiring_copy_goes_with_its_ttl(near: RedisMemoryStore[Any]) -> None:
    await near.set("k", 1, ttl=0.2)
    assert await near.get("k") is not None
    assert await near.get("k") is not None
    await asyncio.sleep(0.3)
    assert await near.get("k") is None


async def test_get_many_and_exists_use_and_fill_the_near_cache(
    near: RedisMemoryStore[Any], writer: RedisMemoryStore[Any]
) -> None:
    await writer.set_many({"a": 1, "b": 2})
    assert (await near.get("a")).value == 1  # type: ignore[union-attr]
    found = await near.get_many(["a", "b", "missing", "a"])
    assert [entry and entry.value for entry in found] == [1, 2, None, 1]
    misses = near_stats(near).misses
    again = await near.get_many(["b", "missing"])
    assert [entry and entry.value for entry in again] == [2, None]
    assert near_stats(near).misses == misses  # both answered locally
    assert await near.exists("a") is True
    assert await near.exists("missing") is False
    assert near_stats(near).misses == misses
    assert await near.exists("never-read") is False
    await writer.set("never-read", 3)
    await wait_until(lambda: near_stats(near).invalidations == 1)
    assert await near.exists("never-read") is True
    stats = near.stats()
    assert stats.operations["exists", "hit"] == 2
    assert stats.operations["exists", "miss"] == 2


# -- the fetch/invalidate race -------------------------------------------------------------


async def test_a_reply_invalidated_while_its_read_is_in_flight_is_not_kept(
    near: RedisMemoryStore[Any], writer: RedisMemoryStore[Any]
) -> None:
    """The read's reply is held between the server and the fill (an injected pause);
    another client's write is invalidated meanwhile: the read returns what the server
    answered, and the near cache keeps none of it."""
    await writer.set("k", "v1")
    commands = near._redis
    server_get = commands.get
    reply_in_hand, release = asyncio.Event(), asyncio.Event()

    async def held_get(key: bytes) -> Any:
        data = await server_get(key)
        reply_in_hand.set()
        await release.wait()
        return data

    commands.get = held_get  # type: ignore[method-assign]
    read = asyncio.ensure_future(near.get("k"))
    await reply_in_hand.wait()
    commands.get = server_get  # type: ignore[method-assign]
    await writer.set("k", "v2")
    await wait_until(lambda: near_stats(near).invalidations == 1)
    release.set()
    assert (await read).value == "v1"  # type: ignore[union-attr]
    assert near_stats(near).entries == 0
    assert (await near.get("k")).value == "v2"  # type: ignore[union-attr]


async def test_a_get_many_reply_invalidated_in_flight_is_not_kept(
    near: RedisMemoryStore[Any], writer: RedisMemoryStore[Any]
) -> None:
    await writer.set_many({"a": 1, "b": 1})
    commands = near._redis
    server_get_many = commands.get_many
    reply_in_hand, release = asyncio.Event(), asyncio.Event()

    async def held_get_many(keys: list[bytes]) -> Any:
        replies = await server_get_many(keys)
        reply_in_hand.set()
        await release.wait()
        return replies

    commands.get_many = held_get_many  # type: ignore[method-assign]
    read = asyncio.ensure_future(near.get_many(["a", "b"]))
    await reply_in_hand.wait()
    commands.get_many = server_get_many  # type: ignore[method-assign]
    await writer.set("b", 2)
    await wait_until(lambda: near_stats(near).invalidations == 1)
    release.set()
    assert [entry.value for entry in await read if entry] == [1, 1]
    assert [entry.value for entry in await near.get_many(["a", "b"]) if entry] == [1, 2]


# -- own writes --------------------------------------------------------------------------


async def test_own_writes_leave_no_stale_copy(near: RedisMemoryStore[Any]) -> None:
    await near.set("k", 1)
    assert (await near.get("k")).value == 1  # type: ignore[union-attr]
    await near.set("k", 2)
    assert (await near.get("k")).value == 2  # type: ignore[union-attr]
    await near.set_many({"k": 3, "j": 4})
    assert [e.value for e in await near.get_many(["k", "j"]) if e] == [3, 4]
    assert await near.delete("k") is True
    assert await near.get("k") is None
    assert await near.exists("k") is False
    await near.set("k", 5)
    assert await near.exists("k") is True
    assert await near.delete_many(["k", "j"]) == 2
    assert await near.get_many(["k", "j"]) == [None, None]
    await near.set_many({"p:1": 1, "p:2": 2, "q": 3})
    assert len([e for e in await near.get_many(["p:1", "p:2", "q"]) if e]) == 3
    assert await near.clear("p:") == 2
    assert await near.get_many(["p:1", "p:2"]) == [None, None]
    assert (await near.get("q")).value == 3  # type: ignore[union-attr]
    assert await near.clear() == 1
    assert await near.get("q") is None


async def test_an_own_large_write_leaves_no_stale_copy_while_the_reader_is_unread(
    near: RedisMemoryStore[Any],
) -> None:
    """A large value goes on the node's second connection; the connection that read the
    copy is held unread until the write returned, so no invalidation can come through
    it. The copy is gone all the same (dropped by the store, and invalidated by the
    server on the writing connection, which tracks too)."""
    await near.set("big", "small")
    assert (await near.get("big")).value == "small"  # type: ignore[union-attr]
    reading = near._redis.node.connection  # type: ignore[attr-defined]
    assert reading is not None
    reading._transport.pause_reading()
    large = "x" * 600_000
    try:
        await near.set("big", large)
    finally:
        reading._transport.resume_reading()
    assert (await near.get("big")).value == large  # type: ignore[union-attr]
    assert reading is near._redis.node.connection  # type: ignore[attr-defined]


async def test_a_read_racing_an_own_write_keeps_no_stale_copy(
    near: RedisMemoryStore[Any],
) -> None:
    for round_ in range(100):
        await near.set("k", round_)
        reads = [asyncio.ensure_future(near.get("k")) for _ in range(3)]
        await near.set("k", round_ + 0.5)
        await asyncio.gather(*reads)
        assert (await near.get("k")).value == round_ + 0.5  # type: ignore[union-attr]


# -- flushes and lost connections ----------------------------------------------------------


@pytest.mark.parametrize("command", ["FLUSHDB", "FLUSHALL"])
async def test_a_flush_by_another_client_empties_the_near_cache(
    near: RedisMemoryStore[Any], raw: redis.asyncio.Redis, command: str
) -> None:
    await near.set("k", 1)
    await near.get("k")
    await raw.execute_command(command)
    await wait_until(lambda: near_stats(near).flushes == 1)
    assert await near.get("k") is None


async def test_a_killed_connection_flushes_and_the_store_carries_on(
    near: RedisMemoryStore[Any], writer: RedisMemoryStore[Any], raw: redis.asyncio.Redis
) -> None:
    await writer.set("k", 1)
    await near.get("k")
    await raw.execute_command("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal")
    await wait_until(lambda: near_stats(near).flushes == 1)
    await writer.set("k", 2)
    assert (await near.get("k")).value == 2  # type: ignore[union-attr]
    await writer.set("k", 3)
    await wait_until(lambda: near_stats(near).invalidations == 1)
    assert (await near.get("k")).value == 3  # type: ignore[union-attr]


async def test_after_an_empty_restart_a_read_returns_none_not_the_old_copy(
    redis_server: RedisServer,
) -> None:
    store: RedisMemoryStore[Any] = RedisMemoryStore(redis_server.url, near_cache=10)
    try:
        await store.set("k", "old")
        assert (await store.get("k")).value == "old"  # type: ignore[union-attr]
        redis_server.kill()
        await asyncio.to_thread(redis_server.start)  # the loop runs on, as in production
        assert await store.get("k") is None
        assert near_stats(store).flushes == 1
    finally:
        await store.close()


# -- refusals and bad input ------------------------------------------------------------


async def test_an_acl_user_without_client_tracking_gets_a_typed_error_at_first_use(
    redis_url: str, raw: redis.asyncio.Redis
) -> None:
    user, password = f"nc-{uuid.uuid4().hex[:8]}", "acl-secret-77"
    await raw.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all", "-client|tracking"
    )
    url = redis_url.replace("redis://", f"redis://{user}:{password}@")
    store: RedisMemoryStore[Any] = RedisMemoryStore(f"{url}?near_cache=10&retries=0")
    try:
        for call in (store.get("k"), store.set("k", 1), store.exists("k")):
            with pytest.raises(TrackingUnavailableError, match=r"CLIENT TRACKING") as caught:
                await call
            assert password not in str(caught.value)
            assert "client|tracking" in str(caught.value)
        assert near_stats(store).entries == 0
    finally:
        await store.close()
        await raw.execute_command("ACL", "DELUSER", user)


@pytest.mark.parametrize(
    ("size", "error"),
    [
        (0, InvalidArgumentError),
        (-1, InvalidArgumentError),
        (1.5, InvalidArgumentTypeError),
        ("10", InvalidArgumentTypeError),
        (True, InvalidArgumentTypeError),
    ],
)
def test_a_near_cache_size_that_is_not_a_positive_int_is_refused(
    size: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="near_cache"):
        RedisMemoryStore("redis://127.0.0.1:1/0", near_cache=size)


@pytest.mark.parametrize("value", ["0", "-3", "ten", "1.5", ""])
def test_a_bad_near_cache_url_parameter_is_refused_by_name(value: str) -> None:
    with pytest.raises(InvalidArgumentError, match="'near_cache'"):
        open_store(f"redis://127.0.0.1:1/0?near_cache={value}")


async def test_a_near_cache_needs_a_store_made_from_a_url(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        with pytest.raises(InvalidArgumentError, match="near_cache"):
            RedisMemoryStore(client, near_cache=10)
    finally:
        await client.aclose()


async def test_the_url_parameter_reaches_open_store_and_the_manager(redis_url: str) -> None:
    url = f"{redis_url}?namespace={unique_namespace()}&near_cache=7"
    opened = open_store(url)
    assert isinstance(opened, RedisMemoryStore)
    assert "near_cache=7" in repr(opened)
    assert near_stats(opened).max_entries == 7
    await opened.close()
    async with MemoryManager.from_urls({"shared": url}) as manager:
        await manager.set("k", 1, store="shared")
        await manager.get("k", store="shared")
        await manager.get("k", store="shared")
        store = manager.store("shared")
        assert isinstance(store, RedisMemoryStore)
        assert near_stats(store).hits == 1
        await manager.clear(store="shared")
    plain = RedisMemoryStore(redis_url)
    assert plain.stats().near_cache is None
    assert "near_cache" not in repr(plain)


# -- exporters -----------------------------------------------------------------------------


async def test_prometheus_and_opentelemetry_export_the_near_cache_counters(
    near: RedisMemoryStore[Any], writer: RedisMemoryStore[Any]
) -> None:
    await writer.set("k", 1)
    await near.get("k")
    await near.get("k")
    await writer.set("k", 2)
    await wait_until(lambda: near_stats(near).invalidations == 1)
    registry = CollectorRegistry()
    registry.register(StoreCollector({"near": near, "plain": writer}))
    scrape = generate_latest(registry).decode()
    assert 'memkv_near_cache_lookups_total{result="hit",store="near"} 1.0' in scrape
    assert 'memkv_near_cache_lookups_total{result="miss",store="near"} 1.0' in scrape
    assert 'memkv_near_cache_invalidations_total{store="near"} 1.0' in scrape
    assert 'memkv_near_cache_flushes_total{store="near"} 0.0' in scrape
    assert 'memkv_near_cache_entries{store="near"} 0.0' in scrape
    assert 'store="plain"' not in "".join(
        line for line in scrape.splitlines() if "near_cache" in line
    )
    metric_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metric_reader])
    instrument(provider.get_meter("near"), {"near": near})
    data = metric_reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, tuple(sorted(dict(point.attributes or {}).items()))): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    }
    assert points["memkv.near_cache.lookups", (("result", "hit"), ("store", "near"))] == 1
    assert points["memkv.near_cache.invalidations", (("store", "near"),)] == 1
    assert points["memkv.near_cache.flushes", (("store", "near"),)] == 0
    provider.shutdown()


# -- goal figures --------------------------------------------------------------------------


async def test_no_read_returns_the_old_value_20_ms_after_another_clients_write(
    near: RedisMemoryStore[Any], writer: RedisMemoryStore[Any]
) -> None:
    """1,000 writes by another client, 100 keys at a time: each key cached, rewritten,
    read again once 20 ms passed since its write returned. 0 of 1,000 stale."""
    keys = [f"hot-{index}" for index in range(100)]
    stale = 0
    for round_ in range(10):
        for key in keys:
            await near.get(key)
        assert near_stats(near).entries == 100
        for key in keys:
            await writer.set(key, round_)
        await asyncio.sleep(0.02)
        for key in keys:
            entry = await near.get(key)
            stale += entry is None or entry.value != round_
    assert stale == 0


async def test_eight_readers_see_the_last_of_fifty_rewrites_in_twenty_trials(
    near: RedisMemoryStore[Any], writer: RedisMemoryStore[Any]
) -> None:
    last_seen: list[list[Any]] = []
    for trial in range(20):
        stop = asyncio.Event()

        async def read_until_stopped(stop: asyncio.Event) -> None:
            while not stop.is_set():
                await near.get("hot")
                await asyncio.sleep(0)

        readers = [asyncio.ensure_future(read_until_stopped(stop)) for _ in range(8)]
        for write in range(50):
            await writer.set("hot", (trial, write))
        await asyncio.sleep(0.02)
        entries = await asyncio.gather(*(near.get("hot") for _ in range(8)))
        stop.set()
        await asyncio.gather(*readers)
        last_seen.append([entry.value if entry else None for entry in entries])
    assert last_seen == [[[trial, 49]] * 8 for trial in range(20)]
    assert near_stats(near).hits > 0


# -- Redis Cluster -----------------------------------------------------------------------


async def test_a_cluster_store_tracks_on_every_primary(cluster_url: str) -> None:
    namespace = unique_namespace()
    near: RedisMemoryStore[Any] = RedisMemoryStore(
        cluster_url, namespace=namespace, near_cache=1000
    )
    writer: RedisMemoryStore[Any] = RedisMemoryStore(cluster_url, namespace=namespace)
    try:
        keys = [f"k{index}" for index in range(30)]  # spread over the three primaries
        await writer.set_many(dict.fromkeys(keys, 1))
        assert [e.value for e in await near.get_many(keys) if e] == [1] * 30
        await writer.set_many(dict.fromkeys(keys, 2))
        await wait_until(lambda: near_stats(near).invalidations == 30)
        assert [e.value for e in await near.get_many(keys) if e] == [2] * 30
        router = await near._redis.router()  # type: ignore[attr-defined]
        assert len(router.primaries()) == 3
        assert len(near._near._tracked) >= 3  # type: ignore[union-attr]
    finally:
        await writer.clear()
        await writer.close()
        await near.close()


async def test_add_touch_and_get_or_set_leave_no_stale_copy(
    near: RedisMemoryStore[Any], writer: RedisMemoryStore[Any]
) -> None:
    assert await near.get("k") is None  # a known absence, held
    assert await near.add("k", 1) is True
    assert (await near.get("k")).value == 1  # type: ignore[union-attr]
    assert (await near.get("k")).expires_at is None  # type: ignore[union-attr]
    assert await near.touch("k", 60) is True
    touched = await near.get("k")
    assert touched is not None
    assert touched.expires_at is not None
    await writer.delete("k")
    # Not a count of invalidations: the near store's own add and touch are invalidated
    # too (tracking without NOLOOP), and Redis 7 may send those after their replies, so
    # a count can be reached before the writer's delete is seen. Wait for the copy to go.
    assert near._near is not None
    core = near._near.core
    await wait_until(lambda: core.get("k") is None)

    async def compute() -> int:
        return 7

    assert (await near.get_or_set("k", compute)).value == 7
    assert (await near.get("k")).value == 7  # type: ignore[union-attr]


async def test_after_random_concurrent_reads_and_writes_every_copy_matches_the_server(
    near: RedisMemoryStore[Any], writer: RedisMemoryStore[Any]
) -> None:
    """Readers (get, get_many, exists), this store's own writes and another client's
    writes race on ten keys; once they stop and 20 ms pass, what the near cache serves is
    what the server holds, key by key, in each of 20 rounds."""
    import random

    rng = random.Random(11)
    keys = [f"r{index}" for index in range(10)]
    for round_ in range(20):
        stop = asyncio.Event()

        async def read(stop: asyncio.Event, seed: str) -> None:
            local = random.Random(seed)
            while not stop.is_set():
                choice = local.random()
                if choice < 0.6:
                    await near.get(local.choice(keys))
                elif choice < 0.8:
                    await near.get_many(local.sample(keys, 3))
                else:
                    await near.exists(local.choice(keys))
                await asyncio.sleep(0)  # a near-cache hit never yields to the loop

        async def write(store: RedisMemoryStore[Any], seed: int, round_: int) -> None:
            local = random.Random(seed)
            for step in range(30):
                key = local.choice(keys)
                value = (round_, seed, step)
                choice = local.random()
                if choice < 0.6:
                    await store.set(key, value)
                elif choice < 0.8:
                    await store.delete(key)
                else:
                    await store.set_many(dict.fromkeys(local.sample(keys, 2), value))
                await asyncio.sleep(0)

        readers = [asyncio.ensure_future(read(stop, rng.random().hex())) for _ in range(6)]
        await asyncio.gather(write(writer, 1, round_), write(near, 2, round_))
        stop.set()
        await asyncio.gather(*readers)
        await asyncio.sleep(0.02)
        served = [entry and entry.value for entry in await near.get_many(keys)]
        held = [entry and entry.value for entry in await writer.get_many(keys)]
        assert served == held, round_
        assert [await near.exists(key) for key in keys] == [v is not None for v in held]
    assert near_stats(near).hits > 0
    assert near_stats(near).invalidations > 0


async def test_a_stored_none_is_a_copy_not_an_absence(near: RedisMemoryStore[Any]) -> None:
    await near.set("none", None, metadata={"kind": "empty"})
    first = await near.get("none")
    second = await near.get("none")  # from the near cache
    assert first is not None
    assert second == first
    assert second is not None
    assert second.value is None
    assert second.metadata == {"kind": "empty"}
    assert await near.exists("none") is True
    assert [entry is not None for entry in await near.get_many(["none", "nothing"])] == [
        True,
        False,
    ]
    assert near_stats(near).hits >= 3


async def test_a_cluster_acl_user_without_client_tracking_gets_the_typed_error(
    cluster_url: str,
) -> None:
    namespace = unique_namespace()
    user, password = f"{namespace}-user", "acl-secret-78"
    admin: RedisMemoryStore[Any] = RedisMemoryStore(cluster_url, namespace=namespace)
    router = await admin._redis.router()  # type: ignore[attr-defined]
    await router.on_every_primary(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all", "-client|tracking"
    )
    url = cluster_url.replace("://", f"://{user}:{password}@", 1)
    store: RedisMemoryStore[Any] = RedisMemoryStore(
        f"{url}?near_cache=10&retries=0", namespace=namespace
    )
    try:
        with pytest.raises(TrackingUnavailableError, match=r"client\|tracking") as caught:
            await store.get("k")
        assert password not in str(caught.value)
    finally:
        await store.close()
        await router.on_every_primary("ACL", "DELUSER", user)
        await admin.close()
