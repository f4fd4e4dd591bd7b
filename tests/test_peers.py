"""The peer table's rules: entry, proof of addresses, liveness, inventory and status
(``p2pmodel.core.peers``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from p2pmodel.core.peers import (
    HINT_HOLD,
    MAX_ADDRS,
    MAX_GOSSIP,
    MAX_PENDING,
    PROBES,
    Peer,
    PeerAddr,
    PeerSource,
    PeerTable,
)

A = [PeerAddr("10.0.0.2", 7001)]
B = [PeerAddr("10.0.0.3", 7001), PeerAddr("192.168.1.3", 7001)]
SPOOF = PeerAddr("10.0.0.66", 7001)  # an outsider's address, announced for someone else


def table(**kw: Any) -> PeerTable:
    return PeerTable("me", **kw)


def live(
    t: PeerTable,
    agent: str,
    addrs: Sequence[PeerAddr],
    torrent_port: int | None,
    source: PeerSource,
    now: float,
) -> Peer:
    """``agent`` announced at ``addrs`` (mDNS) or configured there (static), and a hello on
    each proved it: a live peer with those addresses, in that order."""
    if source == "mdns":
        assert t.seen(agent, addrs, now)
        assert {(agent, a) for a in addrs} <= set(t.due_probes(now))
    for addr in reversed(addrs):
        announced = agent if source == "mdns" else None
        assert t.said_hello(addr, agent, torrent_port or 0, source, now, announced_as=announced)
    peer = t.get(agent)
    assert peer is not None and peer.alive and peer.addrs == list(addrs)
    peer.torrent_port = torrent_port
    return peer


def test_an_agent_that_said_hello_first_is_listed_as_inbound() -> None:
    """Where an agent connected from is a hint like an announcement, and once a hello there
    proves it, it is listed as learned from its hello ("inbound"), not from mDNS."""
    t = table()
    assert t.seen("a", A, now=1.0, source="inbound") is True
    assert t.source_of("a") == "inbound" and t.source_of("nobody") == "mdns"
    assert t.due_probes(now=1.0) == [("a", A[0])]
    assert t.said_hello(A[0], "a", 6881, t.source_of("a"), now=2.0, announced_as="a")
    assert [p["source"] for p in t.snapshot(now=2.0)] == ["inbound"]


def test_an_announcement_is_only_a_hint_until_a_hello_proves_it() -> None:
    """An announcement makes no peer: its addresses are handed out once to be tried, and only
    a hello naming the agent there makes it a live, verified peer at that address, with the
    hello's torrent port."""
    t = table()
    assert t.seen("a", A + A, now=10.0) is True
    p = t.get("a")
    assert p is not None and not p.alive and p.addrs == [] and t.alive() == []
    assert t.snapshot(now=10.0) == [] and t.verified_hosts() == set()
    assert t.next_deadline() == 10.0  # the hint is due at once
    assert t.due_probes(now=10.0) == [("a", A[0])]
    assert t.due_probes(now=11.0) == []  # handed out once
    assert t.seen("a", A, now=11.0) is False  # being tried already
    assert t.heard("a", now=11.0) is False  # nothing proven: an RPC claim is not enough
    assert t.said_hello(A[0], "a", 6881, "mdns", now=12.0, announced_as="a") is True
    assert (p.addrs, p.torrent_port, p.source, p.first_seen, p.last_heard) == (
        A,
        6881,
        "mdns",
        10.0,
        12.0,
    )
    assert p.alive and p.verified and p.hints == {}
    assert p.holds == set() and p.partial == set()
    assert t.verified_hosts() == {"10.0.0.2"}


def test_self_is_ignored() -> None:
    """Our own announcement or hello never becomes a peer."""
    t = table()
    assert t.seen("me", A, now=0.0) is False
    assert t.said_hello(A[0], "me", 6881, "static", now=0.0) is False
    assert t.get("me") is None and len(t) == 0


def test_a_later_proven_address_goes_first_and_keeps_first_seen() -> None:
    """A new address proven later is added first (the last that worked), the older ones stay;
    the torrent port and source are the latest hello's; first_seen is kept."""
    t = table()
    live(t, "a", A, 6881, "static", now=1.0)
    assert t.seen("a", B + A, now=5.0) is True  # A is proven and alive: not a hint
    assert {a for _, a in t.due_probes(now=5.0)} == set(B)
    for addr in B:
        t.said_hello(addr, "a", 6882, "mdns", now=5.0, announced_as="a")
    p = t.get("a")
    assert p is not None and p.addrs == [B[1], B[0], A[0]]
    assert (p.torrent_port, p.source, p.first_seen, p.last_heard) == (6882, "mdns", 1.0, 5.0)
    t.reached("a", A[0])
    assert p.addrs == [A[0], B[1], B[0]]


