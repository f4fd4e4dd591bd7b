"""The agent's HTTP server: hypercorn's HTTP/1.1 connections for an ASGI app, accepted by our
own loop so their number is bounded (trio).

Theory of operation. hypercorn's ``serve`` accepts every connection it can, and an idle one
costs it a file until its keep-alive timeout: a local user with a loop of ``connect()`` ran
the agent out of files (measured: 1,574 connections at a soft limit of 1024). hypercorn has
no setting that bounds connections, so this module binds the sockets as hypercorn would
(``Config.create_sockets``), accepts with ``transport.serve_listeners`` (out of files: wait,
accept again) and admits each connection through ``core.openfiles.Admission``: over the cap
(per address, in all) it is closed at once, unanswered. An admitted one is handed to
hypercorn's own per-connection server (``TCPServer``: HTTP parsing, keep-alive, the ASGI
calls), so nothing here speaks HTTP. No lifespan events are sent: the app needs none.
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from ..core.openfiles import Admission, Caps
from .transport import peer_host, serve_listeners


async def serve_asgi(
    app: Any,
    config: Any,
    caps: Caps,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``config.bind`` (a hypercorn ``Config``) with at most ``caps``
    connections; started with the bound URLs. ``OSError`` if a bind fails."""
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import wrap_app

    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    gate = Admission(caps)
    sockets = config.create_sockets().insecure_sockets
    listeners = []
    urls = []
    for sock in sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        urls.append("http://" + _address(sock))

    async def handle(stream: trio.abc.Stream) -> None:
        host = peer_host(stream)
        if not gate.admit(host):
            return  # closed at once by serve_listeners
        try:
            await TCPServer(wrapped, config, context, ConnectionState({}), stream)  # type: ignore[arg-type]
        finally:
            gate.leave(host)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_listeners, handle, listeners, "HTTP on " + ", ".join(urls))
        task_status.started(urls)


def _address(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    if sock.family == socket.AF_INET:
        return f"{name[0]}:{name[1]}"
    return str(name)
