"""Hostile peers: a misbehaving peer of our own (``testing.hostile``), keyed with the office's
key, sends garbage, floods, holds connections open and lies, over the real protocol to real
agents on the in-memory fakes (fake clock). The agents keep serving their other peers, lose
nothing, and show the liar in ``status``."""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from p2pmodel.adapters.hashing import digest_file, hash_blob
from p2pmodel.core.config import parse_config
from p2pmodel.core.digests import algorithm
from p2pmodel.core.errors import UserError
from p2pmodel.core.officekey import OfficeKey, format_key
from p2pmodel.core.refs import parse_ref
from p2pmodel.core.sharing import units_of
from p2pmodel.core.torrents import info_bytes, piece_size, with_cert
from p2pmodel.core.wire import (
    Claim,
    Have,
    HaveQuery,
    Hello,
    Metadata,
    MetadataQuery,
    OfficeQuery,
    OfficeState,
    Ping,
    Pong,
    Resolved,
    ResolveQuery,
    UnitInfo,
    UnitQuery,
    encode,
)
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.services.get import GetRequest, GetResult
from p2pmodel.services.link import FRAME_TIMEOUT, MAX_PER_HOST
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.hostile import HostilePeer
from p2pmodel.testing.models import Repo, make_model

MiB = 1024 * 1024
TEXT = format_key(bytes(range(32)))
KEY = OfficeKey.parse(TEXT)
SEGMENT = 256 * 1024
H = struct.Struct(">I")


@dataclass
class Scene:
    repo: Repo
    office: SimLan
    victim: Agent
    good: Agent
    bad: HostilePeer

    def addr(self) -> tuple[str, int]:
        return self.victim.interfaces[0], self.victim.rpc_port

    async def get(self, agent: Agent, ref: str = "hf://acme/victim") -> GetResult:
        return await agent.gets.get(GetRequest(parse_ref(ref)))

    def exact(self, result: GetResult) -> None:
        for f in self.repo.files:
            assert (result.path / f.path).read_bytes() == f.data_path.read_bytes(), f.path


def intact(agent: Agent) -> None:
    """Every blob in the agent's store still matches its digest (nothing was lost or spoilt)."""
    blobs = list(agent.store.verified_blobs())
    assert blobs
    for digest, size in blobs:
        assert digest_file(agent.store.blob_path(digest), algorithm(digest), size) == digest


@pytest.fixture
async def scene(tmp_path: Path, clock: Any) -> AsyncIterator[Scene]:
    repo = make_model(tmp_path / "up", "acme/victim", shards=2, shard_size=MiB)
    office = SimLan(MemoryMirror([repo]), lan_rate=64 * MiB)
    raw = {
        "mirror": [{"for": "https://huggingface.co/", "use": [office.mirror.hub_url + "/"]}],
        "office_key": TEXT,
    }
    opts = AgentOptions(rpc_port=0, segment=SEGMENT, wait_for_peers=0.5)
    async with trio.open_nursery() as n:
        agents = []
        for name in ("victim", "good"):
            home = tmp_path / name
            home.mkdir()
            agent = Agent(home, parse_config(raw, {}), opts, office.outside())
            agents.append(await n.start(agent.run))
        bad = HostilePeer(office, tmp_path / "bad", KEY)
        await n.start(bad.run)
        with trio.fail_after(30):
            while len(agents[0].peers.alive_ids()) < 2 or len(agents[1].peers.alive_ids()) < 2:  # noqa: ASYNC110 (fake clock)
                await trio.sleep(0.1)
        yield Scene(repo, office, agents[0], agents[1], bad)
        n.cancel_scope.cancel()


def frame(obj: Any) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    return H.pack(len(data)) + data


