"""The LangGraph store beyond the differential run: TTL through the memkv store's own
expiry and ``touch``, semantic search with a deterministic embedding, the key format,
timestamps, codec errors, namespace errors, closing, and the optional import.

``tests/test_langgraph_differential.py`` compares every answer with ``InMemoryStore``.
"""

from __future__ import annotations

import asyncio
import math
import pickle
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.outputs import Generation
from langgraph.store.base import (
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore

from memkv import LocalMemoryStore, MemoryStore, RedisMemoryStore
from memkv.codecs import encode_value, resolve_codec
from memkv.errors import (
    CodecError,
    InvalidArgumentError,
    InvalidTTLError,
    MemKVError,
    StoreClosedError,
)
from memkv.integrations.langgraph import KEY_PREFIX, MemkvStore
from tests.helpers import FakeClock, StoreHarness, local_store_type
from tests.redis_servers import unique_namespace

WORKER_PREFIX = "memkv-langgraph-"


async def raw_view(harness: StoreHarness) -> MemoryStore[Any]:
    """The harness's store for the test's own loop: itself when local, else a second
    client of the same Redis namespace (the adapter runs the first on its own loop)."""
    if harness.kind.startswith("local-"):
        return harness.store
    assert isinstance(harness.store, RedisMemoryStore)
    return await harness.make(namespace=harness.store.namespace)


# -- TTL: the memkv store's own expiry -------------------------------------------------------


async def test_default_ttl_and_per_put_ttl_expire_through_the_memkv_store(
    harness: StoreHarness,
) -> None:
    # Minutes: 0.005 min = 0.3 s, so that Redis (real time) stays quick.
    async with MemkvStore(harness.store, ttl={"default_ttl": 0.005}) as store:
        await store.aput(("t",), "default", {"v": 1})
        await store.aput(("t",), "forever", {"v": 2}, ttl=None)
        await store.aput(("t",), "longer", {"v": 3}, ttl=0.05)
        entry = await (await raw_view(harness)).get(KEY_PREFIX + "t//longer")
        assert entry is not None
        assert entry.expires_at is not None
        left = (entry.expires_at - datetime.now(timezone.utc)).total_seconds()
        assert 2.0 < left <= 3.0  # 0.05 minutes, set as the memkv entry's own TTL
        await harness.advance(0.5)
        assert await store.aget(("t",), "default") is None
        assert [item.key for item in await store.asearch(("t",))] == ["forever", "longer"]
        assert await store.alist_namespaces() == [("t",)]


#: The TTLs below, for Redis's real time: a check that an item is still there has
#: REAL_TIME_MARGIN seconds of slack (a stalled test run must not fail it); one that it is
#: gone only needs time to have passed, which a stall never undoes.
ONE_SECOND = 1 / 60  # minutes
REAL_TIME_MARGIN = 0.45


async def test_a_read_refreshes_the_ttl_through_touch(harness: StoreHarness) -> None:
    async with MemkvStore(harness.store, ttl={"default_ttl": ONE_SECOND}) as store:
        await store.aput(("t",), "read", {"v": 1})
        await store.aput(("t",), "searched", {"v": 2})
        await store.aput(("t",), "unread", {"v": 3})
        await store.aput(("t",), "peeked", {"v": 4})
        await harness.advance(1 - REAL_TIME_MARGIN)
        assert await store.aget(("t",), "read") is not None
        assert len(await store.asearch(("t",), filter={"v": 2})) == 1
        assert await store.aget(("t",), "peeked", refresh_ttl=False) is not None
        await harness.advance(1 - REAL_TIME_MARGIN)  # past the writes' TTL, not the reads'
        assert await store.aget(("t",), "unread") is None
        assert await store.aget(("t",), "peeked") is None
        assert await store.aget(("t",), "read", refresh_ttl=False) is not None
        assert await store.aget(("t",), "searched", refresh_ttl=False) is not None
        await harness.advance(REAL_TIME_MARGIN + 0.05)  # past the reads' TTL
        assert await store.asearch(("t",)) == []


async def test_a_batch_refreshes_the_ttl_of_what_its_reads_return(
    harness: StoreHarness,
) -> None:
    async with MemkvStore(harness.store, ttl={"default_ttl": ONE_SECOND}) as store:
        for key in ("got", "found", "peeked", "unread"):
            await store.aput(("t", key), key, {"key": key})
        await harness.advance(1 - REAL_TIME_MARGIN)
        results = await store.abatch(
            [
                GetOp(("t", "got"), "got"),
                SearchOp(("t",), {"key": "found"}, limit=10),
                GetOp(("t", "peeked"), "peeked", refresh_ttl=False),
                SearchOp(("t",), {"key": "peeked"}, refresh_ttl=False),
                PutOp(("t", "new"), "new", {"key": "new"}),
            ]
        )
        got, found, peeked, searched, written = results
        assert isinstance(got, Item)
        assert isinstance(peeked, Item)
        assert [got.key, peeked.key] == ["got", "peeked"]
        assert isinstance(found, list)
        assert isinstance(searched, list)
        assert [item.key for item in [*found, *searched]] == ["found", "peeked"]
        assert written is None
        await harness.advance(1 - REAL_TIME_MARGIN)  # past the first writes' TTL only
        left = {i.key for i in await store.asearch(("t",), limit=10, refresh_ttl=False)}
        assert left == {"got", "found", "new"}


async def test_an_asked_refresh_gives_back_the_items_own_ttl_not_the_default(
    harness: StoreHarness,
) -> None:
    # 1 s, never refreshed by a plain read.
    config: Any = {"default_ttl": ONE_SECOND, "refresh_on_read": False}
    async with MemkvStore(harness.store, ttl=config) as store:
        await store.aput(("t",), "default", {"v": 1})
        await store.aput(("t",), "own", {"v": 2}, ttl=1.5 * ONE_SECOND)
        await harness.advance(0.5)
        assert len(await store.asearch(("t",))) == 2  # refresh_on_read=False: no refresh
        found = await store.asearch(("t",), filter={"v": 2}, refresh_ttl=True)
        assert [item.key for item in found] == ["own"]  # 1.5 s again: until 2 s
        await harness.advance(0.55)  # 1.05 s: past the default TTL
        assert [item.key for item in await store.asearch(("t",))] == ["own"]
        await harness.advance(0.5)  # 1.55 s: past its first expiry, not its refreshed one
        assert await store.aget(("t",), "own") is not None
        await harness.advance(0.5)  # 2.05 s
        assert await store.aget(("t",), "own") is None


def test_refresh_on_read_false_in_the_config_leaves_the_ttl_alone() -> None:
    clock = FakeClock()
    config = {"default_ttl": 1.0, "refresh_on_read": False}
    with MemkvStore(local_store_type("python")(clock=clock), ttl=config) as store:  # type: ignore[arg-type]
        store.put(("t",), "k", {"v": 1})
        clock.tick(50)
        assert store.get(("t",), "k") is not None
        clock.tick(11)
        assert store.get(("t",), "k") is None
        store.put(("t",), "k", {"v": 1})
        clock.tick(50)
        assert store.get(("t",), "k", refresh_ttl=True) is not None  # asked: refreshed
        clock.tick(50)
        assert store.get(("t",), "k") is not None


def test_a_sync_read_refreshes_with_the_local_clock(core: str) -> None:
    clock = FakeClock()
    with MemkvStore(local_store_type(core)(clock=clock)) as store:
        store.put(("t",), "k", {"v": 1}, ttl=1)
        for _ in range(5):
            clock.tick(50)
            assert store.get(("t",), "k") is not None
            assert store.search(("t",))[0].key == "k"
        clock.tick(61)
        assert store.get(("t",), "k") is None


def test_ttl_config_and_ttls_are_checked() -> None:
    local: LocalMemoryStore[Any] = LocalMemoryStore()
    with pytest.raises(InvalidTTLError):
        MemkvStore(local, ttl={"default_ttl": 0})
    with pytest.raises(InvalidArgumentError):
        MemkvStore(local, ttl={"default_tll": 5})  # type: ignore[typeddict-unknown-key]
    with MemkvStore(local, ttl={"sweep_interval_minutes": 5}) as store:
        assert store.supports_ttl
        with pytest.raises(InvalidTTLError, match=r"ttl must be positive minutes.*got -1;"):
            store.put(("t",), "k", {"v": 1}, ttl=-1)
        with pytest.raises(InvalidTTLError, match="got nan;"):
            store.put(("t",), "k", {"v": 1}, ttl=math.nan)
        with pytest.raises(InvalidTTLError, match=r"at most 52596000 .*got more;"):
            store.put(("t",), "k", {"v": 1}, ttl=10**5000)
        assert store.get(("t",), "k") is None


# -- semantic search ---------------------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


DOCS = {
    "pizza": {"text": "I love pizza with olives", "kind": "food"},
    "sushi": {"text": "sushi on fridays", "kind": "food"},
    "hike": {"text": "long hikes in the alps", "kind": "sport"},
    "chess": {"text": "chess openings", "kind": "game", "notes": ["sicilian", "french"]},
    "plain": {"kind": "food"},  # nothing to embed: unscored, after the scored items
}


async def test_semantic_search_ranks_by_cosine_like_in_memory_store(
    harness: StoreHarness,
) -> None:
    embeddings = DeterministicFakeEmbedding(size=32)
    index: IndexConfig = {"dims": 32, "embed": embeddings, "fields": ["text", "notes[*]"]}
    reference = InMemoryStore(index=index)
    async with MemkvStore(harness.store, index=index) as store:
        for key, value in DOCS.items():
            await store.aput(("docs", "u1"), key, value)
            await reference.aput(("docs", "u1"), key, value)
        await store.aput(("docs", "u2"), "other", {"text": "pizza"}, index=False)
        for query in ("pizza", "chess openings", "sicilian"):
            found = await store.asearch(("docs", "u1"), query=query, limit=10)
            wanted = await reference.asearch(("docs", "u1"), query=query, limit=10)
            assert [i.key for i in found] == [i.key for i in wanted]
            for mine, theirs in zip(found, wanted, strict=True):
                assert (mine.score is None) == (theirs.score is None)
                if mine.score is not None:
                    assert mine.score == pytest.approx(theirs.score, abs=1e-9)
            q = embeddings.embed_query(query)
            best = {
                key: max(
                    cosine(q, embeddings.embed_query(text))
                    for text in [value.get("text"), *value.get("notes", [])]
                    if text
                )
                for key, value in DOCS.items()
                if "text" in value
            }
            scored = [item for item in found if item.score is not None]
            assert [i.key for i in scored] == sorted(best, key=best.__getitem__, reverse=True)
            for item in scored:
                assert item.score == pytest.approx(best[item.key], abs=1e-9)
            assert found[-1].key == "plain"
            assert found[-1].score is None
        # Filter, offset and limit apply to the ranking; index=False stores no vectors.
        food = await store.asearch(
            ("docs",), query="pizza", filter={"kind": "food"}, offset=1, limit=1
        )
        q = embeddings.embed_query("pizza")
        ranked = sorted(
            ["pizza", "sushi"],
            key=lambda key: cosine(q, embeddings.embed_query(DOCS[key]["text"])),  # type: ignore[arg-type]
            reverse=True,
        )
        assert [i.key for i in food] == ranked[1:]
        other = await store.asearch(("docs", "u2"), query="pizza")
        assert [(i.key, i.score) for i in other] == [("other", None)]


def test_an_overwrite_replaces_the_vectors() -> None:
    index: IndexConfig = {"dims": 16, "embed": DeterministicFakeEmbedding(size=16)}
    with MemkvStore(LocalMemoryStore(), index=index) as store:
        store.put(("d",), "a", {"text": "apples"})
        store.put(("d",), "b", {"text": "pears"})
        store.put(("d",), "a", {"text": "pears"})
        scores = {i.key: i.score for i in store.search(("d",), query="pears")}
        assert scores["a"] == pytest.approx(scores["b"])
        store.put(("d",), "a", {"text": "pears"}, index=False)
        assert [(i.key, i.score) for i in store.search(("d",), query="pears")][1] == ("a", None)


def test_an_embedding_function_that_miscounts_writes_nothing() -> None:
    def embed(texts: list[str]) -> list[list[float]]:
        return [[1.0, 0.0]]  # one vector, whatever it is asked

    with MemkvStore(LocalMemoryStore(), index={"dims": 2, "embed": embed}) as store:
        with pytest.raises(InvalidArgumentError):
            store.batch([PutOp(("d",), "a", {"t": "x"}), PutOp(("d",), "b", {"t": "y"})])
        assert store.search(("d",)) == []


# -- keys, documents and timestamps -----------------------------------------------------------


NASTY = [
    ("a",),
    ("ab",),
    ("a", "b"),
    ("a:b",),
    ("a/b",),
    ("a%2Fb",),
    ("%",),
    ("*",),
    ("ü", "日本"),
]


async def test_every_namespace_gets_its_own_keys_and_prefix(harness: StoreHarness) -> None:
    async with MemkvStore(harness.store) as store:
        for namespace in NASTY:
            for key in ("k", "k/1", "", "//"):
                await store.aput(namespace, key, {"ns": list(namespace), "key": key})
        raw = await raw_view(harness)
        await raw.set("unrelated:key", "other data")
        for namespace in NASTY:
            found = await store.asearch(namespace, limit=100)
            assert {tuple(i.value["ns"]) for i in found} == {
                ns for ns in NASTY if ns[: len(namespace)] == namespace
            }
            for item in found:
                assert item.namespace == tuple(item.value["ns"])
                assert item.key == item.value["key"]
        assert await store.alist_namespaces(limit=100) == sorted(NASTY)
        assert (await raw.get("unrelated:key")).value == "other data"  # type: ignore[union-attr]
        assert await raw.get(KEY_PREFIX + "a%2Fb//k/1") is not None


def test_each_adapter_names_its_key_prefix_on_its_class() -> None:
    from memkv.integrations.langchain import MemkvLLMCache
    from memkv.integrations.langgraph import MemkvCache

    memory: LocalMemoryStore[Any] = LocalMemoryStore()
    MemkvStore(memory).put(("a",), "k", {"v": 1})
    MemkvCache[int](memory).set({(("a",), "k"): (1, None)})
    MemkvLLMCache(memory).update("prompt", "model", [Generation(text="answer")])

    async def stored_keys() -> list[str]:
        return [key async for key in memory.scan()]

    keys = asyncio.run(stored_keys())
    prefixes = [MemkvStore.KEY_PREFIX, MemkvCache.KEY_PREFIX, MemkvLLMCache.KEY_PREFIX]
    assert MemkvStore.KEY_PREFIX == KEY_PREFIX
    assert sorted(prefix for prefix in prefixes for key in keys if key.startswith(prefix)) == (
        sorted(prefixes)
    )


async def test_the_document_round_trips_through_the_json_codec(redis_url: str) -> None:
    memory: RedisMemoryStore[Any] = RedisMemoryStore(
        redis_url, namespace=unique_namespace(), codec="json"
    )
    index: IndexConfig = {
        "dims": 8,
        "embed": DeterministicFakeEmbedding(size=8),
        "fields": ["text"],
    }
    async with MemkvStore(memory, index=index) as store:
        value = {"text": "hi", "n": 1.5, "list": [1, "x", None], "nested": {"ok": True}}
        await store.aput(("docs",), "k", value, ttl=10)
        item = await store.aget(("docs",), "k")
        assert item is not None
        assert item.value == value
        score = (await store.asearch(("docs",), query="hi"))[0].score
        assert type(score) is float
        assert score == pytest.approx(1.0)


async def test_an_overwrite_keeps_created_at_and_moves_updated_at(
    harness: StoreHarness,
) -> None:
    async with MemkvStore(harness.store) as store:
        await store.aput(("t",), "k", {"v": 1})
        first = await store.aget(("t",), "k")
        await harness.advance(0.01)
        await store.aput(("t",), "k", {"v": 2})
        second = await store.aget(("t",), "k")
        assert first is not None
        assert second is not None
        assert second.created_at == first.created_at
        assert second.updated_at >= first.updated_at
        assert second.updated_at.tzinfo is not None
        assert second.value == {"v": 2}


async def test_a_value_the_codec_refuses_writes_nothing_of_the_batch(redis_url: str) -> None:
    memory: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=unique_namespace())
    async with MemkvStore(memory) as store:
        await store.aput(("t",), "kept", {"v": 1})
        ops = [
            PutOp(("t",), "new", {"v": 2}, ttl=5),
            PutOp(("t",), "kept", None),
            PutOp(("t",), "bad", {"v": 2**70}, ttl=10),  # msgpack ints end at 2**64
        ]
        with pytest.raises(CodecError):
            await store.abatch(ops)
        assert [i.key for i in await store.asearch(("t",))] == ["kept"]


