"""``cached``: an async function's results kept in a memkv store, keyed by its arguments.

The key of a call is ``"{module}:{qualname}({arguments})"``, where the arguments are
bound to the function's signature (so ``f(1)`` and ``f(x=1)`` share a key), defaults
applied, and encoded by ``encode_arguments``: a canonical text that depends on the values
only, never on ``hash()`` or ``repr`` of arbitrary objects, so every process computes
the same key for the same call and processes sharing a Redis share the entries.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from memkv.errors import InvalidArgumentError, InvalidKeyError
from memkv.manager import MemoryManager
from memkv.singleflight import check_fill_options
from memkv.store import TTL, MemoryStore
from memkv.validation import ttl_seconds

__all__ = ["CachedFunction", "cached", "encode_value"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

#: Encoded arguments longer than this are replaced by their SHA-256 in the key.
MAX_ENCODED_ARGUMENTS = 200
#: Keys of recent calls remembered per function (then all forgotten at once).
_RECENT_KEYS = 1024
#: Ints below this in magnitude are encoded inline (their key stays short).
_INT_INLINE = 10**50


class _Unencodable(InvalidKeyError):
    """A value ``encode_value`` has no stable encoding for."""

    def __init__(self, value: object) -> None:
        super().__init__(f"no stable encoding for a {type(value).__name__}")
        self.value = value


def encode_value(value: object) -> str:
    """The canonical text of ``value``, the same in every process and Python run.

    ``None`` is ``N``, ``True``/``False`` are ``T``/``F``, an ``int`` is ``i`` and its
    decimal digits (``x`` and its hex digits from 10**50 in magnitude: the decimal
    text of an int is limited by ``sys.set_int_max_str_digits()``, a per-process
    setting), a ``float`` is ``f`` and its ``repr`` (the shortest round-trip
    text), a ``str`` is ``s``, its length, ``:`` and itself, ``bytes`` are ``b`` and
    their hex digits, an ``Enum`` member is ``e``, the length and text
    of ``module:qualname.member``; a ``tuple``/``list`` is ``t(...)``/``l(...)`` of its
    items, a ``dict`` ``d(k=v,...)`` and a ``set``/``frozenset`` ``z(...)``, sorted by
    their encodings. Types are exact (``1``, ``1.0`` and ``True`` differ; subclasses
    other than enums are refused). Anything else, and containers nested too deeply
    (or holding themselves), raise ``InvalidKeyError``.
    """
    try:
        return _encode_value(value)
    except RecursionError:
        raise InvalidKeyError("no stable encoding: containers nested too deeply") from None


def _encode_value(value: object) -> str:
    kind = type(value)
    if kind is str:
        return f"s{len(value)}:{value}"  # type: ignore[arg-type]
    if kind is int:
        if -_INT_INLINE < value < _INT_INLINE:  # type: ignore[operator]
            return f"i{value}"
        return f"x{value:x}"
    if value is None:
        return "N"
    if kind is bool:
        return "T" if value else "F"
    if kind is float:
        return f"f{value!r}"
    if kind is bytes:
        return "b" + bytes.hex(value)  # type: ignore[arg-type]
    if kind is tuple or kind is list:
        items = ",".join([_encode_value(item) for item in value])  # type: ignore[attr-defined]
        return f"{'t' if kind is tuple else 'l'}({items})"
    if kind is dict:
        pairs = sorted(
            [f"{_encode_value(k)}={_encode_value(v)}" for k, v in value.items()]  # type: ignore[attr-defined]
        )
        return f"d({','.join(pairs)})"
    if kind is frozenset or kind is set:
        return f"z({','.join(sorted([_encode_value(item) for item in value]))})"  # type: ignore[attr-defined]
    if isinstance(value, enum.Enum):
        name = f"{kind.__module__}:{kind.__qualname__}.{value.name}"
        return f"e{len(name)}:{name}"
    raise _Unencodable(value)


class CachedFunction(Protocol[P, R_co]):
    """What ``cached`` returns: the function, plus ``invalidate`` and ``key_for``."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, bool]:
        """Delete the entry of the call with these arguments; ``True`` if one was live.

        For a method, pass the arguments without ``self``/``cls``.
        """
        ...

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The store key of the call with these arguments (without ``self``/``cls``)."""
        ...


class _KeyMaker:
    """Turns a call's arguments into its store key, the common shapes without
    ``inspect.Signature.bind``."""

    def __init__(self, func: Callable[..., Any], key: Callable[..., str] | None) -> None:
        # ":" ends the module name (which never holds one): module "a.b" with function
        # "f" and module "a" with class "b" and method "f" must not share keys.
        self._prefix = f"{func.__module__}:{func.__qualname__}"
        self._custom = key
        self._signature = signature = inspect.signature(func)
        parameters = list(signature.parameters.values())
        plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        #: A method's self/cls: passed to the function, left out of the key.
        self.skips_first = bool(parameters) and (
            parameters[0].kind in plain and parameters[0].name in ("self", "cls")
        )
        self._names = [parameter.name for parameter in parameters]
        # Calls with positional arguments only can skip bind() when every parameter is
        # a plain one: the arguments then line up with the parameters, defaults last.
        self._positional = all(parameter.kind in plain for parameter in parameters)
        self._count = len(parameters)
        defaults = [p.default for p in parameters if p.default is not inspect.Parameter.empty]
        self._defaults = tuple(defaults)
        self._required = self._count - len(defaults)
        #: For a function of one argument (besides self/cls): the keys of recent ``str``
        #: arguments (exact ``str`` only, so the dict's equality never hands one type's
        #: key to another), and where that argument sits in ``args``.
        self.index = self._count - 1
        self.recent: dict[str, str] | None = None
        self._memo: dict[tuple[Any, ...], str] = {}
        if key is None and self._positional and self.index == int(self.skips_first):
            self.recent = {}
        #: Whether every parameter is a plain positional-or-keyword one: then a wrapper
        #: with the very same signature can be made (see _exact_call).
        self.exact = all(
            parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            and not parameter.name.startswith("_memkv")
            for parameter in parameters
        )

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The key of a call with ``args`` and ``kwargs`` (``self`` included)."""
        if self._custom is not None:
            return self._custom_key(args, kwargs)
        given = len(args)
        if not kwargs and self._positional and self._required <= given <= self._count:
            keyed = args[1:] if self.skips_first else args
            # Calls whose arguments are all exact str, int or None are remembered by
            # their tuple: among such tuples, equality is the encoding's (1.0 and True
            # never get in, so they never share 1's key).
            for value in keyed:
                kind = type(value)
                if kind is not str and kind is not int and value is not None:
                    break
            else:
                made = self._memo.get(keyed)
                if made is None:
                    made = self._encode(keyed + self._defaults[given - self._required :])
                    if len(self._memo) >= _RECENT_KEYS:
                        self._memo.clear()
                    self._memo[keyed] = made
                return made
            values = args + self._defaults[given - self._required :]
        else:
            bound = self._signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = tuple(bound.arguments.values())
        return self._encode(values[1:] if self.skips_first else values)

    def _encode(self, values: tuple[Any, ...]) -> str:
        try:
            encoded = ",".join([_encode_value(value) for value in values])
        except (_Unencodable, RecursionError):
            raise self._unencodable(values) from None
        if len(encoded) > MAX_ENCODED_ARGUMENTS:
            encoded = "#" + hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self._prefix}({encoded})"

    def fast_key(self) -> Callable[[tuple[Any, ...], dict[str, Any]], str]:
        """``key``, with the commonest calls (one ``str`` or ``int`` as the only argument
        besides ``self``, given positionally) encoded inline and recent ``str`` keys
        remembered: a hit must cost little more than the ``get`` it makes."""
        key = self.key
        recent = self.recent
        if recent is None:
            return key
        arity = self._count
        index = self.index
        prefix = self._prefix
        short = MAX_ENCODED_ARGUMENTS - 12

        def one_argument_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            if not kwargs and len(args) == arity:
                value = args[index]
                kind = type(value)
                if kind is str:
                    made = recent.get(value)
                    if made is None and len(value) < short:
                        if len(recent) >= _RECENT_KEYS:
                            recent.clear()
                        made = recent[value] = f"{prefix}(s{len(value)}:{value})"
                    if made is not None:
                        return made
                elif kind is int and -_INT_INLINE < value < _INT_INLINE:
                    return f"{prefix}(i{value})"
            return key(args, kwargs)

        return one_argument_key

    def _custom_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        assert self._custom is not None
        made = self._custom(*args, **kwargs)
        if not isinstance(made, str):
            raise InvalidKeyError(
                f"the key= function of {self._prefix} must return a str, not {type(made).__name__}"
            )
        return made

    def _unencodable(self, values: tuple[Any, ...]) -> InvalidKeyError:
        names = self._names[1:] if self.skips_first else self._names
        for name, value in zip(names, values, strict=False):
            try:
                _encode_value(value)
            except (_Unencodable, RecursionError) as err:
                what = type(err.value).__name__ if isinstance(err, _Unencodable) else "nesting"
                return InvalidKeyError(
                    f"cannot make a stable cache key of argument {name!r} of {self._prefix} "
                    f"(a {type(value).__name__}; unencodable: {what}): pass key= to cached() "
                    "to build the key yourself"
                )
        return InvalidKeyError(f"cannot make a stable cache key for a call of {self._prefix}")


