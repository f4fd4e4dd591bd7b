"""The dashboard in a real headless Chromium, and ``/metrics`` as Prometheus reads it: a real
agent (every service) on the in-memory LAN fakes, with a peer and a get in flight, serving both
over real HTTP on loopback."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from p2pmodel.core.config import parse_config
from p2pmodel.core.refs import parse_ref
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.services.get import GetRequest
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.mirror import Faults
from p2pmodel.testing.models import Repo, make_model

MiB = 1024 * 1024
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# What a headless Chromium needs to stay off every network but the page's.
QUIET = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]


async def two_agents(
    nursery: trio.Nursery, tmp: Path, repo: Repo, rate: int, office: SimLan | None = None
) -> list[Agent]:
    """Agents A (serving the dashboard) and B on one fake LAN, one mirror at ``rate``."""
    office = office or SimLan(MemoryMirror([repo], Faults(total_rate=rate)), lan_rate=None)
    use = [office.mirror.hub_url + "/"]
    config = parse_config({"mirror": [{"for": "https://huggingface.co/", "use": use}]}, {})
    agents = []
    for name, endpoint in (("a", "127.0.0.1:0"), ("b", None)):
        home = tmp / name
        home.mkdir()
        opts = AgentOptions(rpc_port=0, hf_endpoint=endpoint)
        agents.append(await nursery.start(Agent(home, config, opts, office.outside()).run))
    return agents


async def wait_until(cond: Any, seconds: float = 20) -> None:
    """Poll the agents' state (bounded), as the multi-host tests do."""
    with trio.fail_after(seconds):
        while not cond():  # noqa: ASYNC110 - state of services running beside the test
            await trio.sleep(0.05)


async def chromium(user: Path, url: str, *flags: str) -> str:
    """Run headless Chromium on a loopback ``url`` (4 s of virtual time); its stdout."""
    assert url.startswith("http://127.0.0.1:"), url
    done = await trio.run_process(
        [CHROMIUM or "chromium", *QUIET, f"--user-data-dir={user}", "--virtual-time-budget=4000",
         *flags, url],
        capture_stdout=True, capture_stderr=True,
    )  # fmt: skip
    return done.stdout.decode()


async def wait_alive(a: Agent, b: Agent, seconds: float = 20) -> None:
    """Until ``a`` lists ``b`` alive: woken by ``a``'s peer service on each change."""
    alive = trio.Event()

    def check() -> None:
        if b.id in a.peers.alive_ids():
            alive.set()

    a.peers.watch(check)
    check()
    with trio.fail_after(seconds):
        await alive.wait()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup installs it)")
async def test_the_dashboard_shows_a_peer_and_a_transfer_in_chromium(nursery, tmp_path: Path):
    """Chromium renders the page, whose script fills in the peer (by host name and agent id,
    alive), the file in flight with its source, and the plot's axes: time in minutes ago with
    clock times, rate in MB/s; a screenshot is saved (``P2PMODEL_DASHBOARD_PNG``: also there)."""
    repo = make_model(tmp_path / "r", "acme/dash", shards=1, shard_size=8 * MiB)
    office = SimLan(MemoryMirror([repo], Faults(total_rate=MiB)), lan_rate=None)
    a, b = await two_agents(nursery, tmp_path, repo, rate=MiB, office=office)
    await wait_alive(a, b)
    # B is also a static peer of A's config, by the name the office's DNS gives it.
    office.net.names["ws-bob.office.test"] = b.peers.interfaces[0]
    a.peers.set_static_peers([f"ws-bob.office.test:{b.peers.rpc_port}"])
    await wait_until(lambda: any(p["host"] for p in a.status()["peers"]))
    req = GetRequest(parse_ref(f"hf://{repo.repo_id}"))
    nursery.start_soon(a.gets.get, req)
    await wait_until(lambda: any(t["have"] > 0 for t in a.status()["transfers"]))
    await wait_until(lambda: bool(a.status().get("from_hubs")))
    assert a.hf is not None
    user = tmp_path / "chromium"
    page = await chromium(user, a.hf.url + "/", "--dump-dom")
    assert b.id in page and ">alive<" in page
    assert ">ws-bob.office.test<" in page
    weights = next(f for f in repo.files if f.lfs)
    assert weights.path in page
    assert "hub.mirror.test" in page  # the source of the bytes in flight
    assert "from the hubs: Hugging Face " in page  # bytes by hub
    assert "<th>where</th><th>rate</th>" in page and ">local<" in page  # one segment
    # The plot's axes: titles with units, rate ticks from 0, time ticks back from now.
    assert '<text id="y-title"' in page and ">rate (MB/s)</text>" in page
    assert ">time: minutes ago (local time)</text>" in page
    assert 'class="y-tick"' in page and ">0</text>" in page
    assert ">now</text>" in page and ">1 min ago</text>" in page and ">5 min ago</text>" in page
    assert re.search(r'class="x-clock"[^>]*>\d\d:\d\d</text>', page)
    shot = tmp_path / "dashboard.png"
    await chromium(user, a.hf.url + "/", "--window-size=1200,1100", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("P2PMODEL_DASHBOARD_PNG"):
        shutil.copy(shot, os.environ["P2PMODEL_DASHBOARD_PNG"])


async def test_metrics_in_prometheus_text(nursery, tmp_path: Path):
    """``/metrics`` parses as Prometheus text and says what happened: the model's bytes from
    its mirror, one get completed in the duration histogram, the peer alive, blobs seeded."""
    repo = make_model(tmp_path / "r", "acme/metrics", shards=1, shard_size=2 * MiB)
    a, b = await two_agents(nursery, tmp_path, repo, rate=64 * MiB)
    await wait_alive(a, b)
    assert a.hf is not None

    async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with httpx.AsyncClient() as http:
            r = await http.get(a.hf.url + "/metrics")  # type: ignore[union-attr]
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text)
            for s in fam.samples
        }

    size = sum(f.size for f in repo.files)
    mirror = (("mirror", "http://hub.mirror.test"),)
    before = await scrape()
    assert mirror[0] not in {k for name, labels in before for k in labels}
    assert before[("p2pmodel_gets_total", (("outcome", "completed"),))] == 0
    assert before[("p2pmodel_store_bytes", ())] == 0
    await a.gets.get(GetRequest(parse_ref(f"hf://{repo.repo_id}")))
    samples = await scrape()
    assert samples[("p2pmodel_mirror_bytes_total", mirror)] == size
    assert samples[("p2pmodel_get_duration_seconds_count", ())] == 1
    assert samples[("p2pmodel_gets_total", (("outcome", "completed"),))] == 1
    assert samples[("p2pmodel_peers_alive", ())] == 1
    assert samples[("p2pmodel_blobs_seeded", ())] == len({f.sha256 for f in repo.files})
    assert samples[("p2pmodel_store_bytes", ())] == size
    assert samples[("p2pmodel_internet_bytes_saved_total", ())] == 0
    assert ("p2pmodel_uploaded_bytes_total", ()) in samples
