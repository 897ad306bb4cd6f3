"""The near cache's coherence protocol (``memkv.redis.near_cache``) on the transport,
against real servers, with a second client that writes behind its back.

Each coherence case of issue 11: another client's write, the fetch/invalidate race,
own writes, FLUSHDB/FLUSHALL, a killed connection, a timed-out one, an empty restart,
an ACL that refuses CLIENT TRACKING, and the goal figures (no old value 20 ms after a
write; eight readers see the last of 50 rewrites).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from memkv._core import MemoryEntry, make_entry
from memkv.errors import InvalidArgumentError, InvalidArgumentTypeError, TrackingUnavailableError
from memkv.redis.cluster import ClusterRouter, slot_of
from memkv.redis.near_cache import MISS, NearCache
from memkv.redis.transport import Connection, ConnectionSpec, Node
from tests.redis_servers import RedisServer, start_cluster, unique_namespace

pytestmark = pytest.mark.redis


def spec_for(url: str, **options: Any) -> ConnectionSpec:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return ConnectionSpec(host=parts.hostname, port=parts.port, **options)


class Reader:
    """The store's read path in miniature: the near cache in front of a tracked node
    (or, with ``router``, of a cluster router whose nodes are tracked)."""

    def __init__(self, spec: ConnectionSpec, namespace: str, size: int = 1000) -> None:
        self.spec = spec
        self.prefix = f"{namespace}:".encode()
        self.cache = NearCache(size, self.prefix, health_interval=0.05)
        self.node = self.connect(spec.host, spec.port)
        self.router: ClusterRouter | None = None
        self.served_from_server = 0

    def connect(self, host: str, port: int) -> Node:
        return Node(replace(self.spec, host=host, port=port), **self.cache.node_options())

    def redis_key(self, key: str) -> bytes:
        return self.prefix + key.encode()

    def execute(self, redis_key: bytes, *command: Any) -> Any:
        if self.router is not None:
            return self.router.execute(redis_key, *command)
        return self.node.execute(*command)

    async def get(self, key: str) -> bytes | None:
        found = self.cache.lookup(key)
        if found is not MISS:
            return None if found is None else found.value  # type: ignore[no-any-return]
        token = self.cache.start_read([key])
        entry: MemoryEntry[bytes] | None = None
        redis_key = self.redis_key(key)
        try:
            data = await self.execute(redis_key, b"GET", redis_key)
        except BaseException:
            self.cache.finish_read([key], token, None)
            raise
        self.served_from_server += 1
        if data is not None:
            now = time.time()
            entry = make_entry(key, data, None, now, now, None)
        self.cache.finish_read([key], token, [entry])
        return None if entry is None else entry.value

    async def set(self, key: str, value: bytes) -> None:
        self.cache.drop([key])
        redis_key = self.redis_key(key)
        try:
            await self.execute(redis_key, b"SET", redis_key, value)
        finally:
            self.cache.drop([key])

    async def close(self) -> None:
        self.node.close()
        if self.router is not None:
            await self.router.close()
        self.cache.close()


@pytest.fixture
async def reader(redis_url: str) -> AsyncIterator[Reader]:
    opened = Reader(spec_for(redis_url), unique_namespace())
    yield opened
    await opened.close()


@pytest.fixture
async def other(redis_url: str) -> AsyncIterator[Connection]:
    """The second client: a plain connection, no tracking, no near cache."""
    connection = await Connection.open(spec_for(redis_url))
    yield connection
    connection.close()


async def wait_until(condition: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.001)


# -- another client's writes ------------------------------------------------------------


async def test_a_second_reading_is_served_locally(reader: Reader, other: Connection) -> None:
    await other.execute(b"SET", reader.redis_key("k"), b"v1")
    assert await reader.get("k") == b"v1"
    assert await reader.get("k") == b"v1"
    assert reader.served_from_server == 1
    stats = reader.cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)


async def test_a_raw_set_by_another_client_drops_the_copy(
    reader: Reader, other: Connection
) -> None:
    await other.execute(b"SET", reader.redis_key("k"), b"v1")
    assert await reader.get("k") == b"v1"
    await other.execute(b"SET", reader.redis_key("k"), b"v2")
    await wait_until(lambda: reader.cache.stats().invalidations == 1)
    assert await reader.get("k") == b"v2"


async def test_a_cached_absence_is_dropped_when_another_client_creates_the_key(
    reader: Reader, other: Connection
) -> None:
    assert await reader.get("new") is None
    assert await reader.get("new") is None
    assert reader.served_from_server == 1
    await other.execute(b"SET", reader.redis_key("new"), b"born")
    await wait_until(lambda: reader.cache.stats().invalidations == 1)
    assert await reader.get("new") == b"born"


async def test_a_copy_expires_with_its_entry(reader: Reader) -> None:
    now = time.time()
    token = reader.cache.start_read(["k"])
    await reader.node.connect()  # tracking on: fills are allowed
    reader.cache.finish_read(["k"], token, [make_entry("k", b"v", None, now, now, now + 0.05)])
    assert reader.cache.lookup("k") is not MISS
    await asyncio.sleep(0.08)
    assert reader.cache.lookup("k") is MISS


async def test_nothing_is_filled_before_tracking_is_on(reader: Reader) -> None:
    token = reader.cache.start_read(["k"])
    reader.cache.finish_read(["k"], token, [None])
    assert reader.cache.lookup("k") is MISS


# -- the fetch/invalidate race ----------------------------------------------------------


async def test_an_invalidation_during_a_read_keeps_its_reply_out(
    reader: Reader, other: Connection
) -> None:
    """The reply (v1) is in hand, the fill not yet made, when another client's write is
    invalidated: the fill is refused, and the next read goes to the server (v2)."""
    key = reader.redis_key("k")
    await other.execute(b"SET", key, b"v1")
    token = reader.cache.start_read(["k"])
    data = await reader.node.execute(b"GET", key)
    assert data == b"v1"
    await other.execute(b"SET", key, b"v2")
    await wait_until(lambda: reader.cache.stats().invalidations == 1)
    now = time.time()
    reader.cache.finish_read(["k"], token, [make_entry("k", data, None, now, now, None)])
    assert reader.cache.lookup("k") is MISS
    assert await reader.get("k") == b"v2"


async def test_a_flush_during_a_read_keeps_its_reply_out(
    reader: Reader, other: Connection
) -> None:
    await other.execute(b"SET", reader.redis_key("k"), b"v1")
    token = reader.cache.start_read(["k"])
    data = await reader.node.execute(b"GET", reader.redis_key("k"))
    await other.execute(b"FLUSHDB")
    await wait_until(lambda: reader.cache.stats().flushes == 1)
    now = time.time()
    reader.cache.finish_read(["k"], token, [make_entry("k", data, None, now, now, None)])
    assert reader.cache.lookup("k") is MISS
    assert await reader.get("k") is None


async def test_an_invalidation_of_another_key_does_not_block_a_fill(
    reader: Reader, other: Connection
) -> None:
    await other.execute(b"SET", reader.redis_key("a"), b"1")
    await reader.get("b")  # tracked, cached as absent
    token = reader.cache.start_read(["a"])
    data = await reader.node.execute(b"GET", reader.redis_key("a"))
    await other.execute(b"SET", reader.redis_key("b"), b"2")
    await wait_until(lambda: reader.cache.stats().invalidations == 1)
    now = time.time()
    reader.cache.finish_read(["a"], token, [make_entry("a", data, None, now, now, None)])
    assert reader.cache.lookup("a") is not MISS


async def test_a_read_racing_a_write_on_a_second_connection_leaves_no_stale_copy(
    reader: Reader, other: Connection
) -> None:
    """Reads queued in the same iteration as a write run before it on the server: the
    push for the write comes after their replies, and then drops what they filled."""
    key = reader.redis_key("k")
    for round_ in range(50):
        old, new = b"old-%d" % round_, b"new-%d" % round_
        await other.execute(b"SET", key, old)
        assert await reader.get("k") in (old, b"new-%d" % (round_ - 1))
        reads = [asyncio.ensure_future(reader.get("k")) for _ in range(5)]
        write = other.execute(b"SET", key, new)
        await asyncio.gather(*reads, write)
        await asyncio.sleep(0.02)
        assert await reader.get("k") == new


# -- own writes -------------------------------------------------------------------------


async def test_an_own_write_leaves_no_stale_copy(reader: Reader) -> None:
    await reader.set("k", b"v1")
    assert await reader.get("k") == b"v1"
    await reader.set("k", b"v2")
    assert await reader.get("k") == b"v2"  # no wait: dropped before set returned


async def test_a_read_in_flight_across_an_own_write_fills_nothing(reader: Reader) -> None:
    await reader.set("k", b"v1")
    token = reader.cache.start_read(["k"])
    data = await reader.node.execute(b"GET", reader.redis_key("k"))
    await reader.set("k", b"v2")
    now = time.time()
    reader.cache.finish_read(["k"], token, [make_entry("k", data, None, now, now, None)])
    assert await reader.get("k") == b"v2"


# -- flushes by another client ----------------------------------------------------------


@pytest.mark.parametrize("command", [(b"FLUSHDB",), (b"FLUSHALL",)])
async def test_a_flush_by_another_client_empties_the_cache(
    reader: Reader, other: Connection, command: tuple[bytes, ...]
) -> None:
    await other.execute(b"SET", reader.redis_key("k"), b"v1")
    assert await reader.get("k") == b"v1"
    await other.execute(*command)
    await wait_until(lambda: reader.cache.stats().flushes == 1)
    assert reader.cache.stats().entries == 0
    assert await reader.get("k") is None


# -- lost connections -------------------------------------------------------------------


async def test_a_killed_connection_flushes_and_tracking_returns_on_reconnect(
    reader: Reader, other: Connection
) -> None:
    key = reader.redis_key("k")
    await other.execute(b"SET", key, b"v1")
    assert await reader.get("k") == b"v1"
    await other.execute(b"CLIENT", b"KILL", b"SKIPME", b"yes", b"TYPE", b"normal")
    await wait_until(lambda: reader.cache.stats().flushes == 1)
    other = await Connection.open(other.spec)
    try:
        await other.execute(b"SET", key, b"v2")
        assert await reader.get("k") == b"v2"  # a new connection, tracking on again
        await other.execute(b"SET", key, b"v3")
        await wait_until(lambda: reader.cache.stats().invalidations == 1)
        assert await reader.get("k") == b"v3"
    finally:
        other.close()


async def test_an_empty_restart_never_serves_the_old_copy(
    redis_server: RedisServer,
) -> None:
    reader = Reader(spec_for(redis_server.url), unique_namespace())
    try:
        await reader.set("k", b"v1")
        assert await reader.get("k") == b"v1"
        redis_server.kill()
        # The restart runs in a thread, as an outage does: the loop keeps running.
        await asyncio.to_thread(redis_server.start)
        assert await reader.get("k") is None
        assert reader.cache.stats().flushes == 1
    finally:
        await reader.close()


async def test_a_silent_server_times_the_connection_out_and_flushes(
    redis_server: RedisServer,
) -> None:
    """SIGSTOP: no reset arrives, as in a partition. The health PING times out."""
    spec = spec_for(redis_server.url, command_timeout=0.2)
    reader = Reader(spec, unique_namespace())
    try:
        await reader.set("k", b"v1")
        assert await reader.get("k") == b"v1"
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            await wait_until(lambda: reader.cache.stats().flushes == 1, timeout=3.0)
            assert reader.cache.lookup("k") is MISS
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
    finally:
        await reader.close()


# -- refusals and bad input -------------------------------------------------------------


async def test_an_acl_without_client_tracking_is_a_typed_error_naming_it(
    redis_url: str, other: Connection
) -> None:
    user, password = f"{unique_namespace()}-user", "acl-secret-42"
    await other.execute(
        b"ACL", b"SETUSER", user, b"on", f">{password}", b"~*", b"+@all", b"-client|tracking"
    )
    try:
        reader = Reader(spec_for(redis_url, username=user, password=password), "ns")
        with pytest.raises(TrackingUnavailableError, match=r"client\|tracking") as caught:
            await reader.get("k")
        assert password not in str(caught.value)
        assert reader.cache.lookup("k") is MISS
        await reader.close()
    finally:
        await other.execute(b"ACL", b"DELUSER", user)


async def test_a_resp2_connection_is_refused_for_tracking(redis_url: str) -> None:
    reader = Reader(spec_for(redis_url, protocol=2), "ns")
    with pytest.raises(TrackingUnavailableError, match="RESP3"):
        await reader.get("k")
    await reader.close()


@pytest.mark.parametrize(
    ("size", "error"),
    [
        (0, InvalidArgumentError),
        (-5, InvalidArgumentError),
        (1.5, InvalidArgumentTypeError),
        ("10", InvalidArgumentTypeError),
        (True, InvalidArgumentTypeError),
        (None, InvalidArgumentTypeError),
    ],
)
def test_a_size_that_is_not_a_positive_int_is_refused(size: Any, error: type) -> None:
    with pytest.raises(error, match="near_cache"):
        NearCache(size, b"ns:")


# -- goal figures -----------------------------------------------------------------------


async def test_no_read_returns_the_old_value_20_ms_after_another_clients_write(
    reader: Reader, other: Connection
) -> None:
    """1,000 writes, 100 keys at a time: each key cached, rewritten by the other client,
    read again once 20 ms passed since its write returned."""
    keys = [f"hot-{index}" for index in range(100)]
    stale = 0
    for round_ in range(10):
        for key in keys:
            await reader.get(key)
            assert reader.cache.lookup(key) is not MISS
        for key in keys:
            await other.execute(b"SET", reader.redis_key(key), b"%d" % round_)
        await asyncio.sleep(0.02)
        for key in keys:
            stale += await reader.get(key) != b"%d" % round_
    assert stale == 0


async def test_eight_readers_see_the_last_of_fifty_rewrites(
    reader: Reader, other: Connection
) -> None:
    key = reader.redis_key("hot")
    for trial in range(20):
        stop = asyncio.Event()

        async def read_until_stopped(stop: asyncio.Event) -> None:
            while not stop.is_set():
                await reader.get("hot")
                await asyncio.sleep(0)

        readers = [asyncio.ensure_future(read_until_stopped(stop)) for _ in range(8)]
        for write in range(50):
            await other.execute(b"SET", key, b"%d-%d" % (trial, write))
        await asyncio.sleep(0.02)
        seen = await asyncio.gather(*(reader.get("hot") for _ in range(8)))
        stop.set()
        await asyncio.gather(*readers)
        assert seen == [b"%d-49" % trial] * 8


# -- Redis Cluster ----------------------------------------------------------------------


async def cluster_reader(url: str) -> Reader:
    seed = url.split("//", 1)[1].split("?", 1)[0]
    host, port = seed.rsplit(":", 1)
    reader = Reader(ConnectionSpec(host=host, port=int(port)), unique_namespace())
    reader.router = await ClusterRouter.open([(host, int(port))], reader.connect)
    return reader


def keys_on_every_primary(reader: Reader) -> dict[Any, str]:
    """One key of this reader's namespace per primary, by the router's slot map."""
    assert reader.router is not None
    found: dict[Any, str] = {}
    index = 0
    while len(found) < len(reader.router.primaries()):
        key = f"k{index}"
        found.setdefault(reader.router._slots[slot_of(reader.redis_key(key))], key)
        index += 1
    return found


async def test_cluster_tracking_is_on_at_every_primary(cluster_url: str) -> None:
    reader = await cluster_reader(cluster_url)
    assert reader.router is not None
    writer = await cluster_reader(cluster_url)  # no near cache is used on this side
    try:
        keys = keys_on_every_primary(reader)
        assert len(keys) == 3
        for key in keys.values():
            await writer.execute(reader.redis_key(key), b"SET", reader.redis_key(key), b"1")
            assert await reader.get(key) == b"1"
        assert reader.cache.stats().entries == 3
        for key in keys.values():
            await writer.execute(reader.redis_key(key), b"SET", reader.redis_key(key), b"2")
        await wait_until(lambda: reader.cache.stats().invalidations == 3)
        assert [await reader.get(key) for key in keys.values()] == [b"2"] * 3
        assert reader.cache.stats().flushes == 0
    finally:
        await reader.close()
        await writer.close()


async def test_cluster_a_killed_node_connection_flushes(cluster_url: str) -> None:
    reader = await cluster_reader(cluster_url)
    try:
        keys = keys_on_every_primary(reader)
        for key in keys.values():
            await reader.get(key)
        address, key = next(iter(keys.items()))
        killer = await Connection.open(ConnectionSpec(host=address.host, port=address.port))
        try:
            await killer.execute(b"CLIENT", b"KILL", b"SKIPME", b"yes", b"TYPE", b"normal")
        finally:
            killer.close()
        await wait_until(lambda: reader.cache.stats().flushes >= 1)
        assert reader.cache.stats().entries == 0
        assert await reader.get(key) is None  # read again through a new, tracked connection
        assert reader.cache.lookup(key) is None
    finally:
        await reader.close()


@pytest.fixture
def private_cluster(tmp_path: Path, redis_binary: str) -> Iterator[list[RedisServer]]:
    servers = start_cluster(redis_binary, tmp_path / "cluster")
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def test_cluster_a_moved_slot_is_tracked_on_its_new_node(
    private_cluster: list[RedisServer],
) -> None:
    """The slot of a cached key moves to another primary (MIGRATE, SETSLOT NODE): the
    source's MIGRATE drops the copy, the next read follows MOVED to the target, and the
    copy it fills there is invalidated by the target."""
    reader = await cluster_reader(f"redis+cluster://127.0.0.1:{private_cluster[0].port}")
    writer = await cluster_reader(f"redis+cluster://127.0.0.1:{private_cluster[0].port}")
    assert reader.router is not None
    assert writer.router is not None
    try:
        key = "moving"
        redis_key = reader.redis_key(key)
        slot = slot_of(redis_key)
        source = reader.router._slots[slot]
        target = next(node for node in reader.router.primaries() if node != source)
        assert source is not None
        await writer.execute(redis_key, b"SET", redis_key, b"before")
        assert await reader.get(key) == b"before"
        admins = {
            node: await Connection.open(ConnectionSpec(host=node.host, port=node.port))
            for node in (source, target)
        }
        try:
            ids = {node: await admins[node].execute(b"CLUSTER", b"MYID") for node in admins}
            await admins[target].execute(b"CLUSTER", b"SETSLOT", slot, b"IMPORTING", ids[source])
            await admins[source].execute(b"CLUSTER", b"SETSLOT", slot, b"MIGRATING", ids[target])
            await admins[source].execute(b"MIGRATE", b"127.0.0.1", target.port, redis_key, 0, 5000)
            await wait_until(lambda: reader.cache.stats().invalidations == 1)
            for node in (target, source):
                await admins[node].execute(b"CLUSTER", b"SETSLOT", slot, b"NODE", ids[target])
        finally:
            for admin in admins.values():
                admin.close()
        assert await reader.get(key) == b"before"  # MOVED, then read on the target
        assert reader.router._slots[slot] == target
        assert reader.cache.lookup(key) is not MISS
        await writer.router.refresh()
        await writer.execute(redis_key, b"SET", redis_key, b"after")
        await wait_until(lambda: reader.cache.stats().invalidations == 2)
        assert await reader.get(key) == b"after"
    finally:
        await reader.close()
        await writer.close()


async def test_a_forked_child_starts_with_an_empty_near_cache(
    reader: Reader, other: Connection
) -> None:
    """The child inherits the copies but not the tracking (the parent's sockets get the
    invalidations), so it must not serve them."""
    await other.execute(b"SET", reader.redis_key("k"), b"v1")
    assert await reader.get("k") == b"v1"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        os._exit(0 if reader.cache.lookup("k") is MISS and not reader.cache._tracked else 1)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reader.cache.lookup("k") is not MISS  # the parent keeps its copy


async def test_cluster_a_failover_flushes_and_the_new_primary_is_tracked(
    private_cluster: list[RedisServer], tmp_path: Path, redis_binary: str
) -> None:
    """A primary holding cached keys dies: its lost connection flushes; once its replica
    takes over, reads go there, fill again, and its invalidations drop the copies."""
    from tests.redis_servers import CLUSTER_ARGS, free_port
    from tests.test_cluster_routing import admin, knows, link_up, node_id, wait_for

    victim = private_cluster[1]
    replica = RedisServer(
        redis_binary, tmp_path / "replica", port=free_port(cluster_bus=True), args=CLUSTER_ARGS
    )
    replica.start()
    replica_admin = await admin(replica)
    url = f"redis+cluster://127.0.0.1:{private_cluster[0].port}"
    reader = await cluster_reader(url)
    assert reader.router is not None
    try:
        await replica_admin.execute_command(
            "CLUSTER", "MEET", "127.0.0.1", private_cluster[0].port
        )
        victim_id = await node_id(victim)
        await wait_for(lambda: knows(replica_admin, victim_id), "the replica to learn the victim")
        await replica_admin.execute_command("CLUSTER", "REPLICATE", victim_id)
        await wait_for(lambda: link_up(replica_admin), "the replica to sync")
        key = next(
            f"f{index}"
            for index in range(1000)
            if reader.router._slots[slot_of(reader.redis_key(f"f{index}"))].port == victim.port  # type: ignore[union-attr]
        )
        redis_key = reader.redis_key(key)
        await reader.set(key, b"before")
        assert await reader.execute(redis_key, b"WAIT", 1, 2000) == 1
        assert await reader.get(key) == b"before"
        assert reader.cache.lookup(key) is not MISS

        victim.kill()
        await wait_until(lambda: reader.cache.stats().flushes >= 1)
        assert reader.cache.lookup(key) is MISS
        await replica_admin.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        deadline = time.monotonic() + 10.0
        while True:
            try:
                assert await reader.get(key) == b"before"
                break
            except OSError:  # BackendUnavailableError until the refreshed map finds it
                assert time.monotonic() < deadline, "the new primary was never found"
                await asyncio.sleep(0.05)
        assert reader.cache.lookup(key) is not MISS  # filled from the new primary
        invalidations = reader.cache.stats().invalidations
        await replica_admin.execute_command("SET", redis_key, "after")
        await wait_until(lambda: reader.cache.stats().invalidations > invalidations)
        assert await reader.get(key) == b"after"
    finally:
        await reader.close()
        await replica_admin.aclose()
        replica.stop()
