"""Spoofed mDNS among real agents on the in-memory fakes (fake clock, no root): an outsider
without the office key announces another agent's id, fingerprint and ports with its own
address, or says goodbye for it. An announced address is only a hint until a hello on it
proves the agent, and a goodbye only a reason to ping, so the spoof costs nothing: the victim
still fetches from the real agent over the LAN, never lists or lets through the outsider's
address, and keeps the real address after the spoof stops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2pmodel.adapters.discovery import PeerGone, PeerSeen
from p2pmodel.core.config import parse_config
from p2pmodel.core.officekey import format_key
from p2pmodel.core.refs import parse_ref
from p2pmodel.core.wire import PROTOCOL_VERSION
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.services.get import GetRequest, GetResult
from p2pmodel.testing.fakes import MemoryMirror, SimOffice
from p2pmodel.testing.hostile import HostilePeer
from p2pmodel.testing.models import Repo, make_model

MiB = 1024 * 1024
KEY = format_key(bytes(range(32)))
PHANTOM = "feedfacefeed"  # an agent id nobody runs


class Office:
    def __init__(self, tmp: Path, repo: Repo, key: str | None) -> None:
        self.tmp = tmp
        self.repo = repo
        self.key = key
        self.sim = SimOffice(MemoryMirror([repo]), lan_rate=64 * MiB)

    async def agent(self, nursery: trio.Nursery, name: str) -> Agent:
        home = self.tmp / name
        home.mkdir()
        raw: dict[str, Any] = {
            "mirror": [{"for": "https://huggingface.co/", "use": [self.sim.mirror.hub_url + "/"]}]
        }
        if self.key is not None:
            raw["office_key"] = self.key
        opts = AgentOptions(rpc_port=0, segment=256 * 1024, wait_for_peers=0.5)
        agent = Agent(home, parse_config(raw, {}), opts, self.sim.outside())
        started: Agent = await nursery.start(agent.run)
        return started

    def spoof(self, victim_of: Agent, outsider: HostilePeer, agent: str) -> None:
        """``agent`` announced with the outsider's address and ports (where it really listens)
        and the office's public fingerprint."""
        self.sim.mdns.announce(
            PeerSeen(
                agent,
                (outsider.ip,),
                outsider.rpc_port,
                outsider.swarm.port,
                PROTOCOL_VERSION,
                victim_of.peers.office,
            )
        )


async def get(agent: Agent, ref: str = "hf://acme/spoofed") -> GetResult:
    return await agent.gets.get(GetRequest(parse_ref(ref)))


def addresses_of(agent: Agent, of: str) -> list[str]:
    """What ``status`` lists as the addresses of peer ``of`` ([] when it is not listed)."""
    return next((p["addresses"] for p in agent.status()["peers"] if p["agent"] == of), [])


def proven(agent: Agent, of: Agent) -> bool:
    peer = agent.peers.get(of.id)
    return peer is not None and peer.alive and peer.verified


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repo]:
    yield make_model(tmp_path / "up", "acme/spoofed", shards=2, shard_size=MiB)


@pytest.mark.parametrize("keyed", [True, False], ids=["office-key", "open-office"])
async def test_an_outsider_announcing_an_agent_at_its_own_address_costs_nothing(
    tmp_path: Path, repo: Repo, clock: Any, keyed: bool
) -> None:
    """An outsider without the key announces agent A (id, fingerprint, its own reachable
    ports) and a phantom agent at its own address, every second for 20 s, while B fetches
    what A holds: B takes it all from A over the LAN (0 mirror bytes), status never shows the
    outsider's address for A, the phantom is never a live peer, with a key the swarm's IP
    filter never lets the outsider in, and 80 s after the spoof stopped B still has A at its
    real address."""
    office = Office(tmp_path, repo, KEY if keyed else None)
    async with trio.open_nursery() as n:
        a = await office.agent(n, "a")
        b = await office.agent(n, "b")
        outsider = HostilePeer(office.sim, tmp_path / "outsider", None)
        await n.start(outsider.run)
        with trio.fail_after(30):
            while not (proven(a, b) and proven(b, a)):  # noqa: ASYNC110 (fake clock)
                await trio.sleep(0.1)
        real = f"{a.interfaces[0]}:{a.rpc_port}"
        assert addresses_of(b, a.id) == [real]
        held = await get(a)
        assert held.fetched == held.manifest.total_size

        seen_by_b: list[list[str]] = []
        allowed: list[set[str] | None] = []

        async def spoof() -> None:
            for _ in range(20):
                office.spoof(a, outsider, a.id)
                office.spoof(a, outsider, PHANTOM)
                await trio.sleep(0.5)
                seen_by_b.append(addresses_of(b, a.id))
                allowed.append(b.swarm.swarm.allowed)  # type: ignore[attr-defined]
                assert not b.peers.is_alive(PHANTOM)
                await trio.sleep(0.5)

        async with trio.open_nursery() as spoofing:
            spoofing.start_soon(spoof)
            await trio.sleep(2)
            got = await get(b)
        assert got.from_peers == got.manifest.total_size and got.fetched == 0
        for f in repo.files:
            assert (got.path / f.path).read_bytes() == f.data_path.read_bytes(), f.path
        assert len(seen_by_b) == 20
        assert all(outsider.ip not in ":".join(addrs) for addrs in seen_by_b), seen_by_b
        if keyed:
            assert all(hosts is not None and outsider.ip not in hosts for hosts in allowed)
            assert a.interfaces[0] in (b.swarm.swarm.allowed or set())  # type: ignore[attr-defined]
        assert outsider.ip not in str(b.peers.endpoint(a.id))

        await trio.sleep(80)
        assert proven(b, a) and addresses_of(b, a.id) == [real]
        assert not b.peers.is_alive(PHANTOM)
        n.cancel_scope.cancel()


@pytest.mark.parametrize("keyed", [True, False], ids=["office-key", "open-office"])
async def test_a_spoofed_goodbye_costs_a_ping(
    tmp_path: Path, repo: Repo, clock: Any, keyed: bool
) -> None:
    """Goodbyes for agent A sent by someone else every 0.1 s while B fetches what A holds: A
    never leaves B's live peers, B takes everything from A; a real goodbye (A stops) still
    ends A at B within a second."""
    office = Office(tmp_path, repo, KEY if keyed else None)

    async def host_a(task_status: trio.TaskStatus[tuple[Agent, trio.CancelScope]]) -> None:
        async with trio.open_nursery() as own:
            task_status.started((await office.agent(own, "a"), own.cancel_scope))

    async with trio.open_nursery() as n:
        a, stop_a = await n.start(host_a)
        b = await office.agent(n, "b")
        with trio.fail_after(30):
            while not (proven(a, b) and proven(b, a)):  # noqa: ASYNC110 (fake clock)
                await trio.sleep(0.1)
        await get(a)
        alive: list[bool] = []

        async def goodbyes() -> None:
            for _ in range(100):
                office.sim.mdns.announce(PeerGone(a.id))
                await trio.sleep(0.1)
                alive.append(b.peers.is_alive(a.id))

        async with trio.open_nursery() as spoofing:
            spoofing.start_soon(goodbyes)
            got = await get(b)
        assert got.from_peers == got.manifest.total_size and got.fetched == 0
        assert len(alive) == 100 and all(alive)
        assert b.peers.link.stats.requests > 100  # each goodbye cost a ping

        stop_a.cancel()  # a real goodbye: A stops
        with trio.fail_after(1):
            while b.peers.is_alive(a.id):  # noqa: ASYNC110 (fake clock)
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
