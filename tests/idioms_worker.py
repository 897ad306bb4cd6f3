"""A separate process for the cross-process tests of ``get_or_set`` and ``add`` on Redis.

``python -m tests.idioms_worker MODE URL NAMESPACE KEY COUNTER CALLERS SECONDS START``
waits until the UNIX time START (so that every worker overlaps), then runs CALLERS
concurrent calls on one store and prints a JSON line with what it saw:

- ``fill``: ``get_or_set(KEY)`` with a factory that sleeps SECONDS and counts its runs
  with ``INCR COUNTER`` (a key outside the namespace);
- ``add``: ``add(KEY, <pid>)``; prints how many of this process's calls won;
- ``hold``: takes the lease of KEY with a factory that never ends, prints ``held`` once
  the factory runs (the test then kills this process).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from memkv.redis import RedisMemoryStore


async def main(
    mode: str, url: str, namespace: str, key: str, counter: str, callers: int, seconds: float
) -> dict[str, Any]:
    store: RedisMemoryStore[Any] = RedisMemoryStore(url, namespace=namespace)
    store.lease_ttl = float(os.environ.get("MEMKV_TEST_LEASE_TTL", "5"))
    try:

        async def factory() -> int:
            await store.client.incr(counter)
            if mode == "hold":
                print(json.dumps({"held": True}), flush=True)
                await asyncio.Event().wait()
            await asyncio.sleep(seconds)
            return os.getpid()

        if mode in ("fill", "hold"):
            entries = await asyncio.gather(
                *[store.get_or_set(key, factory, ttl=60) for _ in range(callers)]
            )
            return {
                "values": sorted({entry.value for entry in entries}),
                "lease_waits": store.stats().flights.lease_waits,
            }
        won = await asyncio.gather(*[store.add(key, os.getpid(), ttl=60) for _ in range(callers)])
        return {"won": sum(won)}
    finally:
        await store.close()


if __name__ == "__main__":
    mode, url, namespace, key, counter, callers, seconds, start = sys.argv[1:9]
    time.sleep(max(0.0, float(start) - time.time()))
    result = asyncio.run(main(mode, url, namespace, key, counter, int(callers), float(seconds)))
    print(json.dumps(result), flush=True)
