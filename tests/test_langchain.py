"""The LangChain adapter: LangChain's standard store suites on every kind of store, then
TTL, prefixes, the bytes check, errors, the sync bridge and cleanup.

The standard suites (``langchain_tests``) run for ``MemkvStore`` and ``MemkvByteStore``,
sync and async, on both local cores, one Redis server and a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import importlib
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from langchain_core.stores import BaseStore, ByteStore
from langchain_tests.integration_tests.base_store import BaseStoreAsyncTests, BaseStoreSyncTests

from memkv import BaseMemoryStore, LocalMemoryStore, MemoryEntry, MemoryStore, RedisMemoryStore
from memkv.errors import (
    BackendUnavailableError,
    CodecError,
    EventLoopError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidTTLError,
    MemKVError,
    ReentrantCallError,
    StoreClosedError,
)
from memkv.integrations.langchain import MemkvByteStore, MemkvStore
from memkv.store import TTL
from memkv.validation import check_key, check_prefix, ttl_seconds
from tests.helpers import ALL_KINDS, FakeClock, local_store_type, make_store
from tests.redis_servers import RedisServer, unique_namespace

KINDS = ALL_KINDS
WORKER_PREFIX = "memkv-langchain-"


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX)]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def no_leaked_worker_threads() -> Iterator[None]:
    """Every test here must leave no adapter worker thread behind."""
    before = set(worker_threads())
    yield
    left = set(worker_threads()) - before
    if left:
        gc.collect()  # an adapter dropped without close() stops its worker when collected
        for thread in left:
            thread.join(timeout=5)
    assert set(worker_threads()) <= before


@pytest.fixture(params=KINDS)
def memory_store(request: pytest.FixtureRequest) -> MemoryStore[Any]:
    """An empty store of every kind; the adapter under test closes it."""
    return make_store(request, request.param)


@pytest.fixture(params=["redis", "redis-cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """The URL of the session's Redis server, then of its Redis Cluster."""
    url: str = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    return url


@pytest.fixture
def redis_store(any_redis_url: str) -> RedisMemoryStore[Any]:
    return RedisMemoryStore(any_redis_url, namespace=unique_namespace())


# -- LangChain's standard suites ------------------------------------------------------------


@pytest.fixture
def sync_adapter_factory(
    memory_store: MemoryStore[Any],
) -> Iterator[Callable[[type[MemkvStore[Any]]], MemkvStore[Any]]]:
    made: list[MemkvStore[Any]] = []

    def make(adapter_type: type[MemkvStore[Any]]) -> MemkvStore[Any]:
        made.append(adapter_type(memory_store))
        return made[-1]

    yield make
    for adapter in made:
        with adapter:
            adapter.mdelete(list(adapter.yield_keys()))  # leaves an external server clean


@pytest.fixture
async def async_adapter_factory(
    memory_store: MemoryStore[Any],
) -> AsyncIterator[Callable[[type[MemkvStore[Any]]], MemkvStore[Any]]]:
    made: list[MemkvStore[Any]] = []

    def make(adapter_type: type[MemkvStore[Any]]) -> MemkvStore[Any]:
        made.append(adapter_type(memory_store))
        return made[-1]

    yield make
    for adapter in made:
        async with adapter:
            await adapter.amdelete([key async for key in adapter.ayield_keys()])


VALUES = ("value-1", {"nested": [1, 2.5, None]}, [True, "x"])
BYTE_VALUES = (b"foo", b"bar\x00", b"\xffbuzz")


class TestMemkvStoreSync(BaseStoreSyncTests[Any]):
    @pytest.fixture
    def kv_store(self, sync_adapter_factory: Any) -> BaseStore[str, Any]:
        adapter: BaseStore[str, Any] = sync_adapter_factory(MemkvStore)
        return adapter

    @pytest.fixture
    def three_values(self) -> tuple[Any, Any, Any]:
        return VALUES


class TestMemkvStoreAsync(BaseStoreAsyncTests[Any]):
    @pytest.fixture
    async def kv_store(self, async_adapter_factory: Any) -> BaseStore[str, Any]:
        adapter: BaseStore[str, Any] = async_adapter_factory(MemkvStore)
        return adapter

    @pytest.fixture
    def three_values(self) -> tuple[Any, Any, Any]:
        return VALUES


