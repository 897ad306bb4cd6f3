"""The ``memkv`` command line: ``bench`` (the benchmark) and the store inspection commands.

Run as ``memkv`` or ``python -m memkv``; ``memkv COMMAND --help`` describes each command.
Errors a user can cause (a bad URL, an unreachable server, a missing extra) print one
line on stderr and exit 1; bad options exit 2.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import replace
from typing import Any
from uuid import uuid4

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from memkv import __version__
from memkv._core import IMPLEMENTATION
from memkv.benchmark import (
    BASELINE,
    BATCH,
    CONCURRENT_WORKLOAD,
    LOCAL_CYTHON,
    LOCAL_PYTHON,
    REDIS,
    REDIS_NEAR_CACHE,
    WORKLOAD,
    BenchReport,
    BenchResult,
    Operation,
    baseline_calls,
    bench_report,
    planned_calls,
    run_baseline,
    run_store_benchmark,
)
from memkv.entry import MemoryEntry
from memkv.errors import MemKVError
from memkv.local import LocalMemoryStore
from memkv.store import MemoryStore
from memkv.urls import RedisURL, mask_credentials, open_store, parse_url

__all__ = ["cli", "main"]

#: Calls per single-key operation on each local store: about 15 s for the whole default
#: run on a 2-vCPU VM (see README). Batch operations run 1/100 as many.
DEFAULT_OPS = 200_000
DEFAULT_REDIS_OPS = 5_000
# Bounds that stop a slip of the keyboard (--keys 1000000000000) from filling the
# machine's memory or running for days: a larger run measures nothing more.
MAX_BENCH_KEYS = 10_000_000
MAX_BENCH_OPS = 100_000_000
#: A Redis store is preloaded with at most this many entries per ``--redis-ops`` call.
REDIS_ENTRIES_PER_CALL = 10

_STORE_LABELS = {
    BASELINE: "dict + async def",
    LOCAL_CYTHON: "local (cython)",
    LOCAL_PYTHON: "local (python)",
    REDIS: "redis",
    REDIS_NEAR_CACHE: "redis + near cache",
}
_LABELS = {operation.name: operation.label for operation in WORKLOAD + CONCURRENT_WORKLOAD}

#: What a user can cause (bad URL, server down, missing extra, unreadable TLS file) and
#: should see as one line; anything else is a bug and keeps its traceback.
_USER_ERRORS = (MemKVError, ImportError, OSError, asyncio.TimeoutError, ValueError)


# -- errors --------------------------------------------------------------------------------


def _one_line(error: BaseException, urls: Sequence[str | None]) -> str:
    """``error`` as a single line with every password of ``urls`` masked."""
    if isinstance(error, (MemKVError, ImportError)):
        text = str(error)  # written for users: they name the problem (or the extra)
    else:
        text = f"{type(error).__name__}: {error}"
    return mask_credentials(" ".join(text.split()) or type(error).__name__, *urls)


@contextmanager
def _errors_as_one_line(*urls: str | None) -> Iterator[None]:
    """Report a user-caused failure as ``Error: <one line>`` and exit 1, not a traceback."""
    try:
        yield
    except _USER_ERRORS as error:
        raise click.ClickException(_one_line(error, urls)) from None


def _note_if_memory(url: str) -> None:
    """Explain an empty answer: each ``memory://`` URL is a store of its own."""
    if url.lower().startswith("memory:"):
        click.echo(
            "note: memory:// opens a new, empty in-process store; "
            "inspect a server with a redis:// URL",
            err=True,
        )


