"""OpenTelemetry observable instruments that read memkv store counters at collection.

>>> from opentelemetry import metrics
>>> from memkv.metrics.otel import instrument
>>> instrument(metrics.get_meter("memkv"), manager)  # doctest: +SKIP

Registers, each with a ``store`` attribute (the store's name):

- ``memkv.operations`` (counter, ``{call}``): calls by ``operation`` and ``result``
  (``hit``, ``miss``, ``ok``, ``error``);
- ``memkv.lookups`` (counter, ``{key}``): keys read by ``get``/``get_many``, by
  ``result`` (``hit``, ``miss``);
- ``memkv.entries`` (gauge, ``{entry}``): entries held, for stores that know it;
- ``memkv.expired`` and ``memkv.evictions`` (counters, ``{entry}``).

The callbacks run only when a metric reader collects; each reads the stores' ``stats()``
(a few microseconds per store). Latency histograms (``store.record_latency()``) are exported by the
Prometheus collector only: OpenTelemetry has no asynchronous histogram, and recording
each call into a synchronous one would put the metrics library on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

try:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'memkv.metrics.otel needs opentelemetry-api: pip install "memkv[otel]"'
    ) from err

from memkv.metrics import StoreSample, StoreSource, snapshot

__all__ = ["instrument"]


def instrument(meter: Meter, source: StoreSource, prefix: str = "memkv") -> None:
    """Register observable instruments on ``meter`` for every store of ``source``.

    Stores registered on a manager later are picked up at the next collection.
    """

    def observer(
        observe: Callable[[StoreSample], Iterable[Observation]],
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [point for sample in snapshot(source) for point in observe(sample)]

        return callback

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

    meter.create_observable_counter(
        f"{prefix}.operations",
        callbacks=[observer(operations)],
        unit="{call}",
        description="Store calls by operation and result (hit, miss, ok, error)",
    )
    meter.create_observable_counter(
        f"{prefix}.lookups",
        callbacks=[observer(lookups)],
        unit="{key}",
        description="Keys read by get and get_many, by result (hit or miss)",
    )
    meter.create_observable_gauge(
        f"{prefix}.entries",
        callbacks=[observer(entries)],
        unit="{entry}",
        description="Entries held by the store",
    )
    meter.create_observable_counter(
        f"{prefix}.expired",
        callbacks=[observer(expired)],
        unit="{entry}",
        description="Entries dropped because their TTL ran out",
    )
    meter.create_observable_counter(
        f"{prefix}.evictions",
        callbacks=[observer(evictions)],
        unit="{entry}",
        description="Entries dropped to respect max_entries",
    )