def dead(t: PeerTable, agent: str, now: float) -> None:
    """mDNS said goodbye for ``agent`` and the ping that made due at once failed."""
    assert t.gone(agent, now) is True
    assert agent in [p.agent for p in t.due_pings(now)]
    assert t.ping_failed(agent, now) is True


def test_a_goodbye_is_checked_by_one_ping_and_kills_when_it_fails() -> None:
    """An mDNS goodbye makes the peer due for a ping at once (the deadline is now); the first
    failed ping kills it and forgets what it held."""
    t = table(ping_interval=2.0, max_failures=2)
    live(t, "a", A, 1, "mdns", 0.0)
    t.inventory("a", ["d1"], ["d2"], now=0.5)
    assert t.gone("a", now=1.0) is True
    assert t.next_deadline() == 1.0
    assert [p.agent for p in t.due_pings(now=1.0)] == ["a"]
    assert t.due_pings(now=1.0) == []  # handed out once
    assert t.ping_failed("a", now=1.01) is True
    p = t.get("a")
    assert p is not None and not p.alive and p.holds == set() and p.partial == set()
    assert t.gone("a", now=1.5) is False
    assert t.gone("unknown", now=1.5) is False
    assert t.alive() == [] and t.holders("d1") == []


def test_a_spoofed_goodbye_costs_a_ping() -> None:
    """A goodbye for a peer that still answers (anyone can send one) changes nothing but a
    ping: the answer clears the doubt, its holdings stay, and later pings need max_failures
    failures again."""
    t = table(ping_interval=2.0, max_failures=2)
    p = live(t, "a", A, 1, "mdns", 0.0)
    t.inventory("a", ["d1"], [], now=0.5)
    for when in (1.0, 1.2):
        assert t.gone("a", now=when) is True
        assert [x.agent for x in t.due_pings(now=when)] == ["a"]
        assert t.heard("a", now=when + 0.1) is True
    assert p.alive and p.verified and [x.agent for x in t.holders("d1")] == ["a"]
    assert t.due_pings(now=3.3) == [p]
    assert t.ping_failed("a", now=3.4) is False and p.alive


def test_an_announcement_of_a_dead_peer_is_tried_and_a_hello_revives_it() -> None:
    """After a goodbye, an announcement at the peer's own address is a hint again: it is
    tried, and the peer is alive only once the hello there came."""
    t = table()
    live(t, "a", A, 1, "mdns", now=0.0)
    dead(t, "a", now=1.0)
    assert t.seen("a", A, now=2.0) is True
    assert t.alive() == []
    assert t.due_probes(now=2.0) == [("a", A[0])]
    assert t.said_hello(A[0], "a", 1, "mdns", now=2.1, announced_as="a")
    assert [p.agent for p in t.alive()] == ["a"]


def test_heard_refreshes_and_revives_but_ignores_strangers() -> None:
    """A successful RPC refreshes last_heard and revives a dead peer; unknown agents are ignored."""
    t = table()
    live(t, "a", A, 1, "mdns", now=0.0)
    assert t.heard("a", now=3.0) is True
    p = t.get("a")
    assert p is not None and p.last_heard == 3.0
    dead(t, "a", now=4.0)
    assert t.heard("a", now=5.0) is True
    assert p.alive and p.last_heard == 5.0
    assert t.heard("stranger", now=5.0) is False and t.get("stranger") is None
    t.seen("announced", A, now=5.0)
    assert t.heard("announced", now=5.0) is False and t.alive() == [p]


def test_heard_never_moves_last_heard_back() -> None:
    """A late report with an older time does not make a peer look staler."""
    t = table()
    live(t, "a", A, 1, "mdns", 5.0)
    t.heard("a", now=4.0)
    p = t.get("a")
    assert p is not None and p.last_heard == 5.0