class TestMemkvByteStoreSync(BaseStoreSyncTests[bytes]):
    @pytest.fixture
    def kv_store(self, sync_adapter_factory: Any) -> ByteStore:
        adapter: ByteStore = sync_adapter_factory(MemkvByteStore)
        return adapter

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:
        return BYTE_VALUES


class TestMemkvByteStoreAsync(BaseStoreAsyncTests[bytes]):
    @pytest.fixture
    async def kv_store(self, async_adapter_factory: Any) -> ByteStore:
        adapter: ByteStore = async_adapter_factory(MemkvByteStore)
        return adapter

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:
        return BYTE_VALUES


# -- stores used to watch the adapter -------------------------------------------------------


class CountingLocalStore(LocalMemoryStore[Any]):
    """A local store that counts the keys its scans produce and the scans closed.

    Its scan is a generator of its own, so it declares no inline run: the adapter runs
    it on a worker, as any store that does not declare ``runs_inline``.
    """

    runs_inline = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.keys_scanned = 0
        self.scans_closed = 0

    def scan(self, pattern: str | None = None, batch_size: int = 100) -> AsyncIterator[str]:
        return self._counting(super().scan(pattern, batch_size))

    async def _counting(self, keys: AsyncIterator[str]) -> AsyncIterator[str]:
        try:
            async for key in keys:
                self.keys_scanned += 1
                yield key
        finally:
            self.scans_closed += 1


class DictStore(BaseMemoryStore[Any]):
    """A third-party store (no expiry) that records the loop and thread of every call."""

    def __init__(self) -> None:
        self.entries: dict[str, MemoryEntry[Any]] = {}
        self.loops: set[asyncio.AbstractEventLoop] = set()
        self.threads: set[str] = set()
        self.keys_scanned = 0
        self.scans_closed = 0
        self.closed = 0

    def _seen(self) -> None:
        self.loops.add(asyncio.get_running_loop())
        self.threads.add(threading.current_thread().name)

    async def get(self, key: str) -> MemoryEntry[Any] | None:
        self._seen()
        return self.entries.get(check_key(key))

    async def set(
        self, key: str, value: Any, ttl: TTL = None, metadata: Mapping[str, Any] | None = None
    ) -> None:
        self._seen()
        ttl_seconds(ttl)
        self.entries[check_key(key)] = MemoryEntry(key, value, metadata=metadata)

    async def delete(self, key: str) -> bool:
        self._seen()
        return self.entries.pop(check_key(key), None) is not None

    def scan(self, pattern: str | None = None, batch_size: int = 100) -> AsyncIterator[str]:
        return self._scan(check_prefix(pattern))

    async def _scan(self, prefix: str) -> AsyncIterator[str]:
        self._seen()
        try:
            for key in sorted(self.entries):
                if key.startswith(prefix):
                    self.keys_scanned += 1
                    yield key
        finally:
            self.scans_closed += 1

    async def close(self) -> None:
        self._seen()
        self.closed += 1


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ttl", [0, -1, 0.0, timedelta(0), "60", True, float("inf"), float("nan"), 1e12]
)
def test_a_bad_ttl_is_refused_at_construction(ttl: Any) -> None:
    with pytest.raises(InvalidTTLError):
        MemkvStore(LocalMemoryStore(), ttl=ttl)


