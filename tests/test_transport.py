"""The coalescing RESP transport (``memkv.redis.transport``) against real servers.

Batching, ordering, pipelines, error replies, RESP2/RESP3 and pushes, authentication,
TLS, unix sockets, timeouts on a hung server, outages and recovery, cancellation,
back-pressure, large values, fork and event-loop binding.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from memkv.errors import (
    AccessDeniedError,
    BackendError,
    BackendUnavailableError,
    CodecError,
    EventLoopError,
    InvalidArgumentError,
)
from memkv.redis.transport import (
    AccessReplyError,
    CommandTimeoutError,
    Connection,
    ConnectionSpec,
    Node,
    RedirectError,
    ReplyError,
    pack_command,
)
from tests.redis_servers import RedisServer, free_port, unique_namespace

pytestmark = pytest.mark.redis


def spec_for(url: str, **options: Any) -> ConnectionSpec:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return ConnectionSpec(host=parts.hostname, port=parts.port, **options)


@pytest.fixture
async def conn(redis_url: str) -> AsyncIterator[Connection]:
    opened = await Connection.open(spec_for(redis_url))
    yield opened
    opened.close()


class CountingWrites:
    """Wraps a connection's asyncio transport to record the bytes of every write."""

    def __init__(self, connection: Connection) -> None:
        transport = connection._transport
        assert transport is not None
        self.writes: list[bytes] = []
        original = transport.write

        def write(data: bytes | bytearray | memoryview) -> None:
            self.writes.append(bytes(data))
            original(data)

        transport.write = write  # type: ignore[method-assign]


# -- batching and ordering ------------------------------------------------------------------


async def test_fifty_commands_issued_in_one_iteration_leave_in_one_write(
    conn: Connection,
) -> None:
    namespace = unique_namespace()
    await conn.execute(b"SET", f"{namespace}:k", b"v")
    counter = CountingWrites(conn)
    before = conn.stats()
    replies = await asyncio.gather(*(conn.execute(b"GET", f"{namespace}:k") for _ in range(50)))
    assert replies == [b"v"] * 50
    assert len(counter.writes) == 1
    assert counter.writes[0].count(b"GET") == 50
    after = conn.stats()
    assert (after.writes - before.writes, after.commands - before.commands) == (1, 50)


async def test_a_lone_caller_is_written_in_the_same_iteration_without_waiting(
    conn: Connection,
) -> None:
    counter = CountingWrites(conn)
    for _ in range(5):
        assert await conn.execute(b"PING") == b"PONG"
    assert len(counter.writes) == 5


async def test_replies_go_to_their_own_callers_under_concurrency(conn: Connection) -> None:
    namespace = unique_namespace()

    async def round_trip(index: int) -> None:
        key = f"{namespace}:{index}"
        value = f"value-{index}".encode()
        assert await conn.execute(b"SET", key, value) == b"OK"
        assert await conn.execute(b"GET", key) == value
        assert await conn.execute(b"STRLEN", key) == len(value)

    await asyncio.gather(*(round_trip(index) for index in range(500)))
    assert conn.stats().writes < conn.stats().commands / 10


async def test_a_pipeline_returns_error_replies_in_the_list_and_raises_nothing(
    conn: Connection,
) -> None:
    key = f"{unique_namespace()}:k"
    replies = await conn.execute_many(
        [(b"SET", key, b"text"), (b"INCR", key), (b"GET", key), (b"LPUSH", key, b"x")]
    )
    assert replies[0] == b"OK"
    assert isinstance(replies[1], ReplyError)
    assert replies[1].prefix == "ERR"
    assert replies[2] == b"text"
    assert isinstance(replies[3], ReplyError)
    assert replies[3].prefix == "WRONGTYPE"
    assert await conn.execute_many([]) == []


async def test_a_pipeline_longer_than_max_inflight_streams_through(redis_url: str) -> None:
    connection = await Connection.open(spec_for(redis_url, max_inflight=8))
    try:
        key = f"{unique_namespace()}:counter"
        replies = await connection.execute_many([(b"INCR", key)] * 1000)
        assert replies == list(range(1, 1001))
    finally:
        connection.close()


# -- replies and errors ---------------------------------------------------------------------


