"""Store URLs for ``RedisMemoryStore``: scheme, query parameters and database, checked.

Kept apart so that the URL parsing can move to ``memkv.urls`` in one piece.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlunsplit

from memkv.errors import InvalidArgumentError
from memkv.validation import split_url


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
