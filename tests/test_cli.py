"""The memkv command line: the benchmark's JSON output and the inspection commands."""

from __future__ import annotations

import asyncio
import json

import pytest

from memkv import LocalMemoryStore
from memkv.benchmark import planned_calls, run_store_benchmark
from memkv.cli import main


def test_bench_json_reports_every_operation_against_the_baseline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "--keys", "200", "--ops", "200", "--json", "--core", "python"]) == 0
    rows = json.loads(capsys.readouterr().out)
    stores = {row["store"] for row in rows}
    assert stores == {"dict + async def", "local (python)"}
    operations = [row["operation"] for row in rows if row["store"] == "local (python)"]
    assert operations[:2] == ["set", "get hit"]
    assert all(row["ops_per_second"] > 0 and row["p99_us"] >= row["p50_us"] for row in rows)


def test_planned_calls_matches_the_progress_reported() -> None:
    reported: list[int] = []
    asyncio.run(
        run_store_benchmark(
            "local", LocalMemoryStore(), keys=300, calls=500, progress=reported.append
        )
    )
    assert sum(reported) == planned_calls(500)


def test_bench_rejects_tiny_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--ops", "5"]) == 2


def test_keys_and_get_on_an_empty_memory_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "memory://"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["get", "memory://", "missing"]) == 1


def test_a_bad_url_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "ftp://:secret@host"]) == 2
    assert "secret" not in capsys.readouterr().out
