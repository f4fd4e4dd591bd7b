"""Benchmark: `snapshot_download` through the agent's Hugging Face endpoint, in the virtual
office (network namespaces; nothing runs in the host's but this process).

The real `huggingface_hub` client runs in each workstation's namespace with `HF_ENDPOINT`
pointing either at its own agent (`http://127.0.0.1:7421`) or straight at the shaped test
mirror (the office's mirror trick today). Two parts, each with references measured in the same
run:

1. **Warm, second workstation.** ws1's agent `get`s the model (it holds it). On ws2 (agent
   running, fresh home each time): `p2pmodel get` over the LAN (the path `scripts/bench-lan`
   measures), then `snapshot_download` through ws2's endpoint into an empty HF cache. Target:
   endpoint time <= 1.1 x `get` time. For scale, the same download straight from the mirror.
2. **Cold, N workstations at once.** Fresh homes and caches everywhere: N `snapshot_download`s
   through their agents' endpoints start together, then N straight at the mirror. Bytes the
   mirror served / model size, and the last finish / (size / mirror rate). Target: mirror bytes
   <= 1.02 x through the endpoints.

Mirror link R (--mirror-rate), workstation links 4R (--lan-rate to change), one model of
--shards shards of --size-mib MiB in all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2pmodel.testing.models import Repo, make_model
from p2pmodel.testing.netns import Host, Network, cleanup_stale, netns_available
from p2pmodel.testing.site import Site, drop_environ

MiB = 1 << 20
MB = 1_000_000
REPO = "bench/hf"
TARGET_WARM = 1.1
TARGET_MIRROR = 1.02

# Runs in a workstation: one snapshot_download, prints its wall seconds and the snapshot path.
SNAPSHOT = r"""
import sys, time
from huggingface_hub import snapshot_download
t0 = time.monotonic()
path = snapshot_download(sys.argv[2], endpoint=sys.argv[1], cache_dir=sys.argv[3])
print(time.monotonic() - t0, path)
"""


def log(msg: str) -> None:
    print(f"bench-hf: {msg}", file=sys.stderr, flush=True)


def hf_env(site: Site[Network], ws: Host, cache: Path) -> dict[str, str]:
    return {
        **site.env(ws),
        "HF_HOME": str(cache.parent / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


def snapshot(site: Site[Network], ws: Host, endpoint: str, cache: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", SNAPSHOT, endpoint, site.repo.repo_id, str(cache)]
    return site.office.popen(
        ws, argv, env=hf_env(site, ws, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(proc: subprocess.Popen[bytes], site: Site[Network], timeout: float) -> float:
    """Wait for a snapshot_download started by `snapshot`; its seconds (files checked)."""
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"snapshot_download failed: {err.decode()[-2000:]}")
    seconds, path = out.decode().split(None, 1)
    if bad := site.mismatches(Path(path.strip())):
        raise RuntimeError(f"snapshot_download: files not exact: {bad}")
    return float(seconds)


def endpoint(site: Site[Network], ws: Host) -> str:
    url = site.status(ws)["hf_endpoint"]
    assert isinstance(url, str), "the agent serves no HF endpoint"
    return url


def warm(site: Site[Network], work: Path, timeout: float) -> dict[str, Any]:
    ws1, ws2 = site.office.workstations[:2]
    site.serve(ws1)
    site.get(ws1)
    rows: dict[str, Any] = {}
    site.new_home(ws2)
    site.serve(ws2)
    site.wait_mesh([ws1, ws2])
    t0 = time.monotonic()
    got = site.get(ws2, work / "get-out", timeout=timeout)
    rows["get over the LAN"] = time.monotonic() - t0
    log(f"warm: p2pmodel get on ws2 {rows['get over the LAN']:.2f} s ({got['from_peers']} B LAN)")
    site.stop(ws2)
    site.new_home(ws2)
    site.serve(ws2)
    site.wait_mesh([ws1, ws2])
    before = site.served()
    proc = snapshot(site, ws2, endpoint(site, ws2), work / "hf-warm")
    rows["snapshot_download via agent"] = finish(proc, site, timeout)
    rows["mirror bytes via agent"] = site.served() - before
    log(f"warm: snapshot_download via ws2's agent {rows['snapshot_download via agent']:.2f} s")
    proc = snapshot(site, ws2, site.hub, work / "hf-direct")
    rows["snapshot_download from mirror"] = finish(proc, site, timeout)
    direct = rows["snapshot_download from mirror"]
    log(f"warm: snapshot_download straight from the mirror {direct:.2f} s")
    for ws in (ws1, ws2):
        site.stop(ws)
    return rows


def cold(site: Site[Network], work: Path, timeout: float) -> dict[str, Any]:
    hosts = site.office.workstations
    for ws in hosts:
        site.new_home(ws)
    site.serve_all(hosts)
    site.wait_mesh(hosts)
    out: dict[str, Any] = {}
    for mode in ("via agents", "from mirror"):
        before = site.served()
        t0 = time.monotonic()
        procs = [
            snapshot(site, ws, endpoint(site, ws) if mode == "via agents" else site.hub,
                     work / f"hf-cold-{mode.split()[0]}-{ws.name}")
            for ws in hosts
        ]  # fmt: skip
        done = [finish(p, site, timeout) for p in procs]
        out[mode] = {
            "mirror_bytes": site.served() - before,
            "last_done": time.monotonic() - t0,
            "each": done,
        }
        log(f"cold, {len(hosts)} {mode}: mirror {out[mode]['mirror_bytes'] / MB:.0f} MB, "
            f"last done {out[mode]['last_done']:.1f} s")  # fmt: skip
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench-hf", description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=4, help="workstations in the cold part (4)")
    p.add_argument("--size-mib", type=int, default=512, help="model size in MiB (512)")
    p.add_argument("--shards", type=int, default=4, help="weight shards (4)")
    p.add_argument("--mirror-rate", type=int, default=32 * MiB, help="bytes/s (32 MiB/s)")
    p.add_argument("--lan-rate", type=int, help="each workstation's link, bytes/s (4 x mirror)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--workdir", type=Path, help="parent of the temporary directory (/var/tmp)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if reason := netns_available():
        print(f"bench-hf: needs network namespaces: {reason}", file=sys.stderr)
        return 2
    drop_environ()
    cleanup_stale("p2pm-bhf")
    lan_rate = args.lan_rate or 4 * args.mirror_rate
    parent = args.workdir or Path("/var/tmp")
    work = Path(tempfile.mkdtemp(prefix="p2pmodel-bench-hf-", dir=parent))
    try:
        shard = args.size_mib * MiB // args.shards
        repo: Repo = make_model(work / "repos", REPO, shards=args.shards, shard_size=shard)
        size = sum(f.size for f in repo.files)
        ideal = size / args.mirror_rate
        timeout = 120 + 3 * args.hosts * ideal
        rates = f"mirror {args.mirror_rate / MB:.0f} MB/s, LAN {lan_rate / MB:.0f} MB/s"
        log(f"model {size / MiB:.0f} MiB in {len(repo.files)} files; {rates}; ideal {ideal:.1f} s")
        with Network(
            max(2, args.hosts), mirror_rate=args.mirror_rate, lan_rate=lan_rate, prefix="p2pm-bhf"
        ) as office:
            site = Site(office, repo, work)
            warm_rows = warm(site, work, timeout)
            cold_rows = cold(site, work, timeout)
        results = {
            "size": size,
            "mirror_rate": args.mirror_rate,
            "lan_rate": lan_rate,
            "hosts": args.hosts,
            "warm": warm_rows,
            "cold": cold_rows,
        }
        report(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(r: dict[str, Any]) -> None:
    size, ideal = r["size"], r["size"] / r["mirror_rate"]
    w = r["warm"]
    ratio = w["snapshot_download via agent"] / w["get over the LAN"]
    verdict = "PASS" if ratio <= TARGET_WARM else "MISS"
    print("\n## Warm: the second workstation (the first holds the model)\n")
    print("| | seconds | MB/s |\n| --- | ---: | ---: |")
    for name in (
        "get over the LAN",
        "snapshot_download via agent",
        "snapshot_download from mirror",
    ):
        print(f"| {name} | {w[name]:.2f} | {size / MB / w[name]:.0f} |")
    print(f"\nvia agent / get over the LAN: **{ratio:.2f}** (target <= {TARGET_WARM}: {verdict});"
          f" mirror bytes via the agent: {w['mirror bytes via agent']}")  # fmt: skip
    print(f"\n## Cold: {r['hosts']} workstations at once (ideal size/R {ideal:.1f} s)\n")
    print("| | mirror / size | last done s | last / ideal |\n| --- | ---: | ---: | ---: |")
    for mode, row in r["cold"].items():
        print(f"| snapshot_download {mode} | {row['mirror_bytes'] / size:.2f} | "
              f"{row['last_done']:.1f} | {row['last_done'] / ideal:.2f} |")  # fmt: skip
    m = r["cold"]["via agents"]["mirror_bytes"] / size
    print(f"\nmirror bytes through the endpoints: **{m:.2f}x** (target <= {TARGET_MIRROR}: "
          f"{'PASS' if m <= TARGET_MIRROR else 'MISS'})")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
