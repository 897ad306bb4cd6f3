"""ClusterRouter on real clusters: slot routing, batches, resharding (ASK, MOVED), failover.

The shared 3-primary cluster (``cluster_url``) serves the read-mostly tests; the tests
that move slots or kill nodes start a private cluster and stop it afterwards.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from memkv.errors import (
    AccessDeniedError,
    BackendUnavailableError,
    InvalidArgumentError,
    InvalidKeyError,
    StoreClosedError,
)
from memkv.redis.cluster import ClusterRouter, NodeAddress, NodeConnection, node_factory, slot_of
from memkv.redis.transport import ConnectionSpec, RedirectError, ReplyError
from tests.redis_servers import CLUSTER_ARGS, RedisServer, start_cluster, unique_namespace

pytestmark = pytest.mark.redis


class ObservedNode:
    """The transport's ``Node``, with what passes through it counted for the tests."""

    def __init__(self, node: NodeConnection, nodes: Nodes) -> None:
        self.node = node
        self.nodes = nodes

    def _note(self, reply: Any) -> Any:
        if isinstance(reply, RedirectError):
            self.nodes.redirects.append(reply.prefix)
        return reply

    async def execute(self, *args: Any) -> Any:
        try:
            reply = await self.node.execute(*args)
        except RedirectError as err:
            self._note(err)
            raise
        if args[:2] == ("CLUSTER", "SLOTS"):
            self.nodes.slot_maps += 1
        return reply

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        self.nodes.asking += sum(1 for command in commands if command[0] == "ASKING")
        return [self._note(reply) for reply in await self.node.execute_many(commands)]

    def close(self) -> None:
        self.node.close()


class Nodes:
    """Makes the transport ``Node`` a router asks for, and counts what they meet."""

    def __init__(self, spec: ConnectionSpec) -> None:
        self.connect = node_factory(spec)
        self.redirects: list[str] = []
        self.asking = 0
        #: Slot maps read (successful CLUSTER SLOTS): one per refresh.
        self.slot_maps = 0

    def __call__(self, host: str, port: int) -> NodeConnection:
        return ObservedNode(self.connect(host, port), self)


@pytest.fixture
def nodes() -> Nodes:
    return Nodes(ConnectionSpec(connect_timeout=0.5, command_timeout=2.0))


def seed_of(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].split("?", 1)[0].rsplit(":", 1)
    return host, int(port)


@pytest.fixture
async def router(cluster_url: str, nodes: Nodes) -> AsyncIterator[ClusterRouter]:
    opened = await ClusterRouter.open([seed_of(cluster_url)], nodes)
    yield opened
    await opened.close()


@pytest.fixture
async def reference(cluster_url: str) -> AsyncIterator[RedisCluster]:
    """redis-py's own cluster client, to read back what the router wrote."""
    client = RedisCluster.from_url(cluster_url.replace("+cluster", "").split("?", 1)[0])
    yield client
    await client.aclose()
    # redis-py 8's mget_nonatomic leaves a socket of a copied connection unclosed: let it
    # warn here, under the mark of the test that used the fixture, not in a later test.
    gc.collect()


# -- slots ---------------------------------------------------------------------------------


def test_slot_of_hashes_only_the_first_non_empty_hash_tag() -> None:
    assert slot_of(b"foo") == 12182  # the cluster specification's example
    assert slot_of("{user1000}.following") == slot_of(b"{user1000}.followers")
    assert slot_of(b"{user1000}.following") == slot_of(b"user1000")
    assert slot_of(b"foo{{bar}}zap") == slot_of(b"{bar")
    assert slot_of(b"foo{bar}{zap}") == slot_of(b"bar")
    assert slot_of("clé") == slot_of("clé".encode())


def test_slot_of_an_empty_hash_tag_hashes_the_whole_key() -> None:
    assert slot_of(b"foo{}{bar}") != slot_of(b"bar")
    assert slot_of(b"a{}") != slot_of(b"")


def test_slot_of_rejects_a_key_that_is_not_bytes_or_str() -> None:
    with pytest.raises(InvalidKeyError):
        slot_of(12)  # type: ignore[arg-type]


async def test_slot_of_agrees_with_the_server_keyslot(router: ClusterRouter) -> None:
    rng = random.Random(7)
    keys = [b"plain", b"{tag}rest", b"x{}y", b"{}", b"{{a}}", b"\xff\x00{\xfe}"] + [
        rng.randbytes(rng.randint(0, 24)) for _ in range(300)
    ]
    node = router.primaries()[0]
    for key in keys:
        assert await router.execute_on(node, "CLUSTER", "KEYSLOT", key) == slot_of(key)


