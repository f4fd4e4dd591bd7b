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

from p2pmodel.testing.mirror import spawn
from p2pmodel.testing.models import make_model
from p2pmodel.testing.site import drop_environ

MiB = 1024 * 1024


def start_mirror(
    repo_json: Path, workdir: Path, name: str, *flags: str
) -> tuple[subprocess.Popen[bytes], str]:
    try:
        proc, urls = spawn(repo_json, workdir, *flags, name=name)
    except RuntimeError as e:
        raise SystemExit(f"demo: {e}") from None
    return proc, urls["hub_url"]


def served(hub: str) -> int:
    with urllib.request.urlopen(f"{hub}/_stats", timeout=5) as r:
        return int(json.load(r)["bytes_served"])


def get(cli: list[str], env: dict[str, str], *args: str) -> tuple[int, float, str]:
    t = time.monotonic()
    r = subprocess.run(
        [*cli, "get", *args], env=env, check=False, stdout=subprocess.PIPE, text=True
    )
    return r.returncode, time.monotonic() - t, r.stdout.strip()


def new_home(work: Path, name: str, mirrors: list[str], commit: str) -> dict[str, str]:
    home = work / name
    home.mkdir()
    use = ", ".join(f'"{m}/"' for m in mirrors)
    (home / "config.toml").write_text(
        f'[[mirror]]\nfor = "https://huggingface.co/"\nuse = [{use}]\n\n'
        f'[models]\n"tiny-image:v1" = "hf://demo/tiny-image@{commit}"\n'
    )
    # On loopback in the host's namespace: mirrors only (no embedded LAN agent).
    return {**os.environ, "P2PMODEL_HOME": str(home), "P2PMODEL_LAN": "off"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=192, help="model size (default 192 MiB)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    # The shell's proxies, HF_ENDPOINT or P2PMODEL_* would steer the gets past the mirrors.
    drop_environ()
    work = Path(tempfile.mkdtemp(prefix="p2pmodel-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    cli = [sys.executable, "-m", "p2pmodel"]
    rows: list[tuple[str, str]] = []
    try:
        repo = make_model(
            work / "upstream", "demo/tiny-image", shards=4, shard_size=args.size_mib * MiB // 4
        )
        total = sum(f.size for f in repo.files)
        repo_json = work / "repo.json"
        repo_json.write_text(repo.to_json())

        def exact(root: Path) -> bool:
            return all((root / f.path).read_bytes() == f.data_path.read_bytes() for f in repo.files)

        print(f"demo: a generated model of {total / MiB:.0f} MiB in {len(repo.files)} files")

        # 1. A fast mirror that flips bytes, and a throttled one that fails 5% of requests.
        bad, bad_url = start_mirror(repo_json, work, "tampering", "--corrupt")
        flaky, flaky_url = start_mirror(
            repo_json, work, "flaky", "--per-conn-rate", str(4 * MiB), "--fail-rate", "0.05"
        )
        procs += [bad, flaky]
        print("\ndemo: 1. mirrors: one flips bytes, one gives 4 MiB/s per connection and fails 5%")
        env = new_home(work, "home1", [bad_url, flaky_url], repo.commit)
        code, secs, path = get(cli, env, "tiny-image:v1", "--progress", "plain")
        ok = code == 0 and exact(Path(path))
        rows.append(
            ("tampering + flaky mirrors", f"{'exact files' if ok else 'FAILED'} in {secs:.1f} s")
        )

        # 2. kill -9 at 40%, then run again: it resumes.
        slow, slow_url = start_mirror(repo_json, work, "throttled", "--total-rate", str(32 * MiB))
        procs.append(slow)
        print("\ndemo: 2. a 32 MiB/s mirror; get killed with SIGKILL at 40%, then run again")
        env = new_home(work, "home2", [slow_url], repo.commit)
        first = subprocess.Popen([*cli, "get", "tiny-image:v1", "--progress", "none"], env=env)
        deadline = time.monotonic() + 120
        while (
            served(slow_url) < 0.4 * total and first.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        out = work / "model"
        code, secs, path = get(cli, env, "tiny-image:v1", "--to", str(out), "--progress", "plain")
        ok = code == 0 and exact(out)
        pulled = served(slow_url)
        rows.append(
            (
                "kill -9 at 40%, rerun",
                f"{'exact files' if ok else 'FAILED'}; "
                f"pulled {pulled / total:.3f}x the model in total",
            )
        )

        # 3. The model is complete: no network.
        code, secs, path = get(cli, env, "tiny-image:v1")
        rows.append(("second get (complete)", f"{secs * 1000:.0f} ms, exit {code}, no network"))

        print("\n| step | result |\n| --- | --- |")
        for step, result in rows:
            print(f"| {step} | {result} |")
        print()
        subprocess.run([*cli, "ls"], env=env, check=False)
        return 0 if all("FAILED" not in r for _, r in rows) else 1
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
