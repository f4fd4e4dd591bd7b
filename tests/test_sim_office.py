"""A simulated office: many real agents (the real services, sharing included) on in-memory
fakes of the network, mDNS, libtorrent and the mirror, in one trio run under a fake clock.
No root, no sockets: what the multi-host tests show in namespaces, at office sizes."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pmodel.core.config import parse_config
from p2pmodel.core.refs import parse_ref
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.services.get import GetRequest, GetResult
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.mirror import Faults
from p2pmodel.testing.models import Repo, make_model

MiB = 1024 * 1024
SEGMENT = 256 * 1024


@dataclass
class Sim:
    office: SimLan
    repo: Repo
    tmp: Path
    agents: dict[int, Agent] = field(default_factory=dict)
    scopes: dict[int, list[trio.CancelScope]] = field(default_factory=dict)
    results: dict[int, GetResult] = field(default_factory=dict)

    @property
    def mirror(self) -> MemoryMirror:
        return self.office.mirror

    def file_bytes(self) -> int:
        """What the mirror served of the model's files (not of the API listings)."""
        by_path = self.mirror.mirror.stats.by_path
        return sum(n for path, n in by_path.items() if not path.startswith("/api/"))

    @property
    def size(self) -> int:
        return sum(f.size for f in self.repo.files)

    async def start(self, nursery: trio.Nursery, i: int) -> Agent:
        home = self.tmp / f"ws{i}"
        home.mkdir(exist_ok=True)
        config = parse_config(
            {"mirror": [{"for": "https://huggingface.co/", "use": [self.mirror.hub_url + "/"]}]},
            {},
        )
        opts = AgentOptions(rpc_port=0, segment=SEGMENT, wait_for_peers=0.5)
        scope = trio.CancelScope()
        self.scopes[i] = [scope]

        async def run(task_status: trio.TaskStatus[Agent]) -> None:
            with scope:
                await Agent(home, config, opts, self.office.outside()).run(task_status=task_status)

        agent: Agent = await nursery.start(run)
        self.agents[i] = agent
        return agent

    def get(self, nursery: trio.Nursery, i: int) -> None:
        scope = trio.CancelScope()
        self.scopes[i].append(scope)

        async def run() -> None:
            with scope:
                req = GetRequest(parse_ref(f"hf://{self.repo.repo_id}"))
                self.results[i] = await self.agents[i].gets.get(req)

        nursery.start_soon(run)

    def crash(self, i: int) -> None:
        """kill -9: no goodbye, connections and swarm gone."""
        self.office.mdns.crash(self.agents[i].id)
        for scope in self.scopes[i]:
            scope.cancel()

    def assert_exact(self, i: int) -> None:
        top = self.results[i].path
        for f in self.repo.files:
            assert (top / f.path).read_bytes() == f.data_path.read_bytes(), (i, f.path)

    def messages(self, i: int) -> int:
        link = self.agents[i].peers.stats
        return link.messages_sent + link.requests + link.served


def make_sim(tmp: Path, shards: int, shard_size: int, rate: int) -> Sim:
    repo = make_model(tmp / "up", "acme/sim", shards=shards, shard_size=shard_size)
    mirror = MemoryMirror([repo], Faults(total_rate=rate))
    return Sim(SimLan(mirror, lan_rate=64 * MiB), repo, tmp)


async def run_office(sim: Sim, starts: Sequence[float], *, crash: dict[int, float] | None = None):
    """Start agent i at time starts[i] (its get right away); crash some at given times."""
    crash = crash or {}
    t0 = trio.current_time()
    async with trio.open_nursery() as agents:
        async with trio.open_nursery() as gets:
            for i, at in sorted(enumerate(starts), key=lambda x: x[1]):
                await trio.sleep_until(t0 + at)
                await sim.start(agents, i)
                sim.get(gets, i)
            for i, at in sorted(crash.items(), key=lambda x: x[1]):
                await trio.sleep_until(t0 + at)
                sim.crash(i)
        agents.cancel_scope.cancel()
    return trio.current_time() - t0


async def test_eight_agents_fetch_each_unit_from_the_mirror_once(tmp_path: Path, clock):
    """Eight agents that start together pull the model from the mirror once, and each ends
    with exact files (most from the LAN)."""
    sim = make_sim(tmp_path, shards=2, shard_size=2 * MiB, rate=8 * MiB)
    took = await run_office(sim, [0.0] * 8)
    assert sorted(sim.results) == list(range(8))
    for i in range(8):
        sim.assert_exact(i)
    assert sim.file_bytes() <= 1.0 * sim.size + SEGMENT // 4
    lan = sum(a.swarm.stats.from_peers for a in sim.agents.values())
    assert lan >= 6 * sim.size
    print(f"\n8 agents: mirror {sim.file_bytes() / sim.size:.3f}x, {took:.1f} s simulated")


@pytest.mark.slow
async def test_sixty_four_agents_within_a_second(tmp_path: Path, clock):
    """64 agents starting within one second complete with the mirror serving at most 1.02x
    the model, and each agent's messages stay within a small multiple of peers x units."""
    sim = make_sim(tmp_path, shards=2, shard_size=2 * MiB, rate=8 * MiB)
    rng = random.Random(0)
    wall = time.monotonic()
    took = await run_office(sim, [rng.random() for _ in range(64)])
    wall = time.monotonic() - wall
    assert sorted(sim.results) == list(range(64))
    for i in range(64):
        sim.assert_exact(i)
    served = sim.file_bytes()
    units = sum(-(-f.size // SEGMENT) for f in sim.repo.files)
    worst = max(sim.messages(i) for i in range(64))
    print(
        f"\n64 agents: mirror {served / sim.size:.3f}x, {took:.1f} s simulated in {wall:.1f} s;"
        f" at most {worst} messages per agent ({units} units, 63 peers)"
    )
    assert served <= 1.02 * sim.size
    assert worst <= 6 * 63 * units


async def test_crashes_and_late_joins_still_complete(tmp_path: Path, clock):
    """Agents killed mid-run (no goodbye) cost the others nothing but time, and agents that
    join late finish too; the mirror serves little more than the model."""
    sim = make_sim(tmp_path, shards=2, shard_size=2 * MiB, rate=4 * MiB)
    starts = [0.0] * 6 + [0.4, 0.6]
    await run_office(sim, starts, crash={1: 0.3, 4: 0.5})
    survivors = [i for i in range(8) if i not in (1, 4)]
    assert sorted(i for i in sim.results if i in survivors) == survivors
    for i in survivors:
        sim.assert_exact(i)
    assert sim.file_bytes() <= 1.5 * sim.size
