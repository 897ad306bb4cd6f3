"""The Redis envelope (``docs/redis-format.md``) as bytes, without a server.

The golden byte strings are written out from the documented layout, not computed with
the code under test.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

pytest.importorskip("redis")

from memkv.codecs import JsonCodec, MsgpackCodec, PickleCodec
from memkv.errors import CodecError
from memkv.redis import ENVELOPE_HEADER, ENVELOPE_MAGIC
from memkv.redis.envelope import (
    Envelope,
    decode_entry,
    decode_envelope,
    encode_entry,
    encode_envelope,
    ttl_milliseconds,
)

MAGIC_AND_VERSION = "4d4b5601"  # "MKV", version 1
F1_5 = "3ff8000000000000"  # float64 1.5, big-endian
F2_5 = "4004000000000000"  # 2.5
F100_25 = "4059100000000000"  # 100.25
F0 = "0000000000000000"  # 0.0: never expires
META_M1 = "81a16d01"  # MessagePack {"m": 1}
PAYLOAD = "9201a374776f"  # MessagePack [1, "two"]

GOLDEN = bytes.fromhex(
    MAGIC_AND_VERSION + F1_5 + F2_5 + F100_25 + "01" + "00000004" + META_M1 + PAYLOAD
)
GOLDEN_ENVELOPE = Envelope(1.5, 2.5, 100.25, 1, {"m": 1}, bytes.fromhex(PAYLOAD))


def test_an_envelope_is_the_documented_bytes() -> None:
    assert encode_envelope(GOLDEN_ENVELOPE) == GOLDEN
    assert decode_envelope(GOLDEN, "k") == GOLDEN_ENVELOPE
    assert ENVELOPE_HEADER.size == 33
    assert bytes.fromhex(MAGIC_AND_VERSION) == ENVELOPE_MAGIC


@pytest.mark.parametrize(
    ("field", "value", "offset", "golden"),
    [
        ("created_at", 2.5, 4, F2_5),
        ("updated_at", 1.5, 12, F1_5),
        ("expires_at", 1.5, 20, F1_5),
        ("expires_at", None, 20, F0),
        ("codec_id", 2, 28, "02"),
        ("codec_id", 0, 28, "00"),
        ("metadata", None, 29, "00000000" + PAYLOAD),
        ("metadata", {}, 29, "00000000" + PAYLOAD),
        ("metadata", {"m": 1, "n": [None]}, 29, "00000008" + "82a16d01a16e91c0" + PAYLOAD),
        ("payload", b"", 33 + 4, ""),
    ],
)
def test_each_field_sits_at_its_documented_offset(
    field: str, value: Any, offset: int, golden: str
) -> None:
    data = encode_envelope(GOLDEN_ENVELOPE._replace(**{field: value}))
    expected = bytes.fromhex(golden)
    assert data[:offset] == GOLDEN[:offset]
    assert data[offset : offset + len(expected)] == expected
    if field not in ("metadata", "payload"):
        assert data[offset + len(expected) :] == GOLDEN[offset + len(expected) :]
    decoded = decode_envelope(data, "k")
    assert getattr(decoded, field) == (value or None if field == "metadata" else value)


def test_expires_at_zero_means_never() -> None:
    data = encode_entry(MsgpackCodec(), 1, "v", None, 1.5, 0)
    assert data[20:28] == bytes.fromhex(F0)
    assert decode_envelope(data, "k").expires_at is None
    assert decode_entry("k", data, MsgpackCodec(), 1).expires_at is None


def test_a_write_is_created_and_updated_now_and_expires_after_whole_milliseconds() -> None:
    data = encode_entry(MsgpackCodec(), 1, [1, "two"], {"m": 1}, 1.5, 98_750)
    assert data == GOLDEN.replace(bytes.fromhex(F2_5), bytes.fromhex(F1_5))
    entry = decode_entry("k", data, MsgpackCodec(), 1)
    assert (entry.key, entry.value, entry.metadata) == ("k", [1, "two"], {"m": 1})
    assert entry.created_at == entry.updated_at
    assert entry.created_at.timestamp() == 1.5
    assert entry.expires_at is not None
    assert entry.expires_at.timestamp() == 100.25


def test_sub_millisecond_ttl_rounds_to_one_millisecond_and_reports_it() -> None:
    assert ttl_milliseconds(None) == 0
    assert ttl_milliseconds(0.0004) == 1
    assert ttl_milliseconds(0.0016) == 2
    entry = decode_entry("k", encode_entry(MsgpackCodec(), 1, 1, None, 10.0, 1), MsgpackCodec(), 1)
    assert entry.expires_at is not None
    lifetime = (entry.expires_at - entry.updated_at).total_seconds()
    assert lifetime == pytest.approx(0.001, abs=1e-6)


def test_splicing_the_old_created_at_keeps_it_and_nothing_else() -> None:
    # What the set script does on an overwrite: SETRANGE 4 <old bytes 4..12>.
    old = encode_envelope(GOLDEN_ENVELOPE._replace(created_at=1.0, updated_at=1.0))
    new = encode_envelope(GOLDEN_ENVELOPE._replace(created_at=7.5, updated_at=7.5))
    spliced = new[:4] + old[4:12] + new[12:]
    assert decode_envelope(spliced, "k") == GOLDEN_ENVELOPE._replace(
        created_at=1.0, updated_at=7.5
    )


@pytest.mark.parametrize(
    ("codec", "number"), [(MsgpackCodec(), 1), (JsonCodec(), 2), (PickleCodec(), 3)]
)
def test_each_builtin_codec_round_trips_under_its_id(codec: Any, number: int) -> None:
    value = {"name": "Ada", "n": [1, 2.5, None]}
    data = encode_entry(codec, number, value, {"source": "test"}, 1.5, 0)
    assert data[28] == number
    assert data[33 + len(b"\x81\xa6source\xa4test") :] == codec.encode(value)
    entry = decode_entry("k", data, codec, number)
    assert (entry.value, entry.metadata) == (value, {"source": "test"})


def test_an_envelope_of_another_builtin_codec_is_refused_naming_both() -> None:
    data = encode_entry(JsonCodec(), 2, [1], None, 1.5, 0)
    with pytest.raises(CodecError, match=r"'k'.*json.*msgpack"):
        decode_entry("k", data, MsgpackCodec(), 1)


def test_an_application_codec_reads_envelopes_of_any_codec_id() -> None:
    class Raw:
        def encode(self, value: Any) -> bytes:
            return bytes(value)

        def decode(self, data: bytes) -> Any:
            return data

    data = encode_entry(Raw(), 0, b"abc", None, 1.5, 0)
    assert data[28] == 0
    assert decode_entry("k", data, Raw(), 0).value == b"abc"
    assert decode_entry("k", encode_entry(JsonCodec(), 2, 1, None, 1.5, 0), Raw(), 0).value == b"1"


SECRET = b"top-secret-payload"


def _header(
    created: float = 1.5, updated: float = 2.5, expires: float = 0.0, meta: int = 0
) -> bytes:
    return ENVELOPE_HEADER.pack(b"MKV", 1, created, updated, expires, 1, meta)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        SECRET * 3,
        GOLDEN[:32],
        b"XKV" + GOLDEN[3:],
        GOLDEN[:3] + b"\x02" + GOLDEN[4:],
        GOLDEN[:3] + b"\x00" + GOLDEN[4:],
        _header(meta=len(SECRET) + 1) + SECRET,
        _header(created=math.nan) + SECRET,
        _header(updated=math.inf) + SECRET,
        _header(created=-1.0) + SECRET,
        _header(expires=1e20) + SECRET,
        _header(expires=-0.5) + SECRET,
        _header(meta=2) + b"\x91\x01" + SECRET,  # metadata [1]: not a map
        _header(meta=3) + b"\x81\x01\x02" + SECRET,  # {1: 2}: a key that is not a str
        _header(meta=1) + b"\xc1" + SECRET,  # 0xc1: never valid MessagePack
        _header() + b"\xc1" + SECRET,  # a payload msgpack cannot read
    ],
    ids=[
        "empty",
        "no-magic",
        "short-header",
        "bad-magic",
        "version-2",
        "version-0",
        "metadata-past-the-end",
        "nan-created",
        "infinite-updated",
        "negative-created",
        "expires-past-9999",
        "negative-expires",
        "metadata-not-a-map",
        "metadata-non-str-key",
        "metadata-not-msgpack",
        "payload-not-msgpack",
    ],
)
def test_every_malformed_envelope_is_a_codec_error_naming_the_key_not_the_bytes(
    data: bytes,
) -> None:
    with pytest.raises(CodecError) as info:
        decode_entry("the-key", data, MsgpackCodec(), 1)
    assert "'the-key'" in str(info.value)
    chain: list[BaseException] = []
    error: BaseException | None = info.value
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert not any("top-secret" in f"{link} {link!r}" for link in chain)


def test_unencodable_metadata_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="MessagePack"):
        encode_envelope(GOLDEN_ENVELOPE._replace(metadata={"when": object()}))
