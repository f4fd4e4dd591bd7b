"""The sharing state (core.sharing), driven by an in-memory office: seeded random starts,
message delays, joins and crashes. No sockets, no sleeps: a simulated clock and an event queue."""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

import pytest

from p2pmodel.core.sharing import (
    CROSS_GRACE,
    LEASE,
    SHARE_HORIZON,
    AnnounceDone,
    FetchFromMirror,
    FetchFromPeer,
    SendClaim,
    SendCrossing,
    SendRelease,
    SendRenew,
    Sharing,
    StopMirrorFetch,
    Unit,
    units_of,
)

MiB = 1024 * 1024
SEG = 8 * MiB


def test_units_cut_large_blobs_into_segments_and_the_tail_into_quarters():
    """A blob larger than a segment becomes consecutive segments; beyond 2 x TAIL_SEGMENTS
    segments its last TAIL_SEGMENTS segments' worth are quarter segments (the last unit may
    be short); a blob no larger than a segment stays whole."""
    assert units_of("b", 5, SEG) == [Unit("b", 0, 0, 5)]
    q = SEG // 4
    us = units_of("b", 8 * SEG + 1, SEG)
    heads = [(i * SEG, (i + 1) * SEG) for i in range(5)]
    tail = [(5 * SEG + i * q, 5 * SEG + (i + 1) * q) for i in range(12)] + [(8 * SEG, 8 * SEG + 1)]
    assert [(u.start, u.stop) for u in us] == heads + tail
    small = units_of("b", 8 * SEG, SEG)  # a blob of 2 x TAIL_SEGMENTS segments or less
    assert [(u.start, u.stop) for u in small] == [(i * SEG, (i + 1) * SEG) for i in range(8)]
    assert [u.index for u in us] == list(range(len(us)))
    assert all(u.start % (1024 * 1024) == 0 for u in us)  # on a unit torrent's piece boundary


def test_tail_units_are_never_smaller_than_a_piece():
    """Where a quarter segment would cut a unit torrent's piece (a small segment), the tail
    stays in whole segments."""
    seg = 1024 * 1024
    us = units_of("b", 16 * seg, seg)
    assert [(u.start, u.stop) for u in us] == [(i * seg, (i + 1) * seg) for i in range(16)]


def test_a_unit_leased_by_a_peer_is_not_fetched_from_a_mirror():
    """While a peer's lease runs, we wait for it; when it is done we take it from the peer."""
    c = Sharing("bb", segment=SEG)
    c.want({"x": SEG})
    (u,) = units_of("x", SEG, SEG)
    c.peer_claim("aa", u, expires=10.0)
    assert c.poll(1.0) == []
    c.peer_done("aa", u)
    assert c.poll(2.0) == [FetchFromPeer(u, "aa")]


def test_a_lapsed_lease_is_taken_over():
    """A claim not renewed before it expires is taken over (its agent died quietly)."""
    c = Sharing("bb", segment=SEG)
    c.want({"x": SEG})
    (u,) = units_of("x", SEG, SEG)
    c.peer_claim("aa", u, expires=10.0)
    assert c.poll(9.0) == []
    assert c.poll(10.0) == [SendClaim(u, 10.0 + c.lease), FetchFromMirror(u)]


def test_a_gone_peer_loses_its_leases_at_once():
    """A goodbye (or failed pings) frees the peer's units without waiting for expiry."""
    c = Sharing("bb", segment=SEG)
    c.want({"x": SEG})
    (u,) = units_of("x", SEG, SEG)
    c.peer_claim("aa", u, expires=100.0)
    c.peer_gone("aa")
    assert FetchFromMirror(u) in c.poll(1.0)


