"""Single-flight calls and refresh-ahead: the in-process machinery behind ``get_or_set``.

A ``SingleFlight`` runs at most one call per key at a time on an event loop and hands its
outcome to every caller that asked meanwhile. ``FillState`` is what each store keeps for
``get_or_set``: the running fills, the background refreshes and their counters.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, NamedTuple, TypeVar

from memkv.errors import InvalidArgumentError, InvalidTTLError
from memkv.validation import ttl_seconds

__all__ = [
    "Fill",
    "FillState",
    "FlightStats",
    "SingleFlight",
    "call_factory",
    "check_fill_options",
    "jittered_ttl",
]

R = TypeVar("R")

_log = logging.getLogger("memkv")


class FlightStats(NamedTuple):
    """Counters of ``get_or_set`` and ``cached`` beyond their calls.

    ``factory_calls`` counts factory runs (fills and refreshes) and ``factory_errors``
    those that raised; ``waits`` counts callers that awaited a factory call another
    caller in this process had started; ``refreshes`` counts background refreshes
    started by ``refresh_after``; ``lease_waits`` counts fills that found another
    process computing the entry (a Redis lease) and waited for its result.
    """

    factory_calls: int = 0
    factory_errors: int = 0
    waits: int = 0
    refreshes: int = 0
    lease_waits: int = 0


class Fill(NamedTuple):
    """One ``get_or_set`` fill, its arguments checked: what a store's ``_fill`` gets."""

    key: str
    factory: Callable[[], Awaitable[Any]]
    seconds: float | None
    metadata: dict[str, Any] | None
    jitter: float


