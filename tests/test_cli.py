"""The memkv command line: bench and its JSON schema, help, errors, and keys/get/clear on Redis.

The inspection commands are tested against the session's Redis server (a ``memory://``
URL always opens a new, empty store), each test in a namespace of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result

from memkv import IMPLEMENTATION, LocalMemoryStore, MemoryEntry, open_store
from memkv.benchmark import (
    BASELINE_WORKLOAD,
    WORKLOAD,
    baseline_calls,
    planned_calls,
    run_baseline,
    run_store_benchmark,
)
from memkv.cli import _entry_json, _one_line, cli, main
from tests.redis_servers import unique_namespace

#: Small enough that a whole run takes a fraction of a second.
SMALL = ("--keys", "200", "--ops", "200")
PASSWORD = "hunter2"
#: Nothing listens on port 1: refused at once; short timeouts and no retries bound it.
UNREACHABLE = f"redis://:{PASSWORD}@127.0.0.1:1/0?connect_timeout=0.2&socket_timeout=0.2&retries=0"
BAD_URLS = [
    f"ftp://:{PASSWORD}@host",
    f"redis://:{PASSWORD}@[::1",
    f"redis://:{PASSWORD}@host:6379/0?no_such_option=1",
    f"redis://:{PASSWORD}@host:port/0",
    "memory://?max_entries=0",
]
REPORT_FIELDS = {
    "schema_version",
    "memkv_version",
    "implementation",
    "python",
    "keys",
    "redis",
    "results",
    "speedup",
}
ROW_FIELDS = {
    "store",
    "operation",
    "calls",
    "keys_per_call",
    "entries",
    "ops_per_second",
    "keys_per_second",
    "p50_us",
    "p99_us",
    "vs_baseline",
}
OPERATION_NAMES = ["get_hit", "get_miss", "exists", "get_many", "scan_prefix", "set", "set_ttl"]


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input)


def local_stores() -> set[str]:
    return {"local-cython", "local-python"} if IMPLEMENTATION == "cython" else {"local-python"}


# -- bench ---------------------------------------------------------------------------------


def test_bench_json_follows_the_documented_schema() -> None:
    result = run("bench", *SMALL, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == REPORT_FIELDS
    assert report["schema_version"] == 1
    assert report["implementation"] == IMPLEMENTATION
    assert report["keys"] == 200
    assert report["redis"] is None
    rows = report["results"]
    assert all(set(row) == ROW_FIELDS for row in rows)
    stores = [row["store"] for row in rows]
    assert stores == sorted(stores, key=["baseline", "local-cython", "local-python"].index)
    assert set(stores) == {"baseline"} | local_stores()
    by_store: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_store.setdefault(row["store"], []).append(row)
    assert [row["operation"] for row in by_store["baseline"]] == [
        "get_hit",
        "get_miss",
        "exists",
        "get_many",
        "set",
    ]
    for store in local_stores():
        assert [row["operation"] for row in by_store[store]] == OPERATION_NAMES
        for row in by_store[store]:
            compared = row["operation"] not in ("scan_prefix", "set_ttl")
            assert (row["vs_baseline"] is not None) == compared
    assert all(row["vs_baseline"] is None for row in by_store["baseline"])
    for row in rows:
        assert row["ops_per_second"] > 0
        assert row["p99_us"] >= row["p50_us"] > 0
        assert row["keys_per_second"] == pytest.approx(
            row["ops_per_second"] * row["keys_per_call"]
        )
        assert row["entries"] == 200
        batch = row["operation"] in ("get_many", "scan_prefix")
        assert (row["keys_per_call"], row["calls"]) == ((100, 10) if batch else (1, 200))
    if IMPLEMENTATION == "cython":
        assert list(report["speedup"]) == OPERATION_NAMES
        assert all(speedup > 0 for speedup in report["speedup"].values())
    else:
        assert report["speedup"] == {}


def test_bench_json_with_one_core_has_no_speedup() -> None:
    result = run("bench", *SMALL, "--json", "--core", "python")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {row["store"] for row in report["results"]} == {"baseline", "local-python"}
    assert report["speedup"] == {}


@pytest.mark.skipif(IMPLEMENTATION != "cython", reason="needs the Cython core in use")
def test_bench_table_shows_ratios_and_the_cython_speedup() -> None:
    result = run("bench", *SMALL)
    assert result.exit_code == 0, result.output
    for text in ("ops/s", "p50 µs", "p99 µs", "vs dict", "local (cython)", "local (python)"):
        assert text in result.stdout
    assert "Cython core speed-up over the pure-Python core" in result.stdout
    assert "local core in use: cython" in result.stdout


def test_bench_without_the_cython_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("memkv.cli.IMPLEMENTATION", "python")
    refused = run("bench", *SMALL, "--core", "cython")
    assert refused.exit_code == 2
    assert "Cython core is not in use" in refused.stderr
    fallback = run("bench", *SMALL, "--json")
    assert fallback.exit_code == 0, fallback.output
    assert "benchmarking the Python core" in fallback.stderr
    report = json.loads(fallback.stdout)
    assert {row["store"] for row in report["results"]} == {"baseline", "local-python"}


@pytest.mark.parametrize(
    "option", [("--keys", "5"), ("--ops", "99"), ("--redis-ops", "0"), ("--core", "pypy")]
)
def test_bench_refuses_bad_options_as_usage_errors(option: tuple[str, str]) -> None:
    result = run("bench", *option)
    assert result.exit_code == 2
    assert option[0] in result.stderr


def test_bench_redis_option_takes_only_redis_urls() -> None:
    result = run("bench", *SMALL, "--redis", f"memory://{PASSWORD}")
    assert result.exit_code == 2
    assert "--redis" in result.stderr
    assert PASSWORD not in result.output


def test_progress_matches_the_planned_calls() -> None:
    reported: list[int] = []
    names: list[str] = []

    def progress(operation: Any, done: int) -> None:
        names.append(operation.name)
        reported.append(done)

    store: LocalMemoryStore[Any] = LocalMemoryStore()
    asyncio.run(run_store_benchmark("local", store, keys=300, calls=500, progress=progress))
    assert sum(reported) == planned_calls(500)
    assert list(dict.fromkeys(names)) == [operation.name for operation in WORKLOAD]
    assert len(store) == 0  # the run removes what it wrote
    reported.clear()
    asyncio.run(run_baseline(keys=300, calls=500, progress=lambda _, done: reported.append(done)))
    assert sum(reported) == baseline_calls(500)
    assert len(BASELINE_WORKLOAD) == 5
    reported.clear()
    names.clear()
    run = run_store_benchmark(
        "local", store, keys=300, calls=500, progress=progress, concurrent=True
    )
    asyncio.run(run)
    assert sum(reported) == planned_calls(500, concurrent=True)
    assert names[-2:] == ["mixed_50_tasks", "mixed_200_tasks"]


# -- help, version, entry points -----------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["bench"], ["keys"], ["get"], ["clear"]])
def test_help_on_every_command(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage:")
    assert len(result.stdout.splitlines()) > 5


def test_version_names_the_core() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert f"local core: {IMPLEMENTATION}" in result.stdout


def test_python_dash_m_memkv_runs_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "memkv", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for command in ("bench", "keys", "get", "clear"):
        assert command in done.stdout


def test_main_returns_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert main(["keys", "ftp://host"]) == 1
    assert main(["bench", "--keys", "5"]) == 2
    assert "Traceback" not in capsys.readouterr().err


# -- errors --------------------------------------------------------------------------------


COMMAND_ARGS = {"keys": [], "get": ["key"], "clear": ["prefix:", "--yes"]}


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("command", list(COMMAND_ARGS))
def test_a_bad_url_is_one_line_without_the_password(command: str, url: str) -> None:
    result = run(command, url, *COMMAND_ARGS[command])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # not an escaped exception
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert PASSWORD not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["keys", UNREACHABLE],
        ["get", UNREACHABLE, "key"],
        ["clear", UNREACHABLE, "prefix:", "--yes"],
        ["bench", *SMALL, "--core", "python", "--redis", UNREACHABLE],
        ["keys", f"redis://:{PASSWORD}@[::1"],
    ],
)
def test_errors_from_the_installed_command_are_one_line(args: list[str]) -> None:
    pytest.importorskip("redis")
    done = subprocess.run(
        [sys.executable, "-m", "memkv", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("Error: ")
    assert PASSWORD not in done.stderr


def test_a_message_that_repeats_the_password_is_masked() -> None:
    url = "redis://user:p%40ss:word@host:6379/0"
    error = ValueError("cannot use redis://user:p%40ss:word@host with p@ss:word")
    line = _one_line(error, [url])
    assert "p%40ss" not in line
    assert "p@ss" not in line
    assert line == "ValueError: cannot use redis://user:***@host with ***"


def test_limit_below_one_is_a_usage_error() -> None:
    result = run("keys", "memory://", "--limit", "0")
    assert result.exit_code == 2
    assert "--limit" in result.stderr


def test_memory_urls_are_empty_and_say_so() -> None:
    listed = run("keys", "memory://")
    assert listed.exit_code == 0
    assert listed.stdout == ""
    assert "new, empty in-process store" in listed.stderr
    missing = run("get", "memory://", "key")
    assert missing.exit_code == 1
    assert "no live entry for key 'key'" in missing.stderr


def test_entry_json_shows_what_json_cannot_hold_as_a_repr() -> None:
    entry: MemoryEntry[Any] = MemoryEntry("k", {(1, 2): b"\x00"})
    assert json.loads(_entry_json(entry))["value"] == "{(1, 2): b'\\x00'}"
    entry = MemoryEntry("k", [b"\x00", "é"])
    assert json.loads(_entry_json(entry))["value"] == ["b'\\x00'", "é"]


# -- keys, get and clear on a real server --------------------------------------------------


async def _fill(url: str, entries: dict[str, Any]) -> None:
    async with open_store(url) as store:
        for key, value in entries.items():
            ttl = timedelta(hours=1) if key == "chat:1" else None
            await store.set(key, value, ttl=ttl, metadata={"key": key})


async def _keys(url: str) -> list[str]:
    async with open_store(url) as store:
        return sorted([key async for key in store.scan()])


async def _clear_all(url: str) -> None:
    async with open_store(url) as store:
        await store.clear()


def _with_namespace(url: str, namespace: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}namespace={namespace}"


@pytest.fixture
def store_url(redis_url: str) -> Iterator[str]:
    """A Redis URL in a namespace of its own, holding chat:1, chat:2 and notes:1."""
    url = _with_namespace(redis_url, unique_namespace())
    asyncio.run(_fill(url, {"chat:1": {"text": "hi", "n": [1, 2]}, "chat:2": "yo", "notes:1": 3}))
    yield url
    asyncio.run(_clear_all(url))


@pytest.fixture
def neighbour_url(redis_url: str) -> Iterator[str]:
    """Another namespace on the same server, which no command on ``store_url`` may touch."""
    url = _with_namespace(redis_url, unique_namespace())
    asyncio.run(_fill(url, {"chat:1": "theirs"}))
    yield url
    asyncio.run(_clear_all(url))


@pytest.mark.redis
def test_keys_lists_the_namespace_and_filters_by_prefix(
    store_url: str, neighbour_url: str
) -> None:
    listed = run("keys", store_url)
    assert listed.exit_code == 0, listed.output
    assert sorted(listed.stdout.splitlines()) == ["chat:1", "chat:2", "notes:1"]
    chats = run("keys", store_url, "chat:")
    assert sorted(chats.stdout.splitlines()) == ["chat:1", "chat:2"]
    assert run("keys", store_url, "nothing:").stdout == ""


@pytest.mark.redis
def test_keys_limit_says_when_more_are_left(store_url: str) -> None:
    limited = run("keys", store_url, "--limit", "2")
    assert limited.exit_code == 0
    assert len(limited.stdout.splitlines()) == 2
    assert "raise --limit" in limited.stderr
    exact = run("keys", store_url, "--limit", "3")
    assert len(exact.stdout.splitlines()) == 3
    assert exact.stderr == ""


@pytest.mark.redis
def test_get_prints_the_entry_as_json(store_url: str) -> None:
    result = run("get", store_url, "chat:1")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert list(entry) == ["key", "value", "metadata", "created_at", "updated_at", "expires_at"]
    assert entry["key"] == "chat:1"
    assert entry["value"] == {"text": "hi", "n": [1, 2]}
    assert entry["metadata"] == {"key": "chat:1"}
    created = datetime.fromisoformat(entry["created_at"])
    expires = datetime.fromisoformat(entry["expires_at"])
    assert created.utcoffset() == timedelta(0)
    assert timedelta(minutes=59) < expires - created <= timedelta(hours=1, seconds=1)
    assert json.loads(run("get", store_url, "chat:2").stdout)["expires_at"] is None


@pytest.mark.redis
def test_get_of_a_missing_key_exits_1(store_url: str) -> None:
    result = run("get", store_url, "chat:3")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "no live entry for key 'chat:3'" in result.stderr


@pytest.mark.redis
def test_clear_asks_first_and_no_keeps_the_data(store_url: str) -> None:
    result = run("clear", store_url, "chat:", input="n\n")
    assert result.exit_code == 1
    assert "Remove every entry under 'chat:'" in result.stderr
    assert "nothing removed" in result.stderr
    assert asyncio.run(_keys(store_url)) == ["chat:1", "chat:2", "notes:1"]


@pytest.mark.redis
def test_clear_asks_first_and_yes_removes_the_prefix(store_url: str, neighbour_url: str) -> None:
    result = run("clear", store_url, "chat:", input="y\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "removed 2 entries\n"
    assert asyncio.run(_keys(store_url)) == ["notes:1"]
    assert asyncio.run(_keys(neighbour_url)) == ["chat:1"]


@pytest.mark.redis
def test_clear_with_yes_does_not_ask(store_url: str) -> None:
    result = run("clear", store_url, "notes:", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout == "removed 1 entry\n"
    assert "Remove" not in result.output
    assert asyncio.run(_keys(store_url)) == ["chat:1", "chat:2"]


@pytest.mark.redis
@pytest.mark.parametrize("prefix", [[], [""]])
def test_clear_everything_needs_all(store_url: str, neighbour_url: str, prefix: list[str]) -> None:
    refused = run("clear", store_url, *prefix, "--yes")
    assert refused.exit_code == 2
    assert "--all" in refused.stderr
    assert asyncio.run(_keys(store_url)) == ["chat:1", "chat:2", "notes:1"]
    both = run("clear", store_url, "chat:", "--all", "--yes")
    assert both.exit_code == 2
    cleared = run("clear", store_url, *prefix, "--all", "--yes")
    assert cleared.exit_code == 0, cleared.output
    assert cleared.stdout == "removed 3 entries\n"
    assert asyncio.run(_keys(store_url)) == []
    assert asyncio.run(_keys(neighbour_url)) == ["chat:1"]  # only this namespace


@pytest.mark.redis
def test_bench_on_redis_reports_it_and_leaves_nothing_behind(store_url: str) -> None:
    result = run(
        "bench", *SMALL, "--core", "python", "--redis", store_url, "--redis-ops", "100", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["redis"].startswith("RedisMemoryStore(")
    redis_rows = [row for row in report["results"] if row["store"] == "redis"]
    # The concurrent rows (50 and 200 tasks sharing the store) follow on Redis only.
    assert [row["operation"] for row in redis_rows] == [
        *OPERATION_NAMES,
        "mixed_50_tasks",
        "mixed_200_tasks",
    ]
    assert [row["calls"] for row in redis_rows[-2:]] == [100, 200]  # at least one per task
    assert all(row["vs_baseline"] is None and row["ops_per_second"] > 0 for row in redis_rows)
    assert asyncio.run(_keys(store_url)) == ["chat:1", "chat:2", "notes:1"]


@pytest.mark.redis
def test_bench_near_cache_adds_a_near_cached_redis_store(store_url: str) -> None:
    result = run(
        "bench",
        *SMALL,
        "--core",
        "python",
        "--redis",
        store_url,
        "--redis-ops",
        "200",
        "--near-cache",
        "100",
        "--json",
    )
    assert result.exit_code == 0, result.output
    rows = {
        row["operation"]: row
        for row in json.loads(result.stdout)["results"]
        if row["store"] == "redis-near-cache"
    }
    assert list(rows) == OPERATION_NAMES
    assert rows["get_hit"]["entries"] == 100
    assert asyncio.run(_keys(store_url)) == ["chat:1", "chat:2", "notes:1"]


def test_bench_near_cache_needs_redis_and_a_positive_size() -> None:
    alone = run("bench", *SMALL, "--near-cache", "10")
    assert alone.exit_code == 2
    assert "--redis" in alone.stderr
    zero = run("bench", *SMALL, "--redis", "redis://127.0.0.1:1/0", "--near-cache", "0")
    assert zero.exit_code == 2
    assert "--near-cache" in zero.stderr


@pytest.mark.redis
def test_keys_and_get_print_a_lone_surrogate_key_escaped(redis_url: str) -> None:
    url = _with_namespace(redis_url, unique_namespace())
    key = "bad\ud800key"

    async def fill() -> None:
        async with open_store(url) as store:
            await store.set(key, "v")

    asyncio.run(fill())
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "memkv", "keys", url],
            capture_output=True,
            encoding="utf-8",
            errors="strict",
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        )
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout == "bad\\ud800key\n"
        shown = run("get", url, key)  # no argv can carry a lone surrogate: in-process
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout)["key"] == key  # a JSON escape, read back exactly
    finally:
        asyncio.run(_clear_all(url))


@pytest.mark.redis
def test_get_shows_a_value_that_neither_json_nor_repr_can_print(redis_url: str) -> None:
    url = _with_namespace(redis_url, unique_namespace()) + "&codec=pickle"
    asyncio.run(_fill(url, {"big": 10**5000}))
    try:
        shown = run("get", url, "big")
        assert shown.exit_code == 0, shown.output
        assert "cannot be shown" in json.loads(shown.stdout)["value"]
    finally:
        asyncio.run(_clear_all(url))
