"""Every error a get can meet gives the same one line and exit code whichever way it runs:
mirrors only in the CLI (``--no-lan``), the CLI's embedded agent, or a running ``serve``.

The embedded agent and ``serve`` run libtorrent and mDNS, so those two paths run only inside
the test namespace (``lan``); in the host namespace the same cases run ``--no-lan`` alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from p2pmodel.testing.mirror import spawn
from p2pmodel.testing.models import Repo, make_model

from .serving import serving

MiB = 1024 * 1024
INTERRUPTED = "p2pmodel: interrupted; progress is saved, run it again to resume"


class Mirror:
    """The test mirror as a process on loopback, serving ``repos``."""

    def __init__(self, repos: Repo | Sequence[Repo], workdir: Path, *flags: str) -> None:
        paths = []
        for i, repo in enumerate([repos] if isinstance(repos, Repo) else repos):
            paths.append(workdir / f"repo{i}.json")
            paths[-1].write_text(repo.to_json())
        self.proc, urls = spawn(paths, workdir, *flags)
        self.hub_url = urls["hub_url"]

    def served(self) -> int:
        with urllib.request.urlopen(f"{self.hub_url}/_stats", timeout=5) as r:
            return int(json.load(r)["bytes_served"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "P2PMODEL_HOME": str(home), "P2PMODEL_LAN": "on"}


@contextlib.contextmanager
def agent(home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``p2pmodel serve`` on loopback for ``home`` (inside the test namespace)."""
    args = ["--interface", "127.0.0.1", "--port", "0"]
    with serving(home, args, env_for(home), home.parent / f"{home.name}.serve.log") as proc:
        yield proc


def get_cmd(ref: str, path: str) -> list[str]:
    argv = [sys.executable, "-m", "p2pmodel", "get", ref, "--progress", "none"]
    return [*argv, "--no-lan"] if path == "no-lan" else argv


def configure(home: Path, hub_url: str) -> None:
    (home / "config.toml").write_text(
        f'[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["{hub_url}/"]\n'
    )


def one_line(stderr: str, home: Path) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0].replace(str(home), "HOME")


