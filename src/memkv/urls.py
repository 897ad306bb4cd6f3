"""Store URLs: parsed once into an immutable description, then opened as a store.

The one place that knows the URL grammar (``memory://``, ``redis://``, ``rediss://``,
``unix://``, ``redis+cluster://``, ``rediss+cluster://``), the query parameters, and how
to keep credentials out of messages. Nothing here imports redis-py: a Redis URL can be
parsed without the ``redis`` extra, which only opening the store needs.

Messages about a URL name the component or parameter at fault and never repeat URL
text: not the user information, path, query values or fragment, and not an unknown
scheme (in ``user:password@host`` the "scheme" is the user name), not an unknown
parameter's name (a password holding an unencoded ``?`` ends up there): the parameter
is named by its position and the closest known name. Known parameter names are shown;
their values are not, except the codec name (``resolve_codec`` echoes it: it selects
one of three codecs). A built store shows the server's address (host and port, or
socket path), its namespace and its codec name.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from memkv.errors import InvalidArgumentError, InvalidArgumentTypeError
from memkv.store import MemoryStore
from memkv.validation import check_max_entries

__all__ = [
    "REDIS_SCHEMES",
    "MemoryURL",
    "RedisURL",
    "StoreURL",
    "mask_credentials",
    "open_store",
    "parse_redis_url",
    "parse_url",
]


class _Scheme(NamedTuple):
    client_scheme: str  # what redis-py is given: redis, rediss or unix
    cluster: bool
    tls: bool


_SCHEMES: Mapping[str, _Scheme] = MappingProxyType(
    {
        "redis": _Scheme("redis", cluster=False, tls=False),
        "rediss": _Scheme("rediss", cluster=False, tls=True),
        "unix": _Scheme("unix", cluster=False, tls=False),
        "redis+cluster": _Scheme("redis", cluster=True, tls=False),
        "rediss+cluster": _Scheme("rediss", cluster=True, tls=True),
    }
)
#: The schemes of a Redis store URL.
REDIS_SCHEMES = frozenset(_SCHEMES)
_ENCODE_HINT = (
    "percent-encode '/', '?', '#', '@', '[' and ']' in a user name or password "
    "(%2F %3F %23 %40 %5B %5D)"
)
_REDIS_EXPECTED = ", ".join(f"{scheme}://" for scheme in _SCHEMES)
_DEFAULT_PORT = 6379


@dataclass(frozen=True)
class MemoryURL:
    """A parsed ``memory://?max_entries=N&core=python`` URL: a new ``LocalMemoryStore``
    (``core``: ``"cython"``, ``"python"`` or ``None`` for ``memkv.IMPLEMENTATION``)."""

    max_entries: int | None = None
    core: str | None = None

    def __post_init__(self) -> None:
        check_max_entries(self.max_entries)
        if self.core not in (None, "cython", "python"):
            raise InvalidArgumentError("MemoryURL.core must be 'cython', 'python' or None")


@dataclass(frozen=True, repr=False)
class RedisURL:
    """A parsed Redis store URL: everything ``RedisMemoryStore`` needs to connect.

    ``scheme`` is the URL's (lowercased); ``host``/``port`` are ``None`` for a
    ``unix://`` URL, ``socket_path`` is ``None`` otherwise; ``username`` and
    ``password`` are percent-decoded (``None`` when absent or empty). ``options`` holds
    the store options of the query (``namespace``, ``codec``, timeouts, retries, pool
    size), ``connection`` the redis-py connection keywords (``db``, ``client_name``,
    ``health_check_interval``, ``ssl_*``). ``repr`` masks the user name and password.
    """

    scheme: str
    host: str | None
    port: int | None
    socket_path: str | None
    username: str | None
    password: str | None
    options: Mapping[str, Any]
    connection: Mapping[str, Any]

    def __post_init__(self) -> None:
        for name in ("scheme", "host", "socket_path", "username", "password"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentTypeError(
                    f"RedisURL.{name} must be a str or None, not {type(value).__name__}"
                )
        if self.port is not None and (type(self.port) is not int or not 0 < self.port < 65536):
            raise InvalidArgumentError("RedisURL.port must be an int from 1 to 65535")
        for name in ("options", "connection"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise InvalidArgumentTypeError(
                    f"RedisURL.{name} must be a mapping with str keys, not {type(value).__name__}"
                )
            # Frozen all the way down: a parsed URL cannot change under a store.
            object.__setattr__(self, name, MappingProxyType(dict(value)))
        if self.scheme not in _SCHEMES:
            raise InvalidArgumentError(f"unknown Redis URL scheme; expected {_REDIS_EXPECTED}")
        if (self.socket_path is None) != (self.scheme != "unix") or (
            self.socket_path is None and (self.host is None or self.port is None)
        ):
            raise InvalidArgumentError(
                "a RedisURL has a socket_path for unix://, else a host and a port"
            )

    @property
    def cluster(self) -> bool:
        """Whether the URL names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
        return _SCHEMES[self.scheme].cluster

    @property
    def tls(self) -> bool:
        """Whether connections use TLS (``rediss://``, ``rediss+cluster://``)."""
        return _SCHEMES[self.scheme].tls

    @property
    def server(self) -> str:
        """The server's address for messages: ``host:port`` or the socket path."""
        if self.socket_path is not None:
            return self.socket_path
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def client_url(self) -> str:
        """The URL redis-py is given: scheme, credentials, and host and port or socket
        path (the query is consumed here; the database travels in ``connection``).

        It holds the password: never show it.
        """
        credentials = ""
        if self.username is not None or self.password is not None:
            credentials = quote(self.username or "", safe="")
            if self.password is not None:
                credentials += ":" + quote(self.password, safe="")
            credentials += "@"
        client_scheme = _SCHEMES[self.scheme].client_scheme
        if self.socket_path is not None:
            return f"unix://{credentials}{quote(self.socket_path, safe='/')}"
        return f"{client_scheme}://{credentials}{quote(self.server, safe='[]:')}"

    def __repr__(self) -> str:
        credentials = ""
        if self.username is not None or self.password is not None:
            credentials = ("***" if self.username is not None else "") + (
                ":***" if self.password is not None else ""
            )
            credentials += "@"
        settings = "".join(
            f", {name}={value!r}" for name, value in {**self.connection, **self.options}.items()
        )
        return f"RedisURL('{self.scheme}://{credentials}{self.server}'{settings})"


