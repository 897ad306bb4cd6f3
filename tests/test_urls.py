"""memkv.urls: the URL grammar, the parsed descriptions, their parameters and masking."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from memkv import LocalMemoryStore, open_store
from memkv.errors import InvalidArgumentError
from memkv.urls import (
    REDIS_SCHEMES,
    MemoryURL,
    RedisURL,
    mask_credentials,
    parse_redis_url,
    parse_url,
)


def test_memory_url_opens_a_local_store() -> None:
    store = open_store("memory://")
    assert isinstance(store, LocalMemoryStore)
    assert store.max_entries is None
    bounded = open_store("memory://?max_entries=500")
    assert isinstance(bounded, LocalMemoryStore)
    assert bounded.max_entries == 500
    assert parse_url("memory://?max_entries=500") == MemoryURL(max_entries=500)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("ftp://host", "unknown store URL scheme"),
        ("nothing-here", "needs a scheme"),
        ("memory://?max_entries=abc", "'max_entries': expected an integer >= 1"),
        ("memory://?max_entries=0", "'max_entries'"),
        ("memory://?size=3", "parameter #1 .* expected core, max_entries"),
        ("memory://somehost", "host"),
        ("redis://host:port/0", "port"),
        ("redis://host:99999/0", "port"),
        ("redis://[::1/0", "host"),
        ("redis://host/0#top", "fragment"),
        ("redis://host/0?client_name=a@b", "'@' after the host"),
        ("redis://localhost/0?socket_timeout=-1", "'socket_timeout'"),
        ("redis://localhost/0?socket_timeout=inf", "'socket_timeout'"),
        ("redis://localhost/0?retries=many", "'retries': expected an integer >= 0"),
        ("redis://localhost/0?pool_size=0", "'pool_size'"),
        ("redis://localhost/0?ssl_check_hostname=maybe", "'ssl_check_hostname'"),
        ("rediss://localhost/0?ssl_cert_reqs=some", "none, optional or required"),
        ("redis://localhost/0?namespace=", "'namespace'"),
        ("redis://localhost/0?namespace=a&colour=blue", "parameter #2 .* not one memkv knows"),
        ("redis://localhost/0?retires=1", r"did you mean 'retries'\?"),
        ("redis://localhost/zero", "database number"),
        ("redis://localhost/²", "database number"),
        ("redis://localhost/1?db=2", "database twice"),
        ("redis+cluster://localhost:7000/2", "database 0"),
        ("redis://localhost/0?ssl_cert_reqs=none", "rediss"),
        ("unix://", "socket path"),
        ("unix:relative.sock", "absolute socket path"),
    ],
)
def test_bad_urls_raise_value_errors_naming_the_problem(url: str, named: str) -> None:
    with pytest.raises(InvalidArgumentError, match=named) as info:
        open_store(url)
    assert isinstance(info.value, ValueError)
    assert info.value.__context__ is None  # nothing chained that could quote the URL


def test_non_str_url_raises() -> None:
    with pytest.raises(InvalidArgumentError, match="must be a str"):
        open_store(123)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="must be a str"):
        parse_redis_url(b"redis://host")  # type: ignore[arg-type]


def test_parse_redis_url_refuses_other_schemes() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown Redis URL scheme"):
        parse_redis_url("memory://")


def test_a_redis_url_becomes_a_typed_immutable_description() -> None:
    url = parse_url(
        "rediss+cluster://app:p%40ss%2Fw0rd@Cache.example:7001/0?namespace=ns&codec=json"
        "&socket_timeout=1.5&pool_size=4&retries=0&client_name=me&ssl_cert_reqs=NONE"
        "&ssl_check_hostname=off"
    )
    assert isinstance(url, RedisURL)
    assert (url.scheme, url.cluster, url.tls) == ("rediss+cluster", True, True)
    assert (url.host, url.port, url.socket_path) == ("cache.example", 7001, None)
    assert (url.username, url.password) == ("app", "p@ss/w0rd")
    assert dict(url.options) == {
        "namespace": "ns",
        "codec": "json",
        "socket_timeout": 1.5,
        "max_connections": 4,
        "retries": 0,
    }
    assert dict(url.connection) == {
        "db": 0,
        "client_name": "me",
        "ssl_cert_reqs": "none",
        "ssl_check_hostname": False,
    }
    assert url.server == "cache.example:7001"
    with pytest.raises(AttributeError):
        url.password = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        url.options["namespace"] = "changed"  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://", ("redis", False, False, "localhost:6379", None)),
        ("REDIS://h:6380/3", ("redis", False, False, "h:6380", 3)),
        ("rediss://h", ("rediss", False, True, "h:6379", None)),
        ("redis+cluster://h:7000", ("redis+cluster", True, False, "h:7000", None)),
        ("redis://[::1]:6390/0/", ("redis", False, False, "[::1]:6390", 0)),
        ("unix:///run/redis%20x.sock?db=2", ("unix", False, False, "/run/redis x.sock", 2)),
    ],
)
def test_every_scheme_parses(text: str, expected: tuple[Any, ...]) -> None:
    url = parse_redis_url(text)
    assert (url.scheme, url.cluster, url.tls, url.server, url.connection.get("db")) == expected
    assert url.scheme in REDIS_SCHEMES


def test_the_repr_masks_the_user_name_and_password() -> None:
    url = parse_redis_url("redis://admin:s3cr3t-pw@h:6380/2?namespace=app")
    assert repr(url) == "RedisURL('redis://***:***@h:6380', db=2, namespace='app')"
    assert str(url) == repr(url)
    assert repr(parse_redis_url("unix://:pw1234@/tmp/r.sock")) == (
        "RedisURL('unix://:***@/tmp/r.sock')"
    )
    assert repr(parse_redis_url("redis://h")) == "RedisURL('redis://h:6379')"


@pytest.mark.parametrize("special", list("/?#@:%[] &=+"))
@pytest.mark.parametrize("scheme", ["redis", "rediss", "redis+cluster", "unix"])
def test_the_client_url_hands_redis_py_the_same_credentials(scheme: str, special: str) -> None:
    connection = pytest.importorskip("redis.asyncio.connection")
    user, password = f"us{special}er", f"pa{special}ss{special}"
    where = "/tmp/r.sock" if scheme == "unix" else "h:6390"
    url = parse_redis_url(f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{where}")
    assert (url.username, url.password) == (user, password)
    seen = connection.parse_url(url.client_url)
    assert (seen["username"], seen["password"]) == (user, password)
    if scheme == "unix":
        assert seen["path"] == "/tmp/r.sock"
    else:
        assert (seen["host"], seen["port"]) == ("h", 6390)


def test_open_store_builds_the_redis_store_from_the_description() -> None:
    redis = pytest.importorskip("memkv.redis")
    store = open_store("redis://:pw-1234@127.0.0.1:6390/3?namespace=app&codec=json")
    assert isinstance(store, redis.RedisMemoryStore)
    assert repr(store) == "RedisMemoryStore(127.0.0.1:6390, namespace='app', codec='json')"
    kwargs = store.client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    assert (kwargs["db"], kwargs["password"]) == (3, "pw-1234")
    parsed = parse_redis_url("redis://127.0.0.1:6390/0?namespace=app")
    built = redis.RedisMemoryStore.from_url(parsed, namespace="other")
    assert built.namespace == "other"


def test_a_bad_codec_name_is_echoed_but_no_other_value() -> None:
    pytest.importorskip("memkv.redis")
    with pytest.raises(InvalidArgumentError, match="'yaml'"):
        open_store("redis://localhost/0?codec=yaml")
    with pytest.raises(InvalidArgumentError) as info:
        open_store("redis://localhost/0?retries=SECRET-TEXT")
    assert "SECRET" not in str(info.value)


def test_a_password_with_a_slash_is_not_quoted_in_the_error() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        open_store("redis://default:Ab3/xyz+Q@host:6379/0")
    assert "Ab3" not in str(raised.value)
    assert "xyz" not in str(raised.value)
    assert "percent-encode" in str(raised.value)


@pytest.mark.parametrize("host", ["[JJJJ]", "[127.0.0.1]", "[vX.1]", "[secret-host]"], ids=repr)
def test_a_bracketed_host_must_be_an_ipv6_address_on_every_python(host: str) -> None:
    # urlsplit checks brackets itself only from Python 3.11.4 on: before, "[JJJJ]"
    # parsed as the host "jjjj", shown in the store's repr.
    with pytest.raises(InvalidArgumentError, match="malformed host") as raised:
        parse_redis_url(f"redis://{host}:6379/0")
    assert host.strip("[]x").lower() not in str(raised.value).lower()
    assert parse_redis_url("redis://[::1]:6379/0").host == "::1"
    assert parse_redis_url("redis://[v1.fe80::a]:6379/0").host == "v1.fe80::a"


def test_masking_covers_raw_decoded_and_split_passwords() -> None:
    url = "redis://user:p%40ss:word@host:6379/0"
    text = "cannot use redis://user:p%40ss:word@host with p@ss:word"
    assert mask_credentials(text, url) == "cannot use redis://user:***@host with ***"
    spilled = "redis://:12/SECRETPART@host:6379/0"
    assert "SECRETPART" not in mask_credentials("path /SECRETPART@host:6379/0", spilled)
    assert mask_credentials("nothing to hide", None, "memory://") == "nothing to hide"


def test_a_redis_url_built_by_hand_is_checked() -> None:
    fields: dict[str, Any] = {"username": None, "password": None, "options": {}, "connection": {}}
    with pytest.raises(InvalidArgumentError, match="scheme"):
        RedisURL(scheme="http", host="h", port=1, socket_path=None, **fields)
    with pytest.raises(InvalidArgumentError, match="socket_path"):
        RedisURL(scheme="unix", host="h", port=1, socket_path=None, **fields)
    with pytest.raises(InvalidArgumentError, match="socket_path"):
        RedisURL(scheme="redis", host=None, port=None, socket_path=None, **fields)
    url = RedisURL(scheme="redis", host="h", port=1, socket_path=None, **fields)
    assert url.client_url == "redis://h:1"
    assert open_store(parse_url("memory://?max_entries=3")).max_entries == 3  # type: ignore[attr-defined]
