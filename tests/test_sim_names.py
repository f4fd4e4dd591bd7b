"""The office key among real agents on the in-memory fakes (fake clock, no root): outsiders get
nothing, keyed workstations without internet get what their neighbours hold or publish, by
name; the key reaches no log."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from p2pmodel.core.config import parse_config
from p2pmodel.core.errors import P2PModelError, SourceError, UserError
from p2pmodel.core.officekey import OfficeKey, format_key
from p2pmodel.core.refs import parse_ref
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.services.get import GetRequest, GetResult
from p2pmodel.services.publish import prepare
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.models import Repo, make_model

MiB = 1024 * 1024
KEY = format_key(bytes(range(32)))
OTHER = format_key(bytes(32))
QWEN = "75e0b4be04f60ec59a75f475837eced720f823b6"  # qwen-image:v1.0 in the shipped catalog


def offline() -> httpx.AsyncClient:
    """A client whose every request fails to connect (a workstation with no internet)."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no route to host", request=request)

    return httpx.AsyncClient(transport=httpx.MockTransport(refuse))


class Sim:
    def __init__(self, tmp: Path, repos: list[Repo]) -> None:
        self.tmp = tmp
        self.mirror = MemoryMirror(repos)
        self.office = SimLan(self.mirror, lan_rate=64 * MiB)
        self.agents: list[Agent] = []

    async def start(
        self, nursery: trio.Nursery, key: str | None, *, internet: bool = True, **extra: Any
    ) -> Agent:
        home = self.tmp / f"ws{len(self.agents)}"
        home.mkdir()
        raw: dict[str, Any] = {
            "mirror": [{"for": "https://huggingface.co/", "use": [self.mirror.hub_url + "/"]}],
            **extra,
        }
        if key is not None:
            raw["office_key"] = key
        outside = self.office.outside()
        if not internet:
            outside.http = offline
        opts = AgentOptions(rpc_port=0, segment=256 * 1024, wait_for_peers=0.5)
        agent: Agent = await nursery.start(Agent(home, parse_config(raw, {}), opts, outside).run)
        self.agents.append(agent)
        return agent


async def meshed(agents: list[Agent]) -> None:
    """Until each of ``agents`` lists every other one alive and verified."""
    with trio.fail_after(30):
        # Polling the peer tables: the fake clock makes it cost nothing, and no event says this.
        while any(  # noqa: ASYNC110
            {b.id for b in agents if b is not a} - {p.agent for p in a.peers.alive() if p.verified}
            for a in agents
        ):
            await trio.sleep(0.1)


async def get(agent: Agent, ref: str) -> GetResult:
    return await agent.gets.get(GetRequest(parse_ref(ref)))


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Sim]:
    repo = make_model(tmp_path / "up", "acme/sim", shards=2, shard_size=MiB)
    qwen = make_model(tmp_path / "up", "Qwen/Qwen-Image", shards=1, shard_size=MiB, seed=3)
    yield Sim(tmp_path, [repo, dataclasses.replace(qwen, commit=QWEN)])


def exact(result: GetResult, repo_dir: Path) -> None:
    for f in result.manifest.files:
        assert (result.path / f.path).read_bytes() == (repo_dir / f.path).read_bytes(), f.path


async def test_keyed_agents_share_and_outsiders_get_nothing(sim: Sim, clock) -> None:
    """Three agents of one office find each other and share the model; an agent of another
    office and an open one on the same LAN never count as their peers and take 0 bytes from
    them."""
    async with trio.open_nursery() as n:
        ours = [await sim.start(n, KEY) for _ in range(3)]
        theirs = await sim.start(n, OTHER)
        opened = await sim.start(n, None)
        await meshed(ours)
        first = await get(ours[0], "hf://acme/sim")
        rest = [await get(a, "hf://acme/sim") for a in ours[1:]]
        assert all(r.from_peers == first.manifest.total_size for r in rest)
        for outsider in (theirs, opened):
            got = await get(outsider, "hf://acme/sim")
            assert got.from_peers == 0 and got.fetched == first.manifest.total_size
            assert not set(outsider.peers.alive_ids()) & {a.id for a in ours}
        for a in ours:
            assert set(a.peers.alive_ids()) == {b.id for b in ours} - {a.id}
            assert a.peers.other_offices >= {theirs.id, opened.id}
            assert a.status()["office"]["fingerprint"] == OfficeKey.parse(KEY).fingerprint
        n.cancel_scope.cancel()


