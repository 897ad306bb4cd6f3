"""Hostile callers of both local cores: nothing done from Python may corrupt or crash them.

The cores file entries by key and expiry in structures of their own (the Cython core
holds borrowed C pointers to its entries), so every way Python code can reach a stored
entry is tried here: ``__init__`` again, attribute writes and deletes, ``__class__``,
copy and pickle, comparison; values whose finalizers call back into the store; and
exceptions delivered in the middle of a call (``sys.settrace`` raises
``KeyboardInterrupt`` at every line and call event in turn, as a signal handler could).
After each, the core keeps working and ``_check()`` holds.

``HostileMachine`` mixes all of these at random (hypothesis). The normal run gives it a
few seconds per core; ``MEMKV_FUZZ_SECONDS`` gives it a longer budget (CI runs it so).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import datetime, timezone
from types import FrameType
from typing import Any

import pytest
import sortedcontainers
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import memkv
from memkv.errors import (
    FrozenEntryError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemKVError,
    ReentrantCallError,
)
from tests import conftest
from tests.conftest import FakeClock, core_module

#: Where the code a core call runs lives: memkv, its sorted index, the fake clock. Other
#: code that happens to run meanwhile (a GC callback of hypothesis) is not interrupted.
TRACED = (
    os.path.dirname(memkv.__file__),
    os.path.dirname(sortedcontainers.__file__),
    conftest.__file__,
)
FROZEN_ATTRIBUTES = [
    "key",
    "metadata",
    "created_at",
    "updated_at",
    "expires_at",
    "_key",
    "_metadata",
    "_created",
    "_updated",
    "_expires",
    "__class__",
    "anything_else",
]


# -- exceptions injected mid-call ---------------------------------------------------


class Injected(KeyboardInterrupt):
    """The interrupt the tests deliver (a ``KeyboardInterrupt``, as from Ctrl-C)."""


def call_interrupted(call: Callable[[Any], Any], core: Any, event: int) -> bool:
    """Call ``call(core)``, raising ``Injected`` at its ``event``-th trace event.

    Only events of the code a core runs are counted (``TRACED``: not the tests' own
    frames and finalizers). Returns whether the call finished before that event, so a
    caller knows when every point has been tried.
    """
    seen = 0

    def trace(frame: FrameType, what: str, arg: Any) -> Any:
        nonlocal seen
        if not frame.f_code.co_filename.startswith(TRACED):
            return None
        seen += 1
        if seen == event:
            raise Injected(f"injected at event {event} ({what} in {frame.f_code.co_name})")
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        call(core)
    except Injected:
        pass
    finally:
        sys.settrace(previous)
    return seen < event


def assert_core_works(core: Any) -> None:
    """``_check()`` holds, nothing refuses as re-entrant, and a write is readable."""
    core._check()
    core.set("probe", "p")
    entry = core.get("probe")
    assert entry is not None
    assert entry.value == "p"
    assert core.delete("probe")
    gets, hits, misses, *_ = core.counters()
    assert gets == hits + misses
    len(core)
    core._check()


class Finalizing:
    """A value whose ``__del__`` writes to the store that held it."""

    def __init__(self, core: Any, key: str) -> None:
        self.core = core
        self.key = key

    def __del__(self) -> None:
        try:
            self.core.set(self.key, "written by a finalizer")
            self.core.delete(self.key)
        except ReentrantCallError:
            pass  # called by the cyclic GC in the middle of a pure-Python operation
        except Injected:
            pass  # as Python would, after printing "Exception ignored in ..."


def loaded_core(core_name: str, max_entries: int | None = None) -> tuple[Any, FakeClock]:
    """A core holding live, expiring and expired entries, and values with finalizers."""
    clock = FakeClock()
    core = core_module(core_name).LocalCore(max_entries, clock)
    for i in range(6):
        core.set(f"a{i}", i, 1 if i % 2 else None, {"n": i} if i % 3 == 0 else None)
    core.set("b0", Finalizing(core, "fin0"))
    core.set("b1", Finalizing(core, "fin1"), 2)
    clock.tick(1.5)
    core.set_many({"c0": 0, "c1": [1], "a0": 2}, 3)
    return core, clock


OPERATIONS: dict[str, Callable[[Any], Any]] = {
    "set new": lambda core: core.set("n", Finalizing(core, "fin2"), 5, {"m": 1}),
    "set overwrite": lambda core: core.set("b0", 1, 5),
    "set over expired": lambda core: core.set("a1", "x"),
    "get live": lambda core: core.get("b1"),
    "get expired": lambda core: core.get("a3"),
    "exists": lambda core: core.exists("a5"),
    "delete": lambda core: core.delete("b0"),
    "get_many": lambda core: core.get_many(["a0", "a1", "zz", "b0"]),
    "set_many": lambda core: core.set_many([("a2", 9), ("b1", 8), ("new", 7)], 1),
    "delete_many": lambda core: core.delete_many(["a0", "a3", "b1", "zz"]),
    "scan_batch": lambda core: core.scan_batch("a", None, 3),
    "clear prefix": lambda core: core.clear("b"),
    "clear all": lambda core: core.clear(),
    "purge_expired": lambda core: core.purge_expired(),
    "len": len,
    "counters": lambda core: core.counters(),
}


@pytest.mark.parametrize("max_entries", [None, 4])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_call_interrupted_at_any_point_leaves_the_core_working(
    core: str, operation: str, max_entries: int | None
) -> None:
    call = OPERATIONS[operation]
    event = 0
    finished = False
    while not finished:
        event += 1
        subject, _ = loaded_core(core, max_entries)
        finished = call_interrupted(call, subject, event)
        assert_core_works(subject)
    assert event > 1 or core == "cython", "nothing traced: the injection did not run"


class FailingClock(FakeClock):
    """A fake clock that raises while ``fail`` is set."""

    fail = False

    def __call__(self) -> float:
        if self.fail:
            raise Injected("the clock was interrupted")
        return self.now


@pytest.mark.parametrize("operation", sorted(set(OPERATIONS) - {"counters"}))
def test_a_clock_that_raises_changes_nothing(core: str, operation: str) -> None:
    clock = FailingClock()
    subject = core_module(core).LocalCore(3, clock)
    subject.set_many({"a0": 1, "a1": 2, "b0": 3}, 1)
    clock.tick(2)
    before = (subject.counters(), subject.operations())
    clock.fail = True
    with pytest.raises(Injected):
        OPERATIONS[operation](subject)
    clock.fail = False
    assert (subject.counters(), subject.operations()) == before
    assert_core_works(subject)


@pytest.mark.parametrize(
    ("reading", "error"),
    [
        (float("nan"), InvalidArgumentError),
        (float("inf"), InvalidArgumentError),
        (float("-inf"), InvalidArgumentError),
        (10**400, InvalidArgumentError),  # an int no float holds
        ("1000", InvalidArgumentTypeError),
        (None, InvalidArgumentTypeError),
    ],
    ids=["nan", "inf", "-inf", "huge int", "str", "None"],
)
def test_a_clock_reading_that_is_not_finite_seconds_is_refused(
    core: str, reading: object, error: type[Exception]
) -> None:
    clock = FakeClock()
    subject = core_module(core).LocalCore(None, clock)
    subject.set("k", "v", 5)
    clock.now = reading  # type: ignore[assignment]
    with pytest.raises(error):
        subject.set("n", "v", 5)
    with pytest.raises(error):
        subject.get("k")
    clock.now = 1000.0
    assert [entry.key for entry in subject.get_many(["k", "n"]) if entry] == ["k"]
    assert_core_works(subject)


@pytest.mark.parametrize(
    ("reading", "error"),
    [
        (float("nan"), InvalidArgumentError),
        (10**400, InvalidArgumentError),
        ("1000", InvalidArgumentTypeError),
    ],
    ids=["nan", "huge int", "str"],
)
def test_a_clock_whose_first_reading_is_not_finite_seconds_is_refused_at_construction(
    core: str, reading: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        core_module(core).LocalCore(None, lambda: reading)


# -- entries the store holds --------------------------------------------------------


def stored_entry(core_name: str) -> tuple[Any, Any]:
    core = core_module(core_name).LocalCore(None, FakeClock())
    core.set("k", "v", 10, {"a": 1})
    entry = core.get("k")
    assert entry is not None
    return core, entry


def test_reinitialising_a_stored_entry_is_refused_and_cannot_crash(core: str) -> None:
    # The reproduction: on the Cython core the expiry heap kept a pointer to
    # the re-initialised entry after delete freed it, and purge_expired() crashed.
    script = textwrap.dedent(
        f"""
        import asyncio, gc
        from memkv import LocalMemoryStore, _core_{"c" if core == "cython" else "py"} as module
        from memkv.errors import FrozenEntryError

        class Store(LocalMemoryStore):
            _core_type = module.LocalCore

        now = [1000.0]

        async def main():
            store = Store(clock=lambda: now[0])
            await store.set("k", "v", ttl=5)
            e = await store.get("k")
            try:
                e.__init__("k", "v")
            except FrozenEntryError:
                print("refused")
            await store.delete("k")
            del e
            gc.collect()
            churn = [module.MemoryEntry(f"x{{i}}", [i]) for i in range(20000)]
            for i in range(200):
                await store.set(f"y{{i}}", [i], ttl=1)
            del churn
            now[0] += 10
            print(store.purge_expired())
            store._core._check()

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.split() == ["refused", "200"], result.stdout


