"""Peer exchange (pure): which agents we tell our peers of, and what we take from what they tell.

Theory of operation. mDNS stays in its subnet, so one static peer, one reachable agent or one
tracker answer must be enough to join a whole office. Each agent tells the peers that proved the
office key (any peer that said hello, in an open office) which agents it knows alive: agent id,
the addresses a hello proved, and how long ago it heard from each (``entries``). It does so
when a peer becomes verified (the newcomer learns everyone at once), and now and then to a few
peers (``PEX_EVERY``, ``PEX_FANOUT``), so what one agent missed reaches it later. The message
also carries the trackers the sender uses (``core.tracker``), so a tracker configured on one
workstation reaches the office.

What a peer tells is never believed: each entry becomes a hint in the ``PeerTable`` (source
``pex``) and is used only once a hello at that address named that agent; an address that is no
agent costs one failed hello and is then held (``HINT_HOLD``). Bounds, so a peer cannot flood:
at most ``MAX_ENTRIES`` entries and ``MAX_ADDRS`` addresses per entry are read, entries older
than ``MAX_AGE`` are skipped, and one message per peer per ``MIN_GAP`` is taken (``Intake``);
the table itself keeps at most ``MAX_PENDING`` unproven agents.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .peers import MAX_ADDRS, Peer, PeerAddr

MAX_ENTRIES = 256
MAX_AGE = 60.0  # s: an agent not heard from for longer is not told of, nor taken
MIN_GAP = 2.0  # s: at most one message per peer taken in this time
PEX_EVERY = 30.0  # s between rounds of telling a few peers what we know
PEX_FANOUT = 3  # peers told per round

Entry = tuple[str, tuple[tuple[str, int], ...], int]  # (agent, ((host, rpc port), ...), age ms)


def entries(peers: Iterable[Peer], now: float, *, leave_out: str = "") -> tuple[Entry, ...]:
    """What we tell: the live, verified peers heard from within ``MAX_AGE`` (but
    ``leave_out``, the one we tell), freshest first, at most ``MAX_ENTRIES``."""
    out = [
        (p.agent, tuple((a.host, a.rpc_port) for a in p.addrs[:MAX_ADDRS]), p.last_heard)
        for p in peers
        if p.alive and p.verified and p.addrs and p.agent != leave_out
        if now - p.last_heard <= MAX_AGE
    ]
    out.sort(key=lambda e: (-e[2], e[0]))
    return tuple(
        (agent, addrs, round(max(0.0, now - heard) * 1000))
        for agent, addrs, heard in out[:MAX_ENTRIES]
    )


def hints(told: Sequence[Entry], self_agent: str) -> list[tuple[str, list[PeerAddr]]]:
    """The (agent, addresses) worth a hello from what a peer told: recent entries of other
    agents than us, within the bounds."""
    out = []
    for agent, addrs, age_ms in told[:MAX_ENTRIES]:
        if agent == self_agent or age_ms > MAX_AGE * 1000:
            continue
        out.append((agent, [PeerAddr(h, p) for h, p in addrs[:MAX_ADDRS]]))
    return out


@dataclass
class Intake:
    """One message per peer per ``MIN_GAP``; and who is owed our list (see the module)."""

    _last: dict[str, float] = field(default_factory=dict)
    _told: set[str] = field(default_factory=set)  # verified peers told since they were verified
    _round: float | None = None

    def take(self, agent: str, now: float) -> bool:
        """Whether a message from ``agent`` now is read (else dropped unread)."""
        last = self._last.get(agent)
        if last is not None and now < last + MIN_GAP:
            return False
        self._last[agent] = now
        return True

    def owed(self, verified: Iterable[str]) -> list[str]:
        """Peers verified since we last told them (newly met, or back from the dead): tell
        them now, each once. Peers no longer verified are owed again when they are."""
        now_verified = set(verified)
        self._told &= now_verified
        for gone in set(self._last) - now_verified:
            del self._last[gone]
        new = sorted(now_verified - self._told)
        self._told |= now_verified
        return new

    def round_due(self, verified: Sequence[str], now: float, pick: int) -> list[str]:
        """Every ``PEX_EVERY``, ``PEX_FANOUT`` of the verified peers (``pick`` turns the
        choice: a caller's random number), else nothing."""
        if self._round is None:
            self._round = now
        if now < self._round + PEX_EVERY:
            return []
        self._round = now
        ids = sorted(verified)
        return [ids[(pick + k) % len(ids)] for k in range(min(PEX_FANOUT, len(ids)))]

    def next_round(self) -> float | None:
        return None if self._round is None else self._round + PEX_EVERY
