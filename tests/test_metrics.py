"""Metrics: exporters read store counters at scrape time, through the real client libraries.

A manager holds a local store and a store on a real Redis server; the tests drive
operations and watch a Prometheus scrape and an OpenTelemetry in-memory reader move.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import inspect
import pickle
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from memkv import (
    BaseMemoryStore,
    LocalMemoryStore,
    MemoryEntry,
    MemoryManager,
    RedisMemoryStore,
    StoreStats,
)
from memkv.errors import InvalidKeyError
from memkv.latency import BUCKETS, LatencyHistogram
from memkv.metrics.otel import instrument
from memkv.metrics.prometheus import StoreCollector
from memkv.store import OPERATIONS, TTL
from tests.helpers import local_store_type

pytestmark = pytest.mark.redis


@pytest.fixture
async def manager(redis_url: str) -> AsyncIterator[MemoryManager[Any]]:
    manager: MemoryManager[Any] = MemoryManager()
    manager.register_store("local", LocalMemoryStore(max_entries=2), default=True)
    namespace = f"metrics-{uuid.uuid4().hex}"
    manager.register_store("shared", RedisMemoryStore(redis_url, namespace=namespace))
    async with manager:
        yield manager
        await manager.clear(store="shared")


async def drive(manager: MemoryManager[Any], store: str) -> None:
    """Two sets, a hit, a miss, a failed get: the same moves on either store."""
    await manager.set("a", 1, store=store)
    await manager.set("b", 2, store=store)
    await manager.get("a", store=store)
    await manager.get("missing", store=store)
    with pytest.raises(InvalidKeyError):
        await manager.get(1, store=store)  # type: ignore[arg-type]


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed back by prometheus_client's own parser."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def op(store: str, operation: str, result: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {"store": store, "operation": operation, "result": result}
    return ("memkv_operations_total", tuple(sorted(labels.items())))


def one(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


# -- Prometheus ----------------------------------------------------------------------


async def test_prometheus_scrape_of_a_manager_moves_with_operations(
    manager: MemoryManager[Any],
) -> None:
    registry = CollectorRegistry()
    registry.register(StoreCollector(manager))
    before = scrape(registry)
    for store in ("local", "shared"):
        # Every (operation, result) pair is exported from the start, at zero.
        for operation, results in OPERATIONS.items():
            for result in results:
                assert before[op(store, operation, result)] == 0
        await drive(manager, store)
    await manager.set("c", 3)  # the local store holds 2: evicts "b"
    after = scrape(registry)
    for store in ("local", "shared"):
        assert after[op(store, "set", "ok")] == (3 if store == "local" else 2)
        assert after[op(store, "get", "hit")] == 1
        assert after[op(store, "get", "miss")] == 1
        assert after[op(store, "get", "error")] == 1
        assert after[one("memkv_lookups_total", store=store, result="hit")] == 1
        assert after[one("memkv_lookups_total", store=store, result="miss")] == 1
    assert after[one("memkv_evictions_total", store="local")] == 1
    assert after[one("memkv_expired_total", store="local")] == 0
    assert after[one("memkv_entries", store="local")] == 2
    # Redis cannot count its entries cheaply: no gauge sample rather than a wrong one.
    assert one("memkv_entries", store="shared") not in after
    await manager.get_many(["a", "c", "zz"], store="shared")
    again = scrape(registry)
    assert again[op("shared", "get_many", "ok")] == 1
    assert again[one("memkv_lookups_total", store="shared", result="hit")] == 2
    assert again[one("memkv_lookups_total", store="shared", result="miss")] == 3


async def test_a_store_registered_later_appears_at_the_next_scrape(
    manager: MemoryManager[Any],
) -> None:
    registry = CollectorRegistry()
    registry.register(StoreCollector(manager))
    manager.register_store("late", LocalMemoryStore())
    await manager.set("x", 1, store="late")
    assert scrape(registry)[op("late", "set", "ok")] == 1


def test_a_mapping_source_and_a_custom_namespace() -> None:
    registry = CollectorRegistry()
    registry.register(StoreCollector({"only": LocalMemoryStore()}, namespace="app"))
    samples = scrape(registry)
    assert samples[one("app_entries", store="only")] == 0
    assert not any(name.startswith("memkv_") for name, _ in samples)


# Metric-name rules of `promtool check metrics` (and the Prometheus naming guide):
# counters end in _total, nothing else does, units are base units spelled out
# (_seconds, not _ms), names and label names are snake_case, every family has HELP.
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_BAD_UNITS = re.compile(r"_(ms|us|milliseconds|microseconds|minutes|hours|bytes_total_bytes)$")


def lint(text: str) -> list[str]:
    problems = []
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    for family in text_string_to_metric_families(text):
        name = family.name
        exposed = name + "_total" if family.type == "counter" else name
        if not _NAME.match(exposed):
            problems.append(f"{exposed}: not snake_case")
        if exposed not in helps or not helps[exposed].strip():
            problems.append(f"{exposed}: no HELP text")
        if family.type != "counter" and name.endswith("_total"):
            problems.append(f"{name}: _total on a {family.type}")
        if family.type in ("histogram", "summary") and not name.endswith("_seconds"):
            problems.append(f"{name}: a timing metric without the _seconds unit")
        if _BAD_UNITS.search(name):
            problems.append(f"{name}: use base units")
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith(("_total", "_created")):
                problems.append(f"{sample.name}: a counter sample without _total")
            for label in sample.labels:
                if not _NAME.match(label) or label.startswith("__"):
                    problems.append(f"{sample.name}: label {label!r}")
                if label in ("le", "quantile") and family.type not in ("histogram", "summary"):
                    problems.append(f"{sample.name}: reserved label {label!r}")
    return problems


@pytest.fixture
async def exposition(manager: MemoryManager[Any]) -> str:
    """A scrape with every kind of family: counters, a gauge and a latency histogram."""
    manager.store("local").record_latency()
    await drive(manager, "local")
    await drive(manager, "shared")
    registry = CollectorRegistry()
    registry.register(StoreCollector(manager))
    return generate_latest(registry).decode()


def test_exposition_follows_prometheus_naming_rules(exposition: str) -> None:
    assert lint(exposition) == []
    families = {f.name: f.type for f in text_string_to_metric_families(exposition)}
    assert families == {
        "memkv_operations": "counter",
        "memkv_lookups": "counter",
        "memkv_entries": "gauge",
        "memkv_expired": "counter",
        "memkv_evictions": "counter",
        "memkv_flight_events": "counter",
        "memkv_operation_duration_seconds": "histogram",
    }


def test_the_linter_catches_what_it_claims_to() -> None:
    bad = (
        "# HELP memkv_hits_total a gauge\n# TYPE memkv_hits_total gauge\n"
        'memkv_hits_total{store="a"} 1.0\n'
        "# HELP latency_ms a timing\n# TYPE latency_ms histogram\n"
        'latency_ms_bucket{le="+Inf"} 1.0\nlatency_ms_count 1.0\nlatency_ms_sum 1.0\n'
        '# HELP Mixed x\n# TYPE Mixed gauge\nMixed{le="1"} 1.0\n'
    )
    problems = lint(bad)
    assert any("_total on a gauge" in p for p in problems)
    assert any("_seconds unit" in p for p in problems)
    assert any("use base units" in p for p in problems)
    assert any("snake_case" in p for p in problems)
    assert any("reserved label" in p for p in problems)


def test_promtool_check_metrics_passes(exposition: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (.ci/run installs Debian's prometheus)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "", checked.stdout


# -- OpenTelemetry -------------------------------------------------------------------


@pytest.fixture
def reader() -> Iterator[tuple[InMemoryMetricReader, MeterProvider]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield reader, provider
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, Any], ...]], Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        (metric.name, tuple(sorted(dict(point.attributes or {}).items()))): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    }


async def test_opentelemetry_reader_sees_the_counters_move(
    manager: MemoryManager[Any], reader: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    metric_reader, provider = reader
    instrument(provider.get_meter("memkv-test"), manager)
    first = points(metric_reader)
    calls = ("memkv.operations", (("operation", "get"), ("result", "hit"), ("store", "shared")))
    assert first[calls] == 0
    for store in ("local", "shared"):
        await drive(manager, store)
    await manager.set("c", 3)  # evicts "b" from the local store
    second = points(metric_reader)
    for store in ("local", "shared"):
        attrs = {"store": store}

        def key(name: str, **extra: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
            return (name, tuple(sorted({**attrs, **extra}.items())))  # noqa: B023

        assert second[key("memkv.operations", operation="get", result="hit")] == 1
        assert second[key("memkv.operations", operation="get", result="error")] == 1
        assert second[key("memkv.lookups", result="miss")] == 1
    assert second[("memkv.evictions", (("store", "local"),))] == 1
    assert second[("memkv.entries", (("store", "local"),))] == 2
    assert ("memkv.entries", (("store", "shared"),)) not in second
    await manager.get("a", store="shared")
    assert points(metric_reader)[calls] == 2


def test_opentelemetry_instrument_units_and_descriptions(
    reader: tuple[InMemoryMetricReader, MeterProvider],
) -> None:
    metric_reader, provider = reader
    instrument(provider.get_meter("memkv-test"), {"s": LocalMemoryStore()})
    data = metric_reader.get_metrics_data()
    assert data is not None
    metrics = {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert set(metrics) == {
        "memkv.operations",
        "memkv.lookups",
        "memkv.entries",
        "memkv.expired",
        "memkv.evictions",
        "memkv.flight_events",
    }
    assert all(metric.unit and metric.description for metric in metrics.values())


# -- latency histograms -------------------------------------------------------------


def test_histogram_buckets_and_cumulative_counts() -> None:
    histogram = LatencyHistogram()
    for seconds in (5e-7, 1e-6, 3e-3, 60.0):
        histogram.observe(seconds)
    snap = histogram.snapshot()
    assert snap.calls == 4
    assert snap.total == pytest.approx(60.0030015)
    cumulative = dict(snap.cumulative())
    assert cumulative[1e-6] == 2  # an upper bound is inclusive
    assert cumulative[5e-3] == 3
    assert cumulative[10.0] == 3
    assert cumulative[float("inf")] == 4
    assert len(snap.counts) == len(BUCKETS) + 1


async def test_record_latency_times_every_operation_of_that_store_only() -> None:
    timed: LocalMemoryStore[Any] = LocalMemoryStore()
    plain: LocalMemoryStore[Any] = LocalMemoryStore()
    assert timed.latency() == {}
    timed.record_latency()
    timed.record_latency()  # twice keeps the same histograms
    for store in (timed, plain):
        await store.set("a", 1)
        await store.get("a")
        await store.get_many(["a", "b"])
        assert [key async for key in store.scan("")] == ["a"]
        with pytest.raises(InvalidKeyError):
            await store.get(2)  # type: ignore[arg-type]
        with pytest.raises(InvalidKeyError):
            store.scan(3)  # type: ignore[arg-type]
    calls = {name: snap.calls for name, snap in timed.latency().items()}
    assert calls == {
        "get": 2,  # a failed call is timed too
        "set": 1,
        "delete": 0,
        "exists": 0,
        "scan": 2,  # one per scan, however many keys it yields
        "clear": 0,
        "get_many": 1,
        "set_many": 0,
        "delete_many": 0,
        "get_or_set": 0,
        "add": 0,
        "touch": 0,
    }
    assert plain.latency() == {}
    assert "get" not in vars(plain)
    # The counters still count: timing wraps the store's own methods.
    assert timed.stats().operations[("get", "hit")] == 1
    timed.record_latency(False)
    assert timed.latency() == {}
    assert "get" not in vars(timed)


async def test_a_scan_abandoned_early_is_observed_when_closed() -> None:
    store: LocalMemoryStore[Any] = LocalMemoryStore()
    store.record_latency()
    await store.set_many({f"k{i}": i for i in range(300)})
    scan = store.scan("k", batch_size=10)
    async for _ in scan:
        break
    assert store.latency()["scan"].calls == 0
    await scan.aclose()  # type: ignore[attr-defined]
    assert store.latency()["scan"].calls == 1


async def test_latency_on_a_redis_store_measures_the_round_trip(redis_url: str) -> None:
    async with RedisMemoryStore(redis_url, namespace=f"lat-{uuid.uuid4().hex}") as store:
        store.record_latency()
        await store.set("k", "v")
        await asyncio.gather(*(store.get("k") for _ in range(20)))
        snap = store.latency()["get"]
        assert snap.calls == 20
        assert snap.total > 20 * 1e-6  # a network round trip, not a dict lookup
        await store.clear()


# -- found in review -----------------------------------------------------------------


def test_stats_snapshots_pickle_copy_and_hash() -> None:
    stats = LocalMemoryStore().stats()
    assert pickle.loads(pickle.dumps(stats)) == stats
    assert copy.deepcopy(stats) == stats
    assert hash(copy.deepcopy(stats)) == hash(stats)
    assert pickle.loads(pickle.dumps(StoreStats())) == StoreStats()
    with pytest.raises(TypeError):
        stats.operations[("get", "hit")] = 1  # type: ignore[index]


class BrokenStats(LocalMemoryStore[Any]):
    def stats(self) -> StoreStats:
        raise RuntimeError("cannot count")


def test_a_store_that_cannot_report_is_left_out_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stores = {"broken": BrokenStats(), "fine": LocalMemoryStore()}
    registry = CollectorRegistry()
    registry.register(StoreCollector(stores))
    samples = scrape(registry)  # the scrape itself survives
    assert samples[one("memkv_entries", store="fine")] == 0
    assert not any(dict(labels).get("store") == "broken" for _, labels in samples)
    assert "'broken' could not report" in caplog.text


def test_scrapes_while_stores_come_and_go_in_another_thread() -> None:
    manager: MemoryManager[Any] = MemoryManager()
    manager.register_store("stays", LocalMemoryStore())
    registry = CollectorRegistry()
    registry.register(StoreCollector(manager))
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            manager.register_store("churn", LocalMemoryStore(), replace=True)
            manager.unregister_store("churn")

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(2000):
            assert one("memkv_entries", store="stays") in scrape(registry)
    finally:
        stop.set()
        thread.join()


class FailingClock:
    """A clock that raises from its ``fail_at``-th reading on."""

    def __init__(self, fail_at: int) -> None:
        self.reads = 0
        self.fail_at = fail_at

    def __call__(self) -> float:
        self.reads += 1
        if self.reads >= self.fail_at:
            raise OSError("clock gone")
        return 1000.0


async def test_a_scan_that_fails_after_its_first_batch_counts_once(core: str) -> None:
    store = local_store_type(core)(clock=(clock := FailingClock(fail_at=10**9)))
    await store.set_many({f"k{i:03}": i for i in range(30)})
    clock.fail_at = clock.reads + 2  # the first batch reads it once, the second fails
    with pytest.raises(OSError, match="clock gone"):
        [key async for key in store.scan("k", batch_size=10)]
    ops = store.stats().operations
    assert (ops[("scan", "ok")], ops[("scan", "error")]) == (0, 1)
    clock.fail_at = 10**9
    assert len([key async for key in store.scan("k", batch_size=10)]) == 30
    ops = store.stats().operations
    assert (ops[("scan", "ok")], ops[("scan", "error")]) == (1, 1)


async def test_a_failing_first_scan_batch_counts_only_an_error(core: str) -> None:
    clock = FailingClock(fail_at=10**9)
    store = local_store_type(core)(clock=clock)
    clock.fail_at = clock.reads + 1
    with pytest.raises(OSError, match="clock gone"):
        [key async for key in store.scan()]
    ops = store.stats().operations
    assert (ops[("scan", "ok")], ops[("scan", "error")]) == (0, 1)


class ThirdParty(BaseMemoryStore[Any]):
    def __init__(self) -> None:
        self.data: dict[str, MemoryEntry[Any]] = {}

    async def get(self, key: str) -> MemoryEntry[Any] | None:
        return self.data.get(key)

    async def set(
        self, key: str, value: Any, ttl: TTL = None, metadata: Mapping[str, Any] | None = None
    ) -> None:
        self.data[key] = MemoryEntry(key, value)

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def scan(self, pattern: str | None = None, batch_size: int = 100) -> AsyncIterator[str]:
        for key in sorted(self.data):
            if key.startswith(pattern or ""):
                yield key


async def test_latency_of_derived_methods_counts_the_call_made_not_its_parts() -> None:
    store = ThirdParty()
    store.record_latency()
    await store.set_many({f"k{i}": i for i in range(10)})
    await store.get_many(["k1", "k2"])
    assert await store.exists("k1")
    assert await store.delete_many(["k1"]) == 1
    assert await store.clear() == 9
    calls = {name: snap.calls for name, snap in store.latency().items() if snap.calls}
    assert calls == {"set_many": 1, "get_many": 1, "exists": 1, "delete_many": 1, "clear": 1}


async def test_timed_methods_keep_their_name_signature_and_kind() -> None:
    store: LocalMemoryStore[Any] = LocalMemoryStore()
    untimed = inspect.signature(store.get)
    store.record_latency()
    assert inspect.signature(store.get) == untimed
    assert store.get.__name__ == "get"
    assert inspect.iscoroutinefunction(store.get)  # mocks and frameworks check this
    with pytest.raises(TypeError):
        await store.get()  # type: ignore[call-arg]
    assert inspect.iscoroutinefunction(RedisMemoryStore.get)


async def test_a_timed_call_cancelled_before_it_starts_leaves_no_unawaited_coroutine() -> None:
    store: LocalMemoryStore[Any] = LocalMemoryStore()
    store.record_latency()
    task = asyncio.ensure_future(store.get("k"))
    task.cancel()  # before its first step: nothing may be left unawaited
    with pytest.raises(asyncio.CancelledError):
        await task
    gc.collect()  # an unawaited inner coroutine would warn here (warnings are errors)


async def test_a_scan_counts_when_it_ends_and_counts_never_go_down(core: str) -> None:
    store = local_store_type(core)()
    await store.set_many({f"k{i:03}": i for i in range(30)})
    scan = store.scan("k", batch_size=10)
    assert await anext(scan) == "k000"  # type: ignore[call-overload]
    assert store.stats().operations[("scan", "ok")] == 0  # not ended yet
    await scan.aclose()  # type: ignore[attr-defined]
    assert store.stats().operations[("scan", "ok")] == 1
