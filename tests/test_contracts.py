"""One contract, two implementations: the in-memory fakes the simulated office runs on behave
like the real adapters. Each check runs against both: the peer link over TCP on loopback and
over ``MemoryTransport``; libtorrent's swarm (inside the test namespace only: ``lan``) and
``FakeSwarm``; zeroconf discovery on 127.0.0.1 (``lan`` too) and ``MemoryMdns``; the test
mirror (``testing.mirror``) over loopback with a real httpx client and ``MemoryMirror``."""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from p2pmodel.adapters.discovery import DiscoveryEvent, PeerGone, PeerSeen
from p2pmodel.adapters.hashing import hash_blob, piece_hashes
from p2pmodel.adapters.store import Store
from p2pmodel.adapters.tls import OfficeTls
from p2pmodel.adapters.transport import TcpTransport, Transport
from p2pmodel.core.hfapi import git_blob_id, lfs_pointer
from p2pmodel.core.officekey import OfficeKey
from p2pmodel.core.peers import PeerAddr
from p2pmodel.core.torrents import info_bytes, piece_size, unit_info, unit_pieces, with_cert
from p2pmodel.core.wire import (
    PROTOCOL_VERSION,
    Ack,
    Claim,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
)
from p2pmodel.services.link import PeerLink, RpcError
from p2pmodel.testing.fakes import MemoryMdns, MemoryMirror, MemoryNetwork, SwarmNet
from p2pmodel.testing.mirror import Faults, Mirror, Stats
from p2pmodel.testing.models import Repo, RepoFile, make_model

MiB = 1024 * 1024

# -- the peer link over each transport -----------------------------------------------------------


@pytest.fixture(params=["memory", "tcp"])
def transports(request: pytest.FixtureRequest) -> Callable[[], Transport]:
    if request.param == "tcp":
        return TcpTransport
    net = MemoryNetwork()
    return net.transport


KEY = OfficeKey(bytes(range(32)))


@pytest.fixture(params=["open", "keyed"])
def key(request: pytest.FixtureRequest) -> OfficeKey | None:
    """Every link check runs in an open office and in one with a key (mutual TLS)."""
    return KEY if request.param == "keyed" else None


class Node:
    """One agent's link with a directory of peers' addresses and a log of what it served."""

    def __init__(self, agent: str, transport: Transport, key: OfficeKey | None = None) -> None:
        self.agent = agent
        self.directory: dict[str, list[PeerAddr]] = {}
        self.served: list[Message] = []
        self.heard: list[str] = []
        self.answer: Callable[[Message], Message] = lambda m: (
            Pong() if isinstance(m, Ping) else Ack()
        )
        self.port = 0
        self.link = PeerLink(
            transport,
            lambda: Hello(self.agent, PROTOCOL_VERSION, 1, self.port),
            self._handle,
            lambda a: self.directory.get(a, []),
            self.heard.append,
            connect_timeout=2,
            request_timeout=2,
            send_timeout=2,
            tls=OfficeTls(key, agent) if key is not None else None,
        )

    async def _handle(self, msg: Message, peer: Hello) -> Message:
        self.served.append(msg)
        return self.answer(msg)


@pytest.fixture
async def pair(
    nursery: trio.Nursery, transports: Callable[[], Transport], key: OfficeKey | None
) -> AsyncIterator[tuple[Node, Node]]:
    a, b = Node("aaaaaaaa", transports(), key), Node("bbbbbbbb", transports(), key)
    for node in (a, b):
        await nursery.start(node.link.run)
        node.port = await node.link.listen("127.0.0.1", 0)
    a.directory["bbbbbbbb"] = [PeerAddr("127.0.0.1", b.port)]
    b.directory["aaaaaaaa"] = [PeerAddr("127.0.0.1", a.port)]
    yield a, b


async def test_a_request_gets_its_answer_and_the_peer_is_heard(pair):
    """A request reaches the peer's handler with our hello, its answer comes back, and the
    exchange counts as hearing from the peer."""
    a, b = pair
    assert isinstance(await a.link.request("bbbbbbbb", Ping()), Pong)
    assert b.served == [Ping()]
    assert a.heard == ["bbbbbbbb"]
    assert isinstance(await a.link.request("bbbbbbbb", Ping()), Pong)
    assert a.link.stats.connections_opened == 1  # the second rode the pooled connection


async def test_an_unreachable_peer_is_an_rpc_error(pair):
    """Nobody listening, or no address at all: ``RpcError``, and nothing is heard."""
    a, _ = pair
    a.directory["cccccccc"] = [PeerAddr("127.0.0.1", 1)]
    with pytest.raises(RpcError):
        await a.link.request("cccccccc", Ping())
    with pytest.raises(RpcError):
        await a.link.request("dddddddd", Ping())
    assert a.heard == []


