"""What this agent knows of its peers: addresses, liveness and what they hold.

Theory of operation. Peers enter the table through ``seen``: an mDNS announcement or a static
config entry. From then on liveness is ours to judge, not mDNS's: a peer killed with SIGKILL sends
no goodbye and its mDNS records live on for their TTL (minutes), so the agent pings every live
peer it has not heard from for ``ping_interval`` (``due_pings``), and any successful RPC counts
as hearing from it (``heard``, ``inventory``). A peer is marked dead when mDNS says goodbye
(``gone``), after ``max_failures`` failed pings in a row (a refused connection shows up at once),
or when it has not been heard from for ``dead_after`` (``expire``: a peer that stopped answering
without refusing). A dead peer's inventory is dropped; a later announcement or a successful RPC
brings it back. Peers dead for ``forget_after`` are forgotten. Our own agent id is never a peer.
``next_deadline`` says when the timers next have work. Time is always an argument; the table
never reads a clock.

A peer is ``verified`` once an RPC with it succeeded since it was last seen alive: with an
office key, that RPC ran over mutual TLS, so the peer proved the key. Only verified peers'
addresses get through the swarm's IP filter; an announcement alone proves nothing.

A peer caught lying about some content (a blob it said it held but could not serve, pieces
that failed their hash, a manifest or unit torrent of the wrong shape) is ``distrust``ed for
that content: ``holders`` leaves it out from then on, and ``snapshot`` (``status``) shows what
and why. At most ``MAX_LIES`` are kept per peer, the oldest forgotten first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

PeerSource = Literal["mdns", "static"]
MAX_LIES = 64


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
    addrs: list[PeerAddr]
    torrent_port: int | None
    source: PeerSource
    first_seen: float
    last_heard: float
    alive: bool = True
    holds: set[str] = field(default_factory=set)  # digests the peer holds complete
    partial: set[str] = field(default_factory=set)  # digests the peer holds in part
    failures: int = 0  # failed pings since we last heard from it
    last_pinged: float | None = None  # when the last ping was handed out, until heard
    died: float | None = None  # when it was last marked dead
    verified: bool = False  # an RPC with it succeeded since it was last seen alive
    lies: dict[str, str] = field(default_factory=dict)  # content -> why it is distrusted
    host: str = ""  # its host name where known (a static peer's configured name), else ""


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
    ) -> None:
        self.self_agent = self_agent
        self.ping_interval = ping_interval
        self.dead_after = dead_after
        self.max_failures = max_failures
        self.forget_after = forget_after
        self._peers: dict[str, Peer] = {}

    # -- events in -----------------------------------------------------------------------------

    def seen(
        self,
        agent: str,
        addrs: Iterable[PeerAddr],
        torrent_port: int | None,
        source: PeerSource,
        now: float,
        host: str = "",
    ) -> Peer | None:
        """A peer announced itself (mDNS) or was configured (static); returns it, or None for us.

        The latest announcement replaces the addresses, torrent port and source, and counts as
        hearing from the peer: a dead peer comes back to life. A host name, once known, stays
        until another one is given.
        """
        if agent == self.self_agent:
            return None
        addr_list = list(dict.fromkeys(addrs))  # dedupe, keep order
        peer = self._peers.get(agent)
        if peer is None:
            peer = Peer(agent, addr_list, torrent_port, source, first_seen=now, last_heard=now)
            self._peers[agent] = peer
            peer.host = host
            return peer
        peer.host = host or peer.host
        peer.addrs = addr_list
        peer.torrent_port = torrent_port
        peer.source = source
        self._revive(peer, now)
        return peer

    def gone(self, agent: str, now: float) -> bool:
        """mDNS said goodbye: the peer is dead at once. True if it was alive."""
        peer = self._peers.get(agent)
        if peer is None or not peer.alive:
            return False
        self._kill(peer, now)
        return True

    def heard(self, agent: str, now: float) -> bool:
        """An RPC to or from the peer succeeded. False for an unknown agent (ignored)."""
        peer = self._peers.get(agent)
        if peer is None:
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
        if peer.failures >= self.max_failures:
            self._kill(peer, now)
            return True
        return False

    def inventory(
        self, agent: str, complete: Iterable[str], partial: Iterable[str], now: float
    ) -> bool:
        """The peer answered an inventory query (which also counts as hearing from it)."""
        peer = self._peers.get(agent)
        if peer is None:
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
        """Live peers not heard from for ``ping_interval``, each handed out once per interval."""
        due: list[Peer] = []
        for peer in self._sorted():
            # Comparisons are written as next_deadline computes the times: at exactly that
            # float, the timer must fire (now - a < b can be true when now == a + b).
            if not peer.alive or now < peer.last_heard + self.ping_interval:
                continue
            if peer.last_pinged is not None and now < peer.last_pinged + self.ping_interval:
                continue
            peer.last_pinged = now
            due.append(peer)
        return due

    def expire(self, now: float) -> list[str]:
        """Mark dead the live peers silent for ``dead_after``; return their ids.

        Peers dead for ``forget_after`` are dropped from the table.
        """
        died: list[str] = []
        for peer in self._sorted():
            if peer.alive and now >= peer.last_heard + self.dead_after:
                self._kill(peer, now)
                died.append(peer.agent)
            elif not peer.alive and peer.died is not None and now >= peer.died + self.forget_after:
                del self._peers[peer.agent]
        return died

    def next_deadline(self) -> float | None:
        """When ``due_pings`` or ``expire`` next has something to do (None: no peer)."""
        times = []
        for peer in self._peers.values():
            if peer.alive:
                pinged = peer.last_pinged if peer.last_pinged is not None else -math.inf
                times.append(max(peer.last_heard, pinged) + self.ping_interval)
                times.append(peer.last_heard + self.dead_after)
            elif peer.died is not None:
                times.append(peer.died + self.forget_after)
        return min(times, default=None)

    # -- queries --------------------------------------------------------------------------------

    def get(self, agent: str) -> Peer | None:
        return self._peers.get(agent)

    def alive(self) -> list[Peer]:
        """Live peers, by agent id."""
        return [p for p in self._sorted() if p.alive]

    def verified_hosts(self) -> set[str]:
        """The addresses of live peers that proved themselves over RPC."""
        return {a.host for p in self._peers.values() if p.alive and p.verified for a in p.addrs}

    def holders(self, digest: str) -> list[Peer]:
        """Live peers holding ``digest`` complete, by agent id."""
        return [p for p in self._sorted() if p.alive and digest in p.holds and digest not in p.lies]

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Plain data for ``status --json``, by agent id."""
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
            }
            for p in self._sorted()
        ]

    def __len__(self) -> int:
        return len(self._peers)

    # -- internals ------------------------------------------------------------------------------

    def _sorted(self) -> list[Peer]:
        return [self._peers[k] for k in sorted(self._peers)]

    def _revive(self, peer: Peer, now: float) -> None:
        peer.alive = True
        peer.last_heard = max(peer.last_heard, now)
        peer.failures = 0
        peer.last_pinged = None
        peer.died = None

    def _kill(self, peer: Peer, now: float) -> None:
        peer.alive = False
        peer.verified = False
        peer.died = now
        peer.failures = 0
        peer.last_pinged = None
        # What a dead peer held may be gone when it comes back; it will be asked again.
        peer.holds = set()
        peer.partial = set()
