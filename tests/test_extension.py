"""The compiled core: that it really loaded, and what only a C implementation can get wrong."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import time
import weakref
from typing import Any

import pytest

import memkv
from memkv import _core
from tests.helpers import NO_EXTENSIONS, core_module


@pytest.mark.skipif(NO_EXTENSIONS, reason="MEMKV_NO_EXTENSIONS=1 chooses the Python core")
def test_cython_core_loaded() -> None:
    # Fails when a broken build would otherwise pass every test on the Python core.
    from memkv import _core_c

    assert memkv.IMPLEMENTATION == "cython"
    assert _core.LocalCore is _core_c.LocalCore
    assert _core.MemoryEntry is _core_c.MemoryEntry
    assert issubclass(_core_c.MemoryEntry, memkv.MemoryEntry)
    assert _core_c.__file__ is not None
    assert not _core_c.__file__.endswith(".py")


def test_no_extensions_chooses_the_python_core() -> None:
    script = "import memkv, memkv._core as c; print(memkv.IMPLEMENTATION, c.LocalCore.__module__)"
    env = {**os.environ, "MEMKV_NO_EXTENSIONS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["python", "memkv._core_py"]


@pytest.mark.skipif(NO_EXTENSIONS, reason="MEMKV_NO_EXTENSIONS=1 chooses the Python core")
def test_a_missing_extension_is_an_import_error_not_a_fallback() -> None:
    script = (
        "import sys; sys.modules['memkv._core_c'] = None\n"
        "try:\n    import memkv\nexcept ImportError:\n    print('raised')\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "MEMKV_NO_EXTENSIONS"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert result.stdout.strip() == "raised", result.stderr


def test_entries_pickle_and_compare(core: str) -> None:
    module = core_module(core)
    entry = module.make_entry("k", [1, 2], {"a": 1}, 10.0, 20.0, 30.0)
    copied = pickle.loads(pickle.dumps(entry))
    assert copied == entry
    assert type(copied) is module.MemoryEntry
    assert copied != module.make_entry("k", [1, 2], {"a": 1}, 10.0, 20.0, None)
    with pytest.raises(TypeError):
        hash(entry)


def test_entry_holding_itself_is_collected(core: str) -> None:
    # Entries holding only atomic values are hidden from the cyclic GC; one that can
    # close a cycle (through its value or its metadata) must stay visible to it.
    module = core_module(core)
    store = module.LocalCore()

    class Box:
        pass

    for via in ("value", "metadata"):
        box = Box()
        store.set("k", box if via == "value" else "atom")
        entry = store.get("k")
        if via == "value":
            box.entry = entry  # type: ignore[attr-defined]
        else:
            entry.metadata["self"] = entry
            entry.metadata["box"] = box
        probe = weakref.ref(box)
        store.delete("k")
        del box, entry
        gc.collect()
        assert probe() is None, via


@pytest.mark.skipif(NO_EXTENSIONS, reason="MEMKV_NO_EXTENSIONS=1 chooses the Python core")
def test_atomic_entries_are_not_tracked_by_the_gc() -> None:
    store = core_module("cython").LocalCore()
    store.set("atom", "text")
    store.set("box", ["list"])
    store.set("meta", 1, None, {"a": 1})
    assert not gc.is_tracked(store.get("atom"))
    assert gc.is_tracked(store.get("box"))
    assert gc.is_tracked(store.get("meta"))
    entry = store.get("atom")
    entry.value = ["now a container"]
    assert gc.is_tracked(entry)


@pytest.mark.skipif(NO_EXTENSIONS, reason="MEMKV_NO_EXTENSIONS=1 chooses the Python core")
def test_index_orders_every_str_kind_by_code_point() -> None:
    store = core_module("cython").LocalCore()
    keys = ["", "a", "ab", "b", "é", "ÿ", "Ā", "€", "\uffff", "😀", "a😀", "a€", "aé", "\x00"]
    for key in reversed(keys):
        store.set(key, 1)
    found, cursor = store.scan_batch("", None, 100)
    assert cursor is None
    assert found == sorted(keys)
    for prefix in ["a", "é", "€", "😀", "a€"]:
        assert store.scan_batch(prefix, None, 100)[0] == sorted(
            k for k in keys if k.startswith(prefix)
        )
    store._check()


@pytest.mark.skipif(NO_EXTENSIONS, reason="MEMKV_NO_EXTENSIONS=1 chooses the Python core")
def test_str_subclass_keys_are_stored_as_exact_str() -> None:
    class Name(str):
        __slots__ = ()

        def __eq__(self, other: object) -> bool:  # pragma: no cover - must not be called
            raise AssertionError("a str subclass's __eq__ ran inside the core")

        __hash__ = str.__hash__

    store = core_module("cython").LocalCore()
    store.set(Name("k"), 1)
    entry: Any = store.get(Name("k"))
    assert type(entry.key) is str
    assert store.scan_batch(Name("k"), None, 10) == (["k"], None)
    store._check()


def test_default_clock_expires_entries_on_time(core: str) -> None:
    # The Cython core reads a coarse clock first with the default clock; an entry
    # due within its margin must still expire exactly when the precise clock says.
    store = core_module(core).LocalCore()
    store.set("short", 1, 0.02)
    store.set("long", 2, 60)
    store.set("forever", 3)
    assert [store.exists(k) for k in ("short", "long", "forever")] == [True, True, True]
    deadline = time.monotonic() + 0.02
    while time.monotonic() < deadline:
        pass
    assert store.get("short") is None
    assert store.get_many(["short", "long", "forever"])[1:] == [
        store.get("long"),
        store.get("forever"),
    ]
    assert not store.delete("short")
    assert store.counters().expired == 1  # expired once, when first read after its deadline
    store._check()


def test_overwrite_never_changes_an_entry_someone_holds(core: str) -> None:
    # The Cython core rewrites an entry in place only when nothing outside the store
    # holds it; an entry returned earlier stays a snapshot.
    store = core_module(core).LocalCore()
    store.set("k", "first", 60, {"v": 1})
    held = store.get("k")
    store.set("k", "second", None)
    assert (held.value, held.metadata, held.expires_at is not None) == ("first", {"v": 1}, True)
    store.set("k", "third", 30)
    store.set("k", "fourth", 10, {"v": 4})
    entry = store.get("k")
    assert (entry.value, entry.metadata) == ("fourth", {"v": 4})
    assert entry.created_at == held.created_at
    assert entry._expires == pytest.approx(store.now() + 10, abs=1)
    assert held.value == "first"
    store._check()
