"""The examples in memkv's docstrings run, and show what they print.

Every module of the installed package is searched with ``doctest`` (the compiled core
too, when it is built). Examples use ``asyncio.run(main())`` where code must await:
doctest has no top-level ``await``. Examples that talk to Redis say
``redis://localhost:6379/0``; here that URL points at the test session's server.
No example may be skipped.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil

import pytest

import memkv
from tests.helpers import core_module

#: The URL Redis examples use; replaced by the test server's.
EXAMPLE_REDIS_URL = "redis://localhost:6379/0"

#: The modules whose examples need a Redis server.
REDIS_EXAMPLE_MODULES = (
    "memkv.integrations.langchain",
    "memkv.integrations.langgraph.store",
    "memkv.redis.store",
)

MODULES = sorted(
    module.name
    for module in pkgutil.walk_packages(memkv.__path__, "memkv.")
    if module.name != "memkv.__main__"  # running it runs the command line
)


def _examples(name: str) -> list[doctest.DocTest]:
    if name == "memkv._core_c":
        core_module("cython")  # skips when MEMKV_NO_EXTENSIONS=1
    module = importlib.import_module(name)
    return [test for test in doctest.DocTestFinder().find(module) if test.examples]


def _run(tests: list[doctest.DocTest], redis_url: str | None = None) -> str:
    """Run ``tests``; the report of every failure, or ``""``."""
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        for example in test.examples:
            assert not example.options.get(doctest.SKIP), f"{test.name}: a skipped example"
            if redis_url is not None:
                example.source = example.source.replace(EXAMPLE_REDIS_URL, redis_url)
        runner.run(test, out=report.write)
    return report.getvalue()


@pytest.mark.parametrize("name", [name for name in MODULES if name not in REDIS_EXAMPLE_MODULES])
def test_docstring_examples_run(name: str) -> None:
    tests = _examples(name)
    for test in tests:
        assert not any(EXAMPLE_REDIS_URL in example.source for example in test.examples), (
            f"{test.name} talks to Redis: list {name} in REDIS_EXAMPLE_MODULES"
        )
    assert _run(tests) == ""


@pytest.mark.parametrize("name", REDIS_EXAMPLE_MODULES)
def test_docstring_examples_run_on_redis(name: str, redis_url: str) -> None:
    tests = _examples(name)
    assert any(EXAMPLE_REDIS_URL in example.source for test in tests for example in test.examples)
    assert _run(tests, redis_url) == ""


def test_the_public_modules_have_examples() -> None:
    documented = {name for name in MODULES if name != "memkv._core_c" and _examples(name)}
    assert {
        "memkv._core_py",
        "memkv.codecs",
        "memkv.integrations.langchain",
        "memkv.integrations.langgraph.cache",
        "memkv.local",
        "memkv.manager",
        "memkv.metrics.otel",
        "memkv.metrics.prometheus",
        "memkv.redis.store",
        "memkv.store",
    } <= documented
