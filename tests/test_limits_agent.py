"""Limits in a running agent: the schedule followed on a fake clock, every rate applied where it
acts (mirror bucket, swarm upload, sharing claims), live changes, and a limited agent's share of
the office's mirror work sized to its rate (real agents on the in-memory fakes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pmodel.core.config import Config, parse_config
from p2pmodel.core.limits import Rates, parse_limits
from p2pmodel.core.refs import parse_ref
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.services.get import GetRequest, GetResult
from p2pmodel.services.limits import LimitsService
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.mirror import Faults
from p2pmodel.testing.models import make_model

MiB = 1024 * 1024
SEGMENT = 256 * 1024
MON = 0
NINE = 9 * 3600


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.01)


def fake_local(start: float) -> Callable[[], tuple[int, float]]:
    """A Monday whose local time is ``start`` seconds past midnight at trio time 0."""
    return lambda: (MON, start + trio.current_time())


OFFICE_HOURS = {
    "mirror_download": "20MB/s",
    "lan_upload": "100MB/s",
    "schedule": [{"hours": "09:00-18:00", "mirror_download": "5MB/s", "lan_upload": "1MB/s"}],
}


async def test_the_schedule_changes_the_rates_at_the_boundary(clock, nursery):
    """Two seconds before 09:00 the base rates hold; at 09:00 the window's rates reach every
    watcher without delay; a new config applies at once, between boundaries too."""
    seen: list[tuple[float, Rates]] = []
    limits = LimitsService(parse_limits(OFFICE_HOURS), fake_local(NINE - 2))
    limits.watch(lambda r: seen.append((trio.current_time(), r)))
    await nursery.start(limits.run)
    assert seen == [(0.0, Rates(20e6, 100e6))]
    await trio.sleep(2.5)
    assert seen[-1] == (2.0, Rates(5e6, 1e6))
    assert limits.status()["window"] == "09:00-18:00"
    limits.set_limits(parse_limits({"lan_upload": "7MB/s"}))
    assert seen[-1] == (2.5, Rates(None, 7e6))
    assert limits.status()["next_change_in"] is None


async def test_a_limit_of_the_config_reaches_bucket_swarm_and_sharing(tmp_path, clock, nursery):
    """An agent applies mirror_download to its token bucket and its sharing state and
    lan_upload to its swarm; a reloaded config changes all three while it runs."""
    office = SimLan(MemoryMirror([]))
    agent = await start(nursery, office, tmp_path / "ws", {"limits": OFFICE_HOURS})
    agent.gets.limits.clock = fake_local(NINE - 1)
    agent.gets.limits.set_limits(agent.config.limits)
    swarm = agent.swarm.swarm
    assert agent.gets.bucket.rate == 20e6 and swarm.upload_limit == 100e6  # type: ignore[attr-defined]
    assert agent.sharing is not None and agent.sharing.state.rate == 20e6
    await trio.sleep(1.5)
    assert agent.gets.bucket.rate == 5e6 and swarm.upload_limit == 1e6  # type: ignore[attr-defined]
    assert agent.sharing.state.rate == 5e6
    notes = agent.reload(config_for(office, {"limits": {"mirror_download": "1MB/s"}}))
    assert notes == []
    assert agent.gets.bucket.rate == 1e6 and swarm.upload_limit is None  # type: ignore[attr-defined]
    assert agent.status()["limits"]["mirror_download"] == 1e6


def config_for(office: SimLan, extra: dict[str, object]) -> Config:
    hub = office.mirror.hub_url + "/"
    return parse_config({"mirror": [{"for": "https://huggingface.co/", "use": [hub]}], **extra}, {})


async def start(
    nursery: trio.Nursery, office: SimLan, home: Path, extra: dict[str, object]
) -> Agent:
    home.mkdir(parents=True, exist_ok=True)
    opts = AgentOptions(rpc_port=0, segment=SEGMENT, wait_for_peers=0.5)
    agent = Agent(home, config_for(office, extra), opts, office.outside())
    return await nursery.start(agent.run)  # type: ignore[no-any-return]


async def test_a_limited_agent_alone_leaves_units_for_a_peer_that_joins(tmp_path, clock, nursery):
    """An agent limited to 256 KiB/s that starts alone leases only ~10 s of units; a fast
    agent joining a second later fetches most of the model from the mirror itself instead
    of waiting for the slow one, and the office still pulls the model about once."""
    repo = make_model(tmp_path / "up", "acme/sized", shards=2, shard_size=4 * MiB)
    size = sum(f.size for f in repo.files)
    office = SimLan(MemoryMirror([repo], Faults(total_rate=16 * MiB)), lan_rate=64 * MiB)
    slow = await start(nursery, office, tmp_path / "slow", {"limits": {"mirror_download": 262144}})
    results: dict[str, GetResult] = {}

    async def get(name: str, agent: Agent) -> None:
        req = GetRequest(parse_ref(f"hf://{repo.repo_id}"))
        results[name] = await agent.gets.get(req)

    async with trio.open_nursery() as gets:
        gets.start_soon(get, "slow", slow)
        await trio.sleep(1.0)
        fast = await start(nursery, office, tmp_path / "fast", {})
        gets.start_soon(get, "fast", fast)
    for r in results.values():
        for f in repo.files:
            assert (r.path / f.path).read_bytes() == f.data_path.read_bytes()
    slow_share = slow.gets.stats.from_mirrors_total / size
    fast_share = fast.gets.stats.from_mirrors_total / size
    served = sum(n for p, n in office.mirror.mirror.stats.by_path.items() if "/api/" not in p)
    print(
        f"\nmirror shares: slow {slow_share:.2f}, fast {fast_share:.2f};"
        f" office {served / size:.2f}x"
    )
    assert slow_share < 0.4  # ~10 s at 256 KiB/s = 2.5 MiB of 8 MiB, then one unit at a time
    assert fast_share > 0.6
    assert served <= 1.0 * size + SEGMENT
