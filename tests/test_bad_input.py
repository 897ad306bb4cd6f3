"""Bad input raises a ``MemKVError`` that is also a ``TypeError`` or ``ValueError``, and
loses nothing.

Generated, not written case by case: each test finds the public callables of its target
by introspection (public methods and ``inspect.signature``; a module's ``__all__``) and
calls each one once per value of ``BAD_VALUES`` in each parameter, the other parameters
holding valid values from an argument table. Whatever a call raises must be a memkv
error that is also the matching builtin, and the seeded entries must still be there
afterwards. A public callable (or parameter) missing from its table fails the test, so
a method added later is covered as soon as it is added.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast

import pytest
from click.testing import CliRunner
from langchain_core.outputs import Generation
from langgraph.store.base import GetOp, InvalidNamespaceError
from opentelemetry.metrics import get_meter

import memkv
from memkv import (
    LocalMemoryStore,
    MemoryManager,
    MemoryStore,
    _core_py,
    caching,
    codecs,
    metrics,
    urls,
)
from memkv.cli import cli
from memkv.errors import MemKVError
from memkv.integrations._sync_bridge import BridgedAdapter
from memkv.integrations.langchain import MemkvByteStore, MemkvLLMCache, MemkvStore
from memkv.integrations.langgraph import MemkvCache
from memkv.integrations.langgraph import MemkvStore as LangGraphStore
from memkv.metrics import otel, prometheus
from tests.helpers import StoreHarness

BAD_VALUES: dict[str, object] = {
    "None": None,
    "True": True,
    "False": False,
    "zero": 0,
    "negative int": -1,
    "int": 7,
    "huge int": 2**200,
    "huge negative int": -(2**200),
    "enormous int": 10**5000,
    "float": 1.5,
    "negative float": -0.5,
    "nan": math.nan,
    "inf": math.inf,
    "empty str": "",
    "str": "text",
    "bytes": b"bytes",
    "bytearray": bytearray(b"bytes"),
    "empty list": [],
    "list of str and int": ["text", 1],
    "list of None": [None],
    "tuple": ("text", 1),
    "empty dict": {},
    "dict": {"text": 1},
    "int-keyed dict": {1: "text"},
    "set": {"text"},
    "object": object(),
    "callable returning str": lambda: "text",
    "type": int,
}

#: Seeded in every target's store before the calls; checked after each one.
SEEDS = {"seed:1": "one", "seed:2": {"two": [2]}, "seed:3": 3}


@dataclass(frozen=True)
class Arg:
    """A parameter's valid value (made fresh per call), used while another one is bad.

    ``removes_seeds``: bad values that are in fact valid here and would, as asked,
    remove the seeded entries (``clear(None)``); they are not tried.
    """

    valid: Callable[[], object]
    removes_seeds: Callable[[object], bool] = lambda value: False


def given(value: object) -> Arg:
    return Arg(lambda: value)


def _prefix_of_a_seed(value: object) -> bool:
    return value is None or (
        isinstance(value, str) and any(key.startswith(value) for key in SEEDS)
    )


#: A method that takes no argument: nothing to call it with, but listed so that the
#: table still names every public callable.
NO_ARGS: dict[str, Arg] = {}


async def _factory() -> str:
    return "computed"


KEY = given("probe")
TTL = given(60)
METADATA = given(None)
KEYS = Arg(lambda: ["probe"])

STORE_METHODS: dict[str, dict[str, Arg]] = {
    "get": {"key": KEY},
    "set": {"key": KEY, "value": given("value"), "ttl": TTL, "metadata": METADATA},
    "delete": {"key": KEY},
    "exists": {"key": KEY},
    "scan": {"pattern": given("probe"), "batch_size": given(10)},
    "clear": {"pattern": Arg(lambda: "probe", removes_seeds=_prefix_of_a_seed)},
    "get_many": {"keys": KEYS},
    "set_many": {"items": Arg(lambda: {"probe": 1}), "ttl": TTL, "metadata": METADATA},
    "delete_many": {"keys": KEYS},
    "get_or_set": {
        "key": KEY,
        "factory": Arg(lambda: _factory),
        "ttl": TTL,
        "metadata": METADATA,
        "refresh_after": given(None),
        "ttl_jitter": given(0.0),
    },
    "add": {"key": KEY, "value": given("value"), "ttl": TTL, "metadata": METADATA},
    "touch": {"key": KEY, "ttl": TTL},
    "record_latency": {"enabled": given(False)},
    "close": NO_ARGS,
    "stats": NO_ARGS,
    "latency": NO_ARGS,
    "purge_expired": NO_ARGS,  # LocalMemoryStore
}


def store_table(url: str | None) -> dict[str, dict[str, Arg]]:
    """Every store's methods, plus its constructor and, on Redis, ``from_url``."""
    if url is None:
        constructor = {"max_entries": given(None), "clock": given(None)}
        return {**STORE_METHODS, "__init__": constructor}
    from tests.redis_servers import unique_namespace

    constructor = {
        "url_or_client": given(url),
        "namespace": Arg(unique_namespace),
        "codec": given(None),
        **{
            option: given(None)
            for option in (
                "socket_timeout",
                "connect_timeout",
                "retries",
                "backoff_base",
                "backoff_cap",
                "max_connections",
                "near_cache",
            )
        },
    }
    return {**STORE_METHODS, "__init__": constructor, "from_url": {"url": given(url)}}


