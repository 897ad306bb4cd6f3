"""The RESP transport under ``RedisMemoryStore``: one coalescing connection per Redis node.

``Connection`` is one socket to one Redis/Valkey server. Every command that any task
issues during one event-loop iteration leaves in one ``transport.write``; hiredis parses
the replies, which go back to their callers in order. ``Node`` owns the connections to
one address: it opens them on first use, again after a loss or a fork, and sends very
large commands on a second connection so that they do not hold up small ones.

Inside a coroutine (the replies shown after ``#``)::

    node = Node(ConnectionSpec(host="127.0.0.1", port=6379))
    await node.execute(b"SET", b"k", b"v")                      # b'OK'
    await node.execute_many([(b"GET", b"k"), (b"INCR", b"k")])
    # [b'v', ReplyError('ERR value is not an integer or out of range')]

Errors: an error reply raises ``ReplyError`` (a ``BackendError``) or its subclasses
``AccessReplyError`` (also an ``AccessDeniedError``) and ``RedirectError`` (``MOVED``,
``ASK``); a lost, refused or hung connection raises ``BackendUnavailableError`` (a hung
one ``CommandTimeoutError``, which is also a ``TimeoutError``). Nothing is retried here:
a command that fails with ``BackendUnavailableError`` may or may not have run.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl as ssl_module
from asyncio import _get_running_loop
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

import hiredis

from memkv.errors import (
    AccessDeniedError,
    BackendError,
    BackendUnavailableError,
    CodecError,
    EventLoopError,
    InvalidArgumentError,
)

__all__ = [
    "AccessReplyError",
    "Arg",
    "CommandTimeoutError",
    "Connection",
    "ConnectionSpec",
    "ConnectionStats",
    "Node",
    "RedirectError",
    "ReplyError",
    "encode_command",
    "pack_command",
]

#: What a command argument may be: ``str`` is sent as UTF-8, numbers in decimal.
Arg: TypeAlias = "bytes | str | int | float | bytearray | memoryview"
#: A decoded reply: bytes, int, float, None, list, dict (RESP3 maps), bool (RESP3).
Reply: TypeAlias = Any
#: Called with each RESP3 push message (``[b"invalidate", [key, ...]]``, ...).
PushCallback: TypeAlias = Callable[[list[Any]], None]
#: Runs on a new connection after the handshake, before any caller's command (``on_ready``).
ReadyCallback: TypeAlias = Callable[["Connection"], Awaitable[None]]
#: Called once when a connection closes, is lost or times out (``on_close``).
CloseCallback: TypeAlias = Callable[["Connection"], None]

#: Commands whose encoded size reaches this go on a ``Node``'s second connection.
DEFAULT_BULK_THRESHOLD = 512 * 1024
#: Arguments from this size on are encoded by a join instead of by hiredis.
_LARGE_ARG = 8 * 1024
#: A large argument is handed to the socket in slices of this size, as it drains.
_WRITE_SLICE = 256 * 1024
#: Default bound on commands written and not yet answered, per connection.
DEFAULT_MAX_INFLIGHT = 4096

# hiredis's "no complete reply yet" marker defaults to False, which RESP3 can also send.
_INCOMPLETE = object()
_PushNotification = hiredis.PushNotification


# -- errors -----------------------------------------------------------------------------------


class ReplyError(BackendError):
    """The server answered a command with an error reply.

    ``prefix`` is the reply's first word (``"ERR"``, ``"WRONGTYPE"``, ``"NOSCRIPT"``,
    ``"MOVED"``, ...) and ``message`` the whole text. Building one from a reply whose
    prefix refuses access (``NOPERM``, ``WRONGPASS``, ``NOAUTH``) gives an
    ``AccessReplyError``, and one that redirects (``MOVED``, ``ASK``) a ``RedirectError``:
    hiredis builds these objects, so this is the one place replies become exceptions.
    """

    prefix: str
    message: str

    def __new__(cls, message: str = "") -> ReplyError:
        target = _REPLY_CLASSES.get(message.split(" ", 1)[0], cls) if cls is ReplyError else cls
        # The builtin that lays out the instance must allocate it: OSError's for the
        # AccessDeniedError (a PermissionError) side, else RuntimeError's.
        allocate = OSError.__new__ if issubclass(target, OSError) else BackendError.__new__
        error: ReplyError = allocate(target, message)
        return error

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.prefix = message.split(" ", 1)[0]


class AccessReplyError(ReplyError, AccessDeniedError):
    """An error reply that refuses access: ``NOPERM``, ``WRONGPASS`` or ``NOAUTH``."""


class RedirectError(ReplyError):
    """A cluster redirection: ``MOVED <slot> <host>:<port>`` or ``ASK <slot> <host>:<port>``.

    ``host`` is ``""`` when the server leaves it out (the node that answered).
    """

    slot: int
    host: str
    port: int

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        _, slot, address = [*message.split(" ", 2), "", ""][:3]
        host, _, port = address.rpartition(":")
        self.slot = int(slot) if slot.isdigit() else -1
        self.host = host
        self.port = int(port) if port.isdigit() else 0


_REPLY_CLASSES: dict[str, type[ReplyError]] = {
    "NOPERM": AccessReplyError,
    "WRONGPASS": AccessReplyError,
    "NOAUTH": AccessReplyError,
    "MOVED": RedirectError,
    "ASK": RedirectError,
}


class CommandTimeoutError(BackendUnavailableError, TimeoutError):
    """The server sent nothing for ``command_timeout`` seconds while commands waited.

    The connection is closed: a reply that arrives later could not be matched.
    """


# -- encoding -----------------------------------------------------------------------------------


class _Parts(list[bytes]):
    """A command holding a large argument, as the parts to write without joining them.

    ``size`` is the encoded length. The large argument is written from a memoryview,
    so the only copy made of it is the asyncio transport's buffer.
    """

    __slots__ = ("size",)
    size: int


def encode_command(args: Sequence[Arg]) -> bytes | _Parts:
    """Encode one command for ``Connection``: ``bytes``, or ``_Parts`` if it is large.

    Small commands go through hiredis's C encoder (about 1 µs). A ``bytes`` argument of
    ``_LARGE_ARG`` bytes or more is not copied at all: hiredis copies such an argument
    in many small steps (about 100 ms for 20 MB), and the event loop would stall for
    every other caller meanwhile. ``bytearray`` and ``memoryview`` arguments are copied
    to ``bytes``; any other type than those, ``bytes``, ``str``, ``int`` and ``float``
    raises ``CodecError``.
    """
    if len(args) > 2:
        for arg in args:
            if type(arg) is bytes and len(arg) >= _LARGE_ARG:
                return _parts(args)
    try:
        packed: bytes = hiredis.pack_command(
            args if type(args) is tuple else tuple(args)  # type: ignore[arg-type]
        )
        return packed
    except TypeError:
        return b"".join(_parts(args))


def pack_command(args: Sequence[Arg]) -> bytes:
    """One command as the bytes of a RESP array of bulk strings."""
    encoded = encode_command(args)
    return b"".join(encoded) if isinstance(encoded, _Parts) else encoded


def _parts(args: Sequence[Arg]) -> _Parts:
    parts = _Parts([b"*%d\r\n" % len(args)])
    for arg in args:
        if type(arg) is bytes:
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise CodecError(
                f"a Redis command argument must be bytes, str, int or float, "
                f"not {type(arg).__name__}"
            )
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    parts.size = sum(map(len, parts))
    return parts


def _size(encoded: bytes | _Parts) -> int:
    return len(encoded) if type(encoded) is bytes else encoded.size  # type: ignore[union-attr]


# -- fork detection -----------------------------------------------------------------------------

# Bumped in a forked child, so that a connection can tell it was inherited (cheaper than
# os.getpid() on every command).
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)

# Connections inherited through fork and dropped: collecting one would close a socket
# (and its epoll registration) that the parent process still uses.
_INHERITED: list[Connection] = []


# -- the connection -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionSpec:
    """Where and how to connect; the ``repr`` never shows the password.

    ``path`` (a unix socket) replaces ``host``/``port``. ``ssl`` turns on TLS
    (``server_hostname`` defaults to ``host``). ``protocol=3`` sends ``HELLO 3`` and
    falls back to RESP2 on a server without ``HELLO``; ``protocol=2`` never sends it.
    ``connect_timeout`` bounds connecting plus the handshake; ``command_timeout`` is how
    long the server may stay silent while commands wait for replies (``None``: forever;
    a blocking command such as ``BLPOP key 0`` needs ``None`` or its own connection).
    ``max_inflight`` bounds the commands written and not yet answered on one connection;
    beyond it callers wait for a slot (never an error).
    """

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    ssl: ssl_module.SSLContext | None = None
    server_hostname: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    protocol: int = 3
    client_name: str | None = None
    connect_timeout: float | None = 1.0
    command_timeout: float | None = 1.0
    max_inflight: int = DEFAULT_MAX_INFLIGHT

    def __post_init__(self) -> None:
        if self.ssl is not None and self.path is not None and not self.server_hostname:
            raise InvalidArgumentError("TLS over a unix socket needs server_hostname")
        if self.protocol not in (2, 3):
            raise InvalidArgumentError(f"protocol must be 2 or 3, not {self.protocol!r}")
        if type(self.db) is not int or self.db < 0:
            raise InvalidArgumentError(f"db must be an int >= 0, not {self.db!r}")
        if type(self.max_inflight) is not int or self.max_inflight < 1:
            raise InvalidArgumentError(
                f"max_inflight must be an int >= 1, not {self.max_inflight!r}"
            )
        for name in ("connect_timeout", "command_timeout"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise InvalidArgumentError(f"{name} must be > 0 or None, not {value!r}")

    @property
    def where(self) -> str:
        """The address for messages: ``host:port`` or ``unix:path``."""
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


class ConnectionStats(NamedTuple):
    """Counts since a connection opened (the handshake included)."""

    commands: int
    writes: int


class _Pipeline:
    """Collects the replies of one ``execute_many`` call, in order.

    It stands in the reply queue once per command and answers to the three calls the
    queue makes of a future (``done``, ``set_result``, ``set_exception``), so that
    dispatching a reply costs the same for a pipeline as for a single command.
    """

    __slots__ = ("future", "remaining", "replies")

    def __init__(self, future: asyncio.Future[list[Reply]], size: int) -> None:
        self.future = future
        self.remaining = size
        self.replies: list[Reply] = []

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, reply: Reply) -> None:
        self.replies.append(reply)
        self.remaining -= 1
        if not self.remaining:
            self.future.set_result(self.replies)

    # An error reply is one element of the result list, not a failure of the call.
    set_exception = set_result


class Connection(asyncio.Protocol):
    """One RESP connection that sends each event-loop iteration's commands in one write.

    Open it with ``await Connection.open(spec)``. ``execute`` queues the encoded command
    and, at the first command of an iteration, schedules one flush with
    ``loop.call_soon``: a lone caller gains no round trip, fifty concurrent callers share
    one ``write`` and one ``recv``. Replies are matched to callers by position.

    A cancelled caller's reply is still read and dropped, so the connection stays in
    step; the command itself may still run. When the connection is lost, times out or is
    closed, every caller waiting on it gets ``BackendUnavailableError`` and the object
    stays closed (``Node`` opens a new one). It belongs to the event loop that opened it
    (another loop gets ``EventLoopError``) and to the process that opened it (a forked
    child gets ``BackendUnavailableError`` and the parent's socket is left alone).
    """

    def __init__(
        self,
        spec: ConnectionSpec,
        loop: asyncio.AbstractEventLoop,
        on_push: PushCallback | None = None,
        on_close: CloseCallback | None = None,
    ) -> None:
        self.spec = spec
        #: The protocol in use after the handshake: 3, or 2 if the server lacks HELLO.
        self.protocol = 2
        #: The server's ``HELLO`` reply (``{b"server": ..., b"version": ...}``), or ``{}``.
        self.server: dict[Any, Any] = {}
        self.on_push = on_push
        self.on_close = on_close
        self._loop = loop
        # BaseEventLoop.create_future is a Python frame around Future(loop=loop): calling
        # the C Future through a partial saves it on every command. Other loops (uvloop)
        # keep their own create_future.
        self._new_future: Callable[[], asyncio.Future[Any]] = (
            functools.partial(asyncio.Future, loop=loop)
            if type(loop).create_future is asyncio.BaseEventLoop.create_future
            else loop.create_future
        )
        self._generation = _fork_generation
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(notEnoughData=_INCOMPLETE, replyError=ReplyError)
        self._waiters: deque[asyncio.Future[Reply] | _Pipeline] = deque()
        self._pending: list[bytes] = []
        self._pending_large = False
        # What waits for the socket to drain once a large argument was written.
        self._outbox: deque[bytes | memoryview] = deque()
        # Slots granted to callers that waited for one and have not queued yet.
        self._reserved = 0
        self._max_inflight = spec.max_inflight
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._writing_paused = False
        self._closed_because: Callable[[], BackendUnavailableError] | None = None
        self._close_cause: BaseException | None = None
        self._timeout = spec.command_timeout
        self._last_progress = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._commands = 0
        self._writes = 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"RESP{self.protocol}"
        return f"Connection({self.spec.where!r}, {state}, inflight={self.inflight})"

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        spec: ConnectionSpec,
        *,
        on_push: PushCallback | None = None,
        on_ready: ReadyCallback | None = None,
        on_close: CloseCallback | None = None,
    ) -> Connection:
        """Connect, negotiate the protocol, authenticate and select the database.

        ``on_ready(connection)`` then runs (within ``connect_timeout``), before the
        connection is returned, so before any caller's command: a client-side cache
        turns on ``CLIENT TRACKING`` there. An exception it raises fails the opening
        (an error reply as for the handshake's). ``on_close(connection)`` is called
        once when the connection is closed, lost or times out, from the event loop.

        Raises ``BackendUnavailableError`` if the server cannot be reached or does not
        finish the handshake within ``connect_timeout``, ``AccessDeniedError`` if it
        refuses the credentials, ``BackendError`` for another refusal (``SELECT`` of a
        database it lacks).
        """
        connection = cls(spec, asyncio.get_running_loop(), on_push, on_close)
        try:
            await asyncio.wait_for(connection._connect(on_ready), spec.connect_timeout)
        except asyncio.TimeoutError as err:
            connection._abort()
            if isinstance(err, CommandTimeoutError):
                raise
            raise BackendUnavailableError(
                f"{spec.where} did not accept a connection and answer the handshake "
                f"within connect_timeout={spec.connect_timeout}s"
            ) from err
        except AccessReplyError as err:  # before OSError: it is a PermissionError
            connection._abort()
            raise AccessDeniedError(
                f"{spec.where} refused access: {connection._scrub(err.message)}"
            ) from None
        except ReplyError as err:
            connection._abort()
            raise BackendError(
                f"{spec.where} refused the connection setup: {connection._scrub(err.message)}"
            ) from None
        except OSError as err:  # refused, unreachable, TLS failure; ours subclass it too
            connection._abort()
            if isinstance(err, BackendUnavailableError):
                raise
            raise BackendUnavailableError(
                f"cannot connect to {spec.where}: {type(err).__name__}: {err}"
            ) from err
        except BaseException:
            connection._abort()
            raise
        return connection

    async def _connect(self, on_ready: ReadyCallback | None) -> None:
        spec, loop = self.spec, self._loop
        if spec.path is not None:
            await loop.create_unix_connection(
                lambda: self, spec.path, ssl=spec.ssl, server_hostname=spec.server_hostname
            )
        else:
            hostname = spec.server_hostname or (spec.host if spec.ssl else None)
            await loop.create_connection(
                lambda: self, spec.host, spec.port, ssl=spec.ssl, server_hostname=hostname
            )
        if spec.protocol == 3 and await self._hello():
            self.protocol = 3
        else:
            if spec.password is not None:
                user = () if spec.username is None else (spec.username,)
                try:
                    await self.execute(b"AUTH", *user, spec.password)
                except ReplyError as err:  # servers before 6 answer "ERR invalid password"
                    raise AccessReplyError(err.message) from None
            if spec.client_name is not None:
                await self.execute(b"CLIENT", b"SETNAME", spec.client_name)
        if spec.db:
            await self.execute(b"SELECT", spec.db)
        if on_ready is not None:
            await on_ready(self)

    def _scrub(self, message: str) -> str:
        """An error text without the password (a server may echo the arguments)."""
        password = self.spec.password
        return message.replace(password, "***") if password else message

    async def _hello(self) -> bool:
        """Send ``HELLO 3`` (with AUTH and SETNAME); False if the server does not know it."""
        spec = self.spec
        args: list[Arg] = [b"HELLO", b"3"]
        if spec.password is not None:
            args += [b"AUTH", spec.username or b"default", spec.password]
        if spec.client_name is not None:
            args += [b"SETNAME", spec.client_name]
        try:
            reply = await self.execute(*args)
        except ReplyError as err:
            if err.prefix == "NOPROTO" or "unknown command" in err.message.lower():
                return False
            raise
        self.server = reply if isinstance(reply, dict) else {}
        return True

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._closed_because is not None:  # closed (timed out) while connecting
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(
            lambda: BackendUnavailableError(f"the connection to {self.spec.where} was lost"),
            exc,
        )

    def eof_received(self) -> bool:
        return False  # the server closed its side: close ours, connection_lost follows

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._timeout is not None:  # the server reads what we send: progress too
            self._last_progress = self._loop.time()
        if self._outbox and self._closed_because is None:
            self._drain_outbox()
        if self._slot_waiters:
            self._grant_slots()

    def data_received(self, data: bytes) -> None:
        if self._timeout is not None:
            self._last_progress = self._loop.time()
        reader = self._reader
        reader.feed(data)
        waiters = self._waiters
        try:
            while True:
                reply = reader.gets()
                if reply is _INCOMPLETE:
                    break
                if type(reply) is _PushNotification:
                    self._push(reply)
                    if self._closed_because is not None:  # the callback closed us
                        return
                    continue
                try:
                    waiter = waiters.popleft()
                except IndexError:
                    raise hiredis.ProtocolError("a reply that no command asked for") from None
                if not waiter.done():  # done: its caller was cancelled, drop the reply
                    if isinstance(reply, ReplyError):
                        waiter.set_exception(reply)
                    else:
                        waiter.set_result(reply)
        except hiredis.ProtocolError as err:
            self._fail(
                lambda: BackendUnavailableError(
                    f"{self.spec.where} sent a reply that cannot be parsed; connection closed"
                ),
                err,
            )
            self._abort()
            return
        if self._slot_waiters:
            self._grant_slots()

    def _push(self, message: list[Any]) -> None:
        if self.on_push is None:
            return
        try:
            self.on_push(message)
        except Exception as err:
            self._loop.call_exception_handler(
                {"message": "the push callback of a Redis connection failed", "exception": err}
            )

    # -- commands --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the connection was closed, lost or timed out (it never reopens)."""
        return self._closed_because is not None

    @property
    def where(self) -> str:
        return self.spec.where

    @property
    def inflight(self) -> int:
        """Commands sent or queued and not yet answered (at most ``max_inflight``)."""
        return len(self._waiters) + self._reserved

    def stats(self) -> ConnectionStats:
        """Commands sent and socket writes made so far: their ratio is the batch size."""
        return ConnectionStats(self._commands, self._writes)

    def execute(self, *args: Arg) -> Awaitable[Reply]:
        """Send one command; awaiting the result gives its reply or raises ``ReplyError``.

        A plain method returning the reply's future (a coroutine when it must first wait
        for a slot or report a closed connection): awaiting a future directly spares a
        coroutine per command, a tenth of the client's CPU per command. So an argument
        that cannot be encoded raises ``CodecError`` at the call, and the command is
        queued at the call, before it is awaited. Costs one encode, one future and a
        share of one write and one read.
        """
        packed = encode_command(args)
        waiter = self._submit(packed)
        return self._send(packed) if waiter is None else waiter

    async def execute_many(self, commands: Iterable[Sequence[Arg]]) -> list[Reply]:
        """Send several commands back to back (a pipeline, not a transaction).

        Returns their replies in order; an error reply is returned in the list as a
        ``ReplyError`` object, not raised. A lost connection raises for the whole call.
        """
        return await self._send_many([encode_command(command) for command in commands])

    def close(self) -> None:
        """Close the connection; callers still waiting get ``BackendUnavailableError``.

        A connection inherited through fork, or whose event loop is closed, is only
        dropped: its socket cannot be closed from here without harming its owner.
        """
        if self._generation != _fork_generation or self._loop.is_closed():
            if self._closed_because is None:
                self._orphan()
            return
        self._fail(
            lambda: BackendUnavailableError(f"the connection to {self.spec.where} was closed")
        )
        if self._transport is not None:
            self._transport.close()

    def _submit(self, packed: bytes | _Parts) -> asyncio.Future[Reply] | None:
        """Queue the command now if nothing stands in the way, else None (``_send``).

        The fast path of ``execute``: a plain call, not a coroutine, with ``_enqueue``
        written out (this runs once per command).
        """
        waiters = self._waiters
        if (
            len(waiters) + self._reserved < self._max_inflight
            and self._closed_because is None
            and not self._writing_paused
            and not self._slot_waiters
            and self._generation == _fork_generation
            and _get_running_loop() is self._loop
        ):
            waiter = self._new_future()
            if not waiters and self._timeout is not None:
                self._start_watchdog()
            waiters.append(waiter)
            self._commands += 1
            pending = self._pending
            if not pending:
                self._loop.call_soon(self._flush)
            if isinstance(packed, _Parts):
                pending += packed
                self._pending_large = True
            else:
                pending.append(packed)
            return waiter
        return None

    async def _send(self, packed: bytes | _Parts) -> Reply:
        """Queue the command once a slot is free, or raise why it cannot be sent."""
        self._check_usable()
        if not self._has_room():
            await self._wait_for_slot()
        waiter = self._new_future()
        self._enqueue(packed, waiter)
        return await waiter

    async def _send_many(self, packed: list[bytes | _Parts]) -> list[Reply]:
        self._check_usable()
        if not packed:
            return []
        pipeline = _Pipeline(self._loop.create_future(), len(packed))
        try:
            for command in packed:
                # Slot by slot: a pipeline longer than max_inflight streams through.
                if not self._has_room():
                    await self._wait_for_slot()
                self._enqueue(command, pipeline)
            return await pipeline.future
        except BaseException:
            pipeline.future.cancel()
            raise

    def _check_usable(self) -> None:
        if self._closed_because is not None or self._generation != _fork_generation:
            raise self._unusable()
        if asyncio.get_running_loop() is not self._loop:
            raise self._wrong_loop()

    def _enqueue(self, packed: bytes | _Parts, waiter: asyncio.Future[Reply] | _Pipeline) -> None:
        if not self._waiters and self._timeout is not None:
            self._start_watchdog()
        self._waiters.append(waiter)
        self._commands += 1
        pending = self._pending
        if not pending:
            self._loop.call_soon(self._flush)
        if isinstance(packed, _Parts):
            pending += packed
            self._pending_large = True
        else:
            pending.append(packed)

    def _flush(self) -> None:
        pending = self._pending
        if not pending:  # failed meanwhile
            return
        self._pending = []
        transport = self._transport
        assert transport is not None
        if not self._pending_large and not self._outbox:
            self._writes += 1
            transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
            return
        # A large argument goes out from a view, slice by slice as the socket drains
        # (pause_writing/resume_writing): joining it or handing it to the transport
        # whole would copy megabytes in one loop iteration, stalling every caller.
        self._pending_large = False
        outbox = self._outbox
        small: list[bytes] = []
        for part in pending:
            if len(part) < _LARGE_ARG:
                small.append(part)
                continue
            if small:
                outbox.append(b"".join(small))
                small = []
            outbox.append(memoryview(part))
        if small:
            outbox.append(b"".join(small))
        self._drain_outbox()

    def _drain_outbox(self) -> None:
        outbox = self._outbox
        transport = self._transport
        assert transport is not None
        while outbox and not self._writing_paused:
            chunk = outbox.popleft()
            if len(chunk) > _WRITE_SLICE:
                outbox.appendleft(chunk[_WRITE_SLICE:])
                chunk = chunk[:_WRITE_SLICE]
            self._writes += 1
            transport.write(chunk)  # may call pause_writing, which ends the loop

    # -- back-pressure ---------------------------------------------------------------------

    def _has_room(self) -> bool:
        """Whether a caller may queue a command now, ahead of nobody waiting."""
        return (
            len(self._waiters) + self._reserved < self._max_inflight
            and not self._writing_paused
            and not self._slot_waiters
        )

    async def _wait_for_slot(self) -> None:
        """Wait in line for a slot; ``_grant_slots`` reserves it in ``_reserved``."""
        slot = self._loop.create_future()
        self._slot_waiters.append(slot)
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled() and slot.exception() is None:
                self._reserved -= 1  # granted, then cancelled before use: hand it on
                if self._closed_because is None:
                    self._grant_slots()
            raise
        self._reserved -= 1
        if self._closed_because is not None:  # granted, then the connection failed
            raise self._unusable()

    def _grant_slots(self) -> None:
        slots = self._slot_waiters
        while (
            slots
            and len(self._waiters) + self._reserved < self._max_inflight
            and not self._writing_paused
        ):
            slot = slots.popleft()
            if not slot.done():
                self._reserved += 1
                slot.set_result(None)

    # -- timeouts --------------------------------------------------------------------------

    def _start_watchdog(self) -> None:
        assert self._timeout is not None
        self._last_progress = self._loop.time()
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(
                self._last_progress + self._timeout, self._check_progress
            )

    def _check_progress(self) -> None:
        """Time out when the server made no progress for ``command_timeout`` with work due.

        Progress is a reply arriving or the socket draining what we wrote (a large
        value still uploading is progress).

        One timer per connection, not one per command: it re-arms for the deadline of
        the last progress, so it fires at most once per timeout while replies flow.
        """
        self._watchdog = None
        if not self._waiters or self._closed_because is not None:
            return
        assert self._timeout is not None
        deadline = self._last_progress + self._timeout
        if self._loop.time() < deadline:
            self._watchdog = self._loop.call_at(deadline, self._check_progress)
            return
        timeout = self._timeout
        self._fail(
            lambda: CommandTimeoutError(
                f"{self.spec.where} sent nothing for command_timeout={timeout}s while "
                "commands waited; connection closed"
            )
        )
        self._abort()

    # -- failure ---------------------------------------------------------------------------

    def _fail(
        self,
        make_error: Callable[[], BackendUnavailableError],
        cause: BaseException | None = None,
    ) -> None:
        """Close for good and fail every waiting caller, each with its own exception."""
        if self._closed_because is not None:
            return
        self._closed_because = make_error
        self._close_cause = cause
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._pending = []
        self._pending_large = False
        self._outbox.clear()
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            future = waiter.future if type(waiter) is _Pipeline else waiter
            if not future.done():
                future.set_exception(self._unusable())
        slots, self._slot_waiters = self._slot_waiters, deque()
        for slot in slots:
            if not slot.done():
                slot.set_exception(self._unusable())
        self._closed_callback()

    def _unusable(self) -> BackendUnavailableError:
        if self._generation != _fork_generation:
            if self._closed_because is None:
                self._orphan()
            return BackendUnavailableError(
                f"this connection to {self.spec.where} was opened by the parent process"
            )
        assert self._closed_because is not None
        error = self._closed_because()
        error.__cause__ = self._close_cause
        return error

    def _wrong_loop(self) -> EventLoopError:
        return EventLoopError(
            f"this connection to {self.spec.where} belongs to another event loop; "
            "open one per event loop"
        )

    def _abort(self) -> None:
        """Drop the socket now, without flushing (after a timeout or a protocol error)."""
        if self._closed_because is None:
            self._fail(
                lambda: BackendUnavailableError(f"the connection to {self.spec.where} was closed")
            )
        if self._transport is not None and self._generation == _fork_generation:
            self._transport.abort()

    def _orphan(self) -> None:
        """Give up this connection without touching its socket (fork, dead loop).

        An inherited one is kept referenced for good. One whose loop stopped is left to
        the garbage collector, whose finalizer closes the socket (with asyncio's
        ResourceWarning for an unclosed transport): it cannot be closed through a loop
        that no longer runs.
        """
        self._closed_because = lambda: BackendUnavailableError(
            f"the connection to {self.spec.where} was abandoned"
        )
        self._waiters.clear()
        self._slot_waiters.clear()
        self._pending = []
        if self._generation != _fork_generation:
            _INHERITED.append(self)
        self._closed_callback()

    def _closed_callback(self) -> None:
        if self.on_close is None:
            return
        try:
            self.on_close(self)
        except Exception as err:
            self._loop.call_exception_handler(
                {"message": "the close callback of a Redis connection failed", "exception": err}
            )


# -- the node -----------------------------------------------------------------------------------


class Node:
    """The connections to one server address, opened on first use and after a loss.

    ``execute``/``execute_many`` send on the main connection; a command whose encoding
    reaches ``bulk_threshold`` bytes (a pipeline holding one) goes on a second
    connection, opened on demand, because RESP answers in order: a small read queued
    behind a 20 MB write on the same socket waits for the whole transfer. A caller's
    own commands stay ordered (each call returns before the next starts); two concurrent
    callers were never ordered. ``bulk_threshold=None`` keeps everything on one socket.

    A lost connection fails the commands in flight with ``BackendUnavailableError``;
    the next call opens a new one (concurrent callers share one attempt). Nothing is
    retried here. In a forked child, and after the event loop that opened the
    connections stopped, they are dropped (not closed: the parent may still use them)
    and new ones are opened; while that loop still runs, another loop gets
    ``EventLoopError``.

    ``on_push``, ``on_ready`` and ``on_close`` are given to every connection the node
    opens (see ``Connection.open``): a connection reaches callers only once
    ``on_ready`` has run on it.
    """

    def __init__(
        self,
        spec: ConnectionSpec,
        *,
        on_push: PushCallback | None = None,
        on_ready: ReadyCallback | None = None,
        on_close: CloseCallback | None = None,
        bulk_threshold: int | None = DEFAULT_BULK_THRESHOLD,
    ) -> None:
        if bulk_threshold is not None and (type(bulk_threshold) is not int or bulk_threshold < 1):
            raise InvalidArgumentError(
                f"bulk_threshold must be an int >= 1 or None, not {bulk_threshold!r}"
            )
        self.spec = spec
        self.on_push = on_push
        self.on_ready = on_ready
        self.on_close = on_close
        self._bulk_threshold = bulk_threshold if bulk_threshold is not None else 1 << 62
        self._main: Connection | None = None
        self._bulk: Connection | None = None
        self._opening: dict[bool, asyncio.Future[Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = _fork_generation

    def __repr__(self) -> str:
        return f"Node({self.spec.where!r})"

    @property
    def where(self) -> str:
        return self.spec.where

    @property
    def connection(self) -> Connection | None:
        """The main connection if one is open (for ``stats()``, ``protocol``)."""
        main = self._main
        return main if main is not None and not main.closed else None

    def execute(self, *args: Arg) -> Awaitable[Reply]:
        """``Connection.execute`` on a connection to this node, opened if need be.

        Like ``Connection.execute``, a plain method returning an awaitable.
        """
        packed = encode_command(args)
        size = packed.size if isinstance(packed, _Parts) else len(packed)
        bulk = size >= self._bulk_threshold
        connection = self._bulk if bulk else self._main
        if connection is not None:
            waiter = connection._submit(packed)
            if waiter is not None:
                return waiter
        return self._send(packed, bulk)

    async def _send(self, packed: bytes | _Parts, bulk: bool) -> Reply:
        """The slow path: no connection yet, a lost one, another loop or process, full."""
        connection = await self._connection(bulk)
        return await connection._send(packed)

    async def execute_many(self, commands: Iterable[Sequence[Arg]]) -> list[Reply]:
        """``Connection.execute_many`` on a connection to this node, opened if need be."""
        packed = [encode_command(command) for command in commands]
        bulk = any(_size(command) >= self._bulk_threshold for command in packed)
        connection = await self._connection(bulk)
        return await connection._send_many(packed)

    async def connect(self) -> Connection:
        """Open the main connection now (else the first command does)."""
        return await self._connection(False)

    def close(self) -> None:
        """Close the connections; waiting callers get ``BackendUnavailableError``.

        The node stays usable: the next command opens a new connection.
        """
        for attempt in self._opening.values():
            attempt.cancel()
        self._opening.clear()
        for connection in (self._main, self._bulk):
            if connection is not None and not connection.closed:
                connection.close()
        self._main = self._bulk = None

    def abandon(self) -> None:
        """Forget the connections without closing them, for the owner that moves to a
        new event loop or finds itself in a forked child: they belong to a loop that
        has stopped or to the parent process (kept referenced then, see ``_INHERITED``).
        The node stays usable."""
        self._drop_connections()

    async def _connection(self, bulk: bool) -> Connection:
        loop = asyncio.get_running_loop()
        self._adopt(loop)
        current = self._bulk if bulk else self._main
        if current is not None and not current.closed:
            return current
        opening = self._opening.get(bulk)
        if opening is None:
            opening = loop.create_task(
                Connection.open(
                    self.spec,
                    on_push=self.on_push,
                    on_ready=self.on_ready,
                    on_close=self.on_close,
                )
            )
            self._opening[bulk] = opening
            opening.add_done_callback(lambda done: self._opened(bulk, done))
        # Shielded: one cancelled caller must not cancel the attempt the others share.
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            if opening.cancelled():  # close() gave up the attempt, not our caller
                raise BackendUnavailableError(f"{self!r} was closed while connecting") from None
            raise

    def _opened(self, bulk: bool, attempt: asyncio.Future[Connection]) -> None:
        current = self._opening.get(bulk) is attempt
        if current:
            del self._opening[bulk]
        if attempt.cancelled() or attempt.exception() is not None:
            return  # retrieved here so that an attempt nobody awaits any more is quiet
        connection = attempt.result()
        if not current:  # close() gave it up just as it succeeded: do not keep it open
            connection.close()
        elif bulk:
            self._bulk = connection
        else:
            self._main = connection

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to ``loop``; drop connections inherited through fork or from a dead loop."""
        if self._generation != _fork_generation:
            self._drop_connections()
            self._generation = _fork_generation
        elif self._loop is not None and self._loop is not loop:
            if self._loop.is_running():
                raise EventLoopError(
                    f"{self!r} is in use on another event loop that is still running; "
                    "open one node per event loop"
                )
            self._drop_connections()
        self._loop = loop

    def _drop_connections(self) -> None:
        for connection in (self._main, self._bulk):
            if connection is not None and not connection.closed:
                connection._orphan()
        self._main = self._bulk = None
        self._opening.clear()
