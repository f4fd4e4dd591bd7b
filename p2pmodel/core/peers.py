"""What this agent knows of its peers: addresses, liveness and what they hold.

Theory of operation. An announcement proves nothing: anyone on the LAN can announce any agent
id, the office's public fingerprint and any ports with an address of their choosing. So an
announced address is only a *hint* (``seen``): the agent tries it (``due_probes`` hands each
hint out once) and uses it only once a hello on it proved that agent (``said_hello``; with an
office key the hello came over TLS with a certificate of the office CA naming the agent). Only
proven addresses are dialled, given to the swarm (``verified_hosts``, the peer's torrent port
comes from the proving hello) and listed in ``snapshot``; an agent no hello proved yet is not a
peer at all (not alive, not in ``status``). A hint whose hello fails or names another agent is
dropped (``refuted``, ``unreachable``) and that address is not tried for that agent again for
``HINT_HOLD``; a proven address is dropped only when a hello on it names another agent or a
certificate fails (``refuted``), or when it cannot be reached while another proven address of
the agent worked since (``unreachable``: the agent moved). A spoof therefore never displaces or
ages out proven addresses, and never keeps a dead peer alive: only answers count as hearing.

From then on liveness is ours to judge, not mDNS's: a peer killed with SIGKILL sends no goodbye
and its mDNS records live on for their TTL (minutes). Liveness costs each agent the same whatever
the size of the office (SWIM's probing): every ``probe_every`` seconds it pings at most
``probes`` live peers (``due_pings``), those it checked longest ago first (ties in an order of
its own, so agents spread their probes over the office), never one heard from within
``ping_interval``: any successful RPC counts as hearing from it (``heard``, ``inventory``).
Across the office each peer is then probed about ``probes`` times per round. A peer is marked
dead after ``max_failures`` failed pings in a row (a failed one is pinged again at the next
round, outside the budget; a refused connection shows up at once), after one when it is in
doubt (``gone``), or when a ping handed out got no answer for ``dead_after`` (``expire``). A
death this agent found (or confirmed) is a rumor it piggybacks on its next pings and pongs
(``gossip``: at most ``MAX_GOSSIP`` a message, each sent ``rumor_sends`` times, about
3 log2 of the office), so the office learns of it in a few rounds; a rumor heard
(``told_gone``), like an mDNS goodbye, is only a doubt (anyone can say it): the peer is pinged at
once and dies if that fails, and only then does this agent pass the rumor on. A dead peer's
inventory is dropped; a hello on an announced address or a successful RPC brings it back. Peers
dead for ``forget_after`` are forgotten. Our own agent id is never a peer. ``next_deadline``
says when the timers next have work. Time is always an argument; the table never reads a clock.

A peer is ``verified`` once a hello or an RPC with it succeeded since it was last seen alive:
with an office key, over mutual TLS, so the peer proved the key.

A peer caught lying about some content (a blob it said it held but could not serve, pieces
that failed their hash, a manifest or unit torrent of the wrong shape) is ``distrust``ed for
that content: ``holders`` leaves it out from then on, and ``snapshot`` (``status``) shows what
and why. At most ``MAX_LIES`` are kept per peer, the oldest forgotten first.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

# inbound: it said hello to us first; pex: a peer told of it; tracker: the office's tracker
PeerSource = Literal["mdns", "static", "inbound", "pex", "tracker"]
MAX_LIES = 64
MAX_ADDRS = 8  # proven addresses kept per peer, and hints (announced, unproven) per agent
MAX_PENDING = 1024  # agents announced and not proven yet
HINT_HOLD = 30.0  # an address that failed for an agent is not tried for it again for this long
# ... unless the agent connects to us from there again (it moved and listens there now; a
# connection that came too early, before it listened, must not hide it for HINT_HOLD).
INBOUND_HOLD = 2.0
PROBES = 2  # live peers pinged per round, whatever the size of the office
PROBE_EVERY = 1.0  # seconds per round
MAX_GOSSIP = 8  # deaths piggybacked on one ping or pong


@dataclass(frozen=True)
class PeerAddr:
    """Where a peer's RPC server listens."""

    host: str
    rpc_port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.rpc_port}"


