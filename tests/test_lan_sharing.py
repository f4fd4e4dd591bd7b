"""One internet download per office: agents that start the same get together split the mirror
work by leases on units and take the rest from each other (real agents in the virtual office)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pmodel.testing.models import Repo, make_model
from p2pmodel.testing.netns import Network, netns_available

from .netns_site import MiB, Site, assert_exact, peers_alive, wait_for

_UNAVAILABLE = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
]
SEGMENT_MIB = 4


def netns_site(office: Network, repo: Repo, tmp: Path) -> Site:
    site = Site(office, repo, tmp)
    site.extra_env = {"P2PMODEL_SEGMENT_MIB": str(SEGMENT_MIB)}
    site.serve_all(office.workstations)
    ids = {site.status(ws)["agent"] for ws in office.workstations}
    for ws in office.workstations:
        wait_for(
            lambda ws=ws: peers_alive(site, ws) == ids - {site.status(ws)["agent"]}, 15, "mesh"
        )
    return site


def start_gets(site: Site, tmp: Path) -> dict[str, subprocess.Popen[bytes]]:
    procs = {}
    for ws in site.office.workstations:
        out = tmp / f"out-{ws.name}"
        procs[ws.name] = site.office.popen(
            ws, site.get_cmd(out), env=site.env(ws), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    return procs


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, json.loads(out) if proc.returncode == 0 else {}, err.decode()


def test_workstations_starting_together_pull_the_model_from_the_mirror_once(tmp_path: Path):
    """Four workstations start the same get at once: the mirror serves the model about once
    (a single 24 MiB file cut into six 4 MiB units, plus a sharded model's small files), and
    every workstation ends with exact bytes, most of them from the LAN."""
    repo = make_model(tmp_path / "up", "acme/big", shards=2, shard_size=12 * MiB)
    with Network(4, mirror_rate=6 * MiB) as office:
        site = netns_site(office, repo, tmp_path)
        before = site.served()
        t0 = time.monotonic()
        procs = start_gets(site, tmp_path)
        results = {name: finish(p) for name, p in procs.items()}
        elapsed = time.monotonic() - t0
        served = site.served() - before
        for name, (rc, _, err) in results.items():
            assert rc == 0, f"{name}: {err}\n{site.log(office.host(name))}"
            assert_exact(site, tmp_path / f"out-{name}")
        total = site.total
        lan = sum(out["from_peers"] for _, out, _ in results.values())
        print(
            f"4 workstations, {total / MiB:.0f} MiB at 6 MiB/s: mirror served "
            f"{served / total:.3f}x the model in {elapsed:.1f} s; LAN {lan / MiB:.0f} MiB"
        )
        assert served <= 1.05 * total + 64 * 1024
        assert lan >= 2.5 * total


def test_killing_an_agent_mid_run_lets_the_others_finish(tmp_path: Path):
    """An agent dies (kill -9) while it holds leases: its units are taken over and the other
    workstations complete with exact bytes."""
    repo = make_model(tmp_path / "up", "acme/big", shards=1, shard_size=32 * MiB)
    with Network(3, mirror_rate=4 * MiB) as office:
        site = netns_site(office, repo, tmp_path)
        before = site.served()
        procs = start_gets(site, tmp_path)
        victim = office.workstations[1]
        wait_for(lambda: site.served() - before > 6 * MiB, 30, "the first units")
        site.kill(victim)
        procs[victim.name].kill()
        for ws in (office.workstations[0], office.workstations[2]):
            rc, _, err = finish(procs[ws.name])
            assert rc == 0, f"{ws.name}: {err}\n{site.log(ws)}"
            assert_exact(site, tmp_path / f"out-{ws.name}")
        served = site.served() - before
        print(f"one of 3 agents killed: mirror served {served / site.total:.3f}x the model")
        assert served <= 1.6 * site.total


def test_a_late_starter_takes_what_is_fetched_or_in_flight_from_the_peer(tmp_path: Path):
    """ws1 starts alone and leases every unit; ws2 and ws3 start when it is about a third
    through: they take the units ws1 fetched or is fetching from the LAN and the mirror still
    serves the model about once."""
    repo = make_model(tmp_path / "up", "acme/big", shards=1, shard_size=24 * MiB)
    with Network(3, mirror_rate=6 * MiB) as office:
        site = netns_site(office, repo, tmp_path)
        before = site.served()
        first, *late = office.workstations
        out = tmp_path / f"out-{first.name}"
        procs = {
            first.name: office.popen(
                first, site.get_cmd(out), env=site.env(first), stdout=subprocess.PIPE
            )
        }
        wait_for(lambda: site.served() - before > 8 * MiB, 30, "a third of the model")
        for ws in late:
            procs[ws.name] = office.popen(
                ws,
                site.get_cmd(tmp_path / f"out-{ws.name}"),
                env=site.env(ws),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        for ws in office.workstations:
            procs[ws.name].wait(timeout=120)
            assert procs[ws.name].returncode == 0, site.log(ws)
            assert_exact(site, tmp_path / f"out-{ws.name}")
        served = site.served() - before
        print(f"late starters: mirror served {served / site.total:.3f}x the model")
        assert served <= 1.05 * site.total + 64 * 1024


FAULTS = (
    "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request("
    "sys.argv[1], data=sys.argv[2].encode(), method='POST'), timeout=5).read()"
)


def test_a_shared_blob_that_fails_its_digest_ends_in_a_clear_error_not_a_hang(tmp_path: Path):
    """The only mirror flips bytes: the shared copy fails its digest, each agent then tries
    the mirror for the whole blob, fails again and says so (exit 4) in bounded time."""
    repo = make_model(tmp_path / "up", "acme/big", shards=1, shard_size=8 * MiB)
    with Network(2, mirror_rate=16 * MiB) as office:
        site = netns_site(office, repo, tmp_path)
        ws1 = office.workstations[0]
        ws1.run(
            sys.executable, "-c", FAULTS, f"{site.hub}/_faults", '{"corrupt": true}', check=True
        )
        procs = start_gets(site, tmp_path)
        for name, p in procs.items():
            rc, _, err = finish(p, timeout=90)
            assert rc == 4, f"{name}: exit {rc}: {err}"
            assert "digest mismatch" in err, err
        for ws in office.workstations:
            assert site.status(ws)["sharing"]["leases"] == []
