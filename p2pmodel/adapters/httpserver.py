"""The agent's HTTP server: hypercorn's HTTP/1.1 connections for an ASGI app, on sockets whose
accepting is left to the caller, so their number can be bounded (trio).

Theory of operation. hypercorn's ``serve`` accepts every connection it can, and an idle one
costs it a file until its keep-alive timeout: a local user with a loop of ``connect()`` ran
the agent out of files (measured: 1,574 connections at a soft limit of 1024). hypercorn has
no setting that bounds connections, so this module only binds the sockets as hypercorn would
(``bind``: ``Config.create_sockets``) and serves one accepted connection with hypercorn's
own per-connection server (``connection_server``: ``TCPServer``, HTTP parsing, keep-alive,
the ASGI calls), so nothing here speaks HTTP. The caller accepts and admits
(``transport.serve_admitted``: a cap per address and in all, out of files wait and accept
again). No lifespan events are sent: the app needs none.

A connection the client closed is given ``CLOSE_GRACE`` to finish and then ended: hypercorn
itself keeps it (and its file, and here its place under the cap) until its keep-alive timer
runs out (measured: a flood that let go left the endpoint refusing for the full 30 s).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

CLOSE_GRACE = 1.0  # seconds hypercorn gets to wind down a connection the client closed


class _Watched(trio.abc.HalfCloseableStream):
    """A served socket stream that ends its connection's scope soon after the client closed
    (a receive of no bytes)."""

    def __init__(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        self.stream = stream
        self.socket = stream.socket  # hypercorn reads the addresses from it
        self.scope = scope

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.stream.receive_some(max_bytes)
        if not data:
            self.scope.deadline = min(self.scope.deadline, trio.current_time() + CLOSE_GRACE)
        return bytes(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


def bind(config: Any) -> tuple[list[trio.SocketListener], list[str]]:
    """Listening sockets for ``config.bind`` (a hypercorn ``Config``) and their URLs.
    ``OSError`` if a bind fails."""
    listeners, urls = [], []
    for sock in config.create_sockets().insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        urls.append("http://" + _address(sock))
    return listeners, urls


def connection_server(app: Any, config: Any) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """What serves one accepted connection: hypercorn's HTTP/1.1 for the ASGI ``app``."""
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import wrap_app

    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)

    async def serve(stream: trio.abc.Stream) -> None:
        assert isinstance(stream, trio.SocketStream)
        with trio.CancelScope(deadline=math.inf) as scope:
            watched = _Watched(stream, scope)
            await TCPServer(wrapped, config, context, ConnectionState({}), watched)  # type: ignore[arg-type]

    return serve


def _address(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    if sock.family == socket.AF_INET:
        return f"{name[0]}:{name[1]}"
    return str(name)
