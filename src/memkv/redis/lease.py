"""Lua scripts and key layout for ``RedisMemoryStore``'s ``touch`` and fill leases.

A fill lease is a plain Redis string at ``b"\\xffmemkv-lease:" + namespace + b":" + key``
holding a random token, with a ``PX`` expiry; only the holder of the token renews or
releases it (compare-and-set scripts). No namespace or key encodes to bytes starting
with ``0xFF`` (no UTF-8 sequence does), so a lease key is never a user key, never
matches a namespace's ``SCAN`` pattern, and ``scan``/``clear`` never see it. See
``docs/redis-format.md``.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from redis.exceptions import NoScriptError

__all__ = ["LEASE_PREFIX", "RELEASE", "RENEW", "TOUCH", "Script", "run_script"]

#: What every lease key starts with (then the entry's full Redis key).
LEASE_PREFIX = b"\xffmemkv-lease:"


class Script(NamedTuple):
    """A Lua script and its SHA-1, for ``EVALSHA`` with an ``EVAL`` fallback."""

    source: str
    sha: str


def _script(source: str) -> Script:
    return Script(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


#: Deletes the lease only while it still holds the caller's token.
RELEASE = _script(
    """\
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
)

#: Extends the lease by ARGV[2] ms only while it still holds the caller's token.
RENEW = _script(
    """\
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
)

#: Gives a live envelope a new expiry: PX ARGV[1] ms (0: none) on the key and the
#: big-endian float64 ARGV[2] in its expires_at field (bytes 20-27); SETRANGE keeps
#: the key's TTL. Returns 1, 0 when the key is missing, -1 when it holds no envelope
#: of this version (ARGV[3], the 4-byte magic) or is not a string.
TOUCH = _script(
    """\
local head = redis.pcall('GETRANGE', KEYS[1], 0, 3)
if type(head) ~= 'string' then
  return -1
end
if head == '' then
  return 0
end
if head ~= ARGV[3] then
  return -1
end
redis.call('SETRANGE', KEYS[1], 20, ARGV[2])
if ARGV[1] == '0' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""
)


async def run_script(client: Any, script: Script, key: bytes, *args: Any) -> Any:
    """Run ``script`` on ``key`` (``EVALSHA``, then ``EVAL`` if the server lacks it)."""
    try:
        return await client.execute_command("EVALSHA", script.sha, 1, key, *args)
    except NoScriptError:
        # First use on this server, or its script cache was flushed (restart).
        return await client.execute_command("EVAL", script.source, 1, key, *args)