# -- errors and lifecycle ---------------------------------------------------------------------


def test_langgraph_namespace_rules_raise_its_own_error() -> None:
    with MemkvStore(LocalMemoryStore()) as store:
        for bad in [("a.b",), ("",), ("a\x00",), ("a", 1)]:
            with pytest.raises(InvalidNamespaceError):
                store.put(bad, "k", {"v": 1})  # type: ignore[arg-type]
            with pytest.raises(InvalidNamespaceError):
                store.batch([GetOp(bad, "k")])  # type: ignore[arg-type]
            with pytest.raises(InvalidNamespaceError):
                store.search(bad)  # type: ignore[arg-type]
        for bad in [(), ("langgraph", "x")]:
            with pytest.raises(InvalidNamespaceError):
                store.put(bad, "k", {"v": 1})
        with pytest.raises(InvalidNamespaceError):
            store.batch([PutOp((), "k", {"v": 1})])
        assert store.list_namespaces() == []


def test_memkv_refusals_are_typed_and_checked_before_anything_runs() -> None:
    with MemkvStore(LocalMemoryStore()) as store:
        ops = [PutOp(("t",), "k", {"v": 1}), SearchOp(("t",), {"n": {"$near": 1}})]
        with pytest.raises(InvalidArgumentError) as caught:
            store.batch(ops)
        assert isinstance(caught.value, MemKVError)
        assert isinstance(caught.value, ValueError)
        assert store.get(("t",), "k") is None
        with pytest.raises(InvalidArgumentError):
            store.search(("t",), filter={"n": {"$gt": "many"}})
        with pytest.raises(InvalidArgumentError):
            store.search(("t",), limit=-1)
        with pytest.raises(InvalidArgumentError):
            store.list_namespaces(max_depth=0)
        with pytest.raises(TypeError) as typed:
            store.get("t", "k")  # type: ignore[arg-type]
        assert isinstance(typed.value, MemKVError)


