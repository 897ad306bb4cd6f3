"""``RedisMemoryStore``: the memkv contract on one Redis/Valkey server or a Redis Cluster.

Needs the ``redis`` extra: ``pip install "memkv[redis]"``.
"""

from __future__ import annotations

try:
    import msgspec  # noqa: F401 - checked here so that the message names the extra
    import redis  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised without the extra
    raise ImportError(
        f'RedisMemoryStore needs the redis extra: pip install "memkv[redis]" ({err})'
    ) from err

from memkv.redis.client import DEFAULT_OPTIONS
from memkv.redis.envelope import ENVELOPE_HEADER, ENVELOPE_MAGIC
from memkv.redis.store import RedisMemoryStore

__all__ = ["DEFAULT_OPTIONS", "ENVELOPE_HEADER", "ENVELOPE_MAGIC", "RedisMemoryStore"]