# -- routing -------------------------------------------------------------------------------


@pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)
async def test_keys_written_through_the_router_read_back_with_redis_py_cluster(
    router: ClusterRouter, reference: RedisCluster
) -> None:
    namespace = unique_namespace()
    keys = [f"{namespace}:{index}".encode() for index in range(600)]
    for key in keys[:300]:
        assert await router.execute(key, "SET", key, b"single:" + key) == b"OK"
    replies = await router.execute_many(
        [(key, ("SET", key, b"many:" + key)) for key in keys[300:]]
    )
    assert replies == [b"OK"] * 300

    read_back = await reference.mget_nonatomic(keys)
    assert read_back == [b"single:" + key for key in keys[:300]] + [
        b"many:" + key for key in keys[300:]
    ]
    # Every primary holds a share, exactly the keys redis-py places there.
    primaries = router.primaries()
    assert len(primaries) == 3
    for address in primaries:
        expected = sum(
            1
            for key in keys
            if reference.get_node_from_key(key).port == address.port  # type: ignore[union-attr]
        )
        assert expected > 100
        counts = await router.on_every_primary("DBSIZE")
        assert counts[address] >= expected
    await reference.delete(*keys)


async def test_execute_many_returns_replies_in_the_callers_order(router: ClusterRouter) -> None:
    namespace = unique_namespace()
    keys = [f"{namespace}:{index}".encode() for index in range(200)]
    await router.execute_many([(key, ("SET", key, str(index))) for index, key in enumerate(keys)])
    order = list(range(len(keys)))
    random.Random(3).shuffle(order)
    commands = [(keys[index], ("GET", keys[index])) for index in order]
    assert await router.execute_many(commands) == [str(index).encode() for index in order]
    # Mixed commands on one node and several, one key twice in one batch.
    mixed = await router.execute_many(
        [
            (keys[0], ("INCR", keys[0])),
            (keys[1], ("APPEND", keys[1], "x")),
            (keys[0], ("GET", keys[0])),
            (keys[2], ("DEL", keys[2])),
            (keys[2], ("EXISTS", keys[2])),
        ]
    )
    assert mixed == [1, 2, b"1", 1, 0]
    assert await router.execute_many([]) == []


async def test_execute_many_raises_the_first_error_after_running_every_command(
    router: ClusterRouter,
) -> None:
    namespace = unique_namespace()
    text, counter = f"{namespace}:text".encode(), f"{namespace}:counter".encode()
    await router.execute(text, "SET", text, b"not a number")
    with pytest.raises(ReplyError, match="not an integer"):
        await router.execute_many([(counter, ("INCR", counter)), (text, ("INCR", text))])
    assert await router.execute(counter, "GET", counter) == b"1"
    with pytest.raises(ReplyError, match="not an integer"):
        await router.execute(text, "INCR", text)


async def test_on_every_primary_runs_scan_on_each_node(
    router: ClusterRouter, reference: RedisCluster
) -> None:
    namespace = unique_namespace()
    keys = {f"{namespace}:{index}".encode() for index in range(90)}
    await router.execute_many([(key, ("SET", key, b"1")) for key in keys])
    found: set[bytes] = set()
    for address in router.primaries():
        cursor = b"0"
        while True:
            cursor, batch = await router.execute_on(
                address, "SCAN", cursor, "MATCH", f"{namespace}:*", "COUNT", 50
            )
            found.update(batch)
            if cursor == b"0":
                break
    assert found == keys
    loaded = await router.on_every_primary("SCRIPT", "LOAD", "return 1")
    assert len(set(loaded.values())) == 1
    assert set(loaded) == set(router.primaries())
    await reference.delete(*keys)


async def test_open_rejects_bad_options_and_unreachable_seeds(nodes: Nodes) -> None:
    with pytest.raises(InvalidArgumentError):
        await ClusterRouter.open([], nodes)
    with pytest.raises(InvalidArgumentError):
        await ClusterRouter.open([("127.0.0.1", 1)], nodes, max_redirects=-1)
    from tests.redis_servers import free_port

    with pytest.raises(BackendUnavailableError, match="no Redis Cluster node answered"):
        await ClusterRouter.open([("127.0.0.1", free_port())], nodes)