def test_an_item_missing_a_ranged_field_does_not_match() -> None:
    """Where InMemoryStore raises (float(None)), the item simply does not match."""
    with MemkvStore(LocalMemoryStore()) as store:
        store.put(("t",), "n", {"n": 3})
        store.put(("t",), "none", {"s": "x"})
        store.put(("t",), "text", {"n": "three"})
        assert [i.key for i in store.search(("t",), filter={"n": {"$gt": 1}})] == ["n"]
        assert [i.key for i in store.search(("t",), filter={"n": {"$ne": 3}})] == [
            "none",
            "text",
        ]


async def test_closing_stops_the_worker_and_refuses_calls(redis_url: str) -> None:
    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX)]

    before = set(workers())
    memory: MemoryStore[Any] = RedisMemoryStore(redis_url, namespace=unique_namespace())
    store = MemkvStore(memory)
    store.put(("t",), "k", {"v": 1})
    assert (await store.aget(("t",), "k")) is not None
    assert set(workers()) - before
    await store.aclose()
    assert set(workers()) == before
    with pytest.raises(StoreClosedError):
        store.get(("t",), "k")
    with pytest.raises(StoreClosedError):
        await store.aget(("t",), "k")
    local = MemkvStore(LocalMemoryStore())
    local.close()
    with pytest.raises(StoreClosedError):
        await local.aget(("t",), "k")


