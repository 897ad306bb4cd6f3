"""No part of a credential in a store URL ever reaches a message, a repr or the CLI's output.

Secrets are built to be recognisable (upper-case letters no message uses, with every
character a URL treats specially) and placed at every position of a URL: user name and
password (raw, so that a special character breaks the URL, and percent-encoded), query
values, the database path, a bracketed host, a port, an unknown scheme or none, unix
sockets and cluster seeds. A leak is any 4 characters in a row of the secret (raw or
percent-encoded) in the text checked.

Shown by design, so never given a secret here: the server's host, port or socket path,
the namespace and the codec name (see ``memkv.urls``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memkv
from memkv import open_store
from memkv.errors import InvalidArgumentError
from memkv.urls import parse_url
from tests.redis_servers import free_port

#: Letters no memkv message or host name here uses in upper case.
SECRET_LETTERS = "QXZJKVWY"
SPECIALS = "/?#@:%[]"
WINDOW = 4

#: Secrets with at most two special characters in a row, so that every window of
#: WINDOW characters holds one of SECRET_LETTERS and cannot match ordinary text.
secrets = st.lists(
    st.tuples(st.text(SECRET_LETTERS, min_size=1, max_size=3), st.text(SPECIALS, max_size=2)),
    min_size=3,
    max_size=6,
).map(lambda pieces: "".join(letters + specials for letters, specials in pieces))


def leaked(secret: str, text: str) -> str | None:
    """The first window of ``secret`` (raw or percent-encoded) found in ``text``, in any
    case (a host name is shown lower-cased)."""
    folded = text.casefold()
    for form in (secret, quote(secret, safe="")):
        for start in range(len(form) - WINDOW + 1):
            window = form[start : start + WINDOW]
            if window.casefold() in folded:
                return window
    return None


def error_text(error: BaseException) -> str:
    """Message, repr, args and notes of ``error`` and of everything chained to it."""
    texts = ["".join(traceback.format_exception(error))]
    pending: list[BaseException | None] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), *map(repr, current.args)]
        texts += map(str, getattr(current, "__notes__", ()))
        pending += [current.__cause__, current.__context__]
    return "\n".join(texts)


#: Where a secret goes in the user information: ``{}`` is the secret.
USERINFO = [":{}", "user:{}", "{}:password", "{}", "{}:{}"]
#: URL shapes: ``{userinfo}`` is the user information (without the ``@``).
SHAPES = [
    "redis://{userinfo}@127.0.0.1:6379/0",
    "redis://{userinfo}@127.0.0.1:6379/0?namespace=app&retries=1",
    "rediss://{userinfo}@localhost:6380/1?ssl_cert_reqs=none",
    "redis+cluster://{userinfo}@127.0.0.1:7000",
    "rediss+cluster://{userinfo}@127.0.0.1:7000?connect_timeout=0.5",
    "unix://{userinfo}@/tmp/redis.sock?db=2",
    "redis://{userinfo}@127.0.0.1:port/0",
    "redis://{userinfo}@127.0.0.1:99999/0",
    "redis://{userinfo}@[::1/0",
    "redis://{userinfo}@127.0.0.1/zero",
    "redis://{userinfo}@127.0.0.1/0?no_such_option=1",
    "redis://{userinfo}@127.0.0.1/0?retries=many",
    "redis://{userinfo}@127.0.0.1/0#fragment",
    "redis+cluster://{userinfo}@127.0.0.1:7000/2",
    "ftp://{userinfo}@127.0.0.1",
    "{userinfo}@127.0.0.1:6379/0",
    "memory://{userinfo}@",
]
#: Query parameters given a secret value: every parameter whose value is not shown by
#: design, plus names a user might try.
SECRET_PARAMETERS = [
    "password",
    "username",
    "token",
    "socket_timeout",
    "connect_timeout",
    "socket_connect_timeout",
    "retries",
    "backoff_base",
    "backoff_cap",
    "max_connections",
    "pool_size",
    "db",
    "client_name",
    "health_check_interval",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
    "max_entries",
]
#: Other positions: ``{}`` is the secret (raw or percent-encoded).
OTHER_POSITIONS = [
    "redis://127.0.0.1:6379/{}",
    "redis://127.0.0.1:{}/0",
    "redis://[{}]:6379/0",
    "redis://127.0.0.1:6379/0#{}",
    "{}://127.0.0.1",
    "{}",
    "memory://?max_entries={}",
    "memory://{}",
    "memory://?{}=1",
]


def assert_nothing_leaks(url: str, secret: str) -> None:
    """Open ``url`` (nothing connects) and check the error or the store and its parse."""
    try:
        store = open_store(url)
    except InvalidArgumentError as error:
        text = error_text(error)
    else:
        parsed = parse_url(url)
        text = f"{store!r}\n{parsed!r}\n{parsed}"
    window = leaked(secret, text)
    assert window is None, f"{window!r} of the secret appears in: {text}"


@pytest.fixture(autouse=True)
def _needs_the_redis_extra() -> None:
    pytest.importorskip("memkv.redis")


@settings(max_examples=60, deadline=None)
@given(secret=secrets, userinfo=st.sampled_from(USERINFO), shape=st.sampled_from(SHAPES))
def test_no_credential_reaches_an_error_or_a_repr(secret: str, userinfo: str, shape: str) -> None:
    for form in (secret, quote(secret, safe="")):
        assert_nothing_leaks(shape.format(userinfo=userinfo.format(form, form)), secret)


@settings(max_examples=40, deadline=None)
@given(
    secret=secrets,
    name=st.sampled_from(SECRET_PARAMETERS),
    scheme=st.sampled_from(["redis", "rediss", "redis+cluster", "unix"]),
)
def test_no_query_value_reaches_an_error(secret: str, name: str, scheme: str) -> None:
    where = "/tmp/redis.sock" if scheme == "unix" else "127.0.0.1:6379"
    for form in (secret, quote(secret, safe="")):
        url = f"{scheme}://{where}?namespace=app&{name}={form}"
        try:
            open_store(url)
        except InvalidArgumentError as error:
            text = error_text(error)
            assert leaked(secret, text) is None, text
        else:
            # Accepted (a file name, a client name): the store does not show it.
            assert name in ("client_name", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


@settings(max_examples=40, deadline=None)
@given(secret=secrets, position=st.sampled_from(OTHER_POSITIONS))
def test_no_secret_elsewhere_in_a_url_reaches_an_error(secret: str, position: str) -> None:
    for form in (secret, quote(secret, safe="")):
        assert_nothing_leaks(position.format(form), secret)


def test_a_well_formed_url_with_every_special_character_opens() -> None:
    secret = "QX/Z?J#K@V:W%Y[Q]X"
    encoded = quote(secret, safe="")
    store = open_store(f"redis+cluster://{encoded}:{encoded}@h:7000")
    given = store.client.nodes_manager.connection_kwargs  # type: ignore[attr-defined]
    assert (given["username"], given["password"]) == (secret, secret)
    assert leaked(secret, repr(store)) is None


# -- the command line, in a subprocess against an unreachable server on loopback -----------

SECRET = "QX/Z?J#K@V:W%Y[Q]XWZ"
ENCODED = quote(SECRET, safe="")
FAST = "connect_timeout=0.2&socket_timeout=0.2&retries=0"


def cli_urls(port: int) -> list[str]:
    return [
        f"redis://:{ENCODED}@127.0.0.1:{port}/0?{FAST}",
        f"redis://{ENCODED}:{ENCODED}@127.0.0.1:{port}/0?{FAST}",
        f"redis+cluster://:{ENCODED}@127.0.0.1:{port}?{FAST}",
        f"unix://:{ENCODED}@/nonexistent/memkv-test.sock?{FAST}",
        f"redis://:{SECRET}@127.0.0.1:{port}/0?{FAST}",
        f"redis://user:{SECRET}@127.0.0.1:{port}/0",
        f"redis+cluster://:{SECRET}@127.0.0.1:{port}",
        f"redis://127.0.0.1:{port}/0?{FAST}&password={ENCODED}",
        f"redis://:{ENCODED}@127.0.0.1:port/0",
        f"redis://:{ENCODED}@[::1/0",
        f"ftp://:{ENCODED}@127.0.0.1",
        f"user:{ENCODED}@127.0.0.1:{port}",
    ]


@pytest.mark.parametrize("index", range(12))
@pytest.mark.parametrize("command", ["keys", "get", "bench"])
def test_the_command_line_never_prints_a_secret(command: str, index: int) -> None:
    url = cli_urls(free_port())[index]
    args = {
        "keys": ["keys", url],
        "get": ["get", url, "key"],
        "bench": ["bench", "--keys", "100", "--ops", "100", "--core", "python", "--redis", url],
    }[command]
    # The memkv the tests import (the installed wheel in CI, src/ in a checkout).
    source = Path(memkv.__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "memkv", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(source)},
    )
    output = done.stdout + done.stderr
    assert done.returncode in (1, 2), output
    assert "Traceback" not in output
    assert leaked(SECRET, output) is None, output
