"""Redis Cluster routing above the coalescing transport: slot map, redirects, failover.

``ClusterRouter`` keeps one connection per primary node and sends each command to the
primary that serves its key's hash slot. It follows ``MOVED`` and ``ASK`` redirects,
and refreshes the slot map (``CLUSTER SLOTS``) in the background when a redirect shows
it is stale or when a node stops answering, so a promoted replica takes over its
slots without the caller doing anything. It knows nothing about sockets: each node's
connection comes from a ``connect`` callable (the transport's ``Node``), and must follow
the ``NodeConnection`` protocol below.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from memkv.errors import (
    AccessDeniedError,
    BackendUnavailableError,
    InvalidArgumentError,
    InvalidKeyError,
    StoreClosedError,
    TrackingUnavailableError,
)
from memkv.redis.transport import ConnectionSpec, Node

__all__ = [
    "ClusterRouter",
    "Connect",
    "NodeAddress",
    "NodeConnection",
    "node_factory",
    "slot_of",
]

#: Redirects one command may follow before the router gives up (redis-py uses 16).
DEFAULT_MAX_REDIRECTS = 5
#: Shortest time between two slot-map refreshes, in seconds.
DEFAULT_REFRESH_INTERVAL = 0.5

#: Failures of a node's connection (refused, reset, timed out), as opposed to error
#: replies. ``BackendUnavailableError`` is a ``ConnectionError`` and so an ``OSError``;
#: ``asyncio.TimeoutError`` is not an ``OSError`` before Python 3.11. An
#: ``AccessDeniedError`` is a ``PermissionError``, also an ``OSError``: every handler
#: lets it through first, since it is a refusal, not an outage.
_CONNECTION_ERRORS = (OSError, asyncio.TimeoutError)

Arg = bytes | str | int | float
Command = Sequence[Arg]
Key = bytes | str


class NodeAddress(NamedTuple):
    """Where a cluster node listens, as the cluster announces it."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class NodeConnection(Protocol):
    """What the router needs from the transport's object for one node address.

    ``execute`` raises an error reply as an exception whose ``str`` is the reply's text
    (``"MOVED 3999 127.0.0.1:7002"``); ``execute_many`` sends its commands as one
    contiguous batch and returns one reply per command, an error reply as such an
    exception in its place (not raised). Both raise an ``OSError`` (such as
    ``BackendUnavailableError``) or ``asyncio.TimeoutError`` when the node cannot be
    reached. The object connects on first use and reconnects by itself on a later
    call; ``close`` drops its connections.
    """

    def execute(self, *args: Arg) -> Awaitable[Any]: ...

    def execute_many(self, commands: Sequence[Command]) -> Awaitable[list[Any]]: ...

    def close(self) -> None: ...


#: Makes the (lazily connecting) object for one node: ``connect("127.0.0.1", 7000)``.
Connect = Callable[[str, int], NodeConnection]


def node_factory(spec: ConnectionSpec, **node_options: Any) -> Connect:
    """A ``connect`` that makes a transport ``Node`` per address, with ``spec``'s options.

    Every node gets ``spec``'s credentials, database, protocol, timeouts and
    ``max_inflight``; its host and port are the node's (``spec.path`` is ignored).
    ``node_options`` go to every ``Node`` (``on_push``, ``on_ready``, ``on_close``...).
    """

    def connect(host: str, port: int) -> NodeConnection:
        return Node(dataclasses.replace(spec, host=host, port=port, path=None), **node_options)

    return connect


def slot_of(key: Key) -> int:
    """The cluster hash slot (0-16383) of ``key``: CRC16 of the key, or of the first
    non-empty ``{hash tag}`` in it, modulo 16384. A ``str`` key counts as its UTF-8."""
    if type(key) is not bytes:
        if not isinstance(key, (str, bytes)):
            raise InvalidKeyError(f"a cluster key must be bytes or str, not {type(key).__name__}")
        key = key.encode() if isinstance(key, str) else bytes(key)
    return key_slot(key)


class _Redirect(NamedTuple):
    asking: bool
    slot: int
    address: NodeAddress


