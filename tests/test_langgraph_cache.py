"""The LangGraph node cache: get/set/clear and per-entry TTL on every kind of store, key
encoding, values, errors and closing, then real ``StateGraph`` runs whose cached node
runs once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import importlib
import operator
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any, TypedDict
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.cache.base import BaseCache
from langgraph.cache.memory import InMemoryCache
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.func import entrypoint, task
from langgraph.graph import START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import CachePolicy
from pydantic import BaseModel

from memkv import LocalMemoryStore, MemoryStore, RedisMemoryStore
from memkv.errors import (
    CodecError,
    InvalidArgumentTypeError,
    InvalidKeyError,
    InvalidTTLError,
    StoreClosedError,
)
from memkv.integrations.langgraph import MemkvCache
from tests.helpers import ALL_KINDS, FakeClock, local_store_type, make_store
from tests.redis_servers import unique_namespace

KINDS = ALL_KINDS
WORKER_PREFIX = "memkv-langgraph-"
PREFIX = MemkvCache.KEY_PREFIX


def worker_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith(WORKER_PREFIX)}


@pytest.fixture(autouse=True)
def no_leaked_worker_threads() -> Iterator[None]:
    """Every test here must leave no cache worker thread behind."""
    before = worker_threads()
    yield
    left = worker_threads() - before
    if left:
        gc.collect()  # a cache dropped without close() stops its worker when collected
        for thread in left:
            thread.join(timeout=5)
    assert worker_threads() <= before


@pytest.fixture(params=KINDS)
def memory_store(request: pytest.FixtureRequest) -> MemoryStore[Any]:
    """An empty store of every kind; the cache under test closes it."""
    return make_store(request, request.param)


@pytest.fixture
def cache(memory_store: MemoryStore[Any]) -> Iterator[MemkvCache[Any]]:
    with MemkvCache[Any](memory_store) as made:
        yield made
        made.clear()  # leaves an external server clean


@pytest.fixture
async def async_cache(memory_store: MemoryStore[Any]) -> AsyncIterator[MemkvCache[Any]]:
    async with MemkvCache[Any](memory_store) as made:
        yield made
        await made.aclear()


def keys_of(store: LocalMemoryStore[Any]) -> list[str]:
    async def scan() -> list[str]:
        return sorted([key async for key in store.scan()])

    return asyncio.run(scan())


class Answer(BaseModel):
    """A structured output a node may write."""

    text: str
    at: datetime


@dataclasses.dataclass
class Note:
    """A dataclass a node may write."""

    topic: str
    tags: list[str]


#: What a graph caches (a node's writes: a list of (channel, value) tuples) and more.
CACHED: dict[tuple[tuple[str, ...], str], Any] = {
    (("writes", "node"), "a"): [("y", 42), ("messages", [{"role": "ai", "content": "hi"}])],
    (("writes", "chat"), "a"): [
        (
            "messages",
            [
                HumanMessage("hi", id="1"),
                AIMessage("", id="2", tool_calls=[{"name": "f", "args": {"q": 1}, "id": "t"}]),
                ToolMessage("42", tool_call_id="t", id="3"),
            ],
        ),
        ("answer", Answer(text="yes", at=datetime(2026, 1, 1, tzinfo=timezone.utc))),
        ("note", Note("memkv", ["cache"])),
        ("misc", {"id": UUID(int=7), "price": Decimal("1.50"), "delay": timedelta(3)}),
    ],
    (("writes", "node"), "b"): {"nested": [1, 2.5, None, "text"], "when": datetime(2026, 1, 1)},
    (("writes", "other"), "a"): b"\x00raw bytes\xff",
    (("writes", "other"), "b"): bytearray(b"\x01"),
    ((), "none"): None,
}


def read_back_by_langgraph(cached: dict[Any, Any]) -> dict[Any, Any]:
    """What LangGraph's own InMemoryCache returns for ``cached`` (the serde turns tuples
    into lists, as it does for every cache)."""
    reference: InMemoryCache[Any] = InMemoryCache()
    reference.set({key: (value, None) for key, value in cached.items()})
    return reference.get(list(cached))


VALUES = read_back_by_langgraph(CACHED)


# -- get, set, clear ------------------------------------------------------------------------


def test_the_cache_is_a_langgraph_cache() -> None:
    with MemkvCache[Any](LocalMemoryStore()) as made:
        assert isinstance(made, BaseCache)
        assert isinstance(made.serde, JsonPlusSerializer)
        assert repr(made).startswith("MemkvCache(LocalMemoryStore(")


def test_set_then_get_returns_the_values_found(cache: MemkvCache[Any]) -> None:
    cache.set({key: (value, None) for key, value in CACHED.items()})
    missing = (("writes", "node"), "missing")
    found = cache.get([*CACHED, missing])
    assert found == VALUES
    assert found[(("writes", "node"), "a")] == [
        ["y", 42],
        ["messages", [{"role": "ai", "content": "hi"}]],
    ]
    assert cache.get([]) == {}


async def test_aset_then_aget_returns_the_values_found(async_cache: MemkvCache[Any]) -> None:
    await async_cache.aset({key: (value, None) for key, value in CACHED.items()})
    assert await async_cache.aget([*VALUES, (("nowhere",), "a")]) == VALUES
    assert async_cache.get(list(VALUES)) == VALUES  # sync and async share entries


def test_a_namespace_may_be_given_as_a_list(cache: MemkvCache[Any]) -> None:
    cache.set({(("writes", "node"), "a"): (1, None)})
    assert cache.get([(("writes", "node"), "a")]) == {(("writes", "node"), "a"): 1}
    assert cache.get([(["writes", "node"], "a")]) == {(("writes", "node"), "a"): 1}  # type: ignore[list-item]


def test_set_overwrites(cache: MemkvCache[Any]) -> None:
    key = (("ns",), "k")
    cache.set({key: ("first", None)})
    cache.set({key: ("second", 60)})
    assert cache.get([key]) == {key: "second"}


TRICKY_KEYS = [
    (("a:b", "c"), "k"),
    (("a", "b:c"), "k"),
    (("a", "b"), ":c:k"),
    (("a", "b", "c"), "k"),
    (("a",), "b"),
    ((), "a"),
    (("",), "a"),
    (("", ""), "a"),
    (("1:a",), "b"),
    (("1",), ":a:b"),
    (("*", "?", "["), "]"),
    (("\ud800", "ü"), "\x00"),
]


def test_keys_keep_namespaces_and_keys_apart(cache: MemkvCache[Any]) -> None:
    cache.set({key: (index, None) for index, key in enumerate(TRICKY_KEYS)})
    assert cache.get(TRICKY_KEYS) == {key: index for index, key in enumerate(TRICKY_KEYS)}


def test_clear_of_namespaces_removes_exactly_those_namespaces(cache: MemkvCache[Any]) -> None:
    cache.set({key: (index, None) for index, key in enumerate(TRICKY_KEYS)})
    cache.clear([("a",), ("", ""), ("a:b", "c"), ("*", "?", "[")])  # no glob on Redis
    gone = {(("a",), "b"), (("", ""), "a"), (("a:b", "c"), "k"), (("*", "?", "["), "]")}
    assert cache.get(TRICKY_KEYS) == {
        key: index for index, key in enumerate(TRICKY_KEYS) if key not in gone
    }
    cache.clear([()])  # the empty namespace only, not every namespace
    assert ((), "a") not in cache.get(TRICKY_KEYS)
    assert (("a", "b"), ":c:k") in cache.get(TRICKY_KEYS)
    cache.clear([])
    assert len(cache.get(TRICKY_KEYS)) == len(TRICKY_KEYS) - 5


#: Labels and keys from an alphabet of separators, digits and glob characters, where a
#: careless encoding or an unescaped SCAN MATCH would merge two pairs.
TRICKY_TEXT = st.text(alphabet=":1*?[]\\{}a", max_size=4)
FULL_KEYS = st.tuples(st.lists(TRICKY_TEXT, max_size=3).map(tuple), TRICKY_TEXT)


@pytest.mark.parametrize("kind", KINDS)
def test_distinct_pairs_never_share_an_entry_and_clear_removes_one_namespace_exactly(
    kind: str, request: pytest.FixtureRequest
) -> None:
    @settings(max_examples=100 if kind.startswith("local-") else 25, deadline=None)
    @given(pairs=st.lists(FULL_KEYS, min_size=1, max_size=12, unique=True), data=st.data())
    def check(pairs: list[tuple[tuple[str, ...], str]], data: st.DataObject) -> None:
        with MemkvCache[Any](make_store(request, kind)) as made:
            made.set({pair: (index, None) for index, pair in enumerate(pairs)})
            assert made.get(pairs) == {pair: index for index, pair in enumerate(pairs)}
            cleared = data.draw(st.sampled_from([namespace for namespace, _ in pairs]))
            made.clear([cleared])
            assert made.get(pairs) == {
                pair: index for index, pair in enumerate(pairs) if pair[0] != cleared
            }
            made.clear()

    check()


async def test_aclear_of_namespaces_removes_exactly_those_namespaces(
    async_cache: MemkvCache[Any],
) -> None:
    await async_cache.aset({key: (index, None) for index, key in enumerate(TRICKY_KEYS)})
    await async_cache.aclear([("a", "b")])
    found = await async_cache.aget(TRICKY_KEYS)
    assert (("a", "b"), ":c:k") not in found
    assert (("a", "b", "c"), "k") in found
    assert len(found) == len(TRICKY_KEYS) - 1


async def test_clear_removes_only_the_caches_entries(memory_store: MemoryStore[Any]) -> None:
    async with MemkvCache[Any](memory_store) as made:
        bridge = made._bridge
        await bridge.run(memory_store.set_many({"other": 1, "langgraph-cache": 2}))
        made.set({key: (index, None) for index, key in enumerate(TRICKY_KEYS)})
        made.clear()
        assert made.get(TRICKY_KEYS) == {}
        await made.aset({key: (index, None) for index, key in enumerate(TRICKY_KEYS)})
        await made.aclear()
        assert await made.aget(TRICKY_KEYS) == {}
        entries = await bridge.run(memory_store.get_many(["other", "langgraph-cache"]))
        assert [entry.value for entry in entries if entry is not None] == [1, 2]
        await bridge.run(memory_store.delete_many(["other", "langgraph-cache"]))


def test_the_store_keys_are_the_documented_encoding(core: str) -> None:
    store = local_store_type(core)()
    with MemkvCache[Any](store) as made:
        made.set({(("a:b", "c"), "k"): (1, None), ((), "x"): (2, None)})
        assert keys_of(store) == [f"{PREFIX}0:x", f"{PREFIX}2:3:a:b:1:c:k"]


# -- TTL ----------------------------------------------------------------------------------


def test_each_entry_expires_after_its_own_ttl(core: str, clock: FakeClock) -> None:
    with MemkvCache[Any](local_store_type(core)(clock=clock)) as made:
        short, forever, long = (("ns",), "short"), (("ns",), "forever"), (("ns",), "long")
        made.set({short: ("s", 10), forever: ("f", None), long: ("l", 30)})
        clock.tick(9.9)
        assert made.get([short, forever, long]) == {short: "s", forever: "f", long: "l"}
        clock.tick(0.1)
        assert made.get([short, forever, long]) == {forever: "f", long: "l"}
        clock.tick(20)
        assert made.get([short, forever, long]) == {forever: "f"}


async def test_each_entry_expires_after_its_own_ttl_async(core: str, clock: FakeClock) -> None:
    async with MemkvCache[Any](local_store_type(core)(clock=clock)) as made:
        short, long = (("ns",), "short"), (("ns",), "long")
        await made.aset({short: ("s", 1), long: ("l", 2)})
        clock.tick(1)
        assert await made.aget([short, long]) == {long: "l"}
        clock.tick(1)
        assert await made.aget([short, long]) == {}


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_the_ttl_reaches_redis(kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url" if kind == "redis" else "cluster_url")
    namespace = unique_namespace()
    async with MemkvCache[Any](RedisMemoryStore(url, namespace=namespace)) as made:
        await made.aset({(("ns",), "a"): (1, 300), (("ns",), "b"): (2, None)})
        async with RedisMemoryStore[Any](url, namespace=namespace) as reader:
            with_ttl, without = await reader.get_many([f"{PREFIX}1:2:ns:a", f"{PREFIX}1:2:ns:b"])
        assert with_ttl is not None
        assert with_ttl.expires_at is not None
        remaining = with_ttl.expires_at - datetime.now(timezone.utc)
        assert timedelta(seconds=290) < remaining <= timedelta(seconds=300)
        assert without is not None
        assert without.expires_at is None
        await made.aclear()


@pytest.mark.parametrize("codec", ["msgpack", "json", "pickle"])
def test_values_round_trip_through_every_redis_codec(codec: str, redis_url: str) -> None:
    store: RedisMemoryStore[Any] = RedisMemoryStore(
        redis_url, namespace=unique_namespace(), codec=codec
    )
    with MemkvCache[Any](store) as made:
        made.set({key: (value, 60) for key, value in CACHED.items()})
        found = made.get(list(VALUES))
        assert found == VALUES
        messages, answer, note, misc = (value for _, value in found[(("writes", "chat"), "a")])
        assert [type(message) for message in messages] == [HumanMessage, AIMessage, ToolMessage]
        assert messages[1].tool_calls[0]["args"] == {"q": 1}
        assert answer == Answer(text="yes", at=datetime(2026, 1, 1, tzinfo=timezone.utc))
        assert note == Note("memkv", ["cache"])
        assert misc == {"id": UUID(int=7), "price": Decimal("1.50"), "delay": timedelta(3)}
        made.clear()


# -- bad input, foreign entries, closing -----------------------------------------------------


@pytest.mark.parametrize(
    "bad_key",
    [
        ("ns", "k"),  # a str namespace
        ((b"ns",), "k"),
        (("ns", 1), "k"),
        (("ns",), 1),
        (("ns",), None),
        (("ns",), "k", "extra"),
        "ns:k",
        None,
    ],
)
async def test_a_bad_key_raises_invalid_key_and_writes_nothing(bad_key: Any) -> None:
    store: LocalMemoryStore[Any] = LocalMemoryStore()
    async with MemkvCache[Any](store) as made:
        good = (("ns",), "good")
        with pytest.raises(InvalidKeyError):
            made.set({good: (1, None), bad_key: (2, None)})
        with pytest.raises(InvalidKeyError):
            await made.aset({good: (1, None), bad_key: (2, None)})
        with pytest.raises(InvalidKeyError):
            made.get([good, bad_key])
        with pytest.raises(InvalidKeyError):
            await made.aget([good, bad_key])
        assert len(store) == 0


@pytest.mark.parametrize("bad_namespaces", ["ns", ("ns",), [("ns",), "other"], [None], 5])
async def test_bad_namespaces_to_clear_raise_invalid_key_and_remove_nothing(
    bad_namespaces: Any,
) -> None:
    store: LocalMemoryStore[Any] = LocalMemoryStore()
    async with MemkvCache[Any](store) as made:
        made.set({(("ns",), "k"): (1, None)})
        with pytest.raises(InvalidKeyError):
            made.clear(bad_namespaces)
        with pytest.raises(InvalidKeyError):
            await made.aclear(bad_namespaces)
        assert made.get([(("ns",), "k")]) == {(("ns",), "k"): 1}


@pytest.mark.parametrize("ttl", [0, -1, -0.5])
def test_a_ttl_of_zero_or_less_removes_the_entry_as_in_memory_cache_does(
    memory_store: MemoryStore[Any], ttl: Any
) -> None:
    reference: InMemoryCache[Any] = InMemoryCache()
    with MemkvCache[Any](memory_store) as made:
        kept, expired = (("ns",), "kept"), (("ns",), "expired")
        for cache in (reference, made):
            cache.set({kept: (1, None), expired: (2, None)})
            cache.set({kept: (3, 60), expired: (4, ttl)})  # expired at once: a miss
        assert made.get([kept, expired]) == reference.get([kept, expired]) == {kept: 3}
        made.clear()


@pytest.mark.parametrize("ttl", [0, -1])
def test_a_node_with_a_ttl_of_zero_or_less_runs_every_time(ttl: int) -> None:
    with MemkvCache[Any](LocalMemoryStore()) as made:
        node = Counter()
        graph = build_graph(made, node, ttl=ttl)  # LangGraph accepts it: nothing is cached
        assert graph.invoke({"x": 2, "log": []}) == graph.invoke({"x": 2, "log": []})
        assert node.runs == [2, 2]


@pytest.mark.parametrize("ttl", ["60", True, float("nan"), float("inf"), 1e12])
def test_a_bad_ttl_raises_invalid_ttl_and_writes_nothing(ttl: Any) -> None:
    store: LocalMemoryStore[Any] = LocalMemoryStore()
    with MemkvCache[Any](store) as made:
        with pytest.raises(InvalidTTLError):
            made.set({(("ns",), "a"): (1, 60), (("ns",), "b"): (2, ttl)})
        assert len(store) == 0


@pytest.mark.parametrize("pairs", [[((("ns",), "k"), (1, None))], "pairs", None])
def test_pairs_that_are_not_a_mapping_raise_invalid_argument_type(pairs: Any) -> None:
    with MemkvCache[Any](LocalMemoryStore()) as made, pytest.raises(InvalidArgumentTypeError):
        made.set(pairs)


@pytest.mark.parametrize("value_and_ttl", ["value", ("value",), ("value", None, 1), ["v", None]])
def test_a_value_without_its_ttl_raises_invalid_argument_type(value_and_ttl: Any) -> None:
    with MemkvCache[Any](LocalMemoryStore()) as made, pytest.raises(InvalidArgumentTypeError):
        made.set({(("ns",), "k"): value_and_ttl})


def test_a_value_the_serde_cannot_serialise_raises_codec_error_without_the_value() -> None:
    class Secret:
        def __repr__(self) -> str:
            return "Secret('hunter2')"

    store: LocalMemoryStore[Any] = LocalMemoryStore()
    with MemkvCache[Any](store) as made:
        with pytest.raises(CodecError) as raised:
            made.set({(("ns",), "a"): (1, None), (("ns",), "b"): (Secret(), None)})
        assert "hunter2" not in str(raised.value)
        assert raised.value.__cause__ is None
        assert raised.value.__context__ is None
        assert len(store) == 0


@pytest.mark.parametrize(
    "foreign", ["a private value", b"a private value", b"msgpack:\xc1private", 42, None]
)
def test_an_entry_written_by_something_else_raises_codec_error_without_its_content(
    foreign: Any,
) -> None:
    store: LocalMemoryStore[Any] = LocalMemoryStore()
    with MemkvCache[Any](store) as made:
        made.set({(("ns",), "k"): (1, None)})
        (key,) = keys_of(store)
        asyncio.run(store.set(key, foreign))
        with pytest.raises(CodecError, match="clear") as raised:
            made.get([(("ns",), "k")])
        assert "private" not in str(raised.value)
        assert raised.value.__cause__ is None
        made.clear()
        assert made.get([(("ns",), "k")]) == {}


def test_the_serde_given_is_used() -> None:
    class CountingSerde(JsonPlusSerializer):
        def __init__(self) -> None:
            super().__init__()
            self.dumped = self.loaded = 0

        def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
            self.dumped += 1
            return super().dumps_typed(obj)

        def loads_typed(self, data: tuple[str, bytes]) -> Any:
            self.loaded += 1
            return super().loads_typed(data)

    serde = CountingSerde()
    with MemkvCache[Any](LocalMemoryStore(), serde=serde) as made:
        made.set({(("ns",), "k"): ({"a": 1}, None)})
        assert made.get([(("ns",), "k")]) == {(("ns",), "k"): {"a": 1}}
        assert (serde.dumped, serde.loaded) == (1, 1)


@pytest.mark.parametrize("serde", [object(), "json", JsonPlusSerializer])
def test_a_serde_without_the_typed_methods_is_refused(serde: Any) -> None:
    with pytest.raises(InvalidArgumentTypeError, match="serde"):
        MemkvCache(LocalMemoryStore(), serde=serde)


def test_a_store_that_is_not_a_memkv_store_is_refused() -> None:
    with pytest.raises(InvalidArgumentTypeError, match="MemoryStore"):
        MemkvCache("memory://")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["local-python", "redis"])
async def test_a_closed_cache_raises_store_closed(
    kind: str, request: pytest.FixtureRequest
) -> None:
    made = MemkvCache[Any](make_store(request, kind))
    made.set({(("ns",), "k"): (1, None)})
    made.clear()
    await made.aclose()
    made.close()
    calls: list[Callable[[], Any]] = [
        lambda: made.get([(("ns",), "k")]),
        lambda: made.set({(("ns",), "k"): (1, None)}),
        lambda: made.clear(),
    ]
    for call in calls:
        with pytest.raises(StoreClosedError):
            call()
    with pytest.raises(StoreClosedError):
        await made.aget([(("ns",), "k")])


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_a_redis_cache_works_from_many_threads(kind: str, request: pytest.FixtureRequest) -> None:
    store = make_store(request, kind)
    failures: list[BaseException] = []
    with MemkvCache[Any](store) as made:

        def work(number: int) -> None:
            try:
                for step in range(20):
                    key = ((str(number),), str(step))
                    made.set({key: (step, 60)})
                    assert made.get([key]) == {key: step}
            except BaseException as err:
                failures.append(err)

        threads = [threading.Thread(target=work, args=(number,)) for number in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        made.clear()
    assert failures == []


def test_import_without_langgraph_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "langgraph.cache.base", None)
    monkeypatch.delitem(sys.modules, "memkv.integrations.langgraph")
    monkeypatch.delitem(sys.modules, "memkv.integrations.langgraph.cache")
    with pytest.raises(ImportError, match=r'pip install "memkv\[langgraph\]"'):
        importlib.import_module("memkv.integrations.langgraph")


def test_import_memkv_imports_neither_langgraph_nor_langchain() -> None:
    script = textwrap.dedent(
        """
        import sys
        import memkv, memkv.integrations
        frameworks = {"langgraph", "langchain_core", "langchain"}
        print(sorted(name for name in sys.modules if name.partition(".")[0] in frameworks))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- a real graph -----------------------------------------------------------------------------


