"""The ``p2pmodel`` command as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pmodel.testing.models import Repo, make_model

MiB = 1024 * 1024


def run_cli(
    home: Path, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env or {}), "P2PMODEL_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "p2pmodel", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class MirrorProcess:
    def __init__(self, repo: Repo, workdir: Path, *flags: str) -> None:
        repo_json = workdir / f"{repo.repo_id.replace('/', '_')}.json"
        repo_json.write_text(repo.to_json())
        ready = workdir / "mirror.ready"
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "p2pmodel.testing.mirror", "--repo-json", str(repo_json),
                "--host", "127.0.0.1", "--port", "0", "--cdn-port", "0",
                "--ready-file", str(ready), *flags,
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert self.proc.poll() is None, "mirror exited"
            assert time.monotonic() < deadline, "mirror did not start"
            time.sleep(0.02)
        self.hub_url = json.loads(ready.read_text())["hub_url"]

    def served(self) -> int:
        with urllib.request.urlopen(f"{self.hub_url}/_stats", timeout=5) as r:
            return int(json.load(r)["bytes_served"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def cli_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def mirror_factory(tmp_path: Path) -> Iterator[object]:
    started: list[MirrorProcess] = []

    def start(repo: Repo, *flags: str) -> MirrorProcess:
        m = MirrorProcess(repo, tmp_path, *flags)
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


def configure(home: Path, mirror_url: str, repo: Repo) -> None:
    (home / "config.toml").write_text(
        f'[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["{mirror_url}/"]\n\n'
        f'[models]\n"tiny:v1" = "hf://{repo.repo_id}@{repo.commit}"\n'
    )


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["get", "qwen-imag:v1.0"], 2, "did you mean qwen-image:v1.0"),
        (["get", "Bad Name"], 2, "bad model name"),
        (["get", "hf://only-org"], 2, "bad repository"),
        (["get", "ftp://x/y"], 2, "unknown scheme"),
        (["get"], 2, "required"),
        (["frobnicate"], 2, "invalid choice"),
        (["get", "https://example.invalid/f.bin", "--sha256", "xyz"], 2, "--sha256"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(cli_home, args, code, needle):
    """Bad input prints exactly one line on stderr, no traceback, and a user-error exit code."""
    r = run_cli(cli_home, *args)
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


def test_bad_config_is_one_line(cli_home):
    """A broken config.toml is reported with its path on one line."""
    (cli_home / "config.toml").write_text("[[mirror]]\nfor = 3\n")
    r = run_cli(cli_home, "get", "hf://acme/tiny")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "config.toml" in r.stderr


def test_unreachable_mirrors_exit_3_naming_them(cli_home):
    """With every mirror refusing connections, get exits 3 and names the mirror."""
    (cli_home / "config.toml").write_text(
        '[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["http://127.0.0.1:9/"]\n'
    )
    r = run_cli(cli_home, "get", "hf://acme/tiny")
    assert r.returncode == 3, r.stderr
    assert "127.0.0.1:9" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_get_json_and_ls(cli_home, tmp_path, mirror_factory):
    """get --json describes the model; ls --json lists it as complete."""
    repo = make_model(tmp_path / "r", "acme/tiny", shards=2, shard_size=MiB)
    mirror = mirror_factory(repo)
    configure(cli_home, mirror.hub_url, repo)
    r = run_cli(cli_home, "get", "tiny:v1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["commit"] == repo.commit
    assert {f["path"] for f in out["files"]} == {f.path for f in repo.files}
    for f in repo.files:
        assert (Path(out["path"]) / f.path).read_bytes() == f.data_path.read_bytes()
    listing = json.loads(run_cli(cli_home, "ls", "--json").stdout)
    assert [(x["ref"], x["complete"]) for x in listing] == [("tiny:v1", True)]


def test_kill_9_at_40_percent_then_rerun_pulls_at_most_1_1x(cli_home, tmp_path, mirror_factory):
    """A get killed with SIGKILL at ~40% and run again ends exact, pulling <= 1.1x the model."""
    repo = make_model(tmp_path / "r", "acme/tiny", shards=4, shard_size=12 * MiB)
    total = sum(f.size for f in repo.files)
    # Slow enough that a run takes seconds: what a crash loses is ~0.15 s of traffic.
    mirror = mirror_factory(repo, "--per-conn-rate", str(2 * MiB), "--total-rate", str(16 * MiB))
    configure(cli_home, mirror.hub_url, repo)
    env = {**os.environ, "P2PMODEL_HOME": str(cli_home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pmodel", "get", "tiny:v1", "--progress", "none"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while mirror.served() < 0.4 * total:
            assert proc.poll() is None, "get ended before 40%"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    out = tmp_path / "out"
    r = run_cli(cli_home, "get", "tiny:v1", "--to", str(out), "--progress", "plain")
    assert r.returncode == 0, r.stderr
    for f in repo.files:
        assert (out / f.path).read_bytes() == f.data_path.read_bytes()
    pulled = mirror.served()
    print(f"kill -9 at 40%, rerun: pulled {pulled / total:.3f}x the model")
    assert pulled <= 1.1 * total, f"pulled {pulled / total:.3f}x"


def test_plain_progress_when_not_a_tty(cli_home, tmp_path, mirror_factory):
    """Without a terminal, progress is plain lines, one per finished file."""
    repo = make_model(tmp_path / "r", "acme/tiny", shards=2, shard_size=MiB)
    mirror = mirror_factory(repo)
    configure(cli_home, mirror.hub_url, repo)
    r = run_cli(cli_home, "get", "tiny:v1")
    assert r.returncode == 0, r.stderr
    done = [line for line in r.stderr.splitlines() if line.startswith("done: ")]
    assert len(done) == len(repo.files)
    assert "\x1b[" not in r.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs"
)
def test_disk_full_is_exit_5(tmp_path, mirror_factory):
    """When the store's filesystem is full, get exits 5 with one line naming disk space."""
    repo = make_model(tmp_path / "r", "acme/tiny", shards=2, shard_size=4 * MiB)
    mirror = mirror_factory(repo)
    home = tmp_path / "small"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(home)], check=True)
    try:
        configure(home, mirror.hub_url, repo)
        r = run_cli(home, "get", "tiny:v1", "--progress", "none")
        assert r.returncode == 5, r.stderr
        assert "disk full" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_verify_finds_and_removes_a_rotten_blob(cli_home, tmp_path, mirror_factory):
    """verify re-hashes the store, removes a blob whose bytes changed, and a get restores it."""
    repo = make_model(tmp_path / "r", "acme/tiny", shards=2, shard_size=MiB)
    mirror = mirror_factory(repo)
    configure(cli_home, mirror.hub_url, repo)
    assert run_cli(cli_home, "get", "tiny:v1").returncode == 0
    r = run_cli(cli_home, "verify", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"checked": len({f.sha256 for f in repo.files}), "bad": []}
    victim = next(f for f in repo.files if f.lfs)
    blob = cli_home / "store" / "blobs" / "sha256" / victim.sha256[:2] / victim.sha256
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as fh:
        first = fh.read(1)
        fh.seek(0)
        fh.write(bytes([first[0] ^ 0xFF]))
    r = run_cli(cli_home, "verify", "tiny:v1")
    assert r.returncode == 4
    assert f"sha256:{victim.sha256}" in r.stdout
    assert not blob.exists()
    out = tmp_path / "again"
    assert run_cli(cli_home, "get", "tiny:v1", "--to", str(out)).returncode == 0
    assert (out / victim.path).read_bytes() == victim.data_path.read_bytes()


