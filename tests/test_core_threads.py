"""Eight threads hammering one core: no crash, no lost invariant, counters that add up.

Values whose ``__del__`` runs Python code (and calls back into the store) are released
while other threads run, so any structure left half-updated before a release would
show up here as a crash or a failed ``_check()``.
"""

from __future__ import annotations

import gc
import random
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from memkv import _core_py
from memkv.errors import ReentrantCallError
from tests.helpers import FakeClock, core_module

THREADS = 8
OPERATIONS = 3000
#: Calls the pure-Python core refused from a finalizer run mid-operation.
REFUSED: list[int] = []


class CallsBack:
    """A value whose release reads and writes the store it was stored in."""

    def __init__(self, core: Any, key: str) -> None:
        self.core = core
        self.key = key

    def __del__(self) -> None:
        self.core.get(self.key)
        self.core.exists("callback")
        self.core.set("callback", self.key, 0.01)


class Cycle:
    """A value in a reference cycle, so only the cyclic GC releases it."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.me = self

    def __del__(self) -> None:
        try:
            self.core.delete("callback")
        except ReentrantCallError:
            # Only the pure-Python core refuses a call from a finalizer that the
            # cyclic GC runs in the middle of one of its operations.
            assert isinstance(self.core, _core_py.LocalCore)
            REFUSED.append(1)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def hammer(core: Any, seed: int, errors: list[BaseException], cycles: bool) -> None:
    rng = random.Random(seed)
    keys = [f"k{i:02d}" for i in range(40)]
    try:
        for _ in range(OPERATIONS):
            key = rng.choice(keys)
            op = rng.randrange(12)
            if op < 3:
                value: Any = rng.choice(
                    [CallsBack(core, key), Cycle(core) if cycles else None, [key], key]
                )
                core.set(key, value, rng.choice([None, 0.001, 0.01, 1]), rng.choice([None, {}]))
            elif op < 5:
                core.get(key)
            elif op == 5:
                core.exists(key)
            elif op == 6:
                core.delete(key)
            elif op == 7:
                core.get_many(rng.sample(keys, 5))
            elif op == 8:
                core.set_many([(k, CallsBack(core, k)) for k in rng.sample(keys, 3)], 0.005)
            elif op == 9:
                core.delete_many(rng.sample(keys, 3))
            elif op == 10:
                after = None
                while True:
                    _, after = core.scan_batch("k", after, 7)
                    if after is None:
                        break
            elif rng.random() < 0.05:
                core.clear(rng.choice([None, "k1", "k2"]))
            else:
                core.purge_expired()
    except BaseException as error:
        errors.append(error)


def run_threads(core: Any, cycles: bool) -> None:
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=hammer, args=(core, seed, errors, cycles))
        for seed in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    gc.collect()
    core._check()
    counters = core.counters()
    assert counters.gets == counters.hits + counters.misses


@pytest.mark.usefixtures("fast_switching")
@pytest.mark.parametrize("clock", ["default", "fake"])
@pytest.mark.parametrize("max_entries", [None, 16])
def test_threads_hammering_one_core_keep_it_consistent(
    core: str, clock: str, max_entries: int | None
) -> None:
    module = core_module(core)
    made: Callable[[], float] | None = FakeClock() if clock == "fake" else None
    # A collection triggered inside a pure-Python core operation runs Cycle.__del__,
    # which calls the core: that core refuses with ReentrantCallError (no deadlock);
    # the Cython core serves it.
    run_threads(module.LocalCore(max_entries, made), cycles=True)


@pytest.mark.usefixtures("fast_switching")
def test_values_released_in_a_callback_cascade(core: str) -> None:
    # Each value's release stores a new value that releases the next one.
    module = core_module(core)
    store = module.LocalCore()

    class Chain:
        def __init__(self, depth: int) -> None:
            self.depth = depth

        def __del__(self) -> None:
            if self.depth:
                store.set(f"chain{self.depth % 3}", Chain(self.depth - 1))

    for i in range(3):
        store.set(f"chain{i}", Chain(50))
    store.clear()
    store._check()
    assert len(store) <= 3


def test_a_call_from_inside_an_operation_is_refused_not_deadlocked(core: str) -> None:
    # An injected clock runs inside each operation: calling back from it stands in for
    # a finalizer that the cyclic GC runs mid-operation.
    module = core_module(core)
    holder: list[Any] = []
    refused: list[BaseException] = []

    def clock() -> float:
        if holder:
            try:
                holder[0].get("a")
            except ReentrantCallError as error:
                refused.append(error)
        return 1000.0

    store = module.LocalCore(None, clock)
    holder.append(store)
    store.set("a", 1)
    assert len(refused) == 1
    assert isinstance(refused[0], RuntimeError)
    holder.clear()
    entry = store.get("a")
    assert entry is not None
    assert entry.value == 1
    store._check()
