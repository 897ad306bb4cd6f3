"""A Prometheus collector that reads memkv store counters at scrape time.

>>> from prometheus_client import REGISTRY
>>> from memkv.metrics.prometheus import StoreCollector
>>> REGISTRY.register(StoreCollector(manager))  # doctest: +SKIP

Exports ``memkv_<counter>_total{store="name"}`` for each ``StoreStats`` counter and the
gauge ``memkv_entries{store="name"}`` where a store knows its size.
"""

from __future__ import annotations

from collections.abc import Iterator

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'memkv.metrics.prometheus needs prometheus_client: pip install "memkv[prometheus]"'
    ) from err

from memkv.metrics import COUNTERS, StoreSource, snapshot

__all__ = ["StoreCollector"]


class StoreCollector(Collector):
    """Collects every store's ``stats()`` when Prometheus scrapes; costs nothing between."""

    def __init__(self, source: StoreSource, namespace: str = "memkv") -> None:
        self._source = source
        self._namespace = namespace

    def collect(self) -> Iterator[Metric]:
        stats = list(snapshot(self._source))
        for field, help_text in COUNTERS.items():
            family = CounterMetricFamily(f"{self._namespace}_{field}", help_text, labels=["store"])
            for name, snap in stats:
                family.add_metric([name], getattr(snap, field))
            yield family
        entries = GaugeMetricFamily(
            f"{self._namespace}_entries", "Entries held by the store", labels=["store"]
        )
        for name, snap in stats:
            if snap.entries is not None:
                entries.add_metric([name], snap.entries)
        yield entries
