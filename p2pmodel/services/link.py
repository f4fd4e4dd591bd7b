"""The peer link: the one place that opens connections to peers and serves theirs (trio).

Theory of operation. Every agent listens on its RPC port. With an office key, a connection
starts with TLS 1.3, certificates required both ways and checked against the office CA
(``adapters.tls``): a host without the key gets a closed connection and not one byte of ours
but the TLS handshake's. Then (over TLS, or plain in an open office) comes ``Hello`` both ways
(the server answers the client's; with a key, each side's agent id must be the common name of
its certificate); after that the client sends requests and the server answers each with the
same request id, one at a time. Frames are decoded with ``core.wire`` at the edge, so handlers
only ever see typed messages; a malformed frame, a wrong first message or a protocol version we
do not speak closes the connection (the peer's fault), never the agent.

What a peer can make us hold is bounded: ``caps.per_host`` connections from one address (more
are closed at once) and ``caps.total`` in all (at most ``MAX_PER_HOST`` and ``MAX_INBOUND``,
fewer when the open-files limit is low: ``core.openfiles``); one request at a time per
connection, of at most ``MAX_REQUEST`` bytes; the handshake and hello within
``HELLO_TIMEOUT``; a frame, once begun, within ``FRAME_TIMEOUT`` (a slowloris peer is cut
off), and a connection idle for ``IDLE_TIMEOUT`` is closed (the dialler's pool redials).

Outgoing traffic takes one of two ways, both over the same dialling rules: a peer's proven
addresses (``addresses``) are tried in order, the one that worked last first, and a peer that
answers with another agent id than expected (a reused or spoofed address), or with a
certificate not of the office, is not that peer (``Refuted``). Each
address's outcome goes to ``on_dial`` ("reached", "refuted", "unreachable"), so the table can
drop addresses that prove someone else. ``probe`` says hello at an address of unknown owner
(an announced one, a static peer) and returns the hello, for the table to judge. A peer that
said hello to us is reported with where it came from and the RPC port it says it serves on
(``on_greeted``): an address to try, no more.

- ``request(agent, msg)``: one request and its answer, over a connection from a small pool of
  idle ones kept per peer (a pooled connection the peer closed meanwhile is replaced once).
- ``send(agent, msg)`` / ``broadcast``: messages that must arrive in order (claims, releases),
  through one outbox task per peer, which takes a pooled connection (or dials) for each
  message and gives it back after. A message that cannot be
  delivered within ``send_timeout`` is dropped: leases lapse and liveness forgets dead peers,
  so nothing waits on it. A ``Delivery`` tells when every peer it went to answered or gave up.

Connections we open are bounded whatever the size of the office: at most ``BUSY`` carry a
request or message at once (the others wait their turn) and at most ``IDLE`` are kept idle
in all, the least recently used closed first; so at most ``BUSY + IDLE`` (64). In an office
of more peers than the pool holds, a message to a peer not in it costs a dial (and a hello).

``forget(agent)`` closes what the link holds for a peer that died. The link runs over a
``Transport`` (TCP, or the in-memory one of the tests).
"""

from __future__ import annotations

import itertools
import logging
import math
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import trio

