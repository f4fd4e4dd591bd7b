"""The simulated office (``testing.simoffice``): many real agents on in-memory fakes under a
fake clock. Small cases; ``scripts/sim-office`` runs the large ones."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import trio

from p2pmodel.services.link import IDLE
from p2pmodel.testing import simoffice
from p2pmodel.testing.simoffice import Sim, run_office

MiB = 1024 * 1024
SEGMENT = 256 * 1024


def make_sim(tmp: Path, shards: int, shard_size: int, rate: int) -> Sim:
    return simoffice.make_sim(tmp, shards, shard_size, rate, SEGMENT)


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
    # Units taken from peers came with their torrent's info in the announcement: no round
    # trip to ask for it (a few may be asked for, e.g. when learned from office? answers).
    from_peers = sum(a.sharing.stats.units_from_peers for a in sim.agents.values())
    told = sum(a.sharing.stats.infos_announced for a in sim.agents.values())
    assert from_peers > 0 and told >= 0.9 * from_peers
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


async def test_idle_liveness_does_not_grow_with_the_office_and_a_death_is_noticed(
    tmp_path: Path, clock
):
    """Idle, each agent's liveness messages (pings and pongs, sent and received) per 30 s are
    the same in an office of 24 and of 48 agents (a few probes a round, SWIM-style, not a ping
    to every peer), and so are the connections each keeps open; a killed agent (no goodbye)
    is dead for every other within 10 s."""
    per_agent: dict[int, float] = {}
    for n in (24, 48):  # both above the link's idle pool: each probe may dial
        sim = make_sim(tmp_path / f"o{n}", shards=1, shard_size=MiB, rate=8 * MiB)
        async with trio.open_nursery() as nursery:
            for i in range(n):
                await sim.start(nursery, i)
            await trio.sleep(5.0)
            assert all(len(a.peers.alive_ids()) == n - 1 for a in sim.agents.values())
            before = {i: sim.messages(i) for i in sim.agents}
            await trio.sleep(30.0)
            counts = [sim.messages(i) - before[i] for i in sim.agents]
            per_agent[n] = sum(counts) / n
            assert max(counts) <= 2 * per_agent[n]
            # Connections each agent opened and keeps: at most the link's idle pool (the
            # outboxes give theirs back), however many peers it talked to.
            opened = sim.office.net.open_from
            assert max(opened.values()) <= IDLE, opened
            if n == 48:
                dead = sim.agents[5].id
                t0 = trio.current_time()
                sim.crash(5)
                noticed: dict[int, float] = {}
                while len(noticed) < n - 1 and trio.current_time() < t0 + 30:
                    await trio.sleep(0.1)
                    for i, a in sim.agents.items():
                        if i != 5 and i not in noticed and dead not in a.peers.alive_ids():
                            noticed[i] = trio.current_time() - t0
                print(f"\ncrash noticed by all {n - 1} in {max(noticed.values()):.1f} s")
                assert len(noticed) == n - 1 and max(noticed.values()) <= 10.0
            nursery.cancel_scope.cancel()
    print(f"idle messages per agent per 30 s: {per_agent}")
    # PROBES pings a second and the others' to us, each with its pong and at worst a hello
    # each way (the idle pool stops saving dials once the office outgrows it): 2 x 2 x 4 x 30.
    assert max(per_agent.values()) <= 480


async def test_a_lone_peer_killed_is_dead_within_a_few_seconds(tmp_path: Path, clock):
    """With one peer and nothing else going on (no other event wakes liveness), a peer killed
    without a goodbye is dead within two rounds of its first failed ping: the failure itself
    brings the retry forward, not the hung-ping deadline 8 s later."""
    sim = make_sim(tmp_path, shards=1, shard_size=MiB, rate=8 * MiB)
    async with trio.open_nursery() as nursery:
        for i in range(2):
            await sim.start(nursery, i)
        await trio.sleep(5.0)
        assert sim.agents[1].id in sim.agents[0].peers.alive_ids()
        t0 = trio.current_time()
        sim.crash(1)
        while sim.agents[1].id in sim.agents[0].peers.alive_ids():
            await trio.sleep(0.05)
            assert trio.current_time() < t0 + 30
        took = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    print(f"\nlone peer dead after {took:.2f} s")
    assert took <= 7.0  # ping_interval (2 s) + a hung ping (PING_TIMEOUT 3 s) + a round (1 s)


async def test_an_agent_that_wants_nothing_still_arbitrates_its_units(tmp_path: Path, clock):
    """Arbiters are drawn among every live agent: one that gets nothing answers the claims
    of the units it owns (the first stands, the next are refused), and the six agents that
    get the model still pull it from the mirror about once."""
    sim = make_sim(tmp_path, shards=2, shard_size=2 * MiB, rate=8 * MiB)
    async with trio.open_nursery() as agents:
        idle = await sim.start(agents, 6)
        async with trio.open_nursery() as gets:
            for i in range(6):
                await sim.start(agents, i)
            await trio.sleep(1.0)  # everyone met everyone
            for i in range(6):
                sim.get(gets, i)
        agents.cancel_scope.cancel()
    for i in range(6):
        sim.assert_exact(i)
    assert idle.sharing.stats.foreign_claims > 0
    assert sim.file_bytes() <= 1.02 * sim.size
