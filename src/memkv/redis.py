"""``RedisMemoryStore``: the memkv contract on one Redis/Valkey server or a Redis Cluster.

Each entry is one Redis string at ``"{namespace}:{key}"`` holding a small versioned
envelope (``docs/redis-format.md``); expiry is the server's (``PX``). Needs the
``redis`` extra: ``pip install "memkv[redis]"``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlunsplit

try:
    import msgspec
    from redis import exceptions as redis_errors
    from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import EqualJitterBackoff
except ImportError as err:  # pragma: no cover - exercised without the extra
    raise ImportError(
        f'RedisMemoryStore needs the redis extra: pip install "memkv[redis]" ({err})'
    ) from err

from memkv._core import make_entry
from memkv.codecs import CODEC_IDS, Codec, codec_id, codec_name, encode_value, resolve_codec
from memkv.entry import MemoryEntry
from memkv.errors import (
    AccessDeniedError,
    BackendError,
    BackendUnavailableError,
    CodecError,
    EventLoopError,
    InvalidArgumentError,
    MemKVError,
)
from memkv.store import TTL, BaseMemoryStore, StoreStats, operation_counts
from memkv.validation import (
    check_batch_size,
    check_items,
    check_key,
    check_keys,
    check_metadata,
    check_prefix,
    split_url,
    ttl_seconds,
)

__all__ = ["DEFAULT_OPTIONS", "ENVELOPE_HEADER", "ENVELOPE_MAGIC", "RedisMemoryStore"]

T = TypeVar("T")

AnyRedis = Redis | RedisCluster

#: Magic and version that start every envelope: b"MKV" then version 1.
ENVELOPE_MAGIC = b"MKV\x01"
#: magic (3s), version (B), created_at, updated_at, expires_at (3 x float64, 0.0 = never),
#: codec id (B), metadata length (uint32); big-endian, 33 bytes. See docs/redis-format.md.
ENVELOPE_HEADER = struct.Struct(">3sBdddBI")
_HEADER_SIZE = ENVELOPE_HEADER.size
_MAGIC, _VERSION = ENVELOPE_MAGIC[:3], ENVELOPE_MAGIC[3]

# Writes one envelope and keeps the created_at of the envelope it replaces, atomically.
# Only the first 12 bytes of the old value are read (GETRANGE), so a large value is not
# copied into Lua; SETRANGE keeps the expiry that SET ... PX just set.
_SET_SCRIPT = """\
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


_SET_SHA = hashlib.sha1(_SET_SCRIPT.encode(), usedforsecurity=False).hexdigest()

#: Defaults for a store built from a URL; see ``RedisMemoryStore``.
DEFAULT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 1.0,
    "connect_timeout": 1.0,
    "retries": 3,
    "backoff_base": 0.025,
    "backoff_cap": 1.0,
    "max_connections": None,
}
#: The pool size used for "no limit" (redis-py's own default is 100 connections).
_UNBOUNDED_POOL = 2**31 - 1
#: 9999-12-31 UTC: the last instant a ``datetime`` can hold.
_MAX_TIMESTAMP = 253402300799.0
#: Keys removed per UNLINK by ``clear``.
_CLEAR_BATCH = 500

P = ParamSpec("P")
R = TypeVar("R")


