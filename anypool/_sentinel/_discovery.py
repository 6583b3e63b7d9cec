"""Asking the sentinels where a service's nodes are, and checking what they say.

The sentinels are asked in turn, the one that answered last first (Redis's Sentinel client
guidelines).  A sentinel's word is not trusted on its own: a partitioned or restarted one may
name a node that is no longer the primary, so the node named is asked ``ROLE`` on a new
connection, which is kept only if the node is what was asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis.exceptions

from .._config import RedisConfig
from .._connection import Connection
from .._errors import (
    AnyPoolError,
    AuthenticationError,
    ConnectError,
    PrimaryNotFound,
    ProtocolError,
    ReplicaNotFound,
)
from ._settings import SentinelSettings, addresses_text

__all__ = ["Discovery", "NotTheRole", "parse_state"]

logger = logging.getLogger("anypool.sentinel")

Address = tuple[str, int]
# What a failure to ask one sentinel or to check one node may be (each is recorded, and the
# next sentinel asked).
_FAILURES = (AnyPoolError, OSError, redis.exceptions.RedisError)
_DOWN_FLAGS = frozenset({"s_down", "o_down", "disconnected"})


class NotTheRole(ConnectError):
    """A node a sentinel named is not what was asked for (``ROLE`` says otherwise)."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def show(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_state(record: Any) -> dict[str, str]:
    """A sentinel's record of an instance (a flat list of names and values in RESP2, a map in
    RESP3) as a dict of str.

    Raises:
        ProtocolError: it is neither.
    """
    if isinstance(record, dict):
        return {_text(k): _text(v) for k, v in record.items()}
    if not isinstance(record, list) or len(record) % 2:
        raise ProtocolError(f"a sentinel's instance record is not a list of pairs: {record!r:.80}")
    return {_text(record[i]): _text(record[i + 1]) for i in range(0, len(record), 2)}


def parse_address(reply: Any) -> Address | None:
    """``SENTINEL GET-MASTER-ADDR-BY-NAME``'s reply: ``(host, port)``, or None (unknown name).

    Raises:
        ProtocolError: a reply of another shape.
    """
    if reply is None:
        return None
    try:
        host, port = reply
        return _text(host), int(port)
    except (TypeError, ValueError):
        raise ProtocolError(f"not an address: {reply!r:.80}") from None