async def test_addresses_are_tried_in_turn_and_the_working_one_first_next_time(pair):
    """A dead first address costs one failed connect, once: the next request starts with the
    address that worked."""
    a, b = pair
    a.directory["bbbbbbbb"] = [PeerAddr("127.0.0.1", 1), PeerAddr("127.0.0.1", b.port)]
    assert isinstance(await a.link.request("bbbbbbbb", Ping()), Pong)
    failures = a.link.stats.connect_failures
    a.link.forget("bbbbbbbb")  # no pooled connection: dial again
    a.directory["bbbbbbbb"] = [PeerAddr("127.0.0.1", 1), PeerAddr("127.0.0.1", b.port)]
    assert isinstance(await a.link.request("bbbbbbbb", Ping()), Pong)
    assert a.link.stats.connect_failures == failures


async def test_someone_else_at_the_address_is_not_the_peer(pair):
    """An address now answered by another agent (reused by DHCP) does not pass for the peer."""
    a, b = pair
    a.directory["cccccccc"] = [PeerAddr("127.0.0.1", b.port)]
    with pytest.raises(RpcError, match="bbbbbbbb"):
        await a.link.request("cccccccc", Ping())


async def test_an_error_answer_is_an_rpc_error_and_the_link_goes_on(pair):
    """A peer that answers ``Error`` fails that request only."""
    a, b = pair
    b.answer = lambda m: Error("no") if isinstance(m, Claim) else Pong()
    with pytest.raises(RpcError, match="no"):
        await a.link.request("bbbbbbbb", Claim("sha256:" + "0" * 64, 0, 0, 1, 1))
    assert isinstance(await a.link.request("bbbbbbbb", Ping()), Pong)


async def test_a_handler_that_fails_drops_only_that_connection(pair):
    """A bug while answering one request closes that connection; the next request works."""
    a, b = pair

    def boom(m: Message) -> Message:
        if isinstance(m, Claim):
            raise RuntimeError("bug")
        return Pong()

    b.answer = boom
    with pytest.raises(RpcError):
        await a.link.request("bbbbbbbb", Claim("sha256:" + "0" * 64, 0, 0, 1, 1))
    assert isinstance(await a.link.request("bbbbbbbb", Ping()), Pong)


async def test_outbox_delivers_in_order_and_says_when_all_answered(pair):
    """Messages sent to a peer arrive in the order they were sent; a broadcast's delivery is
    set once every peer answered, also for a peer that cannot be reached."""
    a, b = pair
    a.directory["cccccccc"] = [PeerAddr("127.0.0.1", 1)]
    claims = [Claim("sha256:" + "1" * 64, i, i, i + 1, 1000) for i in range(50)]
    deliveries = [a.link.broadcast(["bbbbbbbb", "cccccccc"], c) for c in claims]
    with trio.fail_after(10):
        for d in deliveries:
            await d.event.wait()
    assert b.served == claims
    assert a.link.stats.messages_sent == 50
    assert a.link.stats.messages_dropped == 50  # every one to the unreachable peer


async def test_a_pooled_connection_the_peer_closed_is_replaced(nursery, transports, key):
    """The peer restarted (its side of every connection gone): the next request dials again,
    once, and succeeds."""
    a = Node("aaaaaaaa", transports(), key)
    await nursery.start(a.link.run)
    b = Node("bbbbbbbb", transports(), key)
    async with trio.open_nursery() as first_life:
        await first_life.start(b.link.run)
        port = await b.link.listen("127.0.0.1", 0)
        a.directory["bbbbbbbb"] = [PeerAddr("127.0.0.1", port)]
        assert isinstance(await a.link.request("bbbbbbbb", Ping()), Pong)
        first_life.cancel_scope.cancel()
    again = Node("bbbbbbbb", transports(), key)
    await nursery.start(again.link.run)
    await again.link.listen("127.0.0.1", port)
    assert isinstance(await a.link.request("bbbbbbbb", Ping()), Pong)
    assert a.link.stats.connections_opened == 2
    assert a.link.stats.request_failures == 0


# -- the swarm: libtorrent and the fake ------------------------------------------------------------


def put_verified(store: Store, data: bytes) -> tuple[str, bytes]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = store.put_blob_bytes(digest, data)
    _, pieces = hash_blob(path, "sha256", len(data), piece_size(len(data)))
    info = info_bytes(digest, len(data), pieces)
    store.save_torrent_info(digest, info)
    return digest, info


@pytest.fixture(
    params=[
        "fake",
        pytest.param("libtorrent", marks=pytest.mark.lan),
        pytest.param("libtorrent-tls", marks=pytest.mark.lan),
    ]
)
def swarm_kind(request: pytest.FixtureRequest, key: OfficeKey | None) -> Callable[[Store], Any]:
    """A swarm per store, open or (with ``key``) of the office: tagged torrents over protocol
    encryption, or SSL torrents (``libtorrent-tls``: ``swarm_tls``); the IP filter."""
    names = iter(["aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd"])
    swarm_tls = request.param == "libtorrent-tls"
    if swarm_tls and key is None:
        pytest.skip("an open office has no swarm_tls")

    def tls(office: OfficeKey | str | None) -> OfficeTls | None:
        k = key if office == "ours" else office
        return OfficeTls(k, next(names), swarm_tls) if isinstance(k, OfficeKey) else None

    if request.param == "fake":
        net = SwarmNet(lan_rate=None)
        return lambda store, office="ours": net.factory()(store, ["127.0.0.1"], 0, tls(office))
    from p2pmodel.adapters.swarm import Swarm

    return lambda store, office="ours": Swarm(store, ["127.0.0.1"], 0, tls(office))


