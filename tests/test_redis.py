"""RedisMemoryStore beyond the shared contract: outages, access, codecs, envelopes, URLs.

Every test here runs against real servers started by ``tests/redis_servers.py``.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from memkv import open_store
from memkv.errors import (
    AccessDeniedError,
    BackendError,
    BackendUnavailableError,
    CodecError,
    EventLoopError,
    InvalidArgumentError,
    InvalidTTLError,
)
from memkv.redis import ENVELOPE_HEADER, RedisMemoryStore
from memkv.redis.envelope import ttl_milliseconds
from tests.redis_servers import RedisServer, unique_namespace

pytestmark = pytest.mark.redis


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisMemoryStore[Any]]:
    async with RedisMemoryStore(redis_url, namespace=unique_namespace()) as opened:
        yield opened


@pytest.fixture
async def cluster_store(cluster_url: str) -> AsyncIterator[RedisMemoryStore[Any]]:
    async with RedisMemoryStore(cluster_url, namespace=unique_namespace()) as opened:
        yield opened


def _messages(error: BaseException) -> str:
    """The text of an error and of every error chained to it."""
    texts = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(f"{current!r} {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


# -- outages -------------------------------------------------------------------------------


async def test_killed_server_raises_unavailable_then_the_same_store_recovers(
    redis_server: RedisServer,
) -> None:
    budget = 2.0  # 3 attempts, refused at once, plus at most 0.15 s of backoff
    store: RedisMemoryStore[Any] = RedisMemoryStore(
        redis_server.url, namespace="outage", socket_timeout=0.5, connect_timeout=0.5, retries=2
    )
    async with store:
        await store.set("before", 1)
        failures: list[tuple[BaseException, float]] = []
        killed = asyncio.Event()
        killed_at = 0.0

        async def worker(index: int) -> None:
            while True:
                try:
                    await store.set(f"w{index}", index)
                    await store.get(f"w{index}")
                except BackendUnavailableError as err:
                    failures.append((err, time.monotonic() - killed_at))
                    return
                if killed.is_set():
                    await asyncio.sleep(0)

        workers = [asyncio.create_task(worker(index)) for index in range(10)]
        await asyncio.sleep(0.05)
        killed_at = time.monotonic()
        redis_server.kill()
        killed.set()
        await asyncio.wait_for(asyncio.gather(*workers), timeout=budget + 1)
        assert len(failures) == 10
        assert all(isinstance(err.__cause__, Exception) for err, _ in failures)
        assert max(elapsed for _, elapsed in failures) < budget
        assert f"127.0.0.1:{redis_server.port}" in str(failures[0][0])

        started = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            await store.get("before")
        assert time.monotonic() - started < budget

        redis_server.start()  # same port, empty: nothing was persisted
        await store.set("after", 2)
        entry = await store.get("after")
        assert entry is not None
        assert entry.value == 2
        assert await store.get_many(["after", "before"]) == [entry, None]


async def test_hung_server_raises_unavailable_within_the_timeouts(
    redis_server: RedisServer,
) -> None:
    # SIGSTOP: the kernel still accepts connections but nothing answers.
    store: RedisMemoryStore[Any] = RedisMemoryStore(
        redis_server.url, namespace="hung", socket_timeout=0.3, connect_timeout=0.3, retries=1
    )
    async with store:
        await store.set("k", 1)
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError):
                await store.get("k")
            elapsed = time.monotonic() - started
            assert elapsed < 2 * (0.3 + 0.3) + 0.5
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        entry = await store.get("k")
        assert entry is not None
        assert entry.value == 1


async def test_an_operation_whose_reply_was_lost_is_retried_and_add_counts_its_own_write(
    redis_server: RedisServer,
) -> None:
    # The server is stopped with add's SET NX in flight: the store times out, drops the
    # connection and retries on a new one. On SIGCONT the server reads the first SET NX
    # (already in its socket) and runs it, so the retry's SET NX is refused: add must
    # still answer True, as the entry is its own; set and delete are retried the same way.
    store: RedisMemoryStore[Any] = RedisMemoryStore(
        redis_server.url, namespace=unique_namespace(), socket_timeout=0.2, retries=3
    )
    assert redis_server.process is not None
    async with store:
        await store.exists("warm")  # connected

        async def stalled(call: Any) -> Any:
            assert redis_server.process is not None
            redis_server.process.send_signal(signal.SIGSTOP)
            try:
                pending = asyncio.ensure_future(call)
                await asyncio.sleep(0.35)  # past socket_timeout: the first attempt is lost
            finally:
                redis_server.process.send_signal(signal.SIGCONT)
            return await pending

        async def connections() -> int:
            info = await store.client.info("stats")
            return int(info["total_connections_received"])

        before = await connections()
        assert await stalled(store.add("k", "mine")) is True
        assert await connections() > before  # the first attempt's connection was dropped
        entry = await store.get("k")
        assert entry is not None
        assert entry.value == "mine"
        assert await store.add("k", "theirs") is False
        await stalled(store.set("k", "again"))
        entry = await store.get("k")
        assert entry is not None
        assert entry.value == "again"
        await stalled(store.delete("k"))  # True or False: the lost attempt may have removed it
        assert not await store.exists("k")
        # A batch given as a one-shot generator is retried whole, not as what is left of it.
        await stalled(store.set_many((f"g{index}", index) for index in range(10)))
        found = await stalled(store.get_many(f"g{index}" for index in range(10)))
        assert [entry.value for entry in found if entry] == list(range(10))
        assert store.stats().operations[("add", "error")] == 0


async def test_a_url_store_carries_concurrent_operations_on_one_connection(
    redis_url: str,
) -> None:
    from redis.asyncio import Redis

    name = f"memkv-{unique_namespace()}"
    base = redis_url.split("?", 1)[0].rsplit("/", 1)[0]
    store: RedisMemoryStore[Any] = RedisMemoryStore(
        f"{base}/3?client_name={name}", namespace=unique_namespace()
    )
    admin = Redis.from_url(f"{base}/3")
    try:
        async with store:
            await asyncio.gather(*(store.set(f"k{index}", index) for index in range(200)))
            entries = await asyncio.gather(*(store.get(f"k{index}") for index in range(200)))
            assert [entry.value for entry in entries if entry] == list(range(200))
            clients = await admin.client_list()
            assert [client["db"] for client in clients if client["name"] == name] == ["3"]
            assert await admin.exists(f"{store.namespace}:k0".encode()) == 1  # in db 3
            await store.clear()
    finally:
        await admin.aclose()


async def test_every_operation_works_on_a_resp2_server(tmp_path: Any, redis_binary: str) -> None:
    from redis.asyncio import Redis

    # No HELLO: the transport falls back to RESP2 (flat replies, no pushes, AUTH, SELECT).
    server = RedisServer(
        redis_binary,
        tmp_path / "resp2",
        password=_SECRET,
        args=["--rename-command", "HELLO", ""],
    )
    server.start()
    try:
        url = f"redis://:{_SECRET}@127.0.0.1:{server.port}/2"
        async with RedisMemoryStore(url, namespace="resp2") as store:
            await store.set("a", {"n": 1}, ttl=60, metadata={"m": True})
            await store.set_many({"b": 2, "c": 3})
            entry = await store.get("a")
            assert entry is not None
            assert (entry.value, entry.metadata) == ({"n": 1}, {"m": True})
            assert [e.value if e else None for e in await store.get_many(["a", "x", "c"])] == [
                {"n": 1},
                None,
                3,
            ]
            assert await store.exists("b")
            assert await store.add("d", 4) is True
            assert await store.add("d", 5) is False
            assert await store.touch("d", 30) is True
            assert sorted([key async for key in store.scan()]) == ["a", "b", "c", "d"]
            assert await store.delete("a") is True
            assert await store.delete_many(["b", "x"]) == 1
            assert await store.get_or_set("e", _five) == await store.get("e")
            admin = Redis(port=server.port, password=_SECRET, db=2, protocol=2)
            try:
                await admin.hset(b"resp2:h", "f", "v")
                with pytest.raises(CodecError, match="'h'"):
                    await store.get_many(["c", "h"])
                assert await store.clear() == 4  # c, d, e, h
                assert await admin.dbsize() == 0  # db 2 was the store's, and is left empty
            finally:
                await admin.aclose()
    finally:
        server.stop()


async def _five() -> int:
    return 5


async def test_unreachable_server_at_construction_fails_on_first_use_not_before() -> None:
    from tests.redis_servers import free_port

    store: RedisMemoryStore[Any] = RedisMemoryStore(
        f"redis://127.0.0.1:{free_port()}/0?retries=1&connect_timeout=0.2"
    )
    async with store:
        with pytest.raises(BackendUnavailableError) as info:
            await store.exists("k")
        assert isinstance(info.value, ConnectionError)


# -- access ----------------------------------------------------------------------------------


async def test_wrong_password_is_access_denied_naming_the_server_not_the_password(
    password_server: RedisServer,
) -> None:
    port = password_server.port
    url = f"redis://:wrong-battery-9@127.0.0.1:{port}/0"
    async with RedisMemoryStore(url) as store:
        started = time.monotonic()
        with pytest.raises(AccessDeniedError) as info:
            await store.get("k")
        assert time.monotonic() - started < 0.5  # refused credentials are not retried
    assert isinstance(info.value, PermissionError)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "wrong-battery-9" not in _messages(info.value)
    assert "wrong-battery-9" not in repr(store)

    async with RedisMemoryStore(f"redis://127.0.0.1:{port}/0") as anonymous:
        with pytest.raises(AccessDeniedError):
            await anonymous.set("k", 1)

    async with RedisMemoryStore(password_server.url) as allowed:
        await allowed.set("k", 1)
        assert await allowed.exists("k")


async def test_acl_refusal_is_access_denied(password_server: RedisServer) -> None:
    async with RedisMemoryStore(password_server.url) as admin:
        await admin.client.execute_command(
            "ACL", "SETUSER", "app", "on", ">app-pw", "~app:*", "+@all"
        )
    url = f"redis://app:app-pw@127.0.0.1:{password_server.port}/0"
    async with RedisMemoryStore(url, namespace="app") as own:
        await own.set("k", 1)
        assert await own.exists("k")
    async with RedisMemoryStore(url, namespace="other") as foreign:
        with pytest.raises(AccessDeniedError) as info:
            await foreign.set("k", 1)
    assert "app-pw" not in _messages(info.value)


# -- exception chains ---------------------------------------------------------------------------


def _chain_faults(error: BaseException, password: str) -> list[str]:
    """What is wrong with the chain of ``error``: a cycle through ``__cause__`` or
    ``__context__`` (a traceback walker without a seen-set would loop forever), an
    exception reached twice along ``cause or context``, or a message holding
    ``password``."""
    faults = []
    on_path: list[BaseException] = []
    done: list[BaseException] = []

    def visit(node: BaseException) -> None:
        if any(node is seen for seen in on_path):
            faults.append(f"cycle back to {node!r}")
            return
        if any(node is seen for seen in done):
            return
        if password in f"{node} {node!r}":
            faults.append(f"{type(node).__name__} holds the password")
        on_path.append(node)
        for linked in (node.__cause__, node.__context__):
            if linked is not None:
                visit(linked)
        done.append(on_path.pop())

    visit(error)
    walked: list[BaseException] = []
    current: BaseException | None = error
    while current is not None:
        if any(current is seen for seen in walked):
            faults.append(f"{current!r} repeats along cause-or-context")
            break
        walked.append(current)
        current = current.__cause__ or current.__context__
    return faults


_SECRET = "correct-horse-7"  # password_server's password


async def _wrong_password(server: RedisServer) -> None:
    url = server.url.replace(_SECRET, f"{_SECRET}-wrong")
    async with RedisMemoryStore(url) as store:
        await store.get("k")


async def _acl_refuses_a_command(server: RedisServer) -> None:
    async with RedisMemoryStore(server.url) as admin:
        await admin.client.execute_command(
            "ACL", "SETUSER", "nogets", "on", f">{_SECRET}", "~*", "+@all", "-get"
        )
    async with RedisMemoryStore(f"redis://nogets:{_SECRET}@127.0.0.1:{server.port}/0") as store:
        await store.get("k")


async def _acl_refuses_inside_the_script(server: RedisServer) -> None:
    async with RedisMemoryStore(server.url) as admin:
        await admin.client.execute_command(
            "ACL", "SETUSER", "nosets", "on", f">{_SECRET}", "~*", "+@all", "-set"
        )
    async with RedisMemoryStore(f"redis://nosets:{_SECRET}@127.0.0.1:{server.port}/0") as store:
        await store.set("k", 1)


async def _server_down(server: RedisServer) -> None:
    async with RedisMemoryStore(server.url + "?retries=1") as store:
        await store.set("k", 1)
        server.kill()
        await store.get("k")


async def _server_hung(server: RedisServer) -> None:
    url = server.url + "?retries=1&socket_timeout=0.2&connect_timeout=0.2"
    async with RedisMemoryStore(url) as store:
        await store.set("k", 1)
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            await store.get("k")
        finally:
            server.process.send_signal(signal.SIGCONT)


async def _wrong_type(server: RedisServer) -> None:
    async with RedisMemoryStore(server.url) as store:
        await store.client.hset(b"memkv:k", "field", "value")
        await store.get("k")


async def _out_of_memory(server: RedisServer) -> None:
    async with RedisMemoryStore(server.url) as store:
        await store.client.config_set("maxmemory-policy", "noeviction")
        await store.client.config_set("maxmemory", 1)
        await store.set("k", 1)


async def _read_only_replica(server: RedisServer) -> None:
    replica = RedisServer(
        server.binary,
        server.directory.parent / "replica",
        password=_SECRET,
        args=["--masterauth", _SECRET, "--replicaof", "127.0.0.1", str(server.port)],
    )
    replica.start()
    try:
        async with RedisMemoryStore(replica.url) as store:
            await store.set("k", 1)
    finally:
        replica.stop()


async def _unencodable_value(server: RedisServer) -> None:
    async with RedisMemoryStore(server.url) as store:
        await store.set("k", object())


async def _not_an_envelope(server: RedisServer) -> None:
    async with RedisMemoryStore(server.url) as store:
        await store.client.set(b"memkv:k", b"raw bytes")
        await store.get("k")


async def _cluster_all_down(server: RedisServer) -> None:
    from tests.redis_servers import free_port

    port = free_port(cluster_bus=True)
    url = f"redis+cluster://:{_SECRET}@127.0.0.1:{port}?retries=1&connect_timeout=0.2"
    async with RedisMemoryStore(url) as store:
        await store.get("k")


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        (_wrong_password, AccessDeniedError),
        (_acl_refuses_a_command, AccessDeniedError),
        (_acl_refuses_inside_the_script, AccessDeniedError),
        (_server_down, BackendUnavailableError),
        (_server_hung, BackendUnavailableError),
        (_wrong_type, CodecError),
        (_out_of_memory, BackendError),
        (_read_only_replica, BackendError),
        (_unencodable_value, CodecError),
        (_not_an_envelope, CodecError),
        (_cluster_all_down, BackendUnavailableError),
    ],
    ids=lambda case: case.__name__.strip("_") if callable(case) else case.__name__,
)
async def test_no_error_has_a_cyclic_chain_or_the_password_in_it(
    password_server: RedisServer, fail: Any, expected: type[Exception]
) -> None:
    with pytest.raises(expected) as info:
        await fail(password_server)
    assert _chain_faults(info.value, _SECRET) == []


# -- codecs and envelopes -------------------------------------------------------------------


async def test_unencodable_value_raises_codec_error_and_writes_nothing(
    store: RedisMemoryStore[Any],
) -> None:
    with pytest.raises(CodecError) as info:
        await store.set("k", object())
    assert isinstance(info.value, TypeError)
    assert await store.get("k") is None

    with pytest.raises(CodecError):
        await store.set_many({"a": 1, "b": {1, object()}})
    assert await store.get_many(["a", "b"]) == [None, None]

    with pytest.raises(CodecError):
        await store.set("m", 1, metadata={"when": object()})
    assert await store.get("m") is None


async def test_custom_codec_and_its_failures(redis_url: str) -> None:
    class Upper:
        def encode(self, value: Any) -> bytes:
            if not isinstance(value, str):
                raise ValueError("strings only")
            return value.upper().encode()

        def decode(self, data: bytes) -> Any:
            return data.decode()

    async with RedisMemoryStore(redis_url, namespace=unique_namespace(), codec=Upper()) as store:
        await store.set("k", "hello")
        entry = await store.get("k")
        assert entry is not None
        assert entry.value == "HELLO"
        with pytest.raises(CodecError):
            await store.set("n", 5)
        assert await store.get("n") is None


@pytest.mark.parametrize("codec", ["msgpack", "json", "pickle"])
async def test_builtin_codecs_round_trip(redis_url: str, codec: str) -> None:
    value = {"name": "Ada", "tags": ["a", "b"], "n": 3, "f": 1.5, "none": None}
    async with RedisMemoryStore(redis_url, namespace=unique_namespace(), codec=codec) as store:
        await store.set("k", value, metadata={"source": "test", "n": [1, 2]})
        entry = await store.get("k")
    assert entry is not None
    assert entry.value == value
    assert entry.metadata == {"source": "test", "n": [1, 2]}


async def test_bytes_that_are_not_an_envelope_raise_codec_error_naming_the_key(
    store: RedisMemoryStore[Any],
) -> None:
    secret = b"top-secret-value-1234567890-top-secret-value-1234567890"
    raw_key = f"{store.namespace}:raw".encode()
    await store.client.set(raw_key, secret)
    with pytest.raises(CodecError) as info:
        await store.get("raw")
    assert "'raw'" in str(info.value)
    assert "top-secret" not in _messages(info.value)
    with pytest.raises(CodecError):
        await store.get_many(["raw"])

    # A valid header with a payload the codec cannot read: still named, never echoed.
    header = ENVELOPE_HEADER.pack(b"MKV", 1, 1.0, 1.0, 0.0, 1, 0)
    await store.client.set(raw_key, header + b"\xc1" + secret)
    with pytest.raises(CodecError) as info:
        await store.get("raw")
    assert "'raw'" in str(info.value)
    assert "top-secret" not in _messages(info.value)


async def test_an_envelope_written_with_another_codec_is_refused(redis_url: str) -> None:
    namespace = unique_namespace()
    async with RedisMemoryStore(redis_url, namespace=namespace, codec="json") as writer:
        await writer.set("k", [1, 2])
    async with RedisMemoryStore(redis_url, namespace=namespace) as reader:
        with pytest.raises(CodecError, match="json"):
            await reader.get("k")


async def test_envelope_matches_the_documented_format(store: RedisMemoryStore[Any]) -> None:
    before = time.time()
    await store.set("doc", [1, "two"], ttl=60, metadata={"m": 1})
    data = await store.client.get(f"{store.namespace}:doc".encode())
    magic, version, created, updated, expires, codec, meta_len = struct.unpack_from(
        ">3sBdddBI", data
    )
    assert (magic, version, codec) == (b"MKV", 1, 1)
    assert before <= created == updated <= time.time()
    assert expires == pytest.approx(created + 60)
    import msgspec

    assert msgspec.msgpack.decode(data[33 : 33 + meta_len]) == {"m": 1}
    assert msgspec.msgpack.decode(data[33 + meta_len :]) == [1, "two"]
    pttl = await store.client.pttl(f"{store.namespace}:doc".encode())
    assert 59_000 < pttl <= 60_000


async def test_overwrite_keeps_created_at_under_concurrent_writers(redis_url: str) -> None:
    namespace = unique_namespace()
    first: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=namespace)
    second: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=namespace)
    async with first, second:
        await first.set("k", 0)
        original = await first.get("k")
        assert original is not None
        await asyncio.gather(
            *(
                (first if index % 2 else second).set("k", index, ttl=30 if index % 3 else None)
                for index in range(200)
            )
        )
        entry = await second.get("k")
    assert entry is not None
    assert entry.created_at == original.created_at
    assert entry.updated_at > original.updated_at


async def test_script_cache_flush_is_survived(store: RedisMemoryStore[Any]) -> None:
    await store.set("a", 1)
    await store.client.script_flush()
    await store.set("a", 2)
    await store.client.script_flush()
    await store.set_many({"a": 3, "b": 4})
    assert [entry.value for entry in await store.get_many(["a", "b"]) if entry] == [3, 4]


async def test_sub_millisecond_ttl_rounds_up_and_huge_ttl_is_refused(
    store: RedisMemoryStore[Any],
) -> None:
    assert ttl_milliseconds(0.0001) == 1
    await store.set("short", 1, ttl=0.0001)
    await asyncio.sleep(0.01)
    assert await store.get("short") is None
    with pytest.raises(InvalidTTLError):
        await store.set("huge", 1, ttl=1e300)


async def test_an_error_reply_is_a_backend_error(redis_server: RedisServer) -> None:
    async with RedisMemoryStore(redis_server.url, namespace="full") as store:
        await store.client.config_set("maxmemory-policy", "noeviction")
        await store.client.config_set("maxmemory", 1)
        with pytest.raises(BackendError, match="maxmemory") as info:
            await store.set("k", 1)
        assert not isinstance(info.value, (BackendUnavailableError, AccessDeniedError))
        assert store.stats().operations[("set", "error")] == 1


# -- namespaces and prefixes ----------------------------------------------------------------


async def test_namespaces_are_isolated(redis_url: str) -> None:
    base = unique_namespace()
    first: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=base + "-a")
    second: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=base + "-b")
    async with first, second:
        await first.set_many({"k": 1, "x": 2})
        await second.set("k", 3)
        assert sorted([key async for key in first.scan()]) == ["k", "x"]
        assert [key async for key in second.scan()] == ["k"]
        assert await first.clear() == 2
        entry = await second.get("k")
        assert entry is not None
        assert entry.value == 3


@pytest.mark.parametrize("namespace", ["ns*", "ns?", "ns[ab]", "ns\\", "n]s"])
async def test_glob_characters_in_the_namespace_and_prefix_are_literal(
    redis_url: str, namespace: str
) -> None:
    marker = unique_namespace()
    literal: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=marker + namespace)
    lookalike: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=marker + "nsa")
    async with literal, lookalike:
        await literal.set_many({"a*b": 1, "a?b": 2, "a[b]": 3, "axb": 4, "a\\b": 5})
        await lookalike.set_many({"a*b": 6, "other": 7})
        assert [key async for key in literal.scan("a*")] == ["a*b"]
        assert [key async for key in literal.scan("a[")] == ["a[b]"]
        assert [key async for key in literal.scan("a\\")] == ["a\\b"]
        assert await literal.clear("a?") == 1
        assert len([key async for key in literal.scan()]) == 4
        assert sorted([key async for key in lookalike.scan()]) == ["a*b", "other"]
        assert await literal.clear() == 4
        assert sorted([key async for key in lookalike.scan()]) == ["a*b", "other"]
        await lookalike.clear()


async def test_foreign_keys_that_are_not_utf8_are_skipped_by_scan(
    store: RedisMemoryStore[Any],
) -> None:
    await store.set("mine", 1)
    await store.client.set(store.namespace.encode() + b":\xff\xfe", b"x")
    assert [key async for key in store.scan()] == ["mine"]
    assert await store.clear() == 2


# -- data memkv did not write ------------------------------------------------------------------


@pytest.fixture(params=["single", "cluster"])
async def either_store(request: pytest.FixtureRequest) -> AsyncIterator[RedisMemoryStore[Any]]:
    url = request.getfixturevalue("redis_url" if request.param == "single" else "cluster_url")
    async with RedisMemoryStore(url, namespace=unique_namespace()) as opened:
        yield opened


async def _store_foreign_types(store: RedisMemoryStore[Any]) -> None:
    """A hash at "hash" and a list at "list", as another client of the server would."""
    await store.client.hset(f"{store.namespace}:hash".encode(), "field", "secret-field")
    await store.client.rpush(f"{store.namespace}:list".encode(), "secret-item")


async def test_a_key_of_another_redis_type_is_a_codec_error_naming_the_key(
    either_store: RedisMemoryStore[Any],
) -> None:
    store = either_store
    await _store_foreign_types(store)
    await store.set("mine", 1)
    for key in ("hash", "list"):
        with pytest.raises(CodecError, match=f"'{key}'") as info:
            await store.get(key)
        assert "secret" not in _messages(info.value)
    with pytest.raises(CodecError, match="'hash'"):
        await store.get_many(["mine", "missing", "hash"])
    with pytest.raises(CodecError, match="'list'"):
        await store.get_many(["list"])
    stats = store.stats()
    assert stats.operations[("get", "error")] == 2
    assert stats.operations[("get_many", "error")] == 2
    assert (stats.gets, stats.hits, stats.misses) == (0, 0, 0)
    # Keys that merely miss are still plain misses.
    entries = await store.get_many(["mine", "missing"])
    assert entries[1] is None
    assert entries[0] is not None
    assert entries[0].value == 1


async def test_foreign_keys_exist_are_scanned_deleted_cleared_and_overwritten(
    either_store: RedisMemoryStore[Any],
) -> None:
    # Decided: a key another client stored in the namespace is there (exists, scan),
    # and memkv may replace or remove it (set, delete, clear), as it does a foreign
    # string; only reading it (get, get_many) is refused.
    store = either_store
    await _store_foreign_types(store)
    assert await store.exists("hash")
    assert sorted([key async for key in store.scan()]) == ["hash", "list"]
    await store.set("hash", {"now": "mine"}, ttl=60)
    entry = await store.get("hash")
    assert entry is not None
    assert entry.value == {"now": "mine"}
    assert await store.delete("list")
    assert not await store.exists("list")
    await store.client.sadd(f"{store.namespace}:set".encode(), "member")
    assert await store.clear() == 2  # the entry now at "hash", and the set
    assert [key async for key in store.scan()] == []


@pytest.mark.parametrize("batch_size", [2**31, 2**63, 2**64, 10**30])
async def test_scan_accepts_any_batch_size_the_local_store_accepts(
    either_store: RedisMemoryStore[Any], batch_size: int
) -> None:
    await either_store.set_many({"a": 1, "b": 2})
    assert sorted([key async for key in either_store.scan(batch_size=batch_size)]) == ["a", "b"]
    assert either_store.stats().operations[("scan", "error")] == 0


# -- cluster ----------------------------------------------------------------------------------


async def test_cluster_scan_and_clear_cover_every_primary(
    cluster_store: RedisMemoryStore[Any],
) -> None:
    keys = [f"user:{index}" for index in range(300)]
    await cluster_store.set_many({key: index for index, key in enumerate(keys)}, ttl=60)
    cluster = cluster_store.client
    await cluster.initialize()  # type: ignore[union-attr]  # made on first use of .client
    match = f"{cluster_store.namespace}:*".encode()
    primaries = cluster.get_primaries()  # type: ignore[union-attr]
    assert len(primaries) == 3
    per_node = []
    for node in primaries:
        found = 0
        cursor = 0
        while True:
            cursor, page = await node.execute_command("SCAN", cursor, "MATCH", match, "COUNT", 100)
            found += len(page)
            if not int(cursor):
                break
        per_node.append(found)
    assert all(count > 0 for count in per_node)
    assert sum(per_node) == 300

    assert sorted([key async for key in cluster_store.scan("user:", batch_size=7)]) == sorted(keys)
    entries = await cluster_store.get_many(keys)
    assert [entry.value for entry in entries if entry] == list(range(300))
    assert await cluster_store.delete_many(keys[:10]) == 10
    # user:1x and user:1xx; user:1 went with the first ten.
    assert await cluster_store.clear("user:1") == 10 + 100
    assert await cluster_store.clear() == 300 - 10 - 110
    assert [key async for key in cluster_store.scan()] == []


async def test_cluster_node_outage_fails_fast_and_recovers(
    tmp_path: Any, redis_binary: str
) -> None:
    from tests.redis_servers import start_cluster

    servers = start_cluster(redis_binary, tmp_path / "cluster")
    try:
        url = f"redis+cluster://127.0.0.1:{servers[0].port}?retries=2&connect_timeout=0.5"
        async with RedisMemoryStore(url, namespace="outage") as store:
            keys = [f"k{index}" for index in range(30)]
            await store.set_many(dict.fromkeys(keys, 1))
            victim = servers[1]
            cluster = store.client
            await cluster.initialize()  # type: ignore[union-attr]
            on_victim = [
                key
                for key in keys
                if cluster.get_node_from_key(f"outage:{key}").port == victim.port  # type: ignore[union-attr]
            ]
            elsewhere = next(key for key in keys if key not in on_victim)
            victim.kill()
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="Redis Cluster at"):
                await store.get(on_victim[0])
            with pytest.raises(BackendUnavailableError):
                [key async for key in store.scan()]
            assert time.monotonic() - started < 3.0
            entry = await store.get(elsewhere)  # the other primaries still serve
            assert entry is not None

            victim.start()  # same port and nodes.conf: it takes its slots back
            for _ in range(40):
                try:
                    await store.set(on_victim[0], 2)
                    break
                except BackendUnavailableError:
                    await asyncio.sleep(0.1)
            entry = await store.get(on_victim[0])
            assert entry is not None
            assert entry.value == 2
    finally:
        for server in servers:
            server.stop()


# -- URLs and construction -----------------------------------------------------------------


def test_unknown_url_parameter_is_named_and_the_password_is_not() -> None:
    with pytest.raises(InvalidArgumentError, match="parameter #1") as info:
        RedisMemoryStore.from_url("redis://:hunter2@localhost:6379/0?colour=blue")
    assert isinstance(info.value, ValueError)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis://localhost/0?socket_timeout=-1", "socket_timeout"),
        ("redis://localhost/0?socket_timeout=1e300", "socket_timeout"),
        ("redis://localhost/0?connect_timeout=nan", "connect_timeout"),
        ("redis://localhost/0?backoff_cap=86401", "backoff_cap"),
        ("redis://localhost/0?retries=many", "retries"),
        ("redis://localhost/0?pool_size=0", "pool_size"),
        ("redis://localhost/0?codec=yaml", "yaml"),
        ("redis://localhost/zero", "database"),
        ("redis+cluster://localhost:7000/2", "database 0"),
        ("redis://localhost/0?ssl_cert_reqs=none", "rediss"),
        ("redis://localhost/0?namespace=", "namespace"),
        ("mongodb://localhost", "scheme"),
    ],
)
def test_bad_url_parameters_are_invalid_arguments(url: str, named: str) -> None:
    with pytest.raises(InvalidArgumentError, match=named):
        RedisMemoryStore.from_url(url)


@pytest.mark.parametrize("option", ["socket_timeout", "connect_timeout", "backoff_base"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300, 0, -1.0, True])
def test_timeouts_out_of_range_are_invalid_arguments(option: str, value: float) -> None:
    with pytest.raises(InvalidArgumentError, match=option) as info:
        RedisMemoryStore("redis://localhost:6379/0", **{option: value})
    assert isinstance(info.value, ValueError)


async def test_url_parameters_configure_the_store(redis_url: str) -> None:
    url = f"{redis_url}?namespace=fromurl&codec=json&socket_timeout=1.5&pool_size=4&retries=1"
    store = open_store(url)
    assert isinstance(store, RedisMemoryStore)
    async with store:
        assert store.namespace == "fromurl"
        assert "json" in repr(store)
        kwargs = store.client.connection_pool.connection_kwargs  # type: ignore[union-attr]
        assert kwargs["socket_timeout"] == 1.5
        assert store.client.connection_pool.max_connections == 4  # type: ignore[union-attr]
        await store.set("k", 1)
        await store.clear()
    async with RedisMemoryStore.from_url(url, namespace="override") as overridden:
        assert overridden.namespace == "override"


async def test_rediss_url_uses_tls() -> None:
    from redis.asyncio.connection import SSLConnection

    store = RedisMemoryStore.from_url("rediss://user:pw@example.invalid:6380/1?ssl_cert_reqs=none")
    async with store:
        pool = store.client.connection_pool  # type: ignore[union-attr]
        assert pool.connection_class is SSLConnection
        assert pool.connection_kwargs["db"] == 1
        assert "pw" not in repr(store)


def test_a_certificate_file_that_cannot_be_read_is_refused_at_construction(
    tmp_path: Any,
) -> None:
    missing = tmp_path / "private-ca-name.pem"
    not_a_cert = tmp_path / "private-cert-name.pem"
    not_a_cert.write_text("not a certificate")
    for query in (f"ssl_ca_certs={missing}", f"ssl_cert_reqs=none&ssl_certfile={not_a_cert}"):
        with pytest.raises(InvalidArgumentError, match="ssl_") as info:
            RedisMemoryStore(f"rediss://127.0.0.1:6380/0?{query}")
        assert "private-" not in _messages(info.value)


async def test_an_existing_client_is_used_and_left_open(redis_url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url.split("?")[0])
    try:
        async with RedisMemoryStore(client, namespace=unique_namespace()) as store:
            await store.set("k", 1)
            assert await store.exists("k")
            await store.clear()
        assert await client.ping()
        with pytest.raises(InvalidArgumentError, match="socket_timeout"):
            RedisMemoryStore(client, socket_timeout=1)
    finally:
        await client.aclose()
    decoding = Redis.from_url(redis_url.split("?")[0], decode_responses=True)
    with pytest.raises(InvalidArgumentError, match="decode_responses"):
        RedisMemoryStore(decoding)
    await decoding.aclose()


def test_import_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "memkv.redis")
    with pytest.raises(ImportError, match=r'pip install "memkv\[redis\]"'):
        importlib.import_module("memkv.redis")
    monkeypatch.delitem(sys.modules, "memkv.redis", raising=False)


async def test_unix_socket_url(tmp_path: Any, redis_binary: str) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(redis_binary, tmp_path / "unix", args=["--unixsocket", str(socket_path)])
    server.start()
    try:
        async with open_store(f"unix://{socket_path}?namespace=sock&db=1") as store:
            await store.set("k", 1)
            entry = await store.get("k")
            assert entry is not None
            assert entry.value == 1
            assert str(socket_path) in repr(store)
    finally:
        server.stop()


async def test_bounded_pool_serves_more_tasks_than_connections(redis_url: str) -> None:
    async with RedisMemoryStore(
        redis_url, namespace=unique_namespace(), max_connections=2
    ) as store:
        await asyncio.gather(*(store.set(f"k{index}", index) for index in range(50)))
        entries = await asyncio.gather(*(store.get(f"k{index}") for index in range(50)))
        assert [entry.value for entry in entries if entry] == list(range(50))
        await store.clear()


async def test_rediss_url_talks_tls_and_checks_the_certificate(tls_server: Any) -> None:
    port, cert = tls_server
    url = f"rediss://127.0.0.1:{port}/0?namespace=tls&ssl_ca_certs={cert}"
    async with RedisMemoryStore.from_url(url) as store:
        await store.set("k", "secret")
        entry = await store.get("k")
        assert entry is not None
        assert entry.value == "secret"
    async with RedisMemoryStore.from_url(f"rediss://127.0.0.1:{port}/0?retries=0") as untrusted:
        with pytest.raises(BackendUnavailableError):
            await untrusted.get("k")


async def test_an_existing_cluster_client_is_used(cluster_url: str) -> None:
    from redis.asyncio.cluster import RedisCluster

    client = RedisCluster.from_url(cluster_url.replace("+cluster", "").split("?")[0])
    try:
        async with RedisMemoryStore(client, namespace=unique_namespace()) as store:
            assert repr(store).startswith("RedisMemoryStore(cluster ")
            await store.set_many({f"k{index}": index for index in range(20)})
            assert len([key async for key in store.scan()]) == 20
            assert await store.clear() == 20
    finally:
        await client.aclose()


# -- found in review ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["single", "cluster"])
async def test_default_pool_serves_more_than_a_hundred_concurrent_calls(
    redis_url: str, cluster_url: str, kind: str
) -> None:
    url = redis_url if kind == "single" else cluster_url
    async with RedisMemoryStore(url, namespace=unique_namespace()) as store:
        await store.set("k", 1)
        results = await asyncio.gather(*[store.get("k") for _ in range(300)])
    assert all(entry is not None and entry.value == 1 for entry in results)


async def test_a_dead_cluster_raises_backend_unavailable() -> None:
    from tests.redis_servers import free_port

    url = f"redis+cluster://127.0.0.1:{free_port(cluster_bus=True)}?retries=1&connect_timeout=0.2"
    async with RedisMemoryStore(url, namespace="gone") as store:
        with pytest.raises(BackendUnavailableError):
            await store.get("k")


@pytest.mark.parametrize(
    ("created", "updated", "expires", "meta_len"),
    [
        (float("nan"), 1.0, 0.0, 0),
        (1.0, 1e300, 0.0, 0),
        (1.0, 1.0, 1e20, 0),
        (-5.0, 1.0, 0.0, 0),
        (1.0, 1.0, 0.0, 1000),
    ],
    ids=["nan", "huge-updated", "huge-expires", "negative", "metadata-past-the-end"],
)
async def test_a_damaged_envelope_raises_codec_error_at_get(
    store: RedisMemoryStore[Any], created: float, updated: float, expires: float, meta_len: int
) -> None:
    header = ENVELOPE_HEADER.pack(b"MKV", 1, created, updated, expires, 1, meta_len)
    await store.client.set(f"{store.namespace}:bad".encode(), header + b"\x01")
    with pytest.raises(CodecError, match="'bad'"):
        await store.get("bad")
    with pytest.raises(CodecError):
        await store.get_many(["bad"])


async def test_acl_refusal_inside_the_set_script_is_access_denied(
    password_server: RedisServer,
) -> None:
    async with RedisMemoryStore(password_server.url) as admin:
        await admin.client.execute_command(
            "ACL", "SETUSER", "reader", "on", ">reader-pw", "~ro:*", "+@all", "-set"
        )
    url = f"redis://reader:reader-pw@127.0.0.1:{password_server.port}/0"
    async with RedisMemoryStore(url, namespace="ro") as store:
        with pytest.raises(AccessDeniedError):
            await store.set("k", 1)
        with pytest.raises(AccessDeniedError):
            await store.set_many({"k": 1})


async def test_a_custom_codec_error_never_echoes_the_value(redis_url: str) -> None:
    class Leaky:
        def encode(self, value: Any) -> bytes:
            raise TypeError(f"cannot encode {value!r}")

        def decode(self, data: bytes) -> Any:
            return data

    async with RedisMemoryStore(redis_url, namespace=unique_namespace(), codec=Leaky()) as store:
        with pytest.raises(CodecError) as info:
            await store.set("k", "SECRET-VALUE")
    assert "SECRET-VALUE" not in _messages(info.value).split("\n")[0]


async def test_a_store_used_after_close_closes_again(redis_url: str) -> None:
    store: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=unique_namespace())
    await store.set("k", 1)
    await store.close()
    assert await store.exists("k")  # reconnects
    await store.close()
    pool = store.client.connection_pool  # type: ignore[union-attr]
    assert not pool._in_use_connections  # released again


def test_an_unknown_scheme_does_not_echo_the_url() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        open_store("redsi://:WRONGPASSWORD@host")
    assert "WRONGPASSWORD" not in str(info.value)


def test_a_non_ascii_digit_database_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="database"):
        RedisMemoryStore("redis://127.0.0.1:6379/²")


# -- event loops ---------------------------------------------------------------------------

# The first loop's connections are never closed in these scenarios (that is the point),
# so their transports warn when collected.
leaks_the_first_loops_sockets = pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)


@leaks_the_first_loops_sockets
@pytest.mark.parametrize("kind", ["single", "cluster"])
def test_a_store_from_a_url_moves_to_the_next_asyncio_run(
    redis_url: str, cluster_url: str, kind: str
) -> None:
    store: RedisMemoryStore[Any] = RedisMemoryStore(
        redis_url if kind == "single" else cluster_url, namespace=unique_namespace()
    )

    async def write(value: int) -> int | None:
        await store.set("k", value)
        entry = await store.get("k")
        return None if entry is None else entry.value

    assert asyncio.run(write(1)) == 1  # not closed: its connections die with this loop
    assert asyncio.run(write(2)) == 2
    assert asyncio.run(store.exists("k"))
    assert asyncio.run(store.close()) is None  # from a loop that never used it: fine

    async def clean() -> list[str]:
        async with store:
            keys = [key async for key in store.scan()]
            await store.clear()
            return keys

    assert asyncio.run(clean()) == ["k"]
    gc.collect()  # the first loop's connections warn here, where the mark ignores it


def test_a_store_in_use_on_a_running_loop_refuses_another(redis_url: str) -> None:
    import threading

    store: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=unique_namespace())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(store.set("k", 1), loop).result()
        for call in (store.get("k"), store.close()):
            with pytest.raises(EventLoopError, match="still running"):
                asyncio.run(call)
        with pytest.raises(EventLoopError):
            asyncio.run(anext(store.scan()))  # type: ignore[arg-type]
        assert store.stats().operations[("get", "error")] == 1
        asyncio.run_coroutine_threadsafe(store.clear(), loop).result()
        asyncio.run_coroutine_threadsafe(store.close(), loop).result()
        # Closed on its loop, it may move: it reconnects on the next one.

        async def reuse() -> int:
            async with store:
                await store.set("k", 2)
                return await store.clear()

        assert asyncio.run(reuse()) == 1
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_a_client_passed_in_moves_with_its_owner_closing_it(redis_url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url.split("?")[0])
    store: RedisMemoryStore[Any] = RedisMemoryStore(client, namespace=unique_namespace())

    async def use(value: int) -> Any:
        try:
            await store.set("k", value)
            entry = await store.get("k")
            return None if entry is None else entry.value
        finally:
            await client.aclose()  # its owner closes it at the end of each loop

    assert asyncio.run(use(1)) == 1
    assert asyncio.run(use(2)) == 2  # a pytest-asyncio loop per test, say
    assert store.client is client  # never replaced: it is the caller's

    async def clean() -> int:
        try:
            return await store.clear()
        finally:
            await client.aclose()

    assert asyncio.run(clean()) == 1


@pytest.mark.parametrize("kind", ["single", "cluster", "bounded"])
def test_a_closed_store_serves_the_next_loop_after_concurrent_use(
    redis_url: str, cluster_url: str, kind: str
) -> None:
    url = {
        "single": redis_url,
        "cluster": cluster_url,
        "bounded": f"{redis_url}{'&' if '?' in redis_url else '?'}max_connections=2",
    }[kind]
    store: RedisMemoryStore[Any] = RedisMemoryStore(url, namespace=unique_namespace())

    async def burst(run: int) -> list[bool]:
        async with store:  # closed at the end of every loop, as documented
            await store.set(f"k{run}", run)
            return await asyncio.gather(*(store.exists(f"k{i}") for i in range(4)))

    for run in range(3):
        assert asyncio.run(burst(run)) == [i <= run for i in range(4)]

    async def clean() -> int:
        async with store:
            return await store.clear()

    assert asyncio.run(clean()) == 3


async def test_a_get_that_cannot_decode_counts_as_a_failed_call_only(redis_url: str) -> None:
    namespace = unique_namespace()
    async with (
        RedisMemoryStore(redis_url, namespace=namespace, codec="json") as writer,
        RedisMemoryStore(redis_url, namespace=namespace) as reader,
    ):
        await writer.set("k", {"a": 1})
        with pytest.raises(CodecError):
            await reader.get("k")
        stats = reader.stats()
        assert (stats.gets, stats.hits, stats.misses) == (0, 0, 0)
        assert stats.operations[("get", "error")] == 1
        await writer.clear()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("kind", ["single", "cluster"])
def test_a_forked_child_opens_its_own_connections_and_leaves_the_parents_alone(
    redis_url: str, cluster_url: str, kind: str
) -> None:
    store: RedisMemoryStore[Any] = RedisMemoryStore(
        redis_url if kind == "single" else cluster_url, namespace=unique_namespace()
    )
    loop = asyncio.new_event_loop()  # not asyncio.Runner: Python 3.10 has none
    try:
        loop.run_until_complete(store.set("parent", 1))
        pid = os.fork()
        if pid == 0:  # the child: a new loop, and the store moves to it
            code = 1
            try:

                async def child() -> bool:
                    await store.set("child", 2)
                    entry = await store.get("parent")
                    return entry is not None and entry.value == 1

                code = 0 if asyncio.run(child()) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's connection, its loop's registration included, still works.
        entries = loop.run_until_complete(store.get_many(["parent", "child"]))
        assert [entry.value for entry in entries if entry] == [1, 2]
        loop.run_until_complete(store.clear())
        loop.run_until_complete(store.close())
    finally:
        loop.close()
