"""Demo: a small office starts the same `p2pmodel get` at once and pulls the model from the
internet about once.

A generated model is served by a fake mirror (p2pmodel.testing.mirror) whose link is throttled
to R. Each workstation runs `p2pmodel serve`; once the agents know each other, every workstation
runs `p2pmodel get` at the same moment. The agents split the mirror work by leases on units of
the model and take the rest from each other. The table shows what each workstation took from
the mirror and from the LAN, how long it took, and whether its files are exact.

As root (with iproute2), the office is real: one network namespace per workstation and one for
the mirror on a bridge, the mirror's link shaped to R and each workstation's to 4R, mDNS
discovery. Without root it runs the same agents on loopback only (static peers, no mDNS, the
mirror throttled in-process), and says so. `--loopback` forces that mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from p2pmodel.testing.models import Repo, make_model
from p2pmodel.testing.netns import Network, netns_available
from p2pmodel.testing.site import Loopback, Place, Site, SiteError

MiB = 1024 * 1024
TRACE = bool(os.environ.get("DEMO_TRACE"))


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def run_office(
    place: Place, repo: Repo, work: Path, segment_mib: int, rate: int
) -> list[dict[str, Any]]:
    # On loopback nothing shapes the mirror's link: it throttles itself.
    flags = ("--total-rate", str(rate)) if isinstance(place, Loopback) else ()
    site = Site(place, repo, work, mirror_flags=flags)
    site.extra_env = {"P2PMODEL_SEGMENT_MIB": str(segment_mib), "P2PMODEL_LOG": "info"}
    site.serve_all()
    site.wait_mesh()
    hosts = place.workstations
    say(f"{len(hosts)} agents see each other; starting `p2pmodel get` on all at once")
    before = site.served()
    procs = {}
    t0 = time.monotonic()
    for ws in hosts:
        argv = site.get_cmd(work / f"out-{ws.name}")
        procs[ws.name] = site.popen(ws, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rows = []
    pending = dict(procs)
    ended: dict[str, float] = {}
    trace, next_sample = [], 0.0
    while pending:
        if TRACE and time.monotonic() - t0 >= next_sample:
            next_sample += 0.5
            trace.append(
                (round(time.monotonic() - t0, 2), round((site.served() - before) / MiB, 1))
            )
        for name, p in list(pending.items()):
            if p.poll() is not None:
                ended[name] = time.monotonic() - t0
                del pending[name]
        if time.monotonic() - t0 > 600:
            raise SystemExit("demo: the gets took over 10 minutes")
        time.sleep(0.05)
    for name, p in procs.items():
        out, err = p.communicate()
        result = json.loads(out) if p.returncode == 0 else {}
        rows.append(
            {
                "workstation": name,
                "exit": p.returncode,
                "error": err.decode().strip()[-300:] if p.returncode else "",
                "from_mirrors": result.get("fetched", 0),
                "from_peers": result.get("from_peers", 0),
                "seconds": ended[name],
                "exact": p.returncode == 0 and not site.mismatches(work / f"out-{name}"),
            }
        )
    if TRACE:
        print("mirror MiB served over time:", trace)
    rows.append({"workstation": "mirror", "served": site.served() - before})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workstations", type=int, default=4)
    ap.add_argument("--size-mib", type=int, default=96, help="model size (default 96 MiB)")
    ap.add_argument("--rate-mib", type=float, default=8.0, help="mirror rate R (MiB/s)")
    ap.add_argument("--segment-mib", type=int, default=4, help="unit size (a power of two)")
    ap.add_argument("--loopback", action="store_true", help="agents on loopback, no namespaces")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    rate = int(args.rate_mib * MiB)
    work = Path(tempfile.mkdtemp(prefix="p2pmodel-demo-"))
    why_not = "--loopback given" if args.loopback else netns_available()
    try:
        repo = make_model(
            work / "upstream", "demo/office-image", shards=4, shard_size=args.size_mib * MiB // 4
        )
        total = sum(f.size for f in repo.files)
        say(
            f"a generated model of {total / MiB:.0f} MiB in {len(repo.files)} files; the mirror "
            f"gives {args.rate_mib:g} MiB/s in all, so one download alone takes "
            f"{total / rate:.1f} s"
        )
        if why_not is None:
            say(
                f"virtual office: {args.workstations} workstations in network namespaces on a "
                f"bridge, LAN links {4 * args.rate_mib:g} MiB/s, mDNS discovery"
            )
            place: Place = Network(args.workstations, mirror_rate=rate, lan_rate=4 * rate)
        else:
            say(
                f"no network namespaces ({why_not}): the same agents on loopback only, "
                "static peers instead of mDNS, the mirror throttled in-process"
            )
            place = Loopback(args.workstations)
        try:
            with place:
                rows = run_office(place, repo, work, args.segment_mib, rate)
        except SiteError as exc:
            raise SystemExit(f"demo: {exc}") from None
        ws_rows, mirror = rows[:-1], rows[-1]
        print("\n| workstation | from the mirror | from the LAN | seconds | exact |")
        print("| --- | ---: | ---: | ---: | --- |")
        for r in ws_rows:
            exact = "yes" if r["exact"] else f"NO (exit {r['exit']}: {r['error']})"
            print(
                f"| {r['workstation']} | {r['from_mirrors'] / MiB:.1f} MiB | "
                f"{r['from_peers'] / MiB:.1f} MiB | {r['seconds']:.1f} | {exact} |"
            )
        last = max(r["seconds"] for r in ws_rows)
        print(
            f"\nThe mirror served {mirror['served'] / MiB:.1f} MiB for {len(ws_rows)} copies of "
            f"a {total / MiB:.0f} MiB model: {mirror['served'] / total:.2f}x the model. The last "
            f"workstation finished after {last:.1f} s, {last / (total / rate):.2f}x the time of "
            "one download alone."
        )
        if args.json:
            args.json.write_text(json.dumps({"total": total, "rate": rate, "rows": rows}))
        return 0 if all(r["exact"] for r in ws_rows) else 1
    finally:
        if args.keep:
            say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
