"""Supervised listeners: a handler run for every event, as a child task of the pool."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import anyio.abc

from .._errors import PoolClosed, SlowConsumer
from ._hub import Hub, subscription
from ._subscription import Event

__all__ = ["Listener", "RestartPolicy"]

logger = logging.getLogger("anypool.pubsub")


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """How often a listener's handler may fail before the error propagates.

    Attributes:
        max_restarts: restarts allowed within ``window`` seconds; one more failure propagates.
        window: seconds over which restarts are counted.
        delay: seconds to wait before a restart.
    """

    max_restarts: int = 5
    window: float = 60.0
    delay: float = 0.1


class Listener:
    """A handler run for each event, as a supervised child task of the pool.

    Returned by ``RedisPool.start_listener()``.  The listener holds one subscription for its
    whole life:

    * a handler that raises is restarted, on the same subscription (so nothing published
      meanwhile is lost), within its :class:`RestartPolicy`; one failure more and the error
      propagates out of the pool's ``async with``;
    * a handler too slow for its subscription's policy (SlowConsumer) is not a failure: the
      subscription resumes, and the handler gets a :class:`Reconnected` event for the gap
      (the messages dropped meanwhile are counted in the subscription's ``dropped``);
    * the listener ends quietly when the pool closes, or when :meth:`cancel` is called.

    Attributes:
        handled: events the handler processed.
        failures: handler exceptions so far.
        restarts: restarts so far.
        overflows: times the subscription fell behind and resumed.
    """

    def __init__(
        self,
        hub: Hub,
        handler: Callable[[Event], Awaitable[Any] | Any],
        channels: Iterable[Any],
        patterns: Iterable[Any],
        restart: RestartPolicy,
        options: dict[str, Any],
    ) -> None:
        self._hub = hub
        self._handler = handler
        self._channels = list(channels)
        self._patterns = list(patterns)
        if not callable(handler):
            raise TypeError(f"the handler must be callable, not {type(handler).__name__}")
        if not self._channels and not self._patterns:
            raise ValueError("a listener needs channels or patterns to listen to")
        self._restart = restart
        self._options = options
        self._scope = anyio.CancelScope()
        self.handled = 0
        self.failures = 0
        self.restarts = 0
        self.overflows = 0

    def cancel(self) -> None:
        """Stop the listener (it leaves its subscription on its way out, at once)."""
        self._scope.cancel()

    def statistics(self) -> dict[str, int]:
        """handled, failures, restarts and overflows, as a dict."""
        return {
            "handled": self.handled, "failures": self.failures, "restarts": self.restarts,
            "overflows": self.overflows,
        }  # fmt: skip

    async def run(self, *, task_status: anyio.abc.TaskStatus[Listener]) -> None:
        recent: deque[float] = deque()
        with self._scope:
            async with subscription(self._hub, "channel", self._channels, **self._options) as sub:
                if self._patterns:
                    await sub.psubscribe(*self._patterns)
                task_status.started(self)
                while True:
                    try:
                        event = await sub.__anext__()
                    except StopAsyncIteration:
                        return
                    except PoolClosed:
                        return
                    except SlowConsumer as exc:
                        self.overflows += 1
                        logger.warning("listener fell behind (%s); resuming", exc)
                        sub.resume()
                        continue
                    try:
                        result = self._handler(event)
                        if inspect.isawaitable(result):
                            await result
                        self.handled += 1
                    except Exception:
                        self.failures += 1
                        now = anyio.current_time()
                        recent.append(now)
                        while recent and now - recent[0] > self._restart.window:
                            recent.popleft()
                        if len(recent) > self._restart.max_restarts:
                            raise  # past the budget: out of the pool's task group
                        logger.exception("listener handler failed; restarting it")
                        await anyio.sleep(self._restart.delay)
                        self.restarts += 1