async def started(nursery: trio.Nursery, swarm: Any) -> Any:
    await nursery.start(swarm.run)
    swarm.allow({"127.0.0.1"})  # with a key, the peers' addresses get through the IP filter
    return swarm


async def test_swarm_blob_from_a_seeder_arrives_exact_and_is_seeded(
    tmp_path: Path, nursery, swarm_kind
):
    """A fetched blob lands in the store, exact and read-only, and the fetcher seeds it."""
    data = os.urandom(3 * MiB + 7)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    digest, info = put_verified(a, data)
    sa, sb = await started(nursery, swarm_kind(a)), await started(nursery, swarm_kind(b))
    assert sa.seed(digest, len(data)) and sa.seeding(digest)
    info = with_cert(info, sa.ca)
    assert sa.info(digest) == info
    seen: list[int] = []
    with trio.fail_after(30):
        got = await sb.fetch(
            digest, len(data), info, [("127.0.0.1", sa.port)], on_progress=seen.append
        )
    assert got.ok, got.why
    assert b.blob_path(digest).read_bytes() == data
    assert not os.access(b.blob_path(digest), os.W_OK) or os.geteuid() == 0
    assert sb.seeding(digest) and sum(seen) == len(data)


async def test_swarm_refuses_info_of_the_wrong_shape(tmp_path: Path, nursery, swarm_kind):
    """Info that is not our rule's torrent of the blob is refused before anything moves."""
    data = os.urandom(MiB)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    digest, info = put_verified(a, data)
    sa, sb = await started(nursery, swarm_kind(a)), await started(nursery, swarm_kind(b))
    sa.seed(digest, len(data))
    bad = with_cert(info, sa.ca).replace(b"7:privatei1e", b"7:privatei0e")
    got = await sb.fetch(digest, len(data), bad, [("127.0.0.1", sa.port)])
    assert not got.ok and "shape" in got.why
    assert not b.blob_path(digest).exists()


async def test_swarm_with_no_seeder_gives_up_after_the_stall_timeout(
    tmp_path: Path, nursery, swarm_kind
):
    """Nobody serves it: the fetch ends, not ok, after the stall timeout."""
    data = os.urandom(MiB)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    digest, info = put_verified(a, data)
    sb = await started(nursery, swarm_kind(b))
    info = with_cert(info, sb.ca)
    with trio.fail_after(20):
        got = await sb.fetch(digest, len(data), info, [("127.0.0.1", 1)], stall_timeout=1.0)
    assert not got.ok
    assert not b.blob_path(digest).exists()


def unit_setup(
    tmp_path: Path, data: bytes, start: int, stop: int, ca: bytes | None
) -> tuple[str, bytes, range]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    piece = 256 * 1024
    src = tmp_path / "src.part"
    src.write_bytes(data)
    hashes = piece_hashes(src, start, stop, piece)
    info = unit_info(digest, len(data), 1, start, stop, piece, hashes, ca)
    return digest, info, unit_pieces(start, stop, piece)


async def test_swarm_unit_moves_only_its_bytes(tmp_path: Path, nursery, swarm_kind):
    """A unit torrent over a partial file carries exactly its range: the receiver's other
    bytes stay as they were, and it then offers the unit itself."""
    size, start, stop = 2 * MiB, 512 * 1024, MiB
    data = os.urandom(size)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    sa, sb = await started(nursery, swarm_kind(a)), await started(nursery, swarm_kind(b))
    digest, info, span = unit_setup(tmp_path, data, start, stop, sa.ca)
    sa.add_unit(digest, size, 1, span, info, tmp_path / "src.part", have=True)
    assert sa.unit_info(digest, 1) == info
    dest = tmp_path / "dest.part"
    dest.write_bytes(b"\0" * size)
    sb.add_unit(digest, size, 1, span, info, dest, have=False)
    assert sb.unit_info(digest, 1) is None
    with trio.fail_after(30):
        got = await sb.fetch_unit(digest, 1, lambda: [("127.0.0.1", sa.port)])
    assert got.ok, got.why
    out = dest.read_bytes()
    assert out[start:stop] == data[start:stop]
    assert out[:start] == b"\0" * start and out[stop:] == b"\0" * (size - stop)
    assert sb.unit_info(digest, 1) == info