class State(TypedDict):
    x: int
    y: int
    log: Annotated[list[str], operator.add]


class Counter:
    """The node under test: counts its runs."""

    def __init__(self) -> None:
        self.runs: list[int] = []

    def __call__(self, state: State) -> dict[str, Any]:
        self.runs.append(state["x"])
        return {"y": state["x"] * 2, "log": [f"doubled {state['x']}"]}


def build_graph(
    cache: MemkvCache[Any], node: Counter, ttl: int | None = 60
) -> CompiledStateGraph[State, None, State, State]:
    builder = StateGraph(State)
    builder.add_node("double", node, cache_policy=CachePolicy(ttl=ttl))
    builder.add_edge(START, "double")
    return builder.compile(cache=cache)


def expected(x: int) -> dict[str, Any]:
    return {"x": x, "y": 2 * x, "log": [f"doubled {x}"]}


def test_a_graph_runs_a_cached_node_once(cache: MemkvCache[Any]) -> None:
    node = Counter()
    graph = build_graph(cache, node)
    assert graph.invoke({"x": 21, "log": []}) == expected(21)
    assert graph.invoke({"x": 21, "log": []}) == expected(21)
    assert node.runs == [21]
    assert graph.invoke({"x": 5, "log": []}) == expected(5)  # another input misses
    assert node.runs == [21, 5]
    assert build_graph(cache, node).invoke({"x": 5, "log": []}) == expected(5)  # a new graph
    assert node.runs == [21, 5]