def cached(
    store: MemoryStore[Any] | MemoryManager[Any],
    ttl: TTL = None,
    *,
    key: Callable[..., str] | None = None,
    refresh_after: TTL = None,
    ttl_jitter: float = 0.0,
) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
    """Decorate an ``async def`` so that its results are kept in ``store``.

    A call looks its key up in ``store`` (a ``MemoryStore``, or a ``MemoryManager``:
    its default store, looked up at each call) and returns the stored value; a miss
    runs the function through ``get_or_set`` with ``ttl``, ``refresh_after`` and
    ``ttl_jitter``, so concurrent calls with the same arguments run it once (across
    processes on Redis) and ``refresh_after`` refreshes in the background.

    Keys are ``"{module}:{qualname}({arguments})"`` with the arguments bound to the
    signature, defaults applied, and encoded canonically (``encode_value``: ``None``,
    ``bool``, ``int``, ``float``, ``str``, ``bytes``, enum members, and tuples, lists,
    dicts, sets and frozensets of those); an encoding longer than 200 characters is
    replaced by its SHA-256. Closures made by one ``def`` share a qualified name, so
    they share keys: give each its own ``key=``. A method's first parameter named
    ``self`` or ``cls`` is left out of the key, so every instance shares the entries
    (put what tells instances apart in the arguments, or in ``key=``). An argument with no stable
    encoding raises ``InvalidKeyError`` naming it. ``key``, a callable taking the
    function's arguments (``self`` included) and returning a ``str``, replaces all of
    this: its result is the key, as is.

    ``await f.invalidate(*args, **kwargs)`` deletes the entry of that call and
    ``f.key_for(*args, **kwargs)`` returns its key (for a method, without ``self``).
    A hit costs the key's encoding and one ``get``: about 1.5x a bare ``get`` on the
    local store (``bench/``). Decorating anything but an ``async def``, a bad
    ``ttl``/``refresh_after``/``ttl_jitter`` or a ``store`` that is neither raises
    ``InvalidArgumentError``/``InvalidTTLError`` at once.

    >>> import asyncio
    >>> from memkv import LocalMemoryStore
    >>> store = LocalMemoryStore()
    >>> calls = []
    >>> @cached(store, ttl=60)
    ... async def profile(user_id: int) -> dict[str, str]:
    ...     calls.append(user_id)  # stands for a slow lookup
    ...     return {"name": f"user {user_id}"}
    >>> async def main() -> None:
    ...     print(await profile(7), await profile(user_id=7), calls)
    ...     await profile.invalidate(7)
    ...     print(await profile(7), calls)
    >>> asyncio.run(main())
    {'name': 'user 7'} {'name': 'user 7'} [7]
    {'name': 'user 7'} [7, 7]
    """
    if isinstance(store, MemoryManager):
        manager: MemoryManager[Any] | None = store
        direct: MemoryStore[Any] | None = None
    elif isinstance(store, MemoryStore):
        manager, direct = None, store
    else:
        raise InvalidArgumentError(
            f"cached() needs a MemoryStore or a MemoryManager, not {type(store).__name__}"
        )
    seconds = ttl_seconds(ttl)
    refresh, jitter = check_fill_options(_no_factory, seconds, refresh_after, ttl_jitter)
    if key is not None and not callable(key):
        raise InvalidArgumentError(
            f"key= must be a callable returning a str, not {type(key).__name__}"
        )

    def decorate(func: Callable[P, Awaitable[R]]) -> CachedFunction[P, R]:
        if isinstance(func, (staticmethod, classmethod)):
            raise InvalidArgumentError(
                f"cached() decorates async def functions, not a {type(func).__name__}: "
                f"put @{type(func).__name__} above @cached"
            )
        if not inspect.iscoroutinefunction(func):
            raise InvalidArgumentError(
                f"cached() decorates async def functions, not a {type(func).__name__}"
            )
        if not isinstance(getattr(func, "__module__", None), str) or not isinstance(
            getattr(func, "__qualname__", None), str
        ):
            # A functools.partial has neither, and its bound arguments would not be in
            # the key: partial(f, 1) and partial(f, 2) would share entries.
            raise InvalidArgumentError(
                f"cached() needs a function with a __module__ and a __qualname__ for its "
                f"keys, not a {type(func).__name__}: decorate the async def itself"
            )
        maker = _KeyMaker(func, key)
        make_key = maker.fast_key()

        recent = maker.recent
        get_now = None if direct is None else direct._get_now
        # A hit on a local store without refresh_after costs the key and the core's get,
        # nothing more; for one str argument, the key is a dict lookup.
        fast = get_now is not None and refresh is None
        arity, index = maker.index + 1, maker.index

        async def lookup_call(*args: P.args, **kwargs: P.kwargs) -> R:
            if fast:
                if (
                    recent is not None
                    and not kwargs
                    and len(args) == arity
                    and type(args[index]) is str
                ):
                    store_key = recent.get(args[index]) or make_key(args, kwargs)  # type: ignore[call-overload]
                else:
                    store_key = make_key(args, kwargs)
                entry = get_now(store_key)  # type: ignore[misc]
                if entry is not None:
                    found: R = entry.value
                    return found
            return await lookup(args, kwargs)

        async def lookup(args: Any, kwargs: Any) -> R:
            target = direct if manager is None else manager.store()
            assert target is not None
            store_key = make_key(args, kwargs)
            target_get_now = target._get_now
            if target_get_now is not None:
                entry = target_get_now(store_key)
                if entry is not None and (
                    refresh is None or target._store_time() - entry._updated < refresh
                ):
                    found: R = entry.value
                    return found
            # get_or_set reads the key itself (sharing the read among concurrent
            # callers on a server), and fills or refreshes it as needed.
            entry = await target.get_or_set(
                store_key,
                lambda: func(*args, **kwargs),
                seconds,
                refresh_after=refresh,
                ttl_jitter=jitter,
            )
            value: R = entry.value
            return value

        call: Callable[P, Coroutine[Any, Any, R]] = lookup_call
        if fast and maker.exact:
            call = _exact_call(maker, get_now, lookup)

        def key_for(*args: Any, **kwargs: Any) -> str:
            # self/cls never enters the key: stand None in for it.
            return make_key((None, *args) if maker.skips_first else args, kwargs)

        async def invalidate(*args: Any, **kwargs: Any) -> bool:
            target = direct if manager is None else manager.store()
            assert target is not None
            return await target.delete(key_for(*args, **kwargs))

        functools.update_wrapper(call, func)
        call.invalidate = invalidate  # type: ignore[attr-defined]
        call.key_for = key_for  # type: ignore[attr-defined]
        return cast(CachedFunction[P, R], call)

    return decorate