def _counts_errors(
    operation: str,
) -> Callable[
    [Callable[Concatenate[RedisMemoryStore[Any], P], Coroutine[Any, Any, R]]],
    Callable[Concatenate[RedisMemoryStore[Any], P], Coroutine[Any, Any, R]],
]:
    """Bind the store to the running loop, and count every failure of the operation."""

    def decorate(
        method: Callable[Concatenate[RedisMemoryStore[Any], P], Coroutine[Any, Any, R]],
    ) -> Callable[Concatenate[RedisMemoryStore[Any], P], Coroutine[Any, Any, R]]:
        @functools.wraps(method)
        async def counted(self: RedisMemoryStore[Any], /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                if self._loop is not asyncio.get_running_loop():
                    self._bind_loop()
                return await method(self, *args, **kwargs)
            except Exception:
                self._ops[operation, "error"] += 1
                raise

        return counted

    return decorate


#: Clients a forked child replaced: kept, never collected (see ``_renew_client``).
_INHERITED_CLIENTS: list[Any] = []

_CODEC_NAMES = {number: codec.name for codec, number in CODEC_IDS.items()}
_metadata_encoder = msgspec.msgpack.Encoder()
_metadata_decoder = msgspec.msgpack.Decoder(dict[str, Any])

_ACCESS_ERRORS = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.AuthenticationWrongNumberOfArgsError,
    redis_errors.NoPermissionError,
)
_OUTAGE_ERRORS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.SlotNotCoveredError,
    redis_errors.TryAgainError,
    redis_errors.BusyLoadingError,
    # Raised by the cluster client when no node answers (all down, or the seed dead).
    redis_errors.RedisClusterException,
    OSError,
    asyncio.TimeoutError,
)
#: How Redis ("can't run this command") and Valkey ("ACL failure in script") word an ACL
#: refusal of a command called from a script.
_SCRIPT_ACL_MARKERS = ("NOPERM", "can't run this command", "ACL failure", "no permissions")
_FAILURES = (
    redis_errors.RedisError,
    redis_errors.RedisClusterException,
    OSError,
    asyncio.TimeoutError,
)


