"""The workload behind ``memkv bench``: calls per second and latency per operation.

Each store is preloaded with ``keys`` entries (each with a one-hour TTL), then every
operation in ``WORKLOAD`` is timed twice over the same calls: once in a tight loop for
throughput, once call by call for the p50/p99 latency. With ``concurrent=True`` (the
Redis store), ``CONCURRENT_WORKLOAD`` follow: 50 and then 200 tasks sharing the store,
each doing 90 % ``get`` / 10 % ``set``, timed once (calls per second over the whole
burst; each call's latency). ``bench_report`` turns the results into the documented
``--json`` document (``BenchReport``).
"""

from __future__ import annotations

import asyncio
import gc
import platform
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypedDict

from memkv import __version__
from memkv.store import MemoryStore

__all__ = [
    "BASELINE",
    "BASELINE_WORKLOAD",
    "CONCURRENT_WORKLOAD",
    "LOCAL_CYTHON",
    "LOCAL_PYTHON",
    "REDIS",
    "SCHEMA_VERSION",
    "WORKLOAD",
    "BenchReport",
    "BenchResult",
    "DictBaseline",
    "Operation",
    "ResultRow",
    "baseline_calls",
    "bench_report",
    "calls_for",
    "planned_calls",
    "run_baseline",
    "run_store_benchmark",
]

#: Bumped whenever a field of ``BenchReport`` or ``ResultRow`` changes meaning or goes away.
SCHEMA_VERSION = 1
#: Store ids in results: the bare ``dict`` behind ``async def`` that local figures are
#: compared with, the local store on each core, a Redis store, and a Redis store with a
#: near cache (``--near-cache N``).
BASELINE = "baseline"
LOCAL_CYTHON = "local-cython"
LOCAL_PYTHON = "local-python"
REDIS = "redis"
REDIS_NEAR_CACHE = "redis-near-cache"
#: Entries per prefix group: ``get_many`` fetches and ``scan(prefix)`` yields this many keys.
BATCH = 100


@dataclass(frozen=True)
class Operation:
    """One benchmarked operation: its stable id (used in ``--json``) and table label."""

    name: str
    label: str
    #: Keys one call touches: 1, or ``BATCH`` for ``get_many`` and ``scan(prefix)``.
    keys_per_call: int


#: Measured in this order on every store: reads first, so they see the preloaded state.
WORKLOAD: tuple[Operation, ...] = (
    Operation("get_hit", "get hit", 1),
    Operation("get_miss", "get miss", 1),
    Operation("exists", "exists", 1),
    Operation("get_many", f"get_many({BATCH})", BATCH),
    Operation("scan_prefix", "scan(prefix)", BATCH),
    Operation("set", "set", 1),
    Operation("set_ttl", "set (ttl)", 1),
)
#: Many tasks sharing one store, 90 % get / 10 % set (``concurrent=True``): the figures
#: where a coalescing transport shows (one write carries every task's commands).
CONCURRENT_WORKLOAD: tuple[Operation, ...] = (
    Operation("mixed_50_tasks", "50 tasks 90/10", 1),
    Operation("mixed_200_tasks", "200 tasks 90/10", 1),
)
#: Tasks per concurrent operation.
_TASKS = {"mixed_50_tasks": 50, "mixed_200_tasks": 200}
#: The operations a bare dict can do as well (no TTL, no ordered prefix scan).
BASELINE_WORKLOAD: tuple[Operation, ...] = tuple(
    operation
    for operation in WORKLOAD
    if operation.name in ("get_hit", "get_miss", "exists", "get_many", "set")
)

#: Makes the awaitable of call number ``i`` of one operation.
Call = Callable[[int], Awaitable[object]]
#: Told, as calls finish, which operation ran and how many calls it just finished.
Progress = Callable[[Operation, int], None]


def _no_progress(operation: Operation, done: int) -> None:
    """The default ``progress``: report nothing."""


@dataclass(frozen=True)
class BenchResult:
    """One operation measured on one store."""

    store: str
    operation: Operation
    #: How many calls were timed (each twice: for throughput, then for latency).
    calls: int
    #: Entries the store held when the operation ran.
    entries: int
    ops_per_second: float
    p50_us: float
    p99_us: float