#: What ``parse_url`` returns.
StoreURL = MemoryURL | RedisURL


def open_store(url: str | StoreURL) -> MemoryStore[Any]:
    """Open the store a URL (or the ``parse_url`` description of one) describes.

    - ``memory://?max_entries=N&core=python`` — a ``LocalMemoryStore`` (``core``:
      ``cython`` or ``python``; the one in use when absent);
    - ``redis://[user:password@]host:port/db?namespace=NAME&codec=json``, ``rediss://…``
      (TLS), ``unix:///path/to/redis.sock?…`` and ``redis+cluster://host:port?…`` — a
      ``RedisMemoryStore`` (needs ``pip install "memkv[redis]"``).

    A malformed URL, an unknown scheme or a bad query parameter raises
    ``InvalidArgumentError`` (a ``ValueError``) naming the part at fault (see
    ``parse_url``); without the redis extra a Redis URL raises ``ImportError`` naming it.
    """
    parsed = url if isinstance(url, (MemoryURL, RedisURL)) else parse_url(url)
    if isinstance(parsed, MemoryURL):
        from memkv.local import LocalMemoryStore

        return LocalMemoryStore(parsed.max_entries, core=parsed.core)
    from memkv.redis import RedisMemoryStore  # ImportError names the extra to install

    return RedisMemoryStore(parsed)


def parse_url(url: str) -> StoreURL:
    """Parse a store URL into a ``MemoryURL`` or a ``RedisURL``, without opening anything.

    Raises ``InvalidArgumentError`` naming the component or parameter at fault, never
    quoting the URL: it may hold a password.
    """
    parts, scheme = _split(url, "store", ("memory", *_SCHEMES))
    if scheme == "memory":
        return _memory_url(parts)
    return _redis_url(parts, scheme)


def parse_redis_url(url: str) -> RedisURL:
    """Parse a Redis store URL (``parse_url`` for the Redis schemes only)."""
    return _redis_url(*_split(url, "Redis", tuple(_SCHEMES)))


# -- splitting -------------------------------------------------------------------------------


