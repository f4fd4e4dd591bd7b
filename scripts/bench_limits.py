"""Benchmark: an agent's [limits], achieved against configured, and a schedule boundary.

Everything runs in a virtual office (`p2pmodel.testing.netns`: network namespaces on one
bridge, an unshaped link to the test mirror); this process only starts commands inside the
namespaces and reads the agents' `status` over their control sockets every 0.1 s.

1. **Mirror side** (`mirror_download`, the agent's token bucket). ws1's agent gets a large
   single-file model from the mirror. Its config, re-read on SIGHUP just before the get, sets
   `mirror_download = R1` and a `[[limits.schedule]]` window that opens at a wall-clock second
   `--window` + 8 s later with `mirror_download = R2`. Measured from `status` `from_mirrors`
   (payload bytes as they pass the bucket).
2. **LAN side** (`lan_upload`, libtorrent's upload limit). ws1's agent (a fresh home) first
   gets another large model at full speed; then its config, re-read on SIGHUP, sets
   `lan_upload = L1` and a window opening later with `L2`, and ws2's agent gets the model from
   ws1 over the LAN. Measured from ws1's `status` `uploaded` (libtorrent's payload upload).

For each side: the rate over the `--window` seconds that end 1 s before the boundary, divided
by the configured rate (target: 0.90 to 1.05, i.e. within 10% and never above by more than 5%),
the highest 5 s rate in that window over the configured one, the rate after the boundary over
its configured one (from 3 s after the boundary to the end), and how long after the boundary
the rate changed: where the straight lines fitted to the byte counts before and after the
boundary meet (target: within 2 s). MB here is 10^6 bytes.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from p2pmodel.adapters import control
from p2pmodel.testing.models import Repo, make_model
from p2pmodel.testing.netns import Host, Network, cleanup_stale, netns_available
from p2pmodel.testing.site import Site, SiteError, drop_environ, stop_group, wait_for

MiB = 1 << 20
MB = 1_000_000
POLL = 0.1
WARMUP = 8.0  # seconds from the SIGHUP to the first second of the measured window, and more
SETTLE = 3.0  # seconds after the boundary left out of the "after" rate


def log(msg: str) -> None:
    print(f"bench-limits: {msg}", file=sys.stderr, flush=True)


@dataclass
class Side:
    name: str
    key: str  # the `status` field that counts the limited bytes
    configured: float  # bytes/s before the boundary
    after: float  # bytes/s after it
    rate: float = 0.0  # achieved over the window
    max5: float = 0.0  # highest 5 s rate in the window
    rate_after: float = 0.0
    switch_s: float = 0.0  # boundary to the change of slope
    window_s: float = 0.0
    samples: int = 0

    @property
    def ratio(self) -> float:
        return self.rate / self.configured

    @property
    def ratio_max5(self) -> float:
        return self.max5 / self.configured

    @property
    def ratio_after(self) -> float:
        return self.rate_after / self.after


def status(site: Site[Network], ws: Host) -> dict[str, Any]:
    """ws's agent's status over its control socket (no process start: polled 10 times a
    second); {} while it does not answer."""
    try:
        return next(iter(control.request(site.homes[ws.name], {"op": "status"}, timeout=5.0)))
    except (control.NoAgent, OSError, StopIteration):
        return {}


def fetch(site: Site[Network], ws: Host, repo: Repo) -> subprocess.Popen[bytes]:
    """``p2pmodel get`` of ``repo`` on ws (handed to ws's agent), in the background."""
    argv = site.get_cmd(repo=repo)
    return site.popen(ws, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def schedule(key: str, base: float, after: float, lead: float) -> tuple[float, str]:
    """A [limits] table whose window (rate ``after``) opens ``lead`` seconds from now, on a
    whole second of local time; returns the boundary (epoch seconds) and the TOML."""
    boundary = float(int(time.time() + lead) + 1)
    start = datetime.datetime.fromtimestamp(boundary)
    stop = start + datetime.timedelta(hours=1)
    toml = (
        f"[limits]\n{key} = {int(base)}\n"
        f'[[limits.schedule]]\nhours = "{start:%H:%M:%S}-{stop:%H:%M:%S}"\n{key} = {int(after)}\n'
    )
    return boundary, toml


def record(site: Site[Network], ws: Host, key: str, until: float) -> list[tuple[float, int]]:
    """(epoch seconds, bytes) of ws's ``status[key]`` every POLL seconds until ``until``."""
    out: list[tuple[float, int]] = []
    while (now := time.time()) < until:
        st = status(site, ws)
        if st:
            out.append((now, int(st.get(key) or 0)))
        time.sleep(max(0.0, POLL - (time.time() - now)))
    return out


def bytes_at(samples: list[tuple[float, int]], t: float) -> float:
    """Bytes at time ``t``, linear between samples."""
    for (t0, b0), (t1, b1) in itertools.pairwise(samples):
        if t0 <= t <= t1:
            return b0 + (b1 - b0) * (t - t0) / (t1 - t0) if t1 > t0 else float(b1)
    raise ValueError(f"no sample around {t}")


def fit(samples: list[tuple[float, int]], t0: float, t1: float) -> tuple[float, float]:
    """Least-squares line bytes = a + b * t over samples in [t0, t1]."""
    pts = [(t, b) for t, b in samples if t0 <= t <= t1]
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mb = sum(b for _, b in pts) / n
    b = sum((t - mt) * (v - mb) for t, v in pts) / sum((t - mt) ** 2 for t, _ in pts)
    return mb - b * mt, b


def analyse(side: Side, samples: list[tuple[float, int]], boundary: float, window: float) -> None:
    end = boundary - 1.0
    start = end - window
    side.window_s, side.samples = window, len(samples)
    side.rate = (bytes_at(samples, end) - bytes_at(samples, start)) / window
    side.max5 = max(
        (bytes_at(samples, t + 5.0) - bytes_at(samples, t)) / 5.0
        for t in [start + i * 0.5 for i in range(int((window - 5.0) / 0.5) + 1)]
    )
    last = samples[-1][0]
    side.rate_after = (bytes_at(samples, last) - bytes_at(samples, boundary + SETTLE)) / (
        last - boundary - SETTLE
    )
    a0, b0 = fit(samples, boundary - 10.0, boundary)
    a1, b1 = fit(samples, boundary + SETTLE, last)
    side.switch_s = (a0 - a1) / (b1 - b0) - boundary


def measure(
    site: Site[Network], side: Side, limit: str, ws: Host, getter: Host, repo: Repo,
    args: argparse.Namespace,
) -> None:  # fmt: skip
    """Put ws's agent under a schedule for ``limit`` (SIGHUP), run a get of ``repo`` by
    ``getter``'s agent across the boundary, and analyse what ws's agent counted."""
    boundary, toml = schedule(limit, side.configured, side.after, args.window + WARMUP)
    site.configure(ws, toml)
    site.kill(ws, signal.SIGHUP)
    wait_for(
        lambda: status(site, ws).get("limits", {}).get(limit) == side.configured,
        10,
        "the limits to apply",
    )
    log(f"{side.name}: {side.configured / MB:.1f} MB/s, then {side.after / MB:.1f} MB/s from "
        f"{datetime.datetime.fromtimestamp(boundary):%H:%M:%S}")  # fmt: skip
    get = fetch(site, getter, repo)
    try:
        samples = record(site, ws, side.key, boundary + args.after)
    finally:
        stop_group(get)
    analyse(side, samples, boundary, args.window)


def mirror_side(site: Site[Network], repo: Repo, args: argparse.Namespace) -> Side:
    side = Side("mirror download (token bucket)", "from_mirrors", args.mirror * MB,
                args.mirror_after * MB)  # fmt: skip
    ws1 = site.office.workstations[0]
    site.new_home(ws1)
    site.serve(ws1)
    try:
        measure(site, side, "mirror_download", ws1, ws1, repo, args)
    finally:
        site.stop(ws1)
    return side


def lan_side(site: Site[Network], repo: Repo, args: argparse.Namespace) -> Side:
    side = Side("LAN upload (libtorrent)", "uploaded", args.lan * MB, args.lan_after * MB)
    ws1, ws2 = site.office.workstations
    site.new_home(ws1)
    site.serve(ws1)
    log("LAN side: ws1 gets the model from the mirror first (no limits)")
    if fetch(site, ws1, repo).wait(timeout=600) != 0:
        raise SiteError(f"ws1 could not get the LAN model:\n{site.log(ws1)}")
    site.serve(ws2)
    site.wait_mesh([ws1, ws2])
    try:
        measure(site, side, "lan_upload", ws1, ws2, repo, args)
    finally:
        site.stop(ws2)
        site.stop(ws1)
    return side


def report(sides: list[Side], window: float) -> tuple[str, list[dict[str, Any]]]:
    rows = [
        f"| side | configured | achieved ({window:.0f} s) | ratio | max 5 s ratio | "
        "after boundary | ratio | rate changed after | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    checks = []
    for s in sides:
        ok_rate = 0.90 <= s.ratio <= 1.05
        ok_switch = abs(s.switch_s) <= 2.0
        verdict = "OK" if ok_rate and ok_switch else "MISS"
        rows.append(
            f"| {s.name} | {s.configured / MB:.1f} MB/s | {s.rate / MB:.2f} MB/s | "
            f"{s.ratio:.3f} | {s.ratio_max5:.3f} | {s.after / MB:.1f} MB/s: "
            f"{s.rate_after / MB:.2f} MB/s | {s.ratio_after:.3f} | {s.switch_s:+.2f} s | "
            f"{verdict} |"
        )
        checks.append({**asdict(s), "ratio": s.ratio, "ratio_max5": s.ratio_max5,
                       "ratio_after": s.ratio_after, "ok": verdict == "OK"})  # fmt: skip
    rows.append("")
    rows.append(
        "targets: achieved/configured from 0.90 to 1.05 over the window (within 10%, never "
        "more than 5% above); the rate changes within 2 s of the schedule boundary"
    )
    return "\n".join(rows), checks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench-limits", description=__doc__.split("\n")[0])
    p.add_argument("--mirror", type=float, default=8.0, help="mirror_download, MB/s (8)")
    p.add_argument("--mirror-after", type=float, default=16.0, help="after the boundary (16)")
    p.add_argument("--lan", type=float, default=8.0, help="lan_upload, MB/s (8)")
    p.add_argument("--lan-after", type=float, default=16.0, help="after the boundary (16)")
    p.add_argument("--window", type=float, default=30.0, help="measured seconds (30)")
    p.add_argument("--after", type=float, default=12.0, help="seconds after the boundary (12)")
    p.add_argument("--skip", action="append", default=[], choices=["mirror", "lan"])
    p.add_argument("--prefix", help="namespace name prefix (default: p2pm-<random>)")
    p.add_argument("--workdir", type=Path, help="parent of the temp dir (default /var/tmp)")
    p.add_argument("--keep-work", action="store_true", help="keep models, homes and logs")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    why = netns_available()
    if why is not None:
        raise SystemExit(f"bench-limits: cannot build a virtual office: {why}")
    drop_environ()
    stale = cleanup_stale()
    if stale:
        log(f"deleted stale namespaces: {', '.join(stale)}")
    started = datetime.datetime.now(datetime.UTC)
    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-limits-", dir=args.workdir or Path("/var/tmp")))
    lead = args.window + WARMUP + 2.0
    sides: list[Side] = []
    try:
        up = work / "upstream"
        need = {
            "mirror": args.mirror * lead + args.mirror_after * (args.after + 2.0),
            "lan": args.lan * lead + args.lan_after * (args.after + 2.0),
        }
        repos = {
            k: make_model(up, f"bench/limits-{k}", shards=1, single_file=True, small_files={},
                          shard_size=int(v * MB * 1.15) // MiB * MiB, seed=i)
            for i, (k, v) in enumerate(need.items())
        }  # fmt: skip
        log(f"models: {', '.join(f'{k} {r.files[0].size / MB:.0f} MB' for k, r in repos.items())}")
        with Network(2, mirror=True, prefix=args.prefix) as office:
            site = Site(office, repos["mirror"], work, [repos["lan"]])
            if "mirror" not in args.skip:
                sides.append(mirror_side(site, repos["mirror"], args))
            if "lan" not in args.skip:
                sides.append(lan_side(site, repos["lan"], args))
    except SiteError as exc:
        raise SystemExit(f"bench-limits: {exc}") from None
    finally:
        if args.keep_work:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    table, checks = report(sides, args.window)
    cmd = " ".join(["scripts/bench-limits", *(sys.argv[1:] if argv is None else argv)])
    print(
        f"`{cmd.strip()}` ({started:%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs; load average "
        f"{load0[0]:.2f} before, {load1[0]:.2f} after)\n"
    )
    print(table)
    if args.json:
        data = {
            "command": cmd.strip(),
            "started_utc": started.isoformat(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "kernel": platform.release(), "loadavg": [load0, load1]},
            "sides": checks,
            "table": table,
        }  # fmt: skip
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    return 0  # a MISS is a result, shown in the table, not a failure


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench-limits: interrupted (office torn down)", file=sys.stderr)
        sys.exit(130)
