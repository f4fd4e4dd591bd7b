"""Peer exchange and the office's tracker: the pure rules (``core.pex``, ``core.tracker``), the
wire message, and real agents on the in-memory fakes (one static peer, or one tracker, joins
everyone; a tracker configured on one agent reaches the others; an entry that is no agent costs
one hello). The same with real sockets, opentracker and two subnets: tests/test_lan_join.py."""

from __future__ import annotations

import contextlib
import ipaddress
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from p2pmodel.core import pex, tracker, wire
from p2pmodel.core.config import parse_config
from p2pmodel.core.errors import UserError
from p2pmodel.core.officekey import KEY_BYTES, OfficeKey
from p2pmodel.core.peers import Peer, PeerAddr, PeerTable
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.models import make_model

KEY = OfficeKey(bytes(range(KEY_BYTES)))
OTHER = OfficeKey(bytes(range(1, KEY_BYTES + 1)))


def _peer(agent: str, host: str, heard: float, *, verified: bool = True) -> Peer:
    return Peer(agent, [PeerAddr(host, 7420)], 6881, "mdns", 0.0, heard, verified=verified)


# -- core.pex -------------------------------------------------------------------------------------


def test_entries_are_the_live_verified_recent_peers_freshest_first() -> None:
    peers = [
        _peer("aa" * 8, "10.0.0.1", 90.0),
        _peer("bb" * 8, "10.0.0.2", 99.0),
        _peer("cc" * 8, "10.0.0.3", 99.5, verified=False),  # no hello proved it yet
        _peer("dd" * 8, "10.0.0.4", 100.0 - pex.MAX_AGE - 1),  # too long silent
        _peer("ee" * 8, "10.0.0.5", 100.0),  # the one told
    ]
    dead = _peer("ff" * 8, "10.0.0.6", 99.0)
    dead.alive = False
    got = pex.entries([*peers, dead], 100.0, leave_out="ee" * 8)
    assert got == (
        ("bb" * 8, (("10.0.0.2", 7420),), 1000),
        ("aa" * 8, (("10.0.0.1", 7420),), 10000),
    )


def test_entries_are_bounded() -> None:
    peers = [_peer(f"{i:016x}", f"10.1.{i // 250}.{i % 250 + 1}", 50.0) for i in range(400)]
    assert len(pex.entries(peers, 60.0)) == pex.MAX_ENTRIES


def test_hints_skip_us_old_entries_and_cut_addresses() -> None:
    many = tuple((f"10.0.0.{i}", 7420) for i in range(1, 20))
    told: list[pex.Entry] = [
        ("aa" * 8, (("10.0.0.1", 7420),), 0),
        ("me" * 4 + "00" * 4, (("10.0.0.2", 7420),), 0),
        ("bb" * 8, (("10.0.0.3", 7420),), int(pex.MAX_AGE * 1000) + 1),
        ("cc" * 8, many, 5),
    ]
    got = pex.hints(told, "me" * 4 + "00" * 4)
    assert [a for a, _ in got] == ["aa" * 8, "cc" * 8]
    assert len(got[1][1]) == 8


def test_intake_takes_one_message_per_peer_per_gap() -> None:
    intake = pex.Intake()
    assert intake.take("a", 10.0)
    assert not intake.take("a", 10.0 + pex.MIN_GAP / 2)
    assert intake.take("b", 10.5)
    assert intake.take("a", 10.0 + pex.MIN_GAP)


def test_intake_owes_each_newly_verified_peer_one_message() -> None:
    intake = pex.Intake()
    assert intake.owed(["a", "b"]) == ["a", "b"]
    assert intake.owed(["a", "b"]) == []
    assert intake.owed(["a", "b", "c"]) == ["c"]
    assert intake.owed(["a", "c"]) == []
    assert intake.owed(["a", "b", "c"]) == ["b"]  # back from the dead: told again


def test_intake_rounds_tell_a_few_peers_now_and_then() -> None:
    intake = pex.Intake()
    ids = [f"p{i}" for i in range(10)]
    assert intake.round_due(ids, 0.0, pick=0) == []
    assert intake.next_round() == pex.PEX_EVERY
    assert intake.round_due(ids, pex.PEX_EVERY - 0.1, pick=0) == []
    got = intake.round_due(ids, pex.PEX_EVERY, pick=8)
    assert got == ["p8", "p9", "p0"]
    assert intake.round_due(ids, pex.PEX_EVERY + 1, pick=0) == []
    assert intake.round_due([], pex.PEX_EVERY * 2, pick=0) == []  # no one: the round passes
    assert intake.next_round() == pex.PEX_EVERY * 3