def test_due_pings_after_ping_interval() -> None:
    """Live peers silent for ping_interval are due, each handed out once until its ping is
    answered or failed; a failed one is pinged again at the next round; dead ones never."""
    t = table(ping_interval=2.0)
    live(t, "a", A, 1, "mdns", 0.0)
    live(t, "b", B, 1, "mdns", 1.0)
    live(t, "c", A, 1, "mdns", 0.0)
    dead(t, "c", now=0.5)
    assert t.due_pings(now=1.9) == []
    assert [p.agent for p in t.due_pings(now=2.0)] == ["a"]
    assert t.due_pings(now=2.5) == []  # a's ping is in flight; b not yet due
    assert [p.agent for p in t.due_pings(now=3.0)] == ["b"]
    assert t.due_pings(now=4.0) == []  # both in flight
    assert t.ping_failed("a", now=4.5) is False
    assert t.next_deadline() == 3.0  # a failed ping: again one round after it was sent (now)
    assert [p.agent for p in t.due_pings(now=4.5)] == ["a"]


def test_probes_per_round_do_not_grow_with_the_office() -> None:
    """With 500 peers an agent pings PROBES of them per round, the longest unchecked first,
    so each peer is pinged once every 500 / PROBES rounds (SWIM's probing); agents order
    their ties differently, so the office's probes spread over every peer."""
    peers = [f"p{i:03}" for i in range(500)]
    t = table(ping_interval=2.0)
    for i, agent in enumerate(peers):
        live(t, agent, [PeerAddr(f"10.0.{i // 250}.{i % 250 + 1}", 7001)], 1, "mdns", 0.0)
    pinged: dict[str, int] = {}
    for second in range(2, 502):
        now = float(second)
        due = t.due_pings(now)
        assert len(due) == PROBES
        for p in due:
            pinged[p.agent] = pinged.get(p.agent, 0) + 1
            t.heard(p.agent, now + 0.01)
    assert PROBES == 2 and len(pinged) == 500 and set(pinged.values()) == {2}
    other = table(ping_interval=2.0)
    other.self_agent = "someone-else"
    for i, agent in enumerate(peers):
        live(other, agent, [PeerAddr(f"10.0.{i // 250}.{i % 250 + 1}", 7001)], 1, "mdns", 0.0)
    mine = [p.agent for p in table_first_round(peers)]
    assert [p.agent for p in other.due_pings(2.0)] != mine


def table_first_round(peers: Sequence[str]) -> list[Peer]:
    t = table(ping_interval=2.0)
    for i, agent in enumerate(peers):
        live(t, agent, [PeerAddr(f"10.0.{i // 250}.{i % 250 + 1}", 7001)], 1, "mdns", 0.0)
    return t.due_pings(2.0)


def test_a_death_is_gossiped_and_each_hearer_checks_it_itself() -> None:
    """A peer found dead by failed pings rides on the next pings and pongs (at most
    MAX_GOSSIP a message, rumor_sends times in all); a rumor heard is a doubt, a ping at once:
    the hearer kills the peer only when its own ping fails, and only then passes it on. A
    rumor of a peer that answers dies there; one of ourselves is ignored."""
    a = table(max_failures=2)
    live(a, "d", A, 1, "mdns", 0.0)
    live(a, "e", B, 1, "mdns", 0.0)
    assert a.gossip() == ()
    assert a.ping_failed("d", 2.0) is False and a.ping_failed("d", 3.0) is True
    sends = a.rumor_sends()
    assert sends == 3 * 2  # two peers in the table: 3 x ceil(log2(2 + 2))
    carried = [a.gossip() for _ in range(sends + 2)]
    assert carried == [("d",)] * sends + [(), ()]
    b = table()
    live(b, "d", A, 1, "mdns", 0.0)
    assert b.told_gone(["d", "self"], now=4.0) == ["d"]
    assert [p.agent for p in b.due_pings(4.0)] == ["d"]
    assert b.gossip() == ()  # not confirmed yet
    assert b.ping_failed("d", 4.1) is True  # one failure: it was in doubt
    assert b.gossip() == ("d",)
    c = table()
    live(c, "d", A, 1, "mdns", 0.0)
    c.told_gone(["d"], now=4.0)
    c.due_pings(4.0)
    c.heard("d", 4.1)  # it answers: the rumor stops here
    assert c.alive()[0].agent == "d" and c.gossip() == ()
    many = table()
    for i in range(20):
        live(many, f"x{i:02}", [PeerAddr(f"10.1.0.{i + 1}", 7001)], 1, "mdns", 0.0)
        many.gone(f"x{i:02}", 1.0)
    many.due_pings(1.0)
    for i in range(20):
        many.ping_failed(f"x{i:02}", 1.1)
    assert len(many.gossip()) == MAX_GOSSIP