async def test_swarm_unit_with_bad_bytes_at_the_source_is_not_taken(
    tmp_path: Path, nursery, swarm_kind
):
    """A holder whose bytes no longer match the unit's piece hashes delivers nothing: the
    fetch fails and the receiver does not offer the unit."""
    size, start, stop = MiB, 0, 512 * 1024
    data = os.urandom(size)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    sa, sb = await started(nursery, swarm_kind(a)), await started(nursery, swarm_kind(b))
    digest, info, span = unit_setup(tmp_path, data, start, stop, sa.ca)
    rotten = bytearray(data)
    rotten[1000] ^= 0xFF
    (tmp_path / "src.part").write_bytes(bytes(rotten))
    sa.add_unit(digest, size, 1, span, info, tmp_path / "src.part", have=True)
    dest = tmp_path / "dest.part"
    dest.write_bytes(b"\0" * size)
    sb.add_unit(digest, size, 1, span, info, dest, have=False)
    with trio.fail_after(30):
        got = await sb.fetch_unit(digest, 1, lambda: [("127.0.0.1", sa.port)], stall_timeout=2.0)
    assert not got.ok
    assert sb.unit_info(digest, 1) is None


async def test_swarm_gives_outsiders_nothing_with_a_key(tmp_path: Path, nursery, swarm_kind, key):
    """With a key, a swarm of another office and an open one that knows the blob's open info
    dict (anyone can compute it from the bytes) get not one byte of a seeded blob; in an open
    office the open one gets all of it, as before keys."""
    data = os.urandom(MiB)
    a, b, c = (Store(tmp_path / n) for n in "abc")
    digest, info = put_verified(a, data)
    sa = await started(nursery, swarm_kind(a))
    assert sa.seed(digest, len(data))
    other = await started(nursery, swarm_kind(b, OfficeKey(bytes(32))))
    opened = await started(nursery, swarm_kind(c, None))
    peers = [("127.0.0.1", sa.port)]
    with trio.fail_after(30):
        theirs = await other.fetch(
            digest, len(data), with_cert(info, other.ca), peers, stall_timeout=2.0
        )
        plain = await opened.fetch(digest, len(data), info, peers, stall_timeout=2.0)
    assert not theirs.ok and theirs.downloaded == 0
    assert not b.blob_path(digest).exists()
    if key is None:
        assert plain.ok and c.blob_path(digest).read_bytes() == data
    else:
        assert not plain.ok and plain.downloaded == 0
        assert not c.blob_path(digest).exists()


async def test_swarm_ip_filter_lets_only_allowed_peers_in(tmp_path: Path, nursery, swarm_kind, key):
    """With a key, even a swarm of the same office gets nothing from a seeder whose filter
    does not list its address, and all of it once it does; an open office filters nothing."""
    data = os.urandom(MiB)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    digest, info = put_verified(a, data)
    sa = await started(nursery, swarm_kind(a))
    sb = await started(nursery, swarm_kind(b))
    assert sa.seed(digest, len(data))
    sa.allow(set())  # nobody is verified yet
    peers = [("127.0.0.1", sa.port)]
    keyed = with_cert(info, sa.ca)
    with trio.fail_after(30):
        first = await sb.fetch(digest, len(data), keyed, peers, stall_timeout=2.0)
    if key is None:
        assert first.ok
        return
    assert not first.ok and first.downloaded == 0
    sa.allow({"127.0.0.1"})
    with trio.fail_after(30):
        second = await sb.fetch(digest, len(data), keyed, peers, stall_timeout=10.0)
    assert second.ok, second.why
    assert b.blob_path(digest).read_bytes() == data


# -- discovery: zeroconf and MemoryMdns ------------------------------------------------------------

OFFICE = "0123456789abcdef"  # a key's fingerprint, as the TXT record carries it


@pytest.fixture(params=["memory", pytest.param("zeroconf", marks=pytest.mark.lan)])
def announcers(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Makes announcers of one kind, taking ``Discovery``'s arguments: ``MemoryMdns`` (one bus
    per test) or real zeroconf on 127.0.0.1 (inside the test namespace only: ``lan``)."""
    if request.param == "memory":
        return MemoryMdns().factory()
    from p2pmodel.adapters.discovery import Discovery

    return Discovery


class Heard:
    """What one announcer reported, in order, with an event to wait on instead of sleeping."""

    def __init__(self) -> None:
        self.events: list[DiscoveryEvent] = []
        self._changed = trio.Event()

    def __call__(self, event: DiscoveryEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def about(self, agent: str) -> list[DiscoveryEvent]:
        return [e for e in self.events if e.agent == agent]

    def last(self, agent: str) -> DiscoveryEvent | None:
        events = self.about(agent)
        return events[-1] if events else None

    async def wait_until(self, cond: Callable[[], object], seconds: float = 10) -> None:
        """Until ``cond()`` holds, woken by each event (bounded by ``seconds``)."""
        with trio.fail_after(seconds):
            while not cond():
                await self._changed.wait()


class Announced:
    """One running announcer: what it heard, and a scope that stops it (with a goodbye)."""

    def __init__(self, agent: str, heard: Heard, scope: trio.CancelScope) -> None:
        self.agent, self.heard, self.scope = agent, heard, scope


async def announce(
    nursery: trio.Nursery,
    factory: Callable[..., Any],
    agent: str,
    interfaces: tuple[str, ...] = ("127.0.0.1",),
    *,
    rpc_port: int = 7001,
    torrent_port: int = 6881,
    office: str = "",
) -> Announced:
    heard = Heard()
    announcer = factory(
        agent=agent,
        interfaces=list(interfaces),
        rpc_port=rpc_port,
        torrent_port=torrent_port,
        proto=PROTOCOL_VERSION,
        office=office,
        on_event=heard,
    )
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await announcer.run(task_status=task_status)

    with trio.fail_after(10):
        await nursery.start(run)
    return Announced(agent, heard, scope)


def agent_ids() -> tuple[str, str]:
    """Fresh ids per test: no cache anywhere can hold an earlier test's records of them."""
    tag = secrets.token_hex(3)
    return f"ct-a-{tag}", f"ct-b-{tag}"