def test_a_claim_goes_to_the_units_arbiter_which_refuses_a_rival():
    """Each unit's arbiter (rendezvous owner) takes it with no claim; a peer that steals it
    claims it from the arbiter only, which refuses with its own lease: the claimer stops."""
    a, b = Sharing("aa", segment=SEG), Sharing("bb", segment=SEG)
    a.set_peers({"bb"})
    b.set_peers({"aa"})
    for c in (a, b):
        c.want({"x": SEG})
    (u,) = units_of("x", SEG, SEG)
    assert a.arbiter(u) == b.arbiter(u)
    owner, thief = (a, b) if a.arbiter(u) == "aa" else (b, a)
    assert owner.poll(0.0) == [SendClaim(u, LEASE), FetchFromMirror(u)]  # the service: silent
    assert thief.poll(0.0) == [SendClaim(u, LEASE), FetchFromMirror(u)]  # to the arbiter
    refused = owner.peer_claim(thief.agent, u, LEASE)
    assert refused == LEASE and owner.holds(u)
    assert thief.peer_claim(owner.agent, u, refused) is None  # the arbiter's word
    assert thief.poll(0.1) == [StopMirrorFetch(u)] and not thief.holds(u)


def test_an_arbiter_grants_the_first_claim_and_refuses_the_next():
    """The arbiter grants the first claim of a unit it does not fetch itself and refuses a
    second claimer with the first one's lease; without arbiter (views differ) the lower id
    stands, as before."""
    arb = Sharing("zz", segment=SEG)
    arb.set_peers({"aa", "bb"})
    arb.want({"x": 8 * SEG})
    u = next(v for v in units_of("x", 8 * SEG, SEG) if arb.arbiter(v) == "zz")
    assert arb.peer_claim("bb", u, 30.0) is None
    assert arb.peer_claim("aa", u, 31.0) == 30.0  # bb's stands, though aa < bb
    assert arb.peer_claim("bb", u, 45.0) is None  # a renewal
    lone = Sharing("bb", segment=SEG)
    lone.want({"x": SEG})
    (w,) = units_of("x", SEG, SEG)
    lone.poll(0.0)
    lone.set_peers({"aa", "ee"})
    assert lone.arbiter(w) == "ee"
    assert lone.peer_claim("aa", w, 30.0) is None  # not from the arbiter: the lower id stands
    assert lone.poll(0.1) == [StopMirrorFetch(w)]


def test_leases_are_renewed_while_fetching():
    """Our own lease is renewed before peers would consider it lapsed."""
    c = Sharing("aa", segment=SEG, lease=10.0)
    c.want({"x": SEG})
    (u,) = units_of("x", SEG, SEG)
    c.poll(0.0)
    assert c.poll(4.0) == []
    assert c.poll(5.0) == [SendRenew(u, 15.0)]


def test_a_failed_fetch_is_released_and_tried_again():
    """A failed mirror fetch gives the unit back (SendRelease) and it is claimed anew."""
    c = Sharing("aa", segment=SEG)
    c.want({"x": SEG})
    (u,) = units_of("x", SEG, SEG)
    c.poll(0.0)
    c.failed(u)
    acts = c.poll(1.0)
    assert acts[0] == SendRelease(u) and FetchFromMirror(u) in acts


# -- the simulated office --------------------------------------------------------------------