def test_heard_resets_the_ping_schedule() -> None:
    """An answer makes the next ping due ping_interval after it."""
    t = table(ping_interval=2.0)
    live(t, "a", A, 1, "mdns", 0.0)
    assert len(t.due_pings(now=2.0)) == 1
    t.heard("a", now=2.5)
    assert t.due_pings(now=4.25) == []
    assert len(t.due_pings(now=4.5)) == 1


def test_ping_failures_in_a_row_kill() -> None:
    """max_failures failed pings in a row mark the peer dead; an answer in between resets them."""
    t = table(max_failures=2)
    live(t, "a", A, 1, "mdns", 0.0)
    assert t.ping_failed("a", now=2.0) is False
    t.heard("a", now=2.5)
    assert t.ping_failed("a", now=4.5) is False
    assert t.ping_failed("a", now=6.5) is True
    p = t.get("a")
    assert p is not None and not p.alive
    assert t.ping_failed("a", now=7.0) is False  # already dead
    assert t.ping_failed("stranger", now=7.0) is False


def test_expire_kills_peers_whose_ping_hangs() -> None:
    """A peer whose ping got neither an answer nor a failure for dead_after is marked dead
    and returned once; silence alone kills nobody (peers are probed a few at a time)."""
    t = table(dead_after=8.0)
    live(t, "a", A, 1, "mdns", 0.0)
    live(t, "b", B, 1, "static", 0.0)
    assert sorted(p.agent for p in t.due_pings(now=2.0)) == ["a", "b"]
    t.heard("b", now=5.0)
    assert t.expire(now=9.9) == []
    assert t.expire(now=10.0) == ["a"]
    assert t.expire(now=11.0) == []
    assert t.expire(now=100.0) == [] and [p.agent for p in t.alive()] == ["b"]


def test_expire_forgets_long_dead_peers() -> None:
    """Peers dead for forget_after are dropped from the table."""
    t = table(forget_after=60.0)
    live(t, "a", A, 1, "mdns", 0.0)
    dead(t, "a", now=1.0)
    t.expire(now=60.9)
    assert t.get("a") is not None
    t.expire(now=61.0)
    assert t.get("a") is None


def test_inventory_sets_holdings_and_counts_as_heard() -> None:
    """An inventory answer replaces holdings (complete wins over partial) and refreshes liveness."""
    t = table()
    live(t, "a", A, 1, "mdns", 0.0)
    live(t, "b", B, 1, "mdns", 0.0)
    assert t.inventory("a", ["d1", "d2"], ["d2", "d3"], now=3.0) is True
    t.inventory("b", ["d1"], [], now=3.0)
    p = t.get("a")
    assert p is not None and p.holds == {"d1", "d2"} and p.partial == {"d3"}
    assert p.last_heard == 3.0
    assert [x.agent for x in t.holders("d1")] == ["a", "b"]
    assert [x.agent for x in t.holders("d3")] == []  # partial is not holding
    t.inventory("a", [], ["d1"], now=4.0)
    assert [x.agent for x in t.holders("d1")] == ["b"]
    assert t.inventory("stranger", ["d1"], [], now=4.0) is False


def test_snapshot_is_plain_data() -> None:
    """The status snapshot lists every peer with addresses, ages and holding counts."""
    t = table()
    live(t, "b", [PeerAddr("fe80::1", 7002)], None, "static", 0.0)
    live(t, "a", B, 6881, "mdns", 1.0)
    t.inventory("a", ["d1", "d2"], ["d3"], now=2.0)
    dead(t, "b", now=2.5)
    assert t.snapshot(now=3.5) == [
        {
            "agent": "a",
            "host": None,
            "addresses": ["10.0.0.3:7001", "192.168.1.3:7001"],
            "torrent_port": 6881,
            "source": "mdns",
            "last_heard_age": 1.5,
            "alive": True,
            "verified": True,
            "holds": 2,
            "partial": 1,
            "distrusted": [],
            "unproven": 0,
        },
        {
            "agent": "b",
            "host": None,
            "addresses": ["[fe80::1]:7002"],
            "torrent_port": None,
            "source": "static",
            "last_heard_age": 3.5,
            "alive": False,
            "verified": False,
            "holds": 0,
            "partial": 0,
            "distrusted": [],
            "unproven": 0,
        },
    ]


