"""The store operations of ``RedisMemoryStore``: each entry is one Redis string at
``"{namespace}:{key}"`` holding an envelope (``docs/redis-format.md``), expiring by ``PX``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import struct
import time
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Concatenate, ParamSpec, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from memkv.codecs import Codec, codec_id, codec_name, resolve_codec
from memkv.entry import MemoryEntry
from memkv.errors import CodecError, EventLoopError, InvalidArgumentError, MemKVError
from memkv.redis.client import (
    DEFAULT_OPTIONS,
    AnyRedis,
    check_options,
    connection_spec,
    make_client,
    server_label,
)
from memkv.redis.commands import ClusterCommands, Commands, NodeCommands, RedisCommands
from memkv.redis.envelope import ENVELOPE_MAGIC, decode_entry, encode_entry, ttl_milliseconds
from memkv.redis.errors import FAILURES, FOREIGN_TYPE_MESSAGE, retryable, translate
from memkv.redis.lease import LEASE_PREFIX, RELEASE, RENEW, TOUCH
from memkv.redis.near_cache import ABSENT, MISS, NearCache
from memkv.redis.retry import RetryPolicy
from memkv.singleflight import Fill
from memkv.store import TTL, BaseMemoryStore, StoreStats, operation_counts
from memkv.urls import RedisURL, parse_redis_url
from memkv.validation import (
    check_batch_size,
    check_items,
    check_key,
    check_keys,
    check_metadata,
    check_prefix,
    ttl_seconds,
)

__all__ = ["RedisMemoryStore"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")

#: Keys removed per UNLINK by ``clear``.
_CLEAR_BATCH = 500
#: The largest SCAN COUNT memkv sends: any larger ``batch_size`` means "as many as the
#: server gives per call" too (the server takes a signed 64-bit count and multiplies it).
_MAX_SCAN_COUNT = 2**32

_Operation = Callable[Concatenate["RedisMemoryStore[Any]", P], Coroutine[Any, Any, R]]


def _ok(_result: object) -> str:
    return "ok"


def _ok_or_exists(written: object) -> str:
    """``ok`` when ``add`` wrote, ``exists`` when a live entry was there already."""
    return "ok" if written else "exists"


def _hit_or_miss(result: object) -> str:
    """``hit`` for an entry or ``True``, ``miss`` for ``None`` or ``False``."""
    return "miss" if result is None or result is False else "hit"


def _operation(
    name: str,
    result: Callable[[Any], str] = _ok,
    *,
    keyed: bool = False,
    batch: bool = False,
    retried: bool = True,
) -> Callable[[_Operation[P, R]], _Operation[P, R]]:
    """Run a store operation: bind the store to the running event loop, run it again
    under the store's retry policy after an outage (a store made from a URL; redis-py
    retries by itself for a client passed in), translate a transport, redis-py or socket
    failure into a memkv error (``memkv.redis.errors``), and count the call as ``(name,
    result(returned))`` or ``(name, "error")``. ``keyed``: the first argument is the
    key, named by errors about its value. ``batch``: the first argument may be a one-shot
    iterator. ``retried=False``: the operation applies the retry policy itself (``add``).

    The others are run again whole: each runs commands whose effect is the same when
    they run twice (reads; the envelope ``SET``; ``UNLINK``; ``touch``'s script), see
    ``docs/redis-transport.md``. A batch's one-shot iterator is read into a list first,
    so that a retry sees it whole.
    """

    def decorate(method: _Operation[P, R]) -> _Operation[P, R]:
        @functools.wraps(method)
        async def run(self: RedisMemoryStore[Any], /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                if self._loop is not asyncio.get_running_loop():
                    self._bind_loop()
                if batch and args and isinstance(args[0], Iterator):
                    args = (list(args[0]), *args[1:])  # type: ignore[assignment]
                try:
                    returned = await method(self, *args, **kwargs)
                except Exception as err:
                    retry = self._retry
                    if retry is None or not retried or not retryable(err):
                        raise
                    returned = await retry.again(lambda: method(self, *args, **kwargs), err)
            except Exception as err:
                self._ops[name, "error"] += 1
                key = (args[0] if args else kwargs.get("key")) if keyed else None
                error = self._translated(err, key)
                if error is None:
                    raise
                raise error from err
            self._ops[name, result(returned)] += 1
            return returned

        return run

    return decorate


def _glob_escape(raw: bytes) -> bytes:
    """Escape ``* ? [ ] \\`` so that SCAN MATCH treats them literally."""
    for char in (b"\\", b"*", b"?", b"[", b"]"):
        raw = raw.replace(char, b"\\" + char)
    return raw


class RedisMemoryStore(BaseMemoryStore[T]):
    """A store on one Redis/Valkey server or a Redis Cluster.

    ``url_or_client`` is a URL (``redis://[user:password@]host:port/db``, ``rediss://``
    for TLS, ``unix:///path/to/redis.sock``, ``redis+cluster://host:port``; see
    ``memkv.urls``), a ``memkv.urls.RedisURL`` parsed from one, or an
    existing ``redis.asyncio.Redis``/``RedisCluster`` made with ``decode_responses=False``
    (the store then neither configures nor closes it, and runs its commands through it).
    Every key lives at ``"{namespace}:{key}"``; ``scan`` and ``clear`` never leave the
    namespace. ``codec`` is ``"msgpack"`` (default), ``"json"``, ``"pickle"`` (unsafe on
    a shared server) or an object with ``encode``/``decode`` (``memkv.codecs``).
    Metadata is always stored as MessagePack.

    A store made from a URL sends every command through memkv's coalescing transport
    (``docs/redis-transport.md``): one connection per server (per primary on a
    cluster, plus one for commands of 512 KiB or more) that carries the commands of
    every task, those issued during one event-loop iteration in one write, so many
    tasks sharing one store cost few system calls and no connection pool.

    Connection options (URL query parameters too; the URL's values are used unless
    given here): ``socket_timeout`` (1 s) is how long the server may stay silent while
    commands wait for their replies (a large value that keeps flowing is not cut),
    ``connect_timeout`` (1 s) bounds each connection attempt and its handshake. An
    operation that meets a refused, lost or silent connection runs again ``retries``
    (3) times after an exponential backoff with jitter from ``backoff_base`` (25 ms) up
    to ``backoff_cap`` (1 s); which operations that is safe for is in
    ``docs/redis-transport.md``. When the budget is spent the operation raises
    ``BackendUnavailableError``: at worst after ``(retries + 1) * (connect_timeout +
    socket_timeout)`` plus the backoff (0.175-0.35 s by default), after just the
    backoff when the server refuses connections. The same store recovers by itself
    when the server returns; on a cluster the slot map is refreshed after a failed node
    or a ``MOVED`` (``docs/redis-cluster.md``). ``max_connections`` bounds the pool of
    the redis-py ``client`` only. A wrong password or an ACL refusal raises
    ``AccessDeniedError`` without retrying.

    Costs: ``get``, ``set``, ``delete`` and ``exists`` are one round trip each (``set``
    runs a small cached Lua script, so overwriting keeps ``created_at`` atomically);
    ``get_many`` is one ``MGET`` (one batch per node on a cluster), and a second round
    trip, ``EXISTS`` of the keys that came back empty, only when some did (it tells a
    key of another Redis type from a missing one); ``set_many`` one pipelined batch,
    ``delete_many`` one ``UNLINK`` (one batch per node on a cluster); ``scan`` and
    ``clear`` walk the keyspace with ``SCAN`` (every primary on a cluster) and never use
    ``KEYS`` or ``FLUSHDB``. ``stats()`` counts this client's operations (``expired``
    and ``evictions`` are 0, ``entries`` is ``None``).

    ``near_cache=N`` (URL: ``?near_cache=N``; a store made from a URL only) keeps a copy
    of up to N entries in this process, kept coherent by the server's invalidation
    messages (``CLIENT TRACKING``): ``get``, ``get_many`` and ``exists`` answer from a
    copy without a round trip (about a microsecond), writes, ``scan`` and ``clear`` go
    to the server. What a reader may see and when copies are dropped:
    ``docs/near-cache.md``. A server that refuses ``CLIENT TRACKING`` makes the first
    operation raise ``TrackingUnavailableError``; ``stats().near_cache`` counts hits,
    misses, invalidations and flushes.

    >>> import asyncio
    >>> async def main() -> object:
    ...     async with RedisMemoryStore("redis://localhost:6379/0", namespace="app") as store:
    ...         await store.set("user:1", {"name": "Ada"}, ttl=60)
    ...         entry = await store.get("user:1")
    ...         await store.delete("user:1")
    ...         return entry.value
    >>> asyncio.run(main())
    {'name': 'Ada'}
    """

    def __init__(
        self,
        url_or_client: str | RedisURL | AnyRedis,
        *,
        namespace: str | None = None,
        codec: str | Codec | None = None,
        socket_timeout: float | None = None,
        connect_timeout: float | None = None,
        retries: int | None = None,
        backoff_base: float | None = None,
        backoff_cap: float | None = None,
        max_connections: int | None = None,
        near_cache: int | None = None,
    ) -> None:
        given = {
            name: value
            for name, value in (
                ("socket_timeout", socket_timeout),
                ("connect_timeout", connect_timeout),
                ("retries", retries),
                ("backoff_base", backoff_base),
                ("backoff_cap", backoff_cap),
                ("max_connections", max_connections),
            )
            if value is not None
        }
        if isinstance(url_or_client, (str, RedisURL)):
            url = (
                url_or_client
                if isinstance(url_or_client, RedisURL)
                else parse_redis_url(url_or_client)
            )
            client_url, cluster, server = url.client_url, url.cluster, url.server
            url_options, client_options = dict(url.options), dict(url.connection)
            if namespace is None:
                namespace = url_options.pop("namespace", None)
            if codec is None:
                codec = url_options.pop("codec", None)
            url_near_cache = url_options.pop("near_cache", None)
            if near_cache is None:
                near_cache = url_near_cache
            options = {**DEFAULT_OPTIONS, **url_options, **given}
            check_options(options)
        elif isinstance(url_or_client, (Redis, RedisCluster)):
            if given or near_cache is not None:
                names = sorted([*given, *(["near_cache"] if near_cache is not None else [])])
                raise InvalidArgumentError(
                    f"{', '.join(names)} only apply to a store made from a URL; "
                    "configure the client you pass instead"
                )
            if url_or_client.get_encoder().decode_responses:
                raise InvalidArgumentError(
                    "RedisMemoryStore needs a client made with decode_responses=False"
                )
            cluster = isinstance(url_or_client, RedisCluster)
            server = server_label(url_or_client)
        else:
            raise InvalidArgumentError(
                "RedisMemoryStore needs a redis://, rediss://, unix:// or redis+cluster:// "
                "URL or a redis.asyncio Redis/RedisCluster client, "
                f"not {type(url_or_client).__name__}"
            )
        if namespace is None:
            namespace = "memkv"
        if not isinstance(namespace, str) or not namespace:
            raise InvalidArgumentError("namespace must be a non-empty str")
        self._namespace = namespace
        self._prefix = (namespace + ":").encode("utf-8", "surrogatepass")
        self._codec = resolve_codec("msgpack" if codec is None else codec)
        self._codec_id = codec_id(self._codec)
        self._server = server
        self._where = f"Redis {'Cluster ' if cluster else ''}at {server}"
        self._near = None if near_cache is None else NearCache(near_cache, self._prefix)
        # Near-cache hits served without the operation decorator, counted into stats().
        self._near_get_hits = self._near_get_misses = 0
        self._near_exists_hits = self._near_exists_misses = 0
        # The connections come last: nothing above may fail after they exist.
        self._redis: Commands
        self._retry: RetryPolicy | None = None
        if isinstance(url_or_client, (str, RedisURL)):
            make = functools.partial(make_client, client_url, cluster, options, client_options)
            spec = connection_spec(url, options)
            # With a near cache every connection tracks the keys it reads.
            node_options = None if self._near is None else self._near.node_options()
            if cluster:
                seeds = [(spec.host, spec.port)]
                self._redis = ClusterCommands(seeds, spec, make, node_options)
            else:
                self._redis = NodeCommands(spec, make, node_options)
            self._retry = RetryPolicy.equal_jitter(
                options["retries"], options["backoff_base"], options["backoff_cap"]
            )
        else:
            self._redis = RedisCommands(url_or_client, None)
        # The event loop the client's connections belong to (None until first used).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_pid = os.getpid()
        self._gets = self._hits = self._misses = self._sets = self._deletes = 0
        self._ops: Counter[tuple[str, str]] = Counter()

    @classmethod
    def from_url(cls, url: str | RedisURL, **options: Any) -> RedisMemoryStore[Any]:
        """A store for ``url``; keyword ``options`` override the URL's query parameters.

        Query parameters: ``namespace``, ``codec``, ``socket_timeout``,
        ``connect_timeout``, ``retries``, ``backoff_base``, ``backoff_cap``,
        ``max_connections`` (alias ``pool_size``), ``db``, ``client_name``,
        ``health_check_interval`` and, for ``rediss://``, ``ssl_cert_reqs``,
        ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``.
        An unknown parameter (named by its position) or a bad value raises
        ``InvalidArgumentError`` (``memkv.urls.parse_redis_url`` parses the URL; it may
        be parsed already).
        """
        if not isinstance(url, RedisURL):
            url = parse_redis_url(url)
        return cls(url, **options)

    @property
    def namespace(self) -> str:
        """The namespace every key of this store lives under."""
        return self._namespace

    @property
    def client(self) -> AnyRedis:
        """A redis-py client to the store's server(s), for commands memkv does not wrap.

        For a store made from a URL it is made on first use, with the URL's options
        (its own connection pool: the store's operations go through memkv's transport,
        not through it), and replaced when the store moves to a new event loop or is
        closed. A client passed in is that client.
        """
        return self._redis.client

    # -- keys, entries, errors ------------------------------------------------------

    def _redis_key(self, key: str) -> bytes:
        if type(key) is not str:
            key = check_key(key)
        return self._prefix + key.encode("utf-8", "surrogatepass")

    def _encode(self, value: Any, metadata: dict[str, Any] | None, now: float, px: int) -> bytes:
        return encode_entry(self._codec, self._codec_id, value, metadata, now, px)

    def _decode(self, key: str, data: bytes) -> MemoryEntry[T]:
        return decode_entry(key, data, self._codec, self._codec_id)

    def _translated(self, err: Exception, key: Any = None) -> MemKVError | None:
        """The memkv error to raise from ``err`` if it is a redis-py or socket failure
        (naming the server, never a password), else ``None``: raise ``err`` itself."""
        return translate(err, self._where, key) if isinstance(err, FAILURES) else None

    # -- single keys -----------------------------------------------------------------

    async def get(self, key: str) -> MemoryEntry[T] | None:
        near = self._near
        if near is not None:
            # A copy is served without the operation decorator (there is no I/O to bind,
            # retry or translate) and with NearCache.lookup written out: each frame
            # would add a third to a hit's cost.
            try:
                copy = near.core.get(key)
            except Exception:
                return await self._get(key)  # not a str: raised and counted there
            if copy is not None:
                near.hits += 1
                if copy.value is ABSENT:
                    self._near_get_misses += 1
                    return None
                self._near_get_hits += 1
                return copy
            near.misses += 1
        return await self._get(key)

    @_operation("get", _hit_or_miss, keyed=True)
    async def _get(self, key: str) -> MemoryEntry[T] | None:
        redis_key = self._redis_key(key)
        near = self._near
        if near is None:
            data = await self._redis.get(redis_key)
        else:
            keys = (key,)
            token = near.start_read(keys)
            read: tuple[MemoryEntry[T] | None] | None = None
            try:
                data = await self._redis.get(redis_key)
                # A CodecError here counts as a failed call only, and fills nothing.
                read = (None if data is None else self._decode(key, data),)
            finally:
                near.finish_read(keys, token, read)
            entry = read[0]
            self._gets += 1
            if entry is None:
                self._misses += 1
            else:
                self._hits += 1
            return entry
        if data is None:
            self._gets += 1
            self._misses += 1
            return None
        entry = self._decode(key, data)  # a CodecError here counts as a failed call only
        self._gets += 1
        self._hits += 1
        return entry

    @_operation("set", keyed=True)
    async def set(
        self,
        key: str,
        value: T,
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Write ``value`` at ``key``, keeping ``created_at`` when it overwrites an entry.

        Whatever another client stored at the key (a string that is not an entry, a
        hash...) is replaced, as ``SET`` does.
        """
        redis_key = self._redis_key(key)
        px = ttl_milliseconds(ttl_seconds(ttl))
        envelope = self._encode(value, check_metadata(metadata), time.time(), px)
        with self._writing((key,)):
            await self._redis.set(redis_key, envelope, px)
        self._sets += 1

    @_operation("delete", _hit_or_miss, keyed=True)
    async def delete(self, key: str) -> bool:
        redis_key = self._redis_key(key)
        with self._writing((key,)):
            removed = await self._redis.unlink([redis_key])
        self._deletes += removed
        return bool(removed)

    async def exists(self, key: str) -> bool:
        """Whether the key holds something: an entry, or a value another client stored
        there (which ``get`` refuses with ``CodecError``)."""
        near = self._near
        if near is not None:
            try:
                found = near.lookup(key)
            except Exception:
                found = MISS  # not a str: the decorated path raises and counts it
            if found is not MISS:
                if found is None:
                    self._near_exists_misses += 1
                    return False
                self._near_exists_hits += 1
                return True
        return await self._exists(key)

    @_operation("exists", _hit_or_miss, keyed=True)
    async def _exists(self, key: str) -> bool:
        redis_key = self._redis_key(key)
        near = self._near
        if near is None:
            return bool(await self._redis.exists(redis_key))
        keys = (key,)
        token = near.start_read(keys)
        read: tuple[None] | None = None
        try:
            found = bool(await self._redis.exists(redis_key))
            if not found:
                read = (None,)  # known absent; a key that exists has no entry to keep
        finally:
            near.finish_read(keys, token, read)
        return found

    @contextlib.contextmanager
    def _writing(self, keys: Sequence[str]) -> Iterator[None]:
        """Around a write of ``keys``: their copies are dropped before it leaves and
        again once it ended (a read in flight meanwhile keeps no copy either)."""
        near = self._near
        if near is None:
            yield
            return
        near.drop(keys)
        try:
            yield
        finally:
            near.drop(keys)

    # -- batches -----------------------------------------------------------------------

    @_operation("get_many", batch=True)
    async def get_many(self, keys: Iterable[str]) -> list[MemoryEntry[T] | None]:
        checked = check_keys(keys)
        if not checked:
            return []
        near = self._near
        if near is None:
            found = await self._fetch_many(checked)
        else:
            lookup = near.lookup
            found = [lookup(key) for key in checked]
            missing = [index for index, entry in enumerate(found) if entry is MISS]
            if missing:
                missing_keys = [checked[index] for index in missing]
                token = near.start_read(missing_keys)
                read: list[MemoryEntry[T] | None] | None = None
                try:
                    read = await self._fetch_many(missing_keys)
                finally:
                    near.finish_read(missing_keys, token, read)
                for index, entry in zip(missing, read, strict=True):
                    found[index] = entry
        hits = len(found) - found.count(None)
        self._gets += len(found)
        self._hits += hits
        self._misses += len(found) - hits
        return found

    async def _fetch_many(self, keys: list[str]) -> list[MemoryEntry[T] | None]:
        redis_keys = [self._redis_key(key) for key in keys]
        values, foreign = await self._redis.get_many(redis_keys)
        if foreign:
            await self._refuse_foreign(keys, redis_keys, values)
        decode = self._decode
        return [
            None if data is None else decode(key, data)
            for key, data in zip(keys, values, strict=True)
        ]

    async def _refuse_foreign(
        self, keys: list[str], redis_keys: list[bytes], values: list[bytes | None]
    ) -> None:
        """Raise ``CodecError`` naming the first key that holds another Redis type than a
        string (``MGET`` reads those as missing)."""
        missing = [index for index, data in enumerate(values) if data is None]
        types = await self._redis.types([redis_keys[index] for index in missing])
        for index, redis_type in zip(missing, types, strict=True):
            # "string" or "none": written or removed since MGET; a miss as MGET saw it.
            if redis_type not in ("string", "none"):
                raise CodecError(FOREIGN_TYPE_MESSAGE.format(key=keys[index], where=self._where))

    @_operation("set_many", batch=True)
    async def set_many(
        self,
        items: Mapping[str, T] | Iterable[tuple[str, T]],
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        pairs = check_items(items)
        px = ttl_milliseconds(ttl_seconds(ttl))
        meta = check_metadata(metadata)
        if not pairs:
            return
        now = time.time()
        # Encode everything first: a value the codec rejects must leave nothing written.
        writes = [
            (self._redis_key(key), self._encode(value, meta, now, px), px) for key, value in pairs
        ]
        with self._writing([key for key, _ in pairs]):
            await self._redis.set_many(writes)
        self._sets += len(pairs)

    @_operation("delete_many", batch=True)
    async def delete_many(self, keys: Iterable[str]) -> int:
        checked = check_keys(keys)
        if not checked:
            return 0
        redis_keys = [self._redis_key(key) for key in checked]
        with self._writing(checked):
            removed = await self._redis.unlink(redis_keys)
        self._deletes += removed
        return removed

    # -- scans -------------------------------------------------------------------------

    def scan(self, pattern: str | None = None, batch_size: int = 100) -> AsyncIterator[str]:
        """Yield each key starting with the literal prefix ``pattern`` once.

        One ``SCAN MATCH <escaped prefix>* COUNT batch_size`` per page (a count above
        2**32 is sent as 2**32), on every primary of a cluster; keys the server repeats
        are yielded once (the keys seen so far are remembered, so memory grows with the
        number of matches). Keys another client stored in the namespace are yielded
        too, whatever their Redis type.
        """
        try:
            prefix = check_prefix(pattern)
            count = min(check_batch_size(batch_size), _MAX_SCAN_COUNT)
        except Exception:
            self._ops["scan", "error"] += 1
            raise
        return self._scan(prefix, count)

    async def _scan(self, prefix: str, count: int) -> AsyncIterator[str]:
        # The async-generator twin of _operation: counted once, when the scan ends,
        # exhausted or closed early (ok) or failed.
        strip = len(self._prefix)
        outcome = "ok"
        try:
            if self._loop is not asyncio.get_running_loop():
                self._bind_loop()
            async for redis_key in self._scan_redis_keys(prefix, count):
                try:
                    key = redis_key[strip:].decode("utf-8", "surrogatepass")
                except UnicodeDecodeError:
                    continue  # written by another client: no str key maps to these bytes
                yield key
        except Exception as err:
            outcome = "error"
            error = self._translated(err)
            if error is None:
                raise
            raise error from err
        finally:
            self._ops["scan", outcome] += 1

    def _scan_redis_keys(
        self, prefix: str, count: int, *, retried: bool = True
    ) -> AsyncIterator[bytes]:
        """Every Redis key under ``prefix``, once; ``retried``: each page under the retry
        policy (``clear`` is retried whole instead)."""
        retry = self._retry
        return self._redis.scan(
            _glob_escape(self._redis_key(prefix)) + b"*",
            count,
            retry.call if retried and retry is not None else None,
        )

    @_operation("clear")
    async def clear(self, pattern: str | None = None) -> int:
        """Remove this store's keys that start with ``pattern`` (all when ``None``), of
        whatever Redis type.

        Batched ``SCAN`` + ``UNLINK`` (500 keys per ``UNLINK``) on every primary;
        returns how many keys were removed.
        """
        prefix = check_prefix(pattern)
        near = self._near
        if near is not None:
            near.drop_prefix(prefix)
        try:
            removed = 0
            batch: list[bytes] = []
            async for redis_key in self._scan_redis_keys(prefix, _CLEAR_BATCH, retried=False):
                batch.append(redis_key)
                if len(batch) >= _CLEAR_BATCH:
                    removed += await self._redis.unlink(batch)
                    batch = []
            if batch:
                removed += await self._redis.unlink(batch)
        finally:
            if near is not None:
                near.drop_prefix(prefix)
        self._deletes += removed
        return removed

    # -- event loops -----------------------------------------------------------------

    def _bind_loop(self) -> None:
        """Adopt the running event loop; redis-py connections belong to one loop.

        The first use binds the store. While the bound loop still runs (another
        thread), another loop gets ``EventLoopError``. Once it has stopped, the store
        moves: a store that made its client starts a fresh one (the old connections
        can be neither used nor closed from here); a client passed in is its owner's
        to have closed.
        """
        loop = asyncio.get_running_loop()
        bound = self._loop
        if bound is not None and bound is not loop:
            if self._loop_runs(bound):
                raise EventLoopError(
                    f"this store ({self!r}) is in use on another event loop that is still "
                    "running; open one store per event loop"
                )
            self._redis.renew()
        self._loop = loop
        self._loop_pid = os.getpid()

    def _loop_runs(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether ``loop`` still runs; a loop of the parent process never does here."""
        return self._loop_pid == os.getpid() and loop.is_running()

    # -- lifecycle -----------------------------------------------------------------------

    def stats(self) -> StoreStats:
        fills = self._fill_state()
        ops = self._ops + fills.operations
        gets, hits, misses = self._gets, self._hits, self._misses
        near = self._near
        if near is not None:
            # Calls answered by a copy are counted apart (see get): add them in.
            get_hits, get_misses = self._near_get_hits, self._near_get_misses
            ops["get", "hit"] += get_hits
            ops["get", "miss"] += get_misses
            ops["exists", "hit"] += self._near_exists_hits
            ops["exists", "miss"] += self._near_exists_misses
            gets += get_hits + get_misses
            hits += get_hits
            misses += get_misses
        return StoreStats(
            gets=gets,
            hits=hits,
            misses=misses,
            sets=self._sets,
            deletes=self._deletes,
            entries=None,
            operations=operation_counts(ops),
            flights=fills.stats(),
            near_cache=None if near is None else near.stats(),
        )

    async def close(self) -> None:
        """Close the connections (only when the store made its client). Safe twice.

        The store may be used again afterwards, on this loop or another: it reconnects.
        Background refreshes of ``get_or_set`` are cancelled and awaited first.
        """
        await self._close_fills()
        bound = self._loop
        if bound is not None and bound is not asyncio.get_running_loop():
            if self._loop_runs(bound):
                raise EventLoopError(
                    f"this store ({self!r}) is in use on another event loop that is still "
                    "running; close it there"
                )
            # Opened on a loop that has stopped: those connections cannot be closed
            # from this one. Drop them for a fresh client.
            self._redis.renew()
        else:
            await self._redis.aclose()
        if self._near is not None:
            self._near.close()
        self._loop = None

    def __repr__(self) -> str:
        kind = "cluster " if self._redis.cluster else ""
        near = "" if self._near is None else f", near_cache={self._near.max_entries}"
        return (
            f"RedisMemoryStore({kind}{self._server}, namespace={self._namespace!r}, "
            f"codec={codec_name(self._codec)!r}{near})"
        )

    # -- add, touch and get_or_set's cross-process lease --------------------------------

    #: How long a fill lease lasts unless its holder renews it (every third of it while
    #: the factory runs): how long other processes wait for a holder that died.
    lease_ttl: float = 5.0
    #: How long a holder renews its lease at most: a factory that hangs in a process
    #: that stays alive lets the others compute after ``max_lease_hold + lease_ttl``
    #: seconds, instead of making them wait for ever.
    max_lease_hold: float = 60.0

    @_operation("add", _ok_or_exists, keyed=True, retried=False)
    async def add(
        self,
        key: str,
        value: T,
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store ``value`` like ``set`` only if ``key`` holds no live entry; ``True`` when
        written. One ``SET NX`` of a fresh envelope: atomic across every client."""
        redis_key = self._redis_key(key)
        px = ttl_milliseconds(ttl_seconds(ttl))
        envelope = self._encode(value, check_metadata(metadata), time.time(), px)
        with self._writing((key,)):
            try:
                written = await self._redis.set_if_absent(redis_key, envelope, px)
            except Exception as err:
                if self._retry is None:
                    raise
                written = await self._retry.again(
                    lambda: self._add_again(redis_key, envelope, px), err
                )
        if written:
            self._sets += 1
        return written

    async def _add_again(self, redis_key: bytes, envelope: bytes, px: int) -> bool:
        """``add`` after a lost connection: the first ``SET NX`` may have written before
        the reply was lost, so a refusal counts as written when the key holds this very
        envelope (its timestamps make it this call's own)."""
        if await self._redis.set_if_absent(redis_key, envelope, px):
            return True
        return await self._redis.get(redis_key) == envelope

    @_operation("touch", _hit_or_miss, keyed=True)
    async def touch(self, key: str, ttl: TTL = None) -> bool:
        """Give the live entry at ``key`` a new expiry, ``ttl`` from now (``None``: never);
        ``True`` when there was one. One script: ``PEXPIRE``/``PERSIST`` and the
        envelope's ``expires_at`` change together; value, metadata and the other
        timestamps are kept. A key holding no memkv entry raises ``CodecError``."""
        redis_key = self._redis_key(key)
        px = ttl_milliseconds(ttl_seconds(ttl))
        expires = time.time() + px / 1000 if px else 0.0  # as the envelope: whole ms
        with self._writing((key,)):
            found = await self._redis.script(
                TOUCH, redis_key, px, struct.pack(">d", expires), ENVELOPE_MAGIC
            )
        if found < 0:
            raise CodecError(
                f"the value at key {key!r} in namespace {self._namespace!r} on "
                f"{self._where} is not a memkv entry"
            )
        return bool(found)

    async def _fill(self, fill: Fill, stale: MemoryEntry[T] | None) -> MemoryEntry[T] | None:
        """Compute under a lease, so that one process runs the factory while the others
        poll for the entry (backing off from 2 ms to 50 ms); a refresh that finds the
        lease taken leaves the refresh to its holder."""
        lease_key = LEASE_PREFIX + self._redis_key(fill.key)
        token = os.urandom(16)
        delay = 0.002
        waited = False
        while True:
            if await self._lease(lease_key, token):
                renewing = asyncio.create_task(self._keep_lease(lease_key, token))
                try:
                    return await super()._fill(fill, stale)
                finally:
                    renewing.cancel()
                    await asyncio.gather(renewing, return_exceptions=True)
                    await self._release(lease_key, token)
            if stale is not None:
                return None
            if not waited:
                waited = True
                self._fill_state().lease_waits += 1
            entry = await type(self).get(self, fill.key)
            if entry is not None:
                return entry
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 0.05)

    async def _lease(self, lease_key: bytes, token: bytes) -> bool:
        """Take the lease at ``lease_key`` with ``token`` unless another holder has it."""
        try:
            return await self._redis.set_if_absent(
                lease_key, token, max(1, round(self.lease_ttl * 1000))
            )
        except FAILURES as err:
            raise translate(err, self._where) from err

    async def _keep_lease(self, lease_key: bytes, token: bytes) -> None:
        """Renew the lease every third of ``lease_ttl`` while the factory runs, for
        ``max_lease_hold`` seconds at most."""
        give_up = time.monotonic() + self.max_lease_hold
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            if time.monotonic() >= give_up:
                return  # the lease lapses: another process may compute

            try:
                renewed = await self._redis.script(
                    RENEW, lease_key, token, max(1, round(self.lease_ttl * 1000))
                )
            except FAILURES:
                return  # the factory's own write will meet the same outage and report it
            if not renewed:
                return  # expired meanwhile; another process may be computing too

    async def _release(self, lease_key: bytes, token: bytes) -> None:
        # Not worth failing a fill whose entry is stored: the lease expires by itself.
        with contextlib.suppress(*FAILURES):
            await self._redis.script(RELEASE, lease_key, token)
