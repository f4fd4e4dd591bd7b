"""Every command that can run three ways does the same thing each way: ``get`` (with ``--to``
and ``--hf-cache``), ``ls``, ``pin``/``unpin``, ``gc`` and ``rm`` through ``--no-lan``, the
embedded agent of a daemonless ``get``, and a running ``serve``: the same output, the same exit
codes and the same store afterwards, the store's cap included.

The embedded agent and ``serve`` run libtorrent and mDNS, so those two run only inside the test
namespace (``lan``); in the host namespace the sequence runs ``--no-lan`` alone.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from p2pmodel.testing.models import Repo, make_model

from .test_error_paths import Mirror, agent, configure, env_for

MiB = 1024 * 1024
CAP = "10MB"  # one model of ~6.3 MB fits, two do not


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Repo]:
    root = tmp_path_factory.mktemp("three")
    return {
        "a": make_model(root / "a", "acme/alpha", shards=2, shard_size=3 * MiB),
        "b": make_model(root / "b", "acme/beta", shards=2, shard_size=3 * MiB, seed=1),
    }


def run(home: Path, path: str, *argv: str) -> tuple[int, str, str]:
    """One command as a user types it; (exit code, stdout, stderr) with the paths of this
    run's home and Hugging Face cache written as HOME and CACHE."""
    cmd = [sys.executable, "-m", "p2pmodel", *argv]
    if argv[0] == "get":
        cmd += ["--progress", "none"] + (["--no-lan"] if path == "no-lan" else [])
    env = {**env_for(home), "HF_HUB_CACHE": str(home.parent / f"{home.name}-cache")}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)

    def norm(text: str) -> str:
        text = text.replace(str(home.parent / f"{home.name}-cache"), "CACHE")
        return text.replace(str(home.parent / f"{home.name}-out"), "OUT").replace(str(home), "HOME")

    return r.returncode, norm(r.stdout), norm(r.stderr)


def store_state(home: Path) -> dict[str, object]:
    """What the store holds: refs (with pins), blobs, snapshot files."""
    rc, out, err = run(home, "no-lan", "ls", "--json")
    assert rc == 0, err
    rows = [
        {k: r[k] for k in ("ref", "size", "files", "complete", "pinned")} for r in json.loads(out)
    ]
    blobs = sorted(p.name for p in (home / "store" / "blobs").rglob("*") if p.is_file())
    snaps = sorted(
        str(p.relative_to(home / "store" / "snapshots"))
        for p in (home / "store" / "snapshots").rglob("*")
        if p.is_symlink()
    )
    return {"models": rows, "blobs": blobs, "snapshots": snaps}


def sequence(home: Path, path: str, models: dict[str, Repo]) -> list[object]:
    """The same commands in the same order; what each printed and the store after it."""
    a, b = (f"hf://{models[k].repo_id}" for k in ("a", "b"))
    out = home.parent / f"{home.name}-out"
    steps: list[tuple[str, ...]] = [
        ("get", a),
        ("get", a),  # complete: the fast path
        ("get", b),  # over the cap: a goes
        ("get", a, "--to", str(out)),  # a back; b goes
        ("pin", a),
        ("get", b, "--hf-cache"),  # a pinned, b just fetched: both stay, over the cap
        ("ls",),
        ("unpin", a),
        ("gc",),  # a is the least recently used
        ("rm", b),
        ("rm", b),  # not in the store any more: exit 2
        ("get", "hf://acme/nope"),  # exit 2 on every path
        ("ls",),
    ]
    seen: list[object] = []
    for step in steps:
        rc, stdout, stderr = run(home, path, *step)
        seen.append({"step": step[:2], "rc": rc, "out": stdout, "err": stderr})
        seen.append(store_state(home))
    for f in models["a"].files:
        assert (out / f.path).read_bytes() == f.data_path.read_bytes(), f.path
    return seen


PATHS = {"host": ["no-lan"], "netns": ["no-lan", "embedded", "serve"]}
MODES = ["host", pytest.param("netns", marks=pytest.mark.lan)]


@pytest.mark.parametrize("mode", MODES)
def test_every_command_does_the_same_whichever_way_it_runs(
    tmp_path: Path, models: dict[str, Repo], mode: str
) -> None:
    """The same commands through --no-lan, the embedded agent and serve print the same, exit
    the same and leave the same store; the cap evicts after each get on every path."""
    mirror = Mirror(list(models.values()), tmp_path)
    try:
        runs = {}
        for path in PATHS[mode]:
            home = tmp_path / path
            home.mkdir()
            configure(home, mirror.hub_url)
            config = home / "config.toml"
            config.write_text(f'store_max = "{CAP}"\n' + config.read_text())
            with agent(home) if path == "serve" else contextlib.nullcontext():
                runs[path] = sequence(home, path, models)
        first = runs[PATHS[mode][0]]
        # The cap held after each get: after `get b` only b is left, after the last get of a
        # only a; the pinned a and the fresh b both stay; gc then takes a.
        models_after = [s["models"] for s in first[1::2]]  # type: ignore[index]
        refs = [[m["ref"] for m in step] for step in models_after]
        a, b = (f"hf://{models[k].repo_id}" for k in ("a", "b"))
        assert refs[2] == [b], refs
        assert refs[3] == [a], refs
        assert sorted(refs[5]) == sorted([a, b]), refs
        assert refs[8] == [b], refs
        assert refs[-1] == [], refs
        codes = [s["rc"] for s in first[0::2]]  # type: ignore[index]
        assert codes == [0] * 10 + [2, 2, 0], first[0::2]
        for path, seen in runs.items():
            for i, (want, got) in enumerate(zip(first, seen, strict=True)):
                assert got == want, f"{path} differs at {i}: {got} != {want}"
    finally:
        mirror.stop()