MANAGER_METHODS: dict[str, dict[str, Arg]] = {
    **{
        name: {**params, "store": given(None)}
        for name, params in STORE_METHODS.items()
        if name not in ("record_latency", "close", "stats", "latency", "purge_expired")
    },
    "__init__": NO_ARGS,
    "from_urls": {"urls": Arg(lambda: {"probe": "memory://"}), "default": given(None)},
    "register_store": {
        "name": given("probe"),
        "store": Arg(LocalMemoryStore),
        "default": given(False),
        "replace": given(False),
    },
    "unregister_store": {"name": given("probe")},
    "store": {"name": given(None)},
    "close": NO_ARGS,
}

ADAPTER_METHODS: dict[str, dict[str, Arg]] = {
    "__init__": {
        "store": Arg(LocalMemoryStore),
        "ttl": given(None),
        "metadata": given(None),
        "batch_size": given(10),
    },
    "mget": {"keys": KEYS},
    "amget": {"keys": KEYS},
    "mset": {"key_value_pairs": Arg(lambda: [("probe", b"value")])},
    "amset": {"key_value_pairs": Arg(lambda: [("probe", b"value")])},
    "mdelete": {"keys": KEYS},
    "amdelete": {"keys": KEYS},
    "yield_keys": {"prefix": given("probe")},
    "ayield_keys": {"prefix": given("probe")},
    "close": NO_ARGS,
    "aclose": NO_ARGS,
}

CACHE_KEYS = Arg(lambda: [(("probe",), "key")])
CACHE_PAIRS = Arg(lambda: {(("probe",), "key"): ("value", 60)})

LANGGRAPH_CACHE_METHODS: dict[str, dict[str, Arg]] = {
    "__init__": {"store": Arg(LocalMemoryStore), "serde": given(None)},
    "get": {"keys": CACHE_KEYS},
    "aget": {"keys": CACHE_KEYS},
    "set": {"pairs": CACHE_PAIRS},
    "aset": {"pairs": CACHE_PAIRS},
    # None clears the cache's own entries, never the seeds: no value is skipped.
    "clear": {"namespaces": Arg(lambda: [("probe",)])},
    "aclear": {"namespaces": Arg(lambda: [("probe",)])},
    "close": NO_ARGS,
    "aclose": NO_ARGS,
}

LLM_CACHE_METHODS: dict[str, dict[str, Arg]] = {
    "__init__": {"store": Arg(LocalMemoryStore), "ttl": given(None)},
    "lookup": {"prompt": given("probe"), "llm_string": given("model")},
    "alookup": {"prompt": given("probe"), "llm_string": given("model")},
    "update": {
        "prompt": given("probe"),
        "llm_string": given("model"),
        "return_val": Arg(lambda: [Generation(text="probe")]),
    },
    "aupdate": {
        "prompt": given("probe"),
        "llm_string": given("model"),
        "return_val": Arg(lambda: [Generation(text="probe")]),
    },
    "clear": NO_ARGS,  # options (**kwargs): test_langchain_llm_cache refuses them
    "aclear": NO_ARGS,
    "close": NO_ARGS,
    "aclose": NO_ARGS,
}

