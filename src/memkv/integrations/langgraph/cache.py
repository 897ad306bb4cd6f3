"""A LangGraph node cache (``langgraph.cache.base.BaseCache``) over any memkv store.

Needs the ``langgraph`` extra: ``pip install "memkv[langgraph]"``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

try:
    from langgraph.cache.base import BaseCache, FullKey, Namespace, ValueT
    from langgraph.checkpoint.serde.base import SerializerProtocol
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'memkv.integrations.langgraph needs langgraph: pip install "memkv[langgraph]"'
    ) from err

from memkv.entry import MemoryEntry
from memkv.errors import CodecError, InvalidArgumentTypeError, InvalidKeyError
from memkv.integrations._sync_bridge import BridgedAdapter, SyncBridge
from memkv.store import MemoryStore
from memkv.validation import check_key, check_store, ttl_seconds

__all__ = ["MemkvCache"]

# Worker threads are named memkv-langgraph-<n> (for thread dumps and the tests).
_WORKER_THREAD_PREFIX = "memkv-langgraph-"

#: Entries to write with one TTL (seconds, or ``None``), as (store key, stored bytes).
_Batches = dict[float | None, list[tuple[str, bytes]]]

#: The store keys whose TTL is 0 or less (expired at once), and the batches to write.
_Writes = tuple[list[str], _Batches]


class MemkvCache(BridgedAdapter, BaseCache[ValueT]):
    """A LangGraph ``BaseCache`` over any memkv ``MemoryStore``, sync and async.

    Give it to ``StateGraph.compile(cache=...)`` (or ``@entrypoint(cache=...)``): nodes
    with a ``CachePolicy`` then store their writes here, and a later run with the
    same input reuses them instead of running the node. ``get``/``aget`` take
    ``(namespace, key)`` pairs (a namespace is a tuple of ``str`` labels) and return
    a dict of the pairs found; ``set``/``aset`` take ``{(namespace, key): (value,
    ttl)}`` with a TTL in seconds per entry: ``None`` never expires, and 0 or less
    (``CachePolicy(ttl=0)``) is expired at once, so the entry is removed rather than
    written, as in LangGraph's ``InMemoryCache``. ``clear``/``aclear`` remove the
    entries of exactly the namespaces given (not their sub-namespaces), or with
    ``None`` every entry of this cache, and nothing else in the store
    (``graph.clear_cache(nodes)`` calls it with the nodes' namespaces). Each call
    costs one batch operation on the store (``get_many``; ``set_many`` per distinct
    TTL, plus one ``delete_many`` for the TTLs of 0 or less), or one prefix
    ``clear`` per namespace (on Redis a ``SCAN`` of the store's namespace each).
    Expiry is the store's own: local entries expire on the store's clock, Redis
    entries on the server.

    **Keys.** Every entry lives under ``"langgraph-cache:"``, then the number of
    labels and each label prefixed by its length, then the key: ``("a:b", "c")``,
    ``"k"`` becomes ``"langgraph-cache:2:3:a:b:1:c:k"``. No two ``(namespace, key)``
    pairs share a key, whatever the labels hold, and a namespace's entries are
    exactly the keys that start with its prefix, so a store may hold other data (a
    LangChain or LangGraph store) besides the cache.

    **Values** go through the cache's ``serde`` (LangGraph's ``JsonPlusSerializer``
    by default, or the ``serde=`` given) and are stored as bytes, type name first,
    so whatever LangGraph caches round-trips through Redis too (msgpack and pickle
    codecs keep the bytes; the json codec's base64 text is read back as well). A
    value the serde cannot serialise raises ``CodecError`` and writes nothing of
    the batch; an entry that does not deserialise (written by something else, or
    by a serde that no longer reads it) raises ``CodecError``, without its content:
    ``clear()`` removes it.

    Bad input raises before anything is written: a namespace that is not a tuple
    (or list) of ``str``, or a key that is not a ``str``, raises ``InvalidKeyError``;
    a TTL that is not a number, ``timedelta`` or ``None`` (or is NaN, infinite or
    over 100 years) ``InvalidTTLError``; ``pairs`` that is not a mapping of ``(value,
    ttl)`` tuples ``InvalidArgumentTypeError``.

    The store runs as in ``memkv.integrations.langchain.MemkvStore``: a
    ``LocalMemoryStore`` in the caller, any other store on a worker loop the cache
    owns (so a graph may call it from its background threads, sync or async).
    ``close()``/``with`` and ``await aclose()``/``async with`` close the store and
    stop the worker; a closed cache raises ``StoreClosedError``.

    >>> from typing import TypedDict
    >>> from langgraph.graph import START, StateGraph
    >>> from langgraph.types import CachePolicy
    >>> from memkv import LocalMemoryStore
    >>> class State(TypedDict):
    ...     x: int
    ...     y: int
    >>> calls = []
    >>> def double(state: State) -> dict[str, int]:
    ...     calls.append(state["x"])
    ...     return {"y": 2 * state["x"]}
    >>> builder = StateGraph(State)
    >>> builder = builder.add_node("double", double, cache_policy=CachePolicy(ttl=60))
    >>> builder = builder.add_edge(START, "double")
    >>> with MemkvCache(LocalMemoryStore()) as cache:
    ...     graph = builder.compile(cache=cache)
    ...     graph.invoke({"x": 21}), graph.invoke({"x": 21})
    ({'x': 21, 'y': 42}, {'x': 21, 'y': 42})
    >>> calls  # the second run was served from the cache
    [21]
    """

    #: The key prefix of every entry (``clear()`` removes exactly these).
    KEY_PREFIX = "langgraph-cache:"

    def __init__(
        self, store: MemoryStore[Any], *, serde: SerializerProtocol | None = None
    ) -> None:
        check_store(store)
        if serde is not None and (
            isinstance(serde, type)
            or not all(
                callable(getattr(serde, method, None)) for method in ("dumps_typed", "loads_typed")
            )
        ):
            raise InvalidArgumentTypeError(
                "serde must be an object with dumps_typed and loads_typed (a LangGraph "
                f"SerializerProtocol) or None, not {_type_name(serde)}"
            )
        super().__init__(serde=serde)
        self._store = store
        self._bridge = SyncBridge(store, label=repr(self), thread_prefix=_WORKER_THREAD_PREFIX)

    # -- sync ----------------------------------------------------------------------------

    def get(self, keys: Sequence[FullKey]) -> dict[FullKey, ValueT]:
        """The cached values of the ``(namespace, key)`` pairs found (live) in the store."""
        full_keys, store_keys = self._encode_keys(keys)
        return self._found(full_keys, self._bridge.call(self._store.get_many(store_keys)))

    def set(self, pairs: Mapping[FullKey, tuple[ValueT, int | None]]) -> None:
        """Store each ``(namespace, key): (value, ttl)``; ``ttl`` in seconds or ``None``."""
        self._bridge.call(self._write(self._writes(pairs)))

    def clear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        """Remove the entries of ``namespaces`` (each exactly), or with ``None`` all of
        this cache's entries."""
        self._bridge.call(self._clear(self._prefixes(namespaces)))

    # -- async ---------------------------------------------------------------------------

    async def aget(self, keys: Sequence[FullKey]) -> dict[FullKey, ValueT]:
        """Async ``get``."""
        full_keys, store_keys = self._encode_keys(keys)
        return self._found(full_keys, await self._bridge.run(self._store.get_many(store_keys)))

    async def aset(self, pairs: Mapping[FullKey, tuple[ValueT, int | None]]) -> None:
        """Async ``set``."""
        await self._bridge.run(self._write(self._writes(pairs)))

    async def aclear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        """Async ``clear``."""
        await self._bridge.run(self._clear(self._prefixes(namespaces)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._store!r})"

    # -- keys ----------------------------------------------------------------------------

    def _prefix(self, namespace: object) -> tuple[Namespace, str]:
        """The namespace as a tuple of ``str``, and the key prefix of its entries."""
        if not isinstance(namespace, (tuple, list)):
            raise InvalidKeyError(
                f"a namespace must be a tuple of str labels, not {type(namespace).__name__}"
            )
        labels = tuple(_label(label) for label in namespace)
        # Length-prefixed labels: no label text can end a label early or forge another
        # namespace, and no namespace's prefix is a prefix of another namespace's keys.
        encoded = "".join(f":{len(label)}:{label}" for label in labels)
        return labels, f"{self.KEY_PREFIX}{len(labels)}{encoded}:"

    def _full_key(self, pair: object) -> tuple[FullKey, str]:
        """A checked ``(namespace, key)`` pair, and its store key."""
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InvalidKeyError(
                f"cache keys must be (namespace, key) pairs, not {type(pair).__name__}"
            )
        labels, prefix = self._prefix(pair[0])
        key = check_key(pair[1])
        return (labels, key), prefix + key

    def _encode_keys(self, keys: object) -> tuple[list[FullKey], list[str]]:
        pairs = [self._full_key(pair) for pair in _iterable(keys, "keys")]
        self._bridge.check_open()
        return [full_key for full_key, _ in pairs], [store_key for _, store_key in pairs]

    def _prefixes(self, namespaces: object) -> list[str]:
        if namespaces is None:
            prefixes = [self.KEY_PREFIX]
        else:
            prefixes = [
                self._prefix(namespace)[1] for namespace in _iterable(namespaces, "namespaces")
            ]
        self._bridge.check_open()
        return prefixes

    # -- values --------------------------------------------------------------------------

    def _writes(self, pairs: object) -> _Writes:
        """The keys to remove and the entries to write, grouped by TTL; everything is
        checked and serialised before anything is written."""
        if not isinstance(pairs, Mapping):
            raise InvalidArgumentTypeError(
                "pairs must be a mapping of (namespace, key) to (value, ttl), "
                f"not {type(pairs).__name__}"
            )
        expired: list[str] = []
        batches: _Batches = {}
        for pair, value_and_ttl in pairs.items():
            full_key, store_key = self._full_key(pair)
            if not isinstance(value_and_ttl, tuple) or len(value_and_ttl) != 2:
                raise InvalidArgumentTypeError(
                    f"the value of {full_key!r} must be a (value, ttl) tuple, "
                    f"not {type(value_and_ttl).__name__}"
                )
            value, ttl = value_and_ttl
            # Serialised whatever the TTL: a value the serde refuses raises either way.
            stored = self._dumps(full_key, value)
            if _expired_at_once(ttl):
                expired.append(store_key)
            else:
                batches.setdefault(ttl_seconds(ttl), []).append((store_key, stored))
        self._bridge.check_open()
        return expired, batches

    async def _write(self, writes: _Writes) -> None:
        expired, batches = writes
        if expired:
            await self._store.delete_many(expired)
        for seconds, items in batches.items():
            await self._store.set_many(items, seconds)

    async def _clear(self, prefixes: list[str]) -> None:
        for prefix in prefixes:
            await self._store.clear(prefix)

    def _dumps(self, full_key: FullKey, value: object) -> bytes:
        failure = "a type name that is not a str without ':'"
        try:
            type_name, data = self.serde.dumps_typed(value)
            if isinstance(type_name, str) and ":" not in type_name:
                return type_name.encode() + b":" + bytes(data)
        except Exception as err:
            failure = type(err).__name__
        # Raised outside the except block: a serialiser's message may quote the value.
        raise CodecError(
            f"{type(self).__name__} cannot serialise the value for {full_key!r} "
            f"with {type(self.serde).__name__} ({failure}); nothing was written"
        )

    def _found(
        self, full_keys: list[FullKey], entries: list[MemoryEntry[Any] | None]
    ) -> dict[FullKey, ValueT]:
        return {
            full_key: self._loads(full_key, entry.value)
            for full_key, entry in zip(full_keys, entries, strict=True)
            if entry is not None
        }

    def _loads(self, full_key: FullKey, stored: object) -> ValueT:
        failure = "not bytes written by MemkvCache"
        if isinstance(stored, str):  # the json codec gives bytes back as base64 text
            try:
                stored = base64.b64decode(stored, validate=True)
            except (binascii.Error, ValueError):
                stored = None
        if isinstance(stored, bytes) and b":" in stored:
            type_name, _, data = stored.partition(b":")
            try:
                value: ValueT = self.serde.loads_typed((type_name.decode(), data))
            except Exception as err:
                failure = type(err).__name__
            else:
                return value
        raise CodecError(
            f"{type(self).__name__} cannot read the entry for {full_key!r} "
            f"with {type(self.serde).__name__} ({failure}): it was written by something "
            "else or by another serde; clear() removes it"
        )


def _expired_at_once(ttl: object) -> bool:
    """Whether ``ttl`` is 0 or less: LangGraph's ``InMemoryCache`` stores such an entry
    already expired, and a ``CachePolicy(ttl=0)`` graph must run, not raise."""
    if isinstance(ttl, timedelta):
        return ttl <= timedelta(0)
    return isinstance(ttl, (int, float)) and not isinstance(ttl, bool) and ttl <= 0


def _label(label: object) -> str:
    if isinstance(label, str):
        return str.__str__(label)
    raise InvalidKeyError(f"namespace labels must be str, not {type(label).__name__}")


def _iterable(items: object, name: str) -> Iterable[Any]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InvalidKeyError(f"{name} must be a sequence, not {type(items).__name__}")
    return items


def _type_name(value: object) -> str:
    return f"the class {value.__name__}" if isinstance(value, type) else type(value).__name__
