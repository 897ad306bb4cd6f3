"""A Prometheus collector that reads memkv store counters at scrape time.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> from memkv import MemoryManager
>>> from memkv.metrics.prometheus import StoreCollector
>>> manager = MemoryManager.from_urls({"local": "memory://"}, default="local")
>>> registry = CollectorRegistry()  # or prometheus_client.REGISTRY, the default one
>>> registry.register(StoreCollector(manager))
>>> b'memkv_operations_total{operation="get",result="hit",store="local"} 0.0' in (
...     generate_latest(registry)
... )
True

Exports, each labelled with the store's name (``store``):

- ``memkv_operations_total{operation, result}``: calls by operation (``get``, ``set``,
  ``delete``, ``exists``, ``scan``, ``clear``, ``get_many``, ``set_many``,
  ``delete_many``) and result (``hit``, ``miss``, ``ok``, ``error``);
- ``memkv_lookups_total{result}``: keys read by ``get`` and ``get_many``, by ``hit`` or
  ``miss`` (the hit ratio, batches included);
- ``memkv_entries``: entries held (gauge; only for stores that know it cheaply);
- ``memkv_expired_total``, ``memkv_evictions_total``: entries dropped by TTL or by
  ``max_entries``;
- ``memkv_operation_duration_seconds{operation}``: a histogram, for stores that called
  ``record_latency()``;
- ``memkv_flight_events_total{event}``: what ``get_or_set`` and ``cached`` did beyond
  their calls (``StoreStats.flights``): ``factory_call``, ``factory_error``, ``wait``
  (a caller awaited another caller's factory call), ``refresh`` (a background refresh
  started) and ``lease_wait`` (a fill waited for another process's Redis lease);
- for a Redis store with a near cache (``near_cache=N``): ``memkv_near_cache_lookups_total
  {result}`` (keys served locally, ``hit``, or sent to the server, ``miss``),
  ``memkv_near_cache_invalidations_total`` (keys the server invalidated),
  ``memkv_near_cache_flushes_total`` (times it was emptied) and ``memkv_near_cache_entries``.

Nothing is computed between scrapes: a scrape reads each store's ``stats()`` once.
"""

from __future__ import annotations

from collections.abc import Iterator

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'memkv.metrics.prometheus needs prometheus_client: pip install "memkv[prometheus]"'
    ) from err

from memkv.metrics import (
    FLIGHT_EVENTS,
    PROMETHEUS_PREFIX,
    StoreSource,
    check_metric_prefix,
    check_source,
    snapshot,
)

__all__ = ["StoreCollector"]


class StoreCollector(Collector):
    """Collects every store's figures when Prometheus scrapes; costs nothing between.

    ``namespace`` replaces the ``memkv`` prefix of every metric name. A ``source`` that
    is neither a manager nor a mapping raises ``InvalidArgumentTypeError``, a namespace
    that cannot start a metric name ``InvalidArgumentError``, here rather than at scrape.
    """

    def __init__(self, source: StoreSource, namespace: str = "memkv") -> None:
        self._source = check_source(source)
        self._namespace = check_metric_prefix(namespace, PROMETHEUS_PREFIX)

    def collect(self) -> Iterator[Metric]:
        ns = self._namespace
        samples = list(snapshot(self._source))
        operations = CounterMetricFamily(
            f"{ns}_operations",
            "Store calls by operation and result (hit, miss, ok, error)",
            labels=["store", "operation", "result"],
        )
        lookups = CounterMetricFamily(
            f"{ns}_lookups",
            "Keys read by get and get_many, by result (hit or miss)",
            labels=["store", "result"],
        )
        entries = GaugeMetricFamily(f"{ns}_entries", "Entries held by the store", labels=["store"])
        expired = CounterMetricFamily(
            f"{ns}_expired", "Entries dropped because their TTL ran out", labels=["store"]
        )
        evictions = CounterMetricFamily(
            f"{ns}_evictions", "Entries dropped to respect max_entries", labels=["store"]
        )
        near_lookups = CounterMetricFamily(
            f"{ns}_near_cache_lookups",
            "Keys looked up in a Redis store's near cache, by result (hit or miss)",
            labels=["store", "result"],
        )
        near_invalidations = CounterMetricFamily(
            f"{ns}_near_cache_invalidations",
            "Keys the server invalidated in a Redis store's near cache",
            labels=["store"],
        )
        near_flushes = CounterMetricFamily(
            f"{ns}_near_cache_flushes",
            "Times a Redis store's near cache was emptied (flush, lost connection)",
            labels=["store"],
        )
        near_entries = GaugeMetricFamily(
            f"{ns}_near_cache_entries",
            "Copies held by a Redis store's near cache",
            labels=["store"],
        )
        durations = HistogramMetricFamily(
            f"{ns}_operation_duration_seconds",
            "Time spent in store calls, for stores that record latency",
            labels=["store", "operation"],
        )
        flights = CounterMetricFamily(
            f"{ns}_flight_events",
            "get_or_set and cached events: factory calls and errors, waits, refreshes, "
            "lease waits",
            labels=["store", "event"],
        )
        for name, stats, latency in samples:
            for event, count in zip(FLIGHT_EVENTS, stats.flights, strict=True):
                flights.add_metric([name, event], count)
            for (operation, result), count in stats.operations.items():
                operations.add_metric([name, operation, result], count)
            lookups.add_metric([name, "hit"], stats.hits)
            lookups.add_metric([name, "miss"], stats.misses)
            if stats.entries is not None:
                entries.add_metric([name], stats.entries)
            expired.add_metric([name], stats.expired)
            evictions.add_metric([name], stats.evictions)
            near = stats.near_cache
            if near is not None:
                near_lookups.add_metric([name, "hit"], near.hits)
                near_lookups.add_metric([name, "miss"], near.misses)
                near_invalidations.add_metric([name], near.invalidations)
                near_flushes.add_metric([name], near.flushes)
                near_entries.add_metric([name], near.entries)
            for operation, histogram in latency.items():
                durations.add_metric(
                    [name, operation],
                    [(_bound(bound), count) for bound, count in histogram.cumulative()],
                    histogram.total,
                )
        yield from (operations, lookups, entries, expired, evictions, flights)
        if near_lookups.samples:
            yield from (near_lookups, near_invalidations, near_flushes, near_entries)
        if durations.samples:
            yield durations


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
