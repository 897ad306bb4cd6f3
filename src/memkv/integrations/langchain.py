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

from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

try:
    from langchain_core.stores import BaseStore
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'memkv.integrations.langchain needs langchain-core: pip install "memkv[langchain]"'
    ) from err

from memkv.entry import MemoryEntry
from memkv.errors import CodecError
from memkv.integrations._sync_bridge import SyncBridge
from memkv.store import TTL, MemoryStore
from memkv.validation import (
    check_batch_size,
    check_items,
    check_keys,
    check_metadata,
    check_prefix,
    check_store,
    ttl_seconds,
)

__all__ = ["MemkvByteStore", "MemkvStore"]

V = TypeVar("V")
_Self = TypeVar("_Self", bound="MemkvStore[Any]")

# Worker threads are named memkv-langchain-<n> (for thread dumps and the tests).
_WORKER_THREAD_PREFIX = "memkv-langchain-"


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

    **Where the store runs** (``memkv.integrations._sync_bridge``). memkv stores are
    async. A store whose class declares ``runs_inline = True`` (``LocalMemoryStore``:
    no event-loop state, its operations never wait) runs right in the caller: sync
    methods drive its coroutines to the end in the calling thread (about 2 µs for a
    small ``mget``), async methods await it on the caller's loop. Any other store
    (``RedisMemoryStore``, a third-party store, a ``LocalMemoryStore`` subclass that
    declares ``runs_inline = False`` because its operations wait) runs on an event
    loop that the adapter owns, in a daemon thread (its *worker*, started on first
    need):

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

    >>> import asyncio
    >>> from datetime import timedelta
    >>> from memkv import RedisMemoryStore
    >>> docstore = MemkvStore(
    ...     RedisMemoryStore("redis://localhost:6379/0", namespace="docs"),
    ...     ttl=timedelta(days=1),
    ...     metadata={"source": "langchain"},
    ... )
    >>> async def main() -> list[str]:
    ...     async with docstore:
    ...         await docstore.amset([("doc:1", {"text": "hello"})])
    ...         keys = [key async for key in docstore.ayield_keys(prefix="doc:")]
    ...         await docstore.amdelete(keys)
    ...         return keys
    >>> asyncio.run(main())
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
        check_store(store)
        ttl_seconds(ttl)
        self._store = store
        self._ttl = ttl
        self._metadata = check_metadata(metadata)
        self._batch_size = check_batch_size(batch_size)
        self._bridge = SyncBridge(store, label=repr(self), thread_prefix=_WORKER_THREAD_PREFIX)

    # -- sync ----------------------------------------------------------------------------

    def mget(self, keys: Sequence[str]) -> list[V | None]:
        """The values of ``keys``, aligned with them (``None`` where missing or expired)."""
        checked = check_keys(keys)
        return self._values(checked, self._bridge.call(self._store.get_many(checked)))

    def mset(self, key_value_pairs: Sequence[tuple[str, V]]) -> None:
        """Write every ``(key, value)`` pair with the adapter's ``ttl`` and metadata."""
        pairs = self._checked_pairs(key_value_pairs)
        self._bridge.call(self._store.set_many(pairs, self._ttl, self._metadata))

    def mdelete(self, keys: Sequence[str]) -> None:
        """Remove ``keys``; missing keys are ignored."""
        self._bridge.call(self._store.delete_many(check_keys(keys)))

    def yield_keys(self, *, prefix: str | None = None) -> Generator[str, None, None]:
        """The keys that start with the literal ``prefix`` (every key when ``None``).

        Streams ``batch_size`` keys per round trip to the worker; keys written or
        removed meanwhile may or may not appear (as with ``MemoryStore.scan``).
        """
        check_prefix(prefix)
        self._bridge.check_open()
        return self._bridge.keys(prefix, self._batch_size)

    # -- async ---------------------------------------------------------------------------

    async def amget(self, keys: Sequence[str]) -> list[V | None]:
        """Async ``mget``."""
        checked = check_keys(keys)
        return self._values(checked, await self._bridge.run(self._store.get_many(checked)))

    async def amset(self, key_value_pairs: Sequence[tuple[str, V]]) -> None:
        """Async ``mset``."""
        pairs = self._checked_pairs(key_value_pairs)
        await self._bridge.run(self._store.set_many(pairs, self._ttl, self._metadata))

    async def amdelete(self, keys: Sequence[str]) -> None:
        """Async ``mdelete``."""
        await self._bridge.run(self._store.delete_many(check_keys(keys)))

    def ayield_keys(self, *, prefix: str | None = None) -> AsyncGenerator[str, None]:
        """Async ``yield_keys``: an async generator, ``prefix`` checked when called."""
        check_prefix(prefix)
        self._bridge.check_open()
        return self._bridge.akeys(prefix, self._batch_size)

    # -- lifecycle -----------------------------------------------------------------------

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
