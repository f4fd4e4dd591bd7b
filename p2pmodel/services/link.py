"""Peer RPC over TCP (trio): the socket side of ``wire``.

Theory of operation. Each agent listens on its RPC port. A connection starts with ``Hello``
both ways (the server answers the client's); after that the client sends requests and the
server answers each with the same request id. Frames are decoded with ``wire`` at the edge, so
the handler only ever sees typed messages; a malformed frame, a wrong first message or a
protocol version we do not speak closes the connection (the peer's fault), never the agent.
Clients here send one request at a time per connection, which is all agents need.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from ..core.wire import (
    PROTOCOL_VERSION,
    Error,
    FrameDecoder,
    Hello,
    Message,
    PeerProtocolError,
    decode,
    encode,
)

log = logging.getLogger(__name__)
Handler = Callable[[Message, Hello], Awaitable[Message]]
RECEIVE = 256 * 1024
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
HELLO_TIMEOUT = 10.0


class RpcError(Exception):
    """The peer could not be reached or answered wrongly (drop or retry it)."""


class Channel:
    """Frames over one stream: ``send`` a message, ``receive`` the next one."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.ready: list[bytes] = []

    async def send(self, msg: Message, request_id: int) -> None:
        await self.stream.send_all(encode(msg, request_id))

    async def receive(self) -> tuple[Message, int]:
        while not self.ready:
            data = await self.stream.receive_some(RECEIVE)
            if not data:
                raise RpcError("connection closed")
            self.ready += self.decoder.feed(data)
        return decode(self.ready.pop(0))


class RpcServer:
    def __init__(self, hello: Callable[[], Hello], handler: Handler) -> None:
        self.hello = hello
        self.handler = handler
        self.port = 0

    async def run(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve, listeners)
            task_status.started(self.port)

    async def _serve(self, stream: trio.SocketStream) -> None:
        ch = Channel(stream)
        try:
            with trio.fail_after(HELLO_TIMEOUT):
                first, rid = await ch.receive()
            if not isinstance(first, Hello) or first.proto != PROTOCOL_VERSION:
                await ch.send(Error(f"expected hello, protocol {PROTOCOL_VERSION}"), rid)
                return
            await ch.send(self.hello(), rid)
            while True:
                msg, rid = await ch.receive()
                reply = await self.handler(msg, first)
                await ch.send(reply, rid)
        except (
            PeerProtocolError,
            RpcError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ):
            pass  # the peer broke the protocol, was too slow or went away: drop it
        except Exception:
            # A bug of ours while answering: log it and drop this connection, never the agent.
            log.exception("answering a peer failed")
        finally:
            await trio.aclose_forcefully(stream)


class RpcClient:
    """One connection to a peer, after the hello exchange."""

    def __init__(self, ch: Channel, peer: Hello) -> None:
        self.ch = ch
        self.peer = peer
        self._ids = itertools.count(1)
        self._lock = trio.Lock()

    async def request(self, msg: Message) -> Message:
        async with self._lock:
            rid = next(self._ids)
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    await self.ch.send(msg, rid)
                    reply, got = await self.ch.receive()
            except (trio.TooSlowError, trio.BrokenResourceError, OSError) as e:
                raise RpcError(f"{type(e).__name__}: {e}") from None
            if got != rid:
                raise PeerProtocolError(f"answer to request {got}, expected {rid}")
            if isinstance(reply, Error):
                raise RpcError(f"peer says: {reply.message}")
            return reply


@asynccontextmanager
async def connect(host: str, port: int, hello: Hello) -> AsyncIterator[RpcClient]:
    """Open a connection and exchange hellos; ``RpcError`` if that fails."""
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as e:
        raise RpcError(f"cannot connect to {host}:{port}: {e}") from None
    try:
        ch = Channel(stream)
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                await ch.send(hello, 0)
                answer, _ = await ch.receive()
        except (trio.TooSlowError, trio.BrokenResourceError, OSError) as e:
            raise RpcError(f"no hello from {host}:{port}: {e}") from None
        if not isinstance(answer, Hello):
            raise RpcError(f"{host}:{port} refused the hello")
        yield RpcClient(ch, answer)
    finally:
        await trio.aclose_forcefully(stream)
