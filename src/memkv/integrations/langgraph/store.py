"""A LangGraph ``BaseStore`` (long-term agent memory) over any memkv store.

Needs the ``langgraph`` extra: ``pip install "memkv[langgraph]"``.

>>> from memkv import LocalMemoryStore
>>> from memkv.integrations.langgraph import MemkvStore
>>> with MemkvStore(LocalMemoryStore(), ttl={"default_ttl": 60}) as store:
...     store.put(("users", "u1", "memories"), "m1", {"food": "pizza", "stars": 5})
...     store.put(("users", "u1", "memories"), "m2", {"food": "sushi", "stars": 3})
...     [item.key for item in store.search(("users", "u1"), filter={"stars": {"$gte": 4}})]
['m1']
"""

from __future__ import annotations

import asyncio
import itertools
import math
import operator
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Literal, cast
from urllib.parse import unquote

try:
    from langchain_core.embeddings import Embeddings
    from langgraph.store.base import (
        NOT_PROVIDED,
        BaseStore,
        GetOp,
        IndexConfig,
        InvalidNamespaceError,
        Item,
        ListNamespacesOp,
        MatchCondition,
        NotProvided,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
        TTLConfig,
        ensure_embeddings,
        get_text_at_path,
        tokenize_path,
        validate_op_namespace,
    )
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'memkv.integrations.langgraph needs langgraph: pip install "memkv[langgraph]"'
    ) from err

from memkv.entry import MemoryEntry
from memkv.errors import (
    CodecError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidKeyError,
    InvalidTTLError,
)
from memkv.integrations._sync_bridge import BridgedAdapter, SyncBridge
from memkv.local import LocalMemoryStore
from memkv.store import MemoryStore
from memkv.validation import MAX_TTL_SECONDS, check_key, check_store, ttl_seconds

__all__ = ["KEY_PREFIX", "MemkvStore"]


#: Every key a ``MemkvStore`` writes starts with this, so it can share a memkv store.
KEY_PREFIX = "langgraph/"

# Worker threads are named memkv-langgraph-<n> (for thread dumps and the tests).
_WORKER_THREAD_PREFIX = "memkv-langgraph-"

_TTL_OPTIONS = frozenset(
    {"default_ttl", "refresh_on_read", "sweep_interval_minutes", "omit_expired"}
)
_RANGE_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
_OPERATORS = frozenset({"$eq", "$ne", *_RANGE_OPERATORS})
#: Keys per scan batch and per get_many of a search.
_BATCH = 1000


