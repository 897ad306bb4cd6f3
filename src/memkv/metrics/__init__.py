"""Exporters that read store counters at scrape time (no per-operation metric calls).

Stores count in plain integers on the hot path; ``stats()`` snapshots them. The
exporters here turn those snapshots into Prometheus or OpenTelemetry metrics only when
the metrics backend asks: ``memkv.metrics.prometheus`` (extra ``prometheus``) and
``memkv.metrics.opentelemetry`` (extra ``otel``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias

from memkv.manager import MemoryManager
from memkv.store import MemoryStore, StoreStats

__all__ = ["COUNTERS", "StoreSource", "snapshot"]

#: The ``StoreStats`` fields exported as monotonic counters, with their help text.
COUNTERS: Mapping[str, str] = {
    "gets": "Keys looked up",
    "hits": "Lookups that found a live entry",
    "misses": "Lookups that found nothing",
    "sets": "Entries written",
    "deletes": "Live entries removed by delete, delete_many or clear",
    "expired": "Entries dropped because their TTL ran out",
    "evictions": "Entries dropped to respect max_entries",
}

#: What an exporter reads: a manager (every registered store) or a name-to-store mapping.
StoreSource: TypeAlias = MemoryManager[Any] | Mapping[str, MemoryStore[Any]]


def snapshot(source: StoreSource) -> Iterator[tuple[str, StoreStats]]:
    """``(store name, stats)`` for each store of ``source``, read now."""
    if isinstance(source, MemoryManager):
        stores = {name: source.store(name) for name in source.names}
    else:
        stores = dict(source)
    for name, store in stores.items():
        yield name, store.stats()