def test_bad_options_are_refused_at_construction() -> None:
    with pytest.raises(InvalidMetadataError):
        MemkvStore(LocalMemoryStore(), metadata=[("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(InvalidMetadataError):
        MemkvStore(LocalMemoryStore(), metadata={1: "a"})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgumentError):
        MemkvStore(LocalMemoryStore(), batch_size=0)
    with pytest.raises(TypeError, match="MemoryStore"):
        MemkvStore("memory://")  # type: ignore[arg-type]


def test_the_adapters_are_langchain_stores() -> None:
    adapter: MemkvStore[str] = MemkvStore(LocalMemoryStore[str]())
    byte_adapter = MemkvByteStore(LocalMemoryStore[bytes]())
    assert isinstance(adapter, BaseStore)
    assert isinstance(byte_adapter, BaseStore)
    assert "ttl=None" in repr(adapter)
    assert repr(byte_adapter).startswith("MemkvByteStore(LocalMemoryStore(")


def test_import_without_langchain_core_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "langchain_core.stores", None)
    monkeypatch.delitem(sys.modules, "memkv.integrations.langchain")
    with pytest.raises(ImportError, match=r'pip install "memkv\[langchain\]"'):
        importlib.import_module("memkv.integrations.langchain")


# -- TTL and metadata ---------------------------------------------------------------------


def test_ttl_expires_sync_writes_on_the_injected_clock(core: str, clock: FakeClock) -> None:
    store = local_store_type(core)(clock=clock)
    with MemkvStore(store, ttl=timedelta(seconds=30)) as adapter:
        adapter.mset([("a", 1), ("b", 2)])
        clock.tick(29.9)
        assert adapter.mget(["a", "b"]) == [1, 2]
        clock.tick(0.1)
        assert adapter.mget(["a", "b"]) == [None, None]
        assert list(adapter.yield_keys()) == []


async def test_ttl_expires_async_writes_on_the_injected_clock(core: str, clock: FakeClock) -> None:
    store = local_store_type(core)(clock=clock)
    async with MemkvByteStore(store, ttl=5) as adapter:
        await adapter.amset([("a", b"1")])
        clock.tick(4)
        await adapter.amset([("b", b"2")])  # every write gets the full TTL
        clock.tick(1)
        assert await adapter.amget(["a", "b"]) == [None, b"2"]
        assert [key async for key in adapter.ayield_keys()] == ["b"]
        clock.tick(4)
        assert await adapter.amget(["b"]) == [None]


async def test_ttl_and_metadata_are_written_on_every_entry(core: str, clock: FakeClock) -> None:
    store = local_store_type(core)(clock=clock)
    metadata = {"source": "langchain"}
    async with MemkvStore(store, ttl=60, metadata=metadata) as adapter:
        metadata["source"] = "changed later"  # the adapter keeps its own copy
        adapter.mset([("sync", 1)])
        await adapter.amset([("async", 2)])
        for key in ("sync", "async"):
            entry = await store.get(key)
            assert entry is not None
            assert entry.metadata == {"source": "langchain"}
            assert entry.expires_at is not None
            remaining = entry.expires_at - datetime.now(timezone.utc)
            assert timedelta(seconds=59) < remaining <= timedelta(seconds=60)


async def test_ttl_reaches_redis(any_redis_url: str) -> None:
    namespace = unique_namespace()
    store: RedisMemoryStore[Any] = RedisMemoryStore(any_redis_url, namespace=namespace)
    async with MemkvStore(store, ttl=timedelta(minutes=5)) as adapter:
        adapter.mset([("sync", 1)])
        await adapter.amset([("async", 2)])
        # A second store on the namespace reads the entries on this loop (the adapter
        # runs its own store on its worker loop).
        async with RedisMemoryStore[Any](any_redis_url, namespace=namespace) as reader:
            for entry in await reader.get_many(["sync", "async"]):
                assert entry is not None
                assert entry.expires_at is not None
                remaining = entry.expires_at - datetime.now(timezone.utc)
                assert timedelta(minutes=4) < remaining <= timedelta(minutes=5)
        await adapter.amdelete(["sync", "async"])


# -- keys -----------------------------------------------------------------------------------


KEYS = ["user:1", "user:2", "user", "usr:1", "a*b", "a*", "axb", "é:1"]


def test_yield_keys_takes_a_literal_prefix(memory_store: MemoryStore[Any]) -> None:
    with MemkvStore(memory_store) as adapter:
        adapter.mset([(key, key) for key in KEYS])
        assert sorted(adapter.yield_keys(prefix="user:")) == ["user:1", "user:2"]
        assert sorted(adapter.yield_keys(prefix="a*")) == ["a*", "a*b"]
        assert sorted(adapter.yield_keys(prefix="é")) == ["é:1"]
        assert sorted(adapter.yield_keys(prefix="zzz")) == []
        assert sorted(adapter.yield_keys(prefix="")) == sorted(KEYS)
        assert sorted(adapter.yield_keys()) == sorted(KEYS)
        adapter.mdelete(KEYS)


async def test_ayield_keys_takes_a_literal_prefix(memory_store: MemoryStore[Any]) -> None:
    async with MemkvStore(memory_store) as adapter:
        await adapter.amset([(key, key) for key in KEYS])
        assert sorted([k async for k in adapter.ayield_keys(prefix="user:")]) == [
            "user:1",
            "user:2",
        ]
        assert sorted([k async for k in adapter.ayield_keys(prefix="a*")]) == ["a*", "a*b"]
        assert sorted([k async for k in adapter.ayield_keys()]) == sorted(KEYS)
        await adapter.amdelete(KEYS)


def test_a_non_str_prefix_raises_when_called_not_when_iterated() -> None:
    with MemkvStore(LocalMemoryStore[Any]()) as adapter:
        with pytest.raises(InvalidKeyError):
            adapter.yield_keys(prefix=1)  # type: ignore[arg-type]
        with pytest.raises(InvalidKeyError):
            adapter.ayield_keys(prefix=b"user:")  # type: ignore[arg-type]


def test_yield_keys_streams_batch_by_batch_and_closes_an_unfinished_scan() -> None:
    store = CountingLocalStore()
    with MemkvStore(store, batch_size=3) as adapter:
        adapter.mset([(f"k{index:02}", index) for index in range(10)])
        keys = adapter.yield_keys()
        assert next(keys) == "k00"
        assert store.keys_scanned == 3  # one batch, not the whole store
        assert [next(keys), next(keys), next(keys)] == ["k01", "k02", "k03"]
        assert store.keys_scanned == 6
        keys.close()
        wait_until(lambda: store.scans_closed == 1)  # closed on the worker
        assert list(adapter.yield_keys(prefix="k0")) == [f"k0{index}" for index in range(10)]
        assert store.scans_closed == 2


async def test_ayield_keys_on_a_worker_store_streams_batch_by_batch() -> None:
    store = DictStore()
    async with MemkvStore(store, batch_size=4) as adapter:
        await adapter.amset([(f"k{index:02}", index) for index in range(10)])
        keys = adapter.ayield_keys()
        assert await anext(keys) == "k00"
        assert store.keys_scanned == 4
        await keys.aclose()
        wait_until(lambda: store.scans_closed == 1)
        assert len([key async for key in adapter.ayield_keys()]) == 10


def test_an_unclosed_key_generator_does_not_outlive_close() -> None:
    store = CountingLocalStore()
    adapter = MemkvStore(store, batch_size=2)
    adapter.mset([("a", 1), ("b", 2), ("c", 3)])
    keys = adapter.yield_keys()
    assert next(keys) == "a"
    adapter.close()  # finishes the scan still open on the worker
    assert store.scans_closed == 1
    with pytest.raises(StoreClosedError, match="closed"):
        list(keys)


def test_bad_keys_raise_memkv_errors_and_write_nothing(memory_store: MemoryStore[Any]) -> None:
    with MemkvStore(memory_store) as adapter:
        with pytest.raises(InvalidKeyError):
            adapter.mget([1])  # type: ignore[list-item]
        with pytest.raises(InvalidKeyError):
            adapter.mget("abc")  # a lone str is almost always a mistake
        with pytest.raises(InvalidKeyError):
            adapter.mset([("ok", 1), (2, 2)])  # type: ignore[list-item]
        with pytest.raises(InvalidKeyError):
            adapter.mset([("ok", 1), ("pair",)])  # type: ignore[list-item]
        with pytest.raises(InvalidKeyError):
            adapter.mdelete([None])  # type: ignore[list-item]
        assert adapter.mget(["ok"]) == [None]


async def test_bad_keys_raise_memkv_errors_from_async_calls(
    memory_store: MemoryStore[Any],
) -> None:
    async with MemkvStore(memory_store) as adapter:
        with pytest.raises(InvalidKeyError):
            await adapter.amget([1])  # type: ignore[list-item]
        with pytest.raises(InvalidKeyError):
            await adapter.amset([("ok", 1), (b"k", 2)])  # type: ignore[list-item]
        with pytest.raises(InvalidKeyError):
            await adapter.amdelete("abc")
        assert await adapter.amget(["ok"]) == [None]


# -- bytes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["text", bytearray(b"x"), memoryview(b"x"), 1, None])
def test_byte_store_refuses_a_batch_with_a_non_bytes_value(
    memory_store: MemoryStore[Any], value: Any
) -> None:
    with MemkvByteStore(memory_store) as adapter:
        with pytest.raises(CodecError, match=rf"'bad' is {type(value).__name__}") as caught:
            adapter.mset([("good", b"ok"), ("bad", value)])
        assert isinstance(caught.value, TypeError)
        assert isinstance(caught.value, MemKVError)
        assert adapter.mget(["good", "bad"]) == [None, None]
        assert list(adapter.yield_keys()) == []


async def test_byte_store_refuses_a_non_bytes_value_from_async_calls(
    memory_store: MemoryStore[Any],
) -> None:
    async with MemkvByteStore(memory_store) as adapter:
        with pytest.raises(CodecError):
            await adapter.amset([("good", b"ok"), ("bad", "text")])  # type: ignore[list-item]
        assert await adapter.amget(["good", "bad"]) == [None, None]


def test_byte_store_refuses_to_read_a_value_that_is_not_bytes(core: str) -> None:
    store = local_store_type(core)()
    with MemkvStore(store) as writer, MemkvByteStore(store) as reader:
        writer.mset([("text", "not bytes"), ("raw", b"bytes")])
        assert reader.mget(["raw"]) == [b"bytes"]
        with pytest.raises(CodecError, match="'text'"):
            reader.mget(["raw", "text"])


# -- store errors ---------------------------------------------------------------------------


async def test_store_errors_come_through_the_worker_typed(
    redis_store: RedisMemoryStore[Any],
) -> None:
    async with MemkvStore(redis_store) as adapter:
        with pytest.raises(CodecError):
            adapter.mset([("a", object())])
        with pytest.raises(CodecError):
            await adapter.amset([("a", object())])
        assert await adapter.amget(["a"]) == [None]


def test_an_unreachable_server_raises_backend_unavailable(redis_server: RedisServer) -> None:
    store: RedisMemoryStore[Any] = RedisMemoryStore(
        redis_server.url, namespace="gone", socket_timeout=0.5, connect_timeout=0.5, retries=1
    )
    with MemkvStore(store) as adapter:
        adapter.mset([("a", 1)])
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            adapter.mget(["a"])
        with pytest.raises(BackendUnavailableError):
            asyncio.run(adapter.amget(["a"]))
        assert time.monotonic() - started < 5


# -- the sync bridge -------------------------------------------------------------------------


async def test_sync_calls_work_inside_a_running_loop(memory_store: MemoryStore[Any]) -> None:
    async with MemkvStore(memory_store) as adapter:
        adapter.mset([("sync", 1)])  # blocks this loop for the call, never deadlocks
        await adapter.amset([("async", 2)])
        assert adapter.mget(["sync", "async"]) == [1, 2]
        assert await adapter.amget(["sync", "async"]) == [1, 2]
        assert sorted(adapter.yield_keys()) == ["async", "sync"]
        adapter.mdelete(["sync"])
        assert [key async for key in adapter.ayield_keys()] == ["async"]
        await adapter.amdelete(["async"])


async def test_a_local_store_needs_no_worker_thread_sync_or_async(core: str) -> None:
    async with MemkvStore(local_store_type(core)()) as adapter:
        await adapter.amset([("a", 1)])
        assert await adapter.amget(["a"]) == [1]
        assert [key async for key in adapter.ayield_keys()] == ["a"]
        await adapter.amdelete(["a"])
        # Sync calls run LocalMemoryStore's operations to the end in this thread.
        adapter.mset([(f"k{i:03}", i) for i in range(250)])
        assert adapter.mget(["k001"]) == [1]
        assert len(list(adapter.yield_keys(prefix="k"))) == 250  # several scan batches
        keys = adapter.yield_keys(prefix="k")
        assert next(keys) == "k000"
        keys.close()  # an unfinished scan is closed here too
        adapter.mdelete(["k001"])
        assert worker_threads() == []


def test_a_local_store_subclass_declaring_runs_inline_false_runs_on_the_worker(
    core: str,
) -> None:
    threads: list[str] = []

    class Remote(local_store_type(core)):  # type: ignore[misc]
        runs_inline = False

        async def get_many(self, keys: Any) -> Any:
            threads.append(threading.current_thread().name)
            await asyncio.sleep(0.001)  # waits on a future: needs a real event loop
            return await super().get_many(keys)

    with MemkvStore(Remote()) as adapter:
        adapter.mset([("a", 1)])
        assert adapter.mget(["a"]) == [1]
        (worker,) = worker_threads()
        assert asyncio.run(adapter.amget(["a"])) == [1]  # async calls go there too
        assert threads == [worker.name, worker.name]


def test_a_store_declaring_runs_inline_that_waits_raises_event_loop_error(core: str) -> None:
    class Misdeclared(local_store_type(core)):  # type: ignore[misc]
        async def get_many(self, keys: Any) -> Any:
            await asyncio.sleep(0.001)  # needs an event loop, despite runs_inline
            return await super().get_many(keys)

    with MemkvStore(Misdeclared()) as adapter, pytest.raises(EventLoopError, match="runs_inline"):
        adapter.mget(["a"])


async def test_closing_ends_a_running_async_key_scan_on_a_local_store() -> None:
    adapter: MemkvStore[int] = MemkvStore(LocalMemoryStore(), batch_size=2)
    await adapter.amset([(f"k{i}", i) for i in range(6)])
    keys = adapter.ayield_keys()
    assert await anext(keys) == "k0"
    await adapter.aclose()
    with pytest.raises(StoreClosedError):
        await anext(keys)


def test_a_third_party_store_runs_only_on_the_worker_loop() -> None:
    store = DictStore()
    with MemkvStore(store) as adapter:
        adapter.mset([("sync", 1)])

        async def use() -> list[Any]:
            await adapter.amset([("async", 2)])
            return await adapter.amget(["sync", "async"])

        assert asyncio.run(use()) == [1, 2]
        assert asyncio.run(use()) == [1, 2]  # a second loop: still one loop for the store
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            assert pool.submit(asyncio.run, use()).result() == [1, 2]
            assert pool.submit(adapter.mget, ["sync"]).result() == [1]
    assert len(store.loops) == 1
    assert len(store.threads) == 1
    assert store.threads.pop().startswith(WORKER_PREFIX)
    assert store.closed == 1


def test_repeated_asyncio_run_on_one_redis_adapter(redis_store: RedisMemoryStore[Any]) -> None:
    # A RedisMemoryStore awaited directly fails on the second asyncio.run(): its pooled
    # connections belong to the first, closed loop. The adapter keeps it on one loop.
    with MemkvStore(redis_store) as adapter:
        for round_number in range(3):
            asyncio.run(adapter.amset([("round", round_number)]))
            assert asyncio.run(adapter.amget(["round"])) == [round_number]
            assert adapter.mget(["round"]) == [round_number]
        adapter.mdelete(["round"])


async def test_sync_and_async_calls_mix_on_one_redis_adapter(
    redis_store: RedisMemoryStore[Any],
) -> None:
    rounds = 30
    async with MemkvStore(redis_store) as adapter:

        def sync_worker(name: str) -> None:
            for index in range(rounds):
                adapter.mset([(f"{name}:{index}", index)])
                assert adapter.mget([f"{name}:{index}"]) == [index]

        async def async_worker(name: str) -> None:
            for index in range(rounds):
                await adapter.amset([(f"{name}:{index}", index)])
                assert await adapter.amget([f"{name}:{index}"]) == [index]

        def other_loop(name: str) -> None:
            asyncio.run(async_worker(name))

        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(4) as threads:
            await asyncio.gather(
                *(loop.run_in_executor(threads, sync_worker, f"t{n}") for n in range(3)),
                loop.run_in_executor(threads, other_loop, "loop"),
                *(async_worker(f"main{n}") for n in range(3)),
            )
        names = [*(f"t{n}" for n in range(3)), "loop", *(f"main{n}" for n in range(3))]
        expected = sorted(f"{name}:{index}" for name in names for index in range(rounds))
        assert sorted(adapter.yield_keys()) == expected
        await adapter.amdelete(expected)


def test_a_sync_call_from_inside_the_store_raises_instead_of_deadlocking() -> None:
    class ReentrantStore(DictStore):
        adapter: MemkvStore[Any]

        async def get(self, key: str) -> MemoryEntry[Any] | None:
            self.adapter.mget(["other"])  # runs on the worker: must not wait for itself
            return await super().get(key)

    store = ReentrantStore()
    with MemkvStore(store) as adapter:
        store.adapter = adapter
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            call = pool.submit(adapter.mget, ["key"])
            with pytest.raises(ReentrantCallError, match="deadlock"):
                call.result(timeout=10)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("kind", ["third-party", "redis"])
def test_a_forked_child_starts_its_own_worker(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        store: MemoryStore[Any] = RedisMemoryStore(url, namespace=unique_namespace())
    else:
        store = DictStore()
    with MemkvStore(store) as adapter:
        adapter.mset([("a", 1)])  # the parent's worker is running, its store bound to it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                adapter.mset([("b", 2)])
                os._exit(0 if adapter.mget(["a", "b"]) == [1, 2] else 1)
            except BaseException:
                os._exit(2)
        deadline = time.monotonic() + 10
        while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the child hung on the worker it inherited")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(waited[1]) == 0
        # The parent's worker and connections were left alone: it carries on at once
        # (a child closing the inherited sockets would stall it for a socket timeout).
        started = time.monotonic()
        assert adapter.mget(["a", "b"]) == ([1, 2] if kind == "redis" else [1, None])
        assert time.monotonic() - started < 0.5
        adapter.mdelete(["a", "b"])


# -- closing ----------------------------------------------------------------------------------


def test_close_stops_the_worker_closes_the_store_and_is_final() -> None:
    store = DictStore()
    adapter = MemkvStore(store)
    adapter.mset([("a", 1)])
    (worker,) = worker_threads()
    adapter.close()
    assert not worker.is_alive()
    assert store.closed == 1
    adapter.close()  # safe twice
    assert store.closed == 1
    with pytest.raises(StoreClosedError, match="closed"):
        adapter.mget(["a"])
    with pytest.raises(StoreClosedError, match="closed"):
        adapter.yield_keys()
    with pytest.raises(StoreClosedError, match="closed"):
        asyncio.run(adapter.amset([("a", 1)]))
    assert worker_threads() == []


async def test_async_close_closes_a_local_store_on_the_callers_loop() -> None:
    # A LocalMemoryStore runs in the caller; a subclass with a close() of its own would
    # run on the worker (see the subclass test above).
    closed: list[asyncio.AbstractEventLoop] = []

    store: LocalMemoryStore[Any] = LocalMemoryStore()
    close = store.close

    async def recording_close() -> None:
        closed.append(asyncio.get_running_loop())
        await close()

    store.close = recording_close  # type: ignore[method-assign]
    async with MemkvStore(store) as adapter:
        adapter.mset([("a", 1)])
    assert closed == [asyncio.get_running_loop()]
    assert worker_threads() == []
    with pytest.raises(StoreClosedError, match="closed"):
        await adapter.amget(["a"])
    with pytest.raises(StoreClosedError, match="closed"):
        adapter.ayield_keys()
    await adapter.aclose()  # safe twice
    assert len(closed) == 1


def test_close_cancels_a_call_still_running_in_another_thread() -> None:
    class StuckStore(DictStore):
        def __init__(self) -> None:
            super().__init__()
            self.started = threading.Event()

        async def get(self, key: str) -> MemoryEntry[Any] | None:
            self.started.set()
            await asyncio.sleep(60)
            return None

    store = StuckStore()
    adapter = MemkvStore(store)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(adapter.mget, ["key"])
        assert store.started.wait(timeout=5)
        started = time.monotonic()
        adapter.close()
        with pytest.raises(concurrent.futures.CancelledError):
            call.result(timeout=5)
        assert time.monotonic() - started < 5
    assert store.closed == 1


def test_close_without_any_call_still_closes_the_store() -> None:
    store = DictStore()
    MemkvStore(store).close()
    assert store.closed == 1


async def test_closing_a_redis_adapter_releases_its_connections(redis_url: str) -> None:
    name = f"lc-{uuid.uuid4().hex[:8]}"

    def connections() -> int:
        with redis.Redis.from_url(redis_url) as admin:
            return sum(client.get("name") == name for client in admin.client_list())

    store: RedisMemoryStore[Any] = RedisMemoryStore(
        f"{redis_url}{'&' if '?' in redis_url else '?'}client_name={name}",
        namespace=unique_namespace(),
    )
    adapter = MemkvStore(store)
    adapter.mset([("a", 1)])
    await adapter.amget(["a"])
    assert connections() >= 1
    adapter.mdelete(["a"])
    await adapter.aclose()
    wait_until(lambda: connections() == 0)


def test_an_adapter_dropped_without_close_stops_its_worker() -> None:
    store = DictStore()
    adapter = MemkvStore(store)
    adapter.mset([("a", 1)])
    (worker,) = worker_threads()
    del adapter
    gc.collect()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert store.closed == 1
