"""Exporters that read store counters at scrape time (no per-operation metric calls).

Stores count in plain integers on the hot path (C integers in the Cython core);
``stats()`` and ``latency()`` snapshot them. The exporters here turn those snapshots
into metrics only when the metrics backend asks:

- ``memkv.metrics.prometheus.StoreCollector`` (extra ``prometheus``), a custom
  ``prometheus_client`` collector;
- ``memkv.metrics.otel.instrument`` (extra ``otel``), OpenTelemetry observable
  instruments on a ``Meter`` you give.

Both take a ``MemoryManager`` (every store registered at collection time, by name) or a
``{name: store}`` mapping, and export the same figures: calls by operation and result,
keys read by result, entries held, entries expired and entries evicted, and the events of
``get_or_set``/``cached`` (factory calls and errors, waits, refreshes, lease waits).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, TypeAlias

from memkv.latency import LatencySnapshot
from memkv.manager import MemoryManager
from memkv.store import MemoryStore, StoreStats

__all__ = ["FLIGHT_EVENTS", "StoreSample", "StoreSource", "snapshot"]

#: The ``event`` label of each ``StoreStats.flights`` field, in its order.
FLIGHT_EVENTS = ("factory_call", "factory_error", "wait", "refresh", "lease_wait")

#: What an exporter reads: a manager (every registered store) or a name-to-store mapping.
StoreSource: TypeAlias = MemoryManager[Any] | Mapping[str, MemoryStore[Any]]


class StoreSample(NamedTuple):
    """One store's figures, read at one collection."""

    name: str
    stats: StoreStats
    latency: Mapping[str, LatencySnapshot]


_log = logging.getLogger("memkv.metrics")


def snapshot(source: StoreSource) -> Iterator[StoreSample]:
    """A ``StoreSample`` for each store of ``source``, read now.

    A store whose ``stats()`` or ``latency()`` raises is left out of this collection
    (and logged on the ``memkv.metrics`` logger), so that one broken store cannot take
    every other store's metrics, or the whole scrape, down with it.
    """
    # One atomic copy: a manager may gain or lose stores in another thread meanwhile.
    stores = source.stores if isinstance(source, MemoryManager) else dict(source)
    for name, store in stores.items():
        try:
            sample = StoreSample(name, store.stats(), store.latency())
        except Exception:
            _log.exception("memkv store %r could not report its metrics", name)
            continue
        yield sample
