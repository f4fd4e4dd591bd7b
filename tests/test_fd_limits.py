"""A running ``serve`` under a low open-files limit (a systemd user unit starts with a soft
limit of 1024) survives a flood of idle TCP connections from a local user to its HTTP
endpoint, its peer link and its libtorrent port: it keeps answering ``status`` and a ``get``,
and its HTTP server answers again once the flood lets go. ``serve`` runs libtorrent and mDNS,
so this runs inside the test namespace only (``lan``)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pmodel.core.openfiles import budget
from p2pmodel.testing.models import make_model

from .serving import serving
from .test_error_paths import Mirror

pytestmark = pytest.mark.lan
MiB = 1024 * 1024
FILES = 1024  # soft and hard: the agent cannot raise it
SOURCES = 64  # loopback addresses the flood comes from


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "P2PMODEL_HOME": str(home), "P2PMODEL_LAN": "on"}


def _low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))


@contextlib.contextmanager
def low_limit_agent(home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``serve`` with open files limited to ``FILES`` (soft and hard); it follows the
    namespace's addresses (no ``--interface``), as an agent does."""
    args = ["--port", "0"]
    with serving(home, args, _env(home), home.parent / "serve.log", _low_limit) as proc:
        yield proc


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pmodel", *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def flood(host: str, port: int, count: int, seconds: float) -> list[socket.socket]:
    """Up to ``count`` idle TCP connections to ``host:port`` within ``seconds``, from
    ``SOURCES`` loopback addresses in turn (so the caps in all are reached, not only those per
    address); a connect the server's full backlog leaves unanswered for half a second is
    given up."""
    held: list[socket.socket] = []
    deadline = time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > deadline:
            break
        s = socket.socket()
        s.settimeout(0.5)
        try:
            s.bind((f"127.0.0.{2 + i % SOURCES}", 0))
            s.connect((host, port))
        except OSError:
            s.close()
            continue
        held.append(s)
    return held


def open_files_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200 and "agent" in json.load(r)
    except OSError:
        return False


def test_a_connection_flood_under_a_low_file_limit_leaves_the_agent_serving(
    tmp_path: Path,
) -> None:
    """1,100 idle connections to the HTTP endpoint, 600 to the peer link and 400 to the
    libtorrent port, from 64 addresses, with 1024 open files: the agent keeps a reserve of
    files, stays up (also past its next look at the network), answers status and a get
    during the flood, and its HTTP endpoint answers again when the flood lets go."""
    repo = make_model(tmp_path / "r", "acme/flood", shards=1, shard_size=MiB)
    (tmp_path / "m").mkdir()
    mirror = Mirror(repo, tmp_path / "m")
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        'hf_endpoint = "127.0.0.1:0"\n'
        f'[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["{mirror.hub_url}/"]\n'
    )
    held: list[socket.socket] = []
    try:
        with low_limit_agent(home) as proc:
            before = json.loads(cli(home, "status", "--json").stdout)
            url = str(before["hf_endpoint"])
            http_host, http_port = url.removeprefix("http://").rsplit(":", 1)
            held += flood(http_host, int(http_port), 1100, 10)
            held += flood("127.0.0.1", int(before["rpc_port"]), 600, 5)
            # libtorrent stops accepting at its connections_limit: the rest wait in its backlog.
            held += flood("127.0.0.1", int(before["torrent_port"]), 400, 4)
            opened = len(held)
            fds = open_files_of(proc.pid)
            deadline = time.monotonic() + 5  # past the next look at the network (every 2 s)
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            log = (tmp_path / "serve.log").read_text()
            assert proc.poll() is None, log[-3000:]
            assert opened > FILES, opened
            assert fds < FILES - budget(FILES).link.total, fds  # the caps leave a reserve
            st = cli(home, "status", "--json")
            assert st.returncode == 0, st.stderr
            got = cli(home, "get", "hf://acme/flood", "--progress", "none")
            assert got.returncode == 0, got.stderr + log[-3000:]
            top = Path(got.stdout.strip().splitlines()[-1])
            for f in repo.files:
                assert (top / f.path).read_bytes() == f.data_path.read_bytes(), f.path
            for s in held:
                s.close()
            held.clear()
            deadline = time.monotonic() + 10
            while not http_ok(url + "/api/p2pmodel/status"):
                assert time.monotonic() < deadline, "the HTTP endpoint does not answer again"
                time.sleep(0.2)
            assert proc.poll() is None
            assert "Too many open files" not in (tmp_path / "serve.log").read_text()
    finally:
        for s in held:
            s.close()
        mirror.stop()
