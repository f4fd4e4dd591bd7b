"""Agents in the virtual office: real `p2pmodel serve` processes, one per workstation
namespace, a shaped mirror, and `get`s that take the model over the LAN."""

from __future__ import annotations

import json
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


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return make_model(tmp_path_factory.mktemp("up"), "acme/office", shards=3, shard_size=8 * MiB)


def test_three_workstations_share_one_download(tmp_path: Path, repo: Repo) -> None:
    """Agents find each other unaided; the 2nd and 3rd workstations take the model from the
    LAN with exact bytes and < 2% of it from the mirror; status --json lists the peers."""
    total = sum(f.size for f in repo.files)
    with Network(3, mirror_rate=40 * MiB) as office:
        site = Site(office, repo, tmp_path)
        ws1, ws2, ws3 = office.workstations
        for ws in (ws1, ws2, ws3):
            site.serve(ws)
        ids = {ws.name: site.status(ws)["agent"] for ws in (ws1, ws2, ws3)}
        t0 = time.monotonic()
        wait_for(lambda: peers_alive(site, ws1) == {ids["ws2"], ids["ws3"]}, 10, "discovery")
        print(f"discovery: all peers of ws1 seen after {time.monotonic() - t0:.2f} s")

        r = site.cli(ws1, "get", "hf://acme/office", "--to", str(tmp_path / "out1"), "--json")
        assert r.returncode == 0, r.stderr
        assert_exact(site, tmp_path / "out1")
        first = site.served()
        for n, ws in ((2, ws2), (3, ws3)):
            r = site.cli(ws, "get", "hf://acme/office", "--to", str(tmp_path / f"out{n}"), "--json")
            assert r.returncode == 0, r.stderr
            assert_exact(site, tmp_path / f"out{n}")
            out = json.loads(r.stdout)
            assert out["from_peers"] >= 0.98 * total
        extra = site.served() - first
        print(f"mirror bytes for workstations 2 and 3: {extra} of {2 * total}")
        assert extra < 0.02 * total
        st = site.status(ws3)
        assert {p["agent"] for p in st["peers"] if p["alive"]} == {ids["ws1"], ids["ws2"]}
        assert st["seeding"] >= len({f.sha256 for f in repo.files})