NAMESPACE = given(("probe",))
READ_TTL = given(None)
SEARCH = {
    "namespace_prefix": NAMESPACE,
    "query": given(None),
    "filter": given(None),
    "limit": given(10),
    "offset": given(0),
    "refresh_ttl": READ_TTL,
}
PUT = {
    "namespace": NAMESPACE,
    "key": given("probe"),
    "value": Arg(lambda: {"text": "value"}),
    "index": given(None),
    "ttl": given(None),
}
LIST = {
    "prefix": given(None),
    "suffix": given(None),
    "max_depth": given(None),
    "limit": given(10),
    "offset": given(0),
}
LANGGRAPH_METHODS: dict[str, dict[str, Arg]] = {
    "__init__": {"store": Arg(LocalMemoryStore), "index": given(None), "ttl": given(None)},
    "batch": {"ops": Arg(lambda: [GetOp(("probe",), "probe")])},
    "abatch": {"ops": Arg(lambda: [GetOp(("probe",), "probe")])},
    "get": {"namespace": NAMESPACE, "key": given("probe"), "refresh_ttl": READ_TTL},
    "aget": {"namespace": NAMESPACE, "key": given("probe"), "refresh_ttl": READ_TTL},
    "search": SEARCH,
    "asearch": SEARCH,
    "put": PUT,
    "aput": PUT,
    "delete": {"namespace": NAMESPACE, "key": given("probe")},
    "adelete": {"namespace": NAMESPACE, "key": given("probe")},
    "list_namespaces": LIST,
    "alist_namespaces": LIST,
    "close": NO_ARGS,
    "aclose": NO_ARGS,
}

CODEC_METHODS: dict[str, dict[str, Arg]] = {
    "__init__": NO_ARGS,
    "encode": {"value": given({"a": 1})},
    "decode": {"data": given(b"\xa1a")},
}

#: Public callables of each module's ``__all__``: a table, or where they are walked.
MODULE_FUNCTIONS: dict[ModuleType, dict[str, dict[str, Arg] | str]] = {
    memkv: {
        "BaseMemoryStore": "abstract: its methods are walked on every built-in store",
        "MemoryStore": "abstract: its methods are walked on every built-in store",
        "LocalMemoryStore": "walked by test_bad_input_to_a_store",
        "RedisMemoryStore": "walked by test_bad_input_to_a_store",
        "MemoryManager": "walked by test_bad_input_to_a_manager",
        "StoreStats": "a NamedTuple of counters the stores fill in",
        "cached": {
            "store": Arg(LocalMemoryStore),
            "ttl": TTL,
            "key": given(None),
            "refresh_after": given(None),
            "ttl_jitter": given(0.0),
        },
        "MemoryEntry": {
            "key": given("probe"),
            "value": given("value"),
            "expires_at": given(None),
            "metadata": given(None),
        },
        "open_store": {"url": given("memory://")},
    },
    urls: {
        "open_store": {"url": given("memory://")},
        "parse_url": {"url": given("memory://")},
        "parse_redis_url": {"url": given("redis://127.0.0.1:1/0")},
        "mask_credentials": {"text": given("text")},
        "MemoryURL": {"max_entries": given(None), "core": given(None)},
        "RedisURL": {
            "scheme": given("redis"),
            "host": given("127.0.0.1"),
            "port": given(1),
            "socket_path": given(None),
            "username": given(None),
            "password": given(None),
            "options": Arg(dict),
            "connection": Arg(dict),
        },
        "StoreURL": "a type alias",
    },
    caching: {
        "CachedFunction": "a Protocol: test_bad_input_to_a_cached_function walks one",
        "cached": "walked in memkv's table",
        "encode_value": {"value": given(1)},
    },
    metrics: {
        "StoreSample": "a NamedTuple the exporters fill in",
        "StoreSource": "a type alias",
        "snapshot": {"source": Arg(dict)},
    },
    prometheus: {"StoreCollector": {"source": Arg(dict), "namespace": given("memkv")}},
    otel: {
        "instrument": {
            "meter": Arg(lambda: get_meter("test_bad_input")),
            "source": Arg(dict),
            "prefix": given("memkv"),
        }
    },
    codecs: {
        "Codec": "a Protocol: never instantiated",
        "MsgpackCodec": "walked by test_bad_input_to_a_codec",
        "JsonCodec": "walked by test_bad_input_to_a_codec",
        "PickleCodec": "walked by test_bad_input_to_a_codec",
        "codec_id": {"codec": Arg(codecs.JsonCodec)},
        "codec_name": {"codec": Arg(codecs.JsonCodec)},
        "encode_value": {"codec": Arg(codecs.JsonCodec), "value": given({"a": 1})},
        "resolve_codec": {"codec": given("json")},
    },
}


