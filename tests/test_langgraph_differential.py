"""``MemkvStore`` against LangGraph's own ``InMemoryStore``: the same seeded random
operations on both, every answer compared, on both local cores, Redis and a cluster.

LangGraph publishes no conformance suite for stores and tells implementers to test
against ``InMemoryStore``, so that is the oracle, with two documented differences
normalised here: ``InMemoryStore`` orders a search's namespaces by when a call first
touched them (``MemkvStore`` sorts them; within a namespace both keep insertion order),
and it lists namespaces that only a ``get`` touched or that lost every item. Semantic
search (``query`` with ``filter``, ``offset``, ``limit``) is compared with an index
configured on both, on new keys only (``InMemoryStore`` keeps an overwritten item's
old vectors where ``MemkvStore`` replaces them).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langgraph.store.base import (
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore

from memkv import MemoryStore, RedisMemoryStore
from memkv.integrations.langgraph import MemkvStore
from tests.helpers import LOCAL_KINDS, REDIS_KINDS, local_store_type
from tests.redis_servers import unique_namespace

SEEDS = range(30)
OPS_PER_SEED = 200

#: Labels that stress the key encoding: separators, escapes, wildcards, unicode, and
#: labels that are prefixes of one another.
LABELS = ["a", "ab", "a:b", "b", "*", "x/y", "%", "%2F", "a%", "ü", "日本", "a*", "//"]
KEYS = ["k", "k1", "k/1", "", "%", "κ", "a:b", "k//"]
FIELDS = ["n", "s", "tags", "nested", "flag"]


def random_namespace(rng: random.Random) -> tuple[str, ...]:
    return tuple(rng.choice(LABELS) for _ in range(rng.randint(1, 3)))


def random_value(rng: random.Random) -> dict[str, Any]:
    value: dict[str, Any] = {"n": rng.randint(0, 5)}  # always numeric: ranges compare it
    if rng.random() < 0.7:
        value["s"] = rng.choice(["x", "y", "z", ""])
    if rng.random() < 0.5:
        value["tags"] = rng.sample(["x", "y", "z"], rng.randint(0, 2))
    if rng.random() < 0.5:
        value["nested"] = {"c": rng.randint(0, 2), "d": rng.choice(["p", "q"])}
    if rng.random() < 0.3:
        value["flag"] = rng.random() < 0.5
    return value


def random_filter(rng: random.Random) -> dict[str, Any] | None:
    if rng.random() < 0.3:
        return None
    conditions: dict[str, Any] = {}
    for _ in range(rng.randint(1, 2)):
        kind = rng.randrange(6)
        if kind == 0:
            operator = rng.choice(["$gt", "$gte", "$lt", "$lte"])
            conditions["n"] = {operator: rng.choice([rng.randint(0, 5), 2.5, "3"])}
        elif kind == 1:
            conditions["n"] = {"$gte": rng.randint(0, 3), "$lte": rng.randint(2, 5)}
        elif kind == 2:
            field = rng.choice(FIELDS)
            operator = rng.choice(["$eq", "$ne"])
            conditions[field] = {operator: rng.choice(["x", "y", 1, 2, True, None])}
        elif kind == 3:
            conditions["s"] = rng.choice(["x", "y", None])
        elif kind == 4:
            conditions["nested"] = rng.choice([{"c": 1}, {"d": "p"}, {"c": {"$gt": 0}}])
        else:
            conditions["tags"] = rng.choice([["x"], ["x", "y"], []])
    return conditions


def random_path(
    rng: random.Random, known: list[tuple[str, ...]], from_end: bool
) -> tuple[str, ...]:
    """A prefix (or suffix) of a known namespace, some labels turned into ``*``."""
    source = rng.choice(known) if known and rng.random() < 0.8 else random_namespace(rng)
    size = rng.randint(1, len(source))
    path = list(source[-size:] if from_end else source[:size])
    for i in range(len(path)):
        if rng.random() < 0.2:
            path[i] = "*"
    return tuple(path)


def random_op(rng: random.Random, known: list[tuple[str, ...]]) -> Op:
    roll = rng.random()
    namespace = rng.choice(known) if known and rng.random() < 0.7 else random_namespace(rng)
    if roll < 0.35:
        return PutOp(namespace, rng.choice(KEYS), random_value(rng))
    if roll < 0.45:
        return PutOp(namespace, rng.choice(KEYS), None)
    if roll < 0.6:
        return GetOp(namespace, rng.choice(KEYS))
    if roll < 0.85:
        prefix = () if rng.random() < 0.15 else namespace[: rng.randint(1, len(namespace))]
        return SearchOp(
            prefix, random_filter(rng), limit=rng.randint(0, 6), offset=rng.randint(0, 4)
        )
    conditions = []
    if rng.random() < 0.6:
        conditions.append(MatchCondition("prefix", random_path(rng, known, False)))
    if rng.random() < 0.4:
        conditions.append(MatchCondition("suffix", random_path(rng, known, True)))
    return ListNamespacesOp(
        tuple(conditions),
        max_depth=rng.choice([None, None, 1, 2, 3]),
        limit=rng.randint(1, 8),
        offset=rng.randint(0, 3),
    )


# -- the oracle ------------------------------------------------------------------------------


def prune_empty_namespaces(reference: InMemoryStore) -> None:
    for namespace in [ns for ns, items in reference._data.items() if not items]:
        del reference._data[namespace]


def expected_results(reference: InMemoryStore, ops: list[Op]) -> list[Any]:
    """What ``InMemoryStore`` answers for ``ops`` run as one batch (reads see the state
    before the batch's writes), normalised as the module says, then its writes applied."""
    prune_empty_namespaces(reference)
    results: list[Any] = [None] * len(ops)
    for i, op in enumerate(ops):
        if isinstance(op, ListNamespacesOp):
            results[i] = reference.batch([op])[0]
    for i, op in enumerate(ops):
        if isinstance(op, GetOp):
            results[i] = normal(reference.batch([op])[0])
        elif isinstance(op, SearchOp):
            everything = reference.batch([op._replace(limit=10**9, offset=0)])[0]
            ordered = sorted(everything, key=lambda item: item.namespace)  # stable
            results[i] = normal(ordered[op.offset : op.offset + op.limit])
    puts = [op for op in ops if isinstance(op, PutOp)]
    if puts:
        reference.batch(puts)
    prune_empty_namespaces(reference)
    return results


def normal(result: Any) -> Any:
    """Items as ``(namespace, key, value)``; every timestamp checked on the way."""
    if isinstance(result, list):
        return [normal(element) for element in result]
    if isinstance(result, Item):
        for moment in (result.created_at, result.updated_at):
            assert isinstance(moment, datetime)
            assert moment.utcoffset() == timezone.utc.utcoffset(None)
        assert result.created_at <= result.updated_at
        return (result.namespace, result.key, result.value)
    return result


# -- driving MemkvStore through batches or single calls, sync or async ----------------------


def call_sync(store: MemkvStore, ops: list[Op], as_batch: bool) -> list[Any]:
    if as_batch:
        return store.batch(ops)
    return [single_call(store, op, asynchronous=False) for op in ops]


async def call_async(store: MemkvStore, ops: list[Op], as_batch: bool) -> list[Any]:
    if as_batch:
        return await store.abatch(ops)
    return [await single_call(store, op, asynchronous=True) for op in ops]


def single_call(store: MemkvStore, op: Op, *, asynchronous: bool) -> Any:
    """The public method that makes ``op`` (its ``a``-twin when ``asynchronous``)."""

    def method(name: str) -> Callable[..., Any]:
        bound: Callable[..., Any] = getattr(store, f"a{name}" if asynchronous else name)
        return bound

    if isinstance(op, GetOp):
        return method("get")(op.namespace, op.key)
    if isinstance(op, PutOp):
        if op.value is None:
            return method("delete")(op.namespace, op.key)
        return method("put")(op.namespace, op.key, op.value)
    if isinstance(op, SearchOp):
        return method("search")(
            op.namespace_prefix, filter=op.filter, limit=op.limit, offset=op.offset
        )
    assert isinstance(op, ListNamespacesOp)
    paths = {c.match_type: c.path for c in op.match_conditions or ()}
    return method("list_namespaces")(
        prefix=paths.get("prefix"),
        suffix=paths.get("suffix"),
        max_depth=op.max_depth,
        limit=op.limit,
        offset=op.offset,
    )


class Seed:
    """One seed's random batches, with what ``InMemoryStore`` answers to each."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.reference = InMemoryStore()
        self.known: list[tuple[str, ...]] = []
        self.compared = 0

    def batches(self) -> Iterator[tuple[list[Op], bool, bool]]:
        """``(ops, as_batch, asynchronous)`` until ``OPS_PER_SEED`` ops are made."""
        rng = self.rng
        done = 0
        while done < OPS_PER_SEED:
            ops = [random_op(rng, self.known) for _ in range(rng.randint(1, 8))]
            done += len(ops)
            self.known.extend(op.namespace for op in ops if isinstance(op, PutOp) and op.value)
            yield ops, rng.random() < 0.5, rng.random() < 0.5

    def check(self, ops: list[Op], as_batch: bool, answers: list[Any]) -> None:
        """Compare ``answers`` to ``InMemoryStore``'s: for one batch, or one op at a time."""
        if as_batch:
            expected = expected_results(self.reference, ops)
        else:
            expected = [expected_results(self.reference, [op])[0] for op in ops]
        for op, answer, wanted in zip(ops, answers, expected, strict=True):
            assert normal(answer) == wanted, f"seed {self.seed}: {op} answered {answer!r}"
            self.compared += 1


async def run_seed(seed: int, store: MemkvStore) -> int:
    """One seed, each batch through the sync or the async API; returns answers compared."""
    run = Seed(seed)
    async with store:
        for ops, as_batch, asynchronous in run.batches():
            if asynchronous:
                answers = await call_async(store, ops, as_batch)
            else:
                answers = call_sync(store, ops, as_batch)
            run.check(ops, as_batch, answers)
    return run.compared


@pytest.mark.parametrize("kind", LOCAL_KINDS)
async def test_memkv_store_answers_as_in_memory_store_on_the_local_store(kind: str) -> None:
    store_type = local_store_type(kind.removeprefix("local-"))
    compared = [await run_seed(seed, MemkvStore(store_type())) for seed in SEEDS]
    assert sum(compared) >= len(SEEDS) * OPS_PER_SEED


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_memkv_store_answers_as_in_memory_store_on_redis(
    kind: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_url" if kind == "redis" else "cluster_url")
    compared = []
    for seed in SEEDS:
        memory = RedisMemoryStore(url, namespace=unique_namespace())
        compared.append(await run_seed(seed, MemkvStore(memory)))
    assert sum(compared) >= len(SEEDS) * OPS_PER_SEED


async def test_memkv_store_answers_as_in_memory_store_on_a_near_cached_redis_store(
    redis_url: str,
) -> None:
    """Reads served from the near cache answer as the server would (10 seeds)."""
    compared = []
    for seed in SEEDS[:10]:
        memory = RedisMemoryStore(redis_url, namespace=unique_namespace(), near_cache=1000)
        compared.append(await run_seed(2000 + seed, MemkvStore(memory)))
    assert sum(compared) >= 10 * OPS_PER_SEED


@pytest.mark.parametrize("kind", ["local-python", "redis"])
def test_sync_calls_answer_as_in_memory_store_with_no_event_loop_running(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """The sync API from plain code, where no event loop runs (a script, a thread)."""
    if kind == "redis":
        memory: MemoryStore[Any] = RedisMemoryStore(
            request.getfixturevalue("redis_url"), namespace=unique_namespace()
        )
    else:
        memory = local_store_type("python")()
    run = Seed(1000)
    with MemkvStore(memory) as store:
        for ops, as_batch, _ in run.batches():
            run.check(ops, as_batch, call_sync(store, ops, as_batch))
    assert run.compared >= OPS_PER_SEED


# -- semantic search: query with filter, offset and limit ---------------------------------------

QUERIES = ["x", "y", "z", "x y", ""]
SEMANTIC_SEEDS = range(8)
SEMANTIC_OPS = 150


def semantic_op(rng: random.Random, written: list[tuple[tuple[str, ...], str]], step: int) -> Op:
    """A put of a new key (``InMemoryStore`` keeps an overwritten item's old vectors, a
    documented difference), a delete of a written one, or a search with a query."""
    roll = rng.random()
    if roll < 0.45 or not written:
        known = [namespace for namespace, _ in written]
        namespace = rng.choice(known) if known and rng.random() < 0.7 else random_namespace(rng)
        key = f"{rng.choice(KEYS)}-{step}"
        written.append((namespace, key))
        index = rng.choice([None, None, None, False, ["s"], ["tags[*]"]])
        return PutOp(namespace, key, random_value(rng), index=index)
    if roll < 0.55:
        namespace, key = written.pop(rng.randrange(len(written)))
        return PutOp(namespace, key, None)
    namespace = rng.choice(written)[0]
    prefix = () if rng.random() < 0.15 else namespace[: rng.randint(1, len(namespace))]
    return SearchOp(
        prefix,
        random_filter(rng),
        limit=rng.randint(0, 6),
        offset=rng.randint(0, 4),
        query=rng.choice(QUERIES),
    )


def expected_ranking(reference: InMemoryStore, op: SearchOp) -> list[Any]:
    """``InMemoryStore``'s answer, its ties put in ``MemkvStore``'s order: by namespace,
    then by first write. (Items with identical texts tie; numpy's cosine may differ in
    the last bit between identical rows, which orders ``InMemoryStore``'s ties at
    random.) Unscored items fill the page after the scored ones, as it does."""
    prune_empty_namespaces(reference)
    if not op.query:
        everything = reference.batch([op._replace(limit=10**9, offset=0)])[0]
        ordered = sorted(everything, key=lambda item: item.namespace)
        return [(i.namespace, i.key, i.value, None) for i in ordered[op.offset :][: op.limit]]
    everything = reference.batch([op._replace(limit=10**9, offset=0)])[0]

    def placed(item: Any) -> tuple[Any, ...]:
        position = list(reference._data[item.namespace]).index(item.key)
        return (-round(item.score, 9), item.namespace, position)

    scored = sorted((i for i in everything if i.score is not None), key=placed)
    unscored = sorted((i for i in everything if i.score is None), key=lambda i: i.namespace)
    kept = scored[op.offset : op.offset + op.limit]
    if unscored and len(kept) < op.limit:
        kept += unscored[: op.limit - len(kept)]
    return [(i.namespace, i.key, i.value, i.score) for i in kept]


async def run_semantic_seed(seed: int, memory: MemoryStore[Any]) -> int:
    """One seed of puts, deletes and searches with a query; returns searches compared."""
    rng = random.Random(seed)
    fields = rng.choice([None, ["s"], ["s", "tags[*]"], ["nested.d"], ["$"]])
    index: Any = {"dims": 8, "embed": DeterministicFakeEmbedding(size=8)}
    if fields:
        index["fields"] = fields
    reference = InMemoryStore(index=index)
    written: list[tuple[tuple[str, ...], str]] = []
    compared = 0
    async with MemkvStore(memory, index=index) as store:
        for step in range(SEMANTIC_OPS):
            op = semantic_op(rng, written, step)
            if isinstance(op, PutOp):
                try:
                    reference.batch([op])
                except ValueError:
                    # InMemoryStore embeds each distinct text once, then fails a put
                    # whose fields repeat a text; MemkvStore stores it (not compared).
                    written.remove((op.namespace, op.key))
                    continue
                await store.abatch([op])
                continue
            assert isinstance(op, SearchOp)
            wanted = expected_ranking(reference, op)
            found = (await store.abatch([op]))[0]
            answer = [(i.namespace, i.key, i.value, i.score) for i in found]
            where = f"seed {seed}: {op}"
            assert [a[:3] for a in answer] == [w[:3] for w in wanted], where
            for mine, theirs in zip(answer, wanted, strict=True):
                assert (mine[3] is None) == (theirs[3] is None), where
                if mine[3] is not None:
                    assert mine[3] == pytest.approx(theirs[3], abs=1e-9), where
            compared += 1
    return compared


@pytest.mark.parametrize("kind", [*LOCAL_KINDS, *REDIS_KINDS])
async def test_semantic_search_answers_as_in_memory_store(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """``query`` with ``filter``, ``offset`` and ``limit``: the same items, in the same
    order, with the same scores."""
    compared = 0
    for seed in SEMANTIC_SEEDS:
        if kind in LOCAL_KINDS:
            memory: MemoryStore[Any] = local_store_type(kind.removeprefix("local-"))()
        else:
            url = request.getfixturevalue("redis_url" if kind == "redis" else "cluster_url")
            memory = RedisMemoryStore(url, namespace=unique_namespace())
        compared += await run_semantic_seed(seed, memory)
    assert compared >= len(SEMANTIC_SEEDS) * SEMANTIC_OPS // 3
