"""The programs in ``examples/`` run as a user would run them, and do what they say."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import memkv
from tests.redis_servers import unique_namespace

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str) -> str:
    """Run ``examples/<name>`` in a fresh interpreter (offline: no proxy, no key) and
    return what it printed; the memkv under test is the one this test imported.

    Warnings are errors there too, and nothing may reach stderr: no ResourceWarning of a
    connection left open, no "Task was destroyed but it is pending" at exit."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(Path(memkv.__file__).resolve().parents[1]),
        "OPENAI_API_KEY": "",
    }
    completed = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    return completed.stdout


def test_quickstart_runs() -> None:
    printed = run_example("quickstart.py")
    assert "session:42:user = 'ada'" in printed
    assert "session 42 keys: ['session:42:lang', 'session:42:user']" in printed


def recalled(printed: str) -> list[str]:
    friday = printed[printed.index("[friday]") :]
    return [line.split("recalled: ", 1)[1] for line in friday.splitlines() if "recalled:" in line]


def test_langgraph_agent_recalls_a_memory_in_a_new_conversation() -> None:
    printed = run_example("langgraph_memory.py")
    assert recalled(printed)[0] == "my favourite colour is green"
    assert "[friday] agent: Green, as you told me." in printed
    # Each conversation keeps its own messages: friday's recall came from the store.
    assert "(4 messages in thread monday)" in printed
    assert "(2 messages in thread friday)" in printed


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_langgraph_agent_recalls_a_memory_from_redis_in_a_new_store(
    kind: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_url" if kind == "redis" else "cluster_url")
    namespace = unique_namespace()
    try:
        printed = run_example("langgraph_memory.py", f"{url}?namespace={namespace}")
    finally:  # the memories have a 30-day TTL: leave an external server clean
        asyncio.run(clear_namespace(f"{url}?namespace={namespace}"))
    assert recalled(printed)[0] == "my favourite colour is green"


async def clear_namespace(url: str) -> None:
    async with memkv.open_store(url) as store:
        await store.clear()
