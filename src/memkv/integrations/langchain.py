"""LangChain key-value stores backed by any memkv store: ``MemkvStore`` and ``MemkvByteStore``.

Needs the ``langchain`` extra: ``pip install "memkv[langchain]"``.

>>> from memkv import LocalMemoryStore
>>> from memkv.integrations.langchain import MemkvStore
>>> with MemkvStore(LocalMemoryStore(), ttl=3600) as docstore:
...     docstore.mset([("doc:1", {"text": "hello"})])
...     docstore.mget(["doc:1", "doc:2"])
[{'text': 'hello'}, None]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import threading
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Coroutine,
    Generator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, TypeVar

try:
    from langchain_core.stores import BaseStore
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'memkv.integrations.langchain needs langchain-core: pip install "memkv[langchain]"'
    ) from err

from memkv.entry import MemoryEntry
from memkv.errors import CodecError, ReentrantCallError, StoreClosedError
from memkv.local import LocalMemoryStore
from memkv.store import TTL, MemoryStore
from memkv.validation import (
    check_batch_size,
    check_items,
    check_keys,
    check_metadata,
    check_prefix,
    ttl_seconds,
)

__all__ = ["MemkvByteStore", "MemkvStore"]

V = TypeVar("V")
R = TypeVar("R")
_Self = TypeVar("_Self", bound="MemkvStore[Any]")

# Worker threads are named memkv-langchain-<n> (for thread dumps and the tests).
_WORKER_THREAD_PREFIX = "memkv-langchain-"
_worker_numbers = itertools.count(1)
_DEADLOCK = (
    "a sync call from the adapter's own worker thread (from inside one of the store's "
    "operations) would deadlock"
)


class MemkvStore(BaseStore[str, V]):
    """A LangChain ``BaseStore[str, V]`` over any memkv ``MemoryStore``, sync and async.

    ``mget``/``amget`` return the values (``None`` where a key is missing or expired),
    ``mset``/``amset`` write a batch with the same ``ttl`` and ``metadata`` on every
    entry (validated here, at construction: a bad ``ttl`` raises ``InvalidTTLError``,
    bad metadata ``InvalidMetadataError``), ``mdelete``/``amdelete`` remove keys, and
    ``yield_keys``/``ayield_keys`` stream the keys that start with the literal
    ``prefix``, ``batch_size`` keys at a time (a real ``Generator`` and
    ``AsyncGenerator``; ``prefix`` is checked when called). Keys follow the memkv
    contract: a non-``str`` key raises ``InvalidKeyError``, a batch is validated as a
    whole before anything is written, and every other error is the store's own typed
    error. Each call is one batch operation on the store (``get_many``,
    ``set_many``, ``delete_many``; ``scan`` for the keys).

    **Where the store runs.** memkv stores are async. A ``LocalMemoryStore`` keeps no
    event-loop state and its operations never wait, so the adapter runs it right in
    the caller: sync methods drive its coroutines to the end in the calling thread
    (about 2 µs for a small ``mget``), async methods await it on the caller's loop.
    Any other store (``RedisMemoryStore``, a third-party store, a ``LocalMemoryStore``
    subclass with operations of its own) runs on an event loop that the adapter owns,
    in a daemon thread (its *worker*, started on first need):

    - sync methods run on the worker and block the calling thread until done. They
      work in any thread, with or without a running event loop (inside one they block
      that loop for the call: there, prefer the async methods);
    - async methods run on the worker too, because a ``RedisMemoryStore``'s
      connections belong to the event loop that opened them: redis-py fails
      (``RuntimeError: ... attached to a different loop``) when a connection opened on
      one loop is used on another. With one loop per store, sync and async calls mix
      freely, from any number of threads and loops, across repeated ``asyncio.run()``
      calls; each call costs one hop between threads (about 0.2 ms here, like a
      local Redis round trip).

    So give the adapter a store of its own: do not also await that Redis store on
    another event loop while the adapter uses it. ``close()`` (or ``with``) and
    ``await aclose()`` (or ``async with``) close the store where it runs, then stop
    the worker and wait for its thread; both are safe to call twice. A closed adapter
    raises ``StoreClosedError`` (a ``RuntimeError``) when used; calls still running in
    other threads when it closes are cancelled. A sync call from inside the store's
    own operations raises ``ReentrantCallError`` instead of deadlocking. An adapter
    dropped without closing closes its store and stops its worker when
    garbage-collected.

    >>> from datetime import timedelta
    >>> from memkv import RedisMemoryStore
    >>> docstore = MemkvStore(
    ...     RedisMemoryStore("redis://localhost:6379/0", namespace="docs"),
    ...     ttl=timedelta(days=1),
    ...     metadata={"source": "langchain"},
    ... )
    >>> async with docstore:                                      # doctest: +SKIP
    ...     await docstore.amset([("doc:1", {"text": "hello"})])
    ...     [key async for key in docstore.ayield_keys(prefix="doc:")]
    ['doc:1']
    """

    def __init__(
        self,
        store: MemoryStore[V],
        *,
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
        batch_size: int = 100,
    ) -> None:
        if not isinstance(store, MemoryStore):
            raise TypeError(f"store must be a memkv MemoryStore, not {type(store).__name__}")
        ttl_seconds(ttl)
        self._store = store
        self._ttl = ttl
        self._metadata = check_metadata(metadata)
        self._batch_size = check_batch_size(batch_size)
        # LocalMemoryStore's own operations keep no loop state and never wait on a
        # future: sync calls run them to the end in the calling thread, async calls on
        # the caller's loop. Anything else (a subclass with operations of its own
        # included) may hold loop-bound resources, so it only ever runs on the worker.
        self._inline = isinstance(store, LocalMemoryStore) and all(
            getattr(type(store), name) is getattr(LocalMemoryStore, name)
            for name in ("get_many", "set_many", "delete_many", "scan", "close")
        )
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._closed = False

    # -- sync ----------------------------------------------------------------------------

    def mget(self, keys: Sequence[str]) -> list[V | None]:
        """The values of ``keys``, aligned with them (``None`` where missing or expired)."""
        checked = check_keys(keys)
        return self._values(checked, self._call(self._store.get_many(checked)))

    def mset(self, key_value_pairs: Sequence[tuple[str, V]]) -> None:
        """Write every ``(key, value)`` pair with the adapter's ``ttl`` and metadata."""
        pairs = self._checked_pairs(key_value_pairs)
        self._call(self._store.set_many(pairs, self._ttl, self._metadata))

    def mdelete(self, keys: Sequence[str]) -> None:
        """Remove ``keys``; missing keys are ignored."""
        self._call(self._store.delete_many(check_keys(keys)))

    def yield_keys(self, *, prefix: str | None = None) -> Generator[str, None, None]:
        """The keys that start with the literal ``prefix`` (every key when ``None``).

        Streams ``batch_size`` keys per round trip to the worker; keys written or
        removed meanwhile may or may not appear (as with ``MemoryStore.scan``).
        """
        check_prefix(prefix)
        self._check_open()
        return self._sync_keys(prefix)

    def _sync_keys(self, prefix: str | None) -> Generator[str, None, None]:
        scan = self._call(_open_scan(self._store, prefix, self._batch_size))
        done = False
        try:
            while not done:
                batch, done = self._call(_next_batch(scan, self._batch_size))
                yield from batch
        finally:
            if not done:
                self._discard(scan)

    # -- async ---------------------------------------------------------------------------

    async def amget(self, keys: Sequence[str]) -> list[V | None]:
        """Async ``mget``."""
        checked = check_keys(keys)
        return self._values(checked, await self._await(self._store.get_many(checked)))

    async def amset(self, key_value_pairs: Sequence[tuple[str, V]]) -> None:
        """Async ``mset``."""
        pairs = self._checked_pairs(key_value_pairs)
        await self._await(self._store.set_many(pairs, self._ttl, self._metadata))

    async def amdelete(self, keys: Sequence[str]) -> None:
        """Async ``mdelete``."""
        await self._await(self._store.delete_many(check_keys(keys)))

    def ayield_keys(self, *, prefix: str | None = None) -> AsyncGenerator[str, None]:
        """Async ``yield_keys``: an async generator, ``prefix`` checked when called."""
        check_prefix(prefix)
        self._check_open()
        if self._inline:
            return self._keys_here(prefix)
        return self._keys_on_worker(prefix)

    async def _keys_here(self, prefix: str | None) -> AsyncGenerator[str, None]:
        scan = self._store.scan(prefix, self._batch_size)
        try:
            async for key in scan:
                self._check_open()  # as on the worker: closing ends a running scan
                yield key
        finally:
            await _aclose(scan)

    async def _keys_on_worker(self, prefix: str | None) -> AsyncGenerator[str, None]:
        scan = await self._await(_open_scan(self._store, prefix, self._batch_size))
        done = False
        try:
            while not done:
                batch, done = await self._await(_next_batch(scan, self._batch_size))
                for key in batch:
                    yield key
        finally:
            if not done:
                self._discard(scan)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the store where it runs, stop the worker and wait for its thread.

        Safe to call twice. Calls still running in other threads are cancelled.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._inline:
                _drive(self._store.close())
                return
            # The store's close() is a coroutine too: run it on a worker (a short-lived
            # one when no call needed one), never on a loop this thread may be running.
            worker = self._take_worker() or _Worker()
        try:
            worker.run(self._store.close())
        finally:
            worker.stop()

    async def aclose(self) -> None:
        """Async ``close``: awaits the store's ``close()`` where the store runs.

        Safe to call twice. Waiting for the worker thread to exit blocks the loop
        briefly (the thread only has to wind its loop down).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._take_worker()
        try:
            if worker is None:  # never started (always so for a store run in the caller)
                await self._store.close()
            else:
                await asyncio.wrap_future(worker.submit(self._store.close()))
        finally:
            if worker is not None:
                worker.stop()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._store!r}, ttl={self._ttl!r})"

    # -- values: MemkvByteStore checks them ----------------------------------------------

    def _checked_pairs(self, key_value_pairs: Sequence[tuple[str, V]]) -> list[tuple[str, V]]:
        return check_items(key_value_pairs)

    def _values(self, keys: list[str], entries: list[MemoryEntry[V] | None]) -> list[V | None]:
        return [None if entry is None else entry.value for entry in entries]

    # -- running coroutines on the store's loop ------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _closed_error(self) -> StoreClosedError:
        return StoreClosedError(f"{self!r} is closed")

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
                worker = self._worker = _Worker()
                self._finalizer = weakref.finalize(self, worker.abandon, self._store)
            return worker.submit(coro)

    def _call(self, coro: Coroutine[Any, Any, R]) -> R:
        """Run ``coro`` here (a LocalMemoryStore) or on the worker, until it is done."""
        if self._inline:
            if self._closed:
                coro.close()
                raise self._closed_error()
            return _drive(coro)
        worker = self._worker
        if worker is not None and worker.is_current_thread():
            coro.close()
            raise ReentrantCallError(_DEADLOCK)
        return _Worker.wait(self._submit(coro))

    async def _await(self, coro: Coroutine[Any, Any, R]) -> R:
        """Await ``coro`` here (a loop-free store) or on the worker."""
        if not self._inline:
            return await asyncio.wrap_future(self._submit(coro))
        if self._closed:
            coro.close()
            raise self._closed_error()
        return await coro

    def _discard(self, scan: AsyncIterator[str]) -> None:
        """Close an unfinished scan on the worker, without waiting.

        Runs when a key generator is closed early, possibly from a finalizer in any
        thread, so it takes no lock and never blocks. With no worker left, stopping it
        has already closed the scan.
        """
        if self._inline:
            _drive(_aclose(scan))
            return
        worker = self._worker
        if worker is not None and worker.pid == os.getpid():
            worker.submit_nowait(_aclose(scan))


class MemkvByteStore(MemkvStore[bytes]):
    """A LangChain ``ByteStore`` (``BaseStore[str, bytes]``) over any memkv store.

    As ``MemkvStore``, and values must be ``bytes``: ``mset`` with any other value
    (``str``, ``bytearray``, ...) raises ``CodecError`` (a ``TypeError``) and writes
    nothing of the batch; reading a value that is not ``bytes`` (written through
    another adapter or directly) raises ``CodecError`` too. On Redis, keep the default
    ``msgpack`` codec (or ``pickle``): the ``json`` codec cannot store ``bytes``.

    >>> from memkv import LocalMemoryStore
    >>> with MemkvByteStore(LocalMemoryStore()) as cache:
    ...     cache.mset([("emb:1", b"\\x00\\x01")])
    ...     cache.mget(["emb:1"])
    [b'\\x00\\x01']
    """

    def _checked_pairs(
        self, key_value_pairs: Sequence[tuple[str, bytes]]
    ) -> list[tuple[str, bytes]]:
        pairs = check_items(key_value_pairs)
        for key, value in pairs:
            if not isinstance(value, bytes):
                raise CodecError(
                    f"{type(self).__name__} stores bytes; the value for key {key!r} is "
                    f"{type(value).__name__} (encode it first, e.g. with bytes(...) or "
                    "str.encode()); nothing was written"
                )
        return pairs

    def _values(
        self, keys: list[str], entries: list[MemoryEntry[bytes] | None]
    ) -> list[bytes | None]:
        values = super()._values(keys, entries)
        for key, value in zip(keys, values, strict=True):
            if value is not None and not isinstance(value, bytes):
                raise CodecError(
                    f"{type(self).__name__} read a {type(value).__name__} at key {key!r}, "
                    "not bytes: the store holds values written by something else"
                )
        return values


class _Worker:
    """An event loop in a daemon thread: where an adapter runs its store."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self._run, name=f"{_WORKER_THREAD_PREFIX}{next(_worker_numbers)}", daemon=True
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
        """Close ``store`` and stop, without waiting: its adapter was garbage-collected.

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


def _drive(coro: Coroutine[Any, Any, R]) -> R:
    """Run a coroutine that never waits on a future to its end, in this thread.

    A LocalMemoryStore's operations only ever yield bare (``asyncio.sleep(0)`` between
    scan batches), which needs no event loop: the coroutine is simply resumed.
    """
    try:
        while True:
            if coro.send(None) is not None:
                coro.close()
                raise RuntimeError("a LocalMemoryStore operation waited on a future")
    except StopIteration as done:
        result: R = done.value
        return result


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
