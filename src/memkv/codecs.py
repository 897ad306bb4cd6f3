"""Value codecs for ``RedisMemoryStore``: MessagePack (default), JSON, pickle, or your own.

A codec turns a value into ``bytes`` and back. ``"msgpack"`` and ``"json"`` run on
msgspec and round-trip JSON-like data (``None``, ``bool``, ``int``, ``float``, ``str``,
lists and dicts with ``str`` keys; tuples and sets come back as lists). msgpack also
keeps ``bytes`` and ``datetime``. ``"pickle"`` keeps any picklable Python object but is
**unsafe on a shared server**: whoever can write to the server can make every reader run
code. It is used only when asked for by name. Any object with ``encode(value) -> bytes``
and ``decode(data) -> value`` is a codec too.

>>> codec = resolve_codec("json")
>>> codec.decode(codec.encode({"a": [1, 2]}))
{'a': [1, 2]}
"""

from __future__ import annotations

import pickle
from types import ModuleType
from typing import Any, ClassVar, Protocol, runtime_checkable

import msgspec

from memkv.errors import CodecError, InvalidArgumentError

__all__ = [
    "CODEC_IDS",
    "Codec",
    "JsonCodec",
    "MsgpackCodec",
    "PickleCodec",
    "codec_id",
    "codec_name",
    "encode_value",
    "resolve_codec",
]


@runtime_checkable
class Codec(Protocol):
    """What ``RedisMemoryStore`` needs from a codec.

    ``encode`` may raise any exception for a value it cannot encode; the store reports
    it as ``CodecError`` and writes nothing. ``decode`` gets exactly the bytes that
    ``encode`` returned.
    """

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class _MsgspecCodec:
    """A codec of one msgspec format (its ``Encoder`` and ``Decoder``)."""

    name: str
    _format: ClassVar[ModuleType]

    def __init__(self) -> None:
        self._encoder = self._format.Encoder()
        self._decoder = self._format.Decoder()

    def encode(self, value: Any) -> bytes:
        try:
            return self._encoder.encode(value)  # type: ignore[no-any-return]
        except (TypeError, OverflowError) as err:
            # msgspec's own messages for these name a type or a range, never the value.
            raise _encode_error(self.name, value, f"{type(err).__name__}: {err}") from err
        except Exception as err:
            # Others quote the value (UnicodeEncodeError: the character and where it
            # is) or come from the value's own methods: shown by type only, and raised
            # outside this block so that the error does not travel with ours.
            failure: type[Exception] = type(err)
        raise _encode_error(self.name, value, failure.__name__)

    def decode(self, data: bytes) -> Any:
        try:
            return self._decoder.decode(data)
        except Exception as err:
            raise _decode_error(self.name, data, err) from err

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MsgpackCodec(_MsgspecCodec):
    """MessagePack through msgspec: compact and fast (the default).

    ``encode`` and ``decode`` raise ``CodecError`` for what they cannot handle.
    """

    name = "msgpack"
    _format: ClassVar[ModuleType] = msgspec.msgpack


class JsonCodec(_MsgspecCodec):
    """JSON through msgspec: readable with any tool (``bytes`` come back as base64 str).

    ``encode`` and ``decode`` raise ``CodecError`` for what they cannot handle.
    """

    name = "json"
    _format: ClassVar[ModuleType] = msgspec.json


class PickleCodec:
    """pickle at the highest protocol. Unsafe on a shared server: decoding runs code.

    ``encode`` and ``decode`` raise ``CodecError`` for what they cannot handle.
    """

    name = "pickle"

    # pickle's messages quote repr() of what it cannot pickle, and pieces of what it
    # cannot unpickle: its errors are raised outside the except block, so that neither
    # their text nor the error itself (as __cause__ or __context__) travels with ours.

    def encode(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:
            failure: type[Exception] = type(err)
        raise _encode_error(self.name, value, failure.__name__)

    def decode(self, data: bytes) -> Any:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            # pickle.loads would also take a str, or an object with the buffer protocol.
            raise _decode_error(self.name, data, TypeError("not bytes"))
        try:
            return pickle.loads(data)
        except Exception as err:
            failure = err
        raise _decode_error(self.name, data, failure)

    def __repr__(self) -> str:
        return "PickleCodec()"


def _encode_error(name: str, value: object, reason: str) -> CodecError:
    return CodecError(
        f"the {name} codec cannot encode a value of type {type(value).__name__}: {reason}"
    )


def _decode_error(name: str, data: object, err: Exception) -> CodecError:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return CodecError(f"the {name} codec decodes bytes, not {type(data).__name__}")
    # The error's own message may quote the data (pickle does): only its type is shown.
    return CodecError(f"the {name} codec cannot decode these bytes: {type(err).__name__}")


_BY_NAME: dict[str, type[MsgpackCodec | JsonCodec | PickleCodec]] = {
    "msgpack": MsgpackCodec,
    "json": JsonCodec,
    "pickle": PickleCodec,
}

#: The codec id a memkv envelope records (0: a codec of your own).
CODEC_IDS: dict[type[Any], int] = {MsgpackCodec: 1, JsonCodec: 2, PickleCodec: 3}


def resolve_codec(codec: str | Codec) -> Codec:
    """Return the codec named ``"msgpack"``, ``"json"`` or ``"pickle"``, or ``codec`` itself.

    Anything else raises ``InvalidArgumentError`` (a ``ValueError``).
    """
    if isinstance(codec, str):
        try:
            return _BY_NAME[codec]()
        except KeyError:
            raise InvalidArgumentError(
                f"unknown codec {codec!r}; expected 'msgpack', 'json', 'pickle' "
                "or an object with encode() and decode()"
            ) from None
    if callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None)):
        return codec
    raise InvalidArgumentError(
        f"a codec must be a name or an object with encode() and decode(), "
        f"not {type(codec).__name__}"
    )


def codec_id(codec: Codec) -> int:
    """The id recorded in envelopes for ``codec`` (0 for a codec of your own)."""
    return CODEC_IDS.get(type(codec), 0)


def codec_name(codec: Codec) -> str:
    """A short name for messages: the built-in name, else the codec's type name."""
    name = getattr(codec, "name", None) if type(codec) in CODEC_IDS else None
    return name if isinstance(name, str) else type(codec).__name__


_BUILT_IN_CODECS = (MsgpackCodec, JsonCodec, PickleCodec)


def encode_value(codec: Codec, value: Any) -> bytes:
    """``codec.encode(value)`` as ``bytes``, or ``CodecError`` (the value is never echoed)."""
    if isinstance(codec, _BUILT_IN_CODECS):
        return codec.encode(value)  # raises CodecError itself, never echoing the value
    try:
        data = codec.encode(value)
    except Exception as err:
        failure: type[Exception] | None = type(err)
    else:
        failure = None
    if failure is not None:
        # Neither the error's message nor the error itself (raised outside the except
        # block, so it is not chained): a codec of your own may quote the value in it.
        raise _encode_error(codec_name(codec), value, failure.__name__)
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CodecError(
                f"the {codec_name(codec)} codec returned {type(data).__name__}, not bytes"
            )
        data = bytes(data)
    return data