class Discovery:
    """Finds the primary and the healthy replicas of one service through its sentinels.

    Args:
        settings: the sentinels, the service, and how to connect to a sentinel.
        data: how to connect to a data node (its host and port are the ones found).
    """

    def __init__(self, settings: SentinelSettings, data: RedisConfig) -> None:
        self.settings = settings
        self.service = settings.service_name
        self._data = data
        self._order: list[Address] = list(settings.sentinels)
        self.counters = {"primary_lookups": 0, "replica_lookups": 0, "sentinel_failures": 0}

    @property
    def sentinels(self) -> list[Address]:
        """The sentinels, in the order they will be asked (the last that answered first)."""
        return list(self._order)

    def sentinel_config(self, address: Address) -> RedisConfig:
        return self.settings.config.replace(host=address[0], port=address[1])

    def data_config(self, address: Address) -> RedisConfig:
        return self._data.replace(host=address[0], port=address[1])

    def _answered(self, address: Address) -> None:
        if self._order[0] != address:
            self._order.remove(address)
            self._order.insert(0, address)

    async def ask(self, address: Address, *command: Any) -> Any:
        """One command on a new connection to the sentinel at ``address`` (closed after).

        Raises:
            ConnectError, TimeoutError, AuthenticationError...: as a connection's; the
                sentinel's error reply as redis-py's exception.
        """
        try:
            connection = await Connection.connect(self.sentinel_config(address))
            try:
                return await connection.execute(*command)
            finally:
                await connection.aclose()
        except redis.exceptions.AuthenticationError as exc:  # refused at AUTH, or NOAUTH
            raise AuthenticationError(
                f"the sentinel {show(address)} refused the credentials ({exc}): the sentinels' "
                "are sentinel_username/sentinel_password (username/password are the data "
                "nodes', never sent to the sentinels)"
            ) from exc

    async def connect_checked(self, address: Address, role: str) -> Connection:
        """A new connection to the data node at ``address``, kept only if ``ROLE`` says it is
        ``role`` (``"master"``, or ``"slave"`` with its link to the primary up).

        Raises:
            NotTheRole: it is something else (the connection is closed).
            ConnectError, TimeoutError...: it could not be connected to or asked.
        """
        connection = await Connection.connect(self.data_config(address))
        try:
            # Bounded even with no socket_timeout: a node that hangs is not the primary.
            try:
                reply = await connection.execute("ROLE", timeout=self._data.connect_timeout or 10.0)
            except redis.exceptions.NoPermissionError as exc:
                raise AuthenticationError(
                    f"{show(address)} refused ROLE ({exc}): the data nodes' user needs the "
                    "ROLE command (+role) for a Sentinel pool to check whom it talks to"
                ) from exc
            except redis.exceptions.ResponseError as exc:  # BUSY, LOADING...
                raise ConnectError(f"{show(address)} answered ROLE with an error: {exc}") from exc
            said = _text(reply[0]) if isinstance(reply, list) and reply else repr(reply)
            if said != role:
                raise NotTheRole(f"{show(address)} says ROLE {said}, not {role}")
            if role == "slave" and (len(reply) < 4 or _text(reply[3]) != "connected"):
                state = _text(reply[3]) if len(reply) > 3 else "unknown"
                raise NotTheRole(
                    f"{show(address)} is a replica whose link to its primary is {state}"
                )
        except BaseException:
            await connection.aclose()
            raise
        return connection

    async def primary(
        self, refuse: Callable[[Address], str | None] | None = None
    ) -> tuple[Address, Connection]:
        """Ask the sentinels in turn for the primary's address and check it with ``ROLE``.

        Args:
            refuse: says why an address named must not be taken (or None to take it): the
                caller knows better than a sentinel that lags (a node a failover replaced
                still says ``ROLE`` master until the sentinels demote it).

        Returns:
            The primary's address and a new connection to it that said ``ROLE`` master.

        Raises:
            PrimaryNotFound: no sentinel named a node that answered as primary (the message
                names every sentinel asked and why).

        Cancellation: nothing is left open.
        """
        self.counters["primary_lookups"] += 1
        attempts: list[tuple[Address, str]] = []
        for sentinel in list(self._order):
            try:
                named = parse_address(
                    await self.ask(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                )
            except _FAILURES as exc:
                self.counters["sentinel_failures"] += 1
                attempts.append((sentinel, f"{type(exc).__name__}: {exc}"))
                continue
            if named is None:
                attempts.append((sentinel, f"does not know the service {self.service!r}"))
                continue
            why_not = refuse(named) if refuse is not None else None
            if why_not is not None:
                attempts.append((sentinel, f"named {show(named)}, but {why_not}"))
                continue
            try:
                connection = await self.connect_checked(named, "master")
            except _FAILURES as exc:
                attempts.append((sentinel, f"named {show(named)}, but {_reason(exc)}"))
                continue
            self._answered(sentinel)
            return named, connection
        raise PrimaryNotFound(
            f"no sentinel named a primary for {self.service!r} that answered as one ("
            + "; ".join(f"{show(s)}: {why}" for s, why in attempts)
            + ")",
            attempts,
        )

    async def views(self) -> dict[str, str]:
        """What each sentinel says the primary is: ``{"host:port": "host:port"}``, or why it
        could not say."""
        views = {}
        for sentinel in list(self._order):
            try:
                named = parse_address(
                    await self.ask(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                )
            except _FAILURES as exc:
                views[show(sentinel)] = f"{type(exc).__name__}: {exc}"
                continue
            views[show(sentinel)] = show(named) if named else "does not know the service"
        return views

    async def replicas(self) -> list[Address]:
        """Ask the sentinels in turn for the service's replicas; the first that lists healthy
        ones gives the answer.  Healthy: not down (subjectively or objectively), not
        disconnected from the sentinel, and with its link to the primary up.

        Raises:
            ReplicaNotFound: no sentinel listed a healthy replica (the message names every
                sentinel asked and what it said).
        """
        self.counters["replica_lookups"] += 1
        attempts: list[str] = []
        for sentinel in list(self._order):
            try:
                reply = await self.ask(sentinel, "SENTINEL", "REPLICAS", self.service)
                records = [parse_state(r) for r in reply]
                healthy = [(r["ip"], int(r["port"])) for r in records if _healthy(r)]
            except (*_FAILURES, KeyError, TypeError, ValueError) as exc:
                self.counters["sentinel_failures"] += 1
                attempts.append(f"{show(sentinel)}: {type(exc).__name__}: {exc}")
                continue
            if healthy:
                self._answered(sentinel)
                return healthy
            attempts.append(f"{show(sentinel)}: lists {len(records)} replicas, none healthy")
        raise ReplicaNotFound(
            f"no sentinel listed a healthy replica of {self.service!r} ({'; '.join(attempts)})"
        )

    def __repr__(self) -> str:
        return f"<Discovery {self.service!r} via {addresses_text(self._order)}>"


def _healthy(record: dict[str, str]) -> bool:
    flags = set(record.get("flags", "").split(","))
    return not flags & _DOWN_FLAGS and record.get("master-link-status") == "ok"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NotTheRole):
        return str(exc).partition(" ")[2]  # "says ROLE slave, not master"
    return f"connecting to it failed ({type(exc).__name__}: {exc})"
