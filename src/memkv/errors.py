"""The errors memkv raises: one root, each also a subclass of the matching builtin."""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "BackendError",
    "BackendUnavailableError",
    "CodecError",
    "EventLoopError",
    "ExtensionUnavailableError",
    "FrozenEntryError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "InvalidKeyError",
    "InvalidMetadataError",
    "InvalidTTLError",
    "MemKVError",
    "ReentrantCallError",
    "StoreClosedError",
    "StoreNotFoundError",
    "TrackingUnavailableError",
]


class MemKVError(Exception):
    """Base class of every error memkv raises."""


class InvalidArgumentError(MemKVError, ValueError):
    """An option or argument with a value memkv cannot use (``batch_size=0``, a bad URL)."""


class InvalidArgumentTypeError(MemKVError, TypeError):
    """An option or argument of a type memkv cannot use (``max_entries="5"``, ``clock=5``)."""


class StoreNotFoundError(MemKVError, ValueError):
    """A manager was asked for a store name it does not hold, or has no default."""


class ExtensionUnavailableError(MemKVError, ImportError):
    """The compiled (Cython) local core was asked for where it is not in use.

    Raised by ``LocalMemoryStore(core="cython")`` (and ``memory://?core=cython``) when
    ``memkv.IMPLEMENTATION`` is ``"python"``: ``MEMKV_NO_EXTENSIONS`` is set, or this is
    not CPython.
    """


class InvalidTTLError(MemKVError, ValueError):
    """A TTL that is not a positive ``timedelta``, ``int`` or ``float``."""


class InvalidKeyError(MemKVError, TypeError):
    """A key or prefix that is not a ``str``."""


class InvalidMetadataError(MemKVError, TypeError):
    """Metadata that is not a mapping with ``str`` keys."""


class FrozenEntryError(MemKVError, AttributeError):
    """A change to a ``MemoryEntry`` that only its store may make.

    Raised for a second call of ``__init__`` and for writing or deleting any attribute
    but ``value`` (``key``, the timestamps, ``metadata``, ``__class__``, …): a store
    files its entries by key and expiry, so those must not change under it. Like
    ``dataclasses.FrozenInstanceError``, it is an ``AttributeError``.
    """


class CodecError(MemKVError, TypeError):
    """A value the codec cannot encode, or stored bytes it cannot decode."""


class BackendUnavailableError(MemKVError, ConnectionError):
    """The backend server cannot be reached within the timeout and retry budget."""


class AccessDeniedError(MemKVError, PermissionError):
    """The backend refused the credentials, or an ACL forbids a command or key.

    Raised for a wrong password, an unknown user or a missing ``AUTH`` and for an ACL
    ``NOPERM`` refusal. Retrying does not help, so it is never retried; the message
    names the server, never the password.
    """


class ReentrantCallError(MemKVError, RuntimeError):
    """A call that would deadlock: made from inside an operation that must finish first.

    The local core called from its own injected clock or from a finalizer during one of
    its operations; a LangChain adapter's sync method called from inside its own store.
    """


class EventLoopError(MemKVError, RuntimeError):
    """A store in use on one running event loop was used from another.

    A ``RedisMemoryStore``'s connections belong to the event loop that opened them.
    Once that loop has stopped (a second ``asyncio.run``), the store moves to the next
    one by itself; while it still runs (in another thread), open one store per loop.
    Also raised when a store that declares ``runs_inline = True`` needs an event loop
    after all (a sync adapter ran it without one).
    """


class StoreClosedError(MemKVError, RuntimeError):
    """An object that was closed for good was used again (a LangChain adapter)."""


class BackendError(MemKVError, RuntimeError):
    """The backend answered an operation with an error reply.

    For Redis: a reply such as ``OOM`` or ``READONLY`` that is neither an outage
    (``BackendUnavailableError``) nor an access refusal (``AccessDeniedError``).
    """


class TrackingUnavailableError(BackendError):
    """A Redis server cannot keep a near cache coherent: it refused ``CLIENT TRACKING``
    (an ACL without ``client|tracking``, a server before Redis 6) or speaks only RESP2.

    Raised by the first operation of a ``RedisMemoryStore`` made with ``near_cache``,
    instead of serving copies that no invalidation would ever drop.
    """