@dataclass
class Sim:
    """Agents exchanging claims/done over a network with random delays; mirror and LAN
    fetches take time proportional to the unit's size."""

    rng: random.Random
    blobs: dict[str, int]
    mirror_rate: float = 16 * MiB  # bytes/s one agent gets from the mirror per unit
    lan_rate: float = 64 * MiB
    max_delay: float = 0.05
    detect_dead: float = 3.0  # pings notice a crashed agent after this
    now: float = 0.0
    agents: dict[str, Sharing] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    queue: list[tuple[float, int, str, tuple[object, ...]]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    mirror_done: dict[tuple[str, int], int] = field(default_factory=dict)
    aborted: int = 0
    wasted: float = 0.0  # mirror bytes fetched for units then aborted
    started: dict[tuple[str, tuple[str, int]], float] = field(default_factory=dict)
    messages: int = 0
    inflight: dict[tuple[str, tuple[str, int]], int] = field(default_factory=dict)
    subnets: dict[str, str] = field(default_factory=dict)  # agent -> subnet (none: one segment)
    crossed: dict[tuple[str, tuple[str, int]], int] = field(default_factory=dict)  # into, unit

    def near(self, name: str) -> set[str] | None:
        if not self.subnets:
            return None
        return {a for a in self.alive if self.subnets[a] == self.subnets[name]} - {name}

    def at(self, t: float, kind: str, *args: object) -> None:
        heapq.heappush(self.queue, (t, next(self.seq), kind, args))

    def start(self, name: str, t: float) -> None:
        self.at(t, "start", name)

    def crash(self, name: str, t: float) -> None:
        self.at(t, "crash", name)

    def broadcast(self, sender: str, kind: str, unit: Unit, expires: float = 0.0) -> None:
        for other in sorted(self.alive - {sender}):  # sorted: str hashes vary per run
            self.messages += 1
            self.at(
                self.now + self.rng.uniform(0, self.max_delay), kind, other, sender, unit, expires
            )

    def send(self, sender: str, to: str, kind: str, unit: Unit, expires: float = 0.0) -> None:
        self.messages += 1
        self.at(self.now + self.rng.uniform(0, self.max_delay), kind, to, sender, unit, expires)

    def step_agent(self, name: str) -> None:
        c = self.agents[name]
        for act in c.poll(self.now):
            if isinstance(act, SendClaim | SendRenew | SendRelease):
                # To the unit's arbiter only, as the service does (none: we are it).
                kind = "release" if isinstance(act, SendRelease) else "claim"
                arbiter = c.arbiter(act.unit)
                if arbiter != name and arbiter in self.alive:
                    self.send(name, arbiter, kind, act.unit, getattr(act, "expires", 0.0))
            elif isinstance(act, AnnounceDone):
                self.broadcast(name, "done", act.unit)
            elif isinstance(act, SendCrossing):
                for other in sorted(self.near(name) or ()):
                    self.messages += 1
                    delay = self.rng.uniform(0, self.max_delay)
                    self.at(self.now + delay, "crossing", other, name, act.unit, act.expires)
            elif isinstance(act, FetchFromMirror):
                token = next(self.seq)
                self.inflight[(name, act.unit.key)] = token
                self.started[(name, act.unit.key)] = self.now
                took = (act.unit.stop - act.unit.start) / self.mirror_rate
                self.at(
                    self.now + took * self.rng.uniform(0.8, 1.2),
                    "mirror_done",
                    name,
                    act.unit,
                    token,
                )
            elif isinstance(act, FetchFromPeer):
                token = next(self.seq)
                self.inflight[(name, act.unit.key)] = token
                took = (act.unit.stop - act.unit.start) / self.lan_rate
                self.at(self.now + took, "peer_done_fetch", name, act.unit, token, act.agent)
                if self.subnets and self.subnets[act.agent] != self.subnets[name]:
                    into = (self.subnets[name], act.unit.key)
                    self.crossed[into] = self.crossed.get(into, 0) + 1
            elif isinstance(act, StopMirrorFetch):
                self.aborted += 1
                self.inflight.pop((name, act.unit.key), None)
                began = self.started.pop((name, act.unit.key), self.now)
                self.wasted += min(self.now - began, 1e9) * self.mirror_rate

    def run(self, max_events: int = 200_000) -> None:
        for _ in range(max_events):
            if not self.queue:
                return
            self.now, _, kind, args = heapq.heappop(self.queue)
            name = str(args[0])
            if kind == "start":
                c = Sharing(name, segment=SEG)
                c.want(self.blobs)
                self.agents[name] = c
                self.alive.add(name)
                # What others hold and lease is learned at hello time (inventory).
                units = {x.key: x for x in c._units}
                for other in sorted(self.alive - {name}):
                    c.peer_wants(other, set(self.blobs))  # office? both ways
                    self.agents[other].peer_wants(name, set(self.blobs))
                    for key in self.agents[other]._have:
                        c.peer_done(other, units[key])
                    for key, expires in self.agents[other]._mine.items():
                        c.peer_claim(other, units[key], expires)
                    if self.subnets.get(other) == self.subnets.get(name):
                        for u, expires in self.agents[other].crossings(self.now):
                            c.peer_crossing(other, u, expires)
                self.at(self.now, "tick", name)
                continue
            if name not in self.alive:
                continue
            c = self.agents[name]
            if kind == "crash":
                self.alive.discard(name)
                for other in sorted(self.alive):
                    self.at(self.now + self.detect_dead, "gone", other, name)
                continue
            if kind == "tick":
                c.set_peers(set(self.alive))
                c.set_near(self.near(name))
                self.step_agent(name)
                if not c.complete:
                    self.at(self.now + 0.1, "tick", name)
                continue
            if kind == "claim":
                _, sender, unit, expires = args
                stands = c.peer_claim(str(sender), unit, float(expires))  # type: ignore[arg-type]
                if stands is not None:  # refused: the answer names the lease that stands
                    self.send(name, str(sender), "claim", unit, stands)  # type: ignore[arg-type]
            elif kind == "done":
                c.peer_done(str(args[1]), args[2])  # type: ignore[arg-type]
            elif kind == "crossing":
                _, sender, unit, expires = args
                c.peer_crossing(str(sender), unit, float(expires))  # type: ignore[arg-type]
            elif kind == "release":
                c.peer_release(str(args[1]), args[2])  # type: ignore[arg-type]
            elif kind == "gone":
                c.peer_gone(str(args[1]))
            elif kind in ("mirror_done", "peer_done_fetch"):
                unit, token = args[1], args[2]
                if self.inflight.get((name, unit.key)) != token:  # type: ignore[union-attr]
                    continue  # aborted meanwhile
                del self.inflight[(name, unit.key)]  # type: ignore[union-attr]
                if kind == "peer_done_fetch" and str(args[3]) not in self.alive:
                    c.failed(unit)  # type: ignore[arg-type]
                else:
                    if kind == "mirror_done":
                        key = unit.key  # type: ignore[union-attr]
                        self.mirror_done[key] = self.mirror_done.get(key, 0) + 1
                    c.fetched(unit)  # type: ignore[arg-type]
            self.step_agent(name)
        raise AssertionError("simulation did not settle: livelock?")


def office_blobs(rng: random.Random) -> dict[str, int]:
    """A sharded model and one single large file, both cut into segments."""
    blobs = {f"shard{i}": rng.randrange(SEG // 2, 3 * SEG) for i in range(4)}
    blobs["single"] = 6 * SEG + 123
    return blobs


@pytest.mark.parametrize("seed", range(20))
def test_without_failures_each_unit_comes_from_the_mirror_once(seed):
    """Eight agents starting within a second: every unit comes from the mirror once (bytes
    pulled <= 1.02x the model), every agent ends complete, and messages stay bounded."""
    rng = random.Random(seed)
    sim = Sim(rng, office_blobs(rng))
    for _ in range(8):
        sim.start(f"{rng.getrandbits(32):08x}", rng.uniform(0, 1.0))
    sim.run()
    units = {u.key for b, s in sim.blobs.items() for u in units_of(b, s, SEG)}
    assert all(c.complete for c in sim.agents.values())
    assert set(sim.mirror_done) == units
    size = {u.key: u.stop - u.start for b, s in sim.blobs.items() for u in units_of(b, s, SEG)}
    # A unit fetched before anyone hears of the claim (faster than one message delay) may be
    # fetched twice; anything bigger comes from the mirror exactly once.
    quick = sim.mirror_rate * sim.max_delay
    assert all(n == 1 for k, n in sim.mirror_done.items() if size[k] > quick), sim.mirror_done
    model = sum(sim.blobs.values())
    pulled = sum(size[k] * n for k, n in sim.mirror_done.items()) + sim.wasted
    assert pulled <= 1.02 * model, (pulled / model, sim.aborted)
    assert sim.messages <= 8 * 8 * len(units) * 8


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("subnets", [2, 3])
def test_across_subnets_each_unit_crosses_into_a_subnet_about_once(seed, subnets):
    """Six agents in two or three subnets start their gets together (within 0.2 s, less
    than a unit takes from the mirror): the mirror still serves each unit once, and a unit
    fetched from a far holder is brought into each subnet by one of its agents (two that
    heard of each other only at that moment may both bring it, never more)."""
    rng = random.Random(500 + seed)
    sim = Sim(rng, office_blobs(rng))
    for i in range(6):
        name = f"{rng.getrandbits(32):08x}"
        sim.subnets[name] = f"net{i % subnets}"
        sim.start(name, rng.uniform(0, 0.2))
    sim.run()
    assert all(c.complete for c in sim.agents.values())
    units = {u.key: u.stop - u.start for b, s in sim.blobs.items() for u in units_of(b, s, SEG)}
    assert set(sim.mirror_done) == set(units)
    assert max(sim.crossed.values()) <= 2, sim.crossed
    model = sum(sim.blobs.values())
    for net in {f"net{i}" for i in range(subnets)}:
        into = sum(units[k] * n for (where, k), n in sim.crossed.items() if where == net)
        assert into <= 1.1 * model, (net, into / model)


def test_one_segment_never_waits_for_a_crossing():
    """Without subnets (every peer near) a unit a peer holds is fetched at once."""
    c = Sharing("b", segment=SEG)
    u = units_of("x", SEG)[0]
    c.want({"x": SEG})
    c.set_peers({"a", "c"})
    c.peer_claim("c", u, 10.0)  # c wants the blob too
    c.peer_done("a", u)
    assert FetchFromPeer(u, "a") in c.poll(0.0)


def test_a_far_unit_is_brought_in_by_one_near_agent_and_the_rest_wait():
    u = units_of("x", SEG)[0]
    agents = {}
    for name in ("b1", "b2", "b3"):
        c = agents[name] = Sharing(name, segment=SEG)
        c.want({"x": SEG})
        c.set_peers({"a", "b1", "b2", "b3"})
        c.set_near({"b1", "b2", "b3"})
        for other in ("b1", "b2", "b3"):
            if other != name:
                c.peer_claim(other, u, 0.5)  # they want it (their claims lapsed since)
        c.poll(1.0)  # the lapsed leases go (each also claims the unit: drop that)
        c.failed(u)
        c.poll(1.0)
        c.peer_done("a", u)  # only the far agent holds it
    actions = {n: c.poll(2.0) for n, c in agents.items()}
    crossing = [n for n, acts in actions.items() if any(isinstance(x, SendCrossing) for x in acts)]
    assert len(crossing) == 1, actions
    (first,) = crossing
    assert FetchFromPeer(u, "a") in actions[first]
    waiting = [c for n, c in agents.items() if n != first]
    for c in waiting:
        assert not any(isinstance(x, FetchFromPeer) for x in actions[c.agent])
        c.peer_crossing(first, u, 40.0)
        deadline = c.next_deadline()
        assert deadline is not None and deadline >= 40.0 - LEASE  # waits for the lease
        assert not c.poll(20.0)
        c.peer_done(first, u)  # it arrived: take it from the near agent
        assert FetchFromPeer(u, first) in c.poll(21.0)
        assert c.sources(u) == {first}


def test_the_next_near_agent_brings_it_in_when_the_first_does_not():
    """The first in the unit's order never says it crosses (its get ended): the next one
    waits CROSS_GRACE, then brings the unit in itself; a gone crosser's lease lapses at once."""
    u = units_of("x", SEG)[0]
    c = Sharing("b2", segment=SEG)
    c.want({"x": SEG})
    c.set_peers({"a", "b1"})
    c.set_near({"b1"})
    c.peer_claim("b1", u, 0.5)
    c.poll(1.0)
    c.failed(u)
    c.poll(1.0)
    c.peer_done("a", u)
    first = c.poll(2.0)
    if any(isinstance(x, SendCrossing) for x in first):
        return  # b2 is first in this unit's order: nothing to wait for
    deadline = c.next_deadline()
    assert deadline == pytest.approx(2.0 + CROSS_GRACE)
    acts = c.poll(deadline)
    assert any(isinstance(x, SendCrossing) for x in acts)
    assert FetchFromPeer(u, "a") in acts


def test_a_failed_crossing_is_released_and_a_gone_crosser_frees_the_unit():
    u = units_of("x", SEG)[0]
    c = Sharing("b2", segment=SEG)
    c.want({"x": SEG})
    c.set_peers({"a", "b1"})
    c.set_near({"b1"})
    c.peer_done("a", u)
    c.peer_crossing("b1", u, 100.0)
    assert not [x for x in c.poll(0.0) if isinstance(x, FetchFromPeer)]
    c.peer_gone("b1")
    c.set_peers({"a"})
    c.set_near(set())
    acts = c.poll(1.0)
    assert any(isinstance(x, SendCrossing) for x in acts) and FetchFromPeer(u, "a") in acts
    c.failed(u, "a")
    assert SendRelease(u) in c.poll(2.0)


@pytest.mark.parametrize("seed", range(20))
def test_with_crashes_and_late_joins_everyone_left_completes(seed):
    """Agents crash mid-lease and others join late: every surviving agent completes, and the
    mirror serves each unit at most a few times (only lost in-flight units are refetched)."""
    rng = random.Random(1000 + seed)
    sim = Sim(rng, office_blobs(rng))
    names = [f"{rng.getrandbits(32):08x}" for _ in range(7)]
    for n in names[:5]:
        sim.start(n, rng.uniform(0, 1.0))
    for n in names[5:]:
        sim.start(n, rng.uniform(2.0, 6.0))
    for n in rng.sample(names[:5], 2):
        sim.crash(n, rng.uniform(0.5, 3.0))
    sim.run()
    survivors = [c for n, c in sim.agents.items() if n in sim.alive]
    assert survivors and all(c.complete for c in survivors)
    assert max(sim.mirror_done.values()) <= 3


def test_drop_releases_our_leases_and_forgets_the_units():
    c = Sharing("a", max_active=2, segment=SEG)
    c.set_peers({"b"})
    c.want({"x": 3 * SEG, "y": SEG})
    acts = c.poll(0.0)
    claimed = {a.unit for a in acts if isinstance(a, SendClaim)}
    assert len(claimed) == 2
    c.drop({"x", "y"})
    released = {a.unit for a in c.poll(1.0) if isinstance(a, SendRelease)}
    assert released == claimed
    assert c.complete and c.claims(1.0) == []


def test_a_peer_that_failed_to_serve_a_unit_is_not_asked_again():
    c = Sharing("b")
    c.want({"x": SEG})
    (u,) = units_of("x", SEG, SEG)
    c.peer_done("a", u)
    c.peer_done("c", u)
    assert [a for a in c.poll(0.0) if isinstance(a, FetchFromPeer)] == [FetchFromPeer(u, "a")]
    c.failed(u, "a")
    assert [a for a in c.poll(1.0) if isinstance(a, FetchFromPeer)] == [FetchFromPeer(u, "c")]
    c.failed(u, "c")
    acts = c.poll(2.0)
    assert FetchFromMirror(u) in acts and c.holders(u) == set()


def test_claims_lists_our_live_leases():
    c = Sharing("a", max_active=1, segment=SEG)
    c.want({"x": SEG})
    c.poll(0.0)
    ((unit, expires),) = c.claims(0.0)
    assert unit.blob == "x" and expires == LEASE


def test_alone_an_agent_claims_every_unit_and_with_peers_only_max_active():
    c = Sharing("a", max_active=1, segment=SEG)
    c.want({"x": 4 * SEG})
    assert sum(isinstance(a, FetchFromMirror) for a in c.poll(0.0)) == len(
        units_of("x", 4 * SEG, SEG)
    )
    d = Sharing("a", max_active=1, segment=SEG)
    d.set_peers({"b"})
    d.want({"x": 4 * SEG})
    assert sum(isinstance(a, FetchFromMirror) for a in d.poll(0.0)) == 1


def test_alone_a_rate_limited_agent_leases_what_it_fetches_in_the_horizon():
    """A limited agent alone leases only SHARE_HORIZON seconds of units at its rate (at least
    one), takes the next as one lands, and a raised rate lets it lease more at once."""
    c = Sharing("a", segment=SEG)
    c.set_rate(2 * SEG / SHARE_HORIZON)  # two units' worth
    c.want({"x": 8 * SEG})
    first = [a.unit for a in c.poll(0.0) if isinstance(a, FetchFromMirror)]
    assert len(first) == 2
    c.landed(first[0])
    assert len([a for a in c.poll(1.0) if isinstance(a, FetchFromMirror)]) == 1
    c.set_rate(SEG / (10 * SHARE_HORIZON))  # less than a unit: still one at a time
    assert [a for a in c.poll(2.0) if isinstance(a, FetchFromMirror)] == []
    c.set_rate(None)
    rest = len(units_of("x", 8 * SEG, SEG)) - 3
    assert len([a for a in c.poll(3.0) if isinstance(a, FetchFromMirror)]) == rest


def test_a_slow_agent_leaves_the_rest_to_a_peer_that_joins():
    """Units a rate-limited agent has not leased are free for a peer that joins later: it
    fetches them from the mirror instead of waiting for the slow agent."""
    slow, fast = Sharing("aa", segment=SEG), Sharing("bb", segment=SEG)
    slow.set_rate(SEG / SHARE_HORIZON)
    slow.want({"x": 8 * SEG})  # whole segments first (the tail is cut finer)
    (held,) = [a for a in slow.poll(0.0) if isinstance(a, SendClaim)]
    fast.set_peers({"aa"})
    fast.want({"x": 8 * SEG})
    fast.peer_claim("aa", held.unit, held.expires)
    taken = [a.unit for a in fast.poll(1.0) if isinstance(a, FetchFromMirror)]
    assert len(taken) == 1 and taken[0] != held.unit


def test_a_landed_unit_lets_the_next_one_start_but_keeps_its_lease():
    c = Sharing("a", max_active=1, segment=SEG)
    c.set_peers({"b"})
    c.want({"x": 2 * SEG})
    (first,) = [a.unit for a in c.poll(0.0) if isinstance(a, FetchFromMirror)]
    assert not [a for a in c.poll(0.1) if isinstance(a, FetchFromMirror)]
    c.landed(first)
    (second,) = [a.unit for a in c.poll(0.2) if isinstance(a, FetchFromMirror)]
    assert second != first and c.holds(first)
    c.fetched(first)
    assert AnnounceDone(first) in c.poll(0.3) and not c.holds(first)


def test_next_deadline_is_the_next_renewal_or_lapse():
    """The sharing state says when to poll next: a peer's lease lapsing, or one of ours to renew;
    polling then does exactly that."""
    c = Sharing("bb", segment=SEG)
    assert c.next_deadline() is None
    c.want({"x": 2 * SEG})
    *theirs, u1 = units_of("x", 2 * SEG, SEG)
    for u in theirs:
        c.peer_claim("aa", u, expires=10.0)
    c.set_peers({"aa"})
    assert c.next_deadline() == 10.0
    acts = c.poll(1.0)
    assert SendClaim(u1, 1.0 + c.lease) in acts
    assert c.next_deadline() == 10.0
    for u in theirs:
        c.peer_release("aa", u)
    assert c.next_deadline() == 1.0 + c.lease / 2
    assert c.poll(c.next_deadline()) == [SendRenew(u1, 1.0 + c.lease / 2 + c.lease)]


def test_a_blob_wanted_again_after_a_drop_is_fetched_again():
    """A get that failed (its bytes thrown away) and is run again claims the units anew: what
    the first one had fetched no longer counts as held."""
    c = Sharing("aa", segment=SEG)
    c.want({"x": SEG})
    (u,) = units_of("x", SEG, SEG)
    assert c.poll(0.0) == [SendClaim(u, c.lease), FetchFromMirror(u)]
    c.fetched(u)
    c.poll(1.0)
    c.drop({"x"})
    c.poll(2.0)
    c.want({"x": SEG})
    assert c.poll(3.0) == [SendClaim(u, 3.0 + c.lease), FetchFromMirror(u)]


def test_the_office_works_front_to_back():
    """Agents that start together claim the first free units in file order (one per agent),
    and each next claim is the next free unit, so the blob lands front to back."""
    agents = ["aa", "bb", "cc"]
    coords = {a: Sharing(a, segment=SEG) for a in agents}
    units = units_of("x", 16 * SEG, SEG)
    for c in coords.values():
        c.set_peers(set(agents))
        c.want({"x": 16 * SEG})
    claims = {
        a: [x.unit for x in c.poll(0.0) if isinstance(x, SendClaim)] for a, c in coords.items()
    }
    assert all(len(cl) == 1 and cl[0] in units[:3] for cl in claims.values())
    for a, c in coords.items():  # everyone hears everyone's claims: the first three are taken
        for b in agents:
            if b != a:
                for u in claims[b]:
                    c.peer_claim(b, u, LEASE)
    c = coords["aa"]
    taken = {u for cl in claims.values() for u in cl}
    c.landed(claims["aa"][0])
    (nxt,) = [x.unit for x in c.poll(1.0) if isinstance(x, FetchFromMirror)]
    assert nxt in sorted(set(units) - taken)[:3]


def test_only_the_first_holder_in_a_subnet_announces_a_unit():
    """A unit fetched from a mirror, or brought in from far holders, is announced; one taken
    from a near holder is not (every holder announcing every unit costs each agent peers x
    units messages): the peers that need it know a holder already."""
    c = Sharing("a", segment=SEG)
    c.set_peers({"b", "far"})
    c.set_near({"b"})
    c.want({"x": 3 * SEG})
    u0, u1, u2 = units_of("x", 3 * SEG, SEG)
    c.peer_done("b", u0)
    c.peer_done("far", u1)
    acts = c.poll(0.0)
    assert FetchFromPeer(u0, "b") in acts and FetchFromMirror(u2) in acts
    c.fetched(u0)
    assert not [a for a in c.poll(0.1) if isinstance(a, AnnounceDone)]
    assert FetchFromPeer(u1, "far") in c.poll(10.0)  # ours to bring in (the only near wanter)
    c.fetched(u1)
    assert AnnounceDone(u1) in c.poll(10.1)
    c.fetched(u2)
    assert AnnounceDone(u2) in c.poll(10.3)


def test_every_agent_names_the_same_arbiters_spread_evenly_and_follows_changes():
    """Agents with the same view of the office name the same arbiter for each unit; 3,600
    units spread evenly over 64 agents; an arbiter that leaves is reflected at once, though
    arbiters are cached."""
    names = [f"{i:02x}" * 4 for i in range(64)]
    blob = "sha256:" + "ab" * 32
    size = 3600 * SEG // 4  # quarter units would make more: whole segments here
    agents = [Sharing(n, segment=SEG // 4) for n in names[:3]]
    for a in agents:
        a.set_peers(set(names))
        a.want({blob: size})
    units = units_of(blob, size, SEG // 4)
    views = [[a.arbiter(u) for u in units] for a in agents]
    assert views[0] == views[1] == views[2]
    counts = [views[0].count(n) for n in names]
    assert min(counts) >= 0.6 * len(units) / 64 and max(counts) <= 1.4 * len(units) / 64
    a = agents[0]
    u = next(u for u in units if a.arbiter(u) not in (a.agent,))
    gone = a.arbiter(u)
    a.set_peers(set(names) - {gone})
    after = a.arbiter(u)
    assert after != gone
    a.peer_wants(names[5], {blob})  # who wants the blob does not move arbiters
    assert a.arbiter(u) == after