async def test_error_replies_raise_a_backend_error_carrying_prefix_and_text(
    conn: Connection,
) -> None:
    key = f"{unique_namespace()}:list"
    await conn.execute(b"RPUSH", key, b"x")
    with pytest.raises(ReplyError) as wrongtype:
        await conn.execute(b"GET", key)
    assert isinstance(wrongtype.value, BackendError)
    assert wrongtype.value.prefix == "WRONGTYPE"
    assert "wrong kind of value" in wrongtype.value.message
    with pytest.raises(ReplyError) as noscript:
        await conn.execute(b"EVALSHA", b"0" * 40, 0)
    assert noscript.value.prefix == "NOSCRIPT"
    assert await conn.execute(b"PING") == b"PONG"  # still in step after errors


async def test_an_error_inside_an_array_reply_stays_an_element(conn: Connection) -> None:
    reply = await conn.execute(b"EVAL", b"return {1, redis.error_reply('NOPE inner')}", 0)
    assert reply[0] == 1
    assert isinstance(reply[1], ReplyError)
    assert reply[1].prefix == "NOPE"


def test_reply_errors_pick_their_class_from_the_prefix() -> None:
    assert type(ReplyError("NOPERM no")) is AccessReplyError
    assert isinstance(ReplyError("WRONGPASS bad"), AccessDeniedError)
    assert isinstance(ReplyError("NOAUTH needed"), PermissionError)
    moved = ReplyError("MOVED 3999 127.0.0.1:6381")
    assert isinstance(moved, RedirectError)
    assert (moved.prefix, moved.slot, moved.host, moved.port) == ("MOVED", 3999, "127.0.0.1", 6381)
    ask = ReplyError("ASK 1 ::1:7000")
    assert (ask.prefix, ask.slot, ask.host, ask.port) == ("ASK", 1, "::1", 7000)
    assert ReplyError("MOVED 7 :7001").host == ""
    assert type(ReplyError("ERR x")) is ReplyError


async def test_arguments_of_every_supported_type_are_encoded(conn: Connection) -> None:
    key = f"{unique_namespace()}:k"
    for value, stored in [
        (b"raw", b"raw"),
        ("h\u00e9", "h\u00e9".encode()),
        (42, b"42"),
        (-7, b"-7"),
        (1.5, b"1.5"),
        (bytearray(b"ba"), b"ba"),
        (memoryview(b"mv"), b"mv"),
    ]:
        await conn.execute(b"SET", key, value)
        assert await conn.execute(b"GET", key) == stored


