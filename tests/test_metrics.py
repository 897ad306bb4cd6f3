"""Metrics exporters read store counters at scrape time, from real client libraries."""

from __future__ import annotations

from typing import Any

import pytest

from memkv import LocalMemoryStore, MemoryManager

prometheus_client = pytest.importorskip("prometheus_client")


@pytest.fixture
async def manager() -> MemoryManager[Any]:
    manager: MemoryManager[Any] = MemoryManager()
    manager.register_store("sessions", LocalMemoryStore(), default=True)
    manager.register_store("cache", LocalMemoryStore(max_entries=1))
    await manager.set("a", 1)
    await manager.get("a")
    await manager.get("missing")
    await manager.set("x", 1, store="cache")
    await manager.set("y", 2, store="cache")  # evicts x
    return manager


async def test_prometheus_collector_exports_counters_at_scrape(
    manager: MemoryManager[Any],
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from memkv.metrics.prometheus import StoreCollector

    registry = CollectorRegistry()
    registry.register(StoreCollector(manager))
    text = generate_latest(registry).decode()
    assert 'memkv_gets_total{store="sessions"} 2.0' in text
    assert 'memkv_hits_total{store="sessions"} 1.0' in text
    assert 'memkv_evictions_total{store="cache"} 1.0' in text
    assert 'memkv_entries{store="cache"} 1.0' in text
    await manager.get("a")  # counters move between scrapes without any metric call
    assert 'memkv_gets_total{store="sessions"} 3.0' in generate_latest(registry).decode()


async def test_opentelemetry_instruments_observe_counters(manager: MemoryManager[Any]) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from memkv.metrics.opentelemetry import instrument

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrument(provider.get_meter("memkv-test"), manager)
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, dict(point.attributes or {})["store"]): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    }
    assert points[("memkv.gets", "sessions")] == 2
    assert points[("memkv.misses", "sessions")] == 1
    assert points[("memkv.evictions", "cache")] == 1
    assert points[("memkv.entries", "sessions")] == 1
    provider.shutdown()
