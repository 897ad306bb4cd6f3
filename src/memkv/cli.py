"""The ``memkv`` command line: ``bench`` (the benchmark) and store inspection commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from memkv import _core_py
from memkv._core import IMPLEMENTATION
from memkv.benchmark import (
    BenchResult,
    baseline_calls,
    planned_calls,
    run_baseline,
    run_store_benchmark,
)
from memkv.errors import MemKVError
from memkv.local import LocalMemoryStore
from memkv.store import MemoryStore
from memkv.urls import open_store

__all__ = ["main"]


class _PythonCoreStore(LocalMemoryStore[Any]):
    """The local store on the pure-Python core, to compare the two cores in one run."""

    _core_type = _core_py.LocalCore


def _local_stores(core: str) -> list[tuple[str, MemoryStore[Any]]]:
    stores: list[tuple[str, MemoryStore[Any]]] = []
    if core in ("both", "cython") and IMPLEMENTATION == "cython":
        stores.append(("local (cython)", LocalMemoryStore()))
    if core in ("both", "python") or not stores:
        stores.append(("local (python)", _PythonCoreStore()))
    return stores


async def _bench(args: argparse.Namespace, console: Console) -> list[BenchResult]:
    stores = _local_stores(args.core)
    plans: list[tuple[str, MemoryStore[Any], int]] = [(n, s, args.ops) for n, s in stores]
    if args.redis:
        # Label the store by its repr: the URL itself may hold a password.
        redis_store = open_store(args.redis)
        plans.append((repr(redis_store), redis_store, args.redis_ops))
    total = baseline_calls(args.ops) + sum(planned_calls(calls) for _, _, calls in plans)
    results: list[BenchResult] = []
    with Progress(
        TextColumn("[bold]{task.description:<28}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=args.json or args.quiet,
    ) as progress:
        task = progress.add_task("dict + async def", total=total)

        def advance(done: int) -> None:
            progress.advance(task, done)

        results += await run_baseline(keys=args.keys, calls=args.ops, progress=advance)
        for name, store, calls in plans:
            progress.update(task, description=name)
            async with store:
                keys = args.keys if calls == args.ops else min(args.keys, 10 * calls)
                results += await run_store_benchmark(
                    name, store, keys=keys, calls=calls, progress=advance
                )
    return results


def _table(results: list[BenchResult]) -> Table:
    baseline = {r.operation: r.ops_per_second for r in results if r.store == "dict + async def"}
    table = Table(title="memkv bench", show_lines=False)
    for column in ("store", "operation", "ops/s", "vs dict", "p50 µs", "p99 µs"):
        table.add_column(column, justify="left" if column in ("store", "operation") else "right")
    for r in results:
        ratio = baseline.get(r.operation)
        vs = f"{r.ops_per_second / ratio:.2f}x" if ratio and r.store != "dict + async def" else ""
        table.add_row(
            r.store,
            r.operation,
            f"{r.ops_per_second:,.0f}",
            vs,
            f"{r.p50_us:.2f}",
            f"{r.p99_us:.2f}",
        )
    return table


async def _keys(url: str, prefix: str | None, limit: int) -> list[str]:
    async with open_store(url) as store:
        found: list[str] = []
        async for key in store.scan(prefix):
            found.append(key)
            if len(found) >= limit:
                break
        return found


async def _get(url: str, key: str) -> dict[str, Any] | None:
    async with open_store(url) as store:
        entry = await store.get(key)
        if entry is None:
            return None
        return {
            "key": entry.key,
            "value": entry.value,
            "metadata": entry.metadata,
            "created_at": entry.created_at.isoformat(),
            "updated_at": entry.updated_at.isoformat(),
            "expires_at": None if entry.expires_at is None else entry.expires_at.isoformat(),
        }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memkv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmark the local store (and Redis with --redis)")
    bench.add_argument("--keys", type=int, default=100_000, help="entries to preload (100000)")
    bench.add_argument("--ops", type=int, default=200_000, help="calls per local operation")
    bench.add_argument("--core", choices=("both", "cython", "python"), default="both")
    bench.add_argument("--redis", metavar="URL", help="also benchmark a Redis store at URL")
    bench.add_argument("--redis-ops", type=int, default=5_000, help="calls per Redis operation")
    bench.add_argument("--json", action="store_true", help="print results as JSON")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    keys = commands.add_parser("keys", help="list keys of a store URL, optionally by prefix")
    keys.add_argument("url")
    keys.add_argument("prefix", nargs="?")
    keys.add_argument("--limit", type=int, default=1000)
    get = commands.add_parser("get", help="print one entry of a store URL as JSON")
    get.add_argument("url")
    get.add_argument("key")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``memkv`` command."""
    args = _parser().parse_args(argv)
    console = Console()
    try:
        if args.command == "bench":
            if args.keys < 100 or args.ops < 100 or args.redis_ops < 100:
                console.print("[red]--keys, --ops and --redis-ops must be at least 100")
                return 2
            results = asyncio.run(_bench(args, console))
            if args.json:
                print(json.dumps([r.as_dict() for r in results], indent=2))
            else:
                console.print(_table(results))
                console.print(f"local core in use: [bold]{IMPLEMENTATION}[/]")
        elif args.command == "keys":
            for key in asyncio.run(_keys(args.url, args.prefix, args.limit)):
                print(key)
        else:
            found = asyncio.run(_get(args.url, args.key))
            if found is None:
                console.print(f"[yellow]no live entry for {args.key!r}", highlight=False)
                return 1
            print(json.dumps(found, indent=2, default=repr))
    except (MemKVError, ImportError) as err:
        console.print(f"[red]error:[/] {err}", highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
