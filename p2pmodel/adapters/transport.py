"""TCP streams for the peer link: dial an address, serve a port (trio).

The link (``services.link``) speaks its protocol over whatever streams a transport gives it;
this one is plain TCP. Tests swap in ``testing.fakes.MemoryTransport`` (same interface, in
memory), and one contract suite runs against both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

StreamHandler = Callable[[trio.abc.Stream], Awaitable[None]]


class Transport(Protocol):
    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        """A stream to ``host:port``; ``OSError`` if nothing answers there."""
        ...

    async def serve(
        self,
        host: str,
        port: int,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections on ``host:port`` (0: any free port; started with the port) and
        run ``handler`` on each until cancelled."""
        ...


class TcpTransport:
    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    async def serve(
        self,
        host: str,
        port: int,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            task_status.started(bound)


def peer_host(stream: trio.abc.Stream) -> str:
    """The address a served stream comes from (what per-host limits count by)."""
    sock = getattr(stream, "socket", None)
    if sock is not None:
        try:
            return str(sock.getpeername()[0])
        except OSError:
            return "?"
    return str(getattr(stream, "remote_host", "?"))
