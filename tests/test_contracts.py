"""One contract, two implementations: the in-memory fakes the simulated office runs on behave
like the real adapters. Each check runs against both: the peer link over TCP on loopback and
over ``MemoryTransport``; libtorrent's swarm (inside the test namespace only: ``lan``) and
``FakeSwarm``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pmodel.adapters.hashing import hash_blob, piece_hashes
from p2pmodel.adapters.store import Store
from p2pmodel.adapters.tls import OfficeTls
from p2pmodel.adapters.transport import TcpTransport, Transport
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
from p2pmodel.testing.fakes import MemoryNetwork, SwarmNet

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


@pytest.fixture(params=["fake", pytest.param("libtorrent", marks=pytest.mark.lan)])
def swarm_kind(request: pytest.FixtureRequest, key: OfficeKey | None) -> Callable[[Store], Any]:
    """A swarm per store, open or (with ``key``) of the office: SSL torrents, IP filter."""
    names = iter(["aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd"])

    def tls(office: OfficeKey | str | None) -> OfficeTls | None:
        k = key if office == "ours" else office
        return OfficeTls(k, next(names)) if isinstance(k, OfficeKey) else None

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
