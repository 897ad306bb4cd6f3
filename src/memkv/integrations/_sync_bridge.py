"""Runs one async memkv store for an adapter with sync and async methods.

Frameworks such as LangChain and LangGraph call a store from sync code, from async code
on any event loop, and from any thread; memkv stores are async, and a
``RedisMemoryStore``'s connections belong to the loop that opened them. A
``SyncBridge`` owns one store for one adapter and runs every call of it where the store
can run:

- a store whose class declares ``runs_inline = True`` (``LocalMemoryStore``: no loop
  state, its operations never wait on a future) runs in the caller: ``call`` drives
  the coroutine to its end in the calling thread (no event loop needed), ``run``
  awaits it on the caller's loop;
- any other store runs on an event loop the bridge owns, in a daemon thread (its
  *worker*, started on first need, named ``<thread_prefix><n>``): ``call`` blocks the
  calling thread until done, ``run`` awaits the worker's result from any loop.

The API an adapter uses: ``call(coro)`` and ``await run(coro)`` for one operation,
``keys(prefix, batch_size)`` / ``akeys(prefix, batch_size)`` to stream a scan,
``check_open()``, and ``close()`` / ``await aclose()`` (close the store where it runs,
then stop the worker; safe twice). After closing, every call raises
``StoreClosedError``; calls still running in other threads are cancelled. A sync call
made on the worker itself (from inside one of the store's operations) raises
``ReentrantCallError`` instead of deadlocking. After ``fork()`` the child starts a
worker of its own. A bridge dropped without closing closes its store and stops its
worker when garbage-collected.

``BridgedAdapter`` gives an adapter that owns a bridge its ``close``/``aclose`` and its
sync and async context managers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Generator
from types import TracebackType
from typing import Any, TypeVar

from memkv.errors import EventLoopError, ReentrantCallError, StoreClosedError
from memkv.store import MemoryStore

__all__ = ["BridgedAdapter", "SyncBridge"]

R = TypeVar("R")
_Adapter = TypeVar("_Adapter", bound="BridgedAdapter")

_worker_numbers = itertools.count(1)
_DEADLOCK = (
    "a sync call from the adapter's own worker thread (from inside one of the store's "
    "operations) would deadlock"
)


class SyncBridge:
    """Runs ``store``'s coroutines in the caller or on a worker loop (see the module).

    ``label`` names the owner in messages (``"<label> is closed"``); worker threads are
    named ``thread_prefix`` plus a number.
    """

    def __init__(self, store: MemoryStore[Any], *, label: str, thread_prefix: str) -> None:
        self.store = store
        #: Whether the store runs in the caller (its class declares ``runs_inline``).
        self.inline = bool(type(store).runs_inline)
        self._label = label
        self._thread_prefix = thread_prefix
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``close()`` or ``aclose()`` has begun."""
        return self._closed

    def check_open(self) -> None:
        """Raise ``StoreClosedError`` once the bridge is closed."""
        if self._closed:
            raise self._closed_error()

    def call(self, coro: Coroutine[Any, Any, R]) -> R:
        """Run ``coro`` (an operation of the store) to its end and return its result.

        Inline, in this thread; otherwise on the worker, blocking this thread (inside a
        running loop it blocks that loop for the call).
        """
        if self.inline:
            if self._closed:
                coro.close()
                raise self._closed_error()
            return _drive(coro, self.store)
        worker = self._worker
        if worker is not None and worker.is_current_thread():
            coro.close()
            raise ReentrantCallError(_DEADLOCK)
        return _Worker.wait(self._submit(coro))

    async def run(self, coro: Coroutine[Any, Any, R]) -> R:
        """Await ``coro`` here (inline) or on the worker; one hop between threads."""
        if not self.inline:
            return await asyncio.wrap_future(self._submit(coro))
        if self._closed:
            coro.close()
            raise self._closed_error()
        return await coro

    def keys(self, prefix: str | None, batch_size: int) -> Generator[str, None, None]:
        """The store's ``scan(prefix, batch_size)`` as a generator, one batch per call.

        Closing the generator early closes the scan (without waiting, on the worker).
        """
        scan = self.call(_open_scan(self.store, prefix, batch_size))
        done = False
        try:
            while not done:
                batch, done = self.call(_next_batch(scan, batch_size))
                yield from batch
        finally:
            if not done:
                self._discard(scan)

    def akeys(self, prefix: str | None, batch_size: int) -> AsyncGenerator[str, None]:
        """The store's ``scan(prefix, batch_size)`` as an async generator.

        Closing the bridge ends a running scan: its next step raises ``StoreClosedError``.
        """
        if self.inline:
            return self._keys_here(prefix, batch_size)
        return self._keys_on_worker(prefix, batch_size)

    def close(self) -> None:
        """Close the store where it runs, stop the worker and wait for its thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.inline:
                _drive(self.store.close(), self.store)
                return
            # The store's close() is a coroutine too: run it on a worker (a short-lived
            # one when no call needed one), never on a loop this thread may be running.
            worker = self._take_worker() or _Worker(self._thread_prefix)
        try:
            worker.run(self.store.close())
        finally:
            worker.stop()

    async def aclose(self) -> None:
        """Async ``close``: awaits the store's ``close()`` where the store runs.

        Waiting for the worker thread to exit blocks the loop briefly (the thread only
        has to wind its loop down).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._take_worker()
        try:
            if worker is None:  # never started (always so for an inline store)
                await self.store.close()
            else:
                await asyncio.wrap_future(worker.submit(self.store.close()))
        finally:
            if worker is not None:
                worker.stop()

    # -- internals -----------------------------------------------------------------------

    def _closed_error(self) -> StoreClosedError:
        return StoreClosedError(f"{self._label} is closed")

    async def _keys_here(self, prefix: str | None, batch_size: int) -> AsyncGenerator[str, None]:
        scan = self.store.scan(prefix, batch_size)
        try:
            async for key in scan:
                self.check_open()  # as on the worker: closing ends a running scan
                yield key
        finally:
            await _aclose(scan)

    async def _keys_on_worker(
        self, prefix: str | None, batch_size: int
    ) -> AsyncGenerator[str, None]:
        scan = await self.run(_open_scan(self.store, prefix, batch_size))
        done = False
        try:
            while not done:
                batch, done = await self.run(_next_batch(scan, batch_size))
                for key in batch:
                    yield key
        finally:
            if not done:
                self._discard(scan)

    def _take_worker(self) -> _Worker | None:
        """Detach the worker (under the lock) so that nothing new reaches it.

        ``None`` when there is none in this process: after ``fork()`` the parent's
        worker thread does not exist in the child, so its loop must not be used.
        """
        worker, self._worker = self._worker, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        return worker if worker is not None and worker.pid == os.getpid() else None

    def _submit(self, coro: Coroutine[Any, Any, R]) -> concurrent.futures.Future[R]:
        """Schedule ``coro`` on the worker, starting it if needed."""
        # Under the lock, so that close() cannot stop the loop between the check and
        # the scheduling (a call scheduled on a stopped loop would never finish).
        with self._lock:
            if self._closed:
                coro.close()
                raise self._closed_error()
            worker = self._worker
            if worker is None or worker.pid != os.getpid():
                self._take_worker()
                worker = self._worker = _Worker(self._thread_prefix)
                self._finalizer = weakref.finalize(self, worker.abandon, self.store)
            return worker.submit(coro)

    def _discard(self, scan: AsyncIterator[str]) -> None:
        """Close an unfinished scan on the worker, without waiting.

        Runs when a key generator is closed early, possibly from a finalizer in any
        thread, so it takes no lock and never blocks. With no worker left, stopping it
        has already closed the scan.
        """
        if self.inline:
            _drive(_aclose(scan), self.store)
            return
        worker = self._worker
        if worker is not None and worker.pid == os.getpid():
            worker.submit_nowait(_aclose(scan))