async def test_mdns_agents_see_each_others_announcement(nursery, announcers):
    """An agent already announcing and one joining later each see the other with the TXT
    fields it announced (id, addresses, ports, protocol, office fingerprint), and never
    themselves."""
    a_id, b_id = agent_ids()
    a = await announce(nursery, announcers, a_id, rpc_port=7001, torrent_port=6881)
    b = await announce(nursery, announcers, b_id, rpc_port=7002, torrent_port=6882, office=OFFICE)
    await a.heard.wait_until(lambda: a.heard.about(b_id))
    await b.heard.wait_until(lambda: b.heard.about(a_id))
    assert a.heard.about(b_id)[0] == PeerSeen(
        b_id, ("127.0.0.1",), 7002, 6882, PROTOCOL_VERSION, OFFICE
    )
    assert b.heard.about(a_id)[0] == PeerSeen(a_id, ("127.0.0.1",), 7001, 6881, PROTOCOL_VERSION)
    assert not a.heard.about(a_id) and not b.heard.about(b_id)


async def test_mdns_a_graceful_stop_is_seen_as_removal(nursery, announcers):
    """An announcer that stops says goodbye: its peer reports it gone, and not seen again."""
    a_id, b_id = agent_ids()
    a = await announce(nursery, announcers, a_id)
    b = await announce(nursery, announcers, b_id, rpc_port=7002)
    await a.heard.wait_until(lambda: a.heard.about(b_id))
    b.scope.cancel()
    await a.heard.wait_until(lambda: isinstance(a.heard.last(b_id), PeerGone))
    assert a.heard.about(b_id)[-1] == PeerGone(b_id)


async def test_mdns_announcing_again_on_new_interfaces_is_seen(nursery, announcers):
    """An agent whose addresses changed stops and announces again on the new set (as
    ``PeerService.set_interfaces`` does): its peer's latest word on it has the new addresses
    and the same ports."""
    a_id, b_id = agent_ids()
    a = await announce(nursery, announcers, a_id)
    b = await announce(nursery, announcers, b_id, rpc_port=7002, torrent_port=6882)
    await a.heard.wait_until(lambda: a.heard.about(b_id))
    b.scope.cancel()
    new = ("127.0.0.2", "127.0.0.3")
    await announce(nursery, announcers, b_id, new, rpc_port=7002, torrent_port=6882)

    def moved() -> bool:
        last = a.heard.last(b_id)
        return isinstance(last, PeerSeen) and set(last.addrs) == set(new)

    await a.heard.wait_until(moved)
    last = a.heard.last(b_id)
    assert isinstance(last, PeerSeen) and (last.rpc_port, last.torrent_port) == (7002, 6882)


@pytest.mark.parametrize(
    "bad",
    [
        {"agent": "has.dot"},
        {"agent": ""},
        {"interfaces": []},
        {"interfaces": ["::1"]},
        {"interfaces": ["not-an-ip"]},
        {"rpc_port": 0},
        {"torrent_port": 65536},
        {"proto": -1},
        {"office": "not-a-fingerprint"},
    ],
)
def test_mdns_bad_announcements_are_refused_before_anything_opens(announcers, bad):
    """Arguments no peer could parse back are refused at once, by the fake as by zeroconf."""
    args: dict[str, Any] = {
        "agent": "ct-a",
        "interfaces": ["127.0.0.1"],
        "rpc_port": 7001,
        "torrent_port": 6881,
        "proto": PROTOCOL_VERSION,
        "office": "",
        "on_event": Heard(),
    }
    with pytest.raises(ValueError):
        announcers(**(args | bad))


# -- the mirror: the real test mirror over loopback and MemoryMirror -------------------------------

