"""The peer table's rules: entry, liveness, inventory and status (``p2pmodel.core.peers``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from p2pmodel.core.peers import PeerAddr, PeerTable

A = [PeerAddr("10.0.0.2", 7001)]
B = [PeerAddr("10.0.0.3", 7001), PeerAddr("192.168.1.3", 7001)]


def table(**kw: Any) -> PeerTable:
    return PeerTable("me", **kw)


def test_seen_adds_a_live_peer() -> None:
    """An announcement creates a live peer with its addresses, port, source and times."""
    t = table()
    p = t.seen("a", A, 6881, "mdns", now=10.0)
    assert p is not None and p is t.get("a")
    assert (p.addrs, p.torrent_port, p.source, p.first_seen, p.last_heard, p.alive) == (
        A,
        6881,
        "mdns",
        10.0,
        10.0,
        True,
    )
    assert p.holds == set() and p.partial == set()


def test_self_is_ignored() -> None:
    """Our own announcement never becomes a peer."""
    t = table()
    assert t.seen("me", A, 6881, "mdns", now=0.0) is None
    assert t.get("me") is None and len(t) == 0


def test_seen_again_replaces_addresses_and_keeps_first_seen() -> None:
    """A later announcement replaces addresses, port and source but keeps first_seen."""
    t = table()
    t.seen("a", A, 6881, "static", now=1.0)
    p = t.seen("a", B + B, 6882, "mdns", now=5.0)
    assert p is not None
    assert p.addrs == B  # duplicates dropped, order kept
    assert (p.torrent_port, p.source, p.first_seen, p.last_heard) == (6882, "mdns", 1.0, 5.0)


def test_gone_marks_dead_at_once_and_drops_inventory() -> None:
    """An mDNS goodbye kills the peer immediately and forgets what it held."""
    t = table()
    t.seen("a", A, 1, "mdns", now=0.0)
    t.inventory("a", ["d1"], ["d2"], now=0.5)
    assert t.gone("a", now=1.0) is True
    p = t.get("a")
    assert p is not None and not p.alive and p.holds == set() and p.partial == set()
    assert t.gone("a", now=1.5) is False
    assert t.gone("unknown", now=1.5) is False
    assert t.alive() == [] and t.holders("d1") == []


def test_seen_revives_a_dead_peer() -> None:
    """A fresh announcement after a goodbye brings the peer back."""
    t = table()
    t.seen("a", A, 1, "mdns", now=0.0)
    t.gone("a", now=1.0)
    t.seen("a", A, 1, "mdns", now=2.0)
    assert [p.agent for p in t.alive()] == ["a"]


def test_heard_refreshes_and_revives_but_ignores_strangers() -> None:
    """A successful RPC refreshes last_heard and revives a dead peer; unknown agents are ignored."""
    t = table()
    t.seen("a", A, 1, "mdns", now=0.0)
    assert t.heard("a", now=3.0) is True
    p = t.get("a")
    assert p is not None and p.last_heard == 3.0
    t.gone("a", now=4.0)
    assert t.heard("a", now=5.0) is True
    assert p.alive and p.last_heard == 5.0
    assert t.heard("stranger", now=5.0) is False and t.get("stranger") is None


def test_heard_never_moves_last_heard_back() -> None:
    """A late report with an older time does not make a peer look staler."""
    t = table()
    t.seen("a", A, 1, "mdns", now=5.0)
    t.heard("a", now=4.0)
    p = t.get("a")
    assert p is not None and p.last_heard == 5.0


def test_due_pings_after_ping_interval() -> None:
    """Live peers silent for ping_interval are due, each once per interval, dead ones never."""
    t = table(ping_interval=2.0)
    t.seen("a", A, 1, "mdns", now=0.0)
    t.seen("b", B, 1, "mdns", now=1.0)
    t.seen("c", A, 1, "mdns", now=0.0)
    t.gone("c", now=0.5)
    assert t.due_pings(now=1.9) == []
    assert [p.agent for p in t.due_pings(now=2.0)] == ["a"]
    assert t.due_pings(now=2.5) == []  # a's ping is in flight; b not yet due
    assert [p.agent for p in t.due_pings(now=3.0)] == ["b"]
    assert [p.agent for p in t.due_pings(now=4.0)] == ["a"]  # a still silent: ping again


def test_heard_resets_the_ping_schedule() -> None:
    """An answer makes the next ping due ping_interval after it."""
    t = table(ping_interval=2.0)
    t.seen("a", A, 1, "mdns", now=0.0)
    assert len(t.due_pings(now=2.0)) == 1
    t.heard("a", now=2.5)
    assert t.due_pings(now=4.25) == []
    assert len(t.due_pings(now=4.5)) == 1


def test_ping_failures_in_a_row_kill() -> None:
    """max_failures failed pings in a row mark the peer dead; an answer in between resets them."""
    t = table(max_failures=2)
    t.seen("a", A, 1, "mdns", now=0.0)
    assert t.ping_failed("a", now=2.0) is False
    t.heard("a", now=2.5)
    assert t.ping_failed("a", now=4.5) is False
    assert t.ping_failed("a", now=6.5) is True
    p = t.get("a")
    assert p is not None and not p.alive
    assert t.ping_failed("a", now=7.0) is False  # already dead
    assert t.ping_failed("stranger", now=7.0) is False


def test_expire_kills_silent_peers() -> None:
    """Peers not heard for dead_after are marked dead and returned once."""
    t = table(dead_after=8.0)
    t.seen("a", A, 1, "mdns", now=0.0)
    t.seen("b", B, 1, "static", now=0.0)
    t.heard("b", now=5.0)
    assert t.expire(now=7.9) == []
    assert t.expire(now=8.0) == ["a"]
    assert t.expire(now=9.0) == []
    assert t.expire(now=13.0) == ["b"]
    assert t.alive() == []


def test_expire_forgets_long_dead_peers() -> None:
    """Peers dead for forget_after are dropped from the table."""
    t = table(forget_after=60.0)
    t.seen("a", A, 1, "mdns", now=0.0)
    t.gone("a", now=1.0)
    t.expire(now=60.9)
    assert t.get("a") is not None
    t.expire(now=61.0)
    assert t.get("a") is None


def test_inventory_sets_holdings_and_counts_as_heard() -> None:
    """An inventory answer replaces holdings (complete wins over partial) and refreshes liveness."""
    t = table()
    t.seen("a", A, 1, "mdns", now=0.0)
    t.seen("b", B, 1, "mdns", now=0.0)
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
    t.seen("b", [PeerAddr("fe80::1", 7002)], None, "static", now=0.0)
    t.seen("a", B, 6881, "mdns", now=1.0)
    t.inventory("a", ["d1", "d2"], ["d3"], now=2.0)
    t.gone("b", now=2.5)
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
        },
    ]


def test_a_host_name_once_known_stays() -> None:
    """A peer's host name (a static peer's configured one) is in the snapshot, and an
    announcement without one (mDNS) does not forget it."""
    t = table()
    t.seen("a", [PeerAddr("ws-anna.lan", 7420)], 6881, "static", now=0.0, host="ws-anna.lan")
    t.seen("a", B, 6881, "mdns", now=1.0)
    assert t.snapshot(now=1.0)[0]["host"] == "ws-anna.lan"


def test_next_deadline_is_the_next_ping_or_expiry() -> None:
    """The table says when its timers next have work: a ping due, then an expiry."""
    t = table(ping_interval=2.0, dead_after=8.0, forget_after=600.0)
    assert t.next_deadline() is None
    t.seen("a1", [PeerAddr("10.0.0.1", 7420)], 6881, "mdns", 100.0)
    assert t.next_deadline() == 102.0
    assert [p.agent for p in t.due_pings(102.0)] == ["a1"]
    assert t.next_deadline() == 104.0  # pinged at 102: the next ping, unless heard
    t.ping_failed("a1", 103.0)
    t.due_pings(104.0)
    t.due_pings(106.0)
    assert t.next_deadline() == 108.0  # silent since 100: dead at 108
    assert t.expire(108.0) == ["a1"]
    assert t.next_deadline() == 708.0  # forgotten 600 s after it died


@given(
    st.lists(st.floats(0.001, 1000.0, allow_nan=False), min_size=1, max_size=5),
    st.floats(0.1, 30.0),
)
def test_timers_make_progress_at_the_deadline_they_announce(heard: list[float], interval: float):
    """Handling the timers at exactly ``next_deadline()`` always moves the deadline on: a loop
    that sleeps until it never spins (float times like 100.1 + 8.0 included)."""
    t = table(ping_interval=interval, dead_after=4 * interval, forget_after=10 * interval)
    for i, when in enumerate(heard):
        t.seen(f"a{i}", [PeerAddr("10.0.0.1", 7420)], 6881, "mdns", when)
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
