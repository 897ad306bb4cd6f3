"""The LangChain LLM cache: LangChain's standard cache suites on every kind of store, then
keys, values, TTL, clearing, errors, and a chat model served through ``set_llm_cache``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.caches import BaseCache
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from langchain_tests.integration_tests.cache import AsyncCacheTestSuite, SyncCacheTestSuite

from memkv import LocalMemoryStore, MemoryStore, RedisMemoryStore
from memkv.errors import (
    CodecError,
    InvalidArgumentTypeError,
    InvalidKeyError,
    InvalidTTLError,
    StoreClosedError,
)
from memkv.integrations.langchain import MemkvLLMCache
from tests.helpers import ALL_KINDS, FakeClock, local_store_type, make_store
from tests.redis_servers import unique_namespace

KINDS = ALL_KINDS
PREFIX = MemkvLLMCache.KEY_PREFIX


def _keys(store: LocalMemoryStore[Any]) -> list[str]:
    async def scan() -> list[str]:
        return [key async for key in store.scan()]

    return asyncio.run(scan())


@pytest.fixture(params=KINDS)
def memory_store(request: pytest.FixtureRequest) -> MemoryStore[Any]:
    """An empty store of every kind; the cache under test closes it."""
    return make_store(request, request.param)


@pytest.fixture
def llm_cache(memory_store: MemoryStore[Any]) -> Iterator[MemkvLLMCache]:
    with MemkvLLMCache(memory_store) as cache:
        yield cache
        cache.clear()  # leaves an external server clean


@pytest.fixture
def restore_global_cache() -> Iterator[None]:
    previous = get_llm_cache()
    yield
    set_llm_cache(previous)


# -- LangChain's standard suites ------------------------------------------------------------


class TestMemkvLLMCacheSync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, llm_cache: MemkvLLMCache) -> BaseCache:
        return llm_cache


class TestMemkvLLMCacheAsync(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, memory_store: MemoryStore[Any]) -> AsyncIterator[BaseCache]:
        async with MemkvLLMCache(memory_store) as cache:
            yield cache
            await cache.aclear()


# -- keys and values ----------------------------------------------------------------------


def test_keys_keep_prompt_and_llm_string_apart(llm_cache: MemkvLLMCache) -> None:
    pairs = [("ab", "c"), ("a", "bc"), ("", "abc"), ("abc", ""), ("1:a", "b"), ("\ud800", "")]
    for index, (prompt, llm_string) in enumerate(pairs):
        llm_cache.update(prompt, llm_string, [Generation(text=str(index))])
    for index, (prompt, llm_string) in enumerate(pairs):
        assert llm_cache.lookup(prompt, llm_string) == [Generation(text=str(index))]


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.text(":1a\ud800\U0001f600", max_size=4), st.text(":1a", max_size=4)),
        min_size=1,
        max_size=10,
        unique=True,
    )
)
def test_distinct_prompt_and_llm_string_pairs_never_share_an_entry(
    pairs: list[tuple[str, str]],
) -> None:
    store: LocalMemoryStore[Any] = LocalMemoryStore()
    with MemkvLLMCache(store) as cache:
        for index, (prompt, llm_string) in enumerate(pairs):
            cache.update(prompt, llm_string, [Generation(text=str(index))])
        assert len(store) == len(pairs)
        for index, (prompt, llm_string) in enumerate(pairs):
            assert cache.lookup(prompt, llm_string) == [Generation(text=str(index))]


def test_the_store_holds_neither_prompt_nor_llm_string(core: str) -> None:
    store = local_store_type(core)()
    with MemkvLLMCache(store) as cache:
        cache.update("a secret prompt", "model=x", [Generation(text="answer")])
        (key,) = _keys(store)
        assert key.startswith(PREFIX)
        assert len(key) == len(PREFIX) + 64
        assert "secret" not in key


async def test_chat_generations_round_trip(memory_store: MemoryStore[Any]) -> None:
    message = AIMessage(
        content="Paris",
        id="run-1",
        usage_metadata={"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
        response_metadata={"model_name": "fake"},
    )
    generations = [
        ChatGeneration(message=message, generation_info={"finish_reason": "stop"}),
        ChatGeneration(message=AIMessage(content=[{"type": "text", "text": "Lyon"}])),
    ]
    async with MemkvLLMCache(memory_store) as cache:
        await cache.aupdate("capital?", "fake-model", generations)
        assert cache.lookup("capital?", "fake-model") == generations
        revived = await cache.alookup("capital?", "fake-model")
        assert revived is not None
        assert isinstance(revived[0], ChatGeneration)
        assert isinstance(revived[0].message, AIMessage)
        assert revived[0].message.usage_metadata == message.usage_metadata
        await cache.aclear()


def test_a_lookup_returns_a_fresh_copy(core: str) -> None:
    with MemkvLLMCache(local_store_type(core)()) as cache:
        cache.update("p", "m", [Generation(text="a", generation_info={"n": [1]})])
        first = cache.lookup("p", "m")
        assert first is not None
        assert first[0].generation_info is not None
        first[0].generation_info["n"].append(2)
        assert cache.lookup("p", "m") == [Generation(text="a", generation_info={"n": [1]})]


def test_an_entry_written_by_something_else_raises_codec_error_without_its_text(
    core: str,
) -> None:
    store = local_store_type(core)()
    with MemkvLLMCache(store) as cache:
        cache.update("p", "m", [Generation(text="kept")])
        (key,) = _keys(store)
        for foreign in ("a private value", '{"lc": 1, "type": "secret", "id": ["x"]}', 42, None):
            asyncio.run(store.set(key, foreign))
            with pytest.raises(CodecError) as raised:
                cache.lookup("p", "m")
            assert "private" not in str(raised.value)
            assert "secret" not in str(raised.value)
            assert raised.value.__cause__ is None


@pytest.mark.parametrize("where", ["a class outside the allowlist", "an unserialisable field"])
async def test_generations_that_would_not_revive_are_refused_on_update(where: str) -> None:
    class CustomGeneration(Generation):
        @classmethod
        def get_lc_namespace(cls) -> list[str]:
            return ["my_package", "outputs"]

    class Secret:
        def __repr__(self) -> str:
            return "Secret('hunter2')"

    if where == "an unserialisable field":
        generation = Generation(text="x", generation_info={"secret": Secret()})
    else:
        generation = CustomGeneration(text="x")
    store: LocalMemoryStore[Any] = LocalMemoryStore()
    async with MemkvLLMCache(store) as cache:
        with pytest.raises(CodecError, match="nothing was written") as raised:
            cache.update("p", "m", [Generation(text="fine"), generation])
        assert "hunter2" not in str(raised.value)
        with pytest.raises(CodecError):
            await cache.aupdate("p", "m", [generation])
        assert len(store) == 0


# -- TTL ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0, -1, timedelta(0), "60", True, float("nan"), 1e12])
def test_a_bad_ttl_is_refused_at_construction(ttl: Any) -> None:
    with pytest.raises(InvalidTTLError):
        MemkvLLMCache(LocalMemoryStore(), ttl=ttl)


def test_a_store_that_is_not_a_memkv_store_is_refused() -> None:
    with pytest.raises(InvalidArgumentTypeError, match="MemoryStore"):
        MemkvLLMCache("memory://")  # type: ignore[arg-type]


async def test_entries_expire_after_the_ttl_on_the_injected_clock(
    core: str, clock: FakeClock
) -> None:
    async with MemkvLLMCache(local_store_type(core)(clock=clock), ttl=30) as cache:
        cache.update("sync", "m", [Generation(text="1")])
        await cache.aupdate("async", "m", [Generation(text="2")])
        clock.tick(29.9)
        assert cache.lookup("sync", "m") == [Generation(text="1")]
        assert await cache.alookup("async", "m") == [Generation(text="2")]
        clock.tick(0.1)
        assert cache.lookup("sync", "m") is None
        assert await cache.alookup("async", "m") is None


async def test_the_ttl_reaches_redis(redis_url: str) -> None:
    namespace = unique_namespace()
    store: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=namespace)
    async with MemkvLLMCache(store, ttl=timedelta(minutes=5)) as cache:
        await cache.aupdate("p", "m", [Generation(text="x")])
        async with RedisMemoryStore[Any](redis_url, namespace=namespace) as reader:
            (key,) = [key async for key in reader.scan()]
            entry = await reader.get(key)
            assert entry is not None
            assert entry.expires_at is not None
            remaining = entry.expires_at - datetime.now(timezone.utc)
            assert timedelta(minutes=4) < remaining <= timedelta(minutes=5)
        await cache.aclear()


# -- clearing -----------------------------------------------------------------------------


async def test_clear_removes_only_the_caches_entries(memory_store: MemoryStore[Any]) -> None:
    async with MemkvLLMCache(memory_store) as cache:
        await cache._bridge.run(memory_store.set_many({"other": 1, "langchain": 2}))
        cache.update("p", "m", [Generation(text="x")])
        await cache.aupdate("q", "m", [Generation(text="y")])
        cache.clear()
        assert await cache.alookup("p", "m") is None
        cache.update("p", "m", [Generation(text="x")])
        await cache.aclear()
        assert cache.lookup("p", "m") is None
        entries = await cache._bridge.run(memory_store.get_many(["other", "langchain"]))
        assert [entry.value for entry in entries if entry is not None] == [1, 2]
        await cache._bridge.run(memory_store.delete_many(["other", "langchain"]))


def test_clear_takes_no_options() -> None:
    with (
        MemkvLLMCache(LocalMemoryStore()) as cache,
        pytest.raises(InvalidArgumentTypeError, match="no options"),
    ):
        cache.clear(everything=True)


# -- errors and closing ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, 1, b"prompt", ["prompt"]])
async def test_a_prompt_or_llm_string_that_is_not_str_raises_invalid_key(bad: Any) -> None:
    async with MemkvLLMCache(LocalMemoryStore()) as cache:
        for call in (
            lambda: cache.lookup(bad, "m"),
            lambda: cache.lookup("p", bad),
            lambda: cache.update(bad, "m", [Generation(text="x")]),
        ):
            with pytest.raises(InvalidKeyError):
                call()
        with pytest.raises(InvalidKeyError):
            await cache.alookup("p", bad)
        with pytest.raises(InvalidKeyError):
            await cache.aupdate(bad, "m", [Generation(text="x")])


@pytest.mark.parametrize(
    "return_val",
    ["text", b"text", Generation(text="x"), {"text": "x"}, [Generation(text="x"), "y"], None],
)
async def test_return_val_that_is_not_generations_raises_and_stores_nothing(
    return_val: Any,
) -> None:
    async with MemkvLLMCache(LocalMemoryStore()) as cache:
        with pytest.raises(InvalidArgumentTypeError):
            cache.update("p", "m", return_val)
        with pytest.raises(InvalidArgumentTypeError):
            await cache.aupdate("p", "m", return_val)
        assert cache.lookup("p", "m") is None


def test_a_closed_cache_raises_store_closed() -> None:
    cache = MemkvLLMCache(LocalMemoryStore())
    cache.close()
    cache.close()
    with pytest.raises(StoreClosedError):
        cache.lookup("p", "m")
    with pytest.raises(StoreClosedError):
        cache.update("p", "m", [Generation(text="x")])


def test_a_redis_cache_works_from_many_threads(redis_url: str) -> None:
    store: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=unique_namespace())
    with MemkvLLMCache(store) as cache:
        failures: list[BaseException] = []

        def work(number: int) -> None:
            try:
                for step in range(20):
                    cache.update(f"p{number}", str(step), [Generation(text=f"{number}.{step}")])
                    assert cache.lookup(f"p{number}", str(step)) == [
                        Generation(text=f"{number}.{step}")
                    ]
            except BaseException as err:
                failures.append(err)

        threads = [threading.Thread(target=work, args=(number,)) for number in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        cache.clear()


# -- LangChain's global cache ---------------------------------------------------------------


@pytest.mark.usefixtures("restore_global_cache")
def test_a_chat_model_is_served_from_the_global_cache(memory_store: MemoryStore[Any]) -> None:
    model = FakeListChatModel(responses=["first", "second", "third"])
    with MemkvLLMCache(memory_store) as cache:
        set_llm_cache(cache)
        assert model.invoke("hello").content == "first"
        assert model.invoke("hello").content == "first"  # from the cache: the list stays
        assert model.invoke("another prompt").content == "second"
        assert model.invoke("hello").content == "first"
        cache.clear()
        assert model.invoke("hello").content == "third"
        cache.clear()


@pytest.mark.usefixtures("restore_global_cache")
async def test_a_chat_model_is_served_from_the_global_cache_async(
    memory_store: MemoryStore[Any],
) -> None:
    model = FakeListChatModel(responses=["first", "second"])
    async with MemkvLLMCache(memory_store) as cache:
        set_llm_cache(cache)
        assert (await model.ainvoke("hello")).content == "first"
        assert (await model.ainvoke("hello")).content == "first"
        assert model.invoke("hello").content == "first"  # sync and async share entries
        assert (await model.ainvoke("another prompt")).content == "second"
        await cache.aclear()


def test_a_models_own_cache_parameter_takes_the_cache(core: str) -> None:
    with MemkvLLMCache(local_store_type(core)()) as cache:
        model = FakeListChatModel(responses=["first", "second"], cache=cache)
        assert model.invoke("hello").content == "first"
        assert model.invoke("hello").content == "first"
        # Another configuration (a different llm_string) misses.
        other = FakeListChatModel(responses=["x", "y"], cache=cache)
        assert other.invoke("hello").content == "x"