SHARD = "transformer/diffusion_pytorch_model-00001-of-00002.safetensors"


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """Two LFS shards of 1.5 MiB (two corrupted bytes each) plus small git files."""
    root = tmp_path_factory.mktemp("contract-repo")
    return make_model(root, "acme/contract", shards=2, shard_size=3 * MiB // 2, seed=5)


@dataclass
class HubUnderTest:
    """One mirror, whichever kind: its URL, faults and counters, and an httpx client to it."""

    hub_url: str
    faults: Faults
    stats: Stats
    client: httpx.AsyncClient

    def resolve(self, repo: Repo, path: str, rev: str | None = None) -> str:
        return f"{self.hub_url}/{repo.repo_id}/resolve/{rev or repo.commit}/{path}"

    def api(self, repo: Repo, tail: str) -> str:
        return f"{self.hub_url}/api/models/{repo.repo_id}/{tail}"


@pytest.fixture(params=["memory", "real"])
async def hub(
    request: pytest.FixtureRequest, nursery: trio.Nursery, hub_repo: Repo
) -> AsyncIterator[Callable[..., Any]]:
    """Starts a mirror of ``hub_repo`` with the given faults: ``MemoryMirror`` behind httpx's
    ``MockTransport``, or ``testing.mirror.Mirror`` on 127.0.0.1 with a real httpx client.
    Clients follow redirects, as the get flow's do, and have no timeouts: the tests that pace
    run on a fake clock, which jumps."""
    clients: list[httpx.AsyncClient] = []

    async def start(faults: Faults | None = None) -> HubUnderTest:
        faults = faults or Faults()
        if request.param == "memory":
            memory = MemoryMirror([hub_repo], faults)
            client = memory.client()
            client.timeout = httpx.Timeout(None)
            hut = HubUnderTest(memory.hub_url, memory.faults, memory.mirror.stats, client)
        else:
            real: Mirror = await nursery.start(Mirror([hub_repo], faults=faults).run)
            client = httpx.AsyncClient(follow_redirects=True, timeout=None)
            hut = HubUnderTest(real.hub_url, real.faults, real.stats, client)
        clients.append(client)
        return hut

    yield start
    for client in clients:
        await client.aclose()


def data_of(repo: Repo, path: str) -> bytes:
    f = repo.file(path)
    assert f is not None
    return f.data_path.read_bytes()


def file_of(repo: Repo, path: str) -> RepoFile:
    f = repo.file(path)
    assert f is not None
    return f


async def test_mirror_revision_names_the_commit_and_lists_siblings(hub, hub_repo):
    """``/api/models/{repo}/revision/{rev}?blobs=true`` by branch or commit answers the
    commit and every file with size, blob id and (LFS only) sha256."""
    m = await hub()
    for rev in (hub_repo.branch, hub_repo.commit):
        r = await m.client.get(m.api(hub_repo, f"revision/{rev}?blobs=true"))
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        info = r.json()
        assert (info["id"], info["sha"]) == (hub_repo.repo_id, hub_repo.commit)
        siblings = {s["rfilename"]: s for s in info["siblings"]}
        assert set(siblings) == {f.path for f in hub_repo.files}
        for f in hub_repo.files:
            blob = git_blob_id(lfs_pointer(f.sha256, f.size)) if f.lfs else f.gitsha1
            assert (siblings[f.path]["size"], siblings[f.path]["blobId"]) == (f.size, blob)
            assert siblings[f.path].get("lfs", {}).get("sha256") == (f.sha256 if f.lfs else None)


async def test_mirror_tree_lists_files_and_folders(hub, hub_repo):
    """The recursive tree at the commit lists every file (size; LFS ones with their sha256)
    and every folder with an oid, in one page."""
    m = await hub()
    r = await m.client.get(m.api(hub_repo, f"tree/{hub_repo.commit}?recursive=true&expand=false"))
    assert r.status_code == 200 and "link" not in r.headers
    entries = {e["path"]: e for e in r.json()}
    for f in hub_repo.files:
        e = entries[f.path]
        assert (e["type"], e["size"]) == ("file", f.size)
        assert e.get("lfs", {}).get("oid") == (f.sha256 if f.lfs else None)
        if not f.lfs:
            assert e["oid"] == f.gitsha1
    folders = [e for e in entries.values() if e["type"] == "directory"]
    parents = {f.path.rsplit("/", 1)[0] for f in hub_repo.files if "/" in f.path}
    assert {e["path"] for e in folders} == parents
    assert all(len(e["oid"]) == 40 for e in folders)


async def test_mirror_resolve_of_a_small_file_is_served_with_hub_headers(hub, hub_repo):
    """A git file is served by the hub itself: its bytes, ETag the git blob id, the commit,
    its length; HEAD has the same headers and no body."""
    m = await hub()
    readme = file_of(hub_repo, "README.md")
    url = m.resolve(hub_repo, "README.md", hub_repo.branch)
    for method in ("GET", "HEAD"):
        r = await m.client.request(method, url)
        assert r.status_code == 200
        assert r.headers["etag"] == f'"{readme.gitsha1}"'
        assert r.headers["x-repo-commit"] == hub_repo.commit
        assert r.headers["content-length"] == str(readme.size)
        assert r.headers["accept-ranges"] == "bytes"
        assert r.content == (readme.data_path.read_bytes() if method == "GET" else b"")


async def test_mirror_resolve_of_an_lfs_file_redirects_with_linked_headers(hub, hub_repo):
    """An LFS file answers 302 with X-Linked-Size/X-Linked-Etag/ETag/X-Repo-Commit to a CDN
    URL; followed, the CDN gives its exact bytes with the sha256 as ETag."""
    m = await hub()
    shard = file_of(hub_repo, SHARD)
    url = m.resolve(hub_repo, SHARD)
    for method in ("HEAD", "GET"):
        r = await m.client.request(method, url, follow_redirects=False)
        assert r.status_code == 302 and r.content == b""
        assert r.headers["x-linked-size"] == str(shard.size)
        assert r.headers["x-linked-etag"] == r.headers["etag"] == f'"{shard.sha256}"'
        assert r.headers["x-repo-commit"] == hub_repo.commit
        assert r.headers["location"].endswith(f"/lfs/{shard.sha256}")
    r = await m.client.get(url)
    assert r.status_code == 200 and r.headers["etag"] == f'"{shard.sha256}"'
    assert hashlib.sha256(r.content).hexdigest() == shard.sha256


async def test_mirror_ranges_answer_206_with_exactly_those_bytes(hub, hub_repo):
    """Byte ranges (closed, open-ended, suffix, past the end clipped) answer 206 with
    Content-Range and exactly those bytes, through the redirect and on the hub; a range
    starting past the end is 416."""
    m = await hub()
    shard = file_of(hub_repo, SHARD)
    data, size = shard.data_path.read_bytes(), shard.size
    url = m.resolve(hub_repo, SHARD)
    cases = {
        "bytes=0-0": (0, 0),
        "bytes=1000-262143": (1000, 262143),
        f"bytes={size - 10}-": (size - 10, size - 1),
        "bytes=-7": (size - 7, size - 1),
        f"bytes={size - 3}-{size + 100}": (size - 3, size - 1),
    }
    for header, (first, last) in cases.items():
        r = await m.client.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert r.headers["content-length"] == str(last - first + 1)
        assert r.content == data[first : last + 1]
    r = await m.client.get(url, headers={"Range": f"bytes={size}-"})
    assert (r.status_code, r.headers["content-range"], r.content) == (416, f"bytes */{size}", b"")
    r = await m.client.get(m.resolve(hub_repo, "README.md"), headers={"Range": "bytes=2-4"})
    assert (r.status_code, r.content) == (206, data_of(hub_repo, "README.md")[2:5])


async def test_mirror_not_found_has_the_hubs_shapes(hub, hub_repo):
    """Unknown repos, revisions and files, and files made missing, answer 404 with the Hub's
    JSON error and X-Error-Code; HEAD too, without a body."""
    m = await hub(Faults(missing={"README.md"}))
    cases = [
        (m.api(hub_repo, "revision/nope"), "RevisionNotFound", "Invalid rev id: nope"),
        (f"{m.hub_url}/api/models/acme/nope/revision/main", "RepoNotFound", None),
        (m.resolve(hub_repo, "nope.txt"), "EntryNotFound", "Entry not found"),
        (m.resolve(hub_repo, "README.md"), "EntryNotFound", "Entry not found"),
        (m.resolve(hub_repo, "config.json", "nope"), "RevisionNotFound", None),
        (f"{m.hub_url}/lfs/{'0' * 64}", "EntryNotFound", None),
    ]
    for url, code, message in cases:
        r = await m.client.get(url)
        assert (r.status_code, r.headers["x-error-code"]) == (404, code), url
        assert r.headers["content-type"] == "application/json"
        assert message is None or r.json() == {"error": message}
        head = await m.client.head(url)
        assert (head.status_code, head.headers["x-error-code"], head.content) == (404, code, b"")


async def test_mirror_counts_body_bytes_and_requests(hub, hub_repo):
    """Counters add up every body byte sent (listings, files, ranges; not HEADs, not the
    control endpoints), per path, and the requests; ``/_stats`` reports them, reset zeroes."""
    m = await hub()
    shard = file_of(hub_repo, SHARD)
    listing = await m.client.get(m.api(hub_repo, "revision/main"))
    await m.client.head(m.resolve(hub_repo, SHARD), follow_redirects=False)
    whole = await m.client.get(m.resolve(hub_repo, SHARD))
    part = await m.client.get(m.resolve(hub_repo, "README.md"), headers={"Range": "bytes=0-9"})
    sent = len(listing.content) + len(whole.content) + len(part.content)
    assert m.stats.bytes_served == sent
    assert m.stats.by_path[f"/lfs/{shard.sha256}"] == shard.size
    assert m.stats.by_path[f"/{hub_repo.repo_id}/resolve/{hub_repo.commit}/README.md"] == 10
    assert m.stats.requests == 5  # the listing, HEAD, GET and its redirect, the range
    stats = (await m.client.get(f"{m.hub_url}/_stats")).json()
    assert (stats["bytes_served"], stats["requests"]) == (sent, 5)
    await m.client.post(f"{m.hub_url}/_stats/reset")
    assert (m.stats.bytes_served, m.stats.requests, m.stats.by_path) == (0, 0, {})


async def test_mirror_corrupt_fault_flips_the_same_bytes(hub, hub_repo):
    """``corrupt`` flips the byte at 12345 of every MiB, in whole files and in ranges alike."""
    m = await hub(Faults(corrupt=True))
    good = data_of(hub_repo, SHARD)
    bad = (await m.client.get(m.resolve(hub_repo, SHARD))).content
    assert [i for i in range(len(good)) if good[i] != bad[i]] == [12345, MiB + 12345]
    r = await m.client.get(m.resolve(hub_repo, SHARD), headers={"Range": f"bytes={MiB}-"})
    assert r.content[12345] == good[MiB + 12345] ^ 0xFF and r.content[:12345] == good[MiB:][:12345]


async def test_mirror_fail_rate_answers_retry_after_on_files_only(hub, hub_repo):
    """``fail_rate=1`` answers file requests with ``status_on_fail`` and Retry-After while
    listings still work, until ``fail_api`` lets it hit those too."""
    m = await hub(Faults(fail_rate=1.0, retry_after=2.0))
    r = await m.client.get(m.resolve(hub_repo, SHARD))
    assert (r.status_code, r.headers["retry-after"]) == (503, "2")
    assert (await m.client.get(m.api(hub_repo, "revision/main"))).status_code == 200
    m.faults.fail_api, m.faults.status_on_fail = True, 429
    r = await m.client.get(m.api(hub_repo, "revision/main"))
    assert (r.status_code, r.headers["retry-after"]) == (429, "2")


async def test_mirror_truncate_fault_breaks_the_body_at_the_same_byte(hub, hub_repo):
    """``truncate_rate=1`` announces the whole length, sends a seeded prefix of the exact
    bytes, then breaks the connection: httpx says ``RemoteProtocolError``, and the counters
    hold only what was sent."""
    m = await hub(Faults(truncate_rate=1.0, seed=3))
    data = data_of(hub_repo, SHARD)
    got = bytearray()
    with pytest.raises(httpx.RemoteProtocolError):
        async with m.client.stream("GET", m.resolve(hub_repo, SHARD)) as r:
            assert r.headers["content-length"] == str(len(data))
            async for chunk in r.aiter_raw():
                got += chunk
    assert 0 < len(got) < len(data) and got == data[: len(got)]
    assert len(got) == 855998  # where seed 3 cuts it, the same in both
    assert m.stats.by_path[f"/lfs/{file_of(hub_repo, SHARD).sha256}"] == len(got)


async def test_mirror_down_fault_hangs_up_until_lifted(hub, hub_repo):
    """A ``down`` mirror takes the request and closes without answering (httpx:
    ``RemoteProtocolError``, not a refused connection); lifted, it answers again."""
    m = await hub(Faults(down=True))
    with pytest.raises(httpx.RemoteProtocolError):
        await m.client.get(m.resolve(hub_repo, "README.md"))
    assert m.stats.requests == 0
    m.faults.down = False
    assert (await m.client.get(m.resolve(hub_repo, "README.md"))).status_code == 200


async def received_over_time(m: HubUnderTest, url: str) -> tuple[float, list[tuple[float, int]]]:
    """Stream ``url``; the start time and (time, bytes so far) at each chunk."""
    t0 = trio.current_time()
    points: list[tuple[float, int]] = []
    total = 0
    async with m.client.stream("GET", url) as r:
        async for chunk in r.aiter_raw():
            total += len(chunk)
            points.append((trio.current_time() - t0, total))
    return t0, points


async def test_mirror_per_connection_rate_trickles(hub, hub_repo, autojump_clock):
    """At ``per_conn_rate`` a download takes its size over the rate, and trickles: bytes
    arrive every twentieth of a second or so, half of them by half the time (not a pause of
    seconds, then a burst: a reader's stall timer would see a dead mirror)."""
    rate = 256 * 1024
    m = await hub(Faults(per_conn_rate=rate))
    url = m.resolve(hub_repo, SHARD)
    size = file_of(hub_repo, SHARD).size
    _, points = await received_over_time(m, url)
    took = points[-1][0]
    assert points[-1][1] == size
    assert size / rate - 0.1 <= took <= size / rate + 0.1
    by_half = max((n for t, n in points if t <= took / 2), default=0)
    assert 0.4 * size <= by_half <= 0.6 * size
    times = [0.0, *(t for t, _ in points)]
    assert max(b - a for a, b in itertools.pairwise(times)) <= 0.1


async def test_mirror_total_rate_is_shared_by_connections(hub, hub_repo, autojump_clock):
    """Two downloads at once through a ``total_rate`` take their sum over the rate."""
    rate = MiB
    m = await hub(Faults(total_rate=rate))
    size = file_of(hub_repo, SHARD).size
    t0 = trio.current_time()
    async with trio.open_nursery() as downloads:
        for _ in range(2):
            downloads.start_soon(m.client.get, m.resolve(hub_repo, SHARD))
    took = trio.current_time() - t0
    assert 2 * size / rate - 0.1 <= took <= 2 * size / rate + 0.1
    assert m.stats.bytes_served == 2 * size


async def test_mirror_first_byte_delay_holds_file_requests_only(hub, hub_repo, autojump_clock):
    """``first_byte_delay`` holds each file request (not listings) that long."""
    m = await hub(Faults(first_byte_delay=3.0))
    t0 = trio.current_time()
    await m.client.get(m.api(hub_repo, "revision/main"))
    assert trio.current_time() - t0 < 0.1
    t0 = trio.current_time()
    r = await m.client.get(m.resolve(hub_repo, "README.md"))
    assert r.status_code == 200 and 3.0 <= trio.current_time() - t0 < 3.1
