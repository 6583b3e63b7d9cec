"""Credentials from a redis-py ``credential_provider``: asking it (bounded, never blocking
the event loop), and reading what a streaming provider hands over when it rotates them."""

from __future__ import annotations

import math
from typing import Any, Final

import anyio
import anyio.to_thread
from redis.credentials import CredentialProvider

from ._config import RedisConfig
from ._errors import AuthenticationError, ConnectTimeout

__all__ = ["DONE", "credentials_of", "fetch_credentials"]


class _Done:
    """An awaitable that completes at once (and warns of nothing if never awaited)."""

    __slots__ = ()

    def __await__(self) -> Any:
        return iter(())


DONE: Final = _Done()


def credentials_of(token: Any) -> tuple[str | None, str] | None:
    """Credentials from what a streaming provider passes to ``on_next``: a redis-py token
    (``try_get("oid")`` is the user, ``get_value()`` the password, as redis-py's own re-auth
    reads it), or a ``(password,)``/``(username, password)`` tuple.  None: ask the provider."""
    if callable(getattr(token, "get_value", None)) and callable(getattr(token, "try_get", None)):
        return token.try_get("oid"), token.get_value()
    if (
        isinstance(token, tuple)
        and len(token) in (1, 2)
        and all(isinstance(item, str) for item in token)
    ):
        return (None, token[0]) if len(token) == 1 else (token[0], token[1])
    return None


async def fetch_credentials(config: RedisConfig) -> tuple[str | None, str]:
    """Ask ``config.credential_provider`` for ``(username, password)``.

    ``get_credentials_async()`` is awaited when the provider implements it (redis-py's base
    class only logs a warning and calls ``get_credentials()``, which is then called directly,
    in a worker thread).  Either is given at most ``connect_timeout``.

    Cancellation: the provider's coroutine is cancelled; a worker thread is abandoned (it
    finishes on its own, its result unused).

    Raises:
        AuthenticationError: the provider failed, or returned something else than
            ``(password,)`` or ``(username, password)`` strings (no value is shown).
        ConnectTimeout: the provider gave nothing within ``connect_timeout``.
    """
    provider = config.credential_provider
    kind = type(provider).__name__
    timeout = config.connect_timeout
    credentials: Any = None
    with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
        try:
            method = getattr(type(provider), "get_credentials_async", None)
            base = getattr(CredentialProvider, "get_credentials_async", None)  # redis-py >= 5.1
            if method is not None and method is not base:
                credentials = await provider.get_credentials_async()
            else:
                # A worker thread: a slow provider (a vault over the network) must not block
                # the event loop; on cancellation or timeout the thread is abandoned.
                credentials = await anyio.to_thread.run_sync(
                    provider.get_credentials, abandon_on_cancel=True
                )
        except Exception as exc:
            raise AuthenticationError(
                f"the credential provider {kind} failed for {config.address}: {type(exc).__name__}"
            ) from exc
    if scope.cancelled_caught:
        raise ConnectTimeout(
            f"the credential provider {kind} gave no credentials for {config.address} within "
            f"connect_timeout ({timeout}s)"
        )
    if (
        not isinstance(credentials, tuple | list)
        or len(credentials) not in (1, 2)
        or not all(isinstance(item, str) for item in credentials)
    ):
        raise AuthenticationError(
            f"the credential provider {kind} returned a {type(credentials).__name__} of "
            f"{len(credentials) if isinstance(credentials, tuple | list) else 'no'} items; it "
            "must return (password,) or (username, password), as strings"
        )
    if len(credentials) == 1:
        return None, credentials[0]
    return credentials[0], credentials[1]
