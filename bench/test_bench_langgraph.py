"""Benchmarks of the LangGraph store (issue 13): ``aget`` of a present item, ``asearch``.

The ratio is against LangGraph's own ``InMemoryStore.aget`` of the same items, timed in
the same run in alternating bursts (``bench/conftest.py``); both stores hold the same
1,000 items in 10 namespaces, read in the same shuffled order. ``MemkvStore.asearch``
(namespace prefix, range filter, limit 10) is measured against ``InMemoryStore.asearch``
the same way.

``pytest bench/test_bench_langgraph.py -p no:randomly``
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from langgraph.store.memory import InMemoryStore

from bench.conftest import GATE, Figure, assert_floor, paired, rate, record, run_fresh
from bench.test_bench_local import store_on
from memkv.integrations.langgraph import MemkvStore

NAMESPACES = [("users", f"user-{i:02d}", "memories") for i in range(10)]
ITEMS = [(namespace, f"memory-{j:03d}") for namespace in NAMESPACES for j in range(100)]
READS = 20_000 if GATE else 100_000
SEARCHES = 200 if GATE else 1_000


def read_order() -> list[tuple[tuple[str, ...], str]]:
    rng = random.Random(13)
    return [rng.choice(ITEMS) for _ in range(READS)]


def filled(store: Any) -> Any:
    for position, (namespace, key) in enumerate(ITEMS):
        store.put(namespace, key, {"text": f"likes {key}", "stars": position % 5})
    return store


@pytest.mark.parametrize("core_name", ["cython", "python"])
def test_aget_of_a_present_item_vs_in_memory_store(
    benchmark: Any, loop: asyncio.AbstractEventLoop, core_name: str
) -> None:
    memkv_store = filled(MemkvStore(store_on(core_name)))
    reference = filled(InMemoryStore())
    order = read_order()

    def reads(store: Any) -> Any:
        async def run() -> None:
            aget = store.aget
            for namespace, key in order:
                await aget(namespace, key)

        return run_fresh(loop, run)

    subject, baseline = paired(reads(memkv_store), reads(reference))
    ratio = baseline / subject
    goal = core_name == "cython"
    record(
        Figure(
            f"LangGraph `aget` of a present item, 1,000 items, {core_name} core",
            rate(READS / subject),
            f"{rate(READS / baseline)} (`InMemoryStore.aget`)",
            f"{ratio:.2f}x as fast",
            ">= 1.0x" if goal else "reference",
            ratio >= 1.0 if goal else None,
        )
    )
    assert_floor(READS, subject)
    benchmark.extra_info["speed_ratio_vs_in_memory_store"] = ratio
    benchmark.pedantic(reads(memkv_store), rounds=1 if GATE else 3)
    memkv_store.close()


@pytest.mark.parametrize("core_name", ["cython", "python"])
def test_search_by_prefix_and_filter_vs_in_memory_store(
    benchmark: Any, loop: asyncio.AbstractEventLoop, core_name: str
) -> None:
    memkv_store = filled(MemkvStore(store_on(core_name)))
    reference = filled(InMemoryStore())
    rng = random.Random(14)
    prefixes = [rng.choice(NAMESPACES)[:2] for _ in range(SEARCHES)]

    def searches(store: Any) -> Any:
        async def run() -> None:
            for prefix in prefixes:
                await store.asearch(prefix, filter={"stars": {"$gte": 3}}, limit=10)

        return run_fresh(loop, run)

    subject, baseline = paired(searches(memkv_store), searches(reference))
    ratio = baseline / subject
    goal = core_name == "cython"
    record(
        Figure(
            "LangGraph `asearch` (prefix of 100 of 1,000 items, range filter, limit 10), "
            f"{core_name} core",
            rate(SEARCHES / subject),
            f"{rate(SEARCHES / baseline)} (`InMemoryStore.asearch`)",
            f"{ratio:.2f}x as fast",
            ">= 1.0x" if goal else "reference",
            ratio >= 1.0 if goal else None,
        )
    )
    # The floors are per operation on one entry: a search here reads 100 of them.
    assert_floor(SEARCHES * 100, subject)
    benchmark.extra_info["speed_ratio_vs_in_memory_store"] = ratio
    benchmark.pedantic(searches(memkv_store), rounds=1)
    memkv_store.close()
