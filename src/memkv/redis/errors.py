"""One table from transport, redis-py and socket failures to the memkv errors a store
raises (like redis-py's ``EXCEPTION_CLASSES``): read top to bottom, the first matching row
wins. The transport's errors are memkv errors already; the table re-raises them naming
the store's server, and sorts its error replies (``ReplyError``) as it sorts redis-py's."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from redis import exceptions as redis_errors

from memkv.errors import (
    AccessDeniedError,
    BackendError,
    BackendUnavailableError,
    CodecError,
    MemKVError,
    TrackingUnavailableError,
)
from memkv.redis.transport import ReplyError

__all__ = [
    "ACCESS_ERRORS",
    "ERROR_TABLE",
    "FAILURES",
    "FOREIGN_TYPE_MESSAGE",
    "ErrorRow",
    "retryable",
    "translate",
]

#: Refused credentials or an ACL refusal: retrying cannot fix them.
ACCESS_ERRORS: tuple[type[Exception], ...] = (
    AccessDeniedError,  # the transport's (WRONGPASS, NOPERM...; refused at connection)
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.AuthenticationWrongNumberOfArgsError,
    redis_errors.NoPermissionError,
)
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.SlotNotCoveredError,
    redis_errors.TryAgainError,
    redis_errors.BusyLoadingError,
    # Raised by the cluster client when no node answers (all down, or the seed dead).
    redis_errors.RedisClusterException,
    OSError,  # BackendUnavailableError (the transport's outages) is a ConnectionError
    asyncio.TimeoutError,
)
#: Error replies of a server that is starting, failing over or resharding: an outage
#: (redis-py raises BusyLoadingError, ClusterDownError, TryAgainError for them).
_OUTAGE_REPLIES = ("LOADING", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN")
#: Everything a transport or redis-py call can fail with; anything else (a CodecError
#: from decoding, a bug) is raised as it is.
FAILURES: tuple[type[BaseException], ...] = (
    BackendError,  # the transport's ReplyError and connection refusals
    redis_errors.RedisError,
    redis_errors.RedisClusterException,
    OSError,
    asyncio.TimeoutError,
)
#: A key in the namespace holding a hash, list, set... (``{key}``, ``{where}``).
FOREIGN_TYPE_MESSAGE = (
    "the value at key {key!r} on {where} is not a memkv entry "
    "(another client stored a Redis type other than a string there)"
)


class ErrorRow(NamedTuple):
    """``failures`` (whose reply text holds one of ``replies``, when given) become ``error``.

    ``message`` is formatted with ``where`` (the server), ``key`` (the key of a
    single-key operation, else ``None``), ``kind`` (the exception's class name) and
    ``reply`` (its text, which never holds a password).
    """

    failures: tuple[type[BaseException], ...]
    replies: tuple[str, ...] | None
    error: type[MemKVError]
    message: str


ERROR_TABLE: tuple[ErrorRow, ...] = (
    # A near cache's CLIENT TRACKING refused (its text names the server and the reply).
    ErrorRow((TrackingUnavailableError,), None, TrackingUnavailableError, "{reply}"),
    ErrorRow(ACCESS_ERRORS, None, AccessDeniedError, "{where} refused access: {reply}"),
    # An ACL refusal inside the set script comes back as a plain error reply, worded
    # differently by Redis ("can't run this command") and Valkey ("ACL failure").
    ErrorRow(
        (redis_errors.ResponseError,),
        ("NOPERM", "can't run this command", "ACL failure", "no permissions"),
        AccessDeniedError,
        "{where} refused access: {reply}",
    ),
    # Another client stored a hash, list, set... at a key in the namespace: data memkv
    # did not write, as for a string that is not an envelope.
    ErrorRow((redis_errors.ResponseError,), ("WRONGTYPE",), CodecError, FOREIGN_TYPE_MESSAGE),
    ErrorRow(
        (ReplyError,),
        ("NOPERM", "can't run this command", "ACL failure", "no permissions"),
        AccessDeniedError,
        "{where} refused access: {reply}",
    ),
    ErrorRow((ReplyError,), ("WRONGTYPE",), CodecError, FOREIGN_TYPE_MESSAGE),
    ErrorRow(
        (ReplyError,),
        _OUTAGE_REPLIES,
        BackendUnavailableError,
        "{where} is unavailable: {kind}: {reply}",
    ),
    ErrorRow(
        _OUTAGE_ERRORS, None, BackendUnavailableError, "{where} is unavailable: {kind}: {reply}"
    ),
    ErrorRow(
        (BaseException,), None, BackendError, "{where} answered with an error: {kind}: {reply}"
    ),
)


def retryable(err: BaseException) -> bool:
    """Whether the retry policy runs an operation again after ``err`` (a transport
    failure): a lost, refused or silent connection, or a server that is loading, failing
    over or resharding; never an access refusal or another error reply."""
    if isinstance(err, ReplyError):
        return err.prefix in _OUTAGE_REPLIES
    return isinstance(err, BackendUnavailableError)


def translate(err: BaseException, where: str, key: str | None = None) -> MemKVError:
    """The memkv error for ``err`` (one of ``FAILURES``); raise it ``from err``."""
    reply = str(err)
    row = next(
        row
        for row in ERROR_TABLE
        if isinstance(err, row.failures)
        and (row.replies is None or any(marker in reply for marker in row.replies))
    )
    kind = type(err).__name__
    return row.error(row.message.format(where=where, key=key, kind=kind, reply=reply))