# -- the walker ---------------------------------------------------------------------------


@dataclass
class Call:
    """One call of the callable ``name`` (``"__init__"``: the class) with one bad value."""

    label: str
    name: str
    args: list[object]
    kwargs: dict[str, object]

    def function(self, owner: object) -> Callable[..., Any]:
        if self.name == "__call__":
            return cast(Callable[..., Any], owner)
        return callable_named(owner, self.name)


def callable_named(owner: object, name: str) -> Callable[..., Any]:
    """``owner``'s callable ``name``; ``"__init__"`` means its class (or ``owner``, a class)."""
    if name == "__init__":
        return owner if isinstance(owner, type) else type(owner)
    return cast(Callable[..., Any], getattr(owner, name))


def public_methods(cls: type) -> list[str]:
    """The public methods of ``cls`` (its own and inherited), not its properties."""
    names = []
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attribute = inspect.getattr_static(cls, name)
        if isinstance(attribute, (staticmethod, classmethod)) or inspect.isfunction(attribute):
            names.append(name)
    return names


def bad_calls(
    owner: object, table: Mapping[str, Mapping[str, Arg] | str], names: Iterable[str]
) -> Iterator[Call]:
    """One call per bad value per parameter of each callable ``names`` of ``owner``.

    ``"__init__"`` stands for calling ``owner``'s class (or ``owner``, a class). The
    calls may then be made on another object of the same kind (a fresh one each).
    """
    for name in names:
        assert name in table, f"no argument table for {name!r}: add one to this test"
        params = table[name]
        if isinstance(params, str):  # walked elsewhere (the reason says where)
            continue
        function = callable_named(owner, name)
        try:
            signature = inspect.signature(function)
        except ValueError:
            # A compiled class has no signature to read: its pure-Python twin's is the
            # same by contract (test_extension checks that the twins match).
            signature = inspect.signature(getattr(_core_py, function.__name__))
        named = {
            parameter.name: parameter
            for parameter in signature.parameters.values()
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        }
        assert set(params) == set(named), f"{name}: the table lists {sorted(params)}"
        for bad_name in named:
            for value_id, bad in BAD_VALUES.items():
                if params[bad_name].removes_seeds(bad):
                    continue
                args: list[object] = []
                kwargs: dict[str, object] = {}
                for parameter in named.values():
                    value = bad if parameter.name == bad_name else params[parameter.name].valid()
                    if parameter.kind is parameter.POSITIONAL_ONLY:
                        args.append(value)
                    else:
                        kwargs[parameter.name] = value
                yield Call(f"{name}({bad_name}={value_id})", name, args, kwargs)


async def settle(result: Any) -> Any:
    """Finish a call: await it, and run out the iterator it returned."""
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, AsyncIterator):
        return [item async for item in result]
    if isinstance(result, Generator):
        return list(result)
    return result


async def dispose(result: object, keep: object) -> None:
    """Close what a successful call opened (a store or adapter), unless it is ``keep``."""
    if result is keep:
        return
    if isinstance(result, MemoryStore):
        await result.close()
    elif isinstance(result, BridgedAdapter):
        await result.aclose()