async def test_a_stale_slot_map_is_fixed_by_moved(cluster_url: str, nodes: Nodes) -> None:
    router = await ClusterRouter.open([seed_of(cluster_url)], nodes)
    try:
        key = f"{unique_namespace()}:moved".encode()
        slot = slot_of(key)
        owner = router._slots[slot]
        wrong = next(address for address in router.primaries() if address != owner)
        router._slots[slot] = wrong  # as if the slot had moved since the map was read
        assert await router.execute(key, "SET", key, b"v") == b"OK"
        assert nodes.redirects == ["MOVED"]
        assert router._slots[slot] == owner
        router._slots[slot] = wrong
        assert await router.execute_many([(key, ("GET", key))]) == [b"v"]
        assert nodes.redirects == ["MOVED", "MOVED"]
        await router.execute(key, "DEL", key)
    finally:
        await router.close()


async def test_a_command_redirected_more_than_max_redirects_times_fails_typed(
    cluster_url: str, nodes: Nodes
) -> None:
    router = await ClusterRouter.open([seed_of(cluster_url)], nodes, max_redirects=0)
    try:
        key = f"{unique_namespace()}:bounded".encode()
        slot = slot_of(key)
        owner = router._slots[slot]
        wrong = next(address for address in router.primaries() if address != owner)
        router._slots[slot] = wrong
        with pytest.raises(BackendUnavailableError, match="redirected more than 0 times"):
            await router.execute(key, "GET", key)
        router._slots[slot] = wrong
        with pytest.raises(BackendUnavailableError, match="redirected more than 0 times"):
            await router.execute_many([(key, ("GET", key))])
    finally:
        await router.close()


async def test_a_closed_router_refuses_commands(router: ClusterRouter) -> None:
    await router.close()
    with pytest.raises(StoreClosedError):
        await router.execute(b"k", "GET", b"k")


async def test_refused_credentials_and_acl_refusals_are_access_denied_not_outages(
    cluster_url: str, router: ClusterRouter
) -> None:
    namespace = unique_namespace()
    user, password = f"{namespace}-user", "acl-secret-42"
    await router.on_every_primary(
        "ACL", "SETUSER", user, "on", f">{password}", f"~{namespace}:*", "+@all"
    )
    try:
        wrong = node_factory(ConnectionSpec(username=user, password="wrong-secret-17"))
        with pytest.raises(AccessDeniedError) as refused:
            await ClusterRouter.open([seed_of(cluster_url)], wrong)
        assert "wrong-secret-17" not in str(refused.value)

        limited = await ClusterRouter.open(
            [seed_of(cluster_url)], node_factory(ConnectionSpec(username=user, password=password))
        )
        try:
            allowed, forbidden = f"{namespace}:k".encode(), b"elsewhere:k"
            assert await limited.execute(allowed, "SET", allowed, b"1") == b"OK"
            with pytest.raises(AccessDeniedError, match="NOPERM"):
                await limited.execute(forbidden, "SET", forbidden, b"1")
            with pytest.raises(AccessDeniedError, match="NOPERM"):
                await limited.execute_many(
                    [(allowed, ("GET", allowed)), (forbidden, ("GET", forbidden))]
                )
            assert await limited.execute(allowed, "GET", allowed) == b"1"
            await limited.execute(allowed, "DEL", allowed)
        finally:
            await limited.close()
    finally:
        await router.on_every_primary("ACL", "DELUSER", user)


@pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)
def test_a_router_moves_to_the_next_event_loop_once_its_loop_has_stopped(
    cluster_url: str, nodes: Nodes
) -> None:
    key = f"{unique_namespace()}:loops".encode()

    async def first() -> ClusterRouter:
        router = await ClusterRouter.open([seed_of(cluster_url)], nodes, refresh_interval=60)
        await router.execute(key, "SET", key, b"1")
        router._slots[slot_of(key)] = next(
            address for address in router.primaries() if address != router._slots[slot_of(key)]
        )
        await router.execute(key, "GET", key)  # MOVED: a refresh is scheduled, 60 s away
        return router

    router = asyncio.run(first())

    async def second() -> None:
        assert await router.execute(key, "INCR", key) == 2
        router._slots[slot_of(key)] = next(
            address for address in router.primaries() if address != router._slots[slot_of(key)]
        )
        assert await router.execute_many([(key, ("GET", key))]) == [b"2"]
        assert router._refresh_task is not None
        assert router._refresh_task.get_loop() is asyncio.get_running_loop()
        await router.execute(key, "DEL", key)
        await router.close()

    asyncio.run(second())
    assert nodes.redirects == ["MOVED", "MOVED"]
    gc.collect()  # the first loop's connections warn here, where the mark ignores it


