"""Redis Sentinel: a pool of a service's primary (or replicas) wherever the sentinels say it
is, following failovers.

* ``_settings``: the sentinels, the service, the role, and the ``redis+sentinel://`` URL
  (pure code);
* ``_discovery``: asking the sentinels, checking their answer with ``ROLE``;
* ``_factory``: the connection factory the pool uses, and the task that listens to the
  sentinels' announcements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._config import RedisConfig
from ._discovery import Discovery
from ._factory import SentinelConnectionFactory
from ._settings import (
    SentinelSettings,
    check_role,
    check_sentinels,
    sentinel_config,
    split_sentinel_url,
)

__all__ = [
    "Discovery", "SentinelConnectionFactory", "SentinelSettings", "is_sentinel_url", "settings",
    "split_sentinel_url",
]  # fmt: skip


def is_sentinel_url(url: Any) -> bool:
    """Whether ``url`` is a ``redis+sentinel://`` or ``rediss+sentinel://`` URL."""
    return isinstance(url, str) and url.partition("://")[0].lower() in (
        "redis+sentinel", "rediss+sentinel",
    )  # fmt: skip


def settings(
    sentinels: Sequence[Any],
    service_name: str,
    data: RedisConfig,
    *,
    role: str = "primary",
    sentinel_username: str | None = None,
    sentinel_password: str | None = None,
    sentinel_options: Mapping[str, Any] | None = None,
) -> SentinelSettings:
    """Checked :class:`SentinelSettings` (see ``RedisPool.from_sentinel`` for the meaning).

    Raises:
        ConfigError: an argument is invalid (it is named).
    """
    return SentinelSettings(
        sentinels=check_sentinels(sentinels),
        service_name=service_name,
        role=check_role(role),
        config=sentinel_config(
            data, username=sentinel_username, password=sentinel_password,
            options=sentinel_options,
        ),
    )  # fmt: skip