def test_a_host_name_once_known_stays() -> None:
    """A peer's host name (a static peer's configured one) is in the snapshot, and an
    announcement without one (mDNS) does not forget it."""
    t = table()
    name = PeerAddr("ws-anna.lan", 7420)
    assert t.said_hello(name, "a", 6881, "static", now=0.0, host="ws-anna.lan")
    t.seen("a", B, now=1.0)
    for agent, addr in t.due_probes(now=1.0):
        assert t.said_hello(addr, agent, 6881, "mdns", now=1.0, announced_as=agent)
    assert t.snapshot(now=1.0)[0]["host"] == "ws-anna.lan"


def test_next_deadline_is_the_next_ping_or_expiry() -> None:
    """The table says when its timers next have work: a ping due, then an expiry."""
    t = table(ping_interval=2.0, dead_after=8.0, forget_after=600.0)
    assert t.next_deadline() is None
    live(t, "a1", [PeerAddr("10.0.0.1", 7420)], 6881, "mdns", 100.0)
    assert t.next_deadline() == 102.0
    assert [p.agent for p in t.due_pings(102.0)] == ["a1"]
    assert t.next_deadline() == 110.0  # pinged at 102: dead at 110 unless answered
    t.ping_failed("a1", 103.0)
    assert t.next_deadline() == 103.0  # failed: again one round after it was sent
    assert [p.agent for p in t.due_pings(103.0)] == ["a1"]
    assert t.next_deadline() == 111.0
    assert t.expire(111.0) == ["a1"]
    assert t.next_deadline() == 711.0  # forgotten 600 s after it died


@given(
    st.lists(st.floats(0.001, 1000.0, allow_nan=False), min_size=1, max_size=5),
    st.floats(0.1, 30.0),
)
def test_timers_make_progress_at_the_deadline_they_announce(heard: list[float], interval: float):
    """Handling the timers at exactly ``next_deadline()`` always moves the deadline on: a loop
    that sleeps until it never spins (float times like 100.1 + 8.0 included)."""
    t = table(ping_interval=interval, dead_after=4 * interval, forget_after=10 * interval)
    for i, when in enumerate(heard):
        live(t, f"a{i}", [PeerAddr("10.0.0.1", 7420)], 6881, "mdns", when)
    now = max(heard)
    for _ in range(50):
        deadline = t.next_deadline()
        if deadline is None:
            break
        now = max(now, deadline)
        t.due_pings(now)
        t.expire(now)
        after = t.next_deadline()
        assert after is None or after > now


# -- spoofed announcements (issue 16.3) ---------------------------------------------------------


def test_a_spoofed_announcement_never_displaces_proven_addresses() -> None:
    """An outsider announcing a live peer at its own address adds a hint, never an address:
    the peer keeps its proven address (and its torrent port) for dialling, the swarm and
    status; a hello at the outsider's address naming another agent (open office) or failing
    (office key) drops the hint, and the peer stays alive and verified."""
    for answer in ("another agent", "no hello"):
        t = table()
        p = live(t, "a", A, 6881, "mdns", now=0.0)
        assert t.seen("a", [SPOOF], now=1.0) is True
        assert p.addrs == A and p.torrent_port == 6881
        assert t.verified_hosts() == {"10.0.0.2"}
        assert t.snapshot(now=1.0)[0]["addresses"] == ["10.0.0.2:7001"]
        assert t.due_probes(now=1.0) == [("a", SPOOF)]
        if answer == "another agent":
            assert not t.said_hello(SPOOF, "bad", 9999, "mdns", now=1.1, announced_as="a")
        else:
            assert t.refuted("a", SPOOF, now=1.1) is True
        assert p.hints == {} and p.addrs == A and p.torrent_port == 6881
        assert p.alive and p.verified and t.get("bad") is None
        assert t.snapshot(now=1.1)[0]["unproven"] == 0


def test_spoofed_announcements_keep_no_dead_peer_alive() -> None:
    """Announcements count as hearing from nobody: a peer that went silent dies when its
    ping hangs for dead_after however often an outsider announces it, at its own address
    or at the peer's."""
    t = table(dead_after=8.0)
    p = live(t, "a", A, 1, "mdns", now=0.0)
    for second in range(1, 10):
        t.seen("a", [SPOOF, *A], now=float(second))
        for agent, addr in t.due_probes(now=float(second)):
            t.refuted(agent, addr, now=second + 0.1)
        t.due_pings(now=float(second))  # handed out at 2 s, never answered
        assert t.expire(now=float(second)) == []
    assert p.last_heard == 0.0
    assert t.expire(now=10.0) == ["a"]
    assert t.alive() == []