def test_initialising_a_core_that_holds_entries_is_refused(core: str) -> None:
    # A Cython core made by __new__ works unbounded; an __init__ with max_entries
    # after it had entries turned on an LRU list they were missing from (SIGSEGV).
    script = textwrap.dedent(
        f"""
        from memkv import _core_{"c" if core == "cython" else "py"} as module

        core = module.LocalCore.__new__(module.LocalCore)
        try:
            core.set("a", 1)
            core.set("b", 2)
        except AttributeError:
            print("unusable")  # the pure-Python core before __init__
        try:
            core.__init__(1)
        except RuntimeError:
            print("refused")
        else:
            core.set("c", 3)
            core._check()
            print("initialised")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    expected = ["refused"] if core == "cython" else ["unusable", "initialised"]
    assert result.stdout.split() == expected


def test_a_second_init_is_refused_on_any_entry(core: str) -> None:
    module = core_module(core)
    made = module.MemoryEntry("k", "v", metadata={"a": 1})
    for entry in [made, module.make_entry("k", "v", None, 1.0, 2.0, 3.0)]:
        before = (entry.key, entry.value, entry.metadata, entry._created, entry._expires)
        with pytest.raises(FrozenEntryError):
            entry.__init__("other", "w")
        assert (entry.key, entry.value, entry.metadata, entry._created, entry._expires) == before
    # An entry made without __init__ (as copy and pickle may do) can still get one.
    blank = module.MemoryEntry.__new__(module.MemoryEntry)
    blank.__init__("k", "v")
    assert blank.key == "k"


@pytest.mark.parametrize("attribute", FROZEN_ATTRIBUTES)
def test_writing_or_deleting_a_stored_entrys_frozen_attributes_is_refused(
    core: str, attribute: str
) -> None:
    subject, entry = stored_entry(core)
    replacement = datetime(2031, 1, 1, tzinfo=timezone.utc) if "_at" in attribute else None
    with pytest.raises(FrozenEntryError):
        setattr(entry, attribute, replacement)
    with pytest.raises(FrozenEntryError):
        delattr(entry, attribute)
    assert subject.get("k") is entry
    assert entry.key == "k"
    assert entry.metadata == {"a": 1}
    subject._check()


def test_an_entrys_value_and_metadata_dict_stay_writable(core: str) -> None:
    subject, entry = stored_entry(core)
    entry.value = [entry]  # a cycle through the entry: the GC must still see it
    entry.metadata["b"] = entry
    again = subject.get("k")
    assert again is entry
    assert again.value == [entry]
    assert again.metadata["b"] is entry
    with pytest.raises(FrozenEntryError):
        del entry.value
    subject._check()
    subject.delete("k")
    del entry, again
    gc.collect()
    assert_core_works(subject)


@pytest.mark.parametrize(
    "duplicate",
    [copy.copy, copy.deepcopy, lambda entry: pickle.loads(pickle.dumps(entry))],
    ids=["copy", "deepcopy", "pickle"],
)
def test_copies_of_a_stored_entry_are_equal_and_independent(
    core: str, duplicate: Callable[[Any], Any]
) -> None:
    subject, entry = stored_entry(core)
    copied = duplicate(entry)
    assert copied == entry
    assert copied is not entry
    assert type(copied) is type(entry)
    with pytest.raises(FrozenEntryError):
        copied.__init__("other", 1)
    assert subject.delete("k")
    del entry
    gc.collect()
    assert copied.key == "k"
    assert copied.value == "v"
    assert copied.metadata == {"a": 1}
    assert subject.purge_expired() == 0
    assert_core_works(subject)


def test_copying_a_core_is_refused(core: str) -> None:
    subject, _ = stored_entry(core)
    for duplicate in [copy.copy, copy.deepcopy, pickle.dumps]:
        with pytest.raises(TypeError):
            duplicate(subject)
    assert_core_works(subject)


def test_a_value_whose_equality_calls_the_store_is_harmless(core: str) -> None:
    subject, entry = stored_entry(core)

    class Meddling:
        def __eq__(self, other: object) -> bool:
            subject.delete("k")
            subject.clear()
            return True

        __hash__ = None  # type: ignore[assignment]

    subject.set("m", Meddling(), 1)
    first = subject.get("m")
    second = copy.copy(first)
    assert first == second  # runs Meddling.__eq__, which empties the store
    assert subject.get("m") is None
    del first, second, entry
    gc.collect()
    assert subject.purge_expired() == 0
    assert_core_works(subject)


# -- the random mix -----------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "ab", "b:1", "é", "😀"])
TTLS = st.sampled_from([None, None, 0.5, 1, 3])
FUZZ_SECONDS = float(os.environ.get("MEMKV_FUZZ_SECONDS", "0"))


class HostileMachine(RuleBasedStateMachine):
    """One core under a random mix of ordinary and hostile calls.

    ``values`` models what each live key holds; a key an interrupted call touched is
    dropped from the model until it is written again (the call may or may not have
    taken effect). Entries read back are kept in a bundle so later rules can attack
    them after the store has moved on.
    """

    core_name = "python"
    examples = 0

    entries = Bundle("entries")

    def __init__(self) -> None:
        super().__init__()
        type(self).examples += 1
        self.clock = FakeClock()
        self.core: Any = None
        self.values: dict[str, tuple[Any, float | None]] = {}

    @initialize(max_entries=st.sampled_from([None, 3]))
    def make_core(self, max_entries: int | None) -> None:
        self.core = core_module(self.core_name).LocalCore(max_entries, self.clock)

    def now(self) -> float:
        return self.clock.now

    def live_value(self, key: str) -> Any:
        value, deadline = self.values.get(key, (None, None))
        if deadline is not None and deadline <= self.now():
            return None
        return value

    def make_value(self, kind: int, key: str) -> Any:
        if kind == 0:
            return key
        if kind == 1:
            return Finalizing(self.core, "fin:" + key)
        cycle: list[Any] = [Finalizing(self.core, "fin:" + key)]
        cycle.append(cycle)  # collected by the cyclic GC, maybe in the middle of a call
        return cycle

    @rule(target=entries, key=KEYS, kind=st.integers(0, 2), ttl=TTLS)
    def set_and_get(self, key: str, kind: int, ttl: float | None) -> Any:
        value = self.make_value(kind, key)
        self.core.set(key, value, ttl, {"kind": kind})
        self.values[key] = (value, None if ttl is None else self.now() + ttl)
        entry = self.core.get(key)
        assert entry is not None
        assert entry.value is value
        return entry

    @rule(target=entries, key=KEYS, by_constructor=st.booleans())
    def make_unstored(self, key: str, by_constructor: bool) -> Any:
        module = core_module(self.core_name)
        if by_constructor:
            when = datetime(2030, 1, 1, tzinfo=timezone.utc)
            return module.MemoryEntry(key, [key], expires_at=when, metadata={"m": 1})
        now = self.now()
        return module.make_entry(key, key, None, now, now, now + 1)

    @rule(items=st.dictionaries(KEYS, st.integers(), max_size=4), ttl=TTLS)
    def set_many(self, items: dict[str, int], ttl: float | None) -> None:
        self.core.set_many(items, ttl)
        for key, value in items.items():
            self.values[key] = (value, None if ttl is None else self.now() + ttl)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        entry = self.core.get(key)
        if key in self.values and (entry is not None or self.core.max_entries is None):
            expected = self.live_value(key)  # (with max_entries, it may be evicted)
            assert (None if entry is None else entry.value) is expected

    @rule(keys=st.lists(KEYS, max_size=4))
    def delete_many(self, keys: list[str]) -> None:
        self.core.delete_many(keys)
        for key in keys:
            self.values.pop(key, None)

    @rule(prefix=st.sampled_from([None, "a", "b", "é"]))
    def clear(self, prefix: str | None) -> None:
        self.core.clear(prefix)
        for key in [k for k in self.values if k.startswith(prefix or "")]:
            del self.values[key]

    @rule(seconds=st.sampled_from([0.25, 1.0, 2.0]))
    def tick(self, seconds: float) -> None:
        self.clock.tick(seconds)

    @rule()
    def purge_and_collect(self) -> None:
        assert self.core.purge_expired() >= 0
        gc.collect()

    @rule(entry=entries)
    def reinitialise(self, entry: Any) -> None:
        with pytest.raises(FrozenEntryError):
            entry.__init__("b", "hijacked")

    @rule(entry=entries, attribute=st.sampled_from(FROZEN_ATTRIBUTES))
    def write_frozen(self, entry: Any, attribute: str) -> None:
        with pytest.raises(FrozenEntryError):
            setattr(entry, attribute, None)

    @rule(entry=entries, other=entries)
    def compare_and_copy(self, entry: Any, other: Any) -> None:
        assert (entry == other) == (other == entry)
        assert copy.copy(entry) == entry
        if isinstance(entry.value, (int, str)):  # a finalizer's value holds its core
            assert pickle.loads(pickle.dumps(entry)) == entry
        repr(entry)

    @rule(entry=consumes(entries))
    def drop(self, entry: Any) -> None:
        entry.value = None  # drops the value (and its finalizer) while the store holds it
        self.values.pop(entry.key, None)
        del entry
        gc.collect()

    @rule(
        operation=st.sampled_from(sorted(OPERATIONS)),
        event=st.integers(1, 300),
    )
    def interrupted(self, operation: str, event: int) -> None:
        # A finalizer's call may be refused as re-entrant (a MemKVError).
        with contextlib.suppress(MemKVError):
            call_interrupted(OPERATIONS[operation], self.core, event)
        # The call may or may not have taken effect: forget what the model knew.
        self.values.clear()

    @invariant()
    def consistent(self) -> None:
        if self.core is not None:
            self.core._check()


def run_hostile_machine(core_name: str, seconds: float) -> int:
    """Run the machine on ``core_name`` for about ``seconds``; returns the examples run."""
    machine = type(f"HostileMachine_{core_name}", (HostileMachine,), {"core_name": core_name})
    options = settings(
        max_examples=10,
        stateful_step_count=30,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        # The explain phase traces with sys.settrace, which the interrupt rule replaces.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    )
    stop = time.monotonic() + seconds
    while True:
        run_state_machine_as_test(machine, settings=options)
        if time.monotonic() >= stop:
            return machine.examples


def test_hostile_machine_keeps_the_core_consistent(core: str) -> None:
    core_module(core)
    examples = run_hostile_machine(core, FUZZ_SECONDS)
    assert examples >= 10