class ResultRow(TypedDict):
    """One element of ``BenchReport["results"]``: one operation on one store.

    ``ops_per_second`` counts calls; ``keys_per_second`` is it times ``keys_per_call``
    (100 for ``get_many`` and ``scan_prefix``). ``p50_us``/``p99_us`` are per call, in
    microseconds. ``vs_baseline`` is ``ops_per_second`` divided by the baseline's for
    the same operation, for the local stores (``null`` for the baseline itself, for
    Redis, and for the operations a dict cannot do: ``scan_prefix``, ``set_ttl``).
    """

    store: str
    operation: str
    calls: int
    keys_per_call: int
    entries: int
    ops_per_second: float
    keys_per_second: float
    p50_us: float
    p99_us: float
    vs_baseline: float | None


class BenchReport(TypedDict):
    """The ``memkv bench --json`` document (``schema_version`` 1).

    - ``implementation``: the local core ``LocalMemoryStore`` uses (``memkv.IMPLEMENTATION``);
    - ``keys``: the ``--keys`` asked for (a Redis store holds at most 10 * ``--redis-ops``);
    - ``redis``: a description of the Redis store benchmarked (never its password), or null;
    - ``results``: one ``ResultRow`` per (store, operation), stores in the order
      ``baseline``, ``local-cython``, ``local-python``, ``redis``, ``redis-near-cache``
      (those that ran) and operations in ``WORKLOAD`` order;
    - ``speedup``: operation name → Cython core ``ops_per_second`` ÷ pure-Python core
      ``ops_per_second``; empty unless both local cores ran.
    """

    schema_version: int
    memkv_version: str
    implementation: str
    python: str
    keys: int
    redis: str | None
    results: list[ResultRow]
    speedup: dict[str, float]


