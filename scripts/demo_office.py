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
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from p2pmodel.testing.mirror import spawn
from p2pmodel.testing.models import Repo, make_model
from p2pmodel.testing.office import Office, netns_available

MiB = 1024 * 1024
TRACE = bool(os.environ.get("DEMO_TRACE"))
CLI = [sys.executable, "-m", "p2pmodel"]
STATS = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


class Place:
    """Where the workstations run: names, a way to start commands there, the mirror."""

    names: list[str]
    hub: str

    def popen(self, ws: str, argv: Sequence[str], env: dict[str, str], **kw: Any) -> Any:
        raise NotImplementedError

    def run(self, ws: str, argv: Sequence[str], env: dict[str, str]) -> str:
        p = self.popen(ws, argv, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=60)
        if p.returncode != 0:
            raise SystemExit(f"demo: {' '.join(argv[2:4])} failed on {ws}: {err.decode()[-500:]}")
        return str(out.decode())

    def served(self) -> int:
        out = self.run(self.names[0], [sys.executable, "-c", STATS, f"{self.hub}/_stats"], {})
        return int(json.loads(out)["bytes_served"])

    def serve_args(self, ws: str) -> list[str]:
        raise NotImplementedError

    def config(self, ws: str) -> str:
        return ""


class Namespaces(Place):
    def __init__(self, office: Office, repo_json: Path, work: Path) -> None:
        self.office = office
        self.names = [h.name for h in office.workstations]
        mirror = office.mirror_host
        assert mirror is not None
        try:
            _, urls = spawn(repo_json, work, host=mirror.ip, start=partial(office.popen, mirror))
        except RuntimeError as e:
            raise SystemExit(f"demo: {e}") from None
        self.hub = urls["hub_url"]

    def popen(self, ws: str, argv: Sequence[str], env: dict[str, str], **kw: Any) -> Any:
        return self.office.popen(self.office.host(ws), argv, env=env, **kw)

    def serve_args(self, ws: str) -> list[str]:
        return ["--interface", self.office.host(ws).ip]


class Loopback(Place):
    """Every agent on 127.0.0.1 with its own ports; peers configured, no mDNS."""

    def __init__(self, n: int, repo_json: Path, work: Path, rate: int) -> None:
        self.names = [f"ws{i}" for i in range(1, n + 1)]
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            proc, urls = spawn(repo_json, work, "--total-rate", str(rate), name="mirror")
        except RuntimeError as e:
            raise SystemExit(f"demo: {e}") from None
        self.procs.append(proc)
        self.hub = urls["hub_url"]
        base = 17400 + os.getpid() % 500 * 20
        self.ports = {ws: (base + 2 * i, base + 2 * i + 1) for i, ws in enumerate(self.names)}

    def popen(self, ws: str, argv: Sequence[str], env: dict[str, str], **kw: Any) -> Any:
        p = subprocess.Popen(list(argv), env={**os.environ, **env}, **kw)
        self.procs.append(p)
        return p

    def serve_args(self, ws: str) -> list[str]:
        rpc, bt = self.ports[ws]
        return ["--interface", "127.0.0.1", "--port", str(rpc), "--torrent-port", str(bt),
                "--no-discovery"]  # fmt: skip

    def config(self, ws: str) -> str:
        peers = ", ".join(f'"127.0.0.1:{self.ports[o][0]}"' for o in self.names if o != ws)
        return f"peers = [{peers}]\n"

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def wait(cond: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.1)


def run_office(place: Place, repo: Repo, work: Path, segment_mib: int) -> list[dict[str, Any]]:
    homes = {}
    for ws in place.names:
        home = work / ws
        home.mkdir()
        (home / "config.toml").write_text(
            place.config(ws)
            + f'\n[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["{place.hub}/"]\n'
        )
        homes[ws] = home

    def env(ws: str) -> dict[str, str]:
        return {
            "P2PMODEL_HOME": str(homes[ws]),
            "P2PMODEL_LAN": "on",
            "P2PMODEL_SEGMENT_MIB": str(segment_mib),
            "P2PMODEL_LOG": "info",
        }

    for ws in place.names:
        log = open(work / f"{ws}.serve.log", "ab")  # noqa: SIM115 - the child owns it
        place.popen(ws, [*CLI, "serve", *place.serve_args(ws)], env(ws), stdout=log, stderr=log)
        log.close()

    def status(ws: str) -> dict[str, Any]:
        return dict(json.loads(place.run(ws, [*CLI, "status", "--json"], env(ws))))

    for ws in place.names:
        wait(lambda ws=ws: (homes[ws] / "run" / "control.sock").exists(), 30, f"agent on {ws}")
    ids = {ws: status(ws)["agent"] for ws in place.names}

    def meshed() -> bool:
        return all(
            {p["agent"] for p in status(ws)["peers"] if p["alive"]} >= set(ids.values()) - {ids[ws]}
            for ws in place.names
        )

    wait(meshed, 30, "the agents to find each other")
    say(f"{len(place.names)} agents see each other; starting `p2pmodel get` on all at once")
    before = place.served()
    procs = {}
    t0 = time.monotonic()
    for ws in place.names:
        argv = [*CLI, "get", f"hf://{repo.repo_id}", "--to", str(work / f"out-{ws}"), "--json"]
        procs[ws] = place.popen(ws, argv, env(ws), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rows = []
    pending = dict(procs)
    ended: dict[str, float] = {}
    trace, next_sample = [], 0.0
    while pending:
        if TRACE and time.monotonic() - t0 >= next_sample:
            next_sample += 0.5
            trace.append(
                (round(time.monotonic() - t0, 2), round((place.served() - before) / MiB, 1))
            )
        for ws, p in list(pending.items()):
            if p.poll() is not None:
                ended[ws] = time.monotonic() - t0
                del pending[ws]
        if time.monotonic() - t0 > 600:
            raise SystemExit("demo: the gets took over 10 minutes")
        time.sleep(0.05)
    for ws, p in procs.items():
        out, err = p.communicate()
        result = json.loads(out) if p.returncode == 0 else {}
        exact = p.returncode == 0 and all(
            (work / f"out-{ws}" / f.path).read_bytes() == f.data_path.read_bytes()
            for f in repo.files
        )
        rows.append(
            {
                "workstation": ws,
                "exit": p.returncode,
                "error": err.decode().strip()[-300:] if p.returncode else "",
                "from_mirrors": result.get("fetched", 0),
                "from_peers": result.get("from_peers", 0),
                "seconds": ended[ws],
                "exact": exact,
            }
        )
    if TRACE:
        print("mirror MiB served over time:", trace)
    rows.append({"workstation": "mirror", "served": place.served() - before})
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
        repo_json = work / "repo.json"
        repo_json.write_text(repo.to_json())
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
            with Office(args.workstations, mirror_rate=rate, lan_rate=4 * rate) as office:
                rows = run_office(Namespaces(office, repo_json, work), repo, work, args.segment_mib)
        else:
            say(
                f"no network namespaces ({why_not}): the same agents on loopback only, "
                "static peers instead of mDNS, the mirror throttled in-process"
            )
            place = Loopback(args.workstations, repo_json, work, rate)
            try:
                rows = run_office(place, repo, work, args.segment_mib)
            finally:
                place.close()
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