async def test_an_unencodable_argument_is_a_codec_error_and_sends_nothing(
    conn: Connection,
) -> None:
    counter = CountingWrites(conn)
    with pytest.raises(CodecError, match="NoneType"):
        await conn.execute(b"SET", b"k", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await conn.execute_many([(b"SET", b"k", b"v"), (b"SET", b"k", object())])  # type: ignore[list-item]
    assert counter.writes == []


@pytest.mark.parametrize("size", [0, 100, 8 * 1024 - 1, 8 * 1024, 3 * 1024 * 1024])
def test_large_and_small_arguments_encode_to_the_same_resp(size: int) -> None:
    import hiredis

    command = (b"SET", "k\u00e9", b"x" * size, b"PX", 1500, 2.5)
    assert pack_command(command) == hiredis.pack_command(command)
    assert pack_command([b"GET", b"k"]) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


@pytest.mark.parametrize("protocol", [2, 3])
async def test_resp2_and_resp3_replies(redis_url: str, protocol: int) -> None:
    connection = await Connection.open(spec_for(redis_url, protocol=protocol))
    try:
        assert connection.protocol == protocol
        key = f"{unique_namespace()}:hash"
        await connection.execute(b"HSET", key, b"field", b"value")
        reply = await connection.execute(b"HGETALL", key)
        if protocol == 3:
            assert reply == {b"field": b"value"}
            assert connection.server[b"proto"] == 3
        else:
            assert reply == [b"field", b"value"]
            assert connection.server == {}
        assert await connection.execute(b"GET", f"{key}:missing") is None
    finally:
        connection.close()


async def test_resp3_push_messages_go_to_the_callback_not_to_a_caller(
    redis_url: str,
) -> None:
    pushes: list[list[Any]] = []
    tracked = await Connection.open(spec_for(redis_url), on_push=pushes.append)
    writer = await Connection.open(spec_for(redis_url))
    try:
        key = f"{unique_namespace()}:tracked".encode()
        await writer.execute(b"SET", key, b"1")
        assert await tracked.execute(b"CLIENT", b"TRACKING", b"ON") == b"OK"
        assert await tracked.execute(b"GET", key) == b"1"
        await writer.execute(b"SET", key, b"2")
        # The invalidation arrives before (or with) the PING reply: PING still gets PONG.
        assert await tracked.execute(b"PING") == b"PONG"
        assert [b"invalidate", [key]] in pushes
        assert await tracked.execute(b"GET", key) == b"2"
        # A push with no command waiting at all is no stray reply either.
        arrived = asyncio.Event()
        tracked.on_push = lambda message: arrived.set()
        await writer.execute(b"SET", key, b"3")
        await asyncio.wait_for(arrived.wait(), timeout=2)
        assert tracked.inflight == 0
        assert await tracked.execute(b"GET", key) == b"3"
        assert not tracked.closed
    finally:
        tracked.close()
        writer.close()


async def test_a_failing_push_callback_is_reported_and_the_connection_goes_on(
    redis_url: str,
) -> None:
    def explode(message: list[Any]) -> None:
        raise RuntimeError("callback bug")

    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    tracked = await Connection.open(spec_for(redis_url), on_push=explode)
    writer = await Connection.open(spec_for(redis_url))
    try:
        key = f"{unique_namespace()}:tracked".encode()
        await tracked.execute(b"CLIENT", b"TRACKING", b"ON")
        await tracked.execute(b"GET", key)
        await writer.execute(b"SET", key, b"2")
        assert await tracked.execute(b"PING") == b"PONG"
        assert any(isinstance(context.get("exception"), RuntimeError) for context in reported)
        assert await tracked.execute(b"GET", key) == b"2"
    finally:
        loop.set_exception_handler(None)
        tracked.close()
        writer.close()


async def test_a_server_without_hello_falls_back_to_resp2(
    tmp_path: Path, redis_binary: str
) -> None:
    server = RedisServer(
        redis_binary, tmp_path / "nohello", args=["--rename-command", "HELLO", ""]
    )
    server.start()
    try:
        connection = await Connection.open(
            ConnectionSpec(port=server.port, client_name="fallback", db=2)
        )
        try:
            assert connection.protocol == 2
            assert await connection.execute(b"CLIENT", b"GETNAME") == b"fallback"
            assert await connection.execute(b"HSET", b"h", b"f", b"v") == 1
            assert await connection.execute(b"HGETALL", b"h") == [b"f", b"v"]
        finally:
            connection.close()
    finally:
        server.stop()


# -- connection setup -------------------------------------------------------------------------


async def test_password_authentication_and_refusals_never_show_the_password(
    password_server: RedisServer,
) -> None:
    port = password_server.port
    for protocol in (2, 3):
        good = await Connection.open(
            ConnectionSpec(port=port, password="correct-horse-7", protocol=protocol)
        )
        assert await good.execute(b"PING") == b"PONG"
        assert repr(good) == f"Connection('127.0.0.1:{port}', RESP{protocol}, inflight=0)"
        good.close()

        spec = ConnectionSpec(port=port, password="wrong-battery-9", protocol=protocol)
        assert "wrong-battery-9" not in repr(spec)
        assert "wrong-battery-9" not in repr(Node(spec))
        with pytest.raises(AccessDeniedError) as refused:
            await Connection.open(spec)
        assert f"127.0.0.1:{port}" in str(refused.value)
        assert "wrong-battery-9" not in str(refused.value)
        assert "wrong-battery-9" not in str(refused.value.__cause__)

    anonymous = await Connection.open(ConnectionSpec(port=port, protocol=2))
    try:
        with pytest.raises(AccessReplyError) as noauth:
            await anonymous.execute(b"GET", b"k")
        assert noauth.value.prefix == "NOAUTH"
    finally:
        anonymous.close()
    with pytest.raises(AccessDeniedError):  # HELLO 3 without AUTH is refused outright
        await Connection.open(ConnectionSpec(port=port, protocol=3))


async def test_an_acl_user_is_authenticated_and_its_refusals_are_access_denied(
    password_server: RedisServer,
) -> None:
    admin = await Connection.open(
        ConnectionSpec(port=password_server.port, password="correct-horse-7")
    )
    await admin.execute(b"ACL", b"SETUSER", b"app", b"on", b">app-pw", b"~app:*", b"+@all")
    admin.close()
    for protocol in (2, 3):
        user = await Connection.open(
            ConnectionSpec(
                port=password_server.port, username="app", password="app-pw", protocol=protocol
            )
        )
        try:
            assert await user.execute(b"SET", b"app:k", b"1") == b"OK"
            with pytest.raises(AccessDeniedError) as info:
                await user.execute(b"SET", b"other:k", b"1")
            assert isinstance(info.value, ReplyError)
            assert info.value.prefix == "NOPERM"
            assert await user.execute(b"GET", b"app:k") == b"1"
        finally:
            user.close()


async def test_the_database_is_selected(redis_url: str) -> None:
    key = f"{unique_namespace()}:db".encode()
    db3 = await Connection.open(spec_for(redis_url, db=3, client_name="memkv-test"))
    db0 = await Connection.open(spec_for(redis_url))
    try:
        await db3.execute(b"SET", key, b"in-3")
        assert await db0.execute(b"GET", key) is None
        assert await db3.execute(b"GET", key) == b"in-3"
        assert await db3.execute(b"CLIENT", b"GETNAME") == b"memkv-test"
        await db3.execute(b"DEL", key)
    finally:
        db3.close()
        db0.close()
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:\d+ refused .*DB index"):
        await Connection.open(spec_for(redis_url, db=100000))


async def test_a_unix_socket(tmp_path: Path, redis_binary: str) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(redis_binary, tmp_path / "unix", args=["--unixsocket", str(socket_path)])
    server.start()
    try:
        node = Node(ConnectionSpec(path=str(socket_path), db=1))
        assert node.where == f"unix:{socket_path}"
        assert await node.execute(b"SET", b"k", b"v") == b"OK"
        assert await node.execute(b"GET", b"k") == b"v"
        node.close()
    finally:
        server.stop()


async def test_tls_with_a_trusted_certificate_and_refusal_without(
    tls_server: tuple[int, Path],
) -> None:
    import ssl

    port, cert = tls_server
    trusting = ssl.create_default_context(cafile=str(cert))
    connection = await Connection.open(ConnectionSpec(port=port, ssl=trusting))
    try:
        assert await connection.execute(b"SET", b"k", b"secret") == b"OK"
        assert await connection.execute(b"GET", b"k") == b"secret"
    finally:
        connection.close()
    with pytest.raises(BackendUnavailableError):
        await Connection.open(ConnectionSpec(port=port, ssl=ssl.create_default_context()))


async def test_an_unreachable_server_is_unavailable() -> None:
    port = free_port()
    with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}") as info:
        await Connection.open(ConnectionSpec(port=port))
    assert isinstance(info.value, ConnectionError)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"protocol": 4}, "protocol"),
        ({"db": -1}, "db"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"command_timeout": -1.0}, "command_timeout"),
    ],
)
def test_bad_connection_options_are_invalid_arguments(options: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidArgumentError, match=named):
        ConnectionSpec(**options)