async def test_a_graph_runs_a_cached_node_once_async(async_cache: MemkvCache[Any]) -> None:
    node = Counter()
    graph = build_graph(async_cache, node)
    assert await graph.ainvoke({"x": 21, "log": []}) == expected(21)
    assert await graph.ainvoke({"x": 21, "log": []}) == expected(21)
    assert node.runs == [21]
    assert await graph.ainvoke({"x": 7, "log": []}) == expected(7)
    assert node.runs == [21, 7]
    assert graph.invoke({"x": 7, "log": []}) == expected(7)  # sync runs share the entries
    assert node.runs == [21, 7]


async def test_concurrent_runs_of_a_graph_are_answered_and_then_served_from_the_cache(
    async_cache: MemkvCache[Any],
) -> None:
    node = Counter()
    graph = build_graph(async_cache, node)
    inputs: list[Any] = [{"x": x % 3, "log": []} for x in range(12)]
    assert await graph.abatch(inputs) == [expected(x % 3) for x in range(12)]
    assert sorted(set(node.runs)) == [0, 1, 2]
    runs = len(node.runs)

    async def stream(one: Any) -> list[Any]:
        return [chunk async for chunk in graph.astream(one)]

    streams = await asyncio.gather(*(stream(one) for one in inputs[:3]))
    results = await asyncio.gather(*(graph.ainvoke(one) for one in inputs))
    assert results == [expected(x % 3) for x in range(12)]
    assert graph.batch(inputs) == results  # sync runs in LangGraph's threads
    assert len(node.runs) == runs
    assert all(stream[-1]["__metadata__"] == {"cached": True} for stream in streams)


