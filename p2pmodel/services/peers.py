"""Who this agent's peers are and how to talk to them: discovery, static peers, liveness, the
peer link and the routing of peers' requests (trio).

Theory of operation. ``PeerService.run`` serves the peer link on the agent's interfaces, then
announces the agent (mDNS, unless discovery is off), says hello to configured static peers
every few seconds and judges liveness: the pure ``PeerTable`` says which announced addresses
to try, which peers to ping and when the next of those or an expiry is due, and the loop sleeps
until then (or until an announcement brings something new). An announcement is only a hint:
anyone can announce any agent at any address, so an announced address is used once a hello
on it proved the agent (``_probe``; with an office key, over TLS with the office's
certificates), and every dial's outcome goes back to the table, which drops addresses that
prove someone else. mDNS only tells of goodbyes (and anyone can say one: the peer is pinged
at once and dies if that fails); a peer killed without one is found dead by failed pings
(a few peers a round, deaths gossiped on pings and pongs: ``core.peers``), long before its mDNS
records expire.

Other services see peers only through this service: ``alive``/``holders``/``get`` (read-only
views of the table), ``request``/``broadcast`` (through the link), ``route`` (the requests of a
kind they answer) and ``watch`` (told whenever the set of live peers may have changed). Every
answered request, ours or a peer's, counts as hearing from that peer.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import trio

from ..adapters.discovery import DiscoveryEvent, PeerSeen
from ..adapters.tls import OfficeTls
from ..adapters.transport import Transport
from ..core import pex
from ..core.locality import is_loopback
from ..core.peers import Peer, PeerAddr, PeerSource, PeerTable
from ..core.stats import LinkStats
from ..core.tracker import MAX_TRACKERS, effective
from ..core.wire import (
    PROTOCOL_VERSION,
    Ack,
    Error,
    Hello,
    KnownPeers,
    Message,
    PeerProtocolError,
    Ping,
    Pong,
)
from .link import Delivery, DialOutcome, PeerLink, Refuted, RpcError

log = logging.getLogger(__name__)
STATIC_EVERY = 5.0
PING_TIMEOUT = 3.0  # a ping not answered within this failed
CANDIDATE_PROBES = 16  # hellos at once to the addresses a tracker returned
Route = Callable[[Any, str], Awaitable[Message]]  # (message, peer's agent id) -> answer


def _host_name(host: str) -> str:
    """A static peer's configured host as its name, "" for an address."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return ""
    return host


def _random_pick() -> int:
    import random

    return random.randrange(1 << 30)