def _exact_call(
    maker: _KeyMaker,
    get_now: Any,
    lookup: Callable[[tuple[Any, ...], dict[str, Any]], Awaitable[Any]],
) -> Any:
    """A wrapper with the function's own signature (plain parameters, defaults kept),
    made as ``dataclasses`` and ``namedtuple`` make methods, for a local store.

    Packing ``*args, **kwargs`` costs a tuple and a dict per call, about a third of a
    local ``get``. A hit of a function of one ``str`` argument then costs a dict lookup
    and the core's ``get`` on top of its own coroutine; other hits cost the key
    (``_KeyMaker.key``) and the core's ``get``.
    """
    names = maker._names
    first_default = len(names) - len(maker._defaults)
    parameters = ", ".join(
        name if index < first_default else f"{name}=_memkv_default_{index}"
        for index, name in enumerate(names)
    )
    arguments = "".join(f"{name}, " for name in names)
    if maker.recent is not None:
        lines = [
            f"    if _memkv_type({names[-1]}) is _memkv_str:",
            f"        _memkv_key = _memkv_recent_get({names[-1]})",
            "        if _memkv_key is not None:",
            "            _memkv_entry = _memkv_get_now(_memkv_key)",
            "            if _memkv_entry is not None:",
            "                return _memkv_entry.value",
        ]
    else:
        lines = [
            f"    _memkv_entry = _memkv_get_now(_memkv_key_of(({arguments}), _memkv_none))",
            "    if _memkv_entry is not None:",
            "        return _memkv_entry.value",
        ]
    source = "\n".join(
        [
            f"async def call({parameters}):",
            *lines,
            f"    return await _memkv_lookup(({arguments}), {{}})",
            "",
        ]
    )
    namespace: dict[str, Any] = {
        # Builtins under names of ours: a parameter may be called "type" or "str".
        "_memkv_type": type,
        "_memkv_str": str,
        "_memkv_recent_get": None if maker.recent is None else maker.recent.get,
        "_memkv_get_now": get_now,
        "_memkv_key_of": maker.key,
        "_memkv_none": {},
        "_memkv_lookup": lookup,
    }
    for index, default in enumerate(maker._defaults, start=first_default):
        namespace[f"_memkv_default_{index}"] = default
    # The names are the function's own parameter identifiers, checked by its def.
    exec(source, namespace)
    return namespace["call"]


async def _no_factory() -> None:
    """Stands in for the factory when ``cached`` checks its options at decoration."""