from ..adapters.rlimit import current_budget
from ..adapters.tls import OfficeTls, peer_agent
from ..adapters.transport import Transport, peer_host
from ..core.openfiles import LINK_MOST, LINK_PER_HOST, Admission, Caps
from ..core.peers import PeerAddr
from ..core.stats import LinkStats
from ..core.wire import (
    MAX_FRAME,
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
DialOutcome = Literal["reached", "refuted", "unreachable"]
RECEIVE = 256 * 1024
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
HELLO_TIMEOUT = 10.0  # TLS handshake and hello of a connection we serve
FRAME_TIMEOUT = 10.0  # a request frame, once begun, must be complete within this
IDLE_TIMEOUT = 300.0  # a served connection with no request for this long is closed
SEND_TIMEOUT = 3.0
POOL = 2  # idle request connections kept per peer
BUSY = 16  # connections we opened carrying a request or message at once, at most
IDLE = 48  # connections we opened kept idle in all, at most
OUTBOX = 4096
MAX_PER_HOST = LINK_PER_HOST  # connections served to one address at once, at most
MAX_INBOUND = LINK_MOST  # connections served at once in all, at most
MAX_REQUEST = 1024 * 1024  # a peer's request frame (answers may be up to wire.MAX_FRAME)
TLS_NAME = "p2pmodel"  # the server name a client asks for (certificates name agents)


class RpcError(Exception):
    """The peer could not be reached or answered wrongly (drop or retry it)."""


class _Broken(RpcError):
    """The connection closed under us (a pooled one may just have gone stale)."""


class Refuted(RpcError):
    """Whoever answers at that address is not the agent expected: its hello names another, it
    refused our hello, or (with an office key) its certificate is not of the office."""


class Channel:
    """Frames over one stream: ``send`` a message, ``receive`` the next one."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        max_frame: int = MAX_FRAME,
        on_frame: Callable[[], None] | None = None,
    ) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame)
        self.ready: list[bytes] = []
        self._on_frame = on_frame  # told of every message received (the link's count)

    async def send(self, msg: Message, request_id: int) -> None:
        await self.stream.send_all(encode(msg, request_id))

    async def receive(self, idle: float = math.inf, frame: float = math.inf) -> tuple[Message, int]:
        """The next message: ``TooSlowError`` if none starts within ``idle`` seconds, or one
        that started is not complete within ``frame`` seconds of its first byte."""
        deadline = trio.current_time() + idle
        while not self.ready:
            if self.decoder.pending and deadline > trio.current_time() + frame:
                deadline = trio.current_time() + frame  # begun: the rest must come soon
            with trio.fail_at(deadline):
                data = await self.stream.receive_some(RECEIVE)
            if not data:
                raise _Broken("connection closed")
            self.ready += self.decoder.feed(data)
        if self._on_frame is not None:
            self._on_frame()
        return decode(self.ready.pop(0))


@dataclass
class _Conn:
    """One connection to a peer after the hello exchange; used by one task at a time."""

    ch: Channel
    peer: Hello
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def request(self, msg: Message, seconds: float) -> Message:
        rid = next(self.ids)
        try:
            with trio.fail_after(seconds):
                await self.ch.send(msg, rid)
                reply, got = await self.ch.receive()
        except trio.TooSlowError:
            raise RpcError(f"no answer to {msg.kind} within {seconds:g} s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise _Broken(f"{type(e).__name__}: {e}") from None
        if got != rid:
            raise PeerProtocolError(f"answer to request {got}, expected {rid}")
        return reply

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.ch.stream)


class Delivery:
    """A broadcast: ``event`` is set once every peer it went to answered or gave up."""

    def __init__(self, peers: int) -> None:
        self.left = peers
        self.event = trio.Event()
        if peers <= 0:
            self.event.set()

    def one_done(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.event.set()


class PeerLink:
    def __init__(
        self,
        transport: Transport,
        hello: Callable[[], Hello],
        handler: Handler,
        addresses: Callable[[str], Sequence[PeerAddr]],
        on_heard: Callable[[str], None] = lambda agent: None,
        *,
        on_dial: Callable[[str, PeerAddr, DialOutcome], None] = lambda agent, addr, how: None,
        on_greeted: Callable[[str, PeerAddr], None] = lambda agent, addr: None,
        connect_timeout: float = CONNECT_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        tls: OfficeTls | None = None,
        caps: Caps | None = None,
    ) -> None:
        self.transport = transport
        self.tls = tls
        self._server_ctx = tls.server_context() if tls is not None else None
        self._client_ctx = tls.client_context() if tls is not None else None
        # Served connections by remote address, under caps that fit the open-files limit.
        self._inbound = Admission(caps or current_budget().link)
        self.hello = hello
        self.handler = handler
        self.addresses = addresses
        self.on_heard = on_heard
        self.on_dial = on_dial
        self.on_greeted = on_greeted
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.send_timeout = send_timeout
        self.stats = LinkStats()
        self._idle: dict[str, list[_Conn]] = {}  # by agent, least recently used first
        self._busy = trio.CapacityLimiter(BUSY)
        self._outboxes: dict[str, trio.MemorySendChannel[tuple[Message, Delivery | None]]] = {}
        self._preferred: dict[str, PeerAddr] = {}
        self._listening: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
            for conn in idle:
                await conn.aclose()

    async def listen(self, host: str, port: int) -> int:
        """Serve peers on ``host:port`` (0: any free port) until ``unlisten`` or the link
        stops; the port."""
        assert self._nursery is not None, "the link is not running"
        scope = trio.CancelScope()

        async def serve(task_status: trio.TaskStatus[int]) -> None:
            with scope:
                await self.transport.serve(host, port, self._serve, task_status=task_status)

        bound: int = await self._nursery.start(serve)
        self._listening[host] = scope
        return bound

    def unlisten(self, host: str) -> None:
        """Stop serving on ``host`` (its address went away); its connections end."""
        scope = self._listening.pop(host, None)
        if scope is not None:
            scope.cancel()

    # -- serving peers -------------------------------------------------------------------------

    async def _serve(self, stream: trio.abc.Stream) -> None:
        host = peer_host(stream)
        if not self._inbound.admit(host):
            self.stats.refused += 1
            await trio.aclose_forcefully(stream)
            return
        try:
            await self._serve_one(stream, host)
        finally:
            self._inbound.leave(host)

    async def _serve_one(self, stream: trio.abc.Stream, host: str) -> None:
        try:
            with trio.fail_after(HELLO_TIMEOUT):
                stream, certified = await self._secure(stream, server=True)
                ch = Channel(stream, MAX_REQUEST, self._received)
                first, rid = await ch.receive()
                if not isinstance(first, Hello) or first.proto != PROTOCOL_VERSION:
                    await ch.send(Error(f"expected hello, protocol {PROTOCOL_VERSION}"), rid)
                    return
                if certified is not None and first.agent != certified:
                    self.stats.refused += 1
                    await ch.send(Error("hello names another agent than the certificate"), rid)
                    return
                await ch.send(self.hello(), rid)
            if 0 < first.rpc_port < 65536:
                self.on_greeted(first.agent, PeerAddr(host, first.rpc_port))
            while True:
                msg, rid = await ch.receive(IDLE_TIMEOUT, FRAME_TIMEOUT)
                self.stats.served += 1
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

    async def _secure(
        self, stream: trio.abc.Stream, *, server: bool
    ) -> tuple[trio.abc.Stream, str | None]:
        """With an office key: the TLS handshake, and the agent id its certificate names.
        ``_Broken`` if the other side has no certificate of this office."""
        if self.tls is None:
            return stream, None
        if server:
            assert self._server_ctx is not None
            tls = trio.SSLStream(stream, self._server_ctx, server_side=True)
        else:
            assert self._client_ctx is not None
            tls = trio.SSLStream(stream, self._client_ctx, server_hostname=TLS_NAME)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as e:
            self.stats.handshake_failures += 1
            why = f"TLS handshake failed: {e.__cause__ or e}"
            if isinstance(e.__cause__, ssl.SSLCertVerificationError):
                raise Refuted(why) from None  # it answered, with no certificate of ours
            raise _Broken(why) from None
        agent = peer_agent(tls.getpeercert())
        if agent is None:  # pragma: no cover - verified certificates all have one
            raise _Broken("the peer's certificate names no agent")
        return tls, agent

    # -- dialling ------------------------------------------------------------------------------

    async def _open(self, host: str, port: int, expect: str | None) -> _Conn:
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await self.transport.connect(host, port)
        except (OSError, trio.TooSlowError) as e:
            self.stats.connect_failures += 1
            raise RpcError(f"cannot connect to {host}:{port}: {e or 'timed out'}") from None
        conn: _Conn | None = None
        try:
            try:
                with trio.fail_after(self.connect_timeout):
                    stream, certified = await self._secure(stream, server=False)
                    ch = Channel(stream, on_frame=self._received)
                    await ch.send(self.hello(), 0)
                    answer, _ = await ch.receive()
            except (trio.TooSlowError, trio.BrokenResourceError, OSError) as e:
                raise RpcError(f"no hello from {host}:{port}: {e or 'timed out'}") from None
            if not isinstance(answer, Hello):
                raise Refuted(f"{host}:{port} refused the hello")
            if certified is not None and answer.agent != certified:
                raise Refuted(f"{host}:{port} says hello as another agent than its certificate")
            if expect is not None and answer.agent != expect:
                raise Refuted(f"{host}:{port} is agent {answer.agent}, not {expect}")
            conn = _Conn(ch, answer)
            self.stats.connections_opened += 1
            return conn
        finally:
            if conn is None:
                self.stats.connect_failures += 1
                await trio.aclose_forcefully(stream)

    def _order(self, agent: str) -> list[PeerAddr]:
        addrs = list(self.addresses(agent))
        best = self._preferred.get(agent)
        if best in addrs:
            addrs.remove(best)
            addrs.insert(0, best)
        return addrs

    async def _dial(self, agent: str) -> _Conn:
        last: RpcError = RpcError(f"no address known for peer {agent}")
        for addr in self._order(agent):
            try:
                conn = await self._open(addr.host, addr.rpc_port, agent)
            except Refuted as e:
                self.on_dial(agent, addr, "refuted")
                last = RpcError(str(e))
                continue
            except (RpcError, PeerProtocolError) as e:
                self.on_dial(agent, addr, "unreachable")
                last = RpcError(str(e))
                continue
            self._preferred[agent] = addr
            self.on_dial(agent, addr, "reached")
            return conn
        raise last

    async def probe(self, host: str, port: int) -> Hello:
        """Who answers at ``host:port`` (an announced address, a static peer): its hello
        (with an office key, over TLS with a certificate of the office naming the same
        agent). ``Refuted`` if it answers as no agent of ours, ``RpcError`` if it does not."""
        conn = await self._open(host, port, None)
        await conn.aclose()
        return conn.peer

    # -- requests ------------------------------------------------------------------------------

    async def request(self, agent: str, msg: Message) -> Message:
        """One request to a peer and its answer. ``RpcError`` if it cannot be reached, does
        not answer within ``request_timeout`` or answers with an error; ``PeerProtocolError``
        if it breaks the protocol. (Wrap it in a cancel scope to wait less.)"""
        self.stats.requests += 1
        async with self._busy:
            return await self._request(agent, msg)

    async def _request(self, agent: str, msg: Message) -> Message:
        timeout = self.request_timeout
        conn = self._take(agent)
        try:
            try:
                if conn is None:
                    conn = await self._dial(agent)
                    reply = await conn.request(msg, timeout)
                else:
                    try:
                        reply = await conn.request(msg, timeout)
                    except _Broken:  # went stale while idle: once more on a fresh one
                        await conn.aclose()
                        conn = None
                        conn = await self._dial(agent)
                        reply = await conn.request(msg, timeout)
            except BaseException:
                if conn is not None:
                    await conn.aclose()
                raise
        except (RpcError, PeerProtocolError):
            self.stats.request_failures += 1
            raise
        self._give_back(agent, conn)
        self.on_heard(agent)
        if isinstance(reply, Error):
            self.stats.request_failures += 1
            raise RpcError(f"peer says: {reply.message}")
        return reply

    def _take(self, agent: str) -> _Conn | None:
        pooled = self._idle.get(agent)
        conn = pooled.pop() if pooled else None
        if pooled == []:
            del self._idle[agent]
        return conn

    def _give_back(self, agent: str, conn: _Conn) -> None:
        if self._nursery is None:
            return
        idle = self._idle.pop(agent, [])
        self._idle[agent] = idle  # now the most recently used
        if len(idle) >= POOL:
            self._nursery.start_soon(conn.aclose)
            return
        idle.append(conn)
        while sum(len(c) for c in self._idle.values()) > IDLE:
            oldest = next(iter(self._idle))
            self._nursery.start_soon(self._idle[oldest].pop(0).aclose)
            if not self._idle[oldest]:
                del self._idle[oldest]

    # -- ordered outboxes ----------------------------------------------------------------------

    def send(self, agent: str, msg: Message, delivery: Delivery | None = None) -> None:
        """Queue ``msg`` for ``agent``, after whatever was queued for it before."""
        box = self._outboxes.get(agent)
        if box is None and self._nursery is not None:
            box, inbox = trio.open_memory_channel[tuple[Message, Delivery | None]](OUTBOX)
            self._outboxes[agent] = box
            self._nursery.start_soon(self._deliver, agent, inbox)
        try:
            if box is None:
                raise trio.ClosedResourceError
            box.send_nowait((msg, delivery))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.stats.messages_dropped += 1
            if delivery is not None:
                delivery.one_done()

    def broadcast(self, agents: Iterable[str], msg: Message) -> Delivery:
        """``send`` to each of ``agents``; the delivery says when all of them answered."""
        targets = sorted(set(agents))
        delivery = Delivery(len(targets))
        for agent in targets:
            self.send(agent, msg, delivery)
        return delivery

    async def _deliver(
        self, agent: str, inbox: trio.MemoryReceiveChannel[tuple[Message, Delivery | None]]
    ) -> None:
        async with inbox:
            async for msg, delivery in inbox:
                try:
                    async with self._busy:
                        conn = await self._deliver_one(agent, self._take(agent), msg)
                        if conn is not None:
                            self._give_back(agent, conn)
                finally:
                    if delivery is not None:
                        delivery.one_done()

    async def _deliver_one(self, agent: str, conn: _Conn | None, msg: Message) -> _Conn | None:
        """Deliver one message over the outbox's connection; the connection to keep."""
        delivered = False
        with trio.move_on_after(self.send_timeout):
            for fresh in (conn is None, True):
                try:
                    if conn is None:
                        conn = await self._dial(agent)
                    reply = await conn.request(msg, self.send_timeout)
                    delivered = True
                    self.on_heard(agent)
                    if isinstance(reply, Error):
                        log.info("peer %s refused %s: %s", agent, msg.kind, reply.message)
                    break
                except (RpcError, PeerProtocolError):
                    if conn is not None:
                        await conn.aclose()
                        conn = None
                    if fresh:
                        break
        if delivered:
            self.stats.messages_sent += 1
            return conn
        self.stats.messages_dropped += 1
        if conn is not None:  # cut off mid-request: the answer may still come, start over
            await conn.aclose()
        return None

    def _received(self) -> None:
        self.stats.messages_received += 1

    def renew(self) -> None:
        """Our addresses changed: every connection may run from one that is gone (its packets
        go nowhere, its requests would only time out), so close them all; the next request
        or message to a peer dials afresh from where we are now."""
        for agent in {*self._outboxes, *self._idle}:
            self.forget(agent)

    def forget(self, agent: str) -> None:
        """The peer died: close its outbox and its idle connections."""
        box = self._outboxes.pop(agent, None)
        if box is not None:
            box.close()
        idle = self._idle.pop(agent, [])
        if self._nursery is not None:
            for conn in idle:
                self._nursery.start_soon(conn.aclose)
