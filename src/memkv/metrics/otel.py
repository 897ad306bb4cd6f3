"""OpenTelemetry observable instruments that read memkv store counters at collection.

>>> from opentelemetry import metrics
>>> from memkv import MemoryManager
>>> from memkv.metrics.otel import instrument
>>> manager = MemoryManager.from_urls({"local": "memory://"}, default="local")
>>> instrument(metrics.get_meter("memkv"), manager)

Registers, each with a ``store`` attribute (the store's name):

- ``memkv.operations`` (counter, ``{call}``): calls by ``operation`` and ``result``
  (``hit``, ``miss``, ``ok``, ``error``);
- ``memkv.lookups`` (counter, ``{key}``): keys read by ``get``/``get_many``, by
  ``result`` (``hit``, ``miss``);
- ``memkv.entries`` (gauge, ``{entry}``): entries held, for stores that know it;
- ``memkv.expired`` and ``memkv.evictions`` (counters, ``{entry}``);
- ``memkv.flight_events`` (counter, ``{event}``): what ``get_or_set`` and ``cached`` did
  beyond their calls, by ``event`` (``factory_call``, ``factory_error``, ``wait``,
  ``refresh``, ``lease_wait``);
- for a Redis store with a near cache: ``memkv.near_cache.lookups`` (counter, ``{key}``,
  by ``result``: ``hit`` served locally, ``miss`` sent to the server),
  ``memkv.near_cache.invalidations`` (counter, ``{key}``), ``memkv.near_cache.flushes``
  (counter, ``{flush}``) and ``memkv.near_cache.entries`` (gauge, ``{entry}``).

The callbacks run only when a metric reader collects; each reads the stores' ``stats()``
(a few microseconds per store). Latency histograms (``store.record_latency()``) are exported by the
Prometheus collector only: OpenTelemetry has no asynchronous histogram, and recording
each call into a synchronous one would put the metrics library on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

try:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'memkv.metrics.otel needs opentelemetry-api: pip install "memkv[otel]"'
    ) from err

from memkv.errors import InvalidArgumentTypeError
from memkv.metrics import (
    FLIGHT_EVENTS,
    OTEL_PREFIX,
    StoreSample,
    StoreSource,
    check_metric_prefix,
    check_source,
    snapshot,
)

__all__ = ["instrument"]


#: Turns one store's sample into an instrument's observations.
Observer = Callable[[StoreSample], Iterable[Observation]]


def instrument(meter: Meter, source: StoreSource, prefix: str = "memkv") -> None:
    """Register observable instruments on ``meter`` for every store of ``source``.

    Stores registered on a manager later are picked up at the next collection. A
    ``meter`` that is not an OpenTelemetry ``Meter`` or a ``source`` that is neither a
    manager nor a mapping raises ``InvalidArgumentTypeError``; a ``prefix`` that cannot
    start a metric name raises ``InvalidArgumentError``.
    """
    if not isinstance(meter, Meter):
        raise InvalidArgumentTypeError(
            f"meter must be an OpenTelemetry Meter, not {type(meter).__name__}"
        )
    check_source(source)
    check_metric_prefix(prefix, OTEL_PREFIX)

    def operations(sample: StoreSample) -> Iterable[Observation]:
        for (operation, result), count in sample.stats.operations.items():
            yield Observation(
                count, {"store": sample.name, "operation": operation, "result": result}
            )

    def lookups(sample: StoreSample) -> Iterable[Observation]:
        yield Observation(sample.stats.hits, {"store": sample.name, "result": "hit"})
        yield Observation(sample.stats.misses, {"store": sample.name, "result": "miss"})

    def entries(sample: StoreSample) -> Iterable[Observation]:
        if sample.stats.entries is not None:
            yield Observation(sample.stats.entries, {"store": sample.name})

    def expired(sample: StoreSample) -> Iterable[Observation]:
        yield Observation(sample.stats.expired, {"store": sample.name})

    def evictions(sample: StoreSample) -> Iterable[Observation]:
        yield Observation(sample.stats.evictions, {"store": sample.name})

    def flights(sample: StoreSample) -> Iterable[Observation]:
        for event, count in zip(FLIGHT_EVENTS, sample.stats.flights, strict=True):
            yield Observation(count, {"store": sample.name, "event": event})

    def near_lookups(sample: StoreSample) -> Iterable[Observation]:
        near = sample.stats.near_cache
        if near is not None:
            yield Observation(near.hits, {"store": sample.name, "result": "hit"})
            yield Observation(near.misses, {"store": sample.name, "result": "miss"})

    def near_invalidations(sample: StoreSample) -> Iterable[Observation]:
        if sample.stats.near_cache is not None:
            yield Observation(sample.stats.near_cache.invalidations, {"store": sample.name})

    def near_flushes(sample: StoreSample) -> Iterable[Observation]:
        if sample.stats.near_cache is not None:
            yield Observation(sample.stats.near_cache.flushes, {"store": sample.name})

    def near_entries(sample: StoreSample) -> Iterable[Observation]:
        if sample.stats.near_cache is not None:
            yield Observation(sample.stats.near_cache.entries, {"store": sample.name})

    counter, gauge = meter.create_observable_counter, meter.create_observable_gauge
    instruments: list[tuple[Any, str, Observer, str, str]] = [
        (counter, "operations", operations, "{call}", "Store calls by operation and result"),
        (counter, "lookups", lookups, "{key}", "Keys read by get and get_many, by result"),
        (gauge, "entries", entries, "{entry}", "Entries held by the store"),
        (counter, "expired", expired, "{entry}", "Entries dropped because their TTL ran out"),
        (counter, "evictions", evictions, "{entry}", "Entries dropped to respect max_entries"),
        (
            counter,
            "flight_events",
            flights,
            "{event}",
            "get_or_set and cached events: factory calls and errors, waits, refreshes, "
            "lease waits",
        ),
        (
            counter,
            "near_cache.lookups",
            near_lookups,
            "{key}",
            "Keys looked up in a Redis store's near cache, by result",
        ),
        (
            counter,
            "near_cache.invalidations",
            near_invalidations,
            "{key}",
            "Keys the server invalidated in a Redis store's near cache",
        ),
        (
            counter,
            "near_cache.flushes",
            near_flushes,
            "{flush}",
            "Times a Redis store's near cache was emptied",
        ),
        (gauge, "near_cache.entries", near_entries, "{entry}", "Copies held by a near cache"),
    ]
    for create, name, observe, unit, description in instruments:
        create(
            f"{prefix}.{name}",
            callbacks=[_callback(source, observe)],
            unit=unit,
            description=description,
        )


def _callback(
    source: StoreSource, observe: Observer
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """An instrument callback: reads every store of ``source`` when the reader collects."""

    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [point for sample in snapshot(source) for point in observe(sample)]

    return callback
