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
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, TypeAlias

from memkv.errors import InvalidArgumentError, InvalidArgumentTypeError
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


def check_source(source: object) -> StoreSource:
    """Return ``source`` if it is a ``MemoryManager`` or a mapping (of names to stores),
    else raise ``InvalidArgumentTypeError``; the exporters check it when set up."""
    if not isinstance(source, (MemoryManager, Mapping)):
        raise InvalidArgumentTypeError(
            "expected a MemoryManager or a mapping of names to stores, "
            f"not {type(source).__name__}"
        )
    return source


#: What may start a Prometheus metric name, and an OpenTelemetry instrument name.
PROMETHEUS_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
OTEL_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_./-]{0,200}")


def check_metric_prefix(prefix: object, pattern: re.Pattern[str]) -> str:
    """Return ``prefix`` if it is a ``str`` that ``pattern`` matches (one of the
    ``*_PREFIX`` patterns), else raise ``InvalidArgumentTypeError`` (not a ``str``) or
    ``InvalidArgumentError``."""
    if not isinstance(prefix, str):
        raise InvalidArgumentTypeError(
            f"a metric name prefix must be a str, not {type(prefix).__name__}"
        )
    if not pattern.fullmatch(prefix):
        raise InvalidArgumentError(
            f"{prefix!r} cannot start a metric name (it must match {pattern.pattern})"
        )
    return prefix


def snapshot(source: StoreSource) -> Iterator[StoreSample]:
    """A ``StoreSample`` for each store of ``source``, read now.

    A store whose ``stats()`` or ``latency()`` raises is left out of this collection
    (and logged on the ``memkv.metrics`` logger), so that one broken store cannot take
    every other store's metrics, or the whole scrape, down with it. A ``source`` that is
    neither a manager nor a mapping raises ``InvalidArgumentTypeError`` at once.
    """
    check_source(source)
    return _samples(source)


def _samples(source: StoreSource) -> Iterator[StoreSample]:
    # One atomic copy: a manager may gain or lose stores in another thread meanwhile.
    stores = source.stores if isinstance(source, MemoryManager) else dict(source)
    for name, store in stores.items():
        try:
            sample = StoreSample(name, store.stats(), store.latency())
        except Exception:
            _log.exception("memkv store %r could not report its metrics", name)
            continue
        yield sample
