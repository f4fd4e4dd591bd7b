"""A blob that rotted on a seeder's disk: the peer that got its bad pieces says so
(``wire.Suspect``), the seeder checks its own copy, drops it from the store and the swarm, and
nothing else the report says is believed (real agents on the fakes, fake clock)."""

from __future__ import annotations

from pathlib import Path

import trio

from p2pmodel.core import wire
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.models import make_model

from .test_keeping import exact, get, office_config, start_agent, wait_until

MiB = 1024 * 1024


async def test_a_peer_reports_rotten_pieces_and_the_seeder_drops_its_copy(
    tmp_path: Path, clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """A holds a model whose shard then rots on A's disk; B's get rejects A's bad pieces,
    tells A, and ends exact from the mirror; A re-hashes its copy, removes it and stops
    seeding it; a second report of the same blob (or of one A does not hold) costs A no
    second hash."""
    repo = make_model(tmp_path / "up", "acme/rot", shards=1, shard_size=2 * MiB)
    office = SimLan(MemoryMirror([repo]), lan_rate=None)
    config = office_config(office, {})
    a = await start_agent(nursery, office, tmp_path / "a", config)
    await get(a, repo)
    shard = next(f for f in repo.files if f.lfs)
    digest = f"sha256:{shard.sha256}"
    blob = a.store.blob_path(digest)
    blob.chmod(0o644)
    with blob.open("r+b") as f:  # the disk rots a byte
        f.seek(MiB + 5)
        old = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([old[0] ^ 0x55]))
    b = await start_agent(nursery, office, tmp_path / "b", config)
    await wait_until(lambda: a.id in b.peers.alive_ids(), "B to see A")
    path = await get(b, repo)
    assert exact(path, repo)
    await wait_until(lambda: not blob.exists(), "A to drop its rotten copy")
    assert a.scrub.bad == 1
    assert not a.swarm.seeding(digest)
    checked = a.scrub.checked
    for report in (digest, "sha256:" + "0" * 64):
        await b.peers.request(a.id, wire.Suspect(report))
    await trio.sleep(5)
    assert a.scrub.checked == checked