def test_import_memkv_never_imports_langgraph_and_the_extra_is_named() -> None:
    script = textwrap.dedent(
        """
        import sys
        import memkv
        import memkv.integrations
        assert "langgraph" not in sys.modules, "import memkv imported langgraph"
        sys.modules["langgraph"] = None  # as if the extra were not installed
        try:
            import memkv.integrations.langgraph
        except ImportError as err:
            assert 'pip install "memkv[langgraph]"' in str(err), err
        else:
            raise AssertionError("expected ImportError")
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_adapters_work_on_the_local_store_without_the_redis_extra() -> None:
    # pip install "memkv[langgraph]" (or [langchain]) brings no msgspec: the adapters
    # must import and run on a LocalMemoryStore all the same.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["msgspec"] = None  # as if the redis extra were not installed
        sys.modules["redis"] = None
        from langchain_core.outputs import Generation
        from langgraph.store.base import PutOp
        from memkv import LocalMemoryStore
        from memkv.integrations.langchain import MemkvLLMCache, MemkvStore as DocStore
        from memkv.integrations.langgraph import MemkvCache, MemkvStore

        with MemkvStore(LocalMemoryStore()) as store:
            store.batch([PutOp(("a",), "k", {"v": 1}, ttl=5), PutOp(("a",), "j", {"v": 2})])
            print([item.key for item in store.search(("a",))])
        with MemkvCache(LocalMemoryStore()) as cache:
            cache.set({(("n",), "k"): (1, 60)})
            print(cache.get([(("n",), "k")]))
        with MemkvLLMCache(LocalMemoryStore()) as llm_cache:
            llm_cache.update("p", "m", [Generation(text="x")])
            print(llm_cache.lookup("p", "m")[0].text)
        with DocStore(LocalMemoryStore()) as docs:
            docs.mset([("d", 1)])
            print(docs.mget(["d"]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:4] == ["['k', 'j']", "{(('n',), 'k'): 1}", "x", "[1]"]


def test_no_adapter_shows_the_password_of_its_redis_url() -> None:
    from memkv.integrations.langchain import MemkvLLMCache
    from memkv.integrations.langchain import MemkvStore as DocStore
    from memkv.integrations.langgraph import MemkvCache

    url = "redis://agent:Pa55-w0rd@127.0.0.1:1/0"  # never connected to
    calls: dict[type[Any], Callable[[Any], object]] = {
        MemkvStore: lambda store: store.get(("a",), "k"),
        MemkvCache: lambda cache: cache.get([(("a",), "k")]),
        MemkvLLMCache: lambda cache: cache.lookup("prompt", "model"),
        DocStore: lambda store: store.mget(["k"]),
    }
    for adapter_type, call in calls.items():
        adapter = adapter_type(RedisMemoryStore(url))
        adapter.close()
        with pytest.raises(StoreClosedError) as closed:
            call(adapter)
        for text in (repr(adapter), str(closed.value)):
            assert "RedisMemoryStore(127.0.0.1:1" in text
            assert "Pa55" not in text
            assert "agent" not in text


def test_timestamps_are_timezone_aware_utc() -> None:
    with MemkvStore(LocalMemoryStore()) as store:
        store.put(("t",), "k", {"v": 1})
        item = store.get(("t",), "k")
        assert item is not None
        assert item.created_at.utcoffset() == timedelta(0)
        assert abs(datetime.now(timezone.utc) - item.created_at) < timedelta(minutes=1)


# -- the Item kept beside a local document -----------------------------------------------------


def test_a_document_rewritten_through_the_memkv_store_is_read_afresh(core: str) -> None:
    """The kept ``Item`` never outlives its entry: a read-modify-write of the same
    document object through the memkv store's own API is seen by the next read."""
    clock = FakeClock()
    memory: LocalMemoryStore[Any] = local_store_type(core)(clock=clock)
    memkv_key = KEY_PREFIX + "t//k"
    with MemkvStore(memory) as store:
        store.put(("t",), "k", {"v": 1})
        first = store.get(("t",), "k")
        assert first is not None
        assert store.search(("t",))[0].value == {"v": 1}
        entry = asyncio.run(memory.get(memkv_key))
        assert entry is not None
        document = entry.value
        document["value"] = {"v": 2}  # the value replaced in the held document
        assert store.get(("t",), "k").value == {"v": 2}  # type: ignore[union-attr]
        assert store.search(("t",))[0].value == {"v": 2}
        clock.tick(5)
        document["value"]["v"] = 3
        asyncio.run(memory.set(memkv_key, document))  # written back, same object
        for read in (store.get(("t",), "k"), store.search(("t",))[0]):
            assert read is not None
            assert read.value == {"v": 3}
            assert read.updated_at == first.updated_at + timedelta(seconds=5)
            assert read.created_at == first.created_at
        clock.tick(5)
        asyncio.run(memory.set_many([(memkv_key, document)]))
        assert store.get(("t",), "k").updated_at == first.updated_at + timedelta(seconds=10)  # type: ignore[union-attr]
        asyncio.run(memory.touch(memkv_key, 60))  # a new expiry: the kept Item still holds
        assert store.get(("t",), "k") is store.get(("t",), "k")


def test_the_local_store_holds_only_the_documented_document(core: str) -> None:
    """What a reader of the memkv store sees (and a codec encodes) is the document the
    class docstring describes, however often the item was read."""
    with MemkvStore(local_store_type(core)()) as store:
        store.put(("t",), "k", {"v": 1}, ttl=5)
        assert store.get(("t",), "k") is not None
        assert store.search(("t",))[0].key == "k"
        entry = asyncio.run(store._store.get(KEY_PREFIX + "t//k"))
        assert entry is not None
        document = entry.value
        assert isinstance(document, dict)
        assert sorted(document) == ["order", "ttl", "value"]
        assert document == {"value": {"v": 1}, "order": document["order"], "ttl": 5}
        for codec in ("json", "msgpack", "pickle"):
            chosen = resolve_codec(codec)
            assert chosen.decode(encode_value(chosen, document)) == document
        copied = pickle.loads(pickle.dumps(document))
        assert type(copied) is dict
        assert "Item" not in repr(document)


def test_a_stray_key_under_the_prefix_is_a_codec_error_for_every_read() -> None:
    memory: LocalMemoryStore[Any] = LocalMemoryStore()
    with MemkvStore(memory) as store:
        store.put(("t",), "k", {"v": 1})
        asyncio.run(memory.set(KEY_PREFIX + "stray", {"value": {}, "order": 1}))
        with pytest.raises(CodecError):
            store.list_namespaces()
        with pytest.raises(CodecError):
            store.search(())
        assert store.list_namespaces(prefix=("t",)) == [("t",)]


# -- concurrency ---------------------------------------------------------------------------------


async def test_threads_and_tasks_share_one_redis_backed_store(redis_url: str) -> None:
    """Sync calls from several threads and async batches from many tasks, at once, on
    one adapter (its worker loop runs them all); writers of one key leave one item."""
    memory: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=unique_namespace())
    async with MemkvStore(memory) as store:

        def writer(n: int) -> None:
            namespace = ("t", f"thread-{n}")
            for i in range(15):
                store.put(namespace, f"k{i:02d}", {"n": n, "i": i})
                store.put(("t", "shared"), "same", {"n": n, "i": i})
                assert store.get(namespace, f"k{i:02d}").value == {"n": n, "i": i}  # type: ignore[union-attr]
            found = store.search(namespace, limit=100)
            assert [item.key for item in found] == [f"k{i:02d}" for i in range(15)]

        async def batch(j: int) -> None:
            namespace = ("t", "tasks")
            results = await store.abatch(
                [PutOp(namespace, f"j{j:02d}", {"j": j}), GetOp(namespace, f"j{j:02d}")]
            )
            assert results == [None, None]  # reads see the state before the batch's writes
            got = await store.aget(namespace, f"j{j:02d}")
            assert got is not None
            assert got.value == {"j": j}

        loop = asyncio.get_running_loop()
        threads = [loop.run_in_executor(None, writer, n) for n in range(4)]
        await asyncio.gather(*threads, *(batch(j) for j in range(40)))
        tasks = await store.asearch(("t", "tasks"), limit=100)
        assert sorted(item.key for item in tasks) == [f"j{j:02d}" for j in range(40)]
        shared = await store.asearch(("t", "shared"), limit=100)
        assert [item.key for item in shared] == ["same"]
        assert shared[0].value["i"] == 14
        assert await store.alist_namespaces(prefix=("t",)) == sorted(
            [("t", "shared"), ("t", "tasks"), *[("t", f"thread-{n}") for n in range(4)]]
        )