async def test_a_workstation_without_internet_gets_published_and_catalog_names(
    sim: Sim, clock, tmp_path: Path
) -> None:
    """A keyed workstation whose mirrors cannot be reached gets, by name, a model its
    neighbour published and a catalog model its neighbour holds (also by its pinned
    reference); get says where the name came from. Outsiders learn no name."""
    model = tmp_path / "team-model"
    (model / "weights").mkdir(parents=True)
    (model / "weights" / "w.bin").write_bytes(bytes(range(256)) * 4096)
    (model / "config.json").write_text('{"a": 1}')
    async with trio.open_nursery() as n:
        a = await sim.start(n, KEY)
        b = await sim.start(n, KEY, internet=False)
        theirs = await sim.start(n, OTHER, internet=False)
        await meshed([a, b])
        manifest, _, _ = prepare(a.store, model, parse_ref("team:v3"), a.id, "t1", force=False)
        await a.publish("team:v3", manifest.digest, False)
        await get(a, "qwen-image:v1.0")

        team = await get(b, "team:v3")
        exact(team, model)
        assert (team.name_from, team.manifest_from, team.peer) == ("office", "office", a.id)
        assert team.from_peers == manifest.total_size and team.fetched == 0
        qwen = await get(b, "qwen-image:v1.0")
        assert (qwen.name_from, qwen.peer) == ("office", a.id) and not qwen.warnings
        assert qwen.manifest.commit == QWEN and qwen.fetched == 0
        pinned = await get(b, f"hf://Qwen/Qwen-Image@{QWEN}")
        assert (pinned.manifest_from, pinned.peer) == ("office", a.id)
        assert pinned.manifest.files == qwen.manifest.files

        with pytest.raises(UserError, match="unknown model 'team:v3'"):
            await get(theirs, "team:v3")
        with pytest.raises(SourceError):
            await get(theirs, "qwen-image:v1.0")
        n.cancel_scope.cancel()


async def test_publishing_again_needs_force_and_the_newest_wins(
    sim: Sim, clock, tmp_path: Path
) -> None:
    """The office refuses a name it holds with other content unless forced; forced, the newer
    publication is what workstations get; a published name shadowing a catalog name is
    taken with a warning that says which won."""
    one, two = tmp_path / "one", tmp_path / "two"
    for d, byte in ((one, 1), (two, 2)):
        d.mkdir()
        (d / "w.bin").write_bytes(bytes([byte]) * 300_000)
    async with trio.open_nursery() as n:
        a, b, c = [await sim.start(n, KEY) for _ in range(3)]
        await meshed([a, b, c])
        m1, _, _ = prepare(
            a.store, one, parse_ref("team:v1"), a.id, "2025-01-01T00:00", force=False
        )
        await a.publish("team:v1", m1.digest, False)
        assert (await get(c, "team:v1")).manifest == m1
        m2, _, _ = prepare(
            b.store, two, parse_ref("team:v1"), b.id, "2025-02-01T00:00", force=False
        )
        with pytest.raises(UserError, match="already published in the office"):
            await b.publish("team:v1", m2.digest, False)
        await b.publish("team:v1", m2.digest, True)
        newest = await c.gets.get(GetRequest(parse_ref("team:v1"), refresh=True))
        assert newest.manifest == m2 and newest.peer == b.id
        assert (newest.path / "w.bin").read_bytes() == (two / "w.bin").read_bytes()

        m3, _, _ = prepare(a.store, two, parse_ref("sdxl-base:1.0"), a.id, "t", force=False)
        await a.publish("sdxl-base:1.0", m3.digest, False)
        shadow = await get(c, "sdxl-base:1.0")
        assert shadow.manifest == m3
        assert any("wins over the catalog's hf://stabilityai" in w for w in shadow.warnings)
        n.cancel_scope.cancel()


async def test_the_key_reaches_no_log(sim: Sim, clock, caplog: pytest.LogCaptureFixture) -> None:
    """Agents logging at debug level while they mesh, share and refuse an outsider never write
    the key (nor a good part of it)."""
    caplog.set_level(logging.DEBUG)
    async with trio.open_nursery() as n:
        a, b = await sim.start(n, KEY), await sim.start(n, KEY)
        await sim.start(n, OTHER, peers=[])
        await meshed([a, b])
        await get(a, "hf://acme/sim")
        await get(b, "hf://acme/sim")
        with pytest.raises(P2PModelError):
            await get(b, "no-such:name")
        n.cancel_scope.cancel()
    text = caplog.text + repr(a.status()) + repr(a.config)
    assert caplog.records
    for secret in (KEY, KEY[6:30], KEY[30:]):
        assert secret not in text
