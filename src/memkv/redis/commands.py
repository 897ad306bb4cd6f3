"""The few Redis commands a store issues: the one object between the store and redis-py
(so that a fresh client, another transport or a cluster router replaces it in one place)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster

from memkv.redis.client import AnyRedis
from memkv.redis.lease import Script, run_script

__all__ = ["SET_SCRIPT", "RedisCommands"]

# Writes one envelope and keeps the created_at of the envelope it replaces, atomically.
# Only the first 12 bytes of the old value are read (GETRANGE), so a large value is not
# copied into Lua; SETRANGE keeps the expiry that SET ... PX just set.
SET_SCRIPT = """\
local head = redis.pcall('GETRANGE', KEYS[1], 0, 11)
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if type(head) == 'string' and #head == 12
    and string.sub(head, 1, 4) == string.sub(ARGV[1], 1, 4) then
  redis.call('SETRANGE', KEYS[1], 4, string.sub(head, 5, 12))
end
return 1
"""
_SET_SHA = hashlib.sha1(SET_SCRIPT.encode(), usedforsecurity=False).hexdigest()

#: Clients a forked child replaced: kept, never collected (see ``renew``).
_INHERITED_CLIENTS: list[Any] = []


class RedisCommands:
    """memkv's commands on ``client``; ``make_client`` (when the store made the client)
    builds a fresh one for ``renew``.

    Failures are redis-py's and the socket's own exceptions, untranslated: the store
    translates them in one place (``memkv.redis.errors``).
    """

    def __init__(self, client: AnyRedis, make_client: Callable[[], AnyRedis] | None) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self._make_client = make_client
        self._pid = os.getpid()

    @property
    def owns_client(self) -> bool:
        """Whether the store made the client (and so configures, renews and closes it)."""
        return self._make_client is not None

    async def get(self, key: bytes) -> bytes | None:
        # decode_responses=False (checked for a client passed in): replies are bytes.
        data: bytes | None = await self.client.get(key)  # type: ignore[assignment]
        return data

    async def get_many(self, keys: list[bytes]) -> tuple[list[bytes | None], int]:
        """The values at ``keys`` (``None`` where no string is) and how many of the keys
        without a value hold another Redis type (a hash, a list...). One round trip on
        one server; on a cluster, a second one when some value is missing."""
        if self.cluster:
            cluster: RedisCluster = self.client  # type: ignore[assignment]
            values = await cluster.mget_nonatomic(keys)
            missing = [key for key, value in zip(keys, values, strict=True) if value is None]
            return values, (await cluster.exists(*missing) if missing else 0)
        # MULTI/EXEC: a key written or removed between the two must not skew the count.
        pipe = self.client.pipeline(transaction=True)
        pipe.mget(keys)
        pipe.exists(*keys)
        values, existing = await pipe.execute()
        return values, existing - (len(values) - values.count(None))

    async def types(self, keys: list[bytes]) -> list[str]:
        """The Redis type of each key (``"none"`` for no key), in one pipeline."""
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        replies: list[bytes] = await pipe.execute()
        return [reply.decode() for reply in replies]

    async def exists(self, key: bytes) -> bool:
        return bool(await self.client.exists(key))

    async def unlink(self, keys: list[bytes]) -> int:
        removed: int = await self.client.unlink(*keys)
        return removed

    async def set(self, key: bytes, envelope: bytes, px: int) -> None:
        """Write ``envelope`` at ``key`` with the set script (``px`` 0: no expiry)."""
        try:
            await self.client.execute_command("EVALSHA", _SET_SHA, 1, key, envelope, px)
        except redis_errors.NoScriptError:
            # First use on this server, or its script cache was flushed (restart).
            await self.client.execute_command("EVAL", SET_SCRIPT, 1, key, envelope, px)

    async def set_if_absent(self, key: bytes, envelope: bytes, px: int) -> bool:
        """``SET key envelope NX [PX px]``: whether it was written."""
        expiry = ("PX", px) if px else ()
        return bool(await self.client.execute_command("SET", key, envelope, "NX", *expiry))

    async def script(self, script: Script, key: bytes, *args: Any) -> Any:
        """Run one of ``memkv.redis.lease``'s scripts on ``key``."""
        return await run_script(self.client, script, key, *args)

    async def set_many(self, writes: list[tuple[bytes, bytes, int]]) -> None:
        """``set`` each ``(key, envelope, px)`` in order, in one pipeline."""
        results = await self._pipeline_set(writes, use_sha=True)
        if any(isinstance(result, redis_errors.NoScriptError) for result in results):
            # Some server lacked the script. Rewrite the whole batch in order with EVAL
            # (which caches it), so that a repeated key still ends on its last value;
            # rewriting an entry keeps its created_at.
            results = await self._pipeline_set(writes, use_sha=False)
        for result in results:
            if isinstance(result, Exception):
                raise result

    async def _pipeline_set(
        self, writes: list[tuple[bytes, bytes, int]], *, use_sha: bool
    ) -> list[Any]:
        # execute_command rather than evalsha(): cluster pipelines refuse the named
        # script helpers but route a raw EVALSHA by its key like any other command.
        pipe = self.client.pipeline(transaction=False)
        name, script = ("EVALSHA", _SET_SHA) if use_sha else ("EVAL", SET_SCRIPT)
        for key, envelope, px in writes:
            pipe.execute_command(name, script, 1, key, envelope, px)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def scan(self, match: bytes, count: int) -> AsyncIterator[bytes]:
        """Every key matching the glob ``match``, once: ``SCAN ... COUNT count`` on the
        server or on every primary of a cluster (memory grows with the matches)."""
        seen: set[bytes] = set()
        for node in await self._scan_targets():
            cursor = 0
            while True:
                cursor, keys = await self._scan_page(node, cursor, match, count)
                for key in keys:
                    if key not in seen:
                        seen.add(key)
                        yield key
                if not cursor:
                    break

    async def _scan_targets(self) -> list[ClusterNode | None]:
        if not self.cluster:
            return [None]
        cluster: RedisCluster = self.client  # type: ignore[assignment]
        await cluster.initialize()
        return list(cluster.get_primaries())

    async def _scan_page(
        self, node: ClusterNode | None, cursor: int, match: bytes, count: int
    ) -> tuple[int, list[bytes]]:
        target: Any = self.client if node is None else node
        next_cursor, keys = await target.execute_command(
            "SCAN", cursor, "MATCH", match, "COUNT", count
        )
        return int(next_cursor), keys

    def renew(self) -> None:
        """Replace a client the store made by a fresh one (nothing for a client passed in).

        The old one is dropped unclosed: its connections belong to an event loop that has
        stopped, or to the parent process of a fork.
        """
        if self._make_client is None:
            return
        if self._pid != os.getpid():
            # Inherited through fork(): collecting it would close sockets (and their
            # epoll registrations) that the parent process still uses.
            _INHERITED_CLIENTS.append(self.client)
            self._pid = os.getpid()
        self.client = self._make_client()

    async def aclose(self) -> None:
        """Close a client the store made and start a fresh one; a client passed in is left
        open."""
        if self._make_client is not None:
            await self.client.aclose()
            # A fresh client: redis-py's pools keep locks bound to the loop that used
            # them, and the store may next be used on another loop.
            self.client = self._make_client()