# -- a cluster of our own ------------------------------------------------------------------


@pytest.fixture
def private_cluster(tmp_path: Path, redis_binary: str) -> Iterator[list[RedisServer]]:
    servers = start_cluster(redis_binary, tmp_path / "cluster")
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def admin(server: RedisServer | NodeAddress) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(host="127.0.0.1", port=server.port, decode_responses=True)


async def node_id(server: RedisServer | NodeAddress) -> str:
    client = await admin(server)
    try:
        return str(await client.execute_command("CLUSTER", "MYID"))
    finally:
        await client.aclose()


async def test_ask_goes_to_the_importing_node_and_leaves_the_slot_map_alone(
    private_cluster: list[RedisServer], nodes: Nodes
) -> None:
    router = await ClusterRouter.open([("127.0.0.1", private_cluster[0].port)], nodes)
    moved, staying = b"{ask}:moved", b"{ask}:staying"
    slot = slot_of(moved)
    source = router._slots[slot]
    assert source is not None
    target = next(address for address in router.primaries() if address != source)
    source_admin, target_admin = await admin(source), await admin(target)
    try:
        await router.execute_many(
            [(moved, ("SET", moved, b"1")), (staying, ("SET", staying, b"2"))]
        )
        await target_admin.execute_command(
            "CLUSTER", "SETSLOT", slot, "IMPORTING", await node_id(source)
        )
        await source_admin.execute_command(
            "CLUSTER", "SETSLOT", slot, "MIGRATING", await node_id(target)
        )
        await source_admin.execute_command("MIGRATE", "127.0.0.1", target.port, moved, 0, 5000)

        assert await router.execute(moved, "GET", moved) == b"1"
        assert nodes.redirects == ["ASK"]
        assert nodes.asking == 1
        assert await router.execute_many(
            [(staying, ("GET", staying)), (moved, ("INCR", moved)), (staying, ("GET", staying))]
        ) == [b"2", 2, b"2"]
        assert nodes.redirects == ["ASK", "ASK"]
        assert nodes.asking == 2
        assert router._slots[slot] == source  # ASK is one command's detour, not a move
        pipeline = target_admin.pipeline(transaction=False)
        pipeline.execute_command("ASKING").execute_command("GET", moved)
        assert (await pipeline.execute())[1] == "2"  # the INCR ran on the importing node
    finally:
        await router.close()
        await source_admin.aclose()
        await target_admin.aclose()


async def test_reads_see_writes_while_a_slot_migrates_to_another_node(
    private_cluster: list[RedisServer], nodes: Nodes
) -> None:
    """MIGRATING/IMPORTING, MIGRATE of the slot's keys, then SETSLOT NODE, under load:
    the router follows ASK during the move and MOVED after it, and no call fails."""
    router = await ClusterRouter.open([("127.0.0.1", private_cluster[0].port)], nodes)
    keys = [f"{{moving}}:{index}".encode() for index in range(400)]
    slot = slot_of(keys[0])
    source = router._slots[slot]
    assert source is not None
    target = next(address for address in router.primaries() if address != source)
    await router.execute_many([(key, ("SET", key, b"0")) for key in keys])
    source_id, target_id = await node_id(source), await node_id(target)
    source_admin, target_admin = await admin(source), await admin(target)
    written = dict.fromkeys(keys, b"0")
    moving = True
    operations = 0

    async def worker(mine: list[bytes]) -> None:
        nonlocal operations
        rng = random.Random(len(mine))
        round_number = 0
        while moving or round_number < 3:
            round_number += 1
            key = rng.choice(mine)
            if rng.random() < 0.5:
                value = f"{round_number}".encode()
                await router.execute(key, "SET", key, value)
                written[key] = value
            elif rng.random() < 0.5:
                assert await router.execute(key, "GET", key) == written[key]
            else:
                batch = rng.sample(mine, 5)
                assert await router.execute_many([(k, ("GET", k)) for k in batch]) == [
                    written[k] for k in batch
                ]
            operations += 1
            await asyncio.sleep(0)

    try:
        workers = [asyncio.create_task(worker(keys[start::20])) for start in range(20)]
        await target_admin.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await source_admin.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            batch = await source_admin.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
            if not batch:
                break
            await source_admin.execute_command(
                "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *batch
            )
            await asyncio.sleep(0.01)  # let the workers meet a half-moved slot
        for client in (target_admin, source_admin):
            await client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        await asyncio.sleep(0.2)
        moving = False
        await asyncio.gather(*workers)
        assert await router.execute_many([(key, ("GET", key)) for key in keys]) == [
            written[key] for key in keys
        ]
        assert router._slots[slot] == target
        assert "ASK" in nodes.redirects
        assert "MOVED" in nodes.redirects
        assert nodes.asking > 0
        assert operations > 200
    finally:
        moving = False
        await router.close()
        await source_admin.aclose()
        await target_admin.aclose()