class _NotRetried(Exception):
    """Carries an access error through ``Retry``, which only retries its own errors."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class _NoRetryOnAccess(Retry):
    """redis-py's ``Retry`` minus the access errors, which retrying cannot fix.

    ``AuthenticationError`` subclasses redis-py's ``ConnectionError``, so a plain
    ``Retry`` would back off and retry a wrong password ``retries`` times. Wrapping
    the operation (rather than passing ``is_retryable``) works on every redis-py 5+.
    """

    async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        async def attempt() -> Any:
            try:
                return await do()
            except _ACCESS_ERRORS as err:
                raise _NotRetried(err) from err

        try:
            return await super().call_with_retry(attempt, fail, *args, **kwargs)
        except _NotRetried as wrapped:
            raise wrapped.error from None


# Query parameters of a store URL: name -> (option name, parser).
def _parse_positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError(value)
    return number


def _parse_non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def _parse_positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _parse_str(value: str) -> str:
    if not value:
        raise ValueError(value)
    return value


def _parse_cert_reqs(value: str) -> str:
    if value.lower() not in ("none", "optional", "required"):
        raise ValueError(value)
    return value.lower()


_STORE_PARAMETERS: dict[str, tuple[str, Any]] = {
    "namespace": ("namespace", _parse_str),
    "codec": ("codec", _parse_str),
    "socket_timeout": ("socket_timeout", _parse_positive_float),
    "connect_timeout": ("connect_timeout", _parse_positive_float),
    "socket_connect_timeout": ("connect_timeout", _parse_positive_float),
    "retries": ("retries", _parse_non_negative_int),
    "backoff_base": ("backoff_base", _parse_positive_float),
    "backoff_cap": ("backoff_cap", _parse_positive_float),
    "max_connections": ("max_connections", _parse_positive_int),
    "pool_size": ("max_connections", _parse_positive_int),
}
_CLIENT_PARAMETERS: dict[str, Any] = {
    "db": _parse_non_negative_int,
    "client_name": _parse_str,
    "health_check_interval": _parse_non_negative_int,
    "ssl_cert_reqs": _parse_cert_reqs,
    "ssl_ca_certs": _parse_str,
    "ssl_certfile": _parse_str,
    "ssl_keyfile": _parse_str,
    "ssl_check_hostname": _parse_bool,
}
_SCHEMES = {
    "redis": ("redis", False),
    "rediss": ("rediss", False),
    "unix": ("unix", False),
    "redis+cluster": ("redis", True),
    "rediss+cluster": ("rediss", True),
}


def _parse_url(url: str) -> tuple[str, bool, str, dict[str, Any], dict[str, Any]]:
    """Split a store URL into (client URL, cluster?, server label, store options,
    client options). Messages never repeat the URL: it may hold a password."""
    parts = split_url(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise InvalidArgumentError(
            f"unknown Redis URL scheme {scheme!r}; expected redis://, rediss://, unix://, "
            "redis+cluster:// or rediss+cluster://"
        )
    client_scheme, cluster = _SCHEMES[scheme]
    store_options: dict[str, Any] = {}
    client_options: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _STORE_PARAMETERS:
            option, parser = _STORE_PARAMETERS[name]
            target = store_options
        elif name in _CLIENT_PARAMETERS:
            option, parser = name, _CLIENT_PARAMETERS[name]
            target = client_options
        else:
            known = ", ".join(sorted({*_STORE_PARAMETERS, *_CLIENT_PARAMETERS}))
            raise InvalidArgumentError(
                f"unknown parameter {name!r} in a Redis URL; expected one of {known}"
            )
        try:
            target[option] = parser(value)
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"bad value for the Redis URL parameter {name!r}: {value!r}"
            ) from None
    if client_scheme == "unix":
        if not parts.path:
            raise InvalidArgumentError("a unix:// Redis URL needs a socket path")
        server = parts.path
    else:
        try:
            host, port = parts.hostname or "localhost", parts.port or 6379
        except ValueError:
            raise InvalidArgumentError("bad port in a Redis URL") from None
        server = f"{host}:{port}"
        path = parts.path.strip("/")
        if path:
            if "db" in client_options or not (path.isascii() and path.isdigit()):
                raise InvalidArgumentError(
                    f"bad database in a Redis URL path: {parts.path!r}; expected /<number>"
                )
            client_options["db"] = int(path)
    if cluster and client_options.get("db"):
        raise InvalidArgumentError("Redis Cluster has only database 0")
    if client_scheme != "rediss" and any(name.startswith("ssl_") for name in client_options):
        raise InvalidArgumentError("ssl_* parameters need a rediss:// URL")
    # The query is consumed here and the database travels as an option, so redis-py
    # sees only scheme, credentials, host and port (or the socket path).
    path = parts.path if client_scheme == "unix" else ""
    client_url = urlunsplit((client_scheme, parts.netloc, path, "", ""))
    return client_url, cluster, server, store_options, client_options


def _glob_escape(raw: bytes) -> bytes:
    """Escape ``* ? [ ] \\`` so that SCAN MATCH treats them literally."""
    for char in (b"\\", b"*", b"?", b"[", b"]"):
        raw = raw.replace(char, b"\\" + char)
    return raw


class RedisMemoryStore(BaseMemoryStore[T]):
    """A store on one Redis/Valkey server or a Redis Cluster, built on redis-py's asyncio
    client (with hiredis).

    ``url_or_client`` is a URL (``redis://[user:password@]host:port/db``, ``rediss://``
    for TLS, ``unix:///path/to/redis.sock``, ``redis+cluster://host:port``) or an
    existing ``redis.asyncio.Redis``/``RedisCluster`` made with ``decode_responses=False``
    (the store then neither configures nor closes it). Every key lives at
    ``"{namespace}:{key}"``; ``scan`` and ``clear`` never leave the namespace. ``codec``
    is ``"msgpack"`` (default), ``"json"``, ``"pickle"`` (unsafe on a shared server) or
    an object with ``encode``/``decode`` (``memkv.codecs``). Metadata is always stored
    as MessagePack.

    Connection options (URL query parameters too; the URL's values are used unless
    given here): ``socket_timeout`` (1 s) bounds each command, ``connect_timeout``
    (1 s) each connection attempt; a failed attempt is retried ``retries`` (3) times
    after an exponential backoff with jitter from ``backoff_base`` (25 ms) up to
    ``backoff_cap`` (1 s). When the budget is spent the operation raises
    ``BackendUnavailableError``: at worst after ``(retries + 1) * (connect_timeout +
    socket_timeout)`` plus the backoff (0.175-0.35 s by default), after just the
    backoff when the server refuses connections. The same store recovers by itself
    when the server returns. On a cluster, redis-py's cluster client spends
    ``retries`` on its own loop, which refreshes the slot map between attempts.
    ``max_connections`` bounds the pool (unbounded by default; when set on one server,
    callers wait up to ``socket_timeout`` for a free connection; on a cluster it is per
    node, and a call that finds no free connection fails at once with
    ``BackendUnavailableError``, as redis-py's cluster pool does). A wrong password or
    an ACL refusal raises ``AccessDeniedError`` without retrying. Values are sent whole
    in one command under ``socket_timeout``: raise it for values of many megabytes.

    Costs: ``get``, ``set``, ``delete`` and ``exists`` are one round trip each (``set``
    runs a small cached Lua script, so overwriting keeps ``created_at`` atomically);
    ``get_many`` is one ``MGET`` (one per node on a cluster), ``set_many`` one
    pipeline, ``delete_many`` one ``UNLINK``; ``scan`` and ``clear`` walk the
    keyspace with ``SCAN`` (every primary on a cluster) and never use ``KEYS`` or
    ``FLUSHDB``. ``stats()`` counts this client's operations (``expired`` and
    ``evictions`` are 0, ``entries`` is ``None``).

    >>> store = RedisMemoryStore("redis://localhost:6379/0", namespace="app")
    >>> await store.set("user:1", {"name": "Ada"}, ttl=60)  # doctest: +SKIP
    >>> (await store.get("user:1")).value                    # doctest: +SKIP
    {'name': 'Ada'}
    """

    def __init__(
        self,
        url_or_client: str | AnyRedis,
        *,
        namespace: str | None = None,
        codec: str | Codec | None = None,
        socket_timeout: float | None = None,
        connect_timeout: float | None = None,
        retries: int | None = None,
        backoff_base: float | None = None,
        backoff_cap: float | None = None,
        max_connections: int | None = None,
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
        if isinstance(url_or_client, str):
            client_url, cluster, server, url_options, client_options = _parse_url(url_or_client)
            if namespace is None:
                namespace = url_options.pop("namespace", None)
            if codec is None:
                codec = url_options.pop("codec", None)
            options = {**DEFAULT_OPTIONS, **url_options, **given}
            _check_options(options)
        elif isinstance(url_or_client, (Redis, RedisCluster)):
            if given:
                raise InvalidArgumentError(
                    f"{', '.join(sorted(given))} only apply to a store made from a URL; "
                    "configure the client you pass instead"
                )
            if url_or_client.get_encoder().decode_responses:
                raise InvalidArgumentError(
                    "RedisMemoryStore needs a client made with decode_responses=False"
                )
            cluster = isinstance(url_or_client, RedisCluster)
            server = _server_label(url_or_client)
        else:
            raise InvalidArgumentError(
                "RedisMemoryStore needs a redis://, rediss://, unix:// or redis+cluster:// "
                "URL or a redis.asyncio Redis/RedisCluster client, "
                f"not {type(url_or_client).__name__}"
            )
        if namespace is None:
            namespace = "memkv"
        if not isinstance(namespace, str) or not namespace:
            raise InvalidArgumentError(f"namespace must be a non-empty str, got {namespace!r}")
        self._namespace = namespace
        self._prefix = (namespace + ":").encode("utf-8", "surrogatepass")
        self._codec = resolve_codec("msgpack" if codec is None else codec)
        self._codec_id = codec_id(self._codec)
        self._cluster = cluster
        self._server = server
        self._where = f"Redis {'Cluster ' if cluster else ''}at {server}"
        # The client comes last: nothing above may fail after a pool exists.
        self._make_client: Callable[[], AnyRedis] | None
        if isinstance(url_or_client, str):
            self._make_client = functools.partial(
                _make_client, client_url, cluster, options, client_options
            )
            self._client: AnyRedis = self._make_client()
        else:
            self._make_client = None
            self._client = url_or_client
        # The event loop the client's connections belong to (None until first used).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_pid = os.getpid()
        self._gets = self._hits = self._misses = self._sets = self._deletes = 0
        self._ops: Counter[tuple[str, str]] = Counter()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisMemoryStore[Any]:
        """A store for ``url``; keyword ``options`` override the URL's query parameters.

        Query parameters: ``namespace``, ``codec``, ``socket_timeout``,
        ``connect_timeout``, ``retries``, ``backoff_base``, ``backoff_cap``,
        ``max_connections`` (alias ``pool_size``), ``db``, ``client_name``,
        ``health_check_interval`` and, for ``rediss://``, ``ssl_cert_reqs``,
        ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``.
        An unknown parameter or a bad value raises ``InvalidArgumentError`` naming it.
        """
        if not isinstance(url, str):
            raise InvalidArgumentError(f"a Redis URL must be a str, not {type(url).__name__}")
        return cls(url, **options)

    @property
    def namespace(self) -> str:
        """The namespace every key of this store lives under."""
        return self._namespace

    @property
    def client(self) -> AnyRedis:
        """The redis-py client underneath (for commands memkv does not wrap).

        A store made from a URL replaces it when it moves to a new event loop.
        """
        return self._client

    # -- keys and envelopes --------------------------------------------------------

    def _redis_key(self, key: str) -> bytes:
        if type(key) is not str:
            key = check_key(key)
        return self._prefix + key.encode("utf-8", "surrogatepass")

    def _envelope(
        self, value: Any, metadata: dict[str, Any] | None, now: float, seconds: float | None
    ) -> tuple[bytes, int]:
        payload = encode_value(self._codec, value)
        meta = _encode_metadata(metadata) if metadata else b""
        if seconds is None:
            expires, px = 0.0, 0
        else:
            # At most 100 years (ttl_seconds checks), so PX never overflows the server.
            px = max(1, round(seconds * 1000))
            expires = now + px / 1000  # what the server will do: whole milliseconds
        header = ENVELOPE_HEADER.pack(
            _MAGIC, _VERSION, now, now, expires, self._codec_id, len(meta)
        )
        return header + meta + payload, px

    def _entry(self, key: str, data: bytes) -> MemoryEntry[T]:
        if len(data) < _HEADER_SIZE or data[:3] != _MAGIC:
            raise CodecError(
                f"the value at key {key!r} in namespace {self._namespace!r} on "
                f"{self._where} is not a memkv entry"
            )
        _magic, version, created, updated, expires, stored_codec, meta_len = (
            ENVELOPE_HEADER.unpack_from(data)
        )
        if version != _VERSION:
            raise CodecError(
                f"the value at key {key!r} is a memkv envelope of version {version}; "
                f"this memkv reads version {_VERSION}"
            )
        if stored_codec != self._codec_id and stored_codec and self._codec_id:
            raise CodecError(
                f"the value at key {key!r} was written with the "
                f"{_CODEC_NAMES.get(stored_codec, f'id {stored_codec}')} codec; "
                f"this store uses the {codec_name(self._codec)} codec"
            )
        body = _HEADER_SIZE + meta_len
        if body > len(data) or not (
            _valid_timestamp(created)
            and _valid_timestamp(updated)
            and (expires == 0.0 or _valid_timestamp(expires))
        ):
            raise CodecError(
                f"the value at key {key!r} in namespace {self._namespace!r} is a damaged "
                "memkv envelope (bad metadata length or timestamp)"
            )
        try:
            metadata = _metadata_decoder.decode(data[_HEADER_SIZE:body]) if meta_len else None
            value = self._codec.decode(data[body:])
        except Exception as err:
            raise CodecError(
                f"the value at key {key!r} in namespace {self._namespace!r} cannot be "
                f"decoded with the {codec_name(self._codec)} codec ({type(err).__name__})"
            ) from None
        return make_entry(key, value, metadata, created, updated, expires or None)

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
            self._renew_client()
        self._loop = loop
        self._loop_pid = os.getpid()

    def _renew_client(self) -> None:
        """A fresh client in place of the one this store made (none for a client passed in)."""
        if self._make_client is None:
            return
        if self._loop_pid != os.getpid():
            # Inherited through fork(): collecting it would close sockets (and their
            # epoll registrations) that the parent process still uses.
            _INHERITED_CLIENTS.append(self._client)
        self._client = self._make_client()

    def _loop_runs(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether ``loop`` still runs; a loop of the parent process never does here."""
        return self._loop_pid == os.getpid() and loop.is_running()

    # -- errors ----------------------------------------------------------------------

    def _error(self, err: BaseException) -> MemKVError:
        """The memkv error for a redis-py or socket failure (never with a password)."""
        if isinstance(err, _ACCESS_ERRORS) or (
            # An ACL refusal inside the set script comes back as a plain error reply,
            # worded differently by Redis and Valkey.
            isinstance(err, redis_errors.ResponseError)
            and any(marker in str(err) for marker in _SCRIPT_ACL_MARKERS)
        ):
            return AccessDeniedError(f"{self._where} refused access: {err}")
        if isinstance(err, _OUTAGE_ERRORS):
            return BackendUnavailableError(
                f"{self._where} is unavailable: {type(err).__name__}: {err}"
            )
        return BackendError(f"{self._where} answered with an error: {err}")

    # -- single keys -----------------------------------------------------------------

    @_counts_errors("get")
    async def get(self, key: str) -> MemoryEntry[T] | None:
        redis_key = self._redis_key(key)
        try:
            # decode_responses=False (checked for a client passed in): replies are bytes.
            data: bytes | None = await self._client.get(redis_key)  # type: ignore[assignment]
        except _FAILURES as err:
            raise self._error(err) from err
        if data is None:
            self._gets += 1
            self._misses += 1
            self._ops["get", "miss"] += 1
            return None
        entry = self._entry(key, data)  # a CodecError here counts as a failed call only
        self._gets += 1
        self._hits += 1
        self._ops["get", "hit"] += 1
        return entry

    @_counts_errors("set")
    async def set(
        self,
        key: str,
        value: T,
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        redis_key = self._redis_key(key)
        seconds = ttl_seconds(ttl)
        envelope, px = self._envelope(value, check_metadata(metadata), time.time(), seconds)
        client = self._client
        try:
            try:
                await client.execute_command("EVALSHA", _SET_SHA, 1, redis_key, envelope, px)
            except redis_errors.NoScriptError:
                # First use on this server, or its script cache was flushed (restart).
                await client.execute_command("EVAL", _SET_SCRIPT, 1, redis_key, envelope, px)
        except _FAILURES as err:
            raise self._error(err) from err
        self._sets += 1
        self._ops["set", "ok"] += 1

    @_counts_errors("delete")
    async def delete(self, key: str) -> bool:
        redis_key = self._redis_key(key)
        try:
            removed = await self._client.unlink(redis_key)
        except _FAILURES as err:
            raise self._error(err) from err
        self._deletes += removed
        self._ops["delete", "hit" if removed else "miss"] += 1
        return bool(removed)

    @_counts_errors("exists")
    async def exists(self, key: str) -> bool:
        redis_key = self._redis_key(key)
        try:
            count = await self._client.exists(redis_key)
        except _FAILURES as err:
            raise self._error(err) from err
        self._ops["exists", "hit" if count else "miss"] += 1
        return bool(count)

    # -- batches -----------------------------------------------------------------------

    @_counts_errors("get_many")
    async def get_many(self, keys: Iterable[str]) -> list[MemoryEntry[T] | None]:
        checked = check_keys(keys)
        if not checked:
            self._ops["get_many", "ok"] += 1
            return []
        redis_keys = [self._redis_key(key) for key in checked]
        try:
            if self._cluster:
                values = await self._client.mget_nonatomic(redis_keys)  # type: ignore[union-attr]
            else:
                values = await self._client.mget(redis_keys)
        except _FAILURES as err:
            raise self._error(err) from err
        entry = self._entry
        found = [
            None if data is None else entry(key, data)
            for key, data in zip(checked, values, strict=True)
        ]
        hits = len(found) - found.count(None)
        self._gets += len(found)
        self._hits += hits
        self._misses += len(found) - hits
        self._ops["get_many", "ok"] += 1
        return found

    @_counts_errors("set_many")
    async def set_many(
        self,
        items: Mapping[str, T] | Iterable[tuple[str, T]],
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        pairs = check_items(items)
        seconds = ttl_seconds(ttl)
        meta = check_metadata(metadata)
        if not pairs:
            self._ops["set_many", "ok"] += 1
            return
        now = time.time()
        # Encode everything first: a value the codec rejects must leave nothing written.
        commands = []
        for key, value in pairs:
            envelope, px = self._envelope(value, meta, now, seconds)
            commands.append((self._redis_key(key), envelope, px))
        try:
            results = await self._pipeline_set(commands, use_sha=True)
            if any(isinstance(result, redis_errors.NoScriptError) for result in results):
                # Some server lacked the script. Rewrite the whole batch in order with
                # EVAL (which caches it), so that a repeated key still ends on its last
                # value; rewriting an entry keeps its created_at.
                results = await self._pipeline_set(commands, use_sha=False)
            for result in results:
                if isinstance(result, Exception):
                    raise result
        except _FAILURES as err:
            raise self._error(err) from err
        self._sets += len(pairs)
        self._ops["set_many", "ok"] += 1

    async def _pipeline_set(
        self, commands: list[tuple[bytes, bytes, int]], *, use_sha: bool
    ) -> list[Any]:
        # execute_command rather than evalsha(): cluster pipelines refuse the named
        # script helpers but route a raw EVALSHA by its key like any other command.
        pipe = self._client.pipeline(transaction=False)
        name, script = ("EVALSHA", _SET_SHA) if use_sha else ("EVAL", _SET_SCRIPT)
        for redis_key, envelope, px in commands:
            pipe.execute_command(name, script, 1, redis_key, envelope, px)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    @_counts_errors("delete_many")
    async def delete_many(self, keys: Iterable[str]) -> int:
        checked = check_keys(keys)
        removed = await self._unlink([self._redis_key(key) for key in checked]) if checked else 0
        self._deletes += removed
        self._ops["delete_many", "ok"] += 1
        return removed

    async def _unlink(self, redis_keys: list[bytes]) -> int:
        try:
            removed: int = await self._client.unlink(*redis_keys)
        except _FAILURES as err:
            raise self._error(err) from err
        return removed

    # -- scans -------------------------------------------------------------------------

    def scan(self, pattern: str | None = None, batch_size: int = 100) -> AsyncIterator[str]:
        """Yield each key starting with the literal prefix ``pattern`` once.

        One ``SCAN MATCH <escaped prefix>* COUNT batch_size`` per page, on every
        primary of a cluster; keys the server repeats are yielded once (the keys seen
        so far are remembered, so memory grows with the number of matches).
        """
        try:
            prefix = check_prefix(pattern)
            count = check_batch_size(batch_size)
        except Exception:
            self._ops["scan", "error"] += 1
            raise
        return self._scan(prefix, count)

    async def _scan(self, prefix: str, count: int) -> AsyncIterator[str]:
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
        except Exception:
            outcome = "error"
            raise
        finally:
            # Once, when the scan ends: exhausted or closed early (ok), or failed.
            self._ops["scan", outcome] += 1

    async def _scan_redis_keys(self, prefix: str, count: int) -> AsyncIterator[bytes]:
        """Every Redis key under ``prefix``, once."""
        match = _glob_escape(self._redis_key(prefix)) + b"*"
        seen: set[bytes] = set()
        for node in await self._scan_targets():
            cursor = 0
            while True:
                cursor, redis_keys = await self._scan_page(node, cursor, match, count)
                for redis_key in redis_keys:
                    if redis_key not in seen:
                        seen.add(redis_key)
                        yield redis_key
                if not cursor:
                    break

    async def _scan_targets(self) -> list[ClusterNode | None]:
        if not self._cluster:
            return [None]
        cluster: RedisCluster = self._client  # type: ignore[assignment]
        try:
            await cluster.initialize()
        except _FAILURES as err:
            raise self._error(err) from err
        return list(cluster.get_primaries())

    async def _scan_page(
        self, node: ClusterNode | None, cursor: int, match: bytes, count: int
    ) -> tuple[int, list[bytes]]:
        try:
            if node is None:
                reply = await self._client.execute_command(
                    "SCAN", cursor, "MATCH", match, "COUNT", count
                )
            else:
                reply = await node.execute_command("SCAN", cursor, "MATCH", match, "COUNT", count)
        except _FAILURES as err:
            raise self._error(err) from err
        next_cursor, redis_keys = reply
        return int(next_cursor), redis_keys

    @_counts_errors("clear")
    async def clear(self, pattern: str | None = None) -> int:
        """Remove this store's keys that start with ``pattern`` (all when ``None``).

        Batched ``SCAN`` + ``UNLINK`` (500 keys per ``UNLINK``) on every primary;
        returns how many keys were removed.
        """
        prefix = check_prefix(pattern)
        removed = 0
        batch: list[bytes] = []
        async for redis_key in self._scan_redis_keys(prefix, _CLEAR_BATCH):
            batch.append(redis_key)
            if len(batch) >= _CLEAR_BATCH:
                removed += await self._unlink(batch)
                batch = []
        if batch:
            removed += await self._unlink(batch)
        self._deletes += removed
        self._ops["clear", "ok"] += 1
        return removed

    # -- lifecycle -----------------------------------------------------------------------

    def stats(self) -> StoreStats:
        return StoreStats(
            gets=self._gets,
            hits=self._hits,
            misses=self._misses,
            sets=self._sets,
            deletes=self._deletes,
            entries=None,
            operations=operation_counts(self._ops),
        )

    async def close(self) -> None:
        """Close the connections (only when the store made its client). Safe twice.

        The store may be used again afterwards, on this loop or another: it reconnects.
        """
        bound = self._loop
        if bound is not None and bound is not asyncio.get_running_loop():
            if self._loop_runs(bound):
                raise EventLoopError(
                    f"this store ({self!r}) is in use on another event loop that is still "
                    "running; close it there"
                )
            # Opened on a loop that has stopped: those connections cannot be closed
            # from this one. Drop them for a fresh client.
            self._renew_client()
        elif self._make_client is not None:
            await self._client.aclose()
            # A fresh client too: redis-py's pools keep locks bound to the loop that
            # used them, and the store may next be used on another loop.
            self._renew_client()
        self._loop = None

    def __repr__(self) -> str:
        kind = "cluster " if self._cluster else ""
        return (
            f"RedisMemoryStore({kind}{self._server}, namespace={self._namespace!r}, "
            f"codec={codec_name(self._codec)!r})"
        )


def _valid_timestamp(timestamp: float) -> bool:
    # Within what datetime can represent (years 1970 to 9999); NaN fails both tests.
    return 0.0 <= timestamp < _MAX_TIMESTAMP


def _encode_metadata(metadata: dict[str, Any]) -> bytes:
    try:
        return _metadata_encoder.encode(metadata)
    except Exception as err:
        raise CodecError(
            f"metadata must be MessagePack-encodable: {type(err).__name__}: {err}"
        ) from err


def _check_options(options: dict[str, Any]) -> None:
    for name in ("socket_timeout", "connect_timeout", "backoff_base", "backoff_cap"):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InvalidArgumentError(f"{name} must be a positive number, got {value!r}")
    retries = options["retries"]
    if type(retries) is not int or retries < 0:
        raise InvalidArgumentError(f"retries must be an int >= 0, got {retries!r}")
    pool = options["max_connections"]
    if pool is not None and (type(pool) is not int or pool < 1):
        raise InvalidArgumentError(f"max_connections must be an int >= 1, got {pool!r}")


def _make_client(
    url: str, cluster: bool, options: dict[str, Any], client_options: dict[str, Any]
) -> AnyRedis:
    retry = _NoRetryOnAccess(
        EqualJitterBackoff(cap=options["backoff_cap"], base=options["backoff_base"]),
        options["retries"],
    )
    common: dict[str, Any] = {
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["connect_timeout"],
        "retry": retry,
        **client_options,
    }
    max_connections = options["max_connections"]
    if cluster:
        common["max_connections"] = max_connections or _UNBOUNDED_POOL
        return RedisCluster.from_url(url, **common)
    if max_connections is None:
        # redis-py reads "no limit" as 100 connections: pass a real bound instead.
        pool: ConnectionPool = ConnectionPool.from_url(
            url, max_connections=_UNBOUNDED_POOL, **common
        )
    else:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=options["socket_timeout"], **common
        )
    return Redis.from_pool(pool)


def _server_label(client: AnyRedis) -> str:
    if isinstance(client, RedisCluster):
        # The seed nodes it was given: known before the first command, unlike the map.
        seeds: dict[str, ClusterNode] = client.nodes_manager.startup_nodes
        return ",".join(seeds) or "unknown nodes"
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
