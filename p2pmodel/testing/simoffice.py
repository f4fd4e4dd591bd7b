"""A simulated office: many real agents (the real services, sharing included) on in-memory
fakes of the network, mDNS, libtorrent and the mirror, in one trio run under a fake clock.
No root, no sockets: what the multi-host tests show in namespaces, at office sizes.
``tests/test_sim_office.py`` keeps small cases; ``scripts/sim-office`` runs large ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from p2pmodel.core.config import parse_config
from p2pmodel.core.refs import parse_ref
from p2pmodel.core.sharing import units_of
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.services.get import GetRequest, GetResult
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.mirror import Faults
from p2pmodel.testing.models import Repo, make_model

MiB = 1024 * 1024


@dataclass
class Sim:
    office: SimLan
    repo: Repo
    tmp: Path
    segment: int
    agents: dict[int, Agent] = field(default_factory=dict)
    scopes: dict[int, list[trio.CancelScope]] = field(default_factory=dict)
    results: dict[int, GetResult] = field(default_factory=dict)
    finished: dict[int, float] = field(default_factory=dict)  # agent -> seconds after t0
    t0: float = 0.0

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
        opts = AgentOptions(rpc_port=0, segment=self.segment, wait_for_peers=0.5)
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
                self.finished[i] = trio.current_time() - self.t0

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
        """Peer-link messages agent i sent and received: hellos, pings, claims,
        announcements, requests and their answers."""
        link = self.agents[i].peers.stats
        return link.messages_sent + link.requests + link.served + link.messages_received

    def units(self) -> int:
        return sum(len(units_of(f.sha256, f.size, self.segment)) for f in self.repo.files)


def make_sim(tmp: Path, shards: int, shard_size: int, rate: int, segment: int) -> Sim:
    repo = make_model(tmp / "up", "acme/sim", shards=shards, shard_size=shard_size)
    mirror = MemoryMirror([repo], Faults(total_rate=rate))
    return Sim(SimLan(mirror, lan_rate=64 * MiB), repo, tmp, segment)


async def run_office(
    sim: Sim,
    starts: Sequence[float],
    *,
    crash: dict[int, float] | None = None,
    linger: float = 0.0,
    at_done: Callable[[], None] | None = None,
) -> float:
    """Start agent i at time starts[i] (its get right away); crash some at given times.
    With ``linger`` the agents keep running that long after the last get ended (idle);
    ``at_done`` is called when it ended.
    Returns the simulated seconds until the last get ended."""
    crash = crash or {}
    t0 = sim.t0 = trio.current_time()
    async with trio.open_nursery() as agents:
        async with trio.open_nursery() as gets:
            for i, at in sorted(enumerate(starts), key=lambda x: x[1]):
                await trio.sleep_until(t0 + at)
                await sim.start(agents, i)
                sim.get(gets, i)
            for i, at in sorted(crash.items(), key=lambda x: x[1]):
                await trio.sleep_until(t0 + at)
                sim.crash(i)
        took = trio.current_time() - t0
        if at_done is not None:
            at_done()
        await trio.sleep(linger)
        agents.cancel_scope.cancel()
    return took