# -- the wire message -----------------------------------------------------------------------------


def _roundtrip(msg: wire.Message) -> wire.Message:
    frame = wire.encode(msg, 7)
    got, rid = wire.decode(frame[4:])
    assert rid == 7
    return got


def test_known_peers_roundtrip() -> None:
    msg = wire.KnownPeers(
        peers=(("ab" * 8, (("10.0.0.1", 7420), ("fd00::1", 7421)), 250),),
        trackers=("http://10.0.0.9:6969/announce",),
    )
    assert _roundtrip(msg) == msg


@pytest.mark.parametrize(
    "peers, trackers",
    [
        ([["ab" * 8, [["not-an-ip", 7420]], 0]], []),
        ([["ab" * 8, [["10.0.0.1", 0]], 0]], []),
        ([["ab" * 8, [["10.0.0.1", 70000]], 0]], []),
        ([["AB" * 8, [["10.0.0.1", 7420]], 0]], []),
        ([["ab" * 8, [["10.0.0.1", 7420]] * 9, 0]], []),
        ([["ab" * 8, [["10.0.0.1", 7420]], -1]], []),
        ([["ab" * 8, [], 0]] * (pex.MAX_ENTRIES + 1), []),
        ([], ["ftp://x/announce"]),
        ([], ["http://user:pw@x/announce"]),
        ([], [f"http://t{i}/announce" for i in range(tracker.MAX_TRACKERS + 1)]),
    ],
)
def test_known_peers_out_of_bounds_is_a_protocol_error(peers: Any, trackers: Any) -> None:
    import msgpack

    payload = msgpack.packb(["peers", 1, {"peers": peers, "trackers": trackers}])
    with pytest.raises(wire.PeerProtocolError):
        wire.decode(payload)


# -- core.tracker ---------------------------------------------------------------------------------


def test_rendezvous_is_per_office_and_tells_nothing_of_the_key() -> None:
    mine, theirs, open_office = (tracker.rendezvous(k) for k in (KEY, OTHER, None))
    assert len({mine, theirs, open_office}) == 3
    assert all(len(h) == 20 for h in (mine, theirs, open_office))
    assert open_office == tracker.OPEN_OFFICE
    assert mine != KEY.ca_seed()[:20] and mine.hex()[:16] != KEY.fingerprint
    assert tracker.whitelist(KEY) == [mine.hex()]
    assert KEY.text.split("-", 1)[1] not in "".join(tracker.whitelist(KEY))


def test_announce_url_carries_the_hash_port_and_compact() -> None:
    h, pid = bytes(range(20)), b"-P2PM01-" + b"\xff" * 12
    url = tracker.announce_url("http://t:6969/announce", h, pid, 7420, event="stopped")
    parts = urlsplit(url)
    q = parse_qs(parts.query)
    assert parts.path == "/announce"
    assert unquote_to_bytes(url.split("info_hash=")[1].split("&")[0]) == h
    assert unquote_to_bytes(url.split("peer_id=")[1].split("&")[0]) == pid
    assert q["port"] == ["7420"] and q["compact"] == ["1"] and q["event"] == ["stopped"]
    assert "?a=1&info_hash=" in tracker.announce_url("http://t/announce?a=1", h, pid, 1)


def _bencode(v: Any) -> bytes:
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(map(_bencode, v)) + b"e"
    return b"d" + b"".join(_bencode(k) + _bencode(x) for k, x in sorted(v.items())) + b"e"