async def test_clearing_a_graphs_cache_runs_the_node_again(cache: MemkvCache[Any]) -> None:
    node = Counter()
    graph = build_graph(cache, node, ttl=None)
    graph.invoke({"x": 1, "log": []})
    graph.clear_cache()
    graph.invoke({"x": 1, "log": []})
    await graph.aclear_cache(["double"])
    await graph.ainvoke({"x": 1, "log": []})
    assert node.runs == [1, 1, 1]


def test_a_cached_node_runs_again_after_its_ttl(core: str, clock: FakeClock) -> None:
    with MemkvCache[Any](local_store_type(core)(clock=clock)) as made:
        node = Counter()
        graph = build_graph(made, node, ttl=30)
        graph.invoke({"x": 3, "log": []})
        clock.tick(29)
        graph.invoke({"x": 3, "log": []})
        assert node.runs == [3]
        clock.tick(1)
        assert graph.invoke({"x": 3, "log": []}) == expected(3)
        assert node.runs == [3, 3]


def test_parallel_cached_nodes_each_run_once(cache: MemkvCache[Any]) -> None:
    class Fan(TypedDict):
        x: int
        results: Annotated[list[str], operator.add]

    runs: list[str] = []
    lock = threading.Lock()

    def branch(name: str) -> Callable[[Fan], dict[str, Any]]:
        def run(state: Fan) -> dict[str, Any]:
            with lock:
                runs.append(name)
            return {"results": [f"{name}:{state['x']}"]}

        return run

    builder = StateGraph(Fan)
    for name in ("a", "b", "c", "d"):
        builder.add_node(name, branch(name), cache_policy=CachePolicy(ttl=60))
        builder.add_edge(START, name)
    graph = builder.compile(cache=cache)
    first = graph.invoke({"x": 1, "results": []})
    assert sorted(first["results"]) == ["a:1", "b:1", "c:1", "d:1"]
    assert graph.invoke({"x": 1, "results": []}) == first
    assert sorted(runs) == ["a", "b", "c", "d"]


def test_a_cached_task_of_the_functional_api_runs_once(cache: MemkvCache[Any]) -> None:
    runs: list[int] = []

    @task(cache_policy=CachePolicy(ttl=60))
    def square(x: int) -> int:
        runs.append(x)
        return x * x

    @entrypoint(cache=cache)
    def workflow(numbers: list[int]) -> list[int]:
        return [future.result() for future in [square(n) for n in numbers]]

    assert workflow.invoke([2, 3]) == [4, 9]
    assert workflow.invoke([3, 4]) == [9, 16]
    assert sorted(runs) == [2, 3, 4]
