"""Building what a store made from a URL talks through: the transport's
``ConnectionSpec`` (its data path) and the redis-py client it hands out as ``client``."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.backoff import EqualJitterBackoff

from memkv.errors import InvalidArgumentError
from memkv.redis.retry import NoRetryOnAccess
from memkv.redis.transport import DEFAULT_MAX_INFLIGHT, ConnectionSpec
from memkv.urls import RedisURL
from memkv.validation import MAX_COUNT

#: The longest timeout or backoff a store accepts: a day. Beyond that no server is
#: coming back, and the event loop's timers cannot take ``inf`` or huge values anyway.
MAX_WAIT_SECONDS = 86400.0

__all__ = [
    "DEFAULT_OPTIONS",
    "AnyRedis",
    "check_options",
    "connection_spec",
    "make_client",
    "server_label",
    "ssl_context",
]

AnyRedis = Redis | RedisCluster

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


def check_options(options: dict[str, Any]) -> None:
    """Raise ``InvalidArgumentError`` naming the first option of ``DEFAULT_OPTIONS`` that
    has a value the client cannot use."""
    for name in ("socket_timeout", "connect_timeout", "backoff_base", "backoff_cap"):
        value = options[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 < value <= MAX_WAIT_SECONDS
        ):
            raise InvalidArgumentError(
                f"{name} must be a number of seconds above 0 and at most {MAX_WAIT_SECONDS:g} "
                "(a day)"
            )
    retries = options["retries"]
    if type(retries) is not int or retries < 0:
        raise InvalidArgumentError("retries must be an int >= 0")
    pool = options["max_connections"]
    if pool is not None and (type(pool) is not int or not 1 <= pool <= MAX_COUNT):
        raise InvalidArgumentError(f"max_connections must be an int from 1 to {MAX_COUNT} or None")


def make_client(
    url: str, cluster: bool, options: dict[str, Any], client_options: dict[str, Any]
) -> AnyRedis:
    """A new client for ``url`` with the store ``options`` (checked) and redis-py's own
    ``client_options``; it connects on first use."""
    retry = NoRetryOnAccess(
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


_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def ssl_context(connection: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context for a ``rediss://`` URL's ``ssl_*`` parameters, with redis-py's
    defaults: the certificate is required and its host name checked, against
    ``ssl_ca_certs`` or the system's CAs; ``ssl_certfile``/``ssl_keyfile`` is the client's
    certificate.

    The files are read here: one that cannot be read or parsed raises
    ``InvalidArgumentError`` naming the parameter, never its value (a path may say more
    than it should), and with no chained error that would carry it.
    """
    loading = "ssl_ca_certs"
    try:
        context = ssl.create_default_context(cafile=connection.get("ssl_ca_certs"))
        reqs = _CERT_REQS[connection.get("ssl_cert_reqs", "required")]
        # check_hostname first: CERT_NONE is refused while it is on.
        context.check_hostname = reqs != ssl.CERT_NONE and connection.get(
            "ssl_check_hostname", True
        )
        context.verify_mode = reqs
        certfile = connection.get("ssl_certfile")
        if certfile is not None:
            loading = "ssl_certfile/ssl_keyfile"
            context.load_cert_chain(certfile, connection.get("ssl_keyfile"))
        return context
    except (OSError, ssl.SSLError) as err:
        kind = type(err).__name__
    raise InvalidArgumentError(
        f"the file named by the URL parameter {loading} cannot be used ({kind})"
    )


def connection_spec(url: RedisURL, options: Mapping[str, Any]) -> ConnectionSpec:
    """The transport's ``ConnectionSpec`` for ``url`` with the store ``options`` (checked):
    ``socket_timeout`` bounds how long the server may stay silent while commands wait,
    ``connect_timeout`` the connection and its handshake. RESP3 (``HELLO 3``), falling
    back to RESP2 on a server without ``HELLO``. ``health_check_interval`` and
    ``max_connections`` configure only the redis-py ``client``: the transport keeps one
    connection per node (and a second one for commands of 512 KiB or more)."""
    connection = url.connection
    return ConnectionSpec(
        host=url.host or "127.0.0.1",
        port=url.port or 6379,
        path=url.socket_path,
        ssl=ssl_context(connection) if url.tls else None,
        username=url.username,
        password=url.password,
        db=connection.get("db", 0),
        client_name=connection.get("client_name"),
        connect_timeout=options["connect_timeout"],
        command_timeout=options["socket_timeout"],
        max_inflight=DEFAULT_MAX_INFLIGHT,
    )


def server_label(client: AnyRedis) -> str:
    """Where a client passed in talks to, for messages (never with a password)."""
    if isinstance(client, RedisCluster):
        # The seed nodes it was given: known before the first command, unlike the map.
        seeds: dict[str, ClusterNode] = client.nodes_manager.startup_nodes
        return ",".join(seeds) or "unknown nodes"
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
