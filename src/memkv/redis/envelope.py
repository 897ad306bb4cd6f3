"""The envelope every memkv entry is stored in on Redis (``docs/redis-format.md``).

Pure functions from entries to bytes and back: no store, no server.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple, TypeVar

import msgspec

from memkv._core import make_entry
from memkv.codecs import CODEC_IDS, Codec, encode_value
from memkv.entry import MemoryEntry
from memkv.errors import CodecError

__all__ = [
    "ENVELOPE_HEADER",
    "ENVELOPE_MAGIC",
    "Envelope",
    "decode_entry",
    "decode_envelope",
    "encode_entry",
    "encode_envelope",
    "ttl_milliseconds",
]

T = TypeVar("T")

#: Magic and version that start every envelope: b"MKV" then version 1.
ENVELOPE_MAGIC = b"MKV\x01"
#: magic (3s), version (B), created_at, updated_at, expires_at (3 x float64, 0.0 = never),
#: codec id (B), metadata length (uint32); big-endian, 33 bytes. See docs/redis-format.md.
ENVELOPE_HEADER = struct.Struct(">3sBdddBI")
_HEADER_SIZE = ENVELOPE_HEADER.size
_MAGIC, _VERSION = ENVELOPE_MAGIC[:3], ENVELOPE_MAGIC[3]
#: 9999-12-31 UTC: the last instant a ``datetime`` can hold.
_MAX_TIMESTAMP = 253402300799.0

_CODEC_NAMES = {number: codec.name for codec, number in CODEC_IDS.items()}
_metadata_encoder = msgspec.msgpack.Encoder()
_metadata_decoder = msgspec.msgpack.Decoder(dict[str, Any])


class Envelope(NamedTuple):
    """The fields of one stored envelope; ``expires_at`` is ``None`` for "never"."""

    created_at: float
    updated_at: float
    expires_at: float | None
    codec_id: int
    metadata: dict[str, Any] | None
    payload: bytes


def ttl_milliseconds(seconds: float | None) -> int:
    """The ``PX`` a write with this TTL uses: whole milliseconds, at least 1; 0 = none.

    ``seconds`` is at most 100 years (``ttl_seconds`` checks), so it never overflows
    the server.
    """
    return 0 if seconds is None else max(1, round(seconds * 1000))


def encode_envelope(envelope: Envelope) -> bytes:
    """The bytes stored for ``envelope`` (metadata as MessagePack, payload as given).

    Raises ``CodecError`` for metadata MessagePack cannot encode.
    """
    meta = _encode_metadata(envelope.metadata) if envelope.metadata else b""
    header = ENVELOPE_HEADER.pack(
        _MAGIC,
        _VERSION,
        envelope.created_at,
        envelope.updated_at,
        envelope.expires_at or 0.0,
        envelope.codec_id,
        len(meta),
    )
    return header + meta + envelope.payload


def decode_envelope(data: bytes, key: str) -> Envelope:
    """The envelope in ``data``, the value stored at ``key``.

    Raises ``CodecError`` naming ``key`` (never echoing the bytes) for anything that is
    not a whole version-1 envelope: too short, no magic, another version, a metadata
    length past the end, a timestamp outside what ``datetime`` holds, metadata that is
    not a MessagePack map with ``str`` keys.
    """
    if len(data) < _HEADER_SIZE or data[:3] != _MAGIC:
        raise CodecError(f"the value at key {key!r} is not a memkv entry")
    _magic, version, created, updated, expires, codec_id, meta_len = ENVELOPE_HEADER.unpack_from(
        data
    )
    if version != _VERSION:
        raise CodecError(
            f"the value at key {key!r} is a memkv envelope of version {version}; "
            f"this memkv reads version {_VERSION}"
        )
    body = _HEADER_SIZE + meta_len
    if body > len(data) or not (
        _valid_timestamp(created)
        and _valid_timestamp(updated)
        and (expires == 0.0 or _valid_timestamp(expires))
    ):
        raise CodecError(
            f"the value at key {key!r} is a damaged memkv envelope "
            "(bad metadata length or timestamp)"
        )
    try:
        metadata = _metadata_decoder.decode(data[_HEADER_SIZE:body]) if meta_len else None
    except msgspec.DecodeError as err:
        raise CodecError(
            f"the value at key {key!r} is a damaged memkv envelope "
            f"(unreadable metadata: {type(err).__name__})"
        ) from None
    return Envelope(created, updated, expires or None, codec_id, metadata, data[body:])


def encode_entry(
    codec: Codec,
    codec_id: int,
    value: Any,
    metadata: dict[str, Any] | None,
    now: float,
    px: int,
) -> bytes:
    """The envelope of a write at ``now`` with ``PX`` ``px`` (0 = no expiry).

    ``created_at == updated_at == now``; ``expires_at`` is what the server will do,
    ``now`` plus whole milliseconds. Raises ``CodecError`` for a value or metadata that
    cannot be encoded.
    """
    expires = now + px / 1000 if px else None
    return encode_envelope(
        Envelope(now, now, expires, codec_id, metadata, encode_value(codec, value))
    )


def decode_entry(key: str, data: bytes, codec: Codec, codec_id: int) -> MemoryEntry[Any]:
    """The entry stored at ``key`` as ``data``, its value decoded with ``codec``.

    Raises ``CodecError`` naming the key for a malformed envelope, one written with
    another built-in codec (application codecs, id 0, are not told apart), or a
    payload ``codec`` cannot decode; the bytes are never echoed.
    """
    envelope = decode_envelope(data, key)
    stored = envelope.codec_id
    if stored != codec_id and stored and codec_id:
        raise CodecError(
            f"the value at key {key!r} was written with the "
            f"{_CODEC_NAMES.get(stored, f'id {stored}')} codec; "
            f"this store uses the {_CODEC_NAMES.get(codec_id)} codec"
        )
    try:
        value = codec.decode(envelope.payload)
    except Exception as err:
        raise CodecError(
            f"the value at key {key!r} cannot be decoded with the "
            f"{_CODEC_NAMES.get(codec_id, 'application')} codec ({type(err).__name__})"
        ) from None
    return make_entry(
        key,
        value,
        envelope.metadata,
        envelope.created_at,
        envelope.updated_at,
        envelope.expires_at,
    )


def _valid_timestamp(timestamp: float) -> bool:
    # Within what datetime can represent (years 1970 to 9999); NaN fails both tests.
    return 0.0 <= timestamp < _MAX_TIMESTAMP


def _encode_metadata(metadata: dict[str, Any]) -> bytes:
    try:
        return _metadata_encoder.encode(metadata)
    except Exception as err:
        raise CodecError(
            f"metadata must be MessagePack-encodable: {type(err).__name__}: {err}"
        ) from err
