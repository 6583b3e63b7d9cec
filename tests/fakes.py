"""A fake ResourceFactory for the generic pool: every fault on demand, every move recorded."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import anyio

from anypool import ResourceFactory


class FakeResource:
    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.closed = False
        self.dead = False  # looks_alive() says no: the peer went away while idle
        self.broken = False  # check() raises
        self.owes = False  # reset() says no: like a connection with replies owed

    def __repr__(self) -> str:
        flags = [f for f in ("closed", "dead", "broken", "owes") if getattr(self, f)]
        return f"<R{self.id} {' '.join(flags)}>"


class FakeFactory(ResourceFactory[FakeResource]):
    def __init__(self) -> None:
        self.created: list[FakeResource] = []
        self.fail_next = 0  # the next N creates raise
        self.fail_always = False
        self.hang = False  # create() blocks until cancelled or unhung
        self.unhang = anyio.Event()
        self.create_calls = 0
        self.checks = 0
        # Awaited at the start of create/check/close: a state machine parks the pool's
        # maintenance there, to run other rules in the middle of a maintenance round.
        self.gate: Callable[[str], Awaitable[None]] | None = None

    async def create(self) -> FakeResource:
        self.create_calls += 1
        await anyio.lowlevel.checkpoint()
        if self.gate is not None:
            await self.gate("create")
        if self.hang:
            await self.unhang.wait()
        if self.fail_always or self.fail_next:
            self.fail_next = max(0, self.fail_next - 1)
            raise ConnectionRefusedError("fake: connection refused")
        resource = FakeResource()
        self.created.append(resource)
        return resource

    async def close(self, resource: FakeResource) -> None:
        assert not resource.closed, f"{resource} closed twice"
        if self.gate is not None:
            await self.gate("close")
        assert not resource.closed, f"{resource} closed twice"
        resource.closed = True

    async def check(self, resource: FakeResource) -> None:
        self.checks += 1
        await anyio.lowlevel.checkpoint()
        if self.gate is not None:
            await self.gate("check")
        if resource.broken:
            raise ConnectionResetError("fake: check failed")

    async def reset(self, resource: FakeResource) -> bool:
        return not resource.owes

    def looks_alive(self, resource: FakeResource) -> bool:
        return not resource.dead

    @property
    def open_resources(self) -> list[FakeResource]:
        return [r for r in self.created if not r.closed]
