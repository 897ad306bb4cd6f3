"""Fixtures shared by every test: the fake clock and one harness per kind of store.

The helpers they use (``FakeClock``, ``StoreHarness``, ``core_module``, ...) are in
``tests/helpers.py``.

``harness`` is parametrised over every store kind, so a conformance test written once
runs on the pure-Python local core, the Cython local core, one Redis/Valkey server and
a Redis Cluster. ``local_harness`` runs only the two local cores.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers import (
    LOCAL_KINDS,
    REDIS_KINDS,
    FakeClock,
    StoreHarness,
    core_module,
    make_local_harness,
)

pytest_plugins = ["tests.redis_servers"]


@pytest.fixture(params=LOCAL_KINDS)
async def local_harness(request: pytest.FixtureRequest) -> AsyncIterator[StoreHarness]:
    harness = await make_local_harness(request.param)
    yield harness
    await harness.store.close()


@pytest.fixture(params=[*LOCAL_KINDS, *REDIS_KINDS])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[StoreHarness]:
    if request.param in LOCAL_KINDS:
        made = await make_local_harness(request.param)
    else:
        factory = request.getfixturevalue(
            "redis_harness_factory" if request.param == "redis" else "cluster_harness_factory"
        )
        made = await factory()
    yield made
    for store in [made.store, *made.opened]:
        await store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["python", "cython"])
def core(request: pytest.FixtureRequest) -> str:
    """The name of each local core, for tests that build their own stores."""
    core_module(request.param)
    return str(request.param)