def test_a_bad_bulk_threshold_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="bulk_threshold"):
        Node(ConnectionSpec(), bulk_threshold=0)


# -- timeouts, outages, recovery ----------------------------------------------------------------


async def test_a_hung_server_times_out_every_waiting_caller_and_the_node_recovers(
    redis_server: RedisServer,
) -> None:
    timeout = 0.3
    node = Node(ConnectionSpec(port=redis_server.port, command_timeout=timeout))
    await node.execute(b"SET", b"k", b"v")
    first = node.connection
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(node.execute(b"GET", b"k") for _ in range(20)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(result, CommandTimeoutError) for result in results)
        assert isinstance(results[0], TimeoutError)
        assert isinstance(results[0], BackendUnavailableError)
        assert timeout <= elapsed < timeout + 0.5  # slack for a busy machine, not the design
        assert first is not None
        assert first.closed
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert await node.execute(b"GET", b"k") == b"v"
    assert node.connection is not first
    node.close()


async def test_connecting_to_a_hung_server_gives_up_at_the_connect_timeout(
    redis_server: RedisServer,
) -> None:
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match="connect_timeout"):
            await Connection.open(ConnectionSpec(port=redis_server.port, connect_timeout=0.2))
        assert time.monotonic() - started < 0.2 + 0.5
    finally:
        redis_server.process.send_signal(signal.SIGCONT)