class MemkvStore(BridgedAdapter, BaseStore):
    """A LangGraph ``BaseStore`` over any memkv ``MemoryStore``, sync and async.

    ``store``: a ``LocalMemoryStore`` (either core), a ``RedisMemoryStore`` on one
    server or a cluster, with or without a near cache, or a third-party store. Every
    LangGraph operation works: ``get``/``put``/``delete``/``search``/
    ``list_namespaces`` and their ``a``-prefixed twins, and ``batch``/``abatch`` with
    ``GetOp``, ``PutOp``, ``SearchOp`` and ``ListNamespacesOp``. Within a batch the
    reads run first and the writes last, and a key written twice keeps the last
    write, as in LangGraph's ``InMemoryStore``.

    **Keys.** An item lives at one memkv key, under the fixed prefix ``KEY_PREFIX``
    (``"langgraph/"``): each namespace label followed by ``/``, one more ``/``, then
    the item's key, as is: ``("users", "u/1")``, ``"prefs"`` is
    ``langgraph/users/u%2F1//prefs``. In labels ``%`` is written ``%25`` and ``/``
    ``%2F``, so any label (``:``, ``*``, unicode, ...) maps to one key and back, and
    the keys of a namespace prefix ``("a",)`` are exactly those that start with
    ``langgraph/a/`` (never those of ``("ab",)``). Share the memkv store with other
    data freely, but not with a second ``MemkvStore``: they would see each other's
    items. On ``RedisMemoryStore`` the store's own namespace comes first
    (``memkv:langgraph/...``).

    **Stored document.** ``{"value": <the item's dict>, "order": <int>}``, plus
    ``"ttl"`` (minutes) when the item expires and ``"vectors"`` (``[[path,
    [float, ...]], ...]``) when it is indexed. It round-trips through every
    built-in codec (the item's value must too: on Redis, a value the codec cannot
    encode raises ``CodecError`` and nothing of the batch is written).
    ``created_at`` and ``updated_at`` are the memkv entry's own (timezone-aware
    UTC; overwriting keeps ``created_at``, which ``InMemoryStore`` resets). On a
    ``LocalMemoryStore``, values are held by reference, as ``InMemoryStore`` holds
    them, and reads return the same ``Item`` (``search``: its value and timestamps)
    until the entry is written again, by this class or through the memkv store's own
    API: the ``Item`` is kept beside the document (a ``dict`` subclass that every
    reader, codec and copy sees as the plain document above). Do not mutate an item
    or its ``value`` in place.

    **Order.** ``search`` returns namespaces in sorted order (as ``list_namespaces``
    sorts them) and, within a namespace, items in the order they were first
    written, as ``InMemoryStore`` (a dict) keeps them: an overwrite keeps an item's
    place, a delete then a put moves it to the end. ``order`` records that place, so
    a ``put`` reads the keys it writes first (one ``get_many`` more: on Redis one
    more round trip per batch that writes). ``offset``/``limit`` then slice that
    order. That read and the write are not one atomic step: when two writers (two
    ``MemkvStore`` over one Redis namespace, or concurrent batches) write and delete
    one key at the same time, the last write wins with either place. A new item's
    ``order`` is its writer's clock in microseconds (increasing within a process), so
    the items of several processes are placed by their clocks, equal ones by key.
    ``InMemoryStore`` orders namespaces by when a call first touched them (a ``get``
    of a missing item included) and lists namespaces that have lost all their items;
    here a namespace exists while it holds an item.

    **Cost.** ``get`` is one memkv ``get`` (``aget`` on the local store: about a
    microsecond, no coroutine of the store's). ``search`` scans the namespace
    prefix (``O(log n + m)`` on the local store, a ``SCAN`` of the store's keys on
    Redis), reads the ``m`` items found (``get_many``, 1,000 keys at a time) and
    sorts each namespace's items by ``order`` (``O(m log m)``); it then applies the
    filter (compiled once per search) in that order only until ``offset + limit``
    items match, and builds only the items it returns. With a ``query``, every item
    is filtered and ranked: one embedding call plus ``O(m x dims)`` for the cosine
    ranking (no vector index: fine for thousands of memories per prefix, not for
    millions). A read that refreshes TTLs adds one ``touch`` per item returned with a
    TTL (on a store that does not run inline, sent concurrently). ``list_namespaces``
    scans the keys under the literal part of its prefix condition (every key of the
    store's ``KEY_PREFIX`` without one).

    **Filters** compare like ``InMemoryStore``'s: ``{"field": value}`` is equality
    (a dict value matches nested fields, a list matches element by element),
    ``{"field": {"$eq"|"$ne"|"$gt"|"$gte"|"$lt"|"$lte": value}}`` applies each
    operator (ranges compare as ``float``). An item whose field cannot be read as a
    number does not match a range, where ``InMemoryStore`` raises; an unknown
    operator or a range bound that is not a number raises ``InvalidArgumentError``.

    **Semantic search.** ``index``: LangGraph's ``IndexConfig`` (``dims``,
    ``embed``: LangChain ``Embeddings``, a function, or a provider string;
    ``fields``, default ``["$"]``). A ``put`` embeds the configured fields (or the
    put's ``index`` list; ``index=False``: none) and stores the vectors beside the
    value; ``search(query=...)`` embeds the query and ranks the prefix's items (after
    the filter) by their best cosine similarity, setting ``SearchItem.score``;
    items without vectors come after the ranked ones, unscored, as in
    ``InMemoryStore``.

    **TTL** (``supports_ttl = True``). ``ttl``: LangGraph's ``TTLConfig``:
    ``default_ttl`` (minutes) for every ``put`` that does not pass its own
    ``ttl``; ``refresh_on_read`` (default ``True``): a ``get``/``search`` that
    returns an item with a TTL gives it its full TTL again, through the memkv
    store's ``touch``. Expiry is the memkv store's own (the local store's clock,
    the Redis server's): an expired item is simply gone, so ``sweep_interval_minutes``
    and ``omit_expired`` are accepted and mean nothing here (no sweeper runs).

    **Where the store runs** is as in ``memkv.integrations.langchain.MemkvStore``:
    a ``LocalMemoryStore`` runs in the caller; any other store on an event loop
    this adapter owns in a daemon thread, which sync and async calls from any
    thread or loop share. ``close()`` / ``await aclose()`` (or ``with`` /
    ``async with``) close the memkv store and stop that thread.

    **Errors.** A namespace LangGraph refuses (an empty label, a ``.`` or NUL in a
    label, a non-``str`` label; an empty namespace or a ``"langgraph"`` root for a
    ``put``) raises LangGraph's ``InvalidNamespaceError``, as ``InMemoryStore``
    does (and here also inside ``batch``). What memkv refuses raises memkv's typed
    errors before anything is read or written: a namespace that is not a tuple
    (``InvalidArgumentTypeError``), an op's key that is not a ``str``
    (``InvalidKeyError``; ``get``/``put``/``delete`` take ``str(key)``, as LangGraph's
    methods do), a bad TTL (``InvalidTTLError``), a
    negative ``limit``/``offset``, ``max_depth < 1``, a bad filter or option
    (``InvalidArgumentError``/``InvalidArgumentTypeError``), a value that is not a
    mapping (``InvalidArgumentTypeError``). Something else's data under ``KEY_PREFIX``
    raises ``CodecError`` when a read meets it (a value that is not a document like
    the above, a key that is not an item's).

    >>> import asyncio
    >>> from memkv import RedisMemoryStore
    >>> store = MemkvStore(RedisMemoryStore("redis://localhost:6379/0", namespace="agent"))
    >>> async def main() -> list[tuple[str, ...]]:
    ...     async with store:
    ...         await store.aput(("users", "u1"), "prefs", {"theme": "dark"}, ttl=30)
    ...         item = await store.aget(("users", "u1"), "prefs")
    ...         assert item is not None and item.value == {"theme": "dark"}
    ...         namespaces = await store.alist_namespaces(prefix=("users",))
    ...         await store.adelete(("users", "u1"), "prefs")
    ...         return namespaces
    >>> asyncio.run(main())
    [('users', 'u1')]
    """

    supports_ttl: bool = True

    #: The prefix of every key this store writes: the module's ``KEY_PREFIX``, named
    #: here too as ``MemkvCache.KEY_PREFIX`` and ``MemkvLLMCache.KEY_PREFIX`` name theirs.
    KEY_PREFIX: ClassVar[str] = KEY_PREFIX

    def __init__(
        self,
        store: MemoryStore[Any],
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
    ) -> None:
        check_store(store)
        self.ttl_config = _check_ttl_config(ttl)
        """The ``TTLConfig`` given, checked (``None`` without one), as LangGraph reads it."""
        self.index_config, self.embeddings, self._fields = _check_index_config(index)
        self._store = store
        self._bridge = SyncBridge(store, label=repr(self), thread_prefix=_WORKER_THREAD_PREFIX)
        self._get_now = store._get_now if self._bridge.inline else None
        # The local store holds documents by reference: an Item can be kept beside one.
        self._keeps_items = isinstance(store, LocalMemoryStore)
        self._refresh_default = True if ttl is None else bool(ttl.get("refresh_on_read", True))

    # -- batches ---------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` (reads first, then writes) and return their results, in order.

        Embedding calls (for ``put`` with an index, ``search`` with a query) run in
        this thread, before the store is touched.
        """
        plan = self._plan(ops)
        if plan.queries:
            embeddings = self._embeddings()
            plan.query_vectors = {
                query: list(map(float, embeddings.embed_query(query))) for query in plan.queries
            }
        if plan.texts:
            plan.set_text_vectors(self._embeddings().embed_documents(plan.texts))
        return self._bridge.call(self._execute(plan))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Async ``batch``: embeddings through the ``aembed_*`` methods."""
        plan = self._plan(ops)
        if plan.queries:
            embeddings = self._embeddings()
            vectors = await asyncio.gather(*map(embeddings.aembed_query, plan.queries))
            plan.query_vectors = {
                query: list(map(float, vector))
                for query, vector in zip(plan.queries, vectors, strict=True)
            }
        if plan.texts:
            plan.set_text_vectors(await self._embeddings().aembed_documents(plan.texts))
        return await self._bridge.run(self._execute(plan))

    # -- single operations: checked here, so that bad input gets a typed error ----------

    def get(
        self, namespace: tuple[str, ...], key: str, *, refresh_ttl: bool | None = None
    ) -> Item | None:
        """The item at ``namespace``/``key``, or ``None``; ``refresh_ttl`` as LangGraph's.

        On the local store, a present item costs one core lookup (see ``aget``).
        """
        # The checks inline (each call saved counts at a microsecond per get).
        if type(key) is not str:
            key = _key_text(key)
        refresh = self._refresh_default if refresh_ttl is None else self._refresh(refresh_ttl)
        if self._get_now is None or self._bridge.closed:
            # Not inline (or closed: batch raises StoreClosedError): the full path.
            return cast("Item | None", self.batch([GetOp(namespace, key, refresh)])[0])
        item, memkv_key, seconds = self._get_here(namespace, key, refresh)
        if seconds is not None:
            self._bridge.call(self._store.touch(memkv_key, seconds))
        return item

    async def aget(
        self, namespace: tuple[str, ...], key: str, *, refresh_ttl: bool | None = None
    ) -> Item | None:
        """Async ``get``. On the local store, a present item costs one core lookup, and
        reads of an item return the same ``Item`` until it is written again (as
        ``InMemoryStore`` returns its own)."""
        # The checks inline (each call saved counts at a microsecond per get).
        if type(key) is not str:
            key = _key_text(key)
        refresh = self._refresh_default if refresh_ttl is None else self._refresh(refresh_ttl)
        if self._get_now is None or self._bridge.closed:
            return cast("Item | None", (await self.abatch([GetOp(namespace, key, refresh)]))[0])
        item, memkv_key, seconds = self._get_here(namespace, key, refresh)
        if seconds is not None:
            await self._store.touch(memkv_key, seconds)
        return item

    def _get_here(
        self, namespace: tuple[str, ...], key: str, refresh: bool
    ) -> tuple[Item | None, str, float | None]:
        """A get on a store that runs inline: the item, its memkv key and the TTL
        (seconds) to give it again, if the read refreshes it."""
        assert self._get_now is not None
        try:
            encoded = _ENCODED[namespace] if type(namespace) is tuple else None
        except (KeyError, TypeError):  # not yet encoded, or an unhashable label
            encoded = None
        if encoded is None:
            encoded = _namespace_prefix(namespace)  # checks and caches it
        memkv_key = f"{KEY_PREFIX}{encoded}/{key}"  # one string built, not three
        entry = self._get_now(memkv_key)
        if entry is None:
            return None, memkv_key, None
        document = entry.value
        item = _kept_item(document, entry)
        if item is None:
            document = _document(entry)
            item = _keep_item(document, entry, namespace, key)
        seconds = document["ttl"] * 60.0 if refresh and "ttl" in document else None
        return item, memkv_key, seconds

    def search(
        self,
        namespace_prefix: tuple[str, ...],
        /,
        *,
        query: str | None = None,
        filter: dict[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
        refresh_ttl: bool | None = None,
    ) -> list[SearchItem]:
        """Items under ``namespace_prefix`` matching ``filter``, ranked by ``query``."""
        op = SearchOp(namespace_prefix, filter, limit, offset, query, self._refresh(refresh_ttl))
        if query and self.embeddings is not None:
            return cast("list[SearchItem]", self.batch([op])[0])
        return self._bridge.call(self._search_alone(op, _check_search(op)))

    async def asearch(
        self,
        namespace_prefix: tuple[str, ...],
        /,
        *,
        query: str | None = None,
        filter: dict[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
        refresh_ttl: bool | None = None,
    ) -> list[SearchItem]:
        """Async ``search``."""
        op = SearchOp(namespace_prefix, filter, limit, offset, query, self._refresh(refresh_ttl))
        if query and self.embeddings is not None:
            return cast("list[SearchItem]", (await self.abatch([op]))[0])
        return await self._bridge.run(self._search_alone(op, _check_search(op)))

    def put(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | NotProvided | None = NOT_PROVIDED,
    ) -> None:
        """Write ``value`` at ``namespace``/``key`` (``None`` removes the item).

        ``ttl`` in minutes (``None``: never expires; not given: ``default_ttl``);
        ``index`` as LangGraph's (``False``: no vectors; a list: these fields).
        """
        self.batch([self._put_op(namespace, key, value, index, ttl)])

    async def aput(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | NotProvided | None = NOT_PROVIDED,
    ) -> None:
        """Async ``put``."""
        await self.abatch([self._put_op(namespace, key, value, index, ttl)])

    def delete(self, namespace: tuple[str, ...], key: str) -> None:
        """Remove the item at ``namespace``/``key`` (nothing happens when it is absent)."""
        self.batch([PutOp(namespace, _key_text(key), None)])

    async def adelete(self, namespace: tuple[str, ...], key: str) -> None:
        """Async ``delete``."""
        await self.abatch([PutOp(namespace, _key_text(key), None)])

    def list_namespaces(
        self,
        *,
        prefix: tuple[str, ...] | None = None,
        suffix: tuple[str, ...] | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        """The namespaces holding items, sorted; ``"*"`` in ``prefix``/``suffix`` matches
        any label, ``max_depth`` truncates (then deduplicates) them."""
        return cast(
            "list[tuple[str, ...]]",
            self.batch([_list_op(prefix, suffix, max_depth, limit, offset)])[0],
        )

    async def alist_namespaces(
        self,
        *,
        prefix: tuple[str, ...] | None = None,
        suffix: tuple[str, ...] | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        """Async ``list_namespaces``."""
        op = _list_op(prefix, suffix, max_depth, limit, offset)
        return cast("list[tuple[str, ...]]", (await self.abatch([op]))[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._store!r})"

    # -- internals -------------------------------------------------------------------------

    def _refresh(self, refresh_ttl: object) -> bool:
        if refresh_ttl is None:
            return self._refresh_default
        if not isinstance(refresh_ttl, bool):
            raise InvalidArgumentTypeError(
                f"refresh_ttl must be a bool or None, not {type(refresh_ttl).__name__}"
            )
        return refresh_ttl

    def _put_op(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None,
        ttl: float | NotProvided | None,
    ) -> PutOp:
        # LangGraph's put() rules (a batch may write anywhere else but ()).
        if type(namespace) is tuple and namespace[:1] == ("langgraph",):
            raise InvalidNamespaceError(
                f'Root label for namespace cannot be "langgraph". Got: {namespace}'
            )
        if isinstance(ttl, NotProvided):
            ttl = self.ttl_config.get("default_ttl") if self.ttl_config else None
        return PutOp(namespace, _key_text(key), value, index, ttl)

    def _embeddings(self) -> Embeddings:
        assert self.embeddings is not None  # a plan only asks when an index is set
        return self.embeddings

    def _plan(self, ops: Iterable[Op]) -> _Plan:
        """Check every op (nothing is read or written before all pass) and plan the run."""
        if isinstance(ops, (str, bytes, Mapping)) or not isinstance(ops, Iterable):
            raise InvalidArgumentTypeError(
                f"ops must be an iterable of LangGraph ops, not {type(ops).__name__}"
            )
        plan = _Plan(list(ops))
        for i, op in enumerate(plan.ops):
            if isinstance(op, GetOp):
                _item_key(op.namespace, op.key)
                _check_bool(op.refresh_ttl, "refresh_ttl")
            elif isinstance(op, SearchOp):
                plan.filters[i] = _check_search(op)
                if op.query and self.embeddings is not None and op.query not in plan.queries:
                    plan.queries.append(op.query)
            elif isinstance(op, ListNamespacesOp):
                _check_list_op(op)
            elif isinstance(op, PutOp):
                self._plan_put(plan, op)
            else:
                raise InvalidArgumentError(
                    f"unknown operation type {type(op).__name__}: expected GetOp, PutOp, "
                    "SearchOp or ListNamespacesOp"
                )
        return plan

    def _plan_put(self, plan: _Plan, op: PutOp) -> None:
        memkv_key = _item_key(op.namespace, op.key)
        if not op.namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        if op.value is not None and not isinstance(op.value, Mapping):
            raise InvalidArgumentTypeError(
                f"a PutOp value must be a mapping or None, not {type(op.value).__name__}"
            )
        if op.ttl is not None:
            _check_minutes(op.ttl, "ttl")
        index = op.index
        if (index is not None and index is not False) and (
            not isinstance(index, list) or not all(isinstance(p, str) for p in index)
        ):
            raise InvalidArgumentTypeError("index must be False, None or a list of str paths")
        # A key written twice keeps its first place in the batch and its last write.
        plan.puts[memkv_key] = op
        if op.value is None or self.embeddings is None or index is False:
            plan.put_paths.pop(memkv_key, None)
            return
        fields = self._fields if index is None else [(p, tokenize_path(p)) for p in index]
        paths: list[tuple[str, str]] = []
        for path, tokens in fields:
            texts = get_text_at_path(op.value, tokens)
            if len(texts) == 1:
                paths.append((path, texts[0]))
            else:
                paths.extend((f"{path}.{i}", text) for i, text in enumerate(texts))
        plan.put_paths[memkv_key] = paths

    async def _execute(self, plan: _Plan) -> list[Result]:
        """Run a checked plan on the store (on the store's loop): reads, then writes."""
        store = self._store
        results: list[Result] = [None] * len(plan.ops)
        gets = [(i, op) for i, op in enumerate(plan.ops) if isinstance(op, GetOp)]
        touches: dict[str, float] = {}
        if gets:
            entries = await store.get_many([_item_key(op.namespace, op.key) for _, op in gets])
            for (i, op), entry in zip(gets, entries, strict=True):
                if entry is None:
                    continue
                document = _document(entry)
                results[i] = Item(
                    value=document["value"],
                    key=op.key,
                    namespace=tuple(op.namespace),
                    created_at=entry.created_at,
                    updated_at=entry.updated_at,
                )
                if op.refresh_ttl and "ttl" in document:
                    touches[entry.key] = document["ttl"] * 60.0
        for i, op in enumerate(plan.ops):
            if isinstance(op, SearchOp):
                vector = plan.query_vectors.get(op.query) if op.query else None
                results[i] = await self._search(op, plan.filters[i], vector, touches)
            elif isinstance(op, ListNamespacesOp):
                results[i] = await self._list_namespaces(op)
        await self._touch(touches)
        if plan.puts:
            await self._write(plan)
        return results

    async def _search_alone(self, op: SearchOp, test: _Test | None) -> list[SearchItem]:
        """A checked search without a query vector, outside a batch (no plan to make)."""
        touches: dict[str, float] = {}
        found = await self._search(op, test, None, touches)
        await self._touch(touches)
        return found

    async def _touch(self, touches: dict[str, float]) -> None:
        """Give each key its TTL (seconds) again: one after the other on a store that
        runs inline (no wait), else concurrently (on Redis, the round trips overlap)."""
        store = self._store
        if self._bridge.inline:
            for memkv_key, seconds in touches.items():
                await store.touch(memkv_key, seconds)
        elif touches:
            await asyncio.gather(*(store.touch(k, s) for k, s in touches.items()))

    async def _search(
        self,
        op: SearchOp,
        test: _Test | None,
        query_vector: list[float] | None,
        touches: dict[str, float],
    ) -> list[SearchItem]:
        """Run a checked search; adds the keys whose TTL the read refreshes to ``touches``."""
        if op.limit == 0:
            return []
        store = self._store
        prefix = KEY_PREFIX + _namespace_prefix(op.namespace_prefix)
        keys = [key async for key in store.scan(prefix, _BATCH)]
        # Code-point order (the local store's already): each namespace's keys in one run.
        keys.sort()
        entries: list[MemoryEntry[Any] | None] = []
        for start in range(0, len(keys), _BATCH):
            entries += await store.get_many(keys[start : start + _BATCH])
        candidates: Iterator[_Candidate] = _in_order(keys, entries)
        if test is not None:
            candidates = (c for c in candidates if test(c[3]["value"]))
        kept: list[tuple[float | None, _Candidate]]
        if query_vector is None:
            # Lazily: items past the page are neither filtered nor built.
            # (islice takes at most sys.maxsize; no store holds that many items.)
            page = itertools.islice(
                candidates, min(op.offset, sys.maxsize), min(op.offset + op.limit, sys.maxsize)
            )
            kept = [(None, candidate) for candidate in page]
        else:
            kept = _rank(query_vector, list(candidates), op.offset, op.limit)
        found = []
        for score, (namespace, key, entry, document) in kept:
            item = _kept_item(document, entry) or _keep_item(document, entry, namespace, key)
            found.append(
                SearchItem(
                    namespace=item.namespace,
                    key=key,
                    value=item.value,
                    created_at=item.created_at,
                    updated_at=item.updated_at,
                    score=score,
                )
            )
            if op.refresh_ttl and "ttl" in document:
                touches[entry.key] = document["ttl"] * 60.0
        return found

    async def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        conditions = tuple(op.match_conditions or ())
        literal = ""
        for condition in conditions:
            if condition.match_type == "prefix":
                labels = list(itertools.takewhile(lambda label: label != "*", condition.path))
                literal = _namespace_prefix(tuple(labels))
                break
        seen: set[str] = set()
        namespaces: set[tuple[str, ...]] = set()
        async for key in self._store.scan(KEY_PREFIX + literal, _BATCH):
            end = key.find("//", len(KEY_PREFIX))
            if end < 0:
                raise _not_an_item(key)
            encoded = key[len(KEY_PREFIX) : end + 1]
            if encoded in seen:
                continue
            seen.add(encoded)
            namespace = _decode_namespace(encoded)
            if all(_does_match(condition, namespace) for condition in conditions):
                namespaces.add(namespace if op.max_depth is None else namespace[: op.max_depth])
        return sorted(namespaces)[op.offset : op.offset + op.limit]

    async def _write(self, plan: _Plan) -> None:
        store = self._store
        keys = list(plan.puts)
        previous = await store.get_many(keys)
        vectors = iter(plan.text_vectors)
        order = _orders()
        by_ttl: dict[float | None, list[tuple[str, dict[str, Any]]]] = {}
        deletes: list[str] = []
        for memkv_key, entry in zip(keys, previous, strict=True):
            op = plan.puts[memkv_key]
            if op.value is None:
                deletes.append(memkv_key)
                continue
            value = dict(op.value)
            place = next(order) if entry is None else _document(entry)["order"]
            document: dict[str, Any] = (
                _Document(value, place) if self._keeps_items else {"value": value, "order": place}
            )
            if op.ttl is not None:
                document["ttl"] = op.ttl
            paths = plan.put_paths.get(memkv_key)
            if paths:
                # float(): embedding models may hand back numpy floats, which no codec takes.
                document["vectors"] = [
                    [path, list(map(float, next(vectors)))] for path, _ in paths
                ]
            seconds = None if op.ttl is None else op.ttl * 60.0
            by_ttl.setdefault(seconds, []).append((memkv_key, document))
        if len(by_ttl) > 1:
            # One set_many per TTL: check every document first, so that a value the
            # codec refuses leaves nothing of the batch written.
            codec = getattr(store, "_codec", None)
            if codec is not None:
                # Imported here: memkv.codecs needs msgspec (the redis extra), which a
                # store with a codec has and the langgraph extra alone does not bring.
                from memkv.codecs import Codec, encode_value

                if isinstance(codec, Codec):
                    for group in by_ttl.values():
                        for _, document in group:
                            encode_value(codec, document)
        for seconds, items in by_ttl.items():
            await store.set_many(items, seconds)
        if deletes:
            await store.delete_many(deletes)


class _Plan:
    """A checked batch: its ops, the searches' filters, the puts by memkv key, and what
    to embed."""

    __slots__ = (
        "filters",
        "ops",
        "put_paths",
        "puts",
        "queries",
        "query_vectors",
        "text_vectors",
    )

    def __init__(self, ops: list[Any]) -> None:
        self.ops = ops
        #: The compiled filter of each search, by its position in ``ops``.
        self.filters: dict[int, _Test | None] = {}
        self.puts: dict[str, PutOp] = {}
        self.put_paths: dict[str, list[tuple[str, str]]] = {}
        self.queries: list[str] = []
        self.query_vectors: dict[str, list[float]] = {}
        self.text_vectors: list[list[float]] = []

    def set_text_vectors(self, vectors: list[list[float]]) -> None:
        """Take the embeddings of ``texts``, one vector per text, or raise."""
        if len(vectors) != len(self.texts):
            raise InvalidArgumentError(
                f"the embedding function returned {len(vectors)} vectors for "
                f"{len(self.texts)} texts; nothing was written"
            )
        self.text_vectors = vectors

    @property
    def texts(self) -> list[str]:
        """The texts to embed for the puts, in the order ``_write`` consumes vectors."""
        return [
            text
            for memkv_key in self.puts
            for _, text in self.put_paths.get(memkv_key, ())
            if self.puts[memkv_key].value is not None
        ]


# -- keys ----------------------------------------------------------------------------------


def _escape(label: str) -> str:
    return label.replace("%", "%25").replace("/", "%2F")


#: Encoded namespaces by namespace (only checked ones), cleared when it grows past
#: _MAX_ENCODED: a dict lookup is what makes ``aget`` cheaper than encoding each time.
_ENCODED: dict[tuple[str, ...], str] = {}
_MAX_ENCODED = 4096


def _namespace_prefix(namespace: object) -> str:
    """``namespace`` as the start of its items' keys (after ``KEY_PREFIX``), checked."""
    if type(namespace) is not tuple:
        raise InvalidArgumentTypeError(
            f"a namespace must be a tuple of str labels, not {type(namespace).__name__}"
        )
    try:
        encoded = _ENCODED.get(namespace)
    except TypeError:  # an unhashable label
        encoded = None
    if encoded is None:
        validate_op_namespace(GetOp(namespace, ""))  # InvalidNamespaceError, as LangGraph
        encoded = "".join(_escape(label) + "/" for label in namespace)
        if len(_ENCODED) >= _MAX_ENCODED:
            _ENCODED.clear()
        _ENCODED[namespace] = encoded
    return encoded


def _key_text(key: object) -> str:
    """An item key as LangGraph's methods take it: ``str(key)``."""
    if type(key) is str:
        return key
    try:
        return str(key)
    except ValueError:  # an int too long for its decimal text
        raise InvalidKeyError(f"a key of type {type(key).__name__} has no str()") from None


def _item_key(namespace: object, key: object) -> str:
    if type(key) is not str:
        key = check_key(key)
    return KEY_PREFIX + _namespace_prefix(namespace) + "/" + key


def _decode_namespace(encoded: str) -> tuple[str, ...]:
    """The namespace of an encoded ``"a/b/"`` (the labels, each followed by ``/``)."""
    return tuple(unquote(label) if "%" in label else label for label in encoded[:-1].split("/"))


#: A search result to be: its namespace, key, entry and document.
_Candidate = tuple[tuple[str, ...], str, MemoryEntry[Any], dict[str, Any]]


def _in_order(keys: list[str], entries: list[MemoryEntry[Any] | None]) -> Iterator[_Candidate]:
    """The entries found at ``keys`` (in code-point order): namespaces in sorted order,
    the items of each in the order they were first written (then by key)."""
    groups: list[tuple[tuple[str, ...], int, list[tuple[int, str, Any, dict[str, Any]]]]] = []
    start = ""
    members: list[tuple[int, str, Any, dict[str, Any]]] = []
    for memkv_key, entry in zip(keys, entries, strict=True):
        if entry is None:
            continue
        # A namespace's keys share its start, so they come in one run.
        if not start or not memkv_key.startswith(start):
            cut = memkv_key.find("//", len(KEY_PREFIX)) + 2
            if cut == 1:
                raise _not_an_item(memkv_key)
            start = memkv_key[:cut]
            members = []
            groups.append((_decode_namespace(start[len(KEY_PREFIX) : cut - 1]), cut, members))
        document = _document(entry)
        members.append((document["order"], memkv_key, entry, document))
    groups.sort(key=operator.itemgetter(0))
    for namespace, cut, members in groups:
        # A stable sort: equal orders (items of two processes) stay in key order.
        members.sort(key=operator.itemgetter(0))
        for _, memkv_key, entry, document in members:
            yield namespace, memkv_key[cut:], entry, document


class _Document(dict[str, Any]):
    """A document as ``MemkvStore`` writes it to a ``LocalMemoryStore``, which holds it
    by reference: a plain dict to every reader, codec and copy (it pickles and copies as
    a ``dict``), with the ``Item`` a read built from it kept aside, in ``kept``."""

    __slots__ = ("kept",)

    #: ``(the entry's update stamp, the Item)``: one tuple, so that threads replace it
    #: whole. The Item holds while the entry keeps that stamp (a write through the
    #: memkv store's own API moves it) and the document that value.
    kept: tuple[float, Item] | None

    def __init__(self, value: dict[str, Any], order: int) -> None:
        super().__init__(value=value, order=order)
        self.kept = None

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        return dict, (dict(self),)


def _kept_item(document: dict[str, Any], entry: MemoryEntry[Any]) -> Item | None:
    """The ``Item`` kept beside ``document`` (the value of ``entry``), if still true."""
    kept = document.kept if type(document) is _Document else None
    if kept is None or kept[0] != entry._updated:
        return None
    return kept[1] if kept[1].value is document["value"] else None


def _keep_item(
    document: dict[str, Any], entry: MemoryEntry[Any], namespace: tuple[str, ...], key: str
) -> Item:
    """A new ``Item`` of a checked ``document``, kept beside it when it is a ``_Document``."""
    item = Item(
        value=document["value"],
        key=key,
        namespace=namespace,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
    )
    if type(document) is _Document:
        document.kept = (entry._updated, item)
    return item


def _document(entry: MemoryEntry[Any]) -> dict[str, Any]:
    document: dict[str, Any] = entry.value  # checked here (no cast(): a call per item)
    kind = type(document)
    if (
        (kind is not dict and kind is not _Document)
        or type(document.get("value")) is not dict
        or type(document.get("order")) is not int
    ):
        raise _not_an_item(entry.key)
    return document


def _not_an_item(memkv_key: str) -> CodecError:
    return CodecError(
        f"the entry at {memkv_key!r} is not a MemkvStore item (written by something "
        f"else under {KEY_PREFIX!r}?)"
    )


_order_lock = threading.Lock()
_last_order = 0


def _orders() -> Iterator[int]:
    """Increasing ints that place new items after every item written before, in this
    process (microseconds since the epoch, so roughly so across processes too)."""
    global _last_order
    while True:
        with _order_lock:
            _last_order = max(time.time_ns() // 1000, _last_order + 1)
            value = _last_order
        yield value


# -- checks --------------------------------------------------------------------------------


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise InvalidArgumentTypeError(f"{name} must be a bool, not {type(value).__name__}")


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentTypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise InvalidArgumentError(f"{name} must be at least 0, got {value}")
    return value


def _check_minutes(minutes: object, name: str) -> None:
    """Check a LangGraph TTL (minutes) the way memkv checks seconds."""
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)):
        raise InvalidArgumentTypeError(
            f"{name} must be minutes as int or float, or None, not {type(minutes).__name__}"
        )
    try:
        ttl_seconds(minutes * 60, name)
    except InvalidTTLError:
        # Named in minutes, as given (ttl_seconds would name the seconds); an int too
        # long for its decimal text to be made is not quoted.
        shown = repr(minutes) if isinstance(minutes, float) or abs(minutes) < 10**18 else "more"
        raise InvalidTTLError(
            f"{name} must be positive minutes, at most {MAX_TTL_SECONDS / 60:.0f} (100 years), "
            f"got {shown}; use {name}=None for no expiry"
        ) from None


def _check_list_op(op: ListNamespacesOp) -> None:
    conditions = op.match_conditions
    if conditions is not None:
        if not isinstance(conditions, (tuple, list)):
            raise InvalidArgumentTypeError(
                "match_conditions must be a tuple of MatchCondition or None"
            )
        for condition in conditions:
            if not isinstance(condition, MatchCondition):
                raise InvalidArgumentTypeError(
                    f"a match condition must be a MatchCondition, not {type(condition).__name__}"
                )
            if condition.match_type not in ("prefix", "suffix"):
                raise InvalidArgumentError(
                    f"match_type must be 'prefix' or 'suffix', not {condition.match_type!r}"
                )
            if type(condition.path) is not tuple:
                raise InvalidArgumentTypeError(
                    f"a match path must be a tuple, not {type(condition.path).__name__}"
                )
        validate_op_namespace(op)
    if op.max_depth is not None and _check_count(op.max_depth, "max_depth") < 1:
        raise InvalidArgumentError(f"max_depth must be at least 1 or None, got {op.max_depth}")
    _check_count(op.limit, "limit")
    _check_count(op.offset, "offset")


def _list_op(
    prefix: object, suffix: object, max_depth: int | None, limit: int, offset: int
) -> ListNamespacesOp:
    conditions = []
    for match_type, path in (("prefix", prefix), ("suffix", suffix)):
        if path is None:
            continue
        if type(path) is not tuple:
            raise InvalidArgumentTypeError(
                f"{match_type} must be a tuple of labels or None, not {type(path).__name__}"
            )
        if path:
            conditions.append(MatchCondition(match_type, path))  # type: ignore[arg-type]
    return ListNamespacesOp(tuple(conditions), max_depth, limit, offset)


def _check_ttl_config(ttl: object) -> TTLConfig | None:
    if ttl is None:
        return None
    if not isinstance(ttl, Mapping):
        raise InvalidArgumentTypeError(
            f"ttl must be a TTLConfig (a mapping) or None, not {type(ttl).__name__}"
        )
    unknown = set(ttl) - _TTL_OPTIONS
    if unknown:
        raise InvalidArgumentError(f"unknown TTLConfig options: {sorted(map(str, unknown))}")
    config = cast("TTLConfig", dict(ttl))
    default = config.get("default_ttl")
    if default is not None:
        _check_minutes(default, "default_ttl")
    for flag in ("refresh_on_read", "omit_expired"):
        if flag in config:
            _check_bool(config[flag], flag)
    sweep = config.get("sweep_interval_minutes")
    if sweep is not None:
        _check_count(sweep, "sweep_interval_minutes")
    return config


def _check_index_config(
    index: object,
) -> tuple[IndexConfig | None, Embeddings | None, list[tuple[str, list[str] | str]]]:
    if index is None:
        return None, None, []
    if not isinstance(index, Mapping):
        raise InvalidArgumentTypeError(
            f"index must be an IndexConfig (a mapping) or None, not {type(index).__name__}"
        )
    config = cast("IndexConfig", dict(index))
    dims = config.get("dims")
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise InvalidArgumentError("an IndexConfig needs dims, a positive int")
    embed = config.get("embed")
    if not (isinstance(embed, (Embeddings, str)) or callable(embed)):
        raise InvalidArgumentTypeError(
            "an IndexConfig needs embed: LangChain Embeddings, a function or a provider name"
        )
    fields = config.get("fields") or ["$"]
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise InvalidArgumentTypeError("IndexConfig fields must be a list of str paths")
    tokenized: list[tuple[str, list[str] | str]] = [
        (path, path if path == "$" else tokenize_path(path)) for path in fields
    ]
    try:
        embeddings = ensure_embeddings(embed)
    except (ValueError, ImportError) as err:  # a provider name LangChain cannot load
        raise InvalidArgumentError(
            f"IndexConfig embed cannot be loaded: {type(err).__name__}: {err}"
        ) from err
    return config, embeddings, tokenized


# -- filters and ranking: InMemoryStore's semantics ----------------------------------------


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


#: A compiled filter condition: whether a field's value (an item's value, at the top) matches.
_Test = Callable[[Any], bool]


def _check_search(op: SearchOp) -> _Test | None:
    """Check a search op; its filter compiled into a test of an item's value (or None)."""
    _namespace_prefix(op.namespace_prefix)
    _check_count(op.limit, "limit")
    _check_count(op.offset, "offset")
    _check_bool(op.refresh_ttl, "refresh_ttl")
    if op.query is not None and not isinstance(op.query, str):
        raise InvalidArgumentTypeError(
            f"query must be a str or None, not {type(op.query).__name__}"
        )
    if op.filter is None:
        return None
    if not isinstance(op.filter, dict):
        raise InvalidArgumentTypeError(
            f"filter must be a dict or None, not {type(op.filter).__name__}"
        )
    return _fields_test(op.filter) if op.filter else None


def _fields_test(filter: dict[Any, Any]) -> _Test:
    """``{"field": condition, ...}``: a dict whose every field matches its condition."""
    tests: list[tuple[str, _Test]] = []
    for field, expected in filter.items():
        if not isinstance(field, str):
            raise InvalidArgumentTypeError(
                f"filter fields must be str, not {type(field).__name__}"
            )
        tests.append((field, _condition_test(expected)))
    if len(tests) == 1:
        ((field, test),) = tests
        return lambda value: test(value.get(field))
    return lambda value: all(test(value.get(field)) for field, test in tests)


def _condition_test(expected: object) -> _Test:
    """One field's condition, as ``InMemoryStore`` compares it: operators, nested
    fields (a dict), element by element (a list), else equality."""
    if isinstance(expected, dict):
        if not any(isinstance(k, str) and k.startswith("$") for k in expected):
            fields = _fields_test(expected) if expected else None
            return lambda actual: isinstance(actual, dict) and (fields is None or fields(actual))
        tests = [_operator_test(name, bound) for name, bound in expected.items()]
        if len(tests) == 1:
            return tests[0]
        return lambda actual: all(test(actual) for test in tests)
    if isinstance(expected, (list, tuple)):
        elements = [_condition_test(element) for element in expected]
        size = len(elements)
        return lambda actual: (
            isinstance(actual, (list, tuple))
            and len(actual) == size
            and all(test(a) for test, a in zip(elements, actual, strict=True))
        )
    return lambda actual: bool(actual == expected)


def _operator_test(name: object, bound: Any) -> _Test:
    if name == "$eq":
        return lambda actual: bool(actual == bound)
    if name == "$ne":
        return lambda actual: bool(actual != bound)
    compare = _RANGE_OPERATORS.get(name) if isinstance(name, str) else None
    if compare is None:
        raise InvalidArgumentError(
            f"unsupported filter operator {name!r}; expected one of {sorted(_OPERATORS)}"
        )
    limit = _number(bound)
    if limit is None:
        raise InvalidArgumentError(f"{name} needs a number, not {type(bound).__name__}")

    def ranged(actual: Any) -> bool:
        try:
            return compare(float(actual), limit)
        except (TypeError, ValueError, OverflowError):
            return False  # InMemoryStore raises here (see the class docstring)

    return ranged


def _cosine(query: list[float], query_norm: float, vector: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0 or query_norm == 0:
        return 0.0
    dot: float = sum(map(operator.mul, query, vector))
    return dot / (query_norm * norm)


def _rank(
    query: list[float], candidates: list[_Candidate], offset: int, limit: int
) -> list[tuple[float | None, _Candidate]]:
    """Candidates by their best cosine similarity to ``query`` (``InMemoryStore``'s rule:
    max over an item's vectors, unscored items after the scored ones)."""
    query_norm = math.sqrt(sum(x * x for x in query))
    scored: list[tuple[float, int, _Candidate]] = []
    unscored = []
    for position, candidate in enumerate(candidates):
        vectors = candidate[3].get("vectors")
        if not vectors:
            unscored.append(candidate)
            continue
        best = max(_cosine(query, query_norm, vector) for _, vector in vectors)
        scored.append((best, position, candidate))
    scored.sort(key=lambda s: (-s[0], s[1]))
    kept: list[tuple[float | None, _Candidate]] = [
        (score, candidate) for score, _, candidate in scored[offset : offset + limit]
    ]
    if unscored and len(kept) < limit:
        kept.extend((None, candidate) for candidate in unscored[: limit - len(kept)])
    return kept


def _does_match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = condition.path
    if len(namespace) < len(path):
        return False
    pairs = (
        zip(namespace, path, strict=False)
        if condition.match_type == "prefix"
        else zip(reversed(namespace), reversed(path), strict=False)
    )
    return all(pattern == "*" or label == pattern for label, pattern in pairs)
