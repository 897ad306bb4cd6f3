"""open_store: URL schemes and their parameters."""

from __future__ import annotations

import pytest

from memkv import LocalMemoryStore, open_store
from memkv.errors import InvalidArgumentError


def test_memory_url_opens_a_local_store() -> None:
    store = open_store("memory://")
    assert isinstance(store, LocalMemoryStore)
    assert store.max_entries is None
    bounded = open_store("memory://?max_entries=500")
    assert isinstance(bounded, LocalMemoryStore)
    assert bounded.max_entries == 500


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("ftp://host", "'ftp'"),
        ("nothing-here", "''"),
        ("memory://?max_entries=abc", "max_entries"),
        ("memory://?max_entries=0", "max_entries"),
        ("memory://?size=3", "'size'"),
        ("memory://somehost", "host"),
    ],
)
def test_bad_urls_raise_value_errors_naming_the_problem(url: str, named: str) -> None:
    with pytest.raises(InvalidArgumentError, match=named) as info:
        open_store(url)
    assert isinstance(info.value, ValueError)


def test_non_str_url_raises() -> None:
    with pytest.raises(InvalidArgumentError):
        open_store(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url", ["redis://:secret@[::1", "memory://[::1", "redis://:secret@host:99999/0"]
)
def test_a_malformed_url_is_an_invalid_argument_without_the_password(url: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        open_store(url)
    assert "secret" not in str(raised.value)


def test_a_password_with_a_slash_is_not_quoted_in_the_error() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        open_store("redis://default:Ab3/xyz+Q@host:6379/0")
    assert "Ab3" not in str(raised.value)
    assert "percent-encode" in str(raised.value)
