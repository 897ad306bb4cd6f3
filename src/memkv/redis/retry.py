"""The retry policies: ``RetryPolicy`` for the store's operations on memkv's transport,
and redis-py's ``Retry`` (minus the access errors retrying cannot fix) for the redis-py
client a store hands out or is given."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, EqualJitterBackoff

from memkv.redis.errors import ACCESS_ERRORS, retryable

__all__ = ["NoRetryOnAccess", "RetryPolicy"]

R = TypeVar("R")


class RetryPolicy:
    """Runs a failed operation again: ``retries`` more times after an outage (see
    ``memkv.redis.errors.retryable``), sleeping ``backoff.compute(n)`` before the n-th
    (redis-py's backoff objects; ``equal_jitter`` builds the store's default).

    The store applies it in its operation decorator, around the whole operation: only
    after a first failure, so a call that succeeds pays nothing for it.
    """

    __slots__ = ("backoff", "retries")

    def __init__(self, retries: int, backoff: AbstractBackoff) -> None:
        self.retries = retries
        self.backoff = backoff

    @classmethod
    def equal_jitter(cls, retries: int, base: float, cap: float) -> RetryPolicy:
        """Exponential backoff from ``base`` up to ``cap`` seconds, half of it jitter."""
        return cls(retries, EqualJitterBackoff(cap=cap, base=base))

    async def call(self, attempt: Callable[[], Awaitable[R]]) -> R:
        """Run ``attempt``, and again under this policy after an outage."""
        try:
            return await attempt()
        except Exception as err:
            return await self.again(attempt, err)

    async def again(self, attempt: Callable[[], Awaitable[R]], error: BaseException) -> R:
        """Run ``attempt`` after ``error`` made the first one fail, until it succeeds, a
        failure is not retryable, or the retries are spent: then raise the last error."""
        if not retryable(error):
            raise error
        for failures in range(1, self.retries + 1):
            await asyncio.sleep(self.backoff.compute(failures))
            try:
                return await attempt()
            except Exception as err:
                if not retryable(err):
                    raise
                error = err
        raise error

    def __repr__(self) -> str:
        return f"RetryPolicy(retries={self.retries}, backoff={type(self.backoff).__name__})"


class _NotRetried(Exception):
    """Carries an access error through ``Retry``, which only retries its own errors."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class NoRetryOnAccess(Retry):
    """redis-py's ``Retry`` minus the access errors, which retrying cannot fix.

    ``AuthenticationError`` subclasses redis-py's ``ConnectionError``, so a plain
    ``Retry`` would back off and retry a wrong password ``retries`` times. Wrapping
    the operation (rather than passing ``is_retryable``) works on every redis-py 5+.
    """

    async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        async def attempt() -> Any:
            try:
                return await do()
            except ACCESS_ERRORS as err:
                # No "from": the wrapper is dropped below, and must not join err's chain.
                raise _NotRetried(err) from None

        try:
            return await super().call_with_retry(attempt, fail, *args, **kwargs)
        except _NotRetried as wrapped:
            error = wrapped.error
        # Raised outside the except block, so that the wrapper does not become the
        # error's __context__: wrapper -> error -> wrapper was a cycle that made
        # traceback walkers without a seen-set loop forever.
        raise error
