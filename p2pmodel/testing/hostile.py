"""A misbehaving peer of our own, for the hostile-peer tests: it speaks the real protocol (the
office's TLS when it has the key, the real frames, the in-memory network, mDNS bus and swarm of
a ``SimLan``) and breaks it on purpose.

``HostilePeer`` announces itself like an agent and answers requests with whatever the test puts
in ``answers`` (by message type: lies, wrong shapes), and can ``raw``-send any bytes on a fresh
connection to a victim (after the TLS handshake, when keyed) or open connections it never
finishes (``hold``). Its ``swarm`` is a ``FakeSwarm`` that seeds whatever file it is given, so
it can offer bytes that fail their hash.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from p2pmodel.adapters.discovery import PeerSeen
from p2pmodel.adapters.store import Store
from p2pmodel.adapters.tls import OfficeTls
from p2pmodel.core.officekey import OfficeKey
from p2pmodel.core.peers import PeerAddr
from p2pmodel.core.wire import PROTOCOL_VERSION, Error, Hello, Message, Ping, Pong, encode
from p2pmodel.services.link import TLS_NAME, PeerLink
from p2pmodel.testing.fakes import FakeAnnouncer, FakeSwarm, SimLan

Answer = Callable[[Any], Message]


class HostilePeer:
    def __init__(
        self, office: SimLan, home: Path, key: OfficeKey | None, agent: str = "bad0bad0bad0"
    ) -> None:
        outside = office.outside()
        self.office = office
        self.agent = agent
        self.ip = outside.interfaces()[0]
        self.transport = outside.transport
        self.tls = OfficeTls(key, agent) if key is not None else None
        self.store = Store(home)
        self.swarm = FakeSwarm(office.swarms, self.store, [self.ip], 0, self.tls)
        self.answers: dict[type[Message], Answer] = {}
        self.received: list[Message] = []
        self.peers: dict[str, PeerSeen] = {}
        self.rpc_port = 0
        self.link = PeerLink(
            self.transport, self.hello, self._answer, self._addresses, tls=self.tls
        )
        self._ids = itertools.count(1)

    def hello(self) -> Hello:
        return Hello(self.agent, PROTOCOL_VERSION, self.swarm.port, self.rpc_port)

    async def _answer(self, msg: Message, peer: Hello) -> Message:
        self.received.append(msg)
        if isinstance(msg, Ping):
            return Pong()
        answer = self.answers.get(type(msg))
        return answer(msg) if answer is not None else Error("no")

    def _addresses(self, agent: str) -> list[PeerAddr]:
        seen = self.peers.get(agent)
        return [PeerAddr(a, seen.rpc_port) for a in seen.addrs] if seen else []

    def _on_event(self, event: Any) -> None:
        if isinstance(event, PeerSeen):
            self.peers[event.agent] = event

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.swarm.run)
            self.swarm.allow({f"10.0.{i // 250}.{i % 250 + 1}" for i in range(1, 300)})
            await nursery.start(self.link.run)
            self.rpc_port = await self.link.listen(self.ip, 0)
            announcer = FakeAnnouncer(
                self.office.mdns,
                agent=self.agent,
                interfaces=[self.ip],
                rpc_port=self.rpc_port,
                torrent_port=self.swarm.port,
                proto=PROTOCOL_VERSION,
                office=self.tls.fingerprint if self.tls is not None else "",
                on_event=self._on_event,
            )
            await nursery.start(announcer.run)
            task_status.started()

    # -- breaking the protocol on purpose ------------------------------------------------------

    async def connect(self, host: str, port: int, *, hello: bool = True) -> trio.abc.Stream:
        """A connection to a victim: TLS when keyed, then (``hello``) a good hello exchange."""
        stream: trio.abc.Stream = await self.transport.connect(host, port)
        if self.tls is not None:
            tls = trio.SSLStream(stream, self.tls.client_context(), server_hostname=TLS_NAME)
            await tls.do_handshake()
            stream = tls
        if hello:
            await stream.send_all(encode(self.hello(), 0))
            await stream.receive_some(65536)
        return stream

    async def raw(self, host: str, port: int, data: bytes, *, hello: bool = True) -> bytes:
        """Send ``data`` on a fresh connection; what came back until it closed (10 s at most)."""
        got = b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            stream = await self.connect(host, port, hello=hello)
            try:
                await stream.send_all(data)
                with trio.move_on_after(10):
                    while chunk := await stream.receive_some(65536):
                        got += chunk
            finally:
                await trio.aclose_forcefully(stream)
        return got

    async def request(self, agent: str, msg: Message) -> Message:
        return await self.link.request(agent, msg)