class _Flight:
    __slots__ = ("loop", "task", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Task[Any] | None = None
        self.waiters: list[asyncio.Future[Any]] = []


class SingleFlight(Generic[R]):
    """At most one running call per key on an event loop, shared by every caller.

    ``await run(key, call)`` starts ``call()`` in a task of its own unless one for
    ``key`` runs already, then waits for its outcome: its result, or its exception
    (the same object raised in every caller). The task belongs to no caller, so
    cancelling a caller cancels only that caller's wait; when every caller is
    cancelled the call still runs to its end (a fill then stores its result for the
    next caller, and an exception with nobody left to receive it is logged on the
    ``memkv`` logger). The key is free again as soon as the call ends, whatever its
    outcome. ``start(key, call)`` runs a call in the background with nobody waiting
    (its exception is logged), ``aclose()`` cancels and awaits every call that has
    nobody waiting for it.

    Calls are shared per event loop: a caller on another loop runs its own call. Loops
    in other threads may share one object (each loop's calls are filed apart, so one
    thread never ends another's); ``joins`` may then miss a few counts.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._flights: dict[tuple[asyncio.AbstractEventLoop, Hashable], _Flight] = {}
        #: Callers that joined a call another caller had started.
        self.joins = 0

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, call: Callable[[], Awaitable[R]]) -> R:
        loop = asyncio.get_running_loop()
        flight = self._flights.get((loop, key))
        if flight is None:
            flight = self._start(loop, key, call)
        else:
            self.joins += 1
        waiter: asyncio.Future[R] = loop.create_future()
        flight.waiters.append(waiter)
        # Cancelling this caller cancels ``waiter`` only, never the shared task.
        return await waiter

    def start(self, key: Hashable, call: Callable[[], Awaitable[R]]) -> bool:
        """Run ``call()`` in the background unless a call for ``key`` runs; ``True`` if
        this started one."""
        loop = asyncio.get_running_loop()
        if (loop, key) in self._flights:
            return False
        self._start(loop, key, call)
        return True

    def _start(
        self, loop: asyncio.AbstractEventLoop, key: Hashable, call: Callable[[], Awaitable[R]]
    ) -> _Flight:
        flight = _Flight(loop)

        async def run_call() -> R:
            return await call()

        # The dict keeps the task referenced until it ends (asyncio holds tasks weakly).
        flight.task = loop.create_task(run_call())
        flight.task.add_done_callback(lambda task: self._finish(key, flight, task))
        self._flights[loop, key] = flight
        return flight

    def _finish(self, key: Hashable, flight: _Flight, task: asyncio.Task[Any]) -> None:
        # Only this flight is filed under its (loop, key) until now: no other loop's
        # thread can have replaced it, so this removes nothing of another's.
        del self._flights[flight.loop, key]
        waiters = [waiter for waiter in flight.waiters if not waiter.done()]
        if task.cancelled():
            for waiter in waiters:
                waiter.cancel()
            return
        error = task.exception()  # retrieved here, so never "never retrieved"
        if error is None:
            result = task.result()
            for waiter in waiters:
                waiter.set_result(result)
        elif waiters:
            for waiter in waiters:
                waiter.set_exception(error)
        else:
            _log.error(
                "memkv %s for key %r failed with nobody waiting for it",
                self._name,
                key,
                exc_info=error,
            )

    async def aclose(self) -> None:
        """Cancel and await every call of the running loop that nobody waits for."""
        loop = asyncio.get_running_loop()
        orphans = [
            flight.task
            for (flight_loop, _), flight in list(self._flights.items())
            if flight_loop is loop
            and flight.task is not None
            and not any(not waiter.done() for waiter in flight.waiters)
        ]
        for task in orphans:
            task.cancel()
        await asyncio.gather(*orphans, return_exceptions=True)


class FillState:
    """What a store keeps for ``get_or_set``: running fills, refreshes and counters."""

    def __init__(self) -> None:
        self.fills: SingleFlight[Any] = SingleFlight("get_or_set factory call")
        #: Concurrent first reads of one key, shared on stores whose get waits.
        self.lookups: SingleFlight[Any] = SingleFlight("get_or_set lookup")
        self.refreshes: SingleFlight[Any] = SingleFlight("background refresh")
        #: Calls by (operation, result) for get_or_set, add and touch.
        self.operations: Counter[tuple[str, str]] = Counter()
        self.factory_calls = 0
        self.factory_errors = 0
        self.refresh_count = 0
        self.lease_waits = 0

    def stats(self) -> FlightStats:
        return FlightStats(
            factory_calls=self.factory_calls,
            factory_errors=self.factory_errors,
            waits=self.fills.joins,
            refreshes=self.refresh_count,
            lease_waits=self.lease_waits,
        )

    async def aclose(self) -> None:
        """Cancel and await background refreshes and fills nobody waits for."""
        await self.refreshes.aclose()
        await self.fills.aclose()
        await self.lookups.aclose()


def check_fill_options(
    factory: object, ttl: float | None, refresh_after: object, ttl_jitter: object
) -> tuple[float | None, float]:
    """Check ``get_or_set``'s own options; returns (refresh_after seconds, jitter).

    ``ttl`` is already in seconds. A ``factory`` that is not callable raises
    ``InvalidArgumentError``; a ``refresh_after`` that is not positive, or not below
    the shortest TTL the jitter can draw, raises ``InvalidTTLError``; a ``ttl_jitter``
    outside ``[0, 1)`` raises ``InvalidArgumentError``.
    """
    if not callable(factory):
        raise InvalidArgumentError(
            f"factory must be a zero-argument callable returning an awaitable, "
            f"not {type(factory).__name__}"
        )
    if isinstance(ttl_jitter, bool) or not isinstance(ttl_jitter, (int, float)):
        raise InvalidArgumentError(
            f"ttl_jitter must be a fraction in [0, 1), not {type(ttl_jitter).__name__}"
        )
    # Compared before float(): an enormous int has no float (nor, past
    # sys.get_int_max_str_digits(), any decimal text for a message).
    if not 0 <= ttl_jitter < 1:
        raise InvalidArgumentError("ttl_jitter must be a fraction in [0, 1)")
    jitter = float(ttl_jitter)
    if refresh_after is None:
        return None, jitter
    refresh = ttl_seconds(refresh_after, "refresh_after")
    assert refresh is not None
    if ttl is not None and refresh >= ttl * (1.0 - jitter):
        raise InvalidTTLError(
            f"refresh_after ({refresh:g} s) must be below the ttl ({ttl:g} s"
            + (f" less the {jitter:g} jitter" if jitter else "")
            + "): an entry must still be live when its refresh is due"
        )
    return refresh, jitter


def jittered_ttl(ttl: float | None, jitter: float) -> float | None:
    """``ttl`` shortened by a random fraction of at most ``jitter`` (never lengthened),
    so that entries written together do not all expire together."""
    if ttl is None or not jitter:
        return ttl
    return ttl * (1.0 - jitter * random.random())


async def call_factory(factory: Callable[[], Awaitable[R]]) -> R:
    """``await factory()``, with a factory that returns no awaitable refused."""
    made = factory()
    if not inspect.isawaitable(made):
        raise InvalidArgumentError(
            f"factory must return an awaitable (an async def's coroutine), "
            f"not {type(made).__name__}"
        )
    return await made
