"""The few Redis commands a store issues: the one seam between the store and what talks
to the server.

``NodeCommands`` (one server, over a transport ``Node``) and ``ClusterCommands`` (a
Redis Cluster, over a ``ClusterRouter``) serve a store made from a URL: memkv's
coalescing transport carries every command. ``RedisCommands`` serves a store given a
redis-py client, which it keeps using. The three answer the same calls; failures are
raised untranslated (the store translates them in one place, ``memkv.redis.errors``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster

from memkv.redis.client import AnyRedis
from memkv.redis.cluster import ClusterRouter, NodeAddress, NodeConnection, node_factory
from memkv.redis.lease import Script, run_script
from memkv.redis.transport import ConnectionSpec, Node, ReplyError

__all__ = [
    "SET_SCRIPT",
    "ClusterCommands",
    "Commands",
    "NodeCommands",
    "PageRetry",
    "RedisCommands",
]

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
_SET = Script(SET_SCRIPT, _SET_SHA)

#: Clients a forked child replaced: kept, never collected (see ``renew``).
_INHERITED_CLIENTS: list[Any] = []

#: Runs a page of a scan again after an outage (the store's ``RetryPolicy``), or not.
PageRetry = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]] | None


class Commands(Protocol):
    """What the store calls; ``NodeCommands``, ``ClusterCommands`` and ``RedisCommands``
    provide it."""

    cluster: bool

    @property
    def owns_client(self) -> bool: ...

    @property
    def client(self) -> AnyRedis: ...

    def get(self, key: bytes) -> Awaitable[bytes | None]: ...

    def exists(self, key: bytes) -> Awaitable[bool | int]: ...

    def get_many(self, keys: list[bytes]) -> Awaitable[tuple[list[bytes | None], int]]: ...

    def types(self, keys: list[bytes]) -> Awaitable[list[str]]: ...

    def unlink(self, keys: list[bytes]) -> Awaitable[int]: ...

    def set(self, key: bytes, envelope: bytes, px: int) -> Awaitable[None]: ...

    def set_many(self, writes: list[tuple[bytes, bytes, int]]) -> Awaitable[None]: ...

    def set_if_absent(self, key: bytes, envelope: bytes, px: int) -> Awaitable[bool]: ...

    def script(self, script: Script, key: bytes, *args: Any) -> Awaitable[Any]: ...

    def scan(self, match: bytes, count: int, retry: PageRetry = None) -> AsyncIterator[bytes]: ...

    def renew(self) -> None: ...

    async def aclose(self) -> None: ...


async def _evalsha(execute: Callable[..., Awaitable[Any]], script: Script, *args: Any) -> Any:
    """``EVALSHA`` ``script`` with ``args`` (numkeys, keys, arguments), then ``EVAL`` if
    the server lacks it (first use, or its script cache was flushed by a restart)."""
    try:
        return await execute(b"EVALSHA", script.sha, *args)
    except ReplyError as err:
        if err.prefix != "NOSCRIPT":
            raise
    return await execute(b"EVAL", script.source, *args)


def _set_nx(px: int) -> tuple[bytes | int, ...]:
    return (b"NX", b"PX", px) if px else (b"NX",)


def _noscript(reply: object) -> bool:
    return isinstance(reply, ReplyError) and reply.prefix == "NOSCRIPT"


def _first_error(replies: Sequence[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


class _TransportCommands:
    """What ``NodeCommands`` and ``ClusterCommands`` share: the redis-py client they
    hand out for commands memkv does not wrap (made on first use of ``client``, never
    used by the store's operations), and its renewal."""

    cluster = False

    @property
    def owns_client(self) -> bool:
        return True

    def __init__(self, make_client: Callable[[], AnyRedis]) -> None:
        self._make_client = make_client
        self._client: AnyRedis | None = None
        self._pid = os.getpid()

    @property
    def client(self) -> AnyRedis:
        """A redis-py client to the same server(s) with the store's options, made on
        first use: for commands memkv does not wrap."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _renew_client(self) -> None:
        if self._client is not None and self._pid != os.getpid():
            _INHERITED_CLIENTS.append(self._client)  # see RedisCommands.renew
        self._pid = os.getpid()
        self._client = None

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _scan_node(
        self,
        execute: Callable[..., Awaitable[Any]],
        match: bytes,
        count: int,
        retry: PageRetry,
        seen: set[bytes],
    ) -> AsyncIterator[bytes]:
        cursor: Any = 0
        while True:
            page = functools.partial(execute, b"SCAN", cursor, b"MATCH", match, b"COUNT", count)
            cursor, keys = await (page() if retry is None else retry(page))
            for key in keys:
                if key not in seen:
                    seen.add(key)
                    yield key
            if cursor in (b"0", 0):
                return


class NodeCommands(_TransportCommands):
    """memkv's commands on one server, over one transport ``Node``: every command of
    one event-loop iteration, from every task, leaves in one write.

    ``get``, ``exists`` and ``unlink`` return the transport's awaitable directly (no
    coroutine of their own: this is the path every call takes).
    """

    def __init__(
        self,
        spec: ConnectionSpec,
        make_client: Callable[[], AnyRedis],
        node_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(make_client)
        #: Given to the node (a near cache's tracking hooks), and to its replacements.
        self._node_options = dict(node_options or {})
        self.node = Node(spec, **self._node_options)

    def get(self, key: bytes) -> Awaitable[bytes | None]:
        return self.node.execute(b"GET", key)

    def exists(self, key: bytes) -> Awaitable[int]:
        return self.node.execute(b"EXISTS", key)

    def unlink(self, keys: list[bytes]) -> Awaitable[int]:
        return self.node.execute(b"UNLINK", *keys)

    async def get_many(self, keys: list[bytes]) -> tuple[list[bytes | None], int]:
        """The values at ``keys`` (``None`` where no string is) and how many of the keys
        without a value exist (hold another Redis type, or were written since): one
        ``MGET``, then one ``EXISTS`` of the misses only when there are some."""
        values: list[bytes | None] = await self.node.execute(b"MGET", *keys)
        missing = [key for key, value in zip(keys, values, strict=True) if value is None]
        return values, (await self.node.execute(b"EXISTS", *missing) if missing else 0)

    async def types(self, keys: list[bytes]) -> list[str]:
        replies = await self.node.execute_many([(b"TYPE", key) for key in keys])
        _first_error(replies)
        return [reply.decode() for reply in replies]

    def set(self, key: bytes, envelope: bytes, px: int) -> Awaitable[None]:
        """Write ``envelope`` at ``key`` with the set script (``px`` 0: no expiry)."""
        return _evalsha(self.node.execute, _SET, 1, key, envelope, px)

    async def set_if_absent(self, key: bytes, envelope: bytes, px: int) -> bool:
        """``SET key envelope NX [PX px]``: whether it was written."""
        return await self.node.execute(b"SET", key, envelope, *_set_nx(px)) is not None

    def script(self, script: Script, key: bytes, *args: Any) -> Awaitable[Any]:
        """Run one of ``memkv.redis.lease``'s scripts on ``key``."""
        return _evalsha(self.node.execute, script, 1, key, *args)

    async def set_many(self, writes: list[tuple[bytes, bytes, int]]) -> None:
        """``set`` each ``(key, envelope, px)`` in order, in one batch."""
        replies = await self.node.execute_many(
            [(b"EVALSHA", _SET_SHA, 1, key, envelope, px) for key, envelope, px in writes]
        )
        if any(_noscript(reply) for reply in replies):
            # Rewrite the whole batch in order with EVAL (which caches the script), so
            # that a repeated key still ends on its last value; rewriting keeps created_at.
            replies = await self.node.execute_many(
                [(b"EVAL", SET_SCRIPT, 1, key, envelope, px) for key, envelope, px in writes]
            )
        _first_error(replies)

    def scan(self, match: bytes, count: int, retry: PageRetry = None) -> AsyncIterator[bytes]:
        """Every key matching the glob ``match``, once (memory grows with the matches)."""
        return self._scan_node(self.node.execute, match, count, retry, set())

    def renew(self) -> None:
        """Forget the connections of a stopped event loop or of the parent process (the
        node also does so by itself when it meets a new loop or process)."""
        self.node.abandon()
        self._renew_client()

    async def aclose(self) -> None:
        self.node.close()
        # A fresh node, bound to no event loop: the store may next be used on another.
        self.node = Node(self.node.spec, **self._node_options)
        await self._close_client()


