"""The retry policy: redis-py's ``Retry``, minus the access errors retrying cannot fix."""

from __future__ import annotations

from typing import Any

from redis.asyncio.retry import Retry

from memkv.redis.errors import ACCESS_ERRORS

__all__ = ["NoRetryOnAccess"]


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
