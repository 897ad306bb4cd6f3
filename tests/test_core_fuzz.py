"""Random operations on both local cores and a dict model in lockstep, compared each step.

Each seed builds a pure-Python core, a Cython core and a model with the same fake
clock and store-time offset, applies a few hundred random operations (writes, reads,
scans, clears, time passing, bad arguments) and compares every answer: every return
value (entries with their key, value, metadata and timestamps, ``purge_expired()``'s
count, each scan batch and its cursor), every counter and call count, errors, and each
core's ``_check()``, at every step. The model knows what is live; the two cores must
also agree on what the model does not follow: which expired entries a write's bounded
purge drops (earliest deadline, then key, first), and LRU evictions.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from memkv._counters import CoreCounters, CoreOperations
from tests.helpers import FakeClock, core_module

# Mixed str kinds (latin-1, UCS-2, UCS-4) and shared prefixes stress the code-point order.
ALPHABET = ["a", "b", "c", ":", "é", "ÿ", "€", "😀"]
START = 1000.0
WALL = 1_700_000_000.0

Model = dict[str, tuple[Any, dict[str, Any], float, float, float | None]]


def random_key(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 3)))


def random_ttl(rng: random.Random) -> Any:
    return rng.choice(
        [None, None, 1, 2, 5, 0.5, 1.5, timedelta(seconds=3), timedelta(milliseconds=700)]
    )


def ttl_to_seconds(ttl: Any) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        return ttl.total_seconds()
    return float(ttl)


class Lockstep:
    """Both cores and the model, driven with the same arguments."""

    def __init__(self, rng: random.Random, max_entries: int | None, monkeypatch: Any) -> None:
        self.rng = rng
        self.clock = FakeClock(START)
        # Same wall-clock offset for every core, so timestamps compare exactly.
        monkeypatch.setattr(time, "time", lambda: WALL)
        self.cores = [
            core_module(name).LocalCore(max_entries, self.clock) for name in ("python", "cython")
        ]
        monkeypatch.undo()
        self.offset = WALL - START
        self.max_entries = max_entries
        self.model: Model = {}

    def now(self) -> float:
        return self.clock() + self.offset

    def both(self, call: Callable[[Any], Any]) -> Any:
        """Run ``call`` on each core; both must return equal answers or raise alike."""
        outcomes: list[tuple[str, Any]] = []
        for core in self.cores:
            try:
                outcomes.append(("ok", call(core)))
            except Exception as error:
                outcomes.append(("error", type(error)))
        (kind_py, answer_py), (kind_cy, answer_cy) = outcomes
        assert kind_py == kind_cy, outcomes
        if kind_py == "ok":
            assert normalize(answer_py) == normalize(answer_cy), outcomes
        return kind_py, answer_py

    def live(self) -> Iterator[str]:
        now = self.now()
        for key, (_, _, _, _, expires) in self.model.items():
            if expires is None or expires > now:
                yield key

    def forget_expired(self) -> None:
        live = set(self.live())
        for key in list(self.model):
            if key not in live:
                del self.model[key]

    def expect_entry(self, key: str, answer: Any) -> None:
        if self.max_entries is not None:
            return  # eviction order is compared between the cores, not modelled
        expected = self.model.get(key) if key in set(self.live()) else None
        if expected is None:
            assert answer is None, (key, answer)
        else:
            assert answer is not None, key
            assert normalize(answer) == ("entry", key, *expected)

    def model_set(self, key: str, value: Any, ttl: Any, metadata: Any) -> None:
        now = self.now()
        seconds = ttl_to_seconds(ttl)
        old = self.model.get(key) if key in set(self.live()) else None
        created = now if old is None else old[2]
        expires = None if seconds is None else now + seconds
        self.model_put(key, (value, dict(metadata or {}), created, now, expires))

    def model_put(
        self, key: str, entry: tuple[Any, dict[str, Any], float, float, float | None]
    ) -> None:
        self.forget_expired()
        self.model[key] = entry
        if self.max_entries is not None:
            # Keep the model to what the cores hold: evicted keys are gone from both.
            # Asked of both cores, so that their exists() counters stay in step.
            held = {k for k in self.model if [c.exists(k) for c in self.cores] == [True, True]}
            for k in list(self.model):
                if k not in held:
                    del self.model[k]

    def step(self) -> None:
        rng = self.rng
        op = rng.choice(
            [
                "set", "set", "set", "get", "get", "exists", "delete", "get_many",
                "set_many", "delete_many", "scan", "clear", "purge", "len", "tick",
                "tick", "bad", "add", "touch", "put",
            ]
        )  # fmt: skip
        key = random_key(rng)
        if op == "set":
            value = rng.randint(0, 9)
            ttl = random_ttl(rng)
            metadata = rng.choice([None, {}, {"n": rng.randint(0, 3)}])
            self.both(lambda core: core.set(key, value, ttl, metadata))
            self.model_set(key, value, ttl, metadata)
        elif op == "get":
            _, answer = self.both(lambda core: core.get(key))
            self.expect_entry(key, answer)
        elif op == "exists":
            _, answer = self.both(lambda core: core.exists(key))
            if self.max_entries is None:
                assert answer == (key in set(self.live()))
        elif op == "delete":
            _, answer = self.both(lambda core: core.delete(key))
            if self.max_entries is None:
                assert answer == (key in set(self.live()))
            self.model.pop(key, None)
        elif op == "get_many":
            keys = [random_key(rng) for _ in range(rng.randint(0, 5))]
            _, answers = self.both(lambda core: core.get_many(keys))
            for one, answer in zip(keys, answers, strict=True):
                self.expect_entry(one, answer)
        elif op == "set_many":
            items = {random_key(rng): rng.randint(0, 9) for _ in range(rng.randint(0, 4))}
            ttl = random_ttl(rng)
            metadata = rng.choice([None, {"m": 1}])
            self.both(lambda core: core.set_many(list(items.items()), ttl, metadata))
            for one, value in items.items():
                self.model_set(one, value, ttl, metadata)
        elif op == "delete_many":
            keys = [random_key(rng) for _ in range(rng.randint(0, 4))]
            _, removed = self.both(lambda core: core.delete_many(keys))
            if self.max_entries is None:
                assert removed == len(set(keys) & set(self.live()))
            for one in keys:
                self.model.pop(one, None)
        elif op == "scan":
            prefix = random_key(rng)[:2]
            limit = rng.randint(1, 4)
            found = self.scan_all(prefix, limit)
            if self.max_entries is None:
                assert found == sorted(k for k in self.live() if k.startswith(prefix))
        elif op == "clear":
            prefix = rng.choice([None, "", random_key(rng)[:1]])
            _, removed = self.both(lambda core: core.clear(prefix))
            matching = [k for k in self.live() if k.startswith(prefix or "")]
            if self.max_entries is None:
                assert removed == len(matching)
            for one in [k for k in self.model if k.startswith(prefix or "")]:
                del self.model[one]
        elif op == "add":
            value = rng.randint(0, 9)
            ttl = random_ttl(rng)
            _, written = self.both(lambda core: core.add(key, value, ttl))
            live = key in set(self.live())
            if self.max_entries is None:
                assert written is not live
            if written:
                self.model.pop(key, None)
                self.model_set(key, value, ttl, None)
        elif op == "touch":
            ttl = random_ttl(rng)
            kind, found = self.both(lambda core: core.touch(key, ttl))
            if self.max_entries is None and kind == "ok":
                assert found == (key in set(self.live()))
            if kind == "ok" and found and key in self.model:
                value, metadata, created, updated, _ = self.model[key]
                seconds = ttl_to_seconds(ttl)
                expires = None if seconds is None else self.now() + seconds
                self.model[key] = (value, metadata, created, updated, expires)
        elif op == "put":
            # A copy of an entry kept elsewhere: its own timestamps, maybe already expired.
            now = self.now()
            value = rng.randint(0, 9)
            metadata = rng.choice([None, {"p": rng.randint(0, 3)}])
            created = now - rng.choice([0.0, 1.0, 30.0])
            updated = created + rng.choice([0.0, 0.5])
            expires = rng.choice([None, now + 1.0, now + 2.5, now - 1.0])
            self.both(lambda core: core.put(key, value, metadata, created, updated, expires))
            self.model_put(key, (value, dict(metadata or {}), created, updated, expires))
        elif op == "purge":
            self.both(lambda core: core.purge_expired())
        elif op == "len":
            _, size = self.both(len)
            if self.max_entries is None:
                assert size == len(list(self.live()))
        elif op == "tick":
            self.clock.tick(rng.choice([0.25, 0.5, 1.0, 2.0, 5.0]))
        else:
            bad = rng.choice(
                [
                    lambda core: core.set(1, "v"),
                    lambda core: core.put(1, "v", None, 0.0, 0.0, None),
                    lambda core: core.set("k", "v", 0),
                    lambda core: core.set("k", "v", -1.5),
                    lambda core: core.set("k", "v", True),
                    lambda core: core.set("k", "v", "10"),
                    lambda core: core.set("k", "v", float("nan")),
                    lambda core: core.set("k", "v", 10**400),
                    lambda core: core.set("k", "v", None, [1]),
                    lambda core: core.set("k", "v", None, {1: 2}),
                    lambda core: core.get(None),
                    lambda core: core.get_many("ab"),
                    lambda core: core.get_many(["a", 2]),
                    lambda core: core.delete_many([b"a"]),
                    lambda core: core.set_many([("a", 1), ("b",)]),
                    lambda core: core.set_many({"a": 1}, -1),
                    lambda core: core.clear(3),
                ]
            )
            kind, _ = self.both(bad)
            assert kind == "error"
        self.compare_state()

    def scan_all(self, prefix: str, limit: int) -> list[str]:
        """Every batch of a scan, per core; the cores must return the same batches."""
        results = []
        for core in self.cores:
            batches: list[tuple[list[str], str | None]] = []
            after = None
            while True:
                keys, after = core.scan_batch(prefix, after, limit)
                assert keys == sorted(keys)
                assert all(key.startswith(prefix) for key in keys)
                assert len(keys) <= limit
                batches.append((keys, after))
                if after is None:
                    break
            results.append(batches)
        assert results[0] == results[1], results
        return [key for keys, _ in results[0] for key in keys]

    def compare_state(self) -> None:
        python, cython = self.cores
        assert python.counters() == cython.counters()
        assert python.operations() == cython.operations()
        for core in self.cores:
            core._check()
        if self.rng.random() < 0.2:
            self.both(lambda core: core.purge_expired())
            assert python.counters() == cython.counters()
            assert cython._heap_size() <= python._heap_size()


def normalize(answer: Any) -> Any:
    """Entries as comparable tuples (the two cores' entry types differ)."""
    if isinstance(answer, list):
        return [normalize(item) for item in answer]
    if isinstance(answer, tuple):
        return tuple(normalize(item) for item in answer)
    if hasattr(answer, "created_at"):
        return (
            "entry",
            answer.key,
            answer.value,
            answer.metadata,
            answer._created,
            answer._updated,
            answer._expires,
        )
    return answer


@pytest.mark.parametrize("max_entries", [None, 1, 3, 8])
@pytest.mark.parametrize("seed", range(12))
def test_cores_agree_with_each_other_and_the_model(
    seed: int, max_entries: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed * 1009 + (max_entries or 0))
    lockstep = Lockstep(rng, max_entries, monkeypatch)
    for _ in range(400):
        lockstep.step()


def test_cores_agree_on_heap_compaction_under_rewrites(monkeypatch: pytest.MonkeyPatch) -> None:
    lockstep = Lockstep(random.Random(7), None, monkeypatch)
    for round_ in range(300):
        key = f"k{round_ % 3}"
        lockstep.both(lambda core, key=key, value=round_: core.set(key, value, 10))
        lockstep.model_set(key, round_, 10, None)
        if round_ % 50 == 0:
            lockstep.clock.tick(11)
        lockstep.compare_state()
    assert lockstep.cores[1]._heap_size() <= 3


def test_cores_agree_on_a_large_index(monkeypatch: pytest.MonkeyPatch) -> None:
    # Enough keys to split the Cython index into many sublists, then drain it unevenly.
    lockstep = Lockstep(random.Random(11), None, monkeypatch)
    keys = [f"{i % 7}:{i:05d}" for i in range(3000)]
    random.Random(3).shuffle(keys)
    for i, key in enumerate(keys):
        lockstep.both(lambda core, key=key, i=i: core.set(key, i, 5 if i % 3 else None))
    lockstep.compare_state()
    for prefix in ["", "3", "3:0", "6:02", "9"]:
        assert lockstep.scan_all(prefix, 97) == sorted(k for k in keys if k.startswith(prefix))
    lockstep.both(lambda core: core.delete_many(keys[::2]))
    lockstep.clock.tick(6)
    lockstep.both(lambda core: core.clear("4"))
    lockstep.compare_state()
    lockstep.both(len)
    lockstep.compare_state()


def test_cores_report_counters_as_the_same_named_tuples() -> None:
    python, cython = core_module("python").LocalCore(), core_module("cython").LocalCore()
    for core in (python, cython):
        core.set("k", 1)
        core.get("k")
        assert type(core.counters()) is CoreCounters
        assert type(core.operations()) is CoreOperations
        assert core.counters().hits == core.operations().get_hit == 1
    assert python.counters() == cython.counters()
    assert python.operations() == cython.operations()


def test_cores_purge_the_same_entries_in_a_bounded_purge(monkeypatch: pytest.MonkeyPatch) -> None:
    # The reference heap holds stale items from rewrites; they must not use up a
    # write's purge budget, and entries due together go in key order on both cores.
    lockstep = Lockstep(random.Random(5), None, monkeypatch)
    for round_ in range(6):
        lockstep.both(lambda core, value=round_: core.set("a", value, 1))
        lockstep.clock.tick(0.1)
    lockstep.both(lambda core: core.set_many([(f"k{i}", i) for i in range(9, -1, -1)], 1))
    lockstep.clock.tick(2)
    lockstep.both(lambda core: core.set("z", 0))
    lockstep.compare_state()
    lockstep.both(lambda core: core.get_many([f"k{i}" for i in range(10)]))
    lockstep.compare_state()
    kind, purged = lockstep.both(lambda core: core.purge_expired())
    assert (kind, purged) == ("ok", 0)
    lockstep.compare_state()
