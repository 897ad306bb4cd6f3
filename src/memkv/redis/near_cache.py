"""The near cache of ``RedisMemoryStore``: in-process copies of entries that the server
keeps coherent by invalidation messages (``CLIENT TRACKING``, RESP3 pushes).

How it stays coherent (``docs/near-cache.md`` says it for users):

- **Tracking on the connections that read.** Every connection the store opens runs
  ``CLIENT TRACKING ON`` (default mode, RESP3) before it carries any command
  (``enable_tracking``, the transport's ``on_ready``). The server then remembers each
  key that connection reads and pushes ``["invalidate", [key, ...]]`` on the same
  socket when anyone changes it. The push and the replies share one ordered stream,
  so an invalidation caused by a write the server ran after our read always reaches
  us after that read's reply; no second connection can be lost on its own.
- **The fetch/invalidate race.** A read records a token (the flush epoch and the
  invalidation tick) before its command leaves; an invalidation of a key with reads in
  flight stamps the key with the tick. ``finish_read`` fills only if no flush happened
  and the key was not stamped after the token: a reply that may be stale stays out.
- **Own writes.** ``drop`` runs before a write leaves and again once it returned (or
  failed), so neither a copy nor a read in flight outlives this store's own write.
- **Flush.** A null invalidation (``FLUSHDB``/``FLUSHALL``), a tracked connection that
  closes, is lost, times out or is given up (fork, dead loop), and a fork all empty the
  cache and bump the epoch. A new connection reaches callers only after tracking is on
  again, so nothing is filled in between. A tracked connection is pinged every
  ``health_interval`` seconds, so a silent one (a partition: no reset arrives) times out
  after ``command_timeout`` and flushes the cache.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, cast

from memkv import _core
from memkv._core import LocalCore
from memkv.entry import MemoryEntry
from memkv.errors import InvalidArgumentTypeError, TrackingUnavailableError
from memkv.redis.transport import Connection, ReplyError
from memkv.store import NearCacheStats
from memkv.validation import check_max_entries

__all__ = ["ABSENT", "MISS", "NearCache", "ReadToken"]

#: What ``lookup`` returns when the cache holds nothing for the key: ask the server.
MISS: Any = object()
#: The value of a known absence in the core (no value of the store is this object).
ABSENT: Any = object()
#: Seconds between two PINGs on each tracked connection.
DEFAULT_HEALTH_INTERVAL = 1.0

_CACHES: weakref.WeakSet[NearCache] = weakref.WeakSet()


def _flush_after_fork() -> None:
    # The child inherits the copies but not the tracking: the parent's sockets get the
    # invalidations. Its connections are reopened (and tracked) on next use.
    for cache in list(_CACHES):
        cache._tracked.clear()
        cache._stop_health_checks(forked=True)
        cache.flush()


os.register_at_fork(after_in_child=_flush_after_fork)


class ReadToken(NamedTuple):
    """The state of the cache when a read's command left (see ``start_read``)."""

    epoch: int
    tick: int