@dataclass
class Peer:
    """One peer as this agent sees it (owned by ``PeerTable``: read, do not mutate)."""

    agent: str
    addrs: list[PeerAddr]  # proven by a hello naming this agent; the last that worked first
    torrent_port: int | None  # the proving hello's
    source: PeerSource
    first_seen: float
    last_heard: float
    alive: bool = True
    holds: set[str] = field(default_factory=set)  # digests the peer holds complete
    partial: set[str] = field(default_factory=set)  # digests the peer holds in part
    failures: int = 0  # failed pings since we last heard from it
    last_pinged: float | None = None  # when the last ping was handed out, until heard
    awaiting: bool = False  # that ping has not failed (nor been answered) yet
    died: float | None = None  # when it was last marked dead
    doubted: float | None = None  # when mDNS said goodbye for it, until it answers or dies
    verified: bool = False  # an RPC with it succeeded since it was last seen alive
    lies: dict[str, str] = field(default_factory=dict)  # content -> why it is distrusted
    host: str = ""  # its host name where known (a static peer's configured name), else ""
    # Announced, not proven: address -> when announced, None while a hello on it is tried.
    hints: dict[PeerAddr, float | None] = field(default_factory=dict)
    held: dict[PeerAddr, float] = field(default_factory=dict)  # failed: not tried until then

    @property
    def last_checked(self) -> float:
        """When we last heard from it or pinged it."""
        return max(self.last_heard, self.last_pinged if self.last_pinged is not None else -math.inf)

    @property
    def pending(self) -> bool:
        """Announced, never proven: not a peer yet."""
        return not self.alive and self.died is None


