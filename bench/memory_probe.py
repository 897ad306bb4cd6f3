"""Memory held by many entries, measured in a fresh interpreter per measurement.

``python -m bench.memory_probe STORE WRITER COUNT BATCH METHOD`` writes ``COUNT`` entries
(str keys ``user:NNNNNNN``, str values ``value-NNNNNNN``; a one-hour TTL on a store) and
prints, as JSON, how much the process grew while writing them: ``METHOD`` ``rss`` reads
the resident set size (``/proc/self/statm``, Linux) before and after, ``traced`` the
bytes tracemalloc sees still allocated. Resident memory is what a machine pays for; it
also counts what tracemalloc cannot see: pymalloc pools and arenas kept alive by a few
live objects among freed temporaries, and holes in the C heap. Each measurement needs a
fresh process because neither kind of memory is reliably given back once used.

``STORE``: ``dict`` (a plain dict: the baseline), ``cython`` or ``python`` (a
``LocalMemoryStore``'s core). ``WRITER``: ``set`` (one key at a time: ``d[key] = value``
or ``core.set``), ``set_many_dict`` / ``set_many_pairs`` (``BATCH`` entries per call,
given as a dict or a list of pairs, to ``core.set_many`` or ``d.update``; each input is
dropped after its call, as a caller's would be).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

TTL = 3600
WRITERS = ("set", "set_many_dict", "set_many_pairs")


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def key(i: int) -> str:
    return f"user:{i:07d}"


def value(i: int) -> str:
    return f"value-{i:07d}"


def writer(store: str, how: str, count: int, batch: int) -> Callable[[], Any]:
    """Writes ``count`` entries ``how`` into a new ``store``; returns what holds them."""
    if store == "dict":
        target: Any = {}
        put = target.__setitem__
        put_many = target.update
    else:
        from memkv import LocalMemoryStore

        target = LocalMemoryStore(core=store)._core

        def put(k: str, v: Any) -> None:
            target.set(k, v, TTL)

        def put_many(items: Any) -> None:
            target.set_many(items, TTL)

    def one_by_one() -> Any:
        for i in range(count):
            put(key(i), value(i))
        return target

    def batched() -> Any:
        for start in range(0, count, batch):
            stop = min(start + batch, count)
            if how == "set_many_dict":
                items: Any = {key(i): value(i) for i in range(start, stop)}
            else:
                items = [(key(i), value(i)) for i in range(start, stop)]
            put_many(items)
            del items
        return target

    return one_by_one if how == "set" else batched


def measure(store: str, how: str, count: int, batch: int, method: str) -> int:
    """Bytes the process grew by while writing ``count`` entries."""
    run = writer(store, how, count, batch)
    gc.collect()
    if method == "traced":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = run()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    else:
        before = resident_bytes()
        kept = run()
        gc.collect()
        grown = resident_bytes() - before
    assert len(kept) == count
    return grown


if __name__ == "__main__":
    store, how, count, batch, method = sys.argv[1:]
    print(json.dumps({"bytes": measure(store, how, int(count), int(batch), method)}))