async def call_badly(
    call: Call, owner: object, keep: object, also: tuple[type[Exception], ...] = ()
) -> None:
    """Make ``call`` on ``owner``; if it raises, the error must be a typed memkv error
    (or one of ``also``: a framework's own error for breaking the framework's rules)."""
    try:
        result = await settle(call.function(owner)(*call.args, **call.kwargs))
    except also:
        return
    except Exception as err:
        error: Exception = err
    else:
        await dispose(result, keep)
        return
    assert isinstance(error, MemKVError), (
        f"{call.label} raised a plain {type(error).__name__}: {error}"
    )
    assert isinstance(error, (TypeError, ValueError)), (
        f"{call.label} raised {type(error).__name__}, neither a TypeError nor a ValueError"
    )


async def assert_seeds_kept(store: MemoryStore[Any], after: str) -> None:
    entries = await type(store).get_many(store, list(SEEDS))
    values = [None if entry is None else entry.value for entry in entries]
    assert values == list(SEEDS.values()), f"the seeded entries changed after {after}"


# -- the targets --------------------------------------------------------------------------


async def test_bad_input_to_a_store(harness: StoreHarness, request: pytest.FixtureRequest) -> None:
    store = harness.store
    url = None
    if harness.kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif harness.kind == "redis-cluster":
        url = request.getfixturevalue("cluster_url")
    table = store_table(url)
    await store.set_many(SEEDS)
    calls = list(bad_calls(store, table, ["__init__", *public_methods(type(store))]))
    assert len(calls) > 300
    for call in calls:
        await call_badly(call, store, keep=store)
        await assert_seeds_kept(store, call.label)


async def test_bad_input_to_a_manager() -> None:
    names = ["__init__", *public_methods(MemoryManager)]
    for call in bad_calls(MemoryManager(), MANAGER_METHODS, names):
        # A fresh manager each time, whose default store holds the seeds.
        seeded: LocalMemoryStore[Any] = LocalMemoryStore()
        await seeded.set_many(SEEDS)
        manager: MemoryManager[Any] = MemoryManager()
        manager.register_store("main", seeded, default=True)
        await call_badly(call, manager, keep=seeded)
        await assert_seeds_kept(seeded, call.label)


@pytest.mark.parametrize("adapter_type", [MemkvStore, MemkvByteStore])
async def test_bad_input_to_a_langchain_adapter(adapter_type: type[MemkvStore[Any]]) -> None:
    names = ["__init__", *public_methods(adapter_type)]
    for call in bad_calls(adapter_type(LocalMemoryStore()), ADAPTER_METHODS, names):
        seeded: LocalMemoryStore[Any] = LocalMemoryStore()
        await seeded.set_many(SEEDS)
        adapter = adapter_type(seeded)
        await call_badly(call, adapter, keep=adapter)
        await assert_seeds_kept(seeded, call.label)


@pytest.mark.parametrize(
    ("adapter_type", "table", "allowed"),
    [
        (MemkvCache, LANGGRAPH_CACHE_METHODS, ()),
        (MemkvLLMCache, LLM_CACHE_METHODS, ()),
        # LangGraph's own InvalidNamespaceError where its namespace rules are broken (as
        # its InMemoryStore raises it); everything else is memkv's.
        (LangGraphStore, LANGGRAPH_METHODS, (InvalidNamespaceError,)),
    ],
    ids=["langgraph-cache", "langchain-llm-cache", "langgraph-store"],
)
async def test_bad_input_to_a_langgraph_or_model_call_adapter(
    adapter_type: type[Any],
    table: dict[str, dict[str, Arg]],
    allowed: tuple[type[Exception], ...],
) -> None:
    names = ["__init__", *public_methods(adapter_type)]
    calls = list(bad_calls(adapter_type(LocalMemoryStore()), table, names))
    assert len(calls) > 150
    for call in calls:
        seeded: LocalMemoryStore[Any] = LocalMemoryStore()
        await seeded.set_many(SEEDS)
        adapter = adapter_type(seeded)
        await call_badly(call, adapter, keep=adapter, also=allowed)
        await assert_seeds_kept(seeded, call.label)
        await adapter.aclose()


@pytest.mark.parametrize("codec_type", [codecs.MsgpackCodec, codecs.JsonCodec, codecs.PickleCodec])
async def test_bad_input_to_a_codec(codec_type: type[Any]) -> None:
    codec = codec_type()
    for call in bad_calls(codec, CODEC_METHODS, ["__init__", *public_methods(codec_type)]):
        await call_badly(call, codec, keep=None)