class Announcer(Protocol):
    """What discovery does for the agent (``adapters.discovery.Discovery``, or a fake)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


class AnnouncerFactory(Protocol):
    def __call__(
        self,
        *,
        agent: str,
        interfaces: list[str],
        rpc_port: int,
        torrent_port: int,
        proto: int,
        office: str,
        on_event: Callable[[DiscoveryEvent], None],
    ) -> Announcer: ...


class PeerService:
    def __init__(
        self,
        agent: str,
        transport: Transport,
        *,
        interfaces: Sequence[str],
        rpc_port: int,
        torrent_port: Callable[[], int],
        discovery: AnnouncerFactory | None,
        static_peers: Sequence[str] = (),
        trackers: Sequence[str] = (),
        tls: OfficeTls | None = None,
        pick: Callable[[], int] | None = None,
    ) -> None:
        self.id = agent
        self.office = tls.fingerprint if tls is not None else ""  # "": an open office
        self.interfaces = list(interfaces)
        self.rpc_port = rpc_port
        self._torrent_port = torrent_port
        self._discovery = discovery
        self._static = list(static_peers)
        self.table = PeerTable(agent)
        self.link = PeerLink(
            transport,
            self.hello,
            self._answer,
            self._addresses,
            self._heard,
            on_dial=self._dialled,
            on_greeted=self._greeted,
            tls=tls,
        )
        self.other_offices: set[str] = set()  # agents of other offices seen on the LAN
        self._routes: dict[type[Message], Route] = {}
        self._watchers: list[Callable[[], None]] = []
        self._alive: frozenset[str] = frozenset()
        self._verified: frozenset[str] = frozenset()
        self._hosts: frozenset[str] = frozenset()
        self._wake = trio.Event()
        self._peer_seen = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._announcing: trio.CancelScope | None = None
        self._static_wake = trio.Event()
        self._configured_trackers = tuple(trackers)
        self._learned_trackers: tuple[str, ...] = ()
        self._tracker_watchers: list[Callable[[], None]] = []
        self.pex = pex.Intake()
        self._pex_wake = trio.Event()
        self._pick = pick or _random_pick
        self._probing = trio.CapacityLimiter(CANDIDATE_PROBES)

    # -- what other services use ---------------------------------------------------------------

    def route(self, kinds: Iterable[type[Message]], handler: Route) -> None:
        """Peers' requests of these kinds go to ``handler``."""
        for kind in kinds:
            self._routes[kind] = handler

    def watch(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (in trio, must not block) whenever the set of live peers may change."""
        self._watchers.append(fn)

    def alive(self) -> list[Peer]:
        return self.table.alive()

    def alive_ids(self) -> frozenset[str]:
        return self._alive

    def get(self, agent: str) -> Peer | None:
        return self.table.get(agent)

    def is_alive(self, agent: str) -> bool:
        return agent in self._alive

    def holders(self, digest: str) -> list[Peer]:
        return self.table.holders(digest)

    def distrust(self, agent: str, content: str, why: str) -> None:
        """The peer lied about ``content`` (a digest or a name): not asked for it again."""
        if self.table.distrust(agent, content, why):
            log.warning("distrusting peer %s for %s: %s", agent, content, why)

    def trusted(self, agent: str, content: str) -> bool:
        return self.table.trusted(agent, content)

    def verified_hosts(self) -> set[str]:
        """Addresses of live peers that proved the office key (any answer, in an open office)."""
        return self.table.verified_hosts()

    def endpoint(self, agent: str) -> tuple[str, int] | None:
        """Where the peer's swarm listens (its first proven address and the torrent port of
        the hello that proved it), if alive."""
        peer = self.table.get(agent)
        if peer is None or not peer.alive or not peer.torrent_port or not peer.addrs:
            return None
        return (peer.addrs[0].host, peer.torrent_port)

    def inventory(self, agent: str, complete: Iterable[str], partial: Iterable[str]) -> None:
        self.table.inventory(agent, complete, partial, trio.current_time())
        self._changed()

    async def request(self, agent: str, msg: Message) -> Message:
        return await self.link.request(agent, msg)

    def tell(self, agents: Iterable[str], msg: Message) -> Delivery:
        """``msg`` to these peers, in order per peer (see ``PeerLink.send``)."""
        return self.link.broadcast(agents, msg)

    def broadcast(self, msg: Message) -> Delivery:
        """``msg`` to every live peer, in order per peer (see ``PeerLink.send``)."""
        return self.link.broadcast(self._alive, msg)

    async def wait_seen(self, seconds: float) -> None:
        """Give discovery up to ``seconds`` to find a first peer (an embedded agent's get)."""
        if not self._alive:
            with trio.move_on_after(seconds):
                await self._peer_seen.wait()

    def hello(self) -> Hello:
        return Hello(self.id, PROTOCOL_VERSION, self._torrent_port(), self.rpc_port)

    @property
    def stats(self) -> LinkStats:
        return self.link.stats

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        return self.table.snapshot(now)

    # -- trackers and peer exchange --------------------------------------------------------------

    def trackers(self) -> tuple[str, ...]:
        """The trackers this agent uses: its config's, else those its peers told of."""
        return effective(self._configured_trackers, self._learned_trackers)

    def set_trackers(self, configured: Sequence[str]) -> None:
        """A reloaded config's trackers (they win over learned ones; none: learned ones)."""
        if tuple(configured) != self._configured_trackers:
            self._configured_trackers = tuple(configured)
            self._trackers_changed()

    def watch_trackers(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (in trio, must not block) whenever ``trackers`` may have changed."""
        self._tracker_watchers.append(fn)

    def _trackers_changed(self) -> None:
        for fn in self._tracker_watchers:
            fn()

    def add_candidates(self, addrs: Sequence[PeerAddr], source: PeerSource) -> int:
        """Addresses where an agent may listen (a tracker's answer): each gets one hello, and
        whoever answers it is a peer (with a key, one that proved it). Our own addresses and
        those of live peers are left out. Returns how many get a hello."""
        if self._nursery is None:
            return 0
        known = {a for p in self.table.alive() for a in p.addrs}
        mine = {PeerAddr(ip, self.rpc_port) for ip in self.interfaces}
        fresh = [a for a in dict.fromkeys(addrs) if a not in known and a not in mine]
        for addr in fresh:
            self._nursery.start_soon(self._hello_candidate, addr, source)
        return len(fresh)

    async def _hello_candidate(self, addr: PeerAddr, source: PeerSource) -> None:
        async with self._probing:
            try:
                hello = await self.link.probe(addr.host, addr.rpc_port)
            except (RpcError, PeerProtocolError) as e:
                log.debug("no agent at %s (%s): %s", addr, source, e)
                return
        if self.table.said_hello(
            addr, hello.agent, hello.torrent_port, source, trio.current_time()
        ):
            self._peer_seen.set()
            self._wake.set()
            self._changed()

    async def _exchange(self) -> None:
        """Tell peers which agents we know (``core.pex``): a peer at once when it is verified,
        and a few every ``PEX_EVERY``."""
        while True:
            now = trio.current_time()
            verified = [p.agent for p in self.table.alive() if p.verified]
            for agent in [
                *self.pex.owed(verified),
                *self.pex.round_due(verified, now, self._pick()),
            ]:
                self._tell_peers(agent, now)
            deadline = self.pex.next_round()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._pex_wake.wait()
            self._pex_wake = trio.Event()

    def _tell_peers(self, agent: str, now: float) -> None:
        told = pex.entries(self.table.alive(), now, leave_out=agent)
        self.link.stats.pex_sent += 1
        self.link.send(agent, KnownPeers(told, self.trackers()))

    def _told_peers(self, msg: KnownPeers, agent: str) -> Message:
        """A peer's ``KnownPeers``: its entries become hints (a hello proves each), its
        trackers are learned (ours, if configured, win)."""
        now = trio.current_time()
        if not self.pex.take(agent, now):
            self.link.stats.pex_dropped += 1
            return Ack()
        self.link.stats.pex_received += 1
        new = False
        for other, addrs in pex.hints(msg.peers, self.id):
            new |= self.table.seen(other, addrs, now, "pex")
        if new:
            self._wake.set()
        if msg.trackers:
            learned = tuple(dict.fromkeys([*msg.trackers, *self._learned_trackers]))
            learned = learned[:MAX_TRACKERS]
            if learned != self._learned_trackers:
                before = self.trackers()
                self._learned_trackers = learned
                if self.trackers() != before:
                    log.info("trackers learned from agent %s: %s", agent, ", ".join(learned))
                    self._trackers_changed()
        return Ack()

    # -- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.link.run)
            self.rpc_port = await self.link.listen(self.interfaces[0], self.rpc_port)
            for ip in self.interfaces[1:]:
                await self.link.listen(ip, self.rpc_port)
            await self._announce()
            nursery.start_soon(self._liveness)
            nursery.start_soon(self._static_peers)
            nursery.start_soon(self._exchange)
            task_status.started()

    async def _announce(self) -> None:
        """(Re)start mDNS on the current interfaces: a goodbye on the old set, then the
        announcement and browsing on the new one."""
        if self._discovery is None or self._nursery is None:
            return
        if self._announcing is not None:
            self._announcing.cancel()
        announcer = self._discovery(
            agent=self.id,
            interfaces=self.interfaces,
            rpc_port=self.rpc_port,
            torrent_port=self._torrent_port(),
            proto=PROTOCOL_VERSION,
            office=self.office,
            on_event=self._on_discovery,
        )
        scope = self._announcing = trio.CancelScope()

        async def announce(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await announcer.run(task_status=task_status)

        await self._nursery.start(announce)

    async def set_interfaces(self, interfaces: Sequence[str]) -> None:
        """The agent's addresses changed (a laptop docked, Wi-Fi joined, a cable came out):
        serve peers on the new ones, stop on the gone ones, announce again. An address that
        cannot be listened on now is left out and tried at the next change."""
        new = list(dict.fromkeys(interfaces))
        if new == self.interfaces:
            return
        gone = [ip for ip in self.interfaces if ip not in new]
        for ip in gone:
            self.link.unlisten(ip)
        usable = [ip for ip in self.interfaces if ip in new]
        for ip in [ip for ip in new if ip not in self.interfaces]:
            try:
                await self.link.listen(ip, self.rpc_port)
                usable.append(ip)
            except OSError as e:
                log.warning("cannot serve peers on %s: %s", ip, e)
        self.interfaces = [ip for ip in new if ip in usable]
        if self.interfaces:
            await self._announce()
        elif self._announcing is not None:
            self._announcing.cancel()
        if gone:
            self.link.renew()  # connections from a gone address lead nowhere: dial afresh
        if (
            gone
            and self._nursery is not None
            and any(not is_loopback(ip) for ip in self.interfaces)
        ):
            # Once we listen where we are: ping every peer, so each meets us at our new
            # address at once (it says hello back there), not at its next ping or timeout.
            for peer in self.table.alive():
                self._nursery.start_soon(self._ping, peer.agent)

    def _on_discovery(self, event: DiscoveryEvent) -> None:
        now = trio.current_time()
        if isinstance(event, PeerSeen):
            if event.office != self.office:
                if event.agent not in self.other_offices:
                    log.info("agent %s belongs to another office: ignored", event.agent)
                self.other_offices.add(event.agent)
                return
            # The ports and addresses are the announcer's word: a hello there must prove it.
            addrs = [PeerAddr(a, event.rpc_port) for a in event.addrs]
            if self.table.seen(event.agent, addrs, now):
                self._wake.set()
        elif self.table.gone(event.agent, now):
            self._wake.set()  # anyone can say goodbye for anyone: a ping at once tells

    async def _probe(self, agent: str, addr: PeerAddr) -> None:
        """Say hello at an address announced for ``agent``; the table judges the answer."""
        try:
            hello = await self.link.probe(addr.host, addr.rpc_port)
        except Refuted as e:
            self.table.refuted(agent, addr, trio.current_time())
            self.link.stats.addresses_refuted += 1
            log.info("address %s announced for agent %s is not that agent: %s", addr, agent, e)
        except (RpcError, PeerProtocolError) as e:
            self.table.unreachable(agent, addr, trio.current_time())
            log.debug("no hello at %s announced for agent %s: %s", addr, agent, e)
        else:
            now = trio.current_time()
            source = self.table.source_of(agent)
            if self.table.said_hello(
                addr, hello.agent, hello.torrent_port, source, now, announced_as=agent
            ):
                self._peer_seen.set()
            else:
                self.link.stats.addresses_refuted += 1
                log.info("address %s announced for agent %s is agent %s", addr, agent, hello.agent)
        self._wake.set()
        self._changed()

    def set_static_peers(self, peers: Sequence[str]) -> None:
        """A reloaded config's static peers: new ones are dialled at once; removed ones are
        no longer dialled (one still alive stays a peer until it goes)."""
        if list(peers) != self._static:
            self._static = list(peers)
            self._static_wake.set()

    async def _static_peers(self) -> None:
        while True:
            for text in list(self._static):
                host, _, port = text.rpartition(":")
                with contextlib.suppress(RpcError, PeerProtocolError):
                    addr = PeerAddr(host.strip("[]"), int(port))
                    hello = await self.link.probe(addr.host, addr.rpc_port)
                    now = trio.current_time()
                    # Configured: whoever answers there is a peer (with a key, a keyed one).
                    name = _host_name(addr.host)
                    if self.table.said_hello(
                        addr, hello.agent, hello.torrent_port, "static", now, host=name
                    ):
                        self._peer_seen.set()
                        self._wake.set()
                        self._changed()
            with trio.move_on_after(STATIC_EVERY if self._static else math.inf):
                await self._static_wake.wait()
            self._static_wake = trio.Event()

    async def _liveness(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                for agent, addr in self.table.due_probes(now):
                    nursery.start_soon(self._probe, agent, addr)
                for peer in self.table.due_pings(now):
                    nursery.start_soon(self._ping, peer.agent)
                self.table.expire(now)
                self._changed()
                deadline = self.table.next_deadline()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _ping(self, agent: str) -> None:
        try:
            with trio.fail_after(PING_TIMEOUT):
                reply = await self.link.request(agent, Ping(self.table.gossip()))
        except (RpcError, PeerProtocolError, trio.TooSlowError):
            self.table.ping_failed(agent, trio.current_time())
            self._changed()
            self._wake.set()  # the table's next deadline moved: a retry at the next round
            return
        if isinstance(reply, Pong):
            self._told_gone(reply.gone)

    def _told_gone(self, agents: Sequence[str]) -> None:
        if agents and self.table.told_gone(agents, trio.current_time()):
            self._wake.set()  # a ping at once tells

    # -- the link's callbacks ------------------------------------------------------------------

    def _addresses(self, agent: str) -> list[PeerAddr]:
        peer = self.table.get(agent)
        return list(peer.addrs) if peer is not None else []

    def _dialled(self, agent: str, addr: PeerAddr, outcome: DialOutcome) -> None:
        now = trio.current_time()
        if outcome == "reached":
            self.table.reached(agent, addr)
        elif outcome == "refuted":
            self.link.stats.addresses_refuted += 1
            log.info("peer %s is no longer at %s: another answers there", agent, addr)
            self.table.refuted(agent, addr, now)
        else:
            self.table.unreachable(agent, addr, now)
        self._changed()

    def _greeted(self, agent: str, addr: PeerAddr) -> None:
        # A peer we may not know yet (its announcement missed us, or its address failed us
        # once): where it connected from is worth a hello, like an announced address.
        if self.table.seen(agent, [addr], trio.current_time(), "inbound"):
            self._wake.set()

    def _heard(self, agent: str) -> None:
        if self.table.heard(agent, trio.current_time()) and agent not in self._verified:
            self._changed()

    async def _answer(self, msg: Message, peer: Hello) -> Message:
        """A peer's request: counts as hearing from it, then goes to whoever routes its kind."""
        self._heard(peer.agent)
        if isinstance(msg, Ping):
            self._told_gone(msg.gone)
            return Pong(self.table.gossip())
        if isinstance(msg, KnownPeers):
            return self._told_peers(msg, peer.agent)
        handler = self._routes.get(type(msg))
        if handler is None:
            return Error(f"unexpected {msg.kind}")
        return await handler(msg, peer.agent)

    def _changed(self) -> None:
        alive = frozenset(p.agent for p in self.table.alive())
        verified = frozenset(p.agent for p in self.table.alive() if p.verified)
        hosts = frozenset(self.table.verified_hosts())  # the swarm's IP filter follows them
        if alive == self._alive and verified == self._verified and hosts == self._hosts:
            return
        for gone in self._alive - alive:
            self.link.forget(gone)
        if verified != self._verified:
            self._pex_wake.set()  # a newly verified peer is told who we know
        self._alive, self._verified, self._hosts = alive, verified, hosts
        for fn in self._watchers:
            fn()