async def test_garbage_frames_cost_their_own_connection_only(scene: Scene, clock: Any) -> None:
    """Oversized and truncated frames, msgpack of the wrong shape, unknown kinds, answers sent
    as requests: each closes that connection; the victim goes on serving its other peer."""
    s = scene
    await s.get(s.victim)
    deep = b"\x91" * 5000 + b"\x90"
    cases = [
        H.pack(0xFFFFFFFF) + os.urandom(64),  # a length far over the limit
        H.pack(2 * MiB) + os.urandom(1000),  # over the request limit, never completed
        H.pack(100) + b"\x93",  # truncated, then closed
        H.pack(0),  # an empty frame
        frame(["have?", 1, {"digests": 5}]),  # the wrong shape
        frame(["have?", 1, {"digests": [], "x": 1}]),  # an unknown field
        frame(["nope", 1, {}]),  # an unknown kind
        frame({1: 2}),  # not an array
        H.pack(len(deep)) + deep,  # nested deeper than msgpack allows
        encode(Pong(), 1) + encode(Hello("bad0bad0bad0", 2, 1, 1), 2),  # answers as requests
        encode(HaveQuery(tuple(f"sha256:{i:064x}" for i in range(10_000))), 1),  # the largest
    ]
    for data in cases:
        await s.bad.raw(*s.addr(), data)
    # before any hello, too
    assert await s.bad.raw(*s.addr(), H.pack(0xFFFFFFFF), hello=False) == b""
    got = await s.get(s.good)
    s.exact(got)
    assert got.from_peers == got.manifest.total_size
    assert s.victim.peers.is_alive(s.good.id)
    intact(s.victim)


async def test_a_flood_of_claims_and_requests_changes_nothing(scene: Scene, clock: Any) -> None:
    """Thousands of claims for blobs nobody wants (with endless leases) and of pings while a
    peer fetches from the victim: no lease is kept, the fetch completes from the LAN."""
    s = scene
    await s.get(s.victim)
    for i in range(3000):
        s.bad.link.send(s.victim.id, Claim(f"sha256:{i:064x}", 0, 0, 1, 2**60))

    async def pings() -> None:
        for _ in range(2000):
            assert isinstance(await s.bad.request(s.victim.id, Ping()), Pong)

    async with trio.open_nursery() as n:
        for _ in range(8):
            n.start_soon(pings)
        got = await s.get(s.good)
    s.exact(got)
    assert got.from_peers == got.manifest.total_size
    assert s.victim.sharing is not None and not s.victim.sharing.state._leases
    assert s.victim.peers.stats.served >= 16_000
    intact(s.victim)


async def test_slowloris_connections_are_bounded_and_cut_off(scene: Scene, clock: Any) -> None:
    """A peer that opens connections and never finishes a frame holds at most MAX_PER_HOST of
    them (more are closed at once), loses them after FRAME_TIMEOUT, and meanwhile the victim
    answers its other peer."""
    s = scene
    held = [await s.bad.connect(*s.addr()) for _ in range(MAX_PER_HOST)]
    for stream in held:
        await stream.send_all(H.pack(64) + b"\x93\xa5")  # a frame begun, never finished
    assert await s.bad.raw(*s.addr(), encode(Ping(), 1), hello=False) == b""
    assert s.victim.peers.link.stats.refused >= 1
    assert isinstance(await s.good.peers.request(s.victim.id, Ping()), Pong)
    await trio.sleep(FRAME_TIMEOUT + 1)
    assert s.bad.ip not in s.victim.peers.link._inbound.held
    for stream in held:
        with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
            for _ in range(3):
                if not await stream.receive_some(100):
                    raise trio.ClosedResourceError
        await trio.aclose_forcefully(stream)


