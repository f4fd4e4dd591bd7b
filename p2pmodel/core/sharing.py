"""Sharing a model's mirror work (pure): agents that want the same blobs split it by leases.

Theory of operation. Work is cut into units: a small blob is one unit, a large one is cut
into fixed-size segments (``SEGMENT``), so a single 20 GB file is shared out like a sharded
model. Each agent runs one ``Sharing``. It claims a unit nobody holds or leases (``SendClaim``,
with an expiry, to its peers), fetches it from a mirror, renews the lease while it works
(``SendRenew``), and announces the unit when it is verified (``AnnounceDone``); peers then take
that unit from it over the LAN instead of the mirror. A lease not renewed in time (the agent
died) lapses and the unit is taken over; a peer gone (goodbye, failed pings) loses its leases
at once.

A claim is not told to the whole office: each unit has an arbiter, its owner by rendezvous
hashing among the live agents (``arbiter``). An agent takes the units it owns first, and says
nothing (it is their arbiter); a unit it owns not is claimed from its owner only (``SendClaim``:
the service asks ``arbiter`` and waits for the answer before fetching). The arbiter grants the
first claim (``peer_claim`` returns None) and refuses the others with the lease that stands (its
own, or the first claimer's): the claimer drops its claim (``StopMirrorFetch``) and notes the
lease. Where two agents see different arbiters (one joined a moment ago), both may fetch; the
first to announce the unit stops the other, and a claim heard from a non-arbiter follows the old
deterministic rule (the lower agent id's stands). A joining agent first learns the leases and
holdings of its peers. Of the next free units in file order (one per agent), an agent takes its
own first and others' only when it owns none of them (work stealing). A unit some peer announces
is taken from it over the LAN (``FetchFromPeer``), and a mirror fetch of it still running is
stopped.

An agent's share is sized to its rate by pulling: with peers it leases one unit at a time and
takes the next only when that one landed, so a slow or rate-limited agent fetches fewer units
and the others take the rest (work stealing). Alone, an agent leases every unit at once, but a
rate-limited one (``set_rate``, the agent's ``mirror_download`` now) leases only what it
fetches in ``SHARE_HORIZON`` seconds (at least one unit): a peer that joins later finds units
nobody leases and fetches them itself instead of waiting for the slow agent.

In an office of several subnets each byte should cross a router into a subnet once
(``set_near``: the live peers on this agent's own subnets, ``core.locality``). A unit near
holders have is taken from them only (``sources``). A unit only far holders have is brought in
by one near agent: the unit's owner among the near agents known to want its blob (they claimed
or announced units of it) fetches it from the far holders at once and says so to its near
peers with a crossing lease (``SendCrossing``, renewed like a claim); the others wait for it to
announce the unit and take it from it. If no crossing lease comes (the owner does not want
the blob after all), the next near agent in the unit's order takes it after ``CROSS_GRACE``,
the one after that after twice that, and so on. With one segment every peer is near and none
of this applies.

Events in: ``want``, ``peer_claim``, ``peer_crossing``, ``peer_done``, ``peer_release``,
``peer_gone``, ``landed``, ``fetched``, ``failed``, ``drop``. ``poll(now)`` returns the
actions to take now and ``next_deadline()`` when to poll again if nothing else happens
(aioquic's ``get_timer``).
Nothing here does IO or reads a clock.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from .torrents import unit_piece_size

SEGMENT = 16 * 1024 * 1024
TAIL_SEGMENTS = 4  # the last this many segments of a blob are cut into quarter units
LEASE = 30.0  # seconds a claim holds without renewal (a dead peer's end sooner: peer_gone)
RENEW_AT = 0.5  # renew when this fraction of the lease has passed
SHARE_HORIZON = 10.0  # seconds of mirror traffic a rate-limited agent leases ahead, alone
MAX_WANTED = 4096  # blobs whose wanting peers are kept
CROSS_GRACE = 2.0  # seconds a near agent waits per rank for the one before it to bring a unit in


_MASK = (1 << 64) - 1


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _mix64(x: int) -> int:
    """splitmix64's finalizer: a rendezvous score from an agent's and a unit's hashes."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@dataclass(frozen=True, order=True)
