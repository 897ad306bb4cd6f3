"""The value codecs of memkv.codecs, without a server."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest

pytest.importorskip("msgspec")

from memkv.codecs import (
    JsonCodec,
    MsgpackCodec,
    PickleCodec,
    codec_id,
    codec_name,
    encode_value,
    resolve_codec,
)
from memkv.errors import CodecError, InvalidArgumentError


@pytest.mark.parametrize(
    ("name", "codec_type", "number"),
    [("msgpack", MsgpackCodec, 1), ("json", JsonCodec, 2), ("pickle", PickleCodec, 3)],
)
def test_codecs_by_name(name: str, codec_type: type[Any], number: int) -> None:
    codec = resolve_codec(name)
    assert type(codec) is codec_type
    assert codec_id(codec) == number
    assert codec_name(codec) == name
    value = {"a": [1, 2.5, None, True], "b": "text"}
    assert codec.decode(encode_value(codec, value)) == value


def test_msgpack_keeps_bytes_and_datetimes() -> None:
    codec = resolve_codec("msgpack")
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert codec.decode(encode_value(codec, {"raw": b"\x00\xff", "when": when})) == {
        "raw": b"\x00\xff",
        "when": when,
    }


def test_unknown_codec_name_and_non_codecs_are_invalid_arguments() -> None:
    with pytest.raises(InvalidArgumentError, match="yaml"):
        resolve_codec("yaml")
    with pytest.raises(InvalidArgumentError, match="int"):
        resolve_codec(42)  # type: ignore[arg-type]


def test_a_codec_of_your_own_has_id_zero() -> None:
    class Text:
        def encode(self, value: Any) -> bytes:
            return str(value).encode()

        def decode(self, data: bytes) -> Any:
            return data.decode()

    codec = Text()
    assert resolve_codec(codec) is codec
    assert codec_id(codec) == 0
    assert codec_name(codec) == "Text"


def test_unencodable_value_is_a_codec_error_that_does_not_echo_the_value() -> None:
    class Secret:
        def __repr__(self) -> str:
            return "hunter2"

    for name in ("msgpack", "json", "pickle"):
        with pytest.raises(CodecError) as info:
            encode_value(resolve_codec(name), {"x": Secret(), "f": lambda: None})
        assert isinstance(info.value, TypeError)
        assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("name", ["msgpack", "json"])
def test_msgspec_failures_quote_no_part_of_the_value(name: str) -> None:
    @dataclasses.dataclass
    class Leaky:
        x: int = 1

        def __getattribute__(self, name: str) -> Any:
            if name == "x":
                raise ValueError("hunter2 from the value's own method")
            return object.__getattribute__(self, name)

    for value in ({"k": "hunter2\udcff"}, {"k": Leaky()}):
        with pytest.raises(CodecError) as info:
            encode_value(resolve_codec(name), value)
        assert "hunter2" not in str(info.value)
        assert "udcff" not in str(info.value)
        assert "\udcff" not in str(info.value)
        assert info.value.__cause__ is None
        assert info.value.__context__ is None


def test_pickle_failures_quote_neither_the_value_nor_chain_pickles_message() -> None:
    class Meta(type):
        def __repr__(cls) -> str:
            return "hunter2-repr"

    # A class pickle cannot find by name: pickle's message quotes its repr().
    hidden = Meta("Hidden", (), {})
    hidden.__qualname__ = "NoSuchName"
    with pytest.raises(CodecError) as info:
        encode_value(resolve_codec("pickle"), {"key": hidden})
    assert str(info.value) == "the pickle codec cannot encode a value of type dict: PicklingError"
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


def test_a_codec_of_your_own_failing_is_neither_quoted_nor_chained() -> None:
    class Quoting:
        def encode(self, value: Any) -> bytes:
            raise ValueError(f"cannot encode {value!r}")

        def decode(self, data: bytes) -> Any:
            return data

    with pytest.raises(CodecError) as info:
        encode_value(Quoting(), {"password": "hunter2"})
    assert str(info.value) == ("the Quoting codec cannot encode a value of type dict: ValueError")
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


def test_a_codec_returning_something_else_than_bytes_is_refused() -> None:
    class Wrong:
        def encode(self, value: Any) -> Any:
            return "text, not bytes"

        def decode(self, data: bytes) -> Any:
            return data

    with pytest.raises(CodecError, match="str, not bytes"):
        encode_value(Wrong(), 1)

    class Buffer(Wrong):
        def encode(self, value: Any) -> Any:
            return bytearray(b"ok")

    assert encode_value(Buffer(), 1) == b"ok"