class PeerTable:
    """The peers of one agent, driven by events and a ``now`` argument."""

    def __init__(
        self,
        self_agent: str,
        *,
        ping_interval: float = 2.0,
        dead_after: float = 8.0,
        max_failures: int = 2,
        forget_after: float = 600.0,
        probes: int = PROBES,
        probe_every: float = PROBE_EVERY,
    ) -> None:
        self.self_agent = self_agent
        self.ping_interval = ping_interval
        self.dead_after = dead_after
        self.max_failures = max_failures
        self.forget_after = forget_after
        self.probes = probes
        self.probe_every = probe_every
        self._peers: dict[str, Peer] = {}
        self._next_round = -math.inf
        self._rumors: dict[str, int] = {}  # dead agent -> sends left

    # -- events in -----------------------------------------------------------------------------

    def seen(
        self, agent: str, addrs: Iterable[PeerAddr], now: float, source: PeerSource = "mdns"
    ) -> bool:
        """An announcement (mDNS) of ``agent`` at ``addrs``, or where the agent connected to us
        from: hints to try, nothing more. True if there is a new one (``due_probes``). A live
        peer's proven addresses, addresses already being tried and addresses that failed for
        it within ``HINT_HOLD`` are not hints (within ``INBOUND_HOLD`` where the agent connected
        to us from: it may have moved there since); at most ``MAX_ADDRS`` are kept per agent, the
        oldest not being tried dropped."""
        if agent == self.self_agent:
            return False
        peer = self._peers.get(agent)
        if peer is None:
            if sum(p.pending for p in self._peers.values()) >= MAX_PENDING:
                return False
            peer = Peer(agent, [], None, source, first_seen=now, last_heard=now, alive=False)
        new = False
        for addr in dict.fromkeys(addrs):
            if (peer.alive and addr in peer.addrs) or addr in peer.hints:
                continue
            until = peer.held.get(addr, -math.inf)
            if source == "inbound":
                until -= HINT_HOLD - INBOUND_HOLD
            if now < until:
                continue
            peer.held.pop(addr, None)
            peer.hints[addr] = now
            new = True
            idle = [a for a, since in peer.hints.items() if since is not None]
            while len(peer.hints) > MAX_ADDRS and idle:
                del peer.hints[idle.pop(0)]
        if new:
            self._peers.setdefault(agent, peer)
        return new

    def due_probes(self, now: float) -> list[tuple[str, PeerAddr]]:
        """The hints to try now, (agent, address), each handed out once: the caller says
        hello there and reports ``said_hello``, ``refuted`` or ``unreachable``."""
        due: list[tuple[str, PeerAddr]] = []
        for peer in self._sorted():
            for addr, since in peer.hints.items():
                if since is not None and now >= since:
                    peer.hints[addr] = None
                    due.append((peer.agent, addr))
        return due

    def source_of(self, agent: str) -> PeerSource:
        """How ``agent`` became known: announced, configured, or by saying hello to us."""
        peer = self._peers.get(agent)
        return peer.source if peer is not None else "mdns"

    def said_hello(
        self,
        addr: PeerAddr,
        agent: str,
        torrent_port: int,
        source: PeerSource,
        now: float,
        *,
        announced_as: str | None = None,
        host: str = "",
    ) -> bool:
        """A hello on ``addr`` named ``agent`` (with an office key: so did its certificate).
        ``announced_as``: the agent ``addr`` was a hint for (None: a static peer's address,
        whoever answers). True if that proved ``agent`` there: the address is its first, the
        hello's torrent port its own, and the peer is alive and verified. A hello naming
        another agent than announced refutes the address for that one. A host name (a static
        peer's configured one), once known, stays until another one is given."""
        if announced_as is not None and agent != announced_as:
            self.refuted(announced_as, addr, now)
            return False
        if agent == self.self_agent:
            return False
        peer = self._peers.get(agent)
        if peer is None:
            peer = self._peers[agent] = Peer(agent, [], torrent_port, source, now, now)
        peer.hints.pop(addr, None)
        peer.held.pop(addr, None)
        if addr in peer.addrs:
            peer.addrs.remove(addr)
        peer.addrs.insert(0, addr)
        del peer.addrs[MAX_ADDRS:]
        peer.torrent_port = torrent_port
        peer.source = source
        peer.host = host or peer.host
        self._revive(peer, now)
        peer.verified = True
        return True

    def reached(self, agent: str, addr: PeerAddr) -> None:
        """A connection to the peer's proven ``addr`` said the right hello: it goes first."""
        peer = self._peers.get(agent)
        if peer is not None and addr in peer.addrs:
            peer.addrs.remove(addr)
            peer.addrs.insert(0, addr)

    def refuted(self, agent: str, addr: PeerAddr, now: float) -> bool:
        """Whoever answers at ``addr`` is not ``agent`` (its hello or certificate names
        another, or it refused ours): the address is dropped for it, hint or proven. A peer
        left without a proven address is dead. True if the address was known for it."""
        peer = self._peers.get(agent)
        if peer is None:
            return False
        known = self._drop_hint(peer, addr, now)
        if addr in peer.addrs:
            known = True
            peer.addrs.remove(addr)
            if not peer.addrs and peer.alive:
                self._kill(peer, now)
        return known

    def unreachable(self, agent: str, addr: PeerAddr, now: float) -> None:
        """No hello came from ``addr`` (refused, timed out, broken). A hint is dropped; a
        proven address only if another proven address of the peer worked since (it moved):
        an agent restarting or a lost packet must not cost it its address."""
        peer = self._peers.get(agent)
        if peer is None:
            return
        moved = addr in peer.addrs and peer.addrs[0] != addr
        if moved:
            peer.addrs.remove(addr)
        if addr in peer.hints or moved:
            self._drop_hint(peer, addr, now)

    def gone(self, agent: str, now: float) -> bool:
        """mDNS said goodbye. Anyone can say it for any agent, so it is a doubt: the peer is
        due for a ping at once and dies at the first that fails (a stopped agent refuses at
        once); an answer clears it. True if the peer is alive (a ping is due)."""
        peer = self._peers.get(agent)
        if peer is None or not peer.alive:
            return False
        if peer.doubted is None:
            peer.doubted = now
            if not peer.awaiting:  # else the ping in flight decides
                peer.last_pinged = None
        return True

    def heard(self, agent: str, now: float) -> bool:
        """An RPC to or from the peer succeeded. False for an agent with no proven address
        (ignored: unknown, or a hello on its announced address has not proved it yet)."""
        peer = self._peers.get(agent)
        if peer is None or not peer.addrs:
            return False
        self._revive(peer, now)
        peer.verified = True
        return True

    def ping_failed(self, agent: str, now: float) -> bool:
        """A ping got no answer. True if this failure made the peer dead."""
        peer = self._peers.get(agent)
        if peer is None or not peer.alive:
            return False
        peer.failures += 1
        peer.awaiting = False
        if peer.failures >= self.max_failures or peer.doubted is not None:
            self._kill(peer, now)
            self._rumors[agent] = self.rumor_sends()
            return True
        return False

    def told_gone(self, agents: Iterable[str], now: float) -> list[str]:
        """A peer's ping or pong said these agents are dead: for the live ones a doubt, as
        a goodbye (``gone``). Returns the agents now due for a ping."""
        return [a for a in agents if a != self.self_agent and self.gone(a, now)]

    def gossip(self) -> tuple[str, ...]:
        """The deaths to piggyback on one ping or pong: at most ``MAX_GOSSIP``, the least
        spread first; each one's count of sends left goes down."""
        out = sorted(self._rumors, key=lambda a: (-self._rumors[a], a))[:MAX_GOSSIP]
        for a in out:
            self._rumors[a] -= 1
            if self._rumors[a] <= 0:
                del self._rumors[a]
        return tuple(out)

    def rumor_sends(self) -> int:
        """How many messages carry one death: about 3 log2 of the office (SWIM's λ log n)."""
        return 3 * max(1, math.ceil(math.log2(len(self._peers) + 2)))

    def inventory(
        self, agent: str, complete: Iterable[str], partial: Iterable[str], now: float
    ) -> bool:
        """The peer answered an inventory query (which also counts as hearing from it)."""
        peer = self._peers.get(agent)
        if peer is None or not peer.addrs:
            return False
        self._revive(peer, now)
        peer.verified = True
        peer.holds = set(complete)
        peer.partial = set(partial) - peer.holds
        return True

    def distrust(self, agent: str, content: str, why: str) -> bool:
        """The peer lied about ``content`` (a digest or a name): never a holder of it again."""
        peer = self._peers.get(agent)
        if peer is None:
            return False
        peer.lies.pop(content, None)
        peer.lies[content] = why
        while len(peer.lies) > MAX_LIES:
            del peer.lies[next(iter(peer.lies))]
        peer.holds.discard(content)
        peer.partial.discard(content)
        return True

    def trusted(self, agent: str, content: str) -> bool:
        peer = self._peers.get(agent)
        return peer is not None and content not in peer.lies

    # -- timers ---------------------------------------------------------------------------------

    def due_pings(self, now: float) -> list[Peer]:
        """Peers to ping now, each handed out once until heard or failed: those in doubt
        (a goodbye, a rumor) at once, those whose last ping failed at the next round, and in
        a round (every ``probe_every``) up to ``probes`` of the rest not heard from for
        ``ping_interval``, the longest unchecked first."""
        due: list[Peer] = []
        idle: list[Peer] = []
        for peer in self._sorted():
            if not peer.alive:
                continue
            if peer.awaiting:
                continue
            if peer.doubted is not None:
                if peer.last_pinged is None:
                    due.append(peer)
                continue
            if peer.failures:
                # Comparisons are written as next_deadline computes the times: at exactly
                # that float the timer must fire (now - a < b can be true when now == a + b).
                if peer.last_pinged is None or now >= peer.last_pinged + self.probe_every:
                    due.append(peer)
                continue
            if peer.last_pinged is None and now >= peer.last_heard + self.ping_interval:
                idle.append(peer)
        if idle and now >= self._next_round:
            self._next_round = now + self.probe_every
            idle.sort(key=lambda p: (p.last_checked, self._rank(p.agent)))
            due += idle[: self.probes]
        for peer in due:
            peer.last_pinged = now
            peer.awaiting = True
        return due

    def expire(self, now: float) -> list[str]:
        """Mark dead the live peers a ping handed out ``dead_after`` ago did not reach (no
        answer, no failure either); return their ids.

        Peers dead for ``forget_after`` are dropped from the table, and announced agents with
        nothing left to try (their hints failed, and were held long enough).
        """
        died: list[str] = []
        for peer in self._sorted():
            peer.held = {a: until for a, until in peer.held.items() if now < until}
            pinged = peer.last_pinged if peer.awaiting else None
            hung = pinged is not None and now >= pinged + self.dead_after
            if peer.alive and hung:
                self._kill(peer, now)
                self._rumors[peer.agent] = self.rumor_sends()
                died.append(peer.agent)
            elif self._forgotten(peer, now):
                del self._peers[peer.agent]
        return died

    def next_deadline(self) -> float | None:
        """When ``due_probes``, ``due_pings`` or ``expire`` next has something to do (None:
        nothing, ever)."""
        times = []
        for peer in self._peers.values():
            times += [since for since in peer.hints.values() if since is not None]
            if peer.pending and not peer.hints:
                times += peer.held.values()  # then it is forgotten
            if not peer.alive:
                if peer.died is not None:
                    times.append(peer.died + self.forget_after)
                continue
            if peer.awaiting and peer.last_pinged is not None:
                times.append(peer.last_pinged + self.dead_after)
            elif peer.doubted is not None:
                if peer.last_pinged is None:
                    times.append(peer.doubted)  # a goodbye or a rumor: ping at once
            elif peer.failures:
                pinged = peer.last_pinged if peer.last_pinged is not None else -math.inf
                times.append(pinged + self.probe_every)
            elif peer.last_pinged is None:
                times.append(max(peer.last_heard + self.ping_interval, self._next_round))
        return min(times, default=None)

    # -- queries --------------------------------------------------------------------------------

    def get(self, agent: str) -> Peer | None:
        return self._peers.get(agent)

    def alive(self) -> list[Peer]:
        """Live peers, by agent id (every one proven by a hello)."""
        return [p for p in self._sorted() if p.alive]

    def verified_hosts(self) -> set[str]:
        """The proven addresses of live peers that proved themselves over RPC."""
        return {a.host for p in self._peers.values() if p.alive and p.verified for a in p.addrs}

    def holders(self, digest: str) -> list[Peer]:
        """Live peers holding ``digest`` complete, by agent id."""
        return [p for p in self._sorted() if p.alive and digest in p.holds and digest not in p.lies]

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Plain data for ``status --json``, by agent id: peers a hello proved, at the
        addresses it proved (announced ones are counted as ``unproven``)."""
        return [
            {
                "agent": p.agent,
                "host": p.host or None,
                "addresses": [str(a) for a in p.addrs],
                "torrent_port": p.torrent_port,
                "source": p.source,
                "last_heard_age": round(max(0.0, now - p.last_heard), 3),
                "alive": p.alive,
                "verified": p.verified,
                "holds": len(p.holds),
                "partial": len(p.partial),
                "distrusted": [{"content": c, "why": w} for c, w in p.lies.items()],
                "unproven": len(p.hints),
            }
            for p in self._sorted()
            if not p.pending
        ]

    def __len__(self) -> int:
        return len(self._peers)

    # -- internals ------------------------------------------------------------------------------

    def _sorted(self) -> list[Peer]:
        return [self._peers[k] for k in sorted(self._peers)]

    def _forgotten(self, peer: Peer, now: float) -> bool:
        """Dead for ``forget_after``, or announced and left with nothing to try."""
        if peer.pending:
            return not peer.hints and not peer.held
        return peer.died is not None and now >= peer.died + self.forget_after

    def _drop_hint(self, peer: Peer, addr: PeerAddr, now: float) -> bool:
        """``addr`` failed for the peer: no longer a hint, and none again for a while."""
        hinted = addr in peer.hints
        peer.hints.pop(addr, None)
        peer.held.pop(addr, None)
        peer.held[addr] = now + HINT_HOLD
        while len(peer.held) > MAX_ADDRS:
            del peer.held[next(iter(peer.held))]
        return hinted

    def _rank(self, agent: str) -> bytes:
        """This agent's own order of its peers (ties among probes): each agent's differs."""
        return hashlib.blake2b(f"{self.self_agent}/{agent}".encode(), digest_size=8).digest()

    def _revive(self, peer: Peer, now: float) -> None:
        self._rumors.pop(peer.agent, None)
        peer.alive = True
        peer.last_heard = max(peer.last_heard, now)
        peer.failures = 0
        peer.last_pinged = None
        peer.awaiting = False
        peer.died = None
        peer.doubted = None

    def _kill(self, peer: Peer, now: float) -> None:
        peer.alive = False
        peer.verified = False
        peer.died = now
        peer.failures = 0
        peer.last_pinged = None
        peer.awaiting = False
        peer.doubted = None
        # What a dead peer held may be gone when it comes back; it will be asked again.
        peer.holds = set()
        peer.partial = set()
