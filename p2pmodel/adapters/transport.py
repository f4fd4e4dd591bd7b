"""TCP streams for the peer link: dial an address, serve a port (trio).

The link (``services.link``) speaks its protocol over whatever streams a transport gives it;
this one is plain TCP. Tests swap in ``testing.fakes.MemoryTransport`` (same interface, in
memory), and one contract suite runs against both.

``serve_listeners`` is the accept loop of every TCP server of the agent (the link, the HTTP
endpoint): when the process is out of files (``EMFILE``) or memory it says so once, waits and
accepts again, so a flood of connections costs the agent a moment of deafness, never a
service. ``serve_admitted`` adds a cap (``core.openfiles.Admission``): a connection over it
is closed at once, unanswered.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from ..core.openfiles import Admission, Caps

log = logging.getLogger(__name__)
StreamHandler = Callable[[trio.abc.Stream], Awaitable[None]]
# accept(2) errors that say the process or the system is full, not the listener broken.
FULL = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_AGAIN = 0.5  # seconds between accepts while full


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
            nursery.start_soon(serve_listeners, handler, listeners, f"peers on {host}:{bound}")
            task_status.started(bound)


async def serve_listeners(
    handler: StreamHandler, listeners: Sequence[trio.SocketListener], what: str
) -> None:
    """Accept on every listener and run ``handler`` on each stream (closed after it), until
    cancelled; out of files, wait ``ACCEPT_AGAIN`` and accept again (logged once a spell)."""
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_forever, handler, listener, what, nursery)


async def serve_admitted(
    handler: StreamHandler, listeners: Sequence[trio.SocketListener], caps: Caps, what: str
) -> None:
    """``serve_listeners`` with at most ``caps`` connections served at once (per address,
    in all); more are closed as soon as accepted."""
    gate = Admission(caps)

    async def admitted(stream: trio.abc.Stream) -> None:
        host = peer_host(stream)
        if not gate.admit(host):
            return  # closed at once by _run
        try:
            await handler(stream)
        finally:
            gate.leave(host)

    await serve_listeners(admitted, listeners, what)


async def _accept_forever(
    handler: StreamHandler, listener: trio.SocketListener, what: str, nursery: trio.Nursery
) -> None:
    full = False
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:
                if e.errno not in FULL:
                    raise
                if not full:
                    log.warning("serving %s: cannot accept (%s); trying again", what, e.strerror)
                full = True
                await trio.sleep(ACCEPT_AGAIN)
                continue
            if full:
                log.info("serving %s: accepting again", what)
                full = False
            nursery.start_soon(_run, handler, stream)


async def _run(handler: StreamHandler, stream: trio.abc.Stream) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)


def peer_host(stream: trio.abc.Stream) -> str:
    """The address a served stream comes from (what per-host limits count by)."""
    sock = getattr(stream, "socket", None)
    if sock is not None:
        try:
            return str(sock.getpeername()[0])
        except OSError:
            return "?"
    return str(getattr(stream, "remote_host", "?"))