@pytest.mark.parametrize(
    "foreign", [{"value": {}}, {"value": {}, "order": "1"}, {"value": [], "order": 1}, "text"]
)
def test_something_else_at_an_item_key_is_a_codec_error_and_stays(foreign: object) -> None:
    memory: LocalMemoryStore[Any] = LocalMemoryStore()
    memkv_key = KEY_PREFIX + "t//x"
    with MemkvStore(memory) as store:
        store.put(("t",), "k", {"v": 1})
        asyncio.run(memory.set(memkv_key, foreign))
        with pytest.raises(CodecError):
            store.get(("t",), "x")
        with pytest.raises(CodecError):
            store.search(("t",))
        with pytest.raises(CodecError):
            store.put(("t",), "x", {"v": 2})
        assert asyncio.run(memory.get(memkv_key)).value == foreign  # type: ignore[union-attr]
        assert store.get(("t",), "k") is not None


async def test_two_adapters_over_one_redis_namespace_share_items_and_order(
    redis_url: str,
) -> None:
    namespace = unique_namespace()
    first_memory: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=namespace)
    second_memory: RedisMemoryStore[Any] = RedisMemoryStore(redis_url, namespace=namespace)
    async with MemkvStore(first_memory) as first, MemkvStore(second_memory) as second:
        await first.aput(("t",), "a", {"v": 1})
        await second.aput(("t",), "b", {"v": 1})
        await second.aput(("t",), "a", {"v": 2})  # an overwrite keeps a's place
        await first.adelete(("t",), "b")
        await first.aput(("t",), "b", {"v": 3})  # a delete then a put: to the end
        await first.aput(("t",), "c", {"v": 1})
        for store in (first, second):
            found = await store.asearch(("t",))
            assert [(item.key, item.value["v"]) for item in found] == [
                ("a", 2),
                ("b", 3),
                ("c", 1),
            ]