class Unit:
    blob: str
    index: int
    start: int
    stop: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.blob, self.index)


def units_of(blob: str, size: int, segment: int = SEGMENT) -> list[Unit]:
    """The units of a blob, the same on every agent: segments, but for a blob of more than
    2 x ``TAIL_SEGMENTS`` segments the last ``TAIL_SEGMENTS`` segments' worth in quarter
    segments (never smaller than a unit torrent's piece, on which every unit starts). The
    office fetches a blob front to back, so its last units are the last ones fetched: each
    agent's last unit then reaches every peer in a quarter of the time (the tail of a shared
    fetch), and the digest check waits for less. Smaller blobs keep whole segments: each unit
    costs a claim's round trip before its first byte, which quarter units of every shard of a
    model would pay four times over (measured: the mirror link idled)."""
    if size <= segment:
        return [Unit(blob, 0, 0, size)]
    segments = -(-size // segment)
    if segments <= 2 * TAIL_SEGMENTS:
        starts = list(range(0, size, segment))
    else:
        small = max(segment // 4, unit_piece_size(size, segment))
        tail = (segments - TAIL_SEGMENTS) * segment
        starts = [*range(0, tail, segment), *range(tail, size, small)]
    ends = [*starts[1:], size]
    return [Unit(blob, i, a, b) for i, (a, b) in enumerate(zip(starts, ends, strict=True))]


# -- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendClaim:
    unit: Unit
    expires: float


@dataclass(frozen=True)
class SendRenew:
    unit: Unit
    expires: float


@dataclass(frozen=True)
class FetchFromMirror:
    unit: Unit


@dataclass(frozen=True)
class FetchFromPeer:
    unit: Unit
    agent: str


@dataclass(frozen=True)
class SendCrossing:
    """Tell the near peers: I bring this unit into our subnet from far holders (a lease)."""

    unit: Unit
    expires: float


@dataclass(frozen=True)
class StopMirrorFetch:
    """Stop fetching this unit from the mirror: a peer's claim wins."""

    unit: Unit


@dataclass(frozen=True)
class SendRelease:
    unit: Unit


@dataclass(frozen=True)
class AnnounceDone:
    unit: Unit


Action = (
    SendClaim
    | SendRenew
    | FetchFromMirror
    | FetchFromPeer
    | StopMirrorFetch
    | SendRelease
    | SendCrossing
    | AnnounceDone
)


@dataclass
class _Lease:
    agent: str
    expires: float


@dataclass
class Sharing:
    agent: str
    max_active: int = 1  # units fetched from mirrors at once by this agent (with peers)
    lease: float = LEASE
    segment: int = SEGMENT
    rate: float | None = None  # this agent's mirror rate limit, bytes/s (None: unlimited)
    _units: list[Unit] = field(default_factory=list)
    _leases: dict[tuple[str, int], _Lease] = field(default_factory=dict)
    _holders: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    _mine: dict[tuple[str, int], float] = field(default_factory=dict)  # unit -> my lease expiry
    _fetching_from_peer: set[tuple[str, int]] = field(default_factory=set)
    _landed: set[tuple[str, int]] = field(default_factory=set)  # mine, bytes all here
    _have: set[tuple[str, int]] = field(default_factory=set)
    _peers: set[str] = field(default_factory=set)
    _solo: bool = False  # no peer since the last want(): claim everything
    _near: set[str] | None = None  # live peers on our subnets (None: all of them, one segment)
    _crossing: dict[tuple[str, int], _Lease] = field(default_factory=dict)  # near peers'
    _crossing_mine: dict[tuple[str, int], float] = field(default_factory=dict)  # -> expiry
    _far_since: dict[tuple[str, int], float] = field(default_factory=dict)  # only far holders
    _wanters: dict[str, set[str]] = field(default_factory=dict)  # blob -> peers fetching it
    _out: list[Action] = field(default_factory=list)
    _arbiters: dict[tuple[str, int], str] = field(default_factory=dict)  # cache of arbiter()
    _candidates: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # blob ->

    # -- events --------------------------------------------------------------------------------

    def want(self, blobs: dict[str, int]) -> None:
        """This agent needs these blobs (digest -> size); units it already has are skipped."""
        known = {u.key for u in self._units}
        for blob, size in sorted(blobs.items()):
            for u in units_of(blob, size, self.segment):
                if u.key not in known:
                    self._units.append(u)
        self._solo = not self._peers
        salt = hashlib.sha256(self.agent.encode()).digest()
        # Each agent its own order: sort by a per-agent hash of the unit.
        self._units.sort(key=lambda u: hashlib.sha256(salt + repr(u.key).encode()).digest())

    def set_peers(self, agents: set[str]) -> None:
        """The live peers: each unit has an owner among us (rendezvous hashing), who fetches
        it first; others take it only once their own units are all claimed."""
        peers = set(agents) - {self.agent}
        if peers != self._peers:
            self._changed_owners()
        self._peers = peers
        if self._peers:
            self._solo = False  # a peer appeared: from now on, a few units at a time

    def set_near(self, agents: set[str] | None) -> None:
        """The live peers on this agent's own subnets (None: every peer is near)."""
        self._near = None if agents is None else set(agents) - {self.agent}

    def _is_near(self, agent: str) -> bool:
        return self._near is None or agent in self._near

    def sources(self, unit: Unit) -> set[str]:
        """Whom to take a unit from: its near holders if there are any, else all of them."""
        holders = self._holders.get(unit.key, set())
        near = {a for a in holders if self._is_near(a)}
        return near or set(holders)

    def _cross_rank(self, unit: Unit) -> int:
        """Our place among the near agents that want the unit's blob, in the unit's order:
        0 brings it in at once, rank r after r x ``CROSS_GRACE``."""
        near = {a for a in self._wanters.get(unit.blob, set()) if self._is_near(a)}
        order = sorted(
            near | {self.agent},
            key=lambda a: hashlib.sha256(f"{a}/{unit.blob}/{unit.index}/in".encode()).digest(),
            reverse=True,
        )
        return order.index(self.agent)

    def arbiter(self, unit: Unit) -> str:
        """The unit's owner: by rendezvous hashing among the live peers and this agent. Every
        live agent, not only those known to want the blob: who wants what is learned a bit at a
        time as gets start, and agents must agree on arbiters while they do (an arbiter that
        does not want the blob still arbitrates it: ``services.sharing``). Cached until the
        peers change: an office of thousands asks it of thousands of units."""
        cached = self._arbiters.get(unit.key)
        if cached is not None:
            return cached
        candidates = self._candidates.get(unit.blob)
        if candidates is None:
            candidates = [(_h64(a), a) for a in sorted(self._peers | {self.agent})]
            self._candidates[unit.blob] = candidates
        hu = _h64(f"{unit.blob}/{unit.index}")
        best = max(candidates, key=lambda c: (_mix64(c[0] ^ hu), c[1]))[1]
        self._arbiters[unit.key] = best
        return best

    def _changed_owners(self) -> None:
        """The live peers changed: arbiters are computed again."""
        self._arbiters.clear()
        self._candidates.clear()

    def _wanted_by(self, blob: str, agent: str) -> None:
        wanters = self._wanters.setdefault(blob, set())
        wanters.add(agent)

    def set_rate(self, rate: float | None) -> None:
        """This agent's mirror rate limit changed (a schedule boundary, a reloaded config):
        the leases it takes from now on are sized to it; those it holds run to their end."""
        self.rate = rate

    def have(self, unit: Unit) -> None:
        """This agent holds the unit already (resumed from disk, or the blob was in the store)."""
        self._have.add(unit.key)

    def peer_claim(self, agent: str, unit: Unit, expires: float) -> float | None:
        """A peer claims the unit (from us, its arbiter, or it thinks so; or a refusal from
        the arbiter). None if the claim stands here; else the expiry of the lease that
        stands, ours or another peer's (the arbiter's answer to the claimer)."""
        key = unit.key
        self._wanted_by(unit.blob, agent)
        arbiter = self.arbiter(unit)
        if key in self._have:
            self._out.append(AnnounceDone(unit))  # the claimer missed that we have it
            return expires + self.lease  # refused: take it from us
        if key in self._mine:
            if agent == arbiter or (agent < self.agent and arbiter != self.agent):
                del self._mine[key]  # the arbiter's word, or the lower id's claim, stands
                self._out.append(StopMirrorFetch(unit))
            else:
                return self._mine[key]  # ours stands
        current = self._leases.get(key)
        if arbiter == self.agent and current is not None and current.agent != agent:
            return current.expires  # the first claim we granted stands
        if current is None or current.agent == agent or agent < current.agent or agent == arbiter:
            self._leases[key] = _Lease(agent, expires)
        return None

    def peer_wants(self, agent: str, blobs: set[str]) -> None:
        """A peer fetches these blobs too (it asked what the office does with them, or said
        it is fetching them when we asked): one of those that may bring their units in."""
        for blob in sorted(blobs)[:MAX_WANTED]:
            self._wanted_by(blob, agent)
        while len(self._wanters) > MAX_WANTED:  # the blobs heard of first go first
            del self._wanters[next(iter(self._wanters))]

    def wants(self, blob: str) -> bool:
        return any(u.blob == blob for u in self._units)

    def peer_crossing(self, agent: str, unit: Unit, expires: float) -> None:
        """A near peer brings this unit in from far holders: wait for it (the lower agent id's
        lease stands when two say so at once)."""
        self._wanted_by(unit.blob, agent)
        current = self._crossing.get(unit.key)
        if current is None or current.agent == agent or agent < current.agent:
            self._crossing[unit.key] = _Lease(agent, expires)

    def peer_done(self, agent: str, unit: Unit) -> None:
        self._holders.setdefault(unit.key, set()).add(agent)
        self._wanted_by(unit.blob, agent)
        crossing = self._crossing.get(unit.key)
        if crossing is not None and crossing.agent == agent:
            del self._crossing[unit.key]
        if self._mine.pop(unit.key, None) is not None:
            self._out.append(StopMirrorFetch(unit))  # a copy is on the LAN: stop fetching
        lease = self._leases.get(unit.key)
        if lease is not None and lease.agent == agent:
            del self._leases[unit.key]

    def peer_release(self, agent: str, unit: Unit) -> None:
        for leases in (self._leases, self._crossing):
            lease = leases.get(unit.key)
            if lease is not None and lease.agent == agent:
                del leases[unit.key]

    def peer_gone(self, agent: str) -> None:
        """A peer died or left: its leases lapse now and it no longer serves what it had."""
        for leases in (self._leases, self._crossing):
            for key in [k for k, lease in leases.items() if lease.agent == agent]:
                del leases[key]
        for wanters in self._wanters.values():
            wanters.discard(agent)
        for holders in self._holders.values():
            holders.discard(agent)
        self._fetching_from_peer = {k for k in self._fetching_from_peer if self._holders.get(k)}

    def landed(self, unit: Unit) -> None:
        """Our mirror fetch of the unit has every byte (it is being hashed and seeded): the
        lease stays until ``fetched``, but the next unit may start now."""
        if unit.key in self._mine:
            self._landed.add(unit.key)

    def fetched(self, unit: Unit) -> None:
        """We have the unit (verified). If we are its first holder in our subnet (it came
        from a mirror, or from behind a router) we tell the peers, so they take it from us;
        a copy taken from near holders is not announced: the peers that need it know a
        holder already, and an announcement by every holder of every unit would cost each
        agent peers x units messages (a peer that joins later asks, ``office?``)."""
        key = unit.key
        self._mine.pop(key, None)
        self._landed.discard(key)
        self._fetching_from_peer.discard(key)
        self._crossing_mine.pop(key, None)
        if key not in self._have:
            self._have.add(key)
            if not any(self._is_near(a) for a in self._holders.get(key, ())):
                self._out.append(AnnounceDone(unit))

    def failed(self, unit: Unit, agent: str | None = None) -> None:
        """Our fetch of the unit failed: give it back to the office. ``agent``: the peer we
        fetched it from, no longer trusted to serve it (the next try goes to another holder
        or, with none left, to a mirror)."""
        key = unit.key
        mine = self._mine.pop(key, None) is not None
        if self._crossing_mine.pop(key, None) is not None or mine:
            self._out.append(SendRelease(unit))
        self._fetching_from_peer.discard(key)
        if agent is not None:
            self.distrust(unit, agent)

    def distrust(self, unit: Unit, agent: str) -> None:
        """This peer could not serve the unit: do not ask it for that unit again."""
        self._holders.get(unit.key, set()).discard(agent)

    def drop(self, blobs: set[str]) -> None:
        """This agent no longer wants these blobs (its get ended or failed): leases it holds
        on them go back to the office at once, and what it had of them is forgotten."""
        for u in self._units:
            if u.blob not in blobs:
                continue
            mine = self._mine.pop(u.key, None) is not None
            if self._crossing_mine.pop(u.key, None) is not None or mine:
                self._out.append(SendRelease(u))
        self._units = [u for u in self._units if u.blob not in blobs]
        self._fetching_from_peer = {k for k in self._fetching_from_peer if k[0] not in blobs}
        # What we held of them counts no more: a later want learns it again from the disk
        # (a failed blob's bytes were thrown away; a stored blob is wanted no more).
        self._have = {k for k in self._have if k[0] not in blobs}
        self._landed = {k for k in self._landed if k[0] not in blobs}

    # -- questions -----------------------------------------------------------------------------

    def holds(self, unit: Unit) -> bool:
        """Do we lease this unit now?"""
        return unit.key in self._mine

    def holds_key(self, key: tuple[str, int]) -> bool:
        return key in self._mine

    def holders(self, unit: Unit) -> set[str]:
        return set(self._holders.get(unit.key, ()))

    def claims(self, now: float) -> list[tuple[Unit, float]]:
        """Our own leases (unit, expiry), for a peer that asks what we are doing."""
        units = {u.key: u for u in self._units}
        return [(units[k], exp) for k, exp in sorted(self._mine.items()) if exp > now]

    def crossings(self, now: float) -> list[tuple[Unit, float]]:
        """Units we bring into our subnet now (unit, lease expiry), for a near peer that asks
        (one that joins while we do must wait for us, not bring them in again)."""
        units = {u.key: u for u in self._units}
        return [
            (units[k], exp)
            for k, exp in sorted(self._crossing_mine.items())
            if exp > now and k in units
        ]

    def wanted(self, blob: str) -> list[Unit]:
        return [u for u in sorted(self._units) if u.blob == blob]

    def next_deadline(self) -> float | None:
        """When ``poll`` has something to do if no event comes first: a lease of ours to renew,
        or a peer's lease to lapse (None: nothing pending)."""
        times = [exp - self.lease * (1 - RENEW_AT) for exp in self._mine.values()]
        times += [exp - self.lease * (1 - RENEW_AT) for exp in self._crossing_mine.values()]
        times += [lease.expires for lease in self._leases.values()]
        times += [lease.expires for lease in self._crossing.values()]
        times += self._cross_waits()
        return min(times, default=None)

    def _cross_waits(self) -> list[float]:
        """When each unit waiting for a near agent to bring it in is ours to bring."""
        units = {u.key: u for u in self._units}
        return [
            since + CROSS_GRACE * self._cross_rank(units[key])
            for key, since in self._far_since.items()
            if key in units and key not in self._crossing
        ]

    @property
    def pending(self) -> bool:
        """Actions wait in the outbox (an event produced some): poll now."""
        return bool(self._out)

    # -- deciding ------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return all(u.key in self._have for u in self._units)

    def poll(self, now: float) -> list[Action]:
        out, self._out = self._out, []
        for key, lease in list(self._leases.items()):
            if lease.expires <= now:
                del self._leases[key]  # not renewed: its agent is gone or stuck
        units = {u.key: u for u in self._units}
        for key, lease in list(self._crossing.items()):
            if lease.expires <= now:
                del self._crossing[key]
        for key, expires in list(self._mine.items()):
            if now >= expires - self.lease * (1 - RENEW_AT):
                self._mine[key] = now + self.lease
                out.append(SendRenew(units[key], now + self.lease))
        for key, expires in list(self._crossing_mine.items()):
            if key in units and now >= expires - self.lease * (1 - RENEW_AT):
                self._crossing_mine[key] = now + self.lease
                out.append(SendCrossing(units[key], now + self.lease))
        for u in self._units:
            key = u.key
            if key in self._have or key in self._mine or key in self._fetching_from_peer:
                self._far_since.pop(key, None)
                continue
            holders = self._holders.get(key)
            if not holders:
                self._far_since.pop(key, None)
                continue
            near = {a for a in holders if self._is_near(a)}
            if not near:
                # Only far holders: one near agent brings it in, the others wait for it.
                since = self._far_since.setdefault(key, now)
                if key in self._crossing or now < since + CROSS_GRACE * self._cross_rank(u):
                    continue
                self._crossing_mine[key] = now + self.lease
                out.append(SendCrossing(u, now + self.lease))
            self._far_since.pop(key, None)
            self._fetching_from_peer.add(key)
            out.append(FetchFromPeer(u, min(near or holders)))
        # Mirror work: units nobody has, leases or is fetching from a peer.
        free = [
            u
            for u in self._units
            if u.key not in self._have
            and u.key not in self._mine
            and u.key not in self._fetching_from_peer
            and u.key not in self._leases
            and not self._holders.get(u.key)
        ]
        # The office works front to back: the next free units in file order, one per agent
        # (blobs then land front to back, so the digest check, which hashes each blob's
        # prefix as it grows, has little left at the end, and the last units fetched are the
        # small ones at the end of the blob). In that front, our own unit first (rendezvous:
        # each front unit has one owner, so idle agents rarely reach for the same one), then
        # the others in this agent's own order; then the rest in file order.
        front = set(sorted(free)[: len(self._peers) + 1])
        order = sorted(u for u in front if self.arbiter(u) == self.agent)
        order += [u for u in free if u in front and u not in order]
        order += sorted(u for u in free if u not in front)
        # Alone, claim it all (the downloader runs every connection over the whole blob, and
        # whoever joins takes the units from us as they land); with peers, a few at a time so
        # units finish one after another and spread over the LAN while the mirror works on.
        # A peer lost for a moment does not make us claim everything.
        limit = len(self._units) if self._solo else self.max_active
        budget = math.inf if self.rate is None else self.rate * SHARE_HORIZON
        self._landed &= self._mine.keys()
        active = [units[k] for k in self._mine if k not in self._landed and k in units]
        inflight = sum(a.stop - a.start for a in active)
        for u in order:
            if len(active) >= limit or (active and inflight + u.stop - u.start > budget):
                break
            self._mine[u.key] = now + self.lease
            active.append(u)
            inflight += u.stop - u.start
            out += [SendClaim(u, now + self.lease), FetchFromMirror(u)]
        return out