class DictBaseline:
    """A bare dict behind ``async def``: the floor every local figure is compared with."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def get(self, key: str) -> Any:
        return self.data.get(key)

    async def exists(self, key: str) -> bool:
        return key in self.data

    async def get_many(self, keys: Iterable[str]) -> list[Any]:
        data = self.data
        return [data.get(key) for key in keys]

    async def set(self, key: str, value: Any) -> None:
        self.data[key] = value


def calls_for(operation: Operation, calls: int) -> int:
    """How often ``operation`` runs when single-key operations run ``calls`` times.

    Batch operations run ``calls // 100`` times (at least 10), so that every row of the
    table takes a similar time.
    """
    return calls if operation.keys_per_call == 1 else max(10, calls // BATCH)


def planned_calls(calls: int, *, concurrent: bool = False) -> int:
    """Calls ``run_store_benchmark(..., calls=calls, concurrent=concurrent)`` reports to
    ``progress`` in all."""
    operations = WORKLOAD + (CONCURRENT_WORKLOAD if concurrent else ())
    return sum(calls_for(operation, calls) for operation in operations)


def baseline_calls(calls: int) -> int:
    """Calls ``run_baseline(..., calls=calls)`` reports to ``progress`` in all."""
    return sum(calls_for(operation, calls) for operation in BASELINE_WORKLOAD)


@dataclass(frozen=True)
class _Workload:
    """The keys of one run: ``{prefix}{group:06}:{index:02}``, 100 per group."""

    keys: list[str]
    #: The keys in a fixed random order, so that reads and writes hit the index everywhere.
    shuffled: list[str]
    #: Lists of ``BATCH`` distinct keys for ``get_many``.
    batches: list[list[str]]
    #: Prefixes that each match exactly ``BATCH`` keys, in a fixed random order.
    prefixes: list[str]
    value: str = "x" * 32


def _workload(size: int, prefix: str) -> _Workload:
    keys = [f"{prefix}{i // BATCH:06}:{i % BATCH:02}" for i in range(size)]
    shuffled = keys[:]
    random.Random(7).shuffle(shuffled)
    batches = [shuffled[i : i + BATCH] for i in range(0, size - BATCH + 1, BATCH)]
    prefixes = [f"{prefix}{group:06}:" for group in range(size // BATCH)]
    random.Random(11).shuffle(prefixes)
    return _Workload(keys, shuffled, batches, prefixes)


def _store_calls(store: MemoryStore[Any], work: _Workload, ttl: float) -> dict[str, Call]:
    shuffled, batches, prefixes, value = work.shuffled, work.batches, work.prefixes, work.value
    n = len(shuffled)

    async def scan(i: int) -> None:
        async for _ in store.scan(prefixes[i % len(prefixes)]):
            pass

    return {
        "get_hit": lambda i: store.get(shuffled[i % n]),
        "get_miss": lambda i: store.get(f"missing:{i}"),
        "exists": lambda i: store.exists(shuffled[i % n]),
        "get_many": lambda i: store.get_many(batches[i % len(batches)]),
        "scan_prefix": scan,
        # Both writes overwrite preloaded keys, the same ones in the same order, so
        # after set_ttl every key that set left without a TTL has one again.
        "set": lambda i: store.set(shuffled[i % n], value),
        "set_ttl": lambda i: store.set(shuffled[i % n], value, ttl),
    }


def _baseline_calls(baseline: DictBaseline, work: _Workload) -> dict[str, Call]:
    shuffled, batches, value = work.shuffled, work.batches, work.value
    n = len(shuffled)
    return {
        "get_hit": lambda i: baseline.get(shuffled[i % n]),
        "get_miss": lambda i: baseline.get(f"missing:{i}"),
        "exists": lambda i: baseline.exists(shuffled[i % n]),
        "get_many": lambda i: baseline.get_many(batches[i % len(batches)]),
        "set": lambda i: baseline.set(shuffled[i % n], value),
    }


async def _measure(
    store: str, operation: Operation, call: Call, calls: int, entries: int, progress: Progress
) -> BenchResult:
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection in the middle of one row would be charged to it alone
    try:
        # Throughput: a tight loop with no per-call timing.
        start = time.perf_counter()
        for i in range(calls):
            await call(i)
        elapsed = max(time.perf_counter() - start, 1e-9)
        progress(operation, calls // 2)
        # Latency: the same calls again, each timed on its own.
        samples = [0] * calls
        clock = time.perf_counter_ns
        for i in range(calls):
            begin = clock()
            await call(i)
            samples[i] = clock() - begin
        progress(operation, calls - calls // 2)
    finally:
        if gc_was_enabled:
            gc.enable()
    samples.sort()
    return BenchResult(
        store=store,
        operation=operation,
        calls=calls,
        entries=entries,
        ops_per_second=calls / elapsed,
        p50_us=samples[len(samples) // 2] / 1000,
        p99_us=samples[min(len(samples) - 1, len(samples) * 99 // 100)] / 1000,
    )


async def _measure_concurrent(
    store_name: str,
    store: MemoryStore[Any],
    work: _Workload,
    operation: Operation,
    calls: int,
    progress: Progress,
) -> BenchResult:
    """``calls`` calls spread over ``_TASKS[operation.name]`` tasks sharing ``store``:
    every tenth call of a task a ``set``, the others ``get``s of keys spread over the
    workload."""
    tasks = _TASKS[operation.name]
    per_task = max(1, calls // tasks)
    shuffled, value = work.shuffled, work.value
    n = len(shuffled)
    samples: list[int] = []
    clock = time.perf_counter_ns

    async def one_task(task: int) -> None:
        get, set_ = store.get, store.set
        for j in range(per_task):
            key = shuffled[(task * per_task + j) % n]
            begin = clock()
            if j % 10 == 9:
                await set_(key, value)
            else:
                await get(key)
            samples.append(clock() - begin)

    start = time.perf_counter()
    await asyncio.gather(*(one_task(task) for task in range(tasks)))
    elapsed = max(time.perf_counter() - start, 1e-9)
    progress(operation, calls)
    samples.sort()
    return BenchResult(
        store=store_name,
        operation=operation,
        calls=len(samples),
        entries=n,
        ops_per_second=len(samples) / elapsed,
        p50_us=samples[len(samples) // 2] / 1000,
        p99_us=samples[min(len(samples) - 1, len(samples) * 99 // 100)] / 1000,
    )


async def run_store_benchmark(
    store_name: str,
    store: MemoryStore[Any],
    *,
    keys: int,
    calls: int,
    ttl: float = 3600.0,
    key_prefix: str = "bench:",
    progress: Progress = _no_progress,
    concurrent: bool = False,
) -> list[BenchResult]:
    """Preload ``store`` with ``keys`` entries, then measure every operation of
    ``WORKLOAD`` (and of ``CONCURRENT_WORKLOAD`` when ``concurrent``).

    Single-key operations run ``calls`` times, batch ones ``calls // 100`` times (see
    ``calls_for``); the concurrent ones make ``calls`` calls across their tasks. Every
    key starts with ``key_prefix``; the entries under it are removed before the run and
    afterwards (also when the run fails or is cancelled), and carry ``ttl`` in between.
    ``keys`` must be at least 100.
    """
    if keys < BATCH:
        raise ValueError(f"keys must be at least {BATCH}, got {keys}")
    work = _workload(keys, key_prefix)
    await store.clear(key_prefix)
    try:
        for start in range(0, keys, 1000):
            chunk = work.keys[start : start + 1000]
            await store.set_many(dict.fromkeys(chunk, work.value), ttl=ttl)
        calls_by_name = _store_calls(store, work, ttl)
        results = []
        for operation in WORKLOAD:
            call = calls_by_name[operation.name]
            count = calls_for(operation, calls)
            results.append(await _measure(store_name, operation, call, count, keys, progress))
            await asyncio.sleep(0)
        for operation in CONCURRENT_WORKLOAD if concurrent else ():
            results.append(
                await _measure_concurrent(store_name, store, work, operation, calls, progress)
            )
    finally:
        await store.clear(key_prefix)
    return results


async def run_baseline(
    *, keys: int, calls: int, progress: Progress = _no_progress
) -> list[BenchResult]:
    """Measure ``BASELINE_WORKLOAD`` on a ``DictBaseline`` of ``keys`` entries."""
    if keys < BATCH:
        raise ValueError(f"keys must be at least {BATCH}, got {keys}")
    baseline = DictBaseline()
    work = _workload(keys, "bench:")
    baseline.data.update(dict.fromkeys(work.keys, work.value))
    calls_by_name = _baseline_calls(baseline, work)
    return [
        await _measure(
            BASELINE,
            operation,
            calls_by_name[operation.name],
            calls_for(operation, calls),
            keys,
            progress,
        )
        for operation in BASELINE_WORKLOAD
    ]


def bench_report(
    results: list[BenchResult], *, implementation: str, keys: int, redis: str | None = None
) -> BenchReport:
    """The ``--json`` document for ``results`` (see ``BenchReport`` for every field)."""
    baseline = {r.operation.name: r.ops_per_second for r in results if r.store == BASELINE}
    rows: list[ResultRow] = []
    for result in results:
        local = result.store in (LOCAL_CYTHON, LOCAL_PYTHON)
        reference = baseline.get(result.operation.name) if local else None
        rows.append(
            ResultRow(
                store=result.store,
                operation=result.operation.name,
                calls=result.calls,
                keys_per_call=result.operation.keys_per_call,
                entries=result.entries,
                ops_per_second=result.ops_per_second,
                keys_per_second=result.ops_per_second * result.operation.keys_per_call,
                p50_us=result.p50_us,
                p99_us=result.p99_us,
                vs_baseline=result.ops_per_second / reference if reference else None,
            )
        )
    by_store: dict[str, dict[str, float]] = {}
    for result in results:
        by_store.setdefault(result.store, {})[result.operation.name] = result.ops_per_second
    cython, python = by_store.get(LOCAL_CYTHON, {}), by_store.get(LOCAL_PYTHON, {})
    return BenchReport(
        schema_version=SCHEMA_VERSION,
        memkv_version=__version__,
        implementation=implementation,
        python=platform.python_version(),
        keys=keys,
        redis=redis,
        results=rows,
        speedup={name: cython[name] / python[name] for name in cython if name in python},
    )
