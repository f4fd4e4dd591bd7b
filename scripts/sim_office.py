"""Benchmark: the simulated office (``p2pmodel.testing.simoffice``) at many agents.

Every agent is a real ``Agent`` (link, peers, sharing, swarm service, get flow) on in-memory
fakes, all in one trio run under a fake clock that jumps when every task is idle. Each office
size runs once: every agent starts within ``--spread`` seconds and gets the same model at once
(``--units`` units of ``--segment-kib`` KiB through a mirror of ``--mirror-mib`` MiB/s); then
the office idles for ``--idle`` simulated seconds. Per size it prints:

- mirror: bytes the mirror served of the model's files / the model's size (target <= 1.02);
- last: simulated seconds until the last get ended; ``size/R`` the model at the mirror's rate;
- messages per agent during the gets (sent + received: hellos, pings, claims, announcements,
  requests and answers): mean and max, against 4 x (units + peers) + 200;
- idle: messages per agent per 30 s while nothing is fetched (liveness): mean and max;
- wall seconds and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio
import trio.testing

from p2pmodel.core.sharing import units_of
from p2pmodel.testing.simoffice import make_sim, run_office

KiB = 1024
MiB = 1024 * KiB


def shard_size_for(units: int, shards: int, segment: int) -> int:
    """The smallest shard size (whole segments) that cuts ``shards`` shards into at least
    ``units`` units in all (the tail of a long blob is cut finer: ``units_of``)."""
    per = max(1, -(-units // shards))
    segments = 1
    while len(units_of("sha256:" + "0" * 64, segments * segment, segment)) < per:
        segments += 1
    return segments * segment


def measure(args: argparse.Namespace, agents: int, tmp: Path) -> dict[str, object]:
    segment = args.segment_kib * KiB
    shard = shard_size_for(args.units, args.shards, segment)
    rate = int(args.mirror_mib * MiB)
    sim = make_sim(tmp, args.shards, shard, rate, segment)
    busy: dict[int, int] = {}

    async def main() -> float:
        def snapshot() -> None:
            busy.update({i: sim.messages(i) for i in sim.agents})

        return await run_office(
            sim,
            [args.spread * i / max(1, agents - 1) for i in range(agents)],
            linger=args.idle,
            at_done=snapshot,
        )

    wall = time.monotonic()
    took = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.01))
    wall = time.monotonic() - wall
    done = sorted(sim.results)
    if len(done) != agents:
        print(f"  {agents - len(done)} of {agents} gets did not end", file=sys.stderr)
    units = sim.units()
    msgs = [busy[i] for i in sim.agents]
    idle = [(sim.messages(i) - busy[i]) * 30 / args.idle for i in sim.agents] if args.idle else [0]
    return {
        "agents": agents,
        "units": units,
        "model_mib": round(sim.size / MiB, 2),
        "mirror_x": round(sim.file_bytes() / sim.size, 4),
        "last_s": round(took, 2),
        "size_over_rate_s": round(sim.size / rate, 2),
        "messages_mean": round(statistics.fmean(msgs)),
        "messages_max": max(msgs),
        "bound": 4 * (units + agents - 1) + 200,
        "idle_per_30s_mean": round(statistics.fmean(idle)),
        "idle_per_30s_max": round(max(idle)),
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KiB),
        "complete": len(done),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--agents", default="64,256", help="office sizes, comma separated")
    p.add_argument("--units", type=int, default=200, help="about this many units in the model")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--segment-kib", type=int, default=64)
    p.add_argument("--mirror-mib", type=float, default=8.0, help="mirror rate, MiB/s")
    p.add_argument("--spread", type=float, default=1.0, help="agents start within this many s")
    p.add_argument("--idle", type=float, default=30.0, help="idle seconds measured after")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = []
    for n in [int(x) for x in args.agents.split(",")]:
        tmp = Path(tempfile.mkdtemp(prefix="p2pm-sim-"))
        try:
            rows.append(measure(args, n, tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        r = rows[-1]
        print(
            f"{r['agents']:>5} agents {r['units']:>5} units: mirror {r['mirror_x']:.3f}x,"
            f" last {r['last_s']} s (size/R {r['size_over_rate_s']} s),"
            f" messages/agent mean {r['messages_mean']} max {r['messages_max']}"
            f" (bound {r['bound']}), idle/30 s mean {r['idle_per_30s_mean']}"
            f" max {r['idle_per_30s_max']}, wall {r['wall_s']} s, RSS {r['peak_rss_mib']} MiB",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