def _redirect(error: BaseException, answered: NodeAddress) -> _Redirect | None:
    """The ``MOVED``/``ASK`` redirect an error reply carries, if it is one.

    A redirect without a host (``MOVED 3999 :7002``) names a node on the host of the
    node that ``answered``.
    """
    text = str(error)
    if not text.startswith(("MOVED ", "ASK ")):
        return None
    kind, slot, endpoint = text.split(" ", 2)
    host, _, port = endpoint.rpartition(":")
    return _Redirect(kind == "ASK", int(slot), NodeAddress(host or answered.host, int(port)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_slots(reply: Any, queried: NodeAddress) -> list[NodeAddress | None]:
    """The slot table from a ``CLUSTER SLOTS`` reply (``None`` for an unserved slot).

    A node that announces no host (empty, or ``?`` for an unknown endpoint) is the one
    that answered, reached at ``queried``'s host.
    """
    table: list[NodeAddress | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    for entry in reply:
        first, last, primary = int(entry[0]), int(entry[1]), entry[2]
        host = _text(primary[0])
        address = NodeAddress(queried.host if host in ("", "?") else host, int(primary[1]))
        table[first : last + 1] = [address] * (last - first + 1)
    return table


class ClusterRouter:
    """Routes commands to the primaries of a Redis Cluster over one connection each.

    Open it with ``await ClusterRouter.open(seeds, node_factory(spec))``: ``seeds`` are
    one or more ``(host, port)`` of cluster nodes; ``connect(host, port)`` makes the
    transport's object for a node (called once per primary, and for the slot-map
    queries), here a ``Node`` with the options of the ``ConnectionSpec`` ``spec``.

    - ``execute(key, *command)`` runs a single-key command on the primary serving
      ``key``: one slot computation (CRC16) and one dict lookup above the transport.
    - ``execute_many([(key, command), ...])`` groups the commands by node and sends
      each node's group as one batch, all nodes concurrently; replies come back in the
      caller's order. MGET cannot span slots; a batch of GETs per node can.
    - ``execute_on(address, *command)`` and ``on_every_primary(*command)`` run a
      keyless command (``SCAN``, ``SCRIPT LOAD``) on one or every primary;
      ``primaries()`` lists them.

    Redirects: ``MOVED`` updates the slot's entry, schedules a full refresh and retries
    on the named node; ``ASK`` (a slot being migrated) sends ``ASKING`` and the command
    to the named node in one batch and leaves the map alone. After ``max_redirects``
    redirects a command fails with ``BackendUnavailableError``. A node that cannot be
    reached fails its commands at once with ``BackendUnavailableError`` and schedules a
    refresh, so once the cluster has promoted a replica, the next refresh (at most one
    per ``refresh_interval`` seconds) routes that node's slots to it. Other error
    replies are raised as the transport raises them.

    Inside a coroutine (the replies shown after ``#``)::

        connect = node_factory(ConnectionSpec(password="secret", command_timeout=1.0))
        router = await ClusterRouter.open([("127.0.0.1", 7000)], connect)
        await router.execute(b"user:1", "SET", b"user:1", b"Ada")  # b'OK'
        await router.execute_many([(b"a", ("GET", b"a")), (b"b", ("GET", b"b"))])  # [None, None]
    """

    def __init__(
        self,
        seeds: Iterable[tuple[str, int]],
        connect: Connect,
        *,
        max_redirects: int = DEFAULT_MAX_REDIRECTS,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    ) -> None:
        """Prefer ``await ClusterRouter.open(...)``, which also loads the slot map."""
        self._seeds = [NodeAddress(str(host), int(port)) for host, port in seeds]
        if not self._seeds:
            raise InvalidArgumentError("a cluster router needs at least one seed node")
        if isinstance(max_redirects, bool) or not isinstance(max_redirects, int):
            raise InvalidArgumentError("max_redirects must be an int")
        if max_redirects < 0:
            raise InvalidArgumentError("max_redirects must be 0 or more")
        if not refresh_interval >= 0:
            raise InvalidArgumentError("refresh_interval must be 0 or more seconds")
        self._connect_node = connect
        self._max_redirects = max_redirects
        self._refresh_interval = refresh_interval
        self._slots: list[NodeAddress | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._replicas: set[NodeAddress] = set()
        #: ``primaries()``, kept until the slot table changes.
        self._primaries: list[NodeAddress] | None = None
        #: Nodes that failed since the last refresh: asked last by the next one.
        self._failed: set[NodeAddress] = set()
        self._connections: dict[NodeAddress, NodeConnection] = {}
        self._refresh_task: asyncio.Task[None] | None = None
        self._last_refresh = float("-inf")
        self._closed = False

    @classmethod
    async def open(
        cls,
        seeds: Iterable[tuple[str, int]],
        connect: Connect,
        *,
        max_redirects: int = DEFAULT_MAX_REDIRECTS,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    ) -> ClusterRouter:
        """A router with its slot map loaded from the first seed that answers.

        Raises ``BackendUnavailableError`` when no seed answers ``CLUSTER SLOTS``.
        """
        router = cls(
            seeds, connect, max_redirects=max_redirects, refresh_interval=refresh_interval
        )
        try:
            await router.refresh()
        except BaseException:
            await router.close()
            raise
        return router

    # -- routing ---------------------------------------------------------------------

    async def execute(self, key: Key, *command: Arg) -> Any:
        """Run ``command`` on the primary serving ``key`` and return its reply.

        An error reply is raised as the transport raises it; an unreachable node, an
        unserved slot or too many redirects raise ``BackendUnavailableError``.
        """
        address = self._slots[slot_of(key)]
        asking = False
        for _ in range(self._max_redirects + 1):
            if address is None:
                raise self._uncovered(slot_of(key))
            connection = self._connections.get(address) or self._connection(address)
            try:
                if asking:
                    reply = (await connection.execute_many([("ASKING",), command]))[1]
                    if isinstance(reply, Exception):
                        raise reply
                    return reply
                return await connection.execute(*command)
            except AccessDeniedError:
                raise
            except _CONNECTION_ERRORS as err:
                raise self._unavailable(address, err) from err
            except Exception as err:
                redirect = _redirect(err, address)
                if redirect is None:
                    raise
                address, asking = self._follow(redirect), redirect.asking
        raise self._too_many_redirects(command)

    async def execute_many(self, commands: Sequence[tuple[Key, Command]]) -> list[Any]:
        """Run single-key commands, one batch per node, and return their replies in order.

        Every node's batch is sent concurrently; redirected commands are sent again
        (grouped the same way) until each has a reply. Raises the first error reply in
        the caller's order, or ``BackendUnavailableError`` if a node failed, once every
        batch has ended.
        """
        replies: list[Any] = [None] * len(commands)
        slots = [slot_of(key) for key, _ in commands]
        pending = list(range(len(commands)))
        asking: dict[int, NodeAddress] = {}
        failure: BaseException | None = None
        for _ in range(self._max_redirects + 1):
            groups: dict[NodeAddress, list[int]] = {}
            for index in pending:
                address = asking.get(index) or self._slots[slots[index]]
                if address is None:
                    raise self._uncovered(slots[index])
                groups.setdefault(address, []).append(index)
            batches = [
                self._send_group(address, indexes, commands, asking)
                for address, indexes in groups.items()
            ]
            outcomes: list[list[Any] | BaseException]
            if len(batches) == 1:  # one node: no task for gather to wrap it in
                try:
                    outcomes = [await batches[0]]
                except Exception as err:
                    outcomes = [err]
            else:
                outcomes = await asyncio.gather(*batches, return_exceptions=True)
            pending, asking = [], {}
            for (address, indexes), outcome in zip(groups.items(), outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failure = failure or outcome
                    continue
                for index, reply in zip(indexes, outcome, strict=True):
                    redirect = _redirect(reply, address) if isinstance(reply, Exception) else None
                    if redirect is None:
                        replies[index] = reply
                        continue
                    target = self._follow(redirect)
                    if redirect.asking:
                        asking[index] = target
                    pending.append(index)
            if failure is not None:
                raise failure
            if not pending:
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
                return replies
            pending.sort()
        raise self._too_many_redirects(commands[pending[0]][1])

    async def _send_group(
        self,
        address: NodeAddress,
        indexes: list[int],
        commands: Sequence[tuple[Key, Command]],
        asking: dict[int, NodeAddress],
    ) -> list[Any]:
        """One node's share of ``execute_many``, as one batch (``ASKING`` where needed)."""
        connection = self._connections.get(address) or self._connection(address)
        if not asking:
            try:
                return await connection.execute_many([commands[index][1] for index in indexes])
            except AccessDeniedError:
                raise
            except _CONNECTION_ERRORS as err:
                raise self._unavailable(address, err) from err
        batch: list[Command] = []
        positions: list[int] = []  # where each caller's command sits, after its ASKING
        for index in indexes:
            if index in asking:
                batch.append(("ASKING",))
            positions.append(len(batch))
            batch.append(commands[index][1])
        try:
            replies = await connection.execute_many(batch)
        except AccessDeniedError:
            raise
        except _CONNECTION_ERRORS as err:
            raise self._unavailable(address, err) from err
        return [replies[position] for position in positions]

    # -- every primary ---------------------------------------------------------------

    def primaries(self) -> list[NodeAddress]:
        """The primaries that serve at least one slot in the current map, sorted."""
        if self._primaries is None:
            self._primaries = sorted({address for address in self._slots if address})
        return list(self._primaries)

    async def execute_on(self, address: tuple[str, int], *command: Arg) -> Any:
        """Run a keyless command on one node (a primary from ``primaries()``)."""
        node = NodeAddress(*address)
        connection = self._connections.get(node) or self._connection(node)
        try:
            return await connection.execute(*command)
        except AccessDeniedError:
            raise
        except _CONNECTION_ERRORS as err:
            raise self._unavailable(node, err) from err

    async def on_every_primary(self, *command: Arg) -> dict[NodeAddress, Any]:
        """Run ``command`` on every primary concurrently: ``{address: reply}``.

        Raises the first failure (in ``primaries()`` order) once every node answered.
        """
        nodes = self.primaries()
        outcomes = await asyncio.gather(
            *(self.execute_on(node, *command) for node in nodes), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return dict(zip(nodes, outcomes, strict=True))

    # -- slot map --------------------------------------------------------------------

    async def refresh(self) -> None:
        """Reload the slot map now from the first node that answers ``CLUSTER SLOTS``.

        Asks the current primaries, then the seeds, then the known replicas, and last
        the nodes that failed since the previous refresh (so that a hung node does not
        delay it by a timeout). Raises ``BackendUnavailableError`` (the map unchanged)
        when none answers.
        """
        self._last_refresh = time.monotonic()
        known = dict.fromkeys([*self.primaries(), *self._seeds, *sorted(self._replicas)])
        failed = self._failed
        candidates = [node for node in known if node not in failed] + [
            node for node in known if node in failed
        ]
        errors: list[str] = []
        for address in candidates:
            try:
                reply = await self._ask_slots(address)
            except (AccessDeniedError, TrackingUnavailableError):
                # Every node takes the same credentials and setup: asking on cannot help.
                raise
            except _CONNECTION_ERRORS as err:
                errors.append(f"{address}: {type(err).__name__}")
                continue
            except Exception as err:  # an error reply: a node outside a cluster, say
                errors.append(f"{address}: {err}")
                continue
            self._install(reply, address)
            return
        raise BackendUnavailableError(
            "no Redis Cluster node answered CLUSTER SLOTS (" + "; ".join(errors) + ")"
        )

    async def _ask_slots(self, address: NodeAddress) -> Any:
        connection = self._connections.get(address)
        if connection is not None:
            return await connection.execute("CLUSTER", "SLOTS")
        # Not a primary we route to: a connection for this one question only.
        connection = self._connect_node(address.host, address.port)
        try:
            return await connection.execute("CLUSTER", "SLOTS")
        finally:
            connection.close()

    def _install(self, reply: Any, queried: NodeAddress) -> None:
        table = _parse_slots(reply, queried)
        replicas: set[NodeAddress] = set()
        for entry in reply:
            for replica in entry[3:]:
                host = _text(replica[0])
                replicas.add(
                    NodeAddress(queried.host if host in ("", "?") else host, int(replica[1]))
                )
        self._slots = table
        self._primaries = None
        self._replicas = replicas
        self._failed = set()
        primaries = set(self.primaries())
        for address in [address for address in self._connections if address not in primaries]:
            # A node that lost all its slots, or died and was replaced.
            self._connections.pop(address).close()

    def _follow(self, redirect: _Redirect) -> NodeAddress:
        """Where a redirect sends the command; a ``MOVED`` also fixes the map."""
        if not redirect.asking:
            self._slots[redirect.slot] = redirect.address
            self._primaries = None
            self._schedule_refresh()
        return redirect.address

    def _schedule_refresh(self) -> None:
        """Refresh the map in the background, at most once per ``refresh_interval``."""
        if self._closed or (self._refresh_task is not None and not self._refresh_task.done()):
            return
        self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_later())

    async def _refresh_later(self) -> None:
        delay = self._last_refresh + self._refresh_interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        # A failed refresh leaves the old map; the next failure schedules another (and
        # a refusal reaches the caller of the next command that opens a connection).
        with contextlib.suppress(
            BackendUnavailableError, AccessDeniedError, TrackingUnavailableError
        ):
            await self.refresh()

    # -- connections -----------------------------------------------------------------

    def _connection(self, address: NodeAddress) -> NodeConnection:
        """The node object for ``address``, made on first use (it connects lazily)."""
        if self._closed:
            raise StoreClosedError("the cluster router is closed")
        connection = self._connections.get(address)
        if connection is None:
            connection = self._connections[address] = self._connect_node(
                address.host, address.port
            )
        return connection

    def _unavailable(self, address: NodeAddress, err: BaseException) -> BackendUnavailableError:
        self._failed.add(address)
        self._schedule_refresh()
        return BackendUnavailableError(
            f"Redis Cluster node {address} is unavailable: {type(err).__name__}: {err}"
        )

    def _uncovered(self, slot: int) -> BackendUnavailableError:
        self._schedule_refresh()
        return BackendUnavailableError(f"no Redis Cluster node serves slot {slot}")

    def _too_many_redirects(self, command: Command) -> BackendUnavailableError:
        self._schedule_refresh()
        name = _text(command[0]) if command else "?"
        return BackendUnavailableError(
            f"{name} was redirected more than {self._max_redirects} times by the Redis Cluster"
        )

    async def close(self) -> None:
        """Close every node connection and stop refreshing; the router cannot be reused."""
        self._closed = True
        task, self._refresh_task = self._refresh_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            connection.close()

    async def __aenter__(self) -> ClusterRouter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        nodes = ", ".join(str(address) for address in self.primaries())
        return f"ClusterRouter(primaries=[{nodes}])"
