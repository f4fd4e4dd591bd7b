"""``get --hf-cache`` and ``get --to`` leave what the real ``huggingface_hub`` client reads:
with ``HF_HUB_OFFLINE=1`` it finds the model in its cache (hardlinked, no second copy of the
weights), and ``snapshot_download(local_dir=DIR)`` sees the files ``--to`` placed as its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from p2pmodel.testing.models import Repo, make_model

from .test_cli import MirrorProcess, run_cli

MiB = 1024 * 1024
OFFLINE = """
import json, sys
from huggingface_hub import snapshot_download
kw = json.loads(sys.argv[1])
print(snapshot_download(**kw))
"""


def offline(env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", OFFLINE, json.dumps(kw)],
        env={**os.environ, **env, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def fetch(home: Path, repo: Repo, tmp: Path, *args: str, env: dict[str, str]) -> str:
    mirror = MirrorProcess(repo, tmp)
    try:
        (home / "config.toml").write_text(
            f'[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["{mirror.hub_url}/"]\n'
        )
        r = run_cli(home, "get", f"hf://{repo.repo_id}", "--no-lan", *args, env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()
    finally:
        mirror.stop()


def test_hf_cache_export_is_read_offline_by_the_client(tmp_path: Path) -> None:
    """After ``get --hf-cache``, the client with ``HF_HUB_OFFLINE=1`` resolves the repository
    to the exported snapshot: exact files, blobs that are the store's own inodes."""
    repo = make_model(tmp_path / "r", "acme/tiny", shards=2, shard_size=MiB)
    home, cache = tmp_path / "home", tmp_path / "hf" / "hub"
    home.mkdir()
    env = {"HF_HUB_CACHE": str(cache)}
    printed = fetch(home, repo, tmp_path, "--hf-cache", env=env)
    snap = cache / "models--acme--tiny" / "snapshots" / repo.commit
    assert printed == str(snap)
    r = offline(env, repo_id=repo.repo_id)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == snap
    for f in repo.files:
        assert (snap / f.path).read_bytes() == f.data_path.read_bytes()
    weights = next(f for f in repo.files if f.lfs)
    in_cache = cache / "models--acme--tiny" / "blobs" / weights.sha256
    in_store = home / "store" / "blobs" / "sha256" / weights.sha256[:2] / weights.sha256
    assert in_cache.stat().st_ino == in_store.stat().st_ino  # no second copy
    again = fetch(home, repo, tmp_path, "--hf-cache", env=env)  # complete: the fast path
    assert again == printed


def test_to_dir_is_a_complete_local_dir_for_the_client(tmp_path: Path) -> None:
    """After ``get --to DIR``, the client's offline ``snapshot_download(local_dir=DIR)`` at the
    commit finds every file complete (its tree cache and per-file metadata are there)."""
    repo = make_model(tmp_path / "r", "acme/tiny", shards=2, shard_size=MiB)
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    fetch(home, repo, tmp_path, "--to", str(out), env={})
    meta = out / ".cache" / "huggingface" / "download"
    for f in repo.files:
        lines = (meta / f"{f.path}.metadata").read_text().splitlines()
        assert lines[:2] == [repo.commit, f.sha256 if f.lfs else f.gitsha1]
    r = offline({}, repo_id=repo.repo_id, revision=repo.commit, local_dir=str(out))
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == out.resolve()
