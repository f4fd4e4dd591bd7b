"""Demo: `p2pmodel get` from two local mirrors, one of which tampers with bytes.

Everything runs on loopback: a generated diffusers-shaped model is served by two fake mirrors
(p2pmodel.testing.mirror). The first is fast but flips bytes; the second limits each connection
(as public mirrors do) and fails some requests. The demo runs `p2pmodel get`, kills it with
SIGKILL partway, runs it again (it resumes), checks every file against the upstream digests,
then shows that a second `get` of the complete model needs no network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from p2pmodel.testing.models import make_model

MiB = 1024 * 1024


def start_mirror(
    repo_json: Path, workdir: Path, name: str, *flags: str
) -> tuple[subprocess.Popen[bytes], str]:
    ready = workdir / f"{name}.ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "p2pmodel.testing.mirror",
            "--repo-json",
            str(repo_json),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--cdn-port",
            "0",
            "--ready-file",
            str(ready),
            *flags,
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"demo: mirror {name} did not start")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())["hub_url"]


def served(hub: str) -> int:
    with urllib.request.urlopen(f"{hub}/_stats", timeout=5) as r:
        return int(json.load(r)["bytes_served"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=192, help="model size (default 192 MiB)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="p2pmodel-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        shards = 4
        repo = make_model(
            work / "upstream",
            "demo/tiny-image",
            shards=shards,
            shard_size=args.size_mib * MiB // shards,
        )
        total = sum(f.size for f in repo.files)
        repo_json = work / "repo.json"
        repo_json.write_text(repo.to_json())
        bad, bad_url = start_mirror(repo_json, work, "tampering", "--corrupt")
        good, good_url = start_mirror(
            repo_json, work, "throttled", "--per-conn-rate", str(4 * MiB), "--fail-rate", "0.05"
        )
        procs += [bad, good]
        home = work / "home"
        home.mkdir()
        (home / "config.toml").write_text(
            '[[mirror]]\nfor = "https://huggingface.co/"\n'
            f'use = ["{bad_url}/", "{good_url}/"]\n\n'
            f'[models]\n"tiny-image:v1" = "hf://demo/tiny-image@{repo.commit}"\n'
        )
        env = {**os.environ, "P2PMODEL_HOME": str(home)}
        cli = [sys.executable, "-m", "p2pmodel"]
        print(
            f"demo: model of {total / MiB:.0f} MiB; mirror 1 ({bad_url}) flips bytes, "
            f"mirror 2 ({good_url}) gives 4 MiB/s per connection and fails 5% of requests"
        )

        print("demo: p2pmodel get tiny-image:v1   (killed with SIGKILL at ~40%)")
        t0 = time.monotonic()
        first = subprocess.Popen([*cli, "get", "tiny-image:v1", "--progress", "plain"], env=env)
        while served(good_url) + served(bad_url) < 0.4 * total and first.poll() is None:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        print(f"demo: killed after {time.monotonic() - t0:.1f} s; running it again")
        out = work / "model"
        t1 = time.monotonic()
        done = subprocess.run(
            [*cli, "get", "tiny-image:v1", "--to", str(out), "--progress", "plain"],
            env=env,
            check=False,
            stdout=subprocess.PIPE,
            text=True,
        )
        if done.returncode != 0:
            print(f"demo: FAILED (exit {done.returncode})")
            return 1
        print(
            f"demo: resumed run finished in {time.monotonic() - t1:.1f} s -> {done.stdout.strip()}"
        )
        exact = all((out / f.path).read_bytes() == f.data_path.read_bytes() for f in repo.files)
        pulled = served(good_url) + served(bad_url)
        t2 = time.monotonic()
        subprocess.run(
            [*cli, "get", "tiny-image:v1"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        again = time.monotonic() - t2
        print()
        print(f"  files exact                 {'yes' if exact else 'NO'} ({len(repo.files)} files)")
        print(
            f"  pulled from mirrors         {pulled / MiB:.1f} MiB = {pulled / total:.2f}x the model "
            "(includes bytes refetched after the tampering mirror was caught)"
        )
        print(f"  second get (complete)       {again * 1000:.0f} ms, no network")
        subprocess.run([*cli, "ls"], env=env, check=False)
        return 0 if exact else 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        if args.keep:
            print(f"demo: work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