# -- the command group ---------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 99})
@click.version_option(
    __version__,
    "-V",
    "--version",
    prog_name="memkv",
    message=f"%(prog)s %(version)s (local core: {IMPLEMENTATION})",
)
def cli() -> None:
    """memkv: benchmark the local store, and inspect or clear a store by its URL.

    \b
    Store URLs:
      memory://                                  a new, empty in-process store
      redis://[:PASSWORD@]HOST:PORT/DB?namespace=NAME&codec=json
      rediss://...   unix:///path/to/redis.sock?...   redis+cluster://HOST:PORT?...
    Redis URLs take socket_timeout, connect_timeout and retries too, e.g.
    ?connect_timeout=0.5&retries=0 to give up quickly on an unreachable server.
    Percent-encode / ? # @ [ ] in a password (%2F %3F %23 %40 %5B %5D).

    Errors (bad URL, unreachable server, missing extra) print one line and exit 1;
    bad options exit 2.
    """


# -- bench ---------------------------------------------------------------------------------


def _check_redis_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Accept only URLs of a Redis store for ``--redis`` (never repeating the URL)."""
    if value is None:
        return None
    try:
        parsed = parse_url(value)
    except MemKVError as error:
        message = str(error)
    else:
        if isinstance(parsed, RedisURL):
            return value
        message = "expected a redis://, rediss://, unix:// or redis+cluster:// URL"
    raise click.BadParameter(message, ctx, param)


def _local_stores(core: str) -> list[tuple[str, MemoryStore[Any]]]:
    """The local stores ``--core`` asks for, as (store id, store)."""
    if core in ("both", "cython") and IMPLEMENTATION != "cython":
        if core == "cython":
            raise click.BadParameter(
                "the Cython core is not in use here (MEMKV_NO_EXTENSIONS is set, or this "
                "is not CPython)",
                param_hint="'--core'",
            )
        click.echo("note: the Cython core is not in use; benchmarking the Python core", err=True)
    stores: list[tuple[str, MemoryStore[Any]]] = []
    if core in ("both", "cython") and IMPLEMENTATION == "cython":
        stores.append((LOCAL_CYTHON, LocalMemoryStore(core="cython")))
    if core in ("both", "python"):
        stores.append((LOCAL_PYTHON, LocalMemoryStore(core="python")))
    return stores


async def _run_bench(
    local: list[tuple[str, MemoryStore[Any]]],
    *,
    redis_url: str | None,
    near_cache: int | None,
    keys: int,
    ops: int,
    redis_ops: int,
    show_progress: bool,
) -> tuple[list[BenchResult], str | None]:
    """Run the baseline, then each store; returns the results and the Redis store's repr."""
    plans = [(name, store, keys, ops) for name, store in local]
    # A prefix of its own inside the URL's namespace: the run cannot touch other keys,
    # and still works under an ACL that confines the client to that namespace.
    run_prefix = f"memkv-bench-{uuid4().hex[:12]}:"
    redis_description = None
    async with AsyncExitStack() as stack:
        for _, store in local:
            await stack.enter_async_context(store)
        if redis_url is not None:
            redis_store = await stack.enter_async_context(open_store(redis_url))
            redis_description = repr(redis_store)  # names server and namespace, no password
            # Fail now, not after the local runs, when the server cannot be reached.
            await redis_store.exists(run_prefix)
            entries = min(keys, REDIS_ENTRIES_PER_CALL * redis_ops)
            plans.append((REDIS, redis_store, entries, redis_ops))
            if near_cache is not None:
                parsed = parse_url(redis_url)
                assert isinstance(parsed, RedisURL)
                near_url = replace(parsed, options={**parsed.options, "near_cache": near_cache})
                near_store = await stack.enter_async_context(open_store(near_url))
                # At most as many entries as the near cache holds, so that get hit
                # measures copies read again (its first read of each key goes to Redis).
                near_entries = max(BATCH, min(entries, near_cache))
                plans.append((REDIS_NEAR_CACHE, near_store, near_entries, redis_ops))
        total = baseline_calls(ops) + sum(
            planned_calls(calls, concurrent=name == REDIS) for name, _, _, calls in plans
        )
        # No auto-refresh: a rendering thread would steal time from the timed loops, so
        # the bar moves when the benchmark reports (several times a second).
        with Progress(
            TextColumn("[bold]{task.description:<18}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
            auto_refresh=False,
            disable=not show_progress,
        ) as bar:
            task = bar.add_task(_STORE_LABELS[BASELINE], total=total)

            def advance(operation: Operation, done: int) -> None:
                bar.update(task, advance=done, refresh=True)

            results = await run_baseline(keys=keys, calls=ops, progress=advance)
            for name, store, entries, calls in plans:
                bar.update(task, description=_STORE_LABELS[name], refresh=True)
                results += await run_store_benchmark(
                    name,
                    store,
                    keys=entries,
                    calls=calls,
                    key_prefix=run_prefix if name in (REDIS, REDIS_NEAR_CACHE) else "bench:",
                    progress=advance,
                    concurrent=name == REDIS,
                )
    return results, redis_description


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _results_table(report: BenchReport) -> Table:
    table = Table(
        title=f"memkv bench: {report['keys']:,} entries",
        caption=(
            "ops/s: calls per second (get_many and scan: 100 keys a call); p50/p99: "
            "latency of one call; vs dict: ops/s ÷ a bare dict behind async def"
        ),
    )
    for column in ("store", "operation", "ops/s", "p50 µs", "p99 µs", "vs dict"):
        table.add_column(column, justify="left" if column in ("store", "operation") else "right")
    previous = None
    for row in report["results"]:
        if previous is not None and row["store"] != previous:
            table.add_section()
        previous = row["store"]
        table.add_row(
            _STORE_LABELS.get(row["store"], row["store"]),
            _LABELS.get(row["operation"], row["operation"]),
            f"{row['ops_per_second']:,.0f}",
            f"{row['p50_us']:.2f}",
            f"{row['p99_us']:.2f}",
            _ratio(row["vs_baseline"]),
        )
    return table


def _speedup_table(report: BenchReport) -> Table:
    ops_per_second = {
        (row["store"], row["operation"]): row["ops_per_second"] for row in report["results"]
    }
    table = Table(title="Cython core speed-up over the pure-Python core")
    for column in ("operation", "cython ops/s", "python ops/s", "speed-up"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for name, speedup in report["speedup"].items():
        table.add_row(
            _LABELS.get(name, name),
            f"{ops_per_second[LOCAL_CYTHON, name]:,.0f}",
            f"{ops_per_second[LOCAL_PYTHON, name]:,.0f}",
            _ratio(speedup),
        )
    return table


@cli.command(short_help="Benchmark the local store's two cores (and Redis with --redis).")
@click.option(
    "--keys",
    type=click.IntRange(min=100, max=MAX_BENCH_KEYS),
    default=100_000,
    show_default=True,
    help=f"Entries preloaded into each store (100 to {MAX_BENCH_KEYS:,}).",
)
@click.option(
    "--ops",
    type=click.IntRange(min=100, max=MAX_BENCH_OPS),
    default=DEFAULT_OPS,
    show_default=True,
    help="Calls per single-key operation on the local stores; get_many and scan run "
    "1/100 as many.",
)
@click.option(
    "--core",
    type=click.Choice(["both", "cython", "python"]),
    default="both",
    show_default=True,
    help="Which local core(s) to benchmark.",
)
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    callback=_check_redis_url,
    help="Also benchmark the Redis store at URL (needs the redis extra).",
)
@click.option(
    "--redis-ops",
    type=click.IntRange(min=100, max=MAX_BENCH_OPS),
    default=DEFAULT_REDIS_OPS,
    show_default=True,
    help="Calls per single-key operation on Redis (preloads at most 10 entries per call).",
)
@click.option(
    "--near-cache",
    "near_cache",
    type=click.IntRange(min=1, max=MAX_BENCH_KEYS),
    metavar="N",
    help="With --redis, also benchmark the same store with a near cache of N entries "
    "(?near_cache=N); its get hit reads at most N keys, each from Redis once.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (no progress).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def bench(
    keys: int,
    ops: int,
    core: str,
    redis_url: str | None,
    redis_ops: int,
    near_cache: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Benchmark the local store on both cores (and a Redis store with --redis).

    Measures get (hit and miss), exists, get_many of 100 keys, scan of a prefix that
    matches 100 keys, set without and with a TTL, each on a store preloaded with --keys
    entries, against a bare dict behind `async def` where it can do the same. Prints
    ops/s and p50/p99 latency per operation, the ratio to the dict, and the speed-up of
    the Cython core over the pure-Python one. Takes about 15 s at the defaults.

    \b
    On Redis every key lives under a prefix of its own (memkv-bench-<random>:) in the
    URL's namespace and is removed at the end; only entries under it are written.

    \b
    --json prints one object (schema_version 1):
      {"schema_version": 1, "memkv_version": "0.1.0", "implementation": "cython",
       "python": "3.11.7", "keys": 100000, "redis": null,
       "results": [{"store": "local-cython", "operation": "get_hit", "calls": 200000,
                    "keys_per_call": 1, "entries": 100000, "ops_per_second": 1.2e6,
                    "keys_per_second": 1.2e6, "p50_us": 0.8, "p99_us": 1.8,
                    "vs_baseline": 0.74}, ...],
       "speedup": {"get_hit": 2.4, ...}}
    store: baseline | local-cython | local-python | redis | redis-near-cache; operation:
    get_hit, get_miss,
    exists, get_many, scan_prefix, set, set_ttl; vs_baseline: ops/s ÷ the baseline's
    (null for the baseline, Redis, scan_prefix and set_ttl); speedup: Cython ÷ Python
    ops/s (empty unless both cores ran).
    """
    if near_cache is not None and redis_url is None:
        raise click.BadParameter("needs --redis URL", param_hint="'--near-cache'")
    local = _local_stores(core)
    with _errors_as_one_line(redis_url):
        results, redis_description = asyncio.run(
            _run_bench(
                local,
                redis_url=redis_url,
                near_cache=near_cache,
                keys=keys,
                ops=ops,
                redis_ops=redis_ops,
                show_progress=not (as_json or quiet),
            )
        )
    report = bench_report(
        results, implementation=IMPLEMENTATION, keys=keys, redis=redis_description
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    console = Console()
    console.print(_results_table(report))
    if report["speedup"]:
        console.print(_speedup_table(report))
    console.print(f"local core in use: [bold]{IMPLEMENTATION}[/]", highlight=False)
    if redis_description is not None:
        console.print(f"redis: {redis_description}", highlight=False, markup=False)


# -- inspection ----------------------------------------------------------------------------


async def _first_keys(url: str, prefix: str | None, limit: int) -> tuple[list[str], bool]:
    """Up to ``limit`` keys of the store at ``url``, and whether more were left."""
    async with open_store(url) as store:
        found: list[str] = []
        keys = store.scan(prefix)
        try:
            async for key in keys:
                if len(found) == limit:
                    return found, True
                found.append(key)
        finally:
            await _aclose(keys)
        return found, False


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an abandoned scan now, while its store is still open."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


@cli.command(short_help="List the keys of a store, optionally under a prefix.")
@click.argument("url")
@click.argument("prefix", required=False)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Print at most this many keys.",
)
def keys(url: str, prefix: str | None, limit: int) -> None:
    """Print the keys of the store at URL, one a line, optionally only those under PREFIX.

    PREFIX is a literal key prefix (no glob: * and ? are ordinary characters). On Redis
    only the URL's namespace is listed (namespace=NAME in the URL, else "memkv"), keys
    without it, in server order; a local store lists them in code-point order.
    """
    with _errors_as_one_line(url):
        found, more = asyncio.run(_first_keys(url, prefix, limit))
    _note_if_memory(url)
    for key in found:
        _echo(key)
    if more:
        click.echo(f"(stopped after {limit} keys; raise --limit to see more)", err=True)


async def _read_entry(url: str, key: str) -> MemoryEntry[Any] | None:
    async with open_store(url) as store:
        return await store.get(key)


def _entry_json(entry: MemoryEntry[Any]) -> str:
    document: dict[str, Any] = {
        "key": entry.key,
        "value": entry.value,
        "metadata": entry.metadata,
        "created_at": entry.created_at.isoformat(),
        "updated_at": entry.updated_at.isoformat(),
        "expires_at": None if entry.expires_at is None else entry.expires_at.isoformat(),
    }
    try:
        return json.dumps(document, indent=2, ensure_ascii=False, default=_safe_repr)
    except (TypeError, ValueError):
        # Keys JSON cannot hold (a tuple) or a cycle: show the value as Python sees it.
        document["value"] = _safe_repr(entry.value)
        document["metadata"] = _safe_repr(entry.metadata)
        return json.dumps(document, indent=2, ensure_ascii=False, default=_safe_repr)


def _safe_repr(value: object) -> str:
    """``repr(value)``, or a placeholder when even that fails (a 5,000-digit int)."""
    try:
        return repr(value)
    except Exception as err:
        return f"<{type(value).__name__}: cannot be shown: {type(err).__name__}>"


def _echo(text: str) -> None:
    """Print ``text``; a lone surrogate (a key Python accepts) prints as an escape."""
    click.echo(text.encode("utf-8", "backslashreplace").decode("utf-8"))


@cli.command(short_help="Print one entry of a store as JSON.")
@click.argument("url")
@click.argument("key")
def get(url: str, key: str) -> None:
    """Print the entry KEY of the store at URL as JSON; exit 1 when there is none.

    \b
    The object has key, value, metadata, and created_at, updated_at and expires_at
    (ISO 8601, UTC; expires_at is null without a TTL). A value JSON cannot hold
    (bytes, for example) is shown as its Python repr.
    """
    with _errors_as_one_line(url):
        entry = asyncio.run(_read_entry(url, key))
    _note_if_memory(url)
    if entry is None:
        click.echo(f"no live entry for key {key!r}", err=True)
        raise click.exceptions.Exit(1)
    _echo(_entry_json(entry))


async def _clear(url: str, prefix: str | None, confirm: bool) -> int | None:
    """Clear the store at ``url`` under ``prefix``; ``None`` when the user said no."""
    async with open_store(url) as store:
        if confirm:
            what = f"every entry under {prefix!r}" if prefix else "EVERY entry"
            # The store's repr names the server and namespace, never a password.
            if not click.confirm(f"Remove {what} from {store!r}?", err=True):
                return None
        return await store.clear(prefix)


@cli.command(short_help="Remove a store's entries under a prefix (or all, with --all).")
@click.argument("url")
@click.argument("prefix", required=False)
@click.option("--all", "clear_all", is_flag=True, help="Clear every entry (give no PREFIX).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def clear(url: str, prefix: str | None, clear_all: bool, yes: bool) -> None:
    """Remove the entries of the store at URL whose keys start with PREFIX.

    Asks first unless --yes. Without a PREFIX (or with an empty one) nothing happens
    unless --all is given, which clears every entry of the store: on Redis, every key
    of the URL's namespace. A namespace is a plain key prefix, so namespace "app" also
    covers the keys of namespace "app:tenant". Prints how many entries went.
    """
    if clear_all and prefix:
        raise click.UsageError("give a PREFIX or --all, not both")
    if not clear_all and not prefix:
        raise click.UsageError(
            "refusing to clear every entry without --all; give a PREFIX, or --all"
        )
    with _errors_as_one_line(url):
        removed = asyncio.run(_clear(url, prefix or None, confirm=not yes))
    _note_if_memory(url)
    if removed is None:
        click.echo("nothing removed", err=True)
        raise click.exceptions.Exit(1)
    click.echo(f"removed {removed} {'entry' if removed == 1 else 'entries'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``memkv`` command with ``argv`` (default: ``sys.argv[1:]``); returns the
    exit status (0 success, 1 error, 2 bad usage) instead of exiting."""
    try:
        cli.main(args=None if argv is None else list(argv), standalone_mode=True)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        return 1
    return 0