class ClusterCommands(_TransportCommands):
    """memkv's commands on a Redis Cluster, over a ``ClusterRouter``: one transport
    ``Node`` per primary, each coalescing its commands; batches grouped per node.

    The router is opened (slot map loaded) by the first call, on the event loop of that
    call; ``aclose`` and ``renew`` drop it and the next call opens another.
    """

    cluster = True

    def __init__(
        self,
        seeds: list[tuple[str, int]],
        spec: ConnectionSpec,
        make_client: Callable[[], AnyRedis],
        node_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(make_client)
        self._seeds = seeds
        self._node_factory = node_factory(spec, **(node_options or {}))
        self._router: ClusterRouter | None = None
        self._opening: asyncio.Future[ClusterRouter] | None = None
        #: Every node the current router made, to abandon them in ``renew``.
        self._nodes: weakref.WeakSet[NodeConnection] = weakref.WeakSet()

    def _connect(self, host: str, port: int) -> NodeConnection:
        node = self._node_factory(host, port)
        self._nodes.add(node)
        return node

    async def router(self) -> ClusterRouter:
        """The router, opened by the first caller; concurrent callers share the attempt.

        Raises ``BackendUnavailableError`` when no seed answers (the next call tries
        again)."""
        router = self._router
        if router is not None:
            return router
        opening = self._opening
        if opening is None:
            opening = self._opening = asyncio.ensure_future(
                ClusterRouter.open(self._seeds, self._connect)
            )
            opening.add_done_callback(self._opened)
        return await asyncio.shield(opening)

    def _opened(self, opening: asyncio.Future[ClusterRouter]) -> None:
        if self._opening is not opening:
            return  # dropped by renew or aclose meanwhile
        self._opening = None
        if not opening.cancelled() and opening.exception() is None:
            self._router = opening.result()

    async def get(self, key: bytes) -> bytes | None:
        router = self._router or await self.router()
        data: bytes | None = await router.execute(key, b"GET", key)
        return data

    async def exists(self, key: bytes) -> int:
        router = self._router or await self.router()
        found: int = await router.execute(key, b"EXISTS", key)
        return found

    async def _each(self, name: bytes, keys: list[bytes]) -> list[Any]:
        """``name key`` for each key, one batch per node."""
        router = self._router or await self.router()
        return await router.execute_many([(key, (name, key)) for key in keys])

    async def unlink(self, keys: list[bytes]) -> int:
        if len(keys) == 1:
            router = self._router or await self.router()
            removed: int = await router.execute(keys[0], b"UNLINK", keys[0])
            return removed
        return sum(await self._each(b"UNLINK", keys))

    async def get_many(self, keys: list[bytes]) -> tuple[list[bytes | None], int]:
        """One batch per node of one-key ``MGET``s (``GET`` would refuse a key of another
        type with WRONGTYPE), then ``EXISTS`` of the misses when there are some."""
        values = [reply[0] for reply in await self._each(b"MGET", keys)]
        missing = [key for key, value in zip(keys, values, strict=True) if value is None]
        return values, (sum(await self._each(b"EXISTS", missing)) if missing else 0)

    async def types(self, keys: list[bytes]) -> list[str]:
        return [reply.decode() for reply in await self._each(b"TYPE", keys)]

    async def set(self, key: bytes, envelope: bytes, px: int) -> None:
        await self.script(_SET, key, envelope, px)

    async def set_if_absent(self, key: bytes, envelope: bytes, px: int) -> bool:
        router = self._router or await self.router()
        return await router.execute(key, b"SET", key, envelope, *_set_nx(px)) is not None

    async def script(self, script: Script, key: bytes, *args: Any) -> Any:
        router = self._router or await self.router()
        return await _evalsha(functools.partial(router.execute, key), script, 1, key, *args)

    async def set_many(self, writes: list[tuple[bytes, bytes, int]]) -> None:
        router = self._router or await self.router()
        try:
            await router.execute_many(
                [
                    (key, (b"EVALSHA", _SET_SHA, 1, key, envelope, px))
                    for key, envelope, px in writes
                ]
            )
        except ReplyError as err:
            if err.prefix != "NOSCRIPT":
                raise
            # Some primary lacked the script: the whole batch again, in order, with EVAL.
            await router.execute_many(
                [
                    (key, (b"EVAL", SET_SCRIPT, 1, key, envelope, px))
                    for key, envelope, px in writes
                ]
            )

    async def scan(
        self, match: bytes, count: int, retry: PageRetry = None
    ) -> AsyncIterator[bytes]:
        """Every matching key on every primary, once."""
        router = self._router or await self.router()
        seen: set[bytes] = set()
        for address in router.primaries():
            execute = _on(router, address)
            async for key in self._scan_node(execute, match, count, retry, seen):
                yield key

    def renew(self) -> None:
        """Drop the router of a stopped event loop or of the parent process, leaving its
        connections unclosed (the next call opens another router)."""
        for node in list(self._nodes):
            if isinstance(node, Node):
                node.abandon()
        self._nodes = weakref.WeakSet()
        self._router = self._opening = None
        self._renew_client()

    async def aclose(self) -> None:
        router, self._router = self._router, None
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()
        if router is not None:
            await router.close()
        await self._close_client()


def _on(router: ClusterRouter, address: NodeAddress) -> Callable[..., Awaitable[Any]]:
    def execute(*command: Any) -> Awaitable[Any]:
        return router.execute_on(address, *command)

    return execute


class RedisCommands:
    """memkv's commands on a redis-py ``client``; ``make_client`` (when the store made
    the client) builds a fresh one for ``renew``. The store uses it for a client passed
    in (and the benchmarks for the redis-py baseline).

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

    async def scan(
        self, match: bytes, count: int, retry: PageRetry = None
    ) -> AsyncIterator[bytes]:
        """Every key matching the glob ``match``, once: ``SCAN ... COUNT count`` on the
        server or on every primary of a cluster (memory grows with the matches).
        ``retry`` is unused: redis-py's client retries by itself."""
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
