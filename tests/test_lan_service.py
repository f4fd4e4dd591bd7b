"""``p2pmodel serve`` as a background service, in the virtual office: SIGHUP re-reads the config
(limits, static peers) while a get runs, without dropping it; a bad config is logged and the
agent goes on; log lines carry syslog priorities when stderr is the journal's."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
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
    return make_model(tmp_path_factory.mktemp("up"), "acme/hup", shards=2, shard_size=3 * MiB)


def test_sighup_reloads_limits_and_peers_while_a_get_runs(tmp_path: Path, repo: Repo) -> None:
    """A get throttled to 1 MB/s by [limits] goes on through a SIGHUP that brings a higher
    limit (applied at once) and ends exact; the static peer added to the config is dialled; a
    broken config on the next SIGHUP is logged at error level and the agent keeps its config;
    log lines carry syslog priorities; ``status`` shows the limits in force."""
    with Network(2, prefix=f"p2pm-h11-{secrets.token_hex(2)}") as office:
        site = Site(office, repo, tmp_path)
        ws1, ws2 = office.workstations
        log = site.homes[ws1.name] / "serve.log"
        log.touch()
        st = os.stat(log)
        site.extra_env = {"P2PMODEL_LOG": "info", "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        site.configure(ws1, '[limits]\nmirror_download = "1MB/s"')
        site.serve(ws1, "--no-discovery")
        site.serve(ws2, "--no-discovery")
        ws2_id = site.status(ws2)["agent"]
        assert site.status(ws1)["limits"]["mirror_download"] == 1e6
        shown = site.cli(ws1, "status").stdout
        assert "limits: mirror download 1.0 MB/s, LAN upload unlimited" in shown

        out = tmp_path / "out"
        get = office.popen(
            ws1,
            site.get_cmd(out),
            env=site.env(ws1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: site.status(ws1)["from_mirrors"] > 512 * 1024, 30, "the get to start")
        site.configure(ws1, f'peers = ["{ws2.ip}:7420"]\n[limits]\nmirror_download = "100MB/s"')
        site.kill(ws1, signal.SIGHUP)
        wait_for(lambda: site.status(ws1)["limits"]["mirror_download"] == 100e6, 10, "reload")
        wait_for(lambda: ws2_id in peers_alive(site, ws1), 15, "the static peer")
        stdout, stderr = get.communicate(timeout=120)
        assert get.returncode == 0, stderr.decode()
        assert json.loads(stdout)["fetched"] >= sum(f.size for f in repo.files) - 1024
        assert_exact(site, out)

        (site.homes[ws1.name] / "config.toml").write_text("store_max = 'lots'\n")
        site.kill(ws1, signal.SIGHUP)
        wait_for(lambda: "config not reloaded" in site.log(ws1), 10, "the bad config logged")
        assert site.procs[ws1.name].poll() is None
        assert site.status(ws1)["limits"]["mirror_download"] == 100e6
        lines = site.log(ws1, None).splitlines()
        assert any(
            line.startswith("<6>p2pmodel.services.limits: limits: mirror download 100.0 MB/s")
            for line in lines
        )
        assert any(
            line.startswith("<3>p2pmodel.services.agent: config not reloaded: bad config")
            for line in lines
        )
