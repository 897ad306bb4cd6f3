"""OpenTelemetry observable instruments that read memkv store counters at collection time.

>>> from opentelemetry import metrics
>>> from memkv.metrics.opentelemetry import instrument
>>> instrument(metrics.get_meter("memkv"), manager)  # doctest: +SKIP

Creates one observable counter per ``StoreStats`` counter (``memkv.gets``, …) and an
observable gauge ``memkv.entries``, each with a ``store`` attribute. The callbacks run
only when a metric reader collects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

try:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'memkv.metrics.opentelemetry needs opentelemetry-api: pip install "memkv[otel]"'
    ) from err

from memkv.metrics import COUNTERS, StoreSource, snapshot

__all__ = ["instrument"]


def instrument(meter: Meter, source: StoreSource, prefix: str = "memkv") -> None:
    """Register observable instruments on ``meter`` for every store of ``source``."""

    def counter_callback(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(getattr(stats, field), {"store": name})
                for name, stats in snapshot(source)
            ]

        return observe

    for field, help_text in COUNTERS.items():
        meter.create_observable_counter(
            f"{prefix}.{field}", callbacks=[counter_callback(field)], description=help_text
        )

    def observe_entries(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(stats.entries, {"store": name})
            for name, stats in snapshot(source)
            if stats.entries is not None
        ]

    meter.create_observable_gauge(
        f"{prefix}.entries", callbacks=[observe_entries], description="Entries held by the store"
    )