async def test_a_killed_server_fails_commands_in_flight_and_the_node_reconnects_after_restart(
    redis_server: RedisServer,
) -> None:
    node = Node(ConnectionSpec(port=redis_server.port))
    await node.execute(b"SET", b"before", b"1")
    stop = asyncio.Event()
    failures: list[BaseException] = []

    async def worker(index: int) -> None:
        while not stop.is_set():
            try:
                await node.execute(b"SET", f"w{index}", index)
            except BackendUnavailableError as err:
                failures.append(err)
                return

    workers = [asyncio.create_task(worker(index)) for index in range(20)]
    await asyncio.sleep(0.05)
    redis_server.kill()
    await asyncio.wait_for(asyncio.gather(*workers), timeout=5)
    assert len(failures) == 20
    assert all(f"127.0.0.1:{redis_server.port}" in str(err) for err in failures)
    with pytest.raises(BackendUnavailableError):
        await node.execute(b"GET", b"before")  # refused: nothing listens

    redis_server.start()
    assert await node.execute(b"GET", b"before") is None  # a new, empty server
    assert await node.execute(b"SET", b"after", b"2") == b"OK"
    node.close()


async def test_a_connection_killed_by_the_server_is_replaced_on_next_use(
    redis_url: str,
) -> None:
    node = Node(spec_for(redis_url))
    first_id = await node.execute(b"CLIENT", b"ID")
    killer = await Connection.open(spec_for(redis_url))
    await killer.execute(b"CLIENT", b"KILL", b"ID", first_id)
    killer.close()
    for _ in range(200):  # the server's close reaches us within a loop iteration or two
        if node.connection is None:
            break
        await asyncio.sleep(0.01)
    assert node.connection is None
    second_id = await node.execute(b"CLIENT", b"ID")
    assert second_id != first_id
    node.close()


async def test_a_closed_connection_refuses_commands_and_fails_waiting_callers(
    conn: Connection,
) -> None:
    waiting = asyncio.ensure_future(conn.execute(b"BLPOP", unique_namespace(), 0))
    await asyncio.sleep(0.05)
    conn.close()
    with pytest.raises(BackendUnavailableError, match="closed"):
        await waiting
    with pytest.raises(BackendUnavailableError):
        await conn.execute(b"PING")
    assert conn.closed


async def test_closing_a_node_while_it_connects_fails_the_waiting_callers(
    redis_server: RedisServer,
) -> None:
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)  # the handshake never finishes
    try:
        node = Node(ConnectionSpec(port=redis_server.port, connect_timeout=5.0))
        calls = [asyncio.ensure_future(node.execute(b"PING")) for _ in range(3)]
        await asyncio.sleep(0.05)
        node.close()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(result, BackendUnavailableError) for result in results)
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert await node.execute(b"PING") == b"PONG"
    node.close()


async def test_concurrent_first_calls_share_one_connection_attempt(redis_url: str) -> None:
    node = Node(spec_for(redis_url))
    ids = await asyncio.gather(*(node.execute(b"CLIENT", b"ID") for _ in range(50)))
    assert len(set(ids)) == 1
    node.close()


# -- cancellation and back-pressure -----------------------------------------------------------


async def test_three_thousand_random_cancellations_never_desynchronise_the_connection(
    redis_url: str,
) -> None:
    rng = random.Random(1234)
    namespace = unique_namespace()
    # A small max_inflight so that cancellations also land while waiting for a slot.
    connection = await Connection.open(spec_for(redis_url, max_inflight=16))
    keys = [f"{namespace}:{index}".encode() for index in range(200)]
    await connection.execute_many([(b"SET", key, key) for key in keys])

    async def checked_operation(key: bytes) -> None:
        choice = rng.random()
        if choice < 0.5:
            assert await connection.execute(b"GET", key) == key
        elif choice < 0.8:
            assert await connection.execute(b"SET", key, key) == b"OK"
        else:
            replies = await connection.execute_many([(b"GET", key), (b"SET", key, key)])
            assert replies == [key, b"OK"]

    cancelled = completed = 0
    try:
        while cancelled < 3000:
            tasks = [asyncio.create_task(checked_operation(rng.choice(keys))) for _ in range(60)]
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)
            for task in rng.sample(tasks, rng.randint(10, 40)):
                task.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, asyncio.CancelledError):
                    cancelled += 1
                elif result is None:
                    completed += 1
                else:
                    raise result
        assert completed > 1000
        assert not connection.closed
        assert connection.inflight == 0
        # Every reply of a cancelled caller was read and dropped: the next ones match.
        assert await connection.execute_many([(b"GET", key) for key in keys]) == keys
    finally:
        connection.close()


