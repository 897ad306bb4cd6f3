"""LangChain over any memkv store: the key-value stores ``MemkvStore`` and
``MemkvByteStore``, and the LLM cache ``MemkvLLMCache``.

Needs the ``langchain`` extra: ``pip install "memkv[langchain]"``.

>>> from memkv import LocalMemoryStore
>>> from memkv.integrations.langchain import MemkvStore
>>> with MemkvStore(LocalMemoryStore(), ttl=3600) as docstore:
...     docstore.mset([("doc:1", {"text": "hello"})])
...     docstore.mget(["doc:1", "doc:2"])
[{'text': 'hello'}, None]
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from typing import Any, TypeVar

try:
    from langchain_core._api import suppress_langchain_beta_warning
    from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
    from langchain_core.load import dumps, loads
    from langchain_core.outputs import Generation
    from langchain_core.stores import BaseStore
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'memkv.integrations.langchain needs langchain-core: pip install "memkv[langchain]"'
    ) from err

from memkv.entry import MemoryEntry
from memkv.errors import CodecError, InvalidArgumentTypeError, InvalidKeyError
from memkv.integrations._sync_bridge import BridgedAdapter, SyncBridge
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

__all__ = ["MemkvByteStore", "MemkvLLMCache", "MemkvStore"]

V = TypeVar("V")

# Worker threads are named memkv-langchain-<n> (for thread dumps and the tests).
_WORKER_THREAD_PREFIX = "memkv-langchain-"


class MemkvStore(BridgedAdapter, BaseStore[str, V]):
    """A LangChain ``BaseStore[str, V]`` over any memkv ``MemoryStore``, sync and async.

    ``mget``/``amget`` return the values (``None`` where a key is missing or expired),
    ``mset``/``amset`` write a batch with the same ``ttl`` (seconds, int or float, or a
    ``timedelta``; ``None``: no expiry) and ``metadata`` on every entry (validated
    here, at construction: a bad ``ttl`` raises ``InvalidTTLError``,
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


class MemkvLLMCache(BridgedAdapter, BaseCache):
    """A LangChain LLM cache (``langchain_core.caches.BaseCache``) over any memkv store.

    Caches what a chat model or LLM returned for a prompt and model configuration, so
    that the same call is answered without the model: pass it to ``set_llm_cache``
    (every model) or as a model's ``cache=``. ``lookup``/``alookup`` return the cached
    generations or ``None``, ``update``/``aupdate`` store them with the cache's ``ttl``
    (seconds, int or float, or a ``timedelta``; ``None``: until cleared or evicted; a
    bad ``ttl`` raises ``InvalidTTLError``),
    ``clear``/``aclear`` remove every entry this cache wrote and nothing else in the
    store. Each call is one operation on the store (``get``, ``set``, ``clear``).

    **Keys.** Every entry lives at ``"langchain-llm-cache:"`` followed by the SHA-256
    (hex) of the prompt's length, ``":"``, the prompt and the model string, so that no
    two ``(prompt, llm_string)`` pairs share a key and neither text appears in the
    store. A store may hold other data besides the cache.

    **Values** are the generations serialised by ``langchain_core.load.dumps`` (a JSON
    ``str``, kept as is by every codec) and revived by ``loads`` with
    ``allowed_objects="core"``: ``Generation``, ``ChatGeneration`` and LangChain's
    message classes round-trip through Redis too; an entry that does not revive (data
    written by something else under the cache's prefix) raises ``CodecError``,
    without its text. A ``prompt`` or ``llm_string``
    that is not a ``str`` raises ``InvalidKeyError``; ``return_val`` that is not a
    sequence of ``Generation`` raises ``InvalidArgumentTypeError``, and generations
    that would not revive (a field ``dumps`` cannot serialise, a class outside the
    list) raise ``CodecError``: both store nothing. ``update`` checks this by reviving
    what it is about to store (about as costly as a ``lookup``), so the cache never
    holds an entry it cannot read.

    The store runs as in ``MemkvStore`` (in the caller for a ``LocalMemoryStore``, on
    the adapter's worker loop otherwise; sync and async calls mix freely), and the
    cache closes like it: ``close()``/``with``, ``await aclose()``/``async with``.

    >>> from langchain_core.globals import get_llm_cache, set_llm_cache
    >>> from langchain_core.language_models import FakeListChatModel
    >>> from memkv import LocalMemoryStore
    >>> previous = get_llm_cache()
    >>> model = FakeListChatModel(responses=["Paris", "Lyon"])
    >>> with MemkvLLMCache(LocalMemoryStore(), ttl=3600) as cache:
    ...     set_llm_cache(cache)
    ...     first = model.invoke("What is the capital of France?").content
    ...     again = model.invoke("What is the capital of France?").content
    >>> set_llm_cache(previous)
    >>> first, again  # the second call never reached the model
    ('Paris', 'Paris')
    """

    #: The key prefix of every entry (``clear`` removes exactly these).
    KEY_PREFIX = "langchain-llm-cache:"

    def __init__(self, store: MemoryStore[Any], ttl: TTL = None) -> None:
        check_store(store)
        ttl_seconds(ttl)
        self._store = store
        self._ttl = ttl
        self._bridge = SyncBridge(store, label=repr(self), thread_prefix=_WORKER_THREAD_PREFIX)

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The generations cached for ``prompt`` and ``llm_string``, or ``None``."""
        key = self._key(prompt, llm_string)
        return self._generations(self._bridge.call(self._store.get(key)))

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Cache ``return_val`` (a sequence of ``Generation``) for the cache's ``ttl``
        (seconds)."""
        key = self._key(prompt, llm_string)
        text = self._dumps(return_val)
        self._bridge.call(self._store.set(key, text, self._ttl))

    def clear(self, **kwargs: Any) -> None:
        """Remove every entry of this cache (and nothing else); takes no options."""
        self._check_no_options(kwargs)
        self._bridge.call(self._store.clear(self.KEY_PREFIX))

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Async ``lookup``."""
        key = self._key(prompt, llm_string)
        return self._generations(await self._bridge.run(self._store.get(key)))

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Async ``update``."""
        key = self._key(prompt, llm_string)
        text = self._dumps(return_val)
        await self._bridge.run(self._store.set(key, text, self._ttl))

    async def aclear(self, **kwargs: Any) -> None:
        """Async ``clear``."""
        self._check_no_options(kwargs)
        await self._bridge.run(self._store.clear(self.KEY_PREFIX))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._store!r}, ttl={self._ttl!r})"

    # -- keys and values -----------------------------------------------------------------

    def _key(self, prompt: object, llm_string: object) -> str:
        prompt = _text("prompt", prompt)
        llm_string = _text("llm_string", llm_string)
        self._bridge.check_open()
        # The length prefix makes the pair -> text step injective; "surrogatepass" keeps
        # lone surrogates (valid in a str) distinct instead of failing.
        joined = f"{len(prompt)}:{prompt}{llm_string}".encode("utf-8", "surrogatepass")
        return self.KEY_PREFIX + hashlib.sha256(joined).hexdigest()

    def _dumps(self, return_val: object) -> str:
        if isinstance(return_val, (str, bytes, Mapping)) or not isinstance(return_val, Sequence):
            raise InvalidArgumentTypeError(
                f"return_val must be a sequence of Generation, not {type(return_val).__name__}"
            )
        generations = list(return_val)
        for generation in generations:
            if not isinstance(generation, Generation):
                raise InvalidArgumentTypeError(
                    "return_val must be a sequence of Generation; it holds a "
                    f"{type(generation).__name__}"
                )
        try:
            text = dumps(generations)
        except Exception as err:
            failure = type(err).__name__
        else:
            # dumps() writes a placeholder for a field it cannot serialise, which loads()
            # refuses: check now, so that the cache never holds an entry it cannot read.
            revived, failure = _revive(text)
            if revived is not None:
                return text
        # Raised outside the except block: the serialiser's message may quote the value.
        raise CodecError(
            f"{type(self).__name__} cannot store these generations so that they revive "
            f"({failure}): a field is not serialisable, or a class is outside "
            'allowed_objects="core"; nothing was written'
        )

    def _generations(self, entry: MemoryEntry[Any] | None) -> RETURN_VAL_TYPE | None:
        if entry is None:
            return None
        revived, failure = _revive(entry.value)
        if revived is not None:
            return revived
        raise CodecError(
            f"{type(self).__name__} cannot revive the entry at {entry.key!r} ({failure}): "
            "it was written by something else; clear() removes it"
        )

    def _check_no_options(self, options: Mapping[str, Any]) -> None:
        if options:
            raise InvalidArgumentTypeError(
                f"{type(self).__name__}.clear() takes no options, got {sorted(options)}"
            )


def _text(name: str, text: object) -> str:
    if not isinstance(text, str):
        raise InvalidKeyError(f"{name} must be str, not {type(text).__name__}")
    return text


def _revive(text: object) -> tuple[list[Generation] | None, str]:
    """The generations serialised in ``text``, or ``None`` and why not (never its text)."""
    if not isinstance(text, str):
        return None, "not a serialised list of generations"
    try:
        with suppress_langchain_beta_warning():
            revived = loads(text, allowed_objects="core")
    except Exception as err:
        return None, type(err).__name__
    if isinstance(revived, list) and all(isinstance(item, Generation) for item in revived):
        return revived, ""
    return None, "not a serialised list of generations"
