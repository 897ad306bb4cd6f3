"""memkv's local store against its peers, timed in the same run: ``python -m bench.peers``.

Every store is driven through ``await`` the way an application would: aiocache's
``SimpleMemoryCache`` (defaults), cashews with ``mem://``, cachetools' ``TTLCache``
behind ``async def`` methods, and a bare dict behind ``async def`` as the ceiling.
Rounds alternate between the stores, and the best round of each is kept, so a noisy
machine slows every store alike. Prints a Markdown table (``--json`` for machines).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

TTL = 600

Get = Callable[[str], Awaitable[Any]]
Set = Callable[[str, Any], Awaitable[Any]]


def bare_dict() -> tuple[Get, Set]:
    data: dict[str, Any] = {}

    async def get(key: str) -> Any:
        return data.get(key)

    async def set_(key: str, value: Any) -> None:
        data[key] = value

    return get, set_


def memkv_store(core: str) -> Callable[[], tuple[Get, Set]]:
    def make() -> tuple[Get, Set]:
        from memkv import LocalMemoryStore

        store: Any = LocalMemoryStore(core=core)

        async def set_(key: str, value: Any) -> None:
            await store.set(key, value, TTL)

        return store.get, set_

    return make


def cachetools_ttl(size: int) -> Callable[[], tuple[Get, Set]]:
    def make() -> tuple[Get, Set]:
        from cachetools import TTLCache

        cache: TTLCache[str, Any] = TTLCache(maxsize=size * 4, ttl=TTL)

        async def get(key: str) -> Any:
            return cache.get(key)

        async def set_(key: str, value: Any) -> None:
            cache[key] = value

        return get, set_

    return make


def cashews_mem() -> tuple[Get, Set]:
    from cashews import Cache

    cache = Cache()
    cache.setup("mem://")

    async def set_(key: str, value: Any) -> None:
        await cache.set(key, value, expire=TTL)

    return cache.get, set_


def aiocache_simple() -> tuple[Get, Set]:
    from aiocache import SimpleMemoryCache

    cache = SimpleMemoryCache()

    async def set_(key: str, value: Any) -> None:
        await cache.set(key, value, ttl=TTL)

    return cache.get, set_


async def one_round(get: Get, set_: Set, keys: list[str], order: list[str]) -> dict[str, float]:
    perf = time.perf_counter
    start = perf()
    for key in keys:
        await set_(key, key)
    new_keys = len(keys) / (perf() - start)
    start = perf()
    for key in order:
        await get(key)
    gets = len(order) / (perf() - start)
    start = perf()
    for key in order:
        await set_(key, 1)
    sets = len(order) / (perf() - start)
    latencies = []
    for key in order[:20_000]:
        begin = perf()
        await get(key)
        latencies.append(perf() - begin)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    return {"get_hit": gets, "set_existing": sets, "set_new": new_keys, "get_p99_us": p99 * 1e6}


def run(size: int, rounds: int) -> dict[str, dict[str, float]]:
    keys = [f"user:{i:07d}" for i in range(size)]
    order = keys[:]
    random.Random(1).shuffle(order)
    makers: dict[str, Callable[[], tuple[Get, Set]]] = {
        "dict behind async def (ceiling)": bare_dict,
        "memkv LocalMemoryStore (Cython core)": memkv_store("cython"),
        "memkv LocalMemoryStore (Python core)": memkv_store("python"),
        "cachetools TTLCache behind async def": cachetools_ttl(size),
        "cashews mem://": cashews_mem,
        "aiocache SimpleMemoryCache": aiocache_simple,
    }
    best: dict[str, dict[str, float]] = {}
    loop = asyncio.new_event_loop()
    try:
        for _ in range(rounds):
            for name, make in makers.items():
                get, set_ = make()
                figures = loop.run_until_complete(one_round(get, set_, keys, order))
                del get, set_
                gc.collect()
                kept = best.setdefault(name, figures)
                for field, value in figures.items():
                    better = min if field.endswith("_us") else max
                    kept[field] = better(kept[field], value)
    finally:
        loop.close()
    return best


def table(best: dict[str, dict[str, float]]) -> str:
    memkv = best["memkv LocalMemoryStore (Cython core)"]
    lines = [
        "| store | get hit/s | set existing (TTL)/s | set new (TTL)/s | get p99 µs "
        "| memkv get / this | memkv set / this |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, figures in best.items():
        lines.append(
            f"| {name} | {figures['get_hit'] / 1e6:.2f} M | {figures['set_existing'] / 1e6:.2f} M"
            f" | {figures['set_new'] / 1e6:.2f} M | {figures['get_p99_us']:.2f}"
            f" | {memkv['get_hit'] / figures['get_hit']:.2f}x"
            f" | {memkv['set_existing'] / figures['set_existing']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=100_000, help="distinct keys per store")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per store (best kept)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    best = run(args.keys, args.rounds)
    print(json.dumps(best, indent=2) if args.json else table(best))


if __name__ == "__main__":
    main()