def test_key_new_prints_a_fresh_key_and_fingerprint_reads_it(tmp_path: Path) -> None:
    """``key new`` prints a different valid key each time, on stdout only; with it in the
    config, ``key fingerprint`` prints its fingerprint, and without any key says so."""
    a, b = run_cli(tmp_path, "key", "new"), run_cli(tmp_path, "key", "new")
    assert a.returncode == b.returncode == 0
    key = a.stdout.strip()
    assert key.startswith("p2pk1-") and key != b.stdout.strip() and key not in a.stderr
    none = run_cli(tmp_path, "key", "fingerprint")
    assert none.returncode == 2 and "no office key" in none.stderr
    (tmp_path / "config.toml").write_text(f'office_key = "{key}"\n')
    fp = run_cli(tmp_path, "key", "fingerprint")
    assert fp.returncode == 0 and len(fp.stdout.strip()) == 16 and fp.stdout.strip() not in key
    (tmp_path / "config.toml").write_text(f'office_key = "{key[:-3]}"\n')
    bad = run_cli(tmp_path, "key", "fingerprint")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and key[:-3] not in bad.stderr


def test_publish_links_the_files_and_refuses_other_content_without_force(tmp_path: Path) -> None:
    """``publish`` stores a directory as hard links (no second copy), lists it like any
    model, answers a second publish of the same files as a no-op, refuses other content
    under the name unless --force, and refuses paths a manifest may not have."""
    home, model = tmp_path / "home", tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "sub" / "w.bin").write_bytes(os.urandom(MiB))
    (model / "a.json").write_text("{}")
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref")
    r = run_cli(home, "publish", str(model), "team:v1", "--json", env={"P2PMODEL_LAN": "off"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [f["path"] for f in out["files"]] == ["a.json", "sub/w.bin"]
    assert out["source"].startswith("published:") and not out["already_published"]
    blob = home / "store" / "blobs" / "sha256" / out["files"][1]["digest"][7:9]
    assert (blob / out["files"][1]["digest"][7:]).stat().st_ino == (
        model / "sub/w.bin"
    ).stat().st_ino
    again = run_cli(home, "publish", str(model), "team:v1", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["already_published"]
    (model / "b.txt").write_text("new")
    refused = run_cli(home, "publish", str(model), "team:v1")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert refused.stderr.count("p2pmodel: error") == 1
    forced = run_cli(home, "publish", str(model), "team:v1", "--force", "--json")
    assert forced.returncode == 0 and len(json.loads(forced.stdout)["files"]) == 3
    got = run_cli(home, "get", "team:v1")
    assert got.returncode == 0 and (Path(got.stdout.strip()) / "b.txt").read_text() == "new"
    (model / "bad\\name").write_text("x")
    bad = run_cli(home, "publish", str(model), "team:v2")
    assert bad.returncode == 2 and "backslash" in bad.stderr and "Traceback" not in bad.stderr
    hf = run_cli(home, "publish", str(model), "hf://a/b")
    assert hf.returncode == 2 and "NAME:TAG" in hf.stderr
