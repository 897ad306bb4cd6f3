"""The workload behind ``memkv bench``: ops/s and latency percentiles per operation."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

from memkv.store import MemoryStore

__all__ = [
    "BenchResult",
    "DictBaseline",
    "baseline_calls",
    "planned_calls",
    "run_baseline",
    "run_store_benchmark",
]

#: (name, how many calls one "op" makes, factory of the coroutine for call number i)
Operation = tuple[str, int, Callable[[int], Awaitable[Any]]]


@dataclass(frozen=True)
class BenchResult:
    """One operation on one store: throughput and per-call latency."""

    store: str
    operation: str
    ops_per_second: float
    p50_us: float
    p99_us: float
    calls: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DictBaseline:
    """A bare dict behind ``async def``: the floor every local figure is compared with."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def get(self, key: str) -> Any:
        return self.data.get(key)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self.data[key] = value


async def _measure(
    store_name: str, operation: Operation, calls: int, progress: Callable[[int], None]
) -> BenchResult:
    name, keys_per_call, make_call = operation
    # Throughput: a tight loop with no per-call timing.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for i in range(calls):
            await make_call(i)
        elapsed = time.perf_counter() - start
        progress(calls // 2)
        # Latency: every call timed on its own, on the same calls.
        samples = [0] * calls
        clock = time.perf_counter_ns
        for i in range(calls):
            begin = clock()
            await make_call(i)
            samples[i] = clock() - begin
        progress(calls - calls // 2)
    finally:
        if gc_was_enabled:
            gc.enable()
    samples.sort()
    return BenchResult(
        store=store_name,
        operation=name,
        ops_per_second=calls * keys_per_call / elapsed if elapsed else float("inf"),
        p50_us=samples[len(samples) // 2] / 1000,
        p99_us=samples[min(len(samples) - 1, len(samples) * 99 // 100)] / 1000,
        calls=calls,
    )


def heavy_calls(calls: int) -> int:
    """How often a 100-key operation runs when single-key ones run ``calls`` times."""
    return max(10, calls // 100)


def _calls(operation: Operation, calls: int) -> int:
    return calls if operation[1] == 1 else heavy_calls(calls)


def planned_calls(calls: int) -> int:
    """Calls ``run_store_benchmark(..., calls=calls)`` makes, for a progress total."""
    # Building the operations touches no store: their calls run only when measured.
    operations = _operations(cast(MemoryStore[Any], None), ["key"], 0.0)
    return sum(_calls(operation, calls) for operation in operations)


def baseline_calls(calls: int) -> int:
    """Calls ``run_baseline(..., calls=calls)`` makes, for a progress total."""
    return len(_baseline_operations(DictBaseline(), ["key"])) * calls


def _operations(store: MemoryStore[Any], keys: list[str], ttl: float) -> list[Operation]:
    n = len(keys)
    shuffled = keys[:]
    random.Random(7).shuffle(shuffled)
    batches = [shuffled[i : i + 100] for i in range(0, n - 99, 100)] or [shuffled]
    prefixes = sorted({key[: len(key) - 2] for key in keys})  # ~100 keys share each prefix
    value = "x" * 32

    async def scan(i: int) -> None:
        async for _ in store.scan(prefixes[i % len(prefixes)]):
            pass

    return [
        ("set", 1, lambda i: store.set(shuffled[i % n], value, ttl)),
        ("get hit", 1, lambda i: store.get(shuffled[i % n])),
        ("get miss", 1, lambda i: store.get(f"missing:{i}")),
        ("exists", 1, lambda i: store.exists(shuffled[i % n])),
        ("get_many(100)", 100, lambda i: store.get_many(batches[i % len(batches)])),
        ("scan(prefix, ~100 keys)", 100, scan),
    ]


async def run_store_benchmark(
    store_name: str,
    store: MemoryStore[Any],
    *,
    keys: int,
    calls: int,
    ttl: float = 3600.0,
    progress: Callable[[int], None] = lambda advance: None,
) -> list[BenchResult]:
    """Fill ``store`` with ``keys`` entries, then measure each operation ``calls`` times.

    Heavy operations (``get_many``, ``scan``) run ``calls // 100`` times so every row
    takes a similar time. ``progress`` is told how many calls finished, as they finish.
    """
    names = [f"bench:{i // 100:06}:{i % 100:02}" for i in range(keys)]
    await store.clear("bench:")
    for start in range(0, keys, 1000):
        await store.set_many(dict.fromkeys(names[start : start + 1000], "x" * 32), ttl=ttl)
    results = []
    for operation in _operations(store, names, ttl):
        results.append(await _measure(store_name, operation, _calls(operation, calls), progress))
        await asyncio.sleep(0)
    await store.clear("bench:")
    return results


async def run_baseline(
    *, keys: int, calls: int, progress: Callable[[int], None] = lambda advance: None
) -> list[BenchResult]:
    """The bare-dict baseline for ``get hit`` and ``set``, measured in the same run."""
    baseline = DictBaseline()
    names = [f"bench:{i // 100:06}:{i % 100:02}" for i in range(keys)]
    for name in names:
        baseline.data[name] = "x" * 32
    operations = _baseline_operations(baseline, names)
    return [await _measure("dict + async def", op, calls, progress) for op in operations]


def _baseline_operations(baseline: DictBaseline, keys: list[str]) -> list[Operation]:
    shuffled = keys[:]
    random.Random(7).shuffle(shuffled)
    n = len(shuffled)
    value = "x" * 32
    return [
        ("set", 1, lambda i: baseline.set(shuffled[i % n], value)),
        ("get hit", 1, lambda i: baseline.get(shuffled[i % n])),
    ]