def test_spoofs_never_age_out_a_proven_address() -> None:
    """80 s of spoofed announcements while the real peer answers, then 80 s more after they
    stopped: the peer is alive at its proven address throughout, and the spoofed address,
    refuted once, is not tried again within HINT_HOLD."""
    t = table()
    p = live(t, "a", A, 6881, "mdns", now=0.0)
    probes = 0
    for second in range(1, 161):
        now = float(second)
        if second <= 80:
            t.seen("a", [SPOOF], now)
        for agent, addr in t.due_probes(now):
            probes += 1
            assert (agent, addr) == ("a", SPOOF)
            t.refuted(agent, addr, now)
        for due in t.due_pings(now):
            t.heard(due.agent, now)
        assert t.expire(now) == []
        assert p.addrs == A and p.alive and p.verified
    assert probes == 3  # at 1 s, 31 s and 61 s: HINT_HOLD apart
    assert HINT_HOLD == 30.0


def test_a_phantom_agent_is_never_a_peer_and_is_forgotten() -> None:
    """An agent announced where no hello proves it is never alive nor in status, and leaves
    the table once its held addresses expire."""
    t = table()
    assert t.seen("phantom", [SPOOF], now=0.0)
    assert t.due_probes(now=0.0) == [("phantom", SPOOF)]
    t.unreachable("phantom", SPOOF, now=5.0)
    assert t.alive() == [] and t.snapshot(now=5.0) == [] and t.verified_hosts() == set()
    assert t.seen("phantom", [SPOOF], now=6.0) is False  # held
    assert t.next_deadline() == 5.0 + HINT_HOLD
    t.expire(now=5.0 + HINT_HOLD)
    assert t.get("phantom") is None and len(t) == 0 and t.next_deadline() is None


def test_a_proven_address_answered_by_another_is_dropped() -> None:
    """A proven address where another agent now answers (a reused address) is dropped; the
    peer stays alive at its other address, and dies when none is left."""
    t = table()
    p = live(t, "b", B, 1, "mdns", now=0.0)
    assert t.refuted("b", B[0], now=1.0) is True
    assert p.addrs == [B[1]] and p.alive
    assert t.verified_hosts() == {"192.168.1.3"}
    assert t.refuted("b", B[1], now=2.0) is True
    assert p.addrs == [] and not p.alive and t.verified_hosts() == set()


def test_an_unreachable_proven_address_is_dropped_only_when_another_worked_since() -> None:
    """A proven address that cannot be reached stays while it is the one that worked last
    (the peer may be restarting); once another address of the peer worked since, it goes
    (the peer moved). An unreachable hint is dropped at once."""
    t = table()
    p = live(t, "b", B, 1, "mdns", now=0.0)  # B[0] worked last
    t.unreachable("b", B[0], now=1.0)
    assert p.addrs == B
    t.reached("b", B[1])
    t.unreachable("b", B[0], now=2.0)
    assert p.addrs == [B[1]]
    t.seen("b", [SPOOF], now=3.0)
    t.due_probes(now=3.0)
    t.unreachable("b", SPOOF, now=4.0)
    assert p.hints == {} and p.addrs == [B[1]]


def test_hints_and_pending_agents_are_bounded() -> None:
    """An announcement with many addresses keeps at most MAX_ADDRS hints for the agent; the
    addresses already handed out to be tried are never the ones dropped. At most MAX_PENDING
    agents wait for a proof; a live peer's new address is still taken."""
    t = table()
    t.seen("a", [PeerAddr("10.0.1.1", 7001)], now=0.0)
    first = t.due_probes(now=0.0)
    t.seen("a", [PeerAddr(f"10.0.2.{i}", 7001) for i in range(40)], now=1.0)
    p = t.get("a")
    assert p is not None and len(p.hints) == MAX_ADDRS
    assert first[0][1] in p.hints
    for i in range(MAX_PENDING):
        t.seen(f"phantom{i}", [SPOOF], now=2.0)
    assert len(t) == MAX_PENDING and t.get(f"phantom{MAX_PENDING - 1}") is None
    live(t, "b", A, 1, "static", now=3.0)
    assert t.seen("b", [SPOOF], now=3.0) is True