@pytest.mark.parametrize("module", list(MODULE_FUNCTIONS), ids=lambda module: module.__name__)
async def test_bad_input_to_a_module_function(module: ModuleType) -> None:
    names = [name for name in module.__all__ if callable(getattr(module, name))]
    calls = list(bad_calls(module, MODULE_FUNCTIONS[module], names))
    assert calls
    for call in calls:
        await call_badly(call, module, keep=None)


@pytest.mark.parametrize("manager", [False, True], ids=["store", "manager"])
async def test_bad_input_to_a_cached_function(manager: bool) -> None:
    """Every argument of a decorated function, of its ``invalidate`` and ``key_for``."""
    seeded: LocalMemoryStore[Any] = LocalMemoryStore()
    await seeded.set_many(SEEDS)
    target: Any = seeded
    if manager:
        target = MemoryManager()
        target.register_store("main", seeded, default=True)

    @memkv.cached(target, ttl=60)
    async def probe(x: object, y: object = 1, *, z: object = None) -> str:
        return "computed"

    table = {"x": given("probe"), "y": given(1), "z": given(None)}
    for name in ("__call__", "invalidate", "key_for"):
        function = probe if name == "__call__" else getattr(probe, name)
        for bad_name in table:
            for value_id, bad in BAD_VALUES.items():
                kwargs = {
                    param: bad if param == bad_name else arg.valid()
                    for param, arg in table.items()
                }
                call = Call(f"{name}({bad_name}={value_id})", "__call__", [], kwargs)
                await call_badly(call, function, keep=None)
                await assert_seeds_kept(seeded, call.label)


# -- the command line ---------------------------------------------------------------------

#: Strings that are bad for most arguments of the ``memkv`` commands.
BAD_ARGUMENTS = {
    "empty": "",
    "word": "text",
    "negative": "-1",
    "zero": "0",
    "nan": "nan",
    "float": "1.5",
    "huge": "9" * 30,
    "unknown scheme": "unknown://host",
    "bad memory option": "memory://?max_entries=0",
    "bad port": "redis://127.0.0.1:99999/0",
    "NUL": "a\x00b",
}

#: The valid value of each command's parameters (flags take none).
COMMAND_ARGUMENTS: dict[str, dict[str, list[str]]] = {
    "bench": {
        "keys": ["--keys", "100"],
        "ops": ["--ops", "100"],
        "core": ["--core", "python"],
        "redis_url": [],
        "redis_ops": ["--redis-ops", "100"],
        "near_cache": [],
    },
    "keys": {"url": ["memory://"], "prefix": ["probe"], "limit": ["--limit", "10"]},
    "get": {"url": ["memory://"], "key": ["probe"]},
    "clear": {"url": ["memory://"], "prefix": ["probe"]},
}


def _command_lines() -> Iterator[tuple[str, list[str]]]:
    for name, command in cli.commands.items():
        assert name in COMMAND_ARGUMENTS, f"no argument table for `memkv {name}`"
        table = COMMAND_ARGUMENTS[name]
        params = [
            param
            for param in command.params
            if not getattr(param, "is_flag", False) and param.name != "help"
        ]
        assert {str(param.name) for param in params} == set(table), name
        for bad_param in params:
            for value_id, bad in BAD_ARGUMENTS.items():
                line = [name, "--quiet"] if name == "bench" else [name]
                if name == "clear":
                    line.append("--yes")
                for param in params:
                    if param is not bad_param:
                        line += table[str(param.name)]
                    elif param.param_type_name == "argument":
                        line.append(bad)
                    else:
                        line += [param.opts[-1], bad]
                yield f"memkv {name} {bad_param.name}={value_id}", line


def test_bad_input_to_the_command_line_exits_with_a_message_not_a_traceback() -> None:
    runner = CliRunner()
    for label, line in _command_lines():
        result = runner.invoke(cli, line)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"{label} raised {type(result.exception).__name__}: {result.exception}"
        )
        assert result.exit_code in (0, 1, 2), label
        assert "Traceback" not in result.output, label
