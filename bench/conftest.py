"""Shared helpers for the benchmarks: paired timing, the gate mode, and the figures table.

Every figure is a ratio against a baseline timed in the same run, in alternating bursts
(best of each), because this kind of machine drifts by tens of percent between runs.
With ``MEMKV_BENCH_GATE=1`` (CI, with ``--benchmark-disable``) sizes shrink and only the
original floors are asserted (< 1 ms per operation, > 10k ops/s); the goals are
reported in the table printed at the end, never asserted, so the gate never flickers.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.redis_servers import RedisServer, server_binary

GATE = bool(os.environ.get("MEMKV_BENCH_GATE"))
#: Bursts per side when pairing a subject with its baseline.
ROUNDS = 1 if GATE else 5
#: Entries in the "large store" figures (1,000,000 outside the gate).
LARGE = 100_000 if GATE else 1_000_000
#: Floors asserted in every mode.
FLOOR_OPS_PER_SECOND = 10_000
FLOOR_SECONDS_PER_OP = 1e-3


@dataclass
class Figure:
    name: str
    measured: str
    baseline: str
    ratio: str
    goal: str
    met: bool | None


FIGURES: list[Figure] = []


def record(figure: Figure) -> None:
    FIGURES.append(figure)


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def paired(
    subject: Callable[[], Any], baseline: Callable[[], Any], rounds: int = ROUNDS
) -> tuple[float, float]:
    """Best seconds of ``subject`` and of ``baseline``, timed in alternating bursts."""
    best_subject = best_baseline = float("inf")
    for _ in range(rounds):
        best_baseline = min(best_baseline, timed(baseline))
        best_subject = min(best_subject, timed(subject))
    return best_subject, best_baseline


def assert_floor(operations: int, seconds: float) -> None:
    """The original floors: under 1 ms per operation and over 10k operations/s."""
    assert seconds / operations < FLOOR_SECONDS_PER_OP
    assert operations / seconds > FLOOR_OPS_PER_SECOND


def rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f} M/s"
    return f"{value / 1e3:.0f} k/s"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    made = asyncio.new_event_loop()
    yield made
    made.close()


def run_fresh(
    loop: asyncio.AbstractEventLoop, make: Callable[[], Awaitable[Any]]
) -> Callable[[], Any]:
    """A zero-argument callable that runs a fresh coroutine from ``make`` to completion."""
    return lambda: loop.run_until_complete(make())


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop per benchmark module, for its clients and every burst it times."""
    with asyncio.Runner() as opened:
        yield opened


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis server of the module's own (``tests/redis_servers.py`` picks the binary)."""
    started = RedisServer(server_binary(), tmp_path_factory.mktemp("bench-redis"))
    started.start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def url(request: pytest.FixtureRequest) -> str:
    """``REDIS_URL`` when set (benchmark a server of your own), else ``server``'s URL."""
    external = os.environ.get("REDIS_URL")
    if external:
        return external
    started: RedisServer = request.getfixturevalue("server")
    return started.url


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    write = terminalreporter.write_line
    mode = "gate mode (small sizes)" if GATE else "full sizes"
    write("")
    write(f"memkv figures ({mode}); ratios are against a baseline timed in the same run")
    write("| figure | memkv | baseline | ratio | goal | met |")
    write("| --- | --- | --- | --- | --- | --- |")
    for figure in FIGURES:
        met = "" if figure.met is None else ("yes" if figure.met else "**no**")
        write(
            f"| {figure.name} | {figure.measured} | {figure.baseline} | {figure.ratio} "
            f"| {figure.goal} | {met} |"
        )
    out = Path(".benchmarks")
    out.mkdir(exist_ok=True)
    (out / "memkv-figures.json").write_text(
        json.dumps({"gate": GATE, "figures": [asdict(f) for f in FIGURES]}, indent=2)
    )
