"""``MemoryEntry``: the type of every entry a store returns, whichever local core made it.

Each local core has its own entry class (a C struct for the Cython core, a slotted class
for the pure-Python one). ``MemoryEntry`` is the abstract class both belong to, so
``isinstance(entry, memkv.MemoryEntry)`` holds for an entry of either core, and calling
it builds an entry of the core in use (``memkv.IMPLEMENTATION``).
"""

from __future__ import annotations

import inspect
from abc import ABCMeta
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

__all__ = ["MemoryEntry"]

T = TypeVar("T")


class MemoryEntry(Generic[T], metaclass=ABCMeta):
    """One stored value with its key, metadata and timestamps.

    ``created_at``, ``updated_at`` and ``expires_at`` are timezone-aware UTC datetimes.
    ``metadata`` is a dict, never ``None``. ``key`` is read-only; ``value`` may be
    reassigned. Entries returned by a store are snapshots: a later ``set`` of the same
    key makes a new entry and leaves this one as it was.

    ``MemoryEntry(key, value, expires_at=None, metadata=None)`` builds an entry of the
    core in use, with ``created_at == updated_at == now``; entries of both cores are
    instances of this class.

    >>> entry = MemoryEntry("greeting", "hello", metadata={"lang": "en"})
    >>> isinstance(entry, MemoryEntry), entry.created_at == entry.updated_at
    (True, True)
    """

    __slots__ = ()

    if TYPE_CHECKING:
        value: T
        #: Internal: when the entry was written, on its store's clock (refresh_after).
        _updated: float

        def __init__(
            self,
            key: str,
            value: T,
            expires_at: datetime | None = None,
            metadata: Mapping[str, Any] | None = None,
        ) -> None: ...

        @property
        def key(self) -> str: ...
        @property
        def metadata(self) -> dict[str, Any]: ...
        @property
        def created_at(self) -> datetime: ...
        @property
        def updated_at(self) -> datetime: ...
        @property
        def expires_at(self) -> datetime | None: ...

    # What MemoryEntry(...) takes (its __new__ passes it on to the core in use).
    __signature__ = inspect.Signature(
        [
            inspect.Parameter("key", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("value", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("expires_at", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
            inspect.Parameter("metadata", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        ]
    )

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is MemoryEntry:
            # The core in use makes the entry (and validates the arguments).
            from memkv._core import MemoryEntry as CoreEntry

            if MemoryEntry in CoreEntry.__mro__:
                # A real subclass (the pure-Python core's): type.__call__ runs its
                # __init__ on what is returned here, so it must not have run yet (a
                # second __init__ raises FrozenEntryError).
                return object.__new__(CoreEntry)
            # Registered only (the Cython core's): type.__call__ runs no __init__.
            return CoreEntry(*args, **kwargs)
        return object.__new__(cls)