class BridgedAdapter:
    """Closing for an adapter whose store runs through ``self._bridge`` (a ``SyncBridge``).

    ``close()`` / ``with`` and ``await aclose()`` / ``async with``.
    """

    _bridge: SyncBridge

    def close(self) -> None:
        """Close the store where it runs, stop the worker and wait for its thread.

        Safe to call twice. Calls still running in other threads are cancelled.
        """
        self._bridge.close()

    async def aclose(self) -> None:
        """Async ``close``: awaits the store's ``close()`` where the store runs.

        Safe to call twice. Waiting for the worker thread to exit blocks the loop
        briefly (the thread only has to wind its loop down).
        """
        await self._bridge.aclose()

    def __enter__(self: _Adapter) -> _Adapter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self: _Adapter) -> _Adapter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _Worker:
    """An event loop in a daemon thread: where a bridge runs its store."""

    def __init__(self, thread_prefix: str) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self._run, name=f"{thread_prefix}{next(_worker_numbers)}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        loop = self.loop
        try:
            loop.run_forever()
        finally:
            # What asyncio.run() does on the way out: cancel the calls left running,
            # finish the async generators (unfinished scans), then close.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def is_current_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def submit(self, coro: Coroutine[Any, Any, R]) -> concurrent.futures.Future[R]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def submit_nowait(self, coro: Coroutine[Any, Any, None]) -> None:
        """Schedule ``coro`` if the loop still runs; nobody waits for it."""
        try:
            asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closed
            coro.close()

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        """Run ``coro`` on the loop and block until it is done."""
        if self.is_current_thread():
            coro.close()
            raise ReentrantCallError(_DEADLOCK)
        return self.wait(self.submit(coro))

    @staticmethod
    def wait(future: concurrent.futures.Future[R]) -> R:
        try:
            return future.result()
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt): do not leave the call
            # running unseen. A no-op when the call itself raised.
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop after what is already scheduled and wait for the thread."""
        with contextlib.suppress(RuntimeError):  # closed already
            self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.is_current_thread():
            self.thread.join()

    def abandon(self, store: MemoryStore[Any]) -> None:
        """Close ``store`` and stop, without waiting: its bridge was garbage-collected.

        Runs from a finalizer (any thread, or at exit), so it must never block.
        """

        async def close_then_stop() -> None:
            try:
                with contextlib.suppress(Exception):  # nobody is left to report it to
                    await store.close()
            finally:
                self.loop.stop()

        if self.pid != os.getpid():
            return
        with contextlib.suppress(RuntimeError):  # closed already
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(close_then_stop()))


def _drive(coro: Coroutine[Any, Any, R], store: MemoryStore[Any]) -> R:
    """Run a coroutine of an inline store to its end, in this thread, without a loop.

    Such a store's operations only ever yield bare (``asyncio.sleep(0)`` between scan
    batches), which needs no event loop: the coroutine is simply resumed.
    """
    try:
        while True:
            if coro.send(None) is not None:
                coro.close()
                raise _misdeclared(store)
    except StopIteration as done:
        result: R = done.value
        return result
    except RuntimeError as err:
        # What asyncio raises for a wait (sleep, lock, I/O) started with no loop running.
        if "no running event loop" in str(err):
            raise _misdeclared(store) from err
        raise


def _misdeclared(store: MemoryStore[Any]) -> EventLoopError:
    return EventLoopError(
        f"{type(store).__name__} declares runs_inline = True, but one of its operations "
        "needs an event loop; a store whose operations wait must declare "
        "runs_inline = False"
    )


async def _open_scan(
    store: MemoryStore[Any], prefix: str | None, batch_size: int
) -> AsyncIterator[str]:
    # Made on the loop that will iterate it: a store may bind loop state to it.
    return store.scan(prefix, batch_size)


async def _next_batch(keys: AsyncIterator[str], size: int) -> tuple[list[str], bool]:
    """Up to ``size`` keys from ``keys``, and whether it is exhausted."""
    batch: list[str] = []
    while len(batch) < size:
        try:
            batch.append(await anext(keys))
        except StopAsyncIteration:
            return batch, True
    return batch, False


async def _aclose(keys: AsyncIterator[str]) -> None:
    aclose = getattr(keys, "aclose", None)
    if aclose is not None:
        await aclose()
