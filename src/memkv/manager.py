"""Routes calls to named stores, with a default, so code can move between backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar

from memkv.entry import MemoryEntry
from memkv.errors import InvalidArgumentError, InvalidArgumentTypeError, StoreNotFoundError
from memkv.store import TTL, MemoryStore
from memkv.urls import open_store, parse_url
from memkv.validation import check_store, check_store_name

__all__ = ["MemoryManager"]

T = TypeVar("T")


class MemoryManager(Generic[T]):
    """Named stores behind one set of async methods.

    Each data method takes the store's own arguments plus ``store=`` (a name); without
    it the default store is used. No name and no default, or an unknown name, raises
    ``StoreNotFoundError`` (a ``ValueError``). ``async with manager:`` closes every
    store on exit.

    >>> import asyncio
    >>> async def main() -> str:
    ...     async with MemoryManager.from_urls({"local": "memory://"}, default="local") as manager:
    ...         await manager.set("greeting", "hello")
    ...         return (await manager.get("greeting", store="local")).value
    >>> asyncio.run(main())
    'hello'
    """

    def __init__(self) -> None:
        self._stores: dict[str, MemoryStore[T]] = {}
        self._default: str | None = None

    @classmethod
    def from_urls(cls, urls: Mapping[str, str], default: str | None = None) -> MemoryManager[Any]:
        """Open a store for each ``name: url`` (see ``open_store``) and register it.

        ``urls`` must be a mapping (else ``InvalidArgumentTypeError``); a ``default``
        that is not among its names raises ``StoreNotFoundError``. Every URL is parsed
        before any store is opened, so a bad one (``InvalidArgumentError``) leaves no
        store open behind it.
        """
        if not isinstance(urls, Mapping):
            raise InvalidArgumentTypeError(
                f"urls must be a mapping of store names to URLs, not {type(urls).__name__}"
            )
        names = [check_store_name(name) for name in urls]
        if default is not None and check_store_name(default) not in names:
            raise StoreNotFoundError(f"default store {default!r} is not among {sorted(names)}")
        parsed = {name: parse_url(url) for name, url in urls.items()}
        manager: MemoryManager[Any] = cls()
        for name, url in parsed.items():
            manager.register_store(name, open_store(url), default=name == default)
        return manager

    def register_store(
        self, name: str, store: MemoryStore[T], default: bool = False, *, replace: bool = False
    ) -> None:
        """Add ``store`` as ``name``.

        A taken name raises ``InvalidArgumentError`` (a ``ValueError``) unless
        ``replace``; a ``store`` that is not a ``MemoryStore`` raises
        ``InvalidArgumentTypeError``, a non-``str`` name ``StoreNotFoundError``.
        """
        check_store_name(name)
        check_store(store)
        if name in self._stores and not replace:
            raise InvalidArgumentError(f"a store named {name!r} is already registered")
        self._stores[name] = store
        if default:
            self._default = name

    def unregister_store(self, name: str) -> MemoryStore[T]:
        """Remove and return the store ``name`` without closing it."""
        try:
            store = self._stores.pop(check_store_name(name))
        except KeyError:
            raise StoreNotFoundError(f"no store named {name!r}") from None
        if self._default == name:
            self._default = None
        return store

    def store(self, name: str | None = None) -> MemoryStore[T]:
        """The store called ``name``, or the default one when ``name`` is ``None``."""
        if name is None:
            if self._default is None:
                raise StoreNotFoundError("no store name given and no default store registered")
            name = self._default
        try:
            return self._stores[check_store_name(name)]
        except KeyError:
            raise StoreNotFoundError(f"no store named {name!r}") from None

    @property
    def names(self) -> list[str]:
        """The registered store names, in registration order."""
        return list(self._stores)

    @property
    def stores(self) -> dict[str, MemoryStore[T]]:
        """A snapshot of the registered stores by name, in registration order."""
        return dict(self._stores)

    @property
    def default(self) -> str | None:
        """The default store's name, or ``None``."""
        return self._default

    async def get(self, key: str, *, store: str | None = None) -> MemoryEntry[T] | None:
        return await self.store(store).get(key)

    async def set(
        self,
        key: str,
        value: T,
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        store: str | None = None,
    ) -> None:
        await self.store(store).set(key, value, ttl, metadata)

    async def delete(self, key: str, *, store: str | None = None) -> bool:
        return await self.store(store).delete(key)

    async def exists(self, key: str, *, store: str | None = None) -> bool:
        return await self.store(store).exists(key)

    def scan(
        self, pattern: str | None = None, batch_size: int = 100, *, store: str | None = None
    ) -> AsyncIterator[str]:
        return self.store(store).scan(pattern, batch_size)

    async def clear(self, pattern: str | None = None, *, store: str | None = None) -> int:
        return await self.store(store).clear(pattern)

    async def get_many(
        self, keys: Iterable[str], *, store: str | None = None
    ) -> list[MemoryEntry[T] | None]:
        return await self.store(store).get_many(keys)

    async def set_many(
        self,
        items: Mapping[str, T] | Iterable[tuple[str, T]],
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        store: str | None = None,
    ) -> None:
        await self.store(store).set_many(items, ttl, metadata)

    async def delete_many(self, keys: Iterable[str], *, store: str | None = None) -> int:
        return await self.store(store).delete_many(keys)

    async def close(self) -> None:
        """Close every registered store (each once, even if registered twice)."""
        closed: set[int] = set()
        errors: list[BaseException] = []
        for store in list(self._stores.values()):
            if id(store) in closed:
                continue
            closed.add(id(store))
            try:
                await store.close()
            except Exception as err:
                errors.append(err)
        if errors:
            raise errors[0]

    async def __aenter__(self) -> MemoryManager[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- get_or_set, add and touch (see BaseMemoryStore) --------------------------------

    async def get_or_set(
        self,
        key: str,
        factory: Callable[[], Awaitable[T]],
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        refresh_after: TTL = None,
        ttl_jitter: float = 0.0,
        store: str | None = None,
    ) -> MemoryEntry[T]:
        return await self.store(store).get_or_set(
            key, factory, ttl, metadata, refresh_after=refresh_after, ttl_jitter=ttl_jitter
        )

    async def add(
        self,
        key: str,
        value: T,
        ttl: TTL = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        store: str | None = None,
    ) -> bool:
        return await self.store(store).add(key, value, ttl, metadata)

    async def touch(self, key: str, ttl: TTL = None, *, store: str | None = None) -> bool:
        return await self.store(store).touch(key, ttl)
