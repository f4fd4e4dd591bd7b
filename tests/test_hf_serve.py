"""The Hugging Face endpoint of a running ``p2pmodel serve``, used the way people use it:
``HF_ENDPOINT=<agent> hf download ...`` and ``snapshot_download`` in another process. The agent
runs libtorrent and mDNS, so these run inside the test namespace only (``lan``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2pmodel.testing.models import Repo, make_model

from .test_error_paths import Mirror, agent

pytestmark = pytest.mark.lan
MiB = 1024 * 1024


def hf(endpoint: str, *args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(cache.parent / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "hf"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def status(home: Path) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, "-m", "p2pmodel", "status", "--json"],
        env={**os.environ, "P2PMODEL_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_hf_download_through_a_running_agent(tmp_path: Path) -> None:
    """``hf download`` of a model and of a dataset through ``serve``'s endpoint: exact files,
    the mirror serves each once, and a second cache fills with no mirror byte."""
    model = make_model(tmp_path / "r", "acme/tiny", shards=2, shard_size=2 * MiB)
    data = make_model(tmp_path / "d", "acme/data", shards=1, shard_size=MiB, seed=5)
    data = Repo(data.repo_id, data.commit, data.files, repo_type="dataset")
    (tmp_path / "m").mkdir()
    mirror = Mirror([model, data], tmp_path / "m")
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        'hf_endpoint = "127.0.0.1:0"\n'
        f'[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["{mirror.hub_url}/"]\n'
    )
    try:
        with agent(home):
            url = status(home)["hf_endpoint"]
            assert isinstance(url, str) and url.startswith("http://127.0.0.1:")
            for repo, extra in ((model, []), (data, ["--repo-type", "dataset"])):
                before = mirror.served()
                r = hf(url, "download", repo.repo_id, *extra, cache=tmp_path / "c1")
                assert r.returncode == 0, r.stderr
                last = r.stdout.strip().splitlines()[-1]
                top = Path(last.split("path:", 1)[-1].strip())  # "  path: /..." or the path
                for f in repo.files:
                    assert (top / f.path).read_bytes() == f.data_path.read_bytes(), f.path
                assert mirror.served() - before >= sum(f.size for f in repo.files)
            served = mirror.served()
            r = hf(url, "download", model.repo_id, cache=tmp_path / "c2")
            assert r.returncode == 0, r.stderr
            assert mirror.served() == served  # warm: all from the agent's store
    finally:
        mirror.stop()
