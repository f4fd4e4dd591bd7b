"""Agents in the virtual office: real `p2pmodel serve` processes, one per workstation
namespace, a shaped mirror, and `get`s that take the model over the LAN."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from p2pmodel.testing.models import Repo, make_model
from p2pmodel.testing.office import Host, Office, netns_available

_UNAVAILABLE = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
]
MiB = 1024 * 1024
STATS = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)


class Site:
    """An office whose workstations each run an agent, and a mirror serving ``repo``."""

    def __init__(self, office: Office, repo: Repo, tmp: Path) -> None:
        self.office = office
        self.repo = repo
        mirror = office.mirror_host
        assert mirror is not None
        repo_json = tmp / "repo.json"
        repo_json.write_text(repo.to_json())
        ready = tmp / "mirror.ready"
        office.popen(
            mirror,
            [sys.executable, "-m", "p2pmodel.testing.mirror", "--repo-json", str(repo_json),
             "--host", mirror.ip, "--port", "8000", "--cdn-port", "8001",
             "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(ready.exists, 20, "mirror start")
        self.hub = f"http://{mirror.ip}:8000"
        self.homes: dict[str, Path] = {}
        for ws in office.workstations:
            home = tmp / ws.name
            home.mkdir()
            (home / "config.toml").write_text(
                f'[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["{self.hub}/"]\n'
            )
            self.homes[ws.name] = home

    def env(self, ws: Host) -> dict[str, str]:
        return {"P2PMODEL_HOME": str(self.homes[ws.name]), "P2PMODEL_LAN": "on"}

    def serve(self, ws: Host) -> Any:
        proc = self.office.popen(
            ws,
            [sys.executable, "-m", "p2pmodel", "serve", "--interface", ws.ip],
            env=self.env(ws),
            stderr=subprocess.DEVNULL,
        )
        sock = self.homes[ws.name] / "run" / "control.sock"
        wait_for(sock.exists, 20, f"agent on {ws.name}")
        return proc

    def cli(self, ws: Host, *args: str, timeout: float = 120) -> Any:
        return ws.run(sys.executable, "-m", "p2pmodel", *args, env=self.env(ws), timeout=timeout)

    def served(self) -> int:
        ws = self.office.workstations[0]
        r = ws.run(sys.executable, "-c", STATS, f"{self.hub}/_stats", check=True)
        return int(json.loads(r.stdout)["bytes_served"])

    def status(self, ws: Host) -> dict[str, Any]:
        r = self.cli(ws, "status", "--json", timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]


def wait_for(cond: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def peers_alive(site: Site, ws: Host) -> set[str]:
    return {p["agent"] for p in site.status(ws)["peers"] if p["alive"]}


def assert_exact(site: Site, out: Path) -> None:
    for f in site.repo.files:
        assert (out / f.path).read_bytes() == f.data_path.read_bytes(), f.path


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return make_model(tmp_path_factory.mktemp("up"), "acme/office", shards=3, shard_size=8 * MiB)


def test_three_workstations_share_one_download(tmp_path: Path, repo: Repo) -> None:
    """Agents find each other unaided; the 2nd and 3rd workstations take the model from the
    LAN with exact bytes and < 2% of it from the mirror; status --json lists the peers."""
    total = sum(f.size for f in repo.files)
    with Office(3, mirror_rate=40 * MiB) as office:
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
