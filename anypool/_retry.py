"""Opt-in retries with a redis-py ``Retry`` object, that never resend a command that may have run.

redis-py's ``retry=`` resends a command on the errors its Retry names, whether or not the
command reached the server.  anypool takes the same object (its backoff, its count, its
errors) but retries, by default, only attempts that *provably never sent* the command: the
pool gave no connection (PoolTimeout, a failed connect, the breaker open), or the connection
failed before a byte of the command was written.  A command that failed after its write
began may have run; it is resent only with ``retry_may_have_run=True`` (then it may run twice:
fine for GET or SET, not for INCR or LPUSH).  Backoff delays are slept with anyio.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import anyio
import redis.exceptions

from ._compat import default_retry, retry_parts
from ._errors import ConfigError

__all__ = ["RetryRule", "Sent"]

T = TypeVar("T")


class Sent:
    """Set by an attempt once the command's write has begun (it may then have run)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False


class RetryRule:
    """When and how to retry a command; built by :meth:`from_options`.

    Attributes:
        retries: retries after the first attempt (negative: no limit).
        errors: exception classes that are retried.
        may_have_run: also retry an attempt whose write had begun.
    """

    def __init__(
        self, retry: Any, errors: Iterable[type[BaseException]], *, may_have_run: bool
    ) -> None:
        parts = retry_parts(retry)
        if parts is None:
            raise ConfigError(
                "retry", type(retry).__name__,
                "must be a redis-py Retry object (redis.asyncio.retry.Retry or "
                "redis.retry.Retry), e.g. Retry(ExponentialBackoff(), 3)",
            )  # fmt: skip
        self.backoff, self.retries, supported = parts
        self.errors: tuple[type[BaseException], ...] = tuple(dict.fromkeys((*supported, *errors)))
        self.may_have_run = may_have_run

    @classmethod
    def from_options(
        cls,
        retry: Any = None,
        retry_on_error: Iterable[type[BaseException]] | str | None = None,
        retry_on_timeout: bool = False,
        retry_may_have_run: bool = False,
    ) -> RetryRule | None:
        """redis-py's three retry keywords, with redis-py's meaning; None: no retries.

        ``retry_on_error`` adds error classes to the Retry's own, ``retry_on_timeout=True``
        adds ``TimeoutError``; either one without ``retry`` uses redis-py's default Retry.
        A non-empty string for ``retry_on_error`` (its URL form, ``?retry_on_error=...``)
        turns retries on and adds no class, as in redis-py, which does not read the text as
        class names; an empty one leaves it unset.

        Raises:
            ConfigError: a value of the wrong type.
        """
        if not isinstance(retry_on_timeout, bool):
            raise ConfigError("retry_on_timeout", retry_on_timeout, "must be True or False")
        if not isinstance(retry_may_have_run, bool):
            raise ConfigError("retry_may_have_run", retry_may_have_run, "must be True or False")
        asked = False
        if isinstance(retry_on_error, str):  # the URL form: on if not empty, no classes
            asked, retry_on_error = bool(retry_on_error), None
        extra = list(retry_on_error or ())
        for error in extra:
            if not (isinstance(error, type) and issubclass(error, BaseException)):
                raise ConfigError(
                    "retry_on_error", error, "must be a list of exception classes"
                )  # fmt: skip
        if retry_on_timeout:
            extra.append(redis.exceptions.TimeoutError)
        if retry is None:
            if not extra and not asked:
                if retry_may_have_run:
                    raise ConfigError(
                        "retry_may_have_run", True, "needs retry= (a redis-py Retry object)"
                    )
                return None
            retry = default_retry()
        return cls(retry, extra, may_have_run=retry_may_have_run)

    async def call(self, attempt: Callable[[Sent], Awaitable[T]]) -> T:
        """Run ``attempt`` until it succeeds, fails with an error not retried, or the retries
        run out (the last error propagates).

        Cancellation: propagates at once, from an attempt or from a backoff sleep.
        """
        backoff = self.backoff
        reset = getattr(backoff, "reset", None)
        if callable(reset):
            reset()
        failures = 0
        while True:
            sent = Sent()
            try:
                return await attempt(sent)
            except self.errors:
                if sent.value and not self.may_have_run:
                    raise  # it may have run: never resent unless asked for
                failures += 1
                if 0 <= self.retries < failures:
                    raise
            await anyio.sleep(max(0.0, float(backoff.compute(failures))))

    def __repr__(self) -> str:
        names = ", ".join(e.__name__ for e in self.errors)
        return (
            f"<RetryRule retries={self.retries} on ({names}) "
            f"may_have_run={self.may_have_run} backoff={type(self.backoff).__name__}>"
        )
