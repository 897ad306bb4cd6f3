"""Opt-in operation latency histograms: fixed buckets counted in plain integers.

A store records latency only after ``store.record_latency()``; until then its methods
run untouched and cost nothing extra. Once enabled, each public operation of that store
instance is wrapped to time the call with ``time.perf_counter`` and add it to a
``LatencyHistogram`` (one bisect and two additions, no metrics library). Exporters
read ``store.latency()`` at scrape time, like every other counter.
"""

from __future__ import annotations

import functools
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, NamedTuple, TypeVar

__all__ = ["BUCKETS", "LatencyHistogram", "LatencySnapshot", "timed_call", "timed_scan"]

R = TypeVar("R")

#: Upper bounds in seconds, from 1 µs (a local ``get``) to 10 s (a Redis outage with
#: retries); an observation above the last falls in the implicit ``+Inf`` bucket.
BUCKETS: tuple[float, ...] = (
    1e-6,
    2.5e-6,
    5e-6,
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencySnapshot(NamedTuple):
    """One operation's histogram at one moment.

    ``counts[i]`` is how many calls took at most ``bounds[i]`` seconds and more than
    ``bounds[i - 1]``; the last item of ``counts`` (one more than ``bounds``) holds the
    calls above the last bound. ``total`` is their sum in seconds.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    @property
    def calls(self) -> int:
        """How many calls were observed."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, calls at or below it)`` pairs, ending with ``(inf, calls)``."""
        pairs = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


class LatencyHistogram:
    """Counts durations into ``BUCKETS``. Not locked: meant for one event loop's calls."""

    __slots__ = ("_counts", "_total")

    def __init__(self) -> None:
        self._counts = [0] * (len(BUCKETS) + 1)
        # A one-item list, so the timing wrapper adds to it without an attribute write.
        self._total = [0.0]

    def observe(self, seconds: float) -> None:
        """Add one call that took ``seconds``."""
        self._counts[bisect_left(BUCKETS, seconds)] += 1
        self._total[0] += seconds

    def snapshot(self) -> LatencySnapshot:
        return LatencySnapshot(BUCKETS, tuple(self._counts), self._total[0])


def timed_call(
    method: Callable[..., Coroutine[Any, Any, R]], histogram: LatencyHistogram
) -> Callable[..., Coroutine[Any, Any, R]]:
    """``method`` (a bound coroutine method) timed into ``histogram``, errors included.

    The wrapper is a coroutine function with ``method``'s name and signature.
    """
    clock = time.perf_counter
    counts = histogram._counts
    total = histogram._total

    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> R:
        start = clock()
        try:
            return await method(*args, **kwargs)
        finally:
            # observe(), inlined: this runs on every call of a timed store.
            elapsed = clock() - start
            counts[bisect_left(BUCKETS, elapsed)] += 1
            total[0] += elapsed

    return timed


def timed_scan(
    method: Callable[..., AsyncIterator[str]], histogram: LatencyHistogram
) -> Callable[..., AsyncIterator[str]]:
    """``scan`` timed into ``histogram``: one observation per scan.

    The time counted is the time spent inside the store (argument checks and every
    step of the iterator), not the time the caller spends between keys. A scan is
    observed when it ends, fails or is closed.
    """
    clock = time.perf_counter

    @functools.wraps(method)
    def scan(*args: Any, **kwargs: Any) -> AsyncIterator[str]:
        start = clock()
        try:
            iterator = method(*args, **kwargs)
        except BaseException:
            histogram.observe(clock() - start)
            raise
        return _timed_steps(iterator, histogram, clock() - start)

    return scan


async def _timed_steps(
    iterator: AsyncIterator[str], histogram: LatencyHistogram, spent: float
) -> AsyncIterator[str]:
    clock = time.perf_counter
    try:
        while True:
            start = clock()
            try:
                key = await iterator.__anext__()
            except StopAsyncIteration:
                spent += clock() - start
                return
            spent += clock() - start
            yield key
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
        histogram.observe(spent)