def _split(url: object, kind: str, schemes: tuple[str, ...]) -> tuple[SplitResult, str]:
    """``urlsplit(url)`` and its lowercased scheme, one of ``schemes``, with its port
    checked and the shapes that leak a password refused.

    Each failure is raised outside the ``except`` block: urlsplit's own message quotes
    the URL, and even a suppressed ``__context__`` would carry it along.
    """
    if not isinstance(url, str):
        raise InvalidArgumentError(f"a {kind} URL must be a str, not {type(url).__name__}")
    parts: SplitResult | None
    try:
        parts = urlsplit(url)
        _check_bracketed_host(parts.netloc)
    except ValueError:
        parts = None
    if parts is None:
        raise InvalidArgumentError(
            f"malformed host in the {kind} URL (brackets or characters); {_ENCODE_HINT}"
        )
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        # Never repeated: in "user:password@host" the "scheme" is the user name.
        expected = ", ".join(f"{name}://" for name in schemes)
        problem = f"unknown {kind} URL scheme" if scheme else f"a {kind} URL needs a scheme"
        raise InvalidArgumentError(f"{problem}; expected {expected}")
    if "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
        # A user name or password holding an unencoded '/', '?' or '#' ends the host
        # early and spills into the path, query or fragment: refuse it as a whole.
        raise InvalidArgumentError(f"an '@' after the host of a {kind} URL; {_ENCODE_HINT}")
    if "#" in url:
        raise InvalidArgumentError(f"a {kind} URL takes no #fragment; {_ENCODE_HINT}")
    port_ok = True
    try:
        parts.port  # noqa: B018 - parsed lazily; a bad port raises here
    except ValueError:
        port_ok = False
    if not port_ok:
        raise InvalidArgumentError(
            f"the {kind} URL's port is not a number from 0 to 65535; {_ENCODE_HINT}"
        )
    return parts, scheme


def _check_bracketed_host(netloc: str) -> None:
    """Raise ``ValueError`` for a bracketed host that is not an IPv6 (or IPvFuture)
    address, as ``urlsplit`` does itself from Python 3.11.4 on; before, ``[anything]``
    was taken for a host name (and shown in the store's repr)."""
    if "[" not in netloc or "]" not in netloc:
        return
    host = netloc.partition("[")[2].partition("]")[0]
    if host.startswith("v"):
        if not re.fullmatch(r"v[a-fA-F0-9]+\..+", host):
            raise ValueError("invalid IPvFuture address")
    elif not isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
        raise ValueError("an IPv4 address cannot be in brackets")


def _query(parts: SplitResult) -> list[tuple[str, str]]:
    return parse_qsl(parts.query, keep_blank_values=True)


def _unknown_parameter(kind: str, index: int, name: str, known: list[str]) -> str:
    """The message for the ``index``-th query parameter, which is not in ``known``.

    Its name is not repeated (a password with an unencoded '?' lands in the query as a
    parameter name): it is named by position, with the closest known name if any.
    """
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"query parameter #{index} of the {kind} URL is not one memkv knows{hint}; "
        f"expected {', '.join(known)}"
    )


# -- memory:// -------------------------------------------------------------------------------


def _memory_url(parts: SplitResult) -> MemoryURL:
    if parts.netloc or parts.path not in ("", "/"):
        raise InvalidArgumentError("memory:// takes no host or path")
    max_entries: int | None = None
    core: str | None = None
    for index, (name, value) in enumerate(_query(parts), 1):
        if name == "core":
            core = _parse_value(name, value, _CORE)
        elif name == "max_entries":
            max_entries = _parse_value(name, value, _POSITIVE_INT)
        else:
            raise InvalidArgumentError(
                _unknown_parameter("memory://", index, name, ["core", "max_entries"])
            )
    return MemoryURL(max_entries, core)


# -- Redis -----------------------------------------------------------------------------------


class _Parameter(NamedTuple):
    parse: Callable[[str], Any]
    expected: str  # for the message when ``parse`` refuses a value


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError
    return number


def _boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError
    return value


def _core_name(value: str) -> str:
    if value not in ("cython", "python"):
        raise ValueError
    return value


def _cert_reqs(value: str) -> str:
    if value.lower() not in ("none", "optional", "required"):
        raise ValueError
    return value.lower()


_SECONDS = _Parameter(_positive_float, "a positive number of seconds")
_COUNT = _Parameter(_non_negative_int, "an integer >= 0")
_POSITIVE_INT = _Parameter(_positive_int, "an integer >= 1")
_TEXT = _Parameter(_non_empty, "a non-empty string")
_BOOLEAN = _Parameter(_boolean, "true or false")
_CORE = _Parameter(_core_name, "'cython' or 'python'")

#: Query parameters that configure the store: URL name -> (option name, parameter).
_STORE_PARAMETERS: Mapping[str, tuple[str, _Parameter]] = MappingProxyType(
    {
        "namespace": ("namespace", _TEXT),
        "codec": ("codec", _TEXT),
        "socket_timeout": ("socket_timeout", _SECONDS),
        "connect_timeout": ("connect_timeout", _SECONDS),
        "socket_connect_timeout": ("connect_timeout", _SECONDS),
        "retries": ("retries", _COUNT),
        "backoff_base": ("backoff_base", _SECONDS),
        "backoff_cap": ("backoff_cap", _SECONDS),
        "max_connections": ("max_connections", _POSITIVE_INT),
        "pool_size": ("max_connections", _POSITIVE_INT),
        "near_cache": ("near_cache", _POSITIVE_INT),
    }
)
#: Query parameters handed to redis-py's connections as they are named.
_CONNECTION_PARAMETERS: Mapping[str, _Parameter] = MappingProxyType(
    {
        "db": _COUNT,
        "client_name": _TEXT,
        "health_check_interval": _COUNT,
        "ssl_cert_reqs": _Parameter(_cert_reqs, "none, optional or required"),
        "ssl_ca_certs": _TEXT,
        "ssl_certfile": _TEXT,
        "ssl_keyfile": _TEXT,
        "ssl_check_hostname": _BOOLEAN,
    }
)