_values = st.recursive(
    st.integers(-(2**40), 2**40) | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(_values)
def test_bdecode_reads_what_bencode_wrote(value: Any) -> None:
    assert tracker.bdecode(_bencode(value)) == value


@given(st.binary(max_size=40))
def test_bdecode_of_anything_is_a_value_or_a_tracker_error(data: bytes) -> None:
    with contextlib.suppress(tracker.TrackerError):
        tracker.bdecode(data)


def test_parse_announce_compact_peers_both_families() -> None:
    v4 = bytes([10, 0, 1, 2]) + (7420).to_bytes(2, "big") + bytes([10, 0, 2, 3, 0, 0])
    v6 = ipaddress.ip_address("fd00::5").packed + (7421).to_bytes(2, "big")
    got = tracker.parse_announce(_bencode({b"interval": 1900, b"peers": v4, b"peers6": v6}))
    assert got.interval == 1900.0
    assert got.peers == (("10.0.1.2", 7420), ("fd00::5", 7421))  # port 0 left out


def test_parse_announce_dict_peers_and_refusals() -> None:
    doc = {b"peers": [{b"ip": b"10.0.0.7", b"port": 7420}, {b"ip": b"host.lan", b"port": 1}]}
    assert tracker.parse_announce(_bencode(doc)).peers == (("10.0.0.7", 7420),)
    refused = _bencode({b"failure reason": b"Requested download is not\nauthorized"})
    with pytest.raises(tracker.TrackerError, match="not authorized"):
        tracker.parse_announce(refused)
    for bad in (b"<html>", _bencode([1]), _bencode({b"peers": b"12345"})):
        with pytest.raises(tracker.TrackerError):
            tracker.parse_announce(bad)


@pytest.mark.parametrize(
    "url, ok",
    [
        ("http://10.0.0.1:6969/announce", True),
        ("https://tracker.office.lan/announce?passkey=x", True),
        ("udp://10.0.0.1:6969", False),
        ("http://u:p@10.0.0.1/announce", False),
        ("http:///announce", False),
        ("http://10.0.0.1/announce#x", False),
        ("http://10.0.0.1/ann ounce", False),
        ("http://10.0.0.1:99999/announce", False),
    ],
)
def test_tracker_urls(url: str, ok: bool) -> None:
    assert (tracker.check_url(url) is None) == ok


def test_config_trackers() -> None:
    good = parse_config({"trackers": ["http://10.0.0.1:6969/announce"]}, {})
    assert good.trackers == ("http://10.0.0.1:6969/announce",)
    for bad in ({"trackers": "http://x/announce"}, {"trackers": ["udp://x:1"]}):
        with pytest.raises(UserError, match="tracker"):
            parse_config(bad, {})


def test_configured_trackers_win_over_learned_ones() -> None:
    assert tracker.effective(["http://a/"], ["http://b/"]) == ("http://a/",)
    assert tracker.effective([], ["http://b/", "http://b/", "http://c/"]) == (
        "http://b/",
        "http://c/",
    )


def test_schedule_announces_at_once_then_at_the_interval_backing_off_on_failure() -> None:
    s = tracker.Schedule()
    s.set_urls(["http://t/a"], 100.0)
    assert s.due(100.0) == ["http://t/a"]
    assert s.due(100.0) == [] and s.next_deadline() is None  # in flight
    s.succeeded("http://t/a", 101.0, 1900.0)
    assert s.next_deadline() == 101.0 + tracker.MAX_EVERY
    s.moved(200.0)  # the agent's addresses changed: at once
    assert s.due(200.0) == ["http://t/a"]
    waits = []
    for _ in range(8):
        waits.append(s.failed("http://t/a", 300.0) - 300.0)
        s.due(math.inf)
    assert waits == [5, 10, 20, 40, 80, 160, 300, 300]
    s.set_urls(["http://t/a", "http://t/b"], 400.0)
    assert s.due(400.0) == ["http://t/b"]
    s.set_urls(["http://t/b"], 401.0)
    assert s.urls() == ["http://t/b"]


def test_table_keeps_a_pex_hint_until_a_hello_proves_it() -> None:
    table = PeerTable("me" * 4 + "00" * 4)
    assert table.seen("aa" * 8, [PeerAddr("10.0.0.1", 7420)], 0.0, "pex")
    assert table.alive() == []  # a hint is not a peer
    assert table.due_probes(0.0) == [("aa" * 8, PeerAddr("10.0.0.1", 7420))]
    table.unreachable("aa" * 8, PeerAddr("10.0.0.1", 7420), 1.0)
    # told again within the hold: no second hello
    assert not table.seen("aa" * 8, [PeerAddr("10.0.0.1", 7420)], 2.0, "pex")
    assert table.due_probes(2.0) == []


# -- real agents on the in-memory fakes -----------------------------------------------------------


class MemoryTracker:
    """A tracker in memory: announces (by info-hash) and the compact lists it answers."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self.swarms: dict[bytes, dict[bytes, tuple[str, int]]] = {}
        self.asked: list[dict[str, Any]] = []
        self.urls: list[str] = []

    def client(self, ip: str) -> Callable[[], Any]:
        tracker_ = self

        class Client:
            async def get(self, url: str) -> bytes:
                await trio.lowlevel.checkpoint()
                return tracker_.announce(ip, url)

            async def aclose(self) -> None:
                await trio.lowlevel.checkpoint()

        return Client

    def announce(self, ip: str, url: str) -> bytes:
        raw = {
            k: unquote_to_bytes(v)
            for k, v in (p.split("=", 1) for p in url.split("?")[1].split("&"))
        }
        self.urls.append(url)
        self.asked.append({"ip": ip, **{k: v.decode("latin-1") for k, v in raw.items()}})
        swarm = self.swarms.setdefault(raw["info_hash"], {})
        if raw.get("event") == b"stopped":
            swarm.pop(raw["peer_id"], None)
            return _bencode({b"interval": 1900, b"peers": b""})
        swarm[raw["peer_id"]] = (ip, int(raw["port"]))
        compact = b"".join(
            ipaddress.ip_address(h).packed + p.to_bytes(2, "big") for h, p in swarm.values()
        )
        return _bencode({b"interval": 1900, b"peers": compact})


class Office:
    def __init__(self, tmp: Path, nursery: trio.Nursery) -> None:
        repo = make_model(tmp / "up", "acme/pex", shards=1, shard_size=64 * 1024)
        self.mirror = MemoryMirror([repo])
        self.lan = SimLan(self.mirror)
        self.tracker = MemoryTracker(self.lan.net)
        self.tmp = tmp
        self.nursery = nursery
        self.agents: list[Agent] = []

    async def start(self, top: dict[str, Any] | None = None, key: OfficeKey | None = None) -> Agent:
        home = self.tmp / f"ws{len(self.agents)}"
        home.mkdir()
        raw = {"mirror": [{"for": "https://huggingface.co/", "use": [self.mirror.hub_url + "/"]}]}
        env = {"P2PMODEL_OFFICE_KEY": (key or KEY).text}
        config = parse_config({**raw, **(top or {})}, env)
        outside = self.lan.outside()
        ip = outside.interfaces()[0]
        outside.tracker = self.tracker.client(ip)
        opts = AgentOptions(rpc_port=0, discovery=False, sharing=False)
        agent: Agent = await self.nursery.start(Agent(home, config, opts, outside).run)
        self.agents.append(agent)
        return agent


def addr(agent: Agent) -> str:
    return f"{agent.interfaces[0]}:{agent.rpc_port}"


def alive(agent: Agent) -> set[str]:
    return {p.agent for p in agent.peers.alive() if p.verified}


async def until(done: Callable[[], bool], seconds: float) -> float:
    """Seconds (fake time) until ``done()``; fails after ``seconds``."""
    t0 = trio.current_time()
    for _ in range(int(seconds * 10)):
        if done():
            return trio.current_time() - t0
        await trio.sleep(0.1)
    raise AssertionError(f"not done within {seconds} s")


async def meshed(agents: list[Agent], seconds: float) -> float:
    return await until(
        lambda: all(alive(a) == {b.id for b in agents} - {a.id} for a in agents), seconds
    )


def run_office(tmp_path: Path, body: Callable[[Office], Any]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await body(Office(tmp_path, nursery))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_one_static_peer_joins_a_chain_of_agents(tmp_path: Path) -> None:
    """a - b - c - d, each listing only the one before it (no mDNS): all four are one mesh
    within seconds, every peer proven by its own hello ("pex" where it was told of)."""

    async def body(office: Office) -> None:
        a = await office.start()
        b = await office.start({"peers": [addr(a)]})
        c = await office.start({"peers": [addr(b)]})
        d = await office.start({"peers": [addr(c)]})
        took = await meshed([a, b, c, d], seconds=30)
        assert took < 10, took
        sources = {p.source for x in (a, b, c, d) for p in x.peers.alive()}
        assert "pex" in sources, sources  # told of, then proven by a hello (or met inbound)
        assert d.peers.stats.pex_received > 0 and a.peers.stats.pex_sent > 0

    run_office(tmp_path, body)


def test_an_agent_of_another_office_learns_nothing_by_peer_exchange(tmp_path: Path) -> None:
    """An agent with another key that lists one of ours as its static peer is never told of
    anyone (its TLS handshake fails), and ours never list it."""

    async def body(office: Office) -> None:
        a = await office.start()
        b = await office.start({"peers": [addr(a)]})
        await meshed([a, b], seconds=20)
        stranger = await office.start({"peers": [addr(a), addr(b)]}, key=OTHER)
        await trio.sleep(pex.PEX_EVERY * 2)
        assert len(stranger.peers.table) == 0 and stranger.peers.stats.pex_received == 0
        assert alive(a) == {b.id} and alive(b) == {a.id}

    run_office(tmp_path, body)


def test_an_entry_that_is_no_agent_costs_one_hello(tmp_path: Path) -> None:
    """A peer that tells of an address where no agent listens, again and again: one
    connection attempt there per hold, and nothing else changes."""

    async def body(office: Office) -> None:
        a = await office.start()
        b = await office.start({"peers": [addr(a)]})
        await meshed([a, b], seconds=20)
        tried: list[str] = []
        connect = a.peers.link.transport.connect  # type: ignore[attr-defined]

        async def counting(host: str, port: int) -> Any:
            if (host, port) == ("10.9.9.9", 7420):
                tried.append(host)
            return await connect(host, port)

        a.peers.link.transport.connect = counting  # type: ignore[attr-defined]
        bogus = wire.KnownPeers((("cd" * 8, (("10.9.9.9", 7420),), 0),))
        got_a, got_b = a.peers.stats.messages_received, b.peers.stats.messages_received
        for _ in range(10):
            await b.peers.request(a.id, bogus)
            await trio.sleep(pex.MIN_GAP)
        assert tried == ["10.9.9.9"]
        # status "link": every message received counts, requests and answers alike
        assert a.peers.stats.messages_received - got_a >= 10
        assert b.peers.stats.messages_received - got_b >= 10
        assert a.status()["link"]["messages_received"] == a.peers.stats.messages_received
        assert alive(a) == {b.id}

    run_office(tmp_path, body)


def test_the_tracker_alone_joins_agents_and_reaches_the_unconfigured(tmp_path: Path) -> None:
    """Three agents, no static peers, no mDNS; only the first has the tracker configured.
    Its announce finds no one; the second... cannot know the tracker yet either. So: the
    first two are configured, the third is told of the tracker by peer exchange and then
    announces too (its own rendezvous hash, the office's)."""

    async def body(office: Office) -> None:
        url = "http://10.0.99.1:6969/announce"
        a = await office.start({"trackers": [url]})
        b = await office.start({"trackers": [url]})
        took = await meshed([a, b], seconds=20)
        assert took < 5, took  # b's announce found a: no waiting for a's next one
        c = await office.start({"peers": [addr(b)]})
        await meshed([a, b, c], seconds=20)
        await until(lambda: c.lan is not None and c.lan.tracker.announces > 0, 10)
        assert c.peers.trackers() == (url,)
        for url_asked in office.tracker.urls:  # the tracker learns no name, key or fingerprint
            assert KEY.fingerprint not in url_asked and KEY.text not in url_asked
            assert a.id not in url_asked and "acme" not in url_asked
        hashes = {q["info_hash"] for q in office.tracker.asked}
        assert hashes == {tracker.rendezvous(KEY).decode("latin-1")}
        assert {q["ip"] for q in office.tracker.asked} == {x.interfaces[0] for x in (a, b, c)}
        status = a.status()["tracker"]
        assert status["announces"] >= 1 and status["trackers"][0]["url"] == url

    run_office(tmp_path, body)


def test_own_trackers_win_over_learned_ones(tmp_path: Path) -> None:
    async def body(office: Office) -> None:
        a = await office.start({"trackers": ["http://10.0.99.1:6969/announce"]})
        b = await office.start({"peers": [addr(a)], "trackers": ["http://10.0.99.2:6969/announce"]})
        await meshed([a, b], seconds=20)
        await trio.sleep(1)
        assert b.peers.trackers() == ("http://10.0.99.2:6969/announce",)
        assert a.peers.trackers() == ("http://10.0.99.1:6969/announce",)

    run_office(tmp_path, body)


def test_an_agent_that_connects_from_a_failed_address_again_is_tried_there_soon() -> None:
    """A laptop's first connection from its new address can come before it listens there:
    the hello back fails. Its next connection from there (it listens now) is worth a hello
    after INBOUND_HOLD, though an announcement of it still waits HINT_HOLD."""
    from p2pmodel.core.peers import HINT_HOLD, INBOUND_HOLD

    table = PeerTable("me" * 4 + "00" * 4)
    where = PeerAddr("10.0.2.202", 7420)
    assert table.seen("aa" * 8, [where], 0.0, "inbound")
    assert table.due_probes(0.0) == [("aa" * 8, where)]
    table.unreachable("aa" * 8, where, 0.5)
    assert not table.seen("aa" * 8, [where], 0.5 + INBOUND_HOLD / 2, "inbound")
    assert not table.seen("aa" * 8, [where], 0.5 + INBOUND_HOLD, "mdns")
    assert table.seen("aa" * 8, [where], 0.5 + INBOUND_HOLD, "inbound")
    assert INBOUND_HOLD < HINT_HOLD