def run_get(home: Path, ref: str, path: str) -> tuple[int, str]:
    """Run ``get`` the way ``path`` says; (exit code, its one stderr line)."""
    with agent(home) if path == "serve" else contextlib.nullcontext():
        r = subprocess.run(
            get_cmd(ref, path),
            env=env_for(home),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    return r.returncode, one_line(r.stderr, home)


PATHS = {
    "host": ["no-lan"],
    "netns": ["no-lan", "embedded", "serve"],
}
MODES = ["host", pytest.param("netns", marks=pytest.mark.lan)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return make_model(tmp_path_factory.mktemp("r"), "acme/errs", shards=2, shard_size=4 * MiB)


def same_everywhere(outcomes: dict[str, tuple[int, str]], code: int, needle: str) -> None:
    for path, (rc, line) in outcomes.items():
        assert rc == code, f"{path}: exit {rc}: {line}"
        assert needle in line, f"{path}: {line}"
    assert len({line for _, line in outcomes.values()}) == 1, outcomes


def homes(tmp_path: Path, mode: str) -> dict[str, Path]:
    out = {}
    for path in PATHS[mode]:
        out[path] = tmp_path / path
        out[path].mkdir()
    return out


@pytest.mark.parametrize("mode", MODES)
def test_an_unknown_repository_is_exit_2(tmp_path: Path, repo: Repo, mode: str) -> None:
    """A repository no mirror has: exit 2, the same line on every path."""
    mirror = Mirror(repo, tmp_path)
    try:
        outcomes = {}
        for path, home in homes(tmp_path, mode).items():
            configure(home, mirror.hub_url)
            outcomes[path] = run_get(home, "hf://acme/nope", path)
        same_everywhere(outcomes, 2, "hf://acme/nope not found")
    finally:
        mirror.stop()


@pytest.mark.parametrize("mode", MODES)
def test_unreachable_mirrors_are_exit_3(tmp_path: Path, repo: Repo, mode: str) -> None:
    """Nothing answers where the mirror should be: exit 3, naming it, on every path."""
    outcomes = {}
    for path, home in homes(tmp_path, mode).items():
        configure(home, "http://127.0.0.1:9")
        outcomes[path] = run_get(home, f"hf://{repo.repo_id}", path)
    same_everywhere(outcomes, 3, "cannot reach")


def test_an_unreachable_origin_no_rule_covers_says_how_to_add_a_mirror(tmp_path: Path) -> None:
    """Without a ``[[mirror]]`` rule for the origin, the one line of an unreachable get says
    that such a rule is how to use a mirror (and which config file takes it); with a rule for
    it, the same failure does not."""
    with socket.socket() as dead:  # bound, never listening: connections are refused
        dead.bind(("127.0.0.1", 0))
        origin = f"http://127.0.0.1:{dead.getsockname()[1]}"
        outcomes = {}
        for case in ("no rule", "rule"):
            home = tmp_path / case.replace(" ", "-")
            home.mkdir()
            if case == "rule":
                (home / "config.toml").write_text(
                    f'[[mirror]]\nfor = "{origin}/"\nuse = ["{origin}/"]\n'
                )
            env = {**os.environ, "P2PMODEL_HOME": str(home), "P2PMODEL_LAN": "off"}
            env["HF_ENDPOINT"] = origin
            r = subprocess.run(
                get_cmd("hf://acme/unreachable", "no-lan"),
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            outcomes[case] = (r.returncode, one_line(r.stderr, home))
    rc, line = outcomes["no rule"]
    assert rc == 3, line
    assert line.startswith("p2pmodel: error: cannot reach hf://acme/unreachable: "), line
    assert line.endswith(
        f"(no [[mirror]] rule covers {origin}/: add one in HOME/config.toml to use a mirror)"
    ), line
    rc, line = outcomes["rule"]
    assert rc == 3 and "cannot reach" in line and "[[mirror]]" not in line, line


@pytest.mark.parametrize("mode", MODES)
def test_bad_bytes_from_every_mirror_are_exit_4(tmp_path: Path, repo: Repo, mode: str) -> None:
    """The only mirror corrupts what it sends: exit 4 on every path, nothing stored."""
    mirror = Mirror(repo, tmp_path, "--corrupt")
    try:
        outcomes = {}
        for path, home in homes(tmp_path, mode).items():
            configure(home, mirror.hub_url)
            outcomes[path] = run_get(home, f"hf://{repo.repo_id}", path)
            stored = list((home / "store" / "blobs" / "sha256").glob("*/*"))
            assert stored == [], f"{path}: a blob with bad bytes was stored"
        same_everywhere(outcomes, 4, "digest mismatch from every mirror")
    finally:
        mirror.stop()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs"
)
def test_a_full_disk_is_exit_5(tmp_path: Path, repo: Repo, mode: str) -> None:
    """The store's filesystem is too small for the model: exit 5 on every path."""
    mirror = Mirror(repo, tmp_path)
    try:
        outcomes = {}
        for path, home in homes(tmp_path, mode).items():
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(home)], check=True
            )
            try:
                configure(home, mirror.hub_url)
                outcomes[path] = run_get(home, f"hf://{repo.repo_id}", path)
            finally:
                subprocess.run(["umount", "-l", str(home)], check=False)
        same_everywhere(outcomes, 5, "disk full")
    finally:
        mirror.stop()


@pytest.mark.parametrize("mode", MODES)
def test_ctrl_c_is_exit_130_and_keeps_what_arrived(tmp_path: Path, repo: Repo, mode: str) -> None:
    """Ctrl-C mid-transfer: exit 130 with the same line on every path, and the next get
    resumes (it fetches less than the whole model)."""
    total = sum(f.size for f in repo.files)
    mirror = Mirror(repo, tmp_path, "--per-conn-rate", str(256 * 1024))
    try:
        for path, home in homes(tmp_path, mode).items():
            configure(home, mirror.hub_url)
            with agent(home) if path == "serve" else contextlib.nullcontext():
                start = mirror.served()
                proc = subprocess.Popen(
                    get_cmd(f"hf://{repo.repo_id}", path),
                    env=env_for(home),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                deadline = time.monotonic() + 60
                while mirror.served() - start < total // 4:
                    assert proc.poll() is None, proc.communicate()
                    assert time.monotonic() < deadline, "the get made no progress"
                    time.sleep(0.05)
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=30)
                assert proc.returncode == 130, f"{path}: {err}"
                assert one_line(err, home) == INTERRUPTED, f"{path}: {err}"
            again_from = mirror.served()
            r = subprocess.run(
                get_cmd(f"hf://{repo.repo_id}", "no-lan"),
                env=env_for(home),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert r.returncode == 0, r.stderr
            assert mirror.served() - again_from < 0.9 * total, f"{path}: nothing was kept"
    finally:
        mirror.stop()
