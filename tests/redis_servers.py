"""Redis fixtures (placeholder until the Redis store lands): no servers yet."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest


@pytest.fixture
def redis_harness_factory() -> Callable[[], Awaitable[Any]]:
    pytest.skip("the Redis store is not built yet")


@pytest.fixture
def cluster_harness_factory() -> Callable[[], Awaitable[Any]]:
    pytest.skip("the Redis store is not built yet")