async def test_two_hundred_tasks_on_max_inflight_eight_all_finish_within_the_bound(
    redis_url: str,
) -> None:
    connection = await Connection.open(spec_for(redis_url, max_inflight=8))
    namespace = unique_namespace()
    transport = connection._transport
    assert transport is not None
    original = transport.write
    seen: list[int] = []

    def write(data: bytes | bytearray | memoryview) -> None:
        seen.append(connection.inflight)
        original(data)

    transport.write = write  # type: ignore[method-assign]

    async def worker(index: int) -> None:
        key = f"{namespace}:{index}"
        for step in range(20):
            await connection.execute(b"SET", key, step)
            assert await connection.execute(b"GET", key) == str(step).encode()

    try:
        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(200))), timeout=30)
        assert max(seen) == 8
        assert connection.inflight == 0
    finally:
        connection.close()


async def test_a_caller_cancelled_while_waiting_for_a_slot_gives_it_back(
    redis_url: str,
) -> None:
    connection = await Connection.open(spec_for(redis_url, max_inflight=1))
    try:
        key = unique_namespace()
        blocking = asyncio.ensure_future(connection.execute(b"BLPOP", key, 0))
        await asyncio.sleep(0.02)
        queued = asyncio.ensure_future(connection.execute(b"PING"))
        await asyncio.sleep(0.02)
        queued.cancel()
        pusher = await Connection.open(spec_for(redis_url))
        await pusher.execute(b"RPUSH", key, b"x")
        pusher.close()
        assert await blocking == [key.encode(), b"x"]
        assert await asyncio.wait_for(connection.execute(b"PING"), 1) == b"PONG"
        assert connection.inflight == 0
    finally:
        connection.close()


async def test_callers_waiting_for_a_slot_fail_when_the_connection_is_lost(
    redis_url: str,
) -> None:
    connection = await Connection.open(spec_for(redis_url, max_inflight=1))
    own_id = await connection.execute(b"CLIENT", b"ID")
    blocking = asyncio.ensure_future(connection.execute(b"BLPOP", unique_namespace(), 0))
    queued = [asyncio.ensure_future(connection.execute(b"PING")) for _ in range(5)]
    await asyncio.sleep(0.02)
    assert connection.inflight == 1
    killer = await Connection.open(spec_for(redis_url))
    await killer.execute(b"CLIENT", b"KILL", b"ID", own_id)
    killer.close()
    results = await asyncio.wait_for(
        asyncio.gather(blocking, *queued, return_exceptions=True), timeout=2
    )
    assert all(isinstance(result, BackendUnavailableError) for result in results)
    assert connection.closed


# -- large values --------------------------------------------------------------------------------


async def test_a_twenty_megabyte_value_round_trips(conn: Connection) -> None:
    key = f"{unique_namespace()}:big"
    value = os.urandom(20 * 1024 * 1024)
    small = [conn.execute(b"SET", f"{key}:{index}", index) for index in range(20)]
    counter = CountingWrites(conn)
    results = await asyncio.gather(conn.execute(b"SET", key, value), *small)
    assert results == [b"OK"] * 21
    # The value leaves in slices as the socket drains, never copied whole in one go.
    assert max(len(data) for data in counter.writes) <= 256 * 1024
    assert sum(len(data) for data in counter.writes) > len(value)
    assert await conn.execute(b"GET", key) == value
    await conn.execute(b"DEL", key)