async def test_a_peer_that_says_it_holds_blobs_it_lacks_is_distrusted(
    scene: Scene, clock: Any
) -> None:
    """``have`` for every blob, then no torrent of them: the get takes them from the mirror,
    and status lists the liar as distrusted for each."""
    s = scene
    s.bad.answers[HaveQuery] = lambda m: Have(complete=m.digests)
    s.bad.answers[MetadataQuery] = lambda m: Metadata(m.digest)
    got = await s.get(s.good)
    s.exact(got)
    peer = next(p for p in s.good.status()["peers"] if p["agent"] == s.bad.agent)
    lied = {d["content"] for d in peer["distrusted"]}
    assert lied >= {f.digest for f in got.manifest.files}
    assert all("no torrent" in d["why"] for d in peer["distrusted"])


async def test_pieces_that_fail_their_hash_get_the_sender_distrusted(
    scene: Scene, clock: Any
) -> None:
    """A peer seeding rotten copies under the right torrents: no bad byte is stored, the blobs
    come from elsewhere, and the sender is distrusted for them."""
    s = scene
    rotten = {}
    for f in s.repo.files:
        data = bytearray(f.data_path.read_bytes())
        if len(data) < MiB:  # the weights (sha256 digests); small files go by git blob id
            continue
        digest = f"sha256:{f.sha256}"
        _, pieces = hash_blob(f.data_path, "sha256", len(data), piece_size(len(data)))
        data[len(data) // 2] ^= 0xFF
        s.bad.store.put_blob_bytes(digest, bytes(data))
        s.bad.store.save_torrent_info(digest, info_bytes(digest, len(data), pieces))
        assert s.bad.swarm.seed(digest, len(data))
        rotten[digest] = with_cert(info_bytes(digest, len(data), pieces), s.bad.swarm.ca)
    s.bad.answers[HaveQuery] = lambda m: Have(complete=tuple(d for d in m.digests if d in rotten))
    s.bad.answers[MetadataQuery] = lambda m: Metadata(m.digest, rotten.get(m.digest, b""))
    got = await s.get(s.good)
    s.exact(got)
    assert s.office.swarms.pieces_refused >= 1
    assert not s.good.peers.trusted(s.bad.agent, next(iter(rotten)))
    intact(s.good)


async def test_a_unit_torrent_of_the_wrong_shape_is_refused(scene: Scene, clock: Any) -> None:
    """A peer that says it holds units of a shared blob and then sends a torrent of another
    shape is distrusted; the unit comes from the mirror."""
    s = scene
    big = max(s.repo.files, key=lambda f: f.size)
    digest = f"sha256:{big.sha256}"
    units = units_of(digest, big.size, SEGMENT)
    s.bad.answers[OfficeQuery] = lambda m: OfficeState(
        done=tuple((u.blob, u.index, u.start, u.stop, 0) for u in units if u.blob in m.digests)
    )
    s.bad.answers[UnitQuery] = lambda m: UnitInfo(m.digest, m.index, b"d4:name1:xe")
    got = await s.get(s.good)
    s.exact(got)
    assert not s.good.peers.trusted(s.bad.agent, digest)
    assert s.good.sharing is not None and s.good.sharing.stats.units_from_peers == 0


async def test_a_manifest_that_escapes_the_directory_is_refused(scene: Scene, clock: Any) -> None:
    """A keyed peer answering a name with a manifest whose path climbs out of the model's
    directory is not believed (the name stays unknown), is distrusted for that name, and
    nothing is written anywhere."""
    s = scene
    evil = msgpack.packb(
        {
            "v": 1,
            "name": "team:v1",
            "source": "published:bad0bad0bad0",
            "commit": "9999",
            "files": [["../../escaped", 1, "sha256:" + "0" * 64]],
        },
        use_bin_type=True,
    )
    s.bad.answers[ResolveQuery] = lambda m: Resolved(m.ref, evil)
    with pytest.raises(UserError, match="unknown model 'team:v1'"):
        await s.get(s.good, "team:v1")
    assert not s.good.peers.trusted(s.bad.agent, "team:v1")
    assert not (s.good.home / "store" / "escaped").exists()
    assert not (s.good.home.parent / "escaped").exists()