class NearCache:
    """Up to ``max_entries`` copies of a store's entries, least recently used out first,
    each until its ``expires_at``; dropped when the server invalidates its key.

    ``prefix`` is the store's ``b"{namespace}:"``: invalidation messages name Redis keys,
    the cache holds the store's keys. Lookups and fills cost one local core operation
    (O(1), plus O(log n) when a key is added or removed).
    """

    def __init__(
        self,
        max_entries: int,
        prefix: bytes,
        *,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
    ) -> None:
        if max_entries is None:
            raise InvalidArgumentTypeError("near_cache must be an int, not NoneType")
        checked = check_max_entries(max_entries, "near_cache")
        assert checked is not None
        self.max_entries = checked
        #: The copies: the store's ``get`` reads it directly (see ``lookup``).
        self.core = LocalCore(checked)
        self._prefix = prefix
        self._health_interval = health_interval
        self._epoch = 0
        self._tick = 0
        # Reads in flight per key, and the tick of the last invalidation of such a key:
        # both hold only keys being read, so they stay small.
        self._reading: dict[str, int] = {}
        self._invalidated: dict[str, int] = {}
        self._tracked: set[Connection] = set()
        self._health: asyncio.TimerHandle | None = None
        self._health_loop: asyncio.AbstractEventLoop | None = None
        #: Keys looked up and found (a copy or a known absence), or not found.
        self.hits = self.misses = 0
        self._invalidations = self._flushes = 0
        _CACHES.add(self)

    # -- reads --------------------------------------------------------------------------

    def lookup(self, key: str) -> Any:
        """The cached entry for ``key``, ``None`` for a cached absence, or ``MISS``."""
        found = self.core.get(key)
        if found is None:
            self.misses += 1
            return MISS
        self.hits += 1
        return None if found.value is ABSENT else found

    def start_read(self, keys: Sequence[str]) -> ReadToken:
        """Register reads of ``keys`` about to be sent; call before the command is queued.

        Every ``start_read`` needs its ``finish_read``, whatever the read's outcome.
        """
        reading = self._reading
        for key in keys:
            reading[key] = reading.get(key, 0) + 1
        return ReadToken(self._epoch, self._tick)

    def finish_read(
        self,
        keys: Sequence[str],
        token: ReadToken,
        entries: Sequence[MemoryEntry[Any] | None] | None,
    ) -> None:
        """End the reads of ``keys``; fill each with its entry (``None``: known absent)
        unless the cache was flushed or the key invalidated since ``token``, or the read
        failed (``entries`` is ``None``)."""
        reading, invalidated = self._reading, self._invalidated
        valid = entries is not None and token.epoch == self._epoch and bool(self._tracked)
        now = time.time()
        for index, key in enumerate(keys):
            if valid and invalidated.get(key, -1) <= token.tick:
                assert entries is not None
                self._fill(key, entries[index], now)
            left = reading[key] - 1
            if left:
                reading[key] = left
            else:
                del reading[key]
                invalidated.pop(key, None)

    def _fill(self, key: str, entry: MemoryEntry[Any] | None, now: float) -> None:
        if entry is None:
            self.core.set(key, ABSENT)
            return
        # Decoded by the core in use (memkv.redis.envelope): its float timestamps.
        decoded = cast("_core.MemoryEntry[Any]", entry)
        expires = decoded._expires
        if expires is None or expires > now:
            # The core's own entry carries the server's value, metadata and timestamps:
            # one object per copy, as in a LocalMemoryStore.
            self.core.put(
                key, decoded.value, decoded._metadata, decoded._created, decoded._updated, expires
            )

    # -- invalidation -------------------------------------------------------------------

    def drop(self, keys: Iterable[str]) -> None:
        """Forget ``keys`` and refuse the fills of their reads in flight (own writes)."""
        self._tick += 1
        tick, reading, invalidated, core = self._tick, self._reading, self._invalidated, self.core
        for key in keys:
            if key in reading:
                invalidated[key] = tick
            core.delete(key)

    def drop_prefix(self, prefix: str) -> None:
        """Forget the copies of keys starting with ``prefix`` (this store's ``clear``)
        and refuse the fills of every read in flight."""
        self._epoch += 1
        self.core.clear(prefix)

    def flush(self) -> None:
        """Forget every copy and refuse the fills of every read in flight."""
        self._epoch += 1
        self.core.clear()
        self._flushes += 1

    def on_push(self, message: list[Any]) -> None:
        """Handle a RESP3 push: ``["invalidate", [key, ...]]`` drops those keys,
        ``["invalidate", None]`` (``FLUSHDB``/``FLUSHALL``) flushes; others are ignored."""
        if len(message) != 2 or message[0] != b"invalidate":
            return
        redis_keys = message[1]
        if redis_keys is None:
            self.flush()
            return
        prefix, strip = self._prefix, len(self._prefix)
        keys = []
        for redis_key in redis_keys:
            if type(redis_key) is bytes and redis_key.startswith(prefix):
                try:
                    keys.append(redis_key[strip:].decode("utf-8", "surrogatepass"))
                except UnicodeDecodeError:
                    continue  # no str key of this store maps to these bytes
        self._invalidations += len(keys)
        self.drop(keys)

    # -- tracking -----------------------------------------------------------------------

    def node_options(self) -> dict[str, Any]:
        """Keyword arguments for the transport's ``Node``: every connection it opens
        tracks (before it carries a command) and reports pushes and its closing here."""
        return {
            "on_push": self.on_push,
            "on_ready": self.enable_tracking,
            "on_close": self.connection_closed,
        }

    async def enable_tracking(self, connection: Connection) -> None:
        """Turn on ``CLIENT TRACKING`` on a new connection (the transport's ``on_ready``).

        Raises ``TrackingUnavailableError`` if the server speaks only RESP2 or refuses
        the command (an ACL without ``client|tracking``, a server before Redis 6).
        """
        where = connection.where
        if connection.protocol != 3:
            raise TrackingUnavailableError(
                f"near_cache needs RESP3 invalidation pushes, but {where} answered HELLO 3 "
                "with an error (Redis/Valkey 6 or later speak RESP3)"
            )
        try:
            await connection.execute(b"CLIENT", b"TRACKING", b"ON")
        except ReplyError as err:
            raise TrackingUnavailableError(
                f"near_cache needs CLIENT TRACKING, which {where} refused: {err.message}"
            ) from None
        self._tracked.add(connection)
        loop = asyncio.get_running_loop()
        # A timer of a loop that has stopped never fires: the store moved, start anew.
        if self._health is None or self._health_loop is not loop:
            self._schedule_health_check(loop)

    def connection_closed(self, connection: Connection) -> None:
        """A connection closed, was lost, timed out or was given up (``on_close``):
        if it was tracked, the invalidations it would have carried are gone: flush."""
        if connection in self._tracked:
            self._tracked.discard(connection)
            # Nothing held and nothing being read: nothing can be stale (the cluster
            # router's one-question connections close right after CLUSTER SLOTS).
            if self._reading or self.core.counters()[7]:
                self.flush()
            if not self._tracked:
                self._stop_health_checks()

    def _schedule_health_check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._health_loop = loop
        self._health = loop.call_later(self._health_interval, self._check_health, loop)

    def _check_health(self, loop: asyncio.AbstractEventLoop) -> None:
        # A PING that gets no reply makes the transport time the connection out
        # (command_timeout), which flushes through connection_closed. Without it a
        # silent connection (no reset: a partition) would keep stale copies forever.
        self._health = None
        for connection in list(self._tracked):
            if connection.closed:
                self.connection_closed(connection)
                continue
            try:
                reply = asyncio.ensure_future(connection.execute(b"PING"), loop=loop)
            except Exception:  # lost meanwhile: on_close has flushed
                continue
            reply.add_done_callback(_quiet)
        if self._tracked:
            self._schedule_health_check(loop)

    def _stop_health_checks(self, *, forked: bool = False) -> None:
        health, self._health = self._health, None
        loop, self._health_loop = self._health_loop, None
        # A parent's loop is no child's to touch, nor is a loop that stopped.
        if health is not None and not forked and loop is not None and not loop.is_closed():
            health.cancel()

    def close(self) -> None:
        """Stop the health checks and forget every copy (the store is closing; not
        counted as a flush)."""
        self._stop_health_checks()
        self._tracked.clear()
        self._epoch += 1
        self.core.clear()

    # -- reporting ----------------------------------------------------------------------

    def stats(self) -> NearCacheStats:
        return NearCacheStats(
            max_entries=self.max_entries,
            entries=self.core.counters()[7],
            hits=self.hits,
            misses=self.misses,
            invalidations=self._invalidations,
            flushes=self._flushes,
        )

    def __repr__(self) -> str:
        return f"NearCache(max_entries={self.max_entries}, tracked={len(self._tracked)})"


def _quiet(reply: asyncio.Future[Any]) -> None:
    if not reply.cancelled():
        reply.exception()  # retrieved: a failed PING is reported by the flush it causes