def _parse_value(name: str, value: str, parameter: _Parameter) -> Any:
    """``parameter.parse(value)``, or an error naming ``name`` (a known parameter's) but
    not the value.

    The value is never repeated, since no parameter value is known to be free of
    secrets. The refusal is raised outside the ``except`` block, so that no chained
    exception (``int()`` and ``float()`` quote their input) carries the value either.
    """
    try:
        return parameter.parse(value)
    except (TypeError, ValueError):
        pass
    raise InvalidArgumentError(
        f"bad value for the URL parameter {name!r}: expected {parameter.expected}"
    )


def _redis_url(parts: SplitResult, scheme: str) -> RedisURL:
    options: dict[str, Any] = {}
    connection: dict[str, Any] = {}
    for index, (name, value) in enumerate(_query(parts), 1):
        if name in _STORE_PARAMETERS:
            option, parameter = _STORE_PARAMETERS[name]
            options[option] = _parse_value(name, value, parameter)
        elif name in _CONNECTION_PARAMETERS:
            connection[name] = _parse_value(name, value, _CONNECTION_PARAMETERS[name])
        else:
            known = sorted({*_STORE_PARAMETERS, *_CONNECTION_PARAMETERS})
            raise InvalidArgumentError(_unknown_parameter("Redis", index, name, known))
    kind = _SCHEMES[scheme]
    host: str | None = None
    port: int | None = None
    socket_path: str | None = None
    if kind.client_scheme == "unix":
        if not parts.path.startswith("/"):
            raise InvalidArgumentError(
                "a unix:// Redis URL needs an absolute socket path (unix:///path/to/redis.sock)"
            )
        socket_path = unquote(parts.path)
    else:
        host, port = unquote(parts.hostname or "localhost"), parts.port or _DEFAULT_PORT
        database = parts.path.strip("/")
        if database:
            if not (database.isascii() and database.isdigit()):
                raise InvalidArgumentError(
                    "the path of a Redis URL must be a database number (/<number>)"
                )
            if "db" in connection:
                raise InvalidArgumentError(
                    "a Redis URL names its database twice (in the path and as db=)"
                )
            connection["db"] = int(database)
    if kind.cluster and connection.get("db"):
        raise InvalidArgumentError("Redis Cluster has only database 0")
    if not kind.tls and any(name.startswith("ssl_") for name in connection):
        raise InvalidArgumentError("ssl_* parameters need a rediss:// URL")
    return RedisURL(
        scheme=scheme,
        host=host,
        port=port,
        socket_path=socket_path,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        options=MappingProxyType(options),
        connection=MappingProxyType(connection),
    )


# -- masking ---------------------------------------------------------------------------------

#: Pieces of a password shorter than this are not masked on their own: masking "ab"
#: everywhere would garble the message and protect little.
_MIN_MASKED_PIECE = 4


def mask_credentials(text: str, *urls: str | None) -> str:
    """``text`` with every password that ``urls`` may hold replaced by ``***``.

    A safety net for text memkv did not write (an error from another library): memkv's
    own messages never quote a URL. Works on malformed URLs too: each ``@`` after the
    scheme is tried as the end of the user information, raw and percent-decoded, and the
    pieces of a password between ``/``, ``?`` and ``#`` (where a malformed URL splits it)
    are masked as well.
    """
    secrets: set[str] = set()
    for url in urls:
        if url:
            secrets |= _password_candidates(url)
    # Longest first, so that a password containing another candidate is masked whole.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _password_candidates(url: str) -> set[str]:
    authority = url.partition("://")[2] if "://" in url else url
    candidates: set[str] = set()
    for index, char in enumerate(authority):
        if char == "@":
            password = authority[:index].partition(":")[2]
            candidates.update((password, unquote(password)))
    for candidate in list(candidates):
        for piece in re.split(r"[/?#]", candidate):
            if len(piece) >= _MIN_MASKED_PIECE:
                candidates.update((piece, unquote(piece)))
    candidates.discard("")
    return candidates