@pytest.mark.parametrize("bulk_threshold", [None, 1024 * 1024])
async def test_small_reads_wait_behind_a_huge_write_only_on_a_shared_socket(
    redis_url: str, bulk_threshold: int | None
) -> None:
    node = Node(spec_for(redis_url, command_timeout=5.0), bulk_threshold=bulk_threshold)
    key = f"{unique_namespace()}:big"
    await node.execute(b"SET", f"{key}:small", b"s")
    finished: list[str] = []

    async def big_write() -> None:
        await node.execute(b"SET", key, b"x" * (20 * 1024 * 1024))
        finished.append("big")

    async def small_read(index: int) -> None:
        await asyncio.sleep(0)  # issued after the big write
        assert await node.execute(b"GET", f"{key}:small") == b"s"
        finished.append("small")

    await asyncio.gather(big_write(), *(small_read(index) for index in range(50)))
    if bulk_threshold is None:  # RESP answers in order on one socket
        assert finished[0] == "big"
    else:  # the big write travels on the second connection
        assert finished[-1] == "big"
    await node.execute(b"DEL", key)
    node.close()


async def test_a_pipeline_holding_a_large_command_goes_whole_to_the_bulk_connection(
    redis_url: str,
) -> None:
    node = Node(spec_for(redis_url), bulk_threshold=64 * 1024)
    key = f"{unique_namespace()}:big"
    big = b"b" * (128 * 1024)
    main_id = await node.execute(b"CLIENT", b"ID")
    replies = await node.execute_many([(b"SET", key, big), (b"GET", key), (b"CLIENT", b"ID")])
    assert replies[:2] == [b"OK", big]
    assert replies[2] != main_id
    assert await node.execute(b"CLIENT", b"ID") == main_id
    await node.execute(b"DEL", key)
    node.close()


# -- fork and event loops ------------------------------------------------------------------------


def test_a_connection_belongs_to_the_loop_that_opened_it(redis_url: str) -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        connection = asyncio.run_coroutine_threadsafe(
            Connection.open(spec_for(redis_url)), loop
        ).result()
        node = Node(spec_for(redis_url))
        assert asyncio.run_coroutine_threadsafe(node.execute(b"PING"), loop).result() == b"PONG"
        with pytest.raises(EventLoopError):
            asyncio.run(connection.execute(b"PING"))
        with pytest.raises(EventLoopError, match="still running"):
            asyncio.run(node.execute(b"PING"))
        assert asyncio.run_coroutine_threadsafe(connection.execute(b"PING"), loop).result()

        async def close_both() -> None:
            connection.close()
            node.close()
            await asyncio.sleep(0.01)  # lets the transports finish closing

        asyncio.run_coroutine_threadsafe(close_both(), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


@pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)
def test_a_node_moves_to_the_next_event_loop_once_its_loop_stopped(redis_url: str) -> None:
    name = unique_namespace()
    node = Node(spec_for(redis_url, client_name=name))

    async def client_id() -> int:
        reply: int = await node.execute(b"CLIENT", b"ID")
        return reply

    async def still_open() -> int:
        observer = await Connection.open(spec_for(redis_url))
        try:
            for _ in range(200):
                clients = await observer.execute(b"CLIENT", b"LIST")
                if name.encode() not in clients:
                    break
                await asyncio.sleep(0.01)
            return int(clients.count(f"name={name} ".encode()))
        finally:
            observer.close()

    first = asyncio.run(client_id())
    second = asyncio.run(client_id())  # the first loop's connection is dropped
    assert first != second
    node.close()  # the second loop is closed too: dropped as well
    assert node.connection is None
    gc.collect()  # their sockets close here, where the mark ignores asyncio's warning
    assert asyncio.run(still_open()) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
async def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_alone(
    redis_url: str,
) -> None:
    node = Node(spec_for(redis_url))
    parent_id = await node.execute(b"CLIENT", b"ID")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.close(read_end)

            async def in_child() -> int:
                reply: int = await node.execute(b"CLIENT", b"ID")
                return reply

            os.write(write_end, str(asyncio.run(in_child())).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    _, status = await asyncio.get_running_loop().run_in_executor(None, os.waitpid, pid, 0)
    with os.fdopen(read_end) as pipe:
        child_id = int(pipe.read() or "0")
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_id not in (0, parent_id)
    assert await node.execute(b"CLIENT", b"ID") == parent_id
    node.close()
