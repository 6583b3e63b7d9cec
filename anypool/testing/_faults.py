"""Fault injection: a TCP proxy whose faults you switch on while traffic flows, and a scripted fake
server for what a real one will not do."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.abc

__all__ = ["FaultProxy", "ScriptedServer"]


class _LoopbackService:
    """A listener on a free loopback port serving each connection with ``_serve``, in a task
    group of the caller's event loop, for the duration of ``async with``."""

    port = 0

    async def __aenter__(self) -> Any:
        self._listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = self._listener.extra(anyio.abc.SocketAttribute.local_port)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._listener.serve, self._serve)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(None, None, None)
        await self._listener.aclose()

    async def _serve(self, client: Any) -> None:
        raise NotImplementedError


class _Link:
    """One client connection through a :class:`FaultProxy`, and its own faults."""

    __slots__ = ("client", "cut", "to_client", "upstream")

    def __init__(self, client: Any, upstream: Any, cut: set[str]) -> None:
        self.client = client
        self.upstream = upstream
        self.cut = cut  # directions not relayed on this link
        self.to_client = anyio.Lock()  # the relay and inject() take turns writing to the client


class FaultProxy(_LoopbackService):
    """An anyio TCP proxy in front of a server, with faults you switch on while traffic flows.

    ::

        async with FaultProxy(server.port) as proxy:
            redis = RedisPool.from_url(proxy.url)
            proxy.latency = 0.2        # every chunk, both ways, 200 ms late
            await proxy.reset_all()    # every open connection dropped (RST)
            proxy.blackhole = True     # new connections accepted, then never answered
            proxy.cut("downstream")    # replies stop flowing; requests still arrive
            proxy.cut("downstream", new_connections=False)   # only on connections open now
            proxy.corrupt_next_reply(b"?garbage\\r\\n")
            await proxy.inject(b"+OK\\r\\n")   # bytes nobody asked for, to every client

    Runs in the calling event loop (asyncio or trio).  Listens on a free loopback port.

    Attributes:
        latency: seconds added to every chunk relayed, both ways.
        blackhole: accept new connections but relay nothing, in either direction.
        connections: how many client connections are open through the proxy now.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.latency = 0.0
        self.blackhole = False
        self._cut: set[str] = set()  # directions cut on every connection, new ones included
        self._next_reply: Callable[[bytes], bytes] | None = None
        self._links: set[_Link] = set()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<proxy port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def connections(self) -> int:
        return len(self._links)

    def cut(self, direction: str, *, new_connections: bool = True) -> None:
        """Stop relaying ``"upstream"`` (requests) or ``"downstream"`` (replies); a half-open
        connection.  With ``new_connections=False`` only the connections open now are cut,
        and connections made later work.  :meth:`heal` restores both."""
        if direction not in ("upstream", "downstream"):
            raise ValueError("direction is 'upstream' or 'downstream'")
        if new_connections:
            self._cut.add(direction)
        for link in self._links:
            link.cut.add(direction)

    def heal(self) -> None:
        """Undo every fault: no latency, no blackhole, nothing cut."""
        self._cut.clear()
        for link in self._links:
            link.cut.clear()
        self.latency = 0.0
        self.blackhole = False
        self._next_reply = None

    def corrupt_next_reply(self, replacement: bytes) -> None:
        """Replace the next chunk the server sends with ``replacement``."""
        self._next_reply = lambda _chunk: replacement

    def append_to_next_reply(self, extra: bytes) -> None:
        """Send ``extra`` right after the next chunk the server sends, in the same write (a
        stray reply glued to a real one)."""
        self._next_reply = lambda chunk: chunk + extra

    def truncate_next_reply(self, keep: int) -> None:
        """Relay only the first ``keep`` bytes of the next chunk, then reset that connection."""
        self._next_reply = lambda chunk: chunk[:keep]

    async def inject(self, data: bytes) -> int:
        """Send ``data`` to every client connected now, as if the server had sent it unasked
        (a stray reply).  Returns how many connections it was sent to."""
        sent = 0
        for link in list(self._links):
            try:
                async with link.to_client:
                    await link.client.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                continue
            sent += 1
        return sent

    async def reset_all(self) -> None:
        """Drop every open connection at once, both sides."""
        links, self._links = list(self._links), set()
        for link in links:
            await anyio.aclose_forcefully(link.client)
            await anyio.aclose_forcefully(link.upstream)

    async def _serve(self, client: Any) -> None:  # relay one client connection
        try:
            upstream = await anyio.connect_tcp(self.target_host, self.target_port)
        except OSError:
            await anyio.aclose_forcefully(client)
            return
        link = _Link(client, upstream, set(self._cut))
        self._links.add(link)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, link, client, upstream, "upstream", tg.cancel_scope)
                tg.start_soon(self._pump, link, upstream, client, "downstream", tg.cancel_scope)
        finally:
            self._links.discard(link)
            # shielded, and not forceful: on asyncio a socket is only really closed one loop
            # iteration after close(), which a cancelled scope would never give it
            with anyio.CancelScope(shield=True):
                await client.aclose()
                await upstream.aclose()

    async def _pump(self, link: _Link, source: Any, sink: Any, direction: str, scope: Any) -> None:
        try:
            async for chunk in source:
                if self.blackhole or direction in link.cut:
                    continue  # swallowed: the peer waits forever
                if self.latency:
                    await anyio.sleep(self.latency)
                if direction == "upstream":
                    await sink.send(chunk)
                    continue
                transform, self._next_reply = self._next_reply, None
                replaced = chunk if transform is None else transform(chunk)
                async with link.to_client:
                    await sink.send(replaced)
                if len(replaced) < len(chunk):  # truncated: this connection ends here
                    break
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
            pass
        scope.cancel()


_SETINFO = re.compile(rb"(\*4\r\n\$6\r\nCLIENT\r\n\$7\r\nSETINFO\r\n(\$\d+\r\n[^\r]*\r\n){2})+")


def _only_setinfo(request: bytes) -> bool:
    return _SETINFO.fullmatch(request) is not None


class ScriptedServer(_LoopbackService):
    """A fake Redis speaking raw bytes, for what a real server will not do.

    Each accepted connection reads requests and answers the n-th request with ``replies[n]``
    (bytes written as they are; ``None`` means never answer; a callable gets the request and
    returns the bytes).  After the last scripted reply the connection is closed.  The handshake
    is not special: use ``protocol=2`` and no password/db/name so none is sent; the one thing
    it answers by itself is a write made only of ``CLIENT SETINFO`` commands (which anypool
    sends on connect unless ``lib_name``/``lib_version`` are None), with ``+OK`` each.

    ::

        async with ScriptedServer([b"$4294967296\\r\\nabc"]) as fake:   # 4 GiB announced
            ...RedisConfig(host="127.0.0.1", port=fake.port, protocol=2)...
    """

    def __init__(self, replies: Sequence[bytes | Callable[[bytes], bytes] | None]) -> None:
        self.replies = list(replies)
        self.requests: list[bytes] = []

    async def _serve(self, client: Any) -> None:  # play the script on one connection
        try:
            await self._script(client)
        finally:
            with anyio.CancelScope(shield=True):  # see FaultProxy._serve
                await client.aclose()

    async def _script(self, client: Any) -> None:
        for reply in self.replies:
            try:
                request = await client.receive()
                while _only_setinfo(request):  # the handshake's library name and version
                    await client.send(b"+OK\r\n" * request.count(b"SETINFO"))
                    request = await client.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            self.requests.append(request)
            if reply is None:
                await anyio.sleep_forever()
            data = reply(request) if callable(reply) else reply
            try:
                await client.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