async def test_the_router_recovers_when_a_replica_takes_over_a_dead_primary(
    private_cluster: list[RedisServer], tmp_path: Path, redis_binary: str, nodes: Nodes
) -> None:
    """A primary dies: its keys fail with BackendUnavailableError (others still work);
    once its replica takes over, the refreshed slot map routes there, in bounded time."""
    from tests.redis_servers import free_port

    victim = private_cluster[1]
    replica = RedisServer(
        redis_binary, tmp_path / "replica", port=free_port(cluster_bus=True), args=CLUSTER_ARGS
    )
    replica.start()
    replica_admin = await admin(replica)
    router = await ClusterRouter.open(
        [("127.0.0.1", private_cluster[0].port)], nodes, refresh_interval=0.2
    )
    try:
        await replica_admin.execute_command(
            "CLUSTER", "MEET", "127.0.0.1", private_cluster[0].port
        )
        victim_id = await node_id(victim)
        await wait_for(lambda: knows(replica_admin, victim_id), "the replica to learn the victim")
        await replica_admin.execute_command("CLUSTER", "REPLICATE", victim_id)
        await wait_for(lambda: link_up(replica_admin), "the replica to sync")

        keys = [f"failover:{index}".encode() for index in range(300)]
        await router.execute_many([(key, ("SET", key, b"before")) for key in keys])
        victim_address = NodeAddress("127.0.0.1", victim.port)
        # WAIT counts the replicas that acknowledged this connection's writes: it must
        # go on the connection the router wrote on, not on another client's.
        assert await router.execute_on(victim_address, "WAIT", 1, 2000) == 1
        on_victim = [key for key in keys if router._slots[slot_of(key)] == victim_address]
        elsewhere = [key for key in keys if key not in on_victim]
        assert on_victim
        assert elsewhere

        victim.kill()
        maps_before = nodes.slot_maps
        started = time.monotonic()
        for key in on_victim[:50]:
            with pytest.raises(BackendUnavailableError, match=str(victim.port)):
                await router.execute(key, "GET", key)
            assert await router.execute(elsewhere[0], "GET", elsewhere[0]) == b"before"
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - started
        assert elapsed < 5.0
        # 50 failed calls, yet at most one refresh per refresh_interval (0.2 s).
        assert nodes.slot_maps - maps_before <= 1 + elapsed / 0.2
        # A batch spanning every node fails as a whole, after the live nodes ran theirs.
        with pytest.raises(BackendUnavailableError, match=str(victim.port)):
            await router.execute_many([(key, ("SET", key, b"during")) for key in keys])
        assert await router.execute(elsewhere[0], "GET", elsewhere[0]) == b"during"
        with pytest.raises(BackendUnavailableError, match=str(victim.port)):
            await router.on_every_primary("DBSIZE")

        await replica_admin.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        promoted = time.monotonic()
        while True:
            try:
                reply = await router.execute(on_victim[0], "GET", on_victim[0])
                break
            except BackendUnavailableError:
                # The replica promotes itself at once; then one refresh, at most
                # refresh_interval (0.2 s) after the last, finds it.
                assert time.monotonic() - promoted < 5.0, "the router never found the new primary"
                await asyncio.sleep(0.05)
        assert reply == b"before"
        assert NodeAddress("127.0.0.1", replica.port) in router.primaries()
        assert victim_address not in router.primaries()
        assert await router.execute_many([(key, ("GET", key)) for key in keys]) == [
            b"during" if key in elsewhere else b"before" for key in keys
        ]
        await router.execute_many([(key, ("SET", key, b"after")) for key in on_victim])
        assert await replica_admin.execute_command("GET", on_victim[-1]) == "after"
    finally:
        await router.close()
        await replica_admin.aclose()
        replica.stop()


async def wait_for(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def knows(client: redis.asyncio.Redis, node: str) -> bool:
    nodes = await client.execute_command("CLUSTER", "NODES")
    return node in str(nodes)


async def link_up(client: redis.asyncio.Redis) -> bool:
    info = await client.info("replication")
    return info.get("role") == "slave" and info.get("master_link_status") == "up"
