"""Benchmark: one internet download per office. N workstations want the same model at once.

Everything runs in a virtual office (`p2pmodel.testing.netns`): a namespace per workstation and
one for the "internet" (the test mirror, `python -m p2pmodel.testing.mirror`), on one bridge.
The mirror's link is shaped to R bytes/s (`--mirror-rate`), every workstation's link to ~4R
(`--lan-rate`). This process only starts commands inside the namespaces, reads their output and
reads tc counters; no agent, libtorrent, aria2c or mDNS ever runs in the host's namespace.

Two models are generated (`p2pmodel.testing.models`): a sharded one (`--shards` safetensors
summing to `--size-mib`, plus the small JSON/Markdown files) and a single-file one of the same
size. For each model, every mode below runs with fresh homes and output directories, all
workstations starting at the same moment (the commands are started back to back, within a few
ms; the spread is recorded):

1. `p2pmodel`: a `p2pmodel serve` agent per workstation, started and meshed (every agent lists
   every other alive) before the clock starts; then `p2pmodel get hf://REPO --to DIR --json` on
   every workstation at once (each handed to its own agent).
2. `p2pmodel-nosharing`: the same with `P2PMODEL_SHARING=off` for agents and gets (agents use
   only complete LAN holders and mirrors).
3. `aria2c -x16`: `aria2c -x16 -s16 -k1M` of every file of the model on every host from the
   mirror's hub URLs (LFS files answer 302 to the CDN port, as on huggingface.co), with
   `checksum=sha-256=...` for every file.
4. `aria2c torrent+url-list`: aria2c on every host given one .torrent per file (built here: v1,
   single file, private, the piece size rule of `p2pmodel.torrents`), whose `url-list` is the
   file's URL on the mirror (web seed, BEP 19) and whose announce URL is a tiny HTTP tracker
   run in the mirror's namespace (compact peer lists, 2 s interval). DHT, LPD and PEX are off.
   aria2c keeps seeding (`--seed-ratio=0.0 --seed-time=...`) until every host is done; a
   host's completion is the time its last `--on-bt-download-complete` hook ran.

Measured per mode and model: bytes the mirror served (its `/_stats` counters, read by a Python
one-liner inside the mirror's namespace, reset before each run), split by client address; their
ratio to the model size; per-host completion time from the common start; the last one divided
by the ideal size / R; exactness (sha256 of every result file against the model); and a
timeline sampled every 0.25 s of what each workstation received from the mirror and from the
LAN. The mirror's link is read from the counter of its tbf; the per-host split comes from htb
classes grafted under the tbf of the switch port facing each workstation (see `RxCounters`);
wire bytes are converted to TCP payload by 1448/1514. The mirror's own `/_stats` count is
reported too; it misses bytes of sends that a client aborted.

With `--subnets N` (2 or 3) every mode runs twice: first in the one-subnet office above (the
reference), then in an office of N subnets joined by a router namespace (`Network(subnets=N)`:
the workstations split across the subnets, ws1.. first; the mirror in subnet 1; the router's
legs shaped like the LAN; no multicast across it). How the agents of different subnets find
each other is `--join` (`JOINS`): `static`, every agent lists every other in `peers`;
`reflector`, avahi-daemon reflecting mDNS in the router and no static peers; `one`, the first
agent of each other subnet lists ws1 and peer exchange does the rest; or `tracker`, opentracker
in the router and `trackers` on the first agent of each subnet. Measured there
besides the above: the bytes the router sent into each subnet (its legs' tx counters, as TCP
payload by the same 1448/1514), over the model size.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from p2pmodel.core.sharing import SEGMENT, units_of
from p2pmodel.core.torrents import bencode, piece_size
from p2pmodel.core.tracker import whitelist
from p2pmodel.testing.models import Repo, RepoFile, make_model
from p2pmodel.testing.netns import (
    TBF_LATENCY,
    Host,
    Network,
    cleanup_stale,
    netns_available,
    tbf_burst,
)
from p2pmodel.testing.services import Reflector, Tracker
from p2pmodel.testing.site import (
    Site,
    SiteError,
    drop_environ,
    proc_cpu,
    proc_status,
    python_pid,
    stop_group,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
PNG = ROOT / "docs" / "bench-office.png"
SECTION = "## One internet download per office (scripts/bench-office)"
SUBNETS_SECTION = "## One office, several subnets (scripts/bench-office --subnets)"
SUBNETS_PNG = ROOT / "docs" / "bench-office-subnets.png"

MiB = 1 << 20
MB = 1_000_000
TRACKER_PORT = 6969
SAMPLE_PERIOD = 0.25  # seconds between timeline samples
POLL = 0.05  # seconds between completion checks
WIRE_PER_PAYLOAD = 1514 / 1448  # Ethernet + IPv4 + TCP (timestamps) per full 1448-byte segment
SMALL_PACKET = 256  # IP packets shorter than this are not counted (ACKs, mDNS, handshakes)
TARGET_MIRROR_RATIO = 1.02
TARGET_TIME_RATIO = 1.2  # issue 12 (it was 1.15 in BRIEF section 6)
TARGET_PEAK_RSS = 200 * MB  # per agent, --large (issue 12)
TARGET_ROUTER_RATIO = 1.2  # bytes the router carries into each subnet / size (issue 17)
TARGET_SUBNET_TIME_DELTA = 0.1  # last / (size/R): within this of the one-subnet office (issue 17)
DEFAULT_RATE = 32 * MiB
QUICK = {"hosts": 3, "size_mib": 64, "mirror_rate": 16 * MiB}
DEFAULTS = {"hosts": 6, "size_mib": 512, "mirror_rate": DEFAULT_RATE}
LARGE = {"hosts": 3, "mirror_rate": DEFAULT_RATE}
# --large: one 8 GiB single-file model, and a 4 GiB model of five 800 MiB shards (issue 12).
LARGE_SINGLE_MIB = 8 * 1024
LARGE_SHARDS, LARGE_SHARD_MIB = 5, 800

MODES = {
    "p2pmodel": "p2pmodel",
    "nosharing": "p2pmodel-nosharing",
    "aria2c": "aria2c -x16",
    "torrent": "aria2c torrent+url-list",
}
MODELS = {"sharded": "bench/sharded", "single": "bench/single"}


# Runs inside the mirror's namespace: a minimal HTTP BitTorrent tracker (BEP 3 + compact peers,
# BEP 23). Every announce registers (client address, port) for the info-hash and gets the
# others back; `event=stopped` unregisters. No scrape, no expiry: it lives for one run.
TRACKER = r"""
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

def benc(o):
    if isinstance(o, int):
        return b'i%de' % o
    if isinstance(o, bytes):
        return b'%d:' % len(o) + o
    return b'd' + b''.join(benc(k) + benc(o[k]) for k in sorted(o)) + b'e'

swarms, lock = {}, threading.Lock()

class Tracker(BaseHTTPRequestHandler):
    def do_GET(self):
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True, encoding='latin-1')
        q = {k: v[0].encode('latin-1') for k, v in query.items()}
        if len(q.get('info_hash', b'')) != 20 or not q.get('port', b'').isdigit():
            body = benc({b'failure reason': b'bad announce'})
        else:
            me = (self.client_address[0], int(q['port']))
            with lock:
                peers = swarms.setdefault(q['info_hash'], set())
                if q.get('event') == b'stopped':
                    peers.discard(me)
                else:
                    peers.add(me)
                others = [p for p in peers if p != me]
            compact = b''.join(socket.inet_aton(a) + p.to_bytes(2, 'big') for a, p in others)
            body = benc({b'interval': 2, b'min interval': 1, b'complete': 0,
                         b'incomplete': len(others), b'peers': compact})
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Tracker)
print('ready', flush=True)
server.serve_forever()
"""


def log(msg: str) -> None:
    print(f"bench-office: {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """Something the benchmark needs did not work (a tool failed to start, a wait timed out)."""


# --- per-source receive counters ----------------------------------------------------------------


class RxCounters:
    """What left the mirror's link, and what each workstation got from the mirror and the LAN.

    The mirror's link is read from the byte counter of the tbf on its `eth0` (nothing is added
    there, so that FIFO is untouched; qdisc counters count the headers of every segment of a
    GSO packet, the device's tx counter does not). Per workstation, an htb with three classes
    that have no rate of their own is grafted under the tbf of the switch port facing it (what
    it receives; each leaf keeps the tbf's byte limit): 1 = from the mirror, 2 = from another
    office address, 3 = the rest and every packet under SMALL_PACKET bytes (ACKs, mDNS). The
    shaping rate is unchanged, but the classes are served round robin instead of one FIFO,
    which only matters when a port is full. Reading all counters is two runs of `tc` (a few
    ms). Counts are wire bytes (Ethernet + IP + TCP headers included)."""

    def __init__(self, office: Network, lan_rate: int | None) -> None:
        assert office.mirror_host is not None
        self.office = office
        self.mirror_ns = office.mirror_host.netns
        self.hosts = office.workstations
        mirror_ip = office.mirror_host.ip
        for ws in self.hosts:
            self._graft(
                office.switch_of(ws),
                ws.name,
                lan_rate,
                [
                    "match u16 0 0xff00 at 2",  # IPv4 total length < 256 (zero high byte)
                    f"match ip src {mirror_ip}/32",
                    *(f"match ip src {subnet}" for subnet in office.subnets),
                ],
                [3, 1, *(2 for _ in office.subnets)],
                default=3,
            )

    @staticmethod
    def _tc(netns: str, *args: str, stdin: str | None = None) -> str:
        r = subprocess.run(
            ["tc", "-n", netns, *args],
            check=False,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if r.returncode != 0:
            raise BenchError(f"`tc -n {netns} {' '.join(args)}` failed: {r.stderr.strip()}")
        return r.stdout

    def _graft(
        self,
        netns: str,
        dev: str,
        rate: int | None,
        matches: list[str],
        classes: list[int],
        default: int,
    ) -> None:
        """htb 10: under dev's tbf; filter i sends `matches[i]` to class 10:`classes[i]`,
        everything else goes to 10:`default`."""
        latency = float(TBF_LATENCY.removesuffix("ms")) / 1000
        limit = int(rate * latency) + tbf_burst(rate) if rate else 4 * MiB
        qdiscs = json.loads(self._tc(netns, "-j", "qdisc", "show", "dev", dev))
        root = next((q for q in qdiscs if q.get("root")), None)
        where = f"parent {root['handle']}1" if root and root.get("kind") == "tbf" else "root"
        tc = functools.partial(self._tc, netns)
        tc(*f"qdisc add dev {dev} {where} handle 10: htb default {default}".split())
        for c in sorted({*classes, default}):
            htb = "htb rate 100gbit quantum 200000"  # a counter, not a shaper
            tc(*f"class add dev {dev} parent 10: classid 10:{c} {htb}".split())
            tc(*f"qdisc add dev {dev} parent 10:{c} bfifo limit {limit}".split())
        for prio, (match, c) in enumerate(zip(matches, classes, strict=True), start=1):
            u32 = f"filter add dev {dev} parent 10: protocol ip prio {prio} u32"
            tc(*f"{u32} {match} flowid 10:{c}".split())

    @staticmethod
    def _parse(text: str) -> list[dict[int, int]]:
        """`tc -s class show` of several devices: per device, htb class minor -> bytes sent."""
        out: list[dict[int, int]] = []
        current: int | None = None
        for line in text.splitlines():
            m = re.match(r"class htb 10:(\w+) ", line)
            if m:
                current = int(m.group(1), 16)
                if not out or current in out[-1]:
                    out.append({})  # the next device's listing
                continue
            m = re.match(r"\s*Sent (\d+) bytes", line)
            if m and current is not None:
                out[-1][current] = int(m.group(1))
                current = None
        return out

    def read(self) -> tuple[int, list[tuple[int, int]]]:
        """Wire bytes so far: sent on the mirror's link, and (from the mirror, from the LAN)
        received per workstation."""
        qdiscs = json.loads(self._tc(self.mirror_ns, "-s", "-j", "qdisc", "show", "dev", "eth0"))
        sent = next(int(q["bytes"]) for q in qdiscs if q.get("root"))
        by_port: dict[str, dict[int, int]] = {}
        for sw in self.office.switches:  # one `tc` per switch
            ports = [ws for ws in self.hosts if self.office.switch_of(ws) == sw]
            if not ports:
                continue
            lines = "".join(f"class show dev {ws.name}\n" for ws in ports)
            lan = self._parse(self._tc(sw, "-s", "-batch", "-", stdin=lines))
            if len(lan) != len(ports):
                raise BenchError(f"could not parse the tc class counters of {len(ports)} ports")
            by_port.update((ws.name, c) for ws, c in zip(ports, lan, strict=True))
        return sent, [(by_port[ws.name].get(1, 0), by_port[ws.name].get(2, 0)) for ws in self.hosts]


# --- results ------------------------------------------------------------------------------------


@dataclass
class HostResult:
    host: str
    ip: str
    seconds: float | None  # from the common start until done; None: failed or timed out
    exit_code: int | None
    exact: bool
    stats_bytes: int  # body bytes the mirror counted for this host (/_stats by_client)
    rx_mirror: int  # TCP payload from the mirror's address (tc counter, estimated from wire)
    rx_lan: int  # TCP payload from other office addresses
    tool: dict[str, Any] = field(default_factory=dict)  # e.g. p2pmodel's fetched / from_peers
    error: str = ""
    client_cpu_s: float | None = None  # the command's own CPU (wait4), with its children
    agent_cpu_s: float | None = None  # p2pmodel: the agent's utime+stime over the run
    agent_peak_rss: int | None = None  # p2pmodel: the agent's VmHWM at the end (bytes)
    verify_s: float | None = None  # p2pmodel: longest "verified in" of its agent's log
    messages: int | None = None  # p2pmodel: peer-link messages sent + received during the run
    idle_messages: float | None = None  # p2pmodel: the same per 30 s of --idle after it


@dataclass
class CaseResult:
    mode: str
    model: str
    size: int
    files: int
    ideal_s: float
    launch_spread_s: float
    mirror_bytes: int  # left through the mirror's link (eth0 tx, as TCP payload)
    stats_bytes: int  # the mirror's own /_stats bytes_served (misses aborted sends)
    mirror_retransmits: int  # TCP segments the mirror's namespace retransmitted
    mirror_requests: int
    mirror_connections: int
    hosts: list[HostResult]
    timeline: list[list[Any]]  # [t, [[from mirror, from LAN] per host], mirror link] (payload)
    wall_s: float
    notes: list[str] = field(default_factory=list)
    office: str = "1 subnet"  # which office ran it (`--subnets`: also "N subnets, JOIN")
    units: int = 0  # sharing units of the model (core.sharing.units_of at the agents' segment)
    subnets: int = 1
    router_into: list[int] = field(default_factory=list)  # payload the router sent per subnet
    router_out_of: list[int] = field(default_factory=list)  # payload it received per subnet

    @property
    def done(self) -> list[float]:
        return [h.seconds for h in self.hosts if h.seconds is not None]

    def cpu_per_gib(self) -> float | None:
        """Agent + command CPU seconds per GiB of the model each workstation got (mean)."""
        cpu = [
            (h.agent_cpu_s or 0.0) + (h.client_cpu_s or 0.0)
            for h in self.hosts
            if h.agent_cpu_s is not None
        ]
        return statistics.mean(cpu) / (self.size / (1 << 30)) if cpu else None

    def phases(self) -> dict[str, float | None]:
        """When things happened, seconds from the common start, read from the timeline:
        the mirror's first and last byte (1 MiB / all but 1 MiB of what it sent), the last
        byte any workstation received from the LAN, the first and last workstation done."""
        sent = [(t, m) for t, _, m in self.timeline]
        total = sent[-1][1] if sent else 0

        def at(level: float) -> float | None:
            return next((t for t, m in sent if m >= level), None) if total else None

        lan_last = None
        for t, rx, _ in self.timeline:
            if sum(n for _, n in rx) < sum(n for _, n in self.timeline[-1][1]) - MiB:
                lan_last = t
        return {
            "mirror_first": at(min(MiB, total)),
            "mirror_last": at(max(total - MiB, 1)),
            "lan_last": lan_last,
            "first_done": min(self.done) if self.done else None,
            "last_done": self.last_s,
            "verify_max": max((h.verify_s for h in self.hosts if h.verify_s), default=None),
        }

    @property
    def all_ok(self) -> bool:
        return all(h.seconds is not None and h.exact for h in self.hosts)

    @property
    def last_s(self) -> float | None:
        return max(self.done) if self.done and self.all_ok else None

    @property
    def mirror_ratio(self) -> float:
        return self.mirror_bytes / self.size

    @property
    def time_ratio(self) -> float | None:
        return None if self.last_s is None else self.last_s / self.ideal_s

    @property
    def router_ratios(self) -> list[float]:
        """Bytes the router carried into each subnet, over the model size."""
        return [n / self.size for n in self.router_into]

    def summary(self) -> dict[str, Any]:
        return {
            "mirror_ratio": self.mirror_ratio,
            "last_s": self.last_s,
            "time_ratio": self.time_ratio,
            "first_s": min(self.done) if self.done else None,
            "median_s": statistics.median(self.done) if self.done else None,
            "lan_bytes": sum(h.rx_lan for h in self.hosts),
            "all_exact": all(h.exact for h in self.hosts),
            "all_done": all(h.seconds is not None for h in self.hosts),
            "cpu_s_per_gib": self.cpu_per_gib(),
            "peak_rss_max": max((h.agent_peak_rss or 0 for h in self.hosts), default=0) or None,
            "phases": self.phases(),
            "router_ratios": self.router_ratios,
        }


# --- how the agents of several subnets find each other -------------------------------------------


class Join:
    """One way for the agents of an office of several subnets to find each other: `start` runs
    once per office (before any agent), `config` gives a workstation's top-level config keys.
    The one-subnet office uses none (mDNS on one segment)."""

    label = ""

    def start(self, office: Network, work: Path) -> None:
        pass

    def config(self, office: Network, ws: Host) -> str:
        return ""


class StaticJoin(Join):
    """Every agent lists every other agent in `peers` (what works without anything new)."""

    label = "static"

    def config(self, office: Network, ws: Host) -> str:
        others = ", ".join(f'"{o.ip}:{AGENT_RPC_PORT}"' for o in office.workstations if o != ws)
        return f"peers = [{others}]"


class ReflectorJoin(Join):
    """No static peers: avahi-daemon reflects mDNS between the router's legs."""

    label = "reflector"

    def start(self, office: Network, work: Path) -> None:
        Reflector(office, work / "avahi")  # stopped with the office


def _first_of_subnet(office: Network, ws: Host) -> bool:
    return office.in_subnet(office.subnet_of(ws))[0] == ws


class OnePeerJoin(Join):
    """The first agent of each subnet but subnet 1 lists ws1 as its one static peer; peer
    exchange does the rest."""

    label = "one peer"

    def config(self, office: Network, ws: Host) -> str:
        first = office.workstations[0]
        if office.subnet_of(ws) != 1 and _first_of_subnet(office, ws):
            return f'peers = ["{first.ip}:{AGENT_RPC_PORT}"]'
        return ""


class TrackerJoin(Join):
    """opentracker in the router, whitelisting the open office's rendezvous hash; the first
    agent of each subnet has it in `trackers`, the others learn it by peer exchange."""

    label = "tracker"
    url = ""

    def start(self, office: Network, work: Path) -> None:
        assert office.router is not None
        self.url = Tracker(office, office.router, work / "opentracker", whitelist(None)).url

    def config(self, office: Network, ws: Host) -> str:
        return f'trackers = ["{self.url}"]' if _first_of_subnet(office, ws) else ""


AGENT_RPC_PORT = 7420  # `serve`'s default
JOINS: dict[str, type[Join]] = {
    "static": StaticJoin,
    "reflector": ReflectorJoin,
    "one": OnePeerJoin,
    "tracker": TrackerJoin,
}


# --- the office ---------------------------------------------------------------------------------


class Bench:
    def __init__(
        self,
        office: Network,
        work: Path,
        repos: dict[str, Repo],
        args: Any,
        join: Join | None = None,
        label: str = "1 subnet",
    ) -> None:
        self.office = office
        self.work = work
        self.repos = repos
        self.args = args
        self.join = join or Join()
        self.label = label
        self.rate: int = args.mirror_rate
        first, *others = repos.values()
        self.site = Site(office, first, work, others)
        self.mirror = self.site.mirror
        self.hub = self.site.hub
        self.cdn = self.site.cdn
        self.tracker = f"http://{self.mirror.ip}:{TRACKER_PORT}/announce"
        with (work / "tracker.log").open("wb") as errlog:
            tracker = office.popen(
                self.mirror,
                [sys.executable, "-c", TRACKER, self.mirror.ip, str(TRACKER_PORT)],
                stdout=subprocess.PIPE,
                stderr=errlog,
            )
        assert tracker.stdout is not None
        if tracker.stdout.readline().strip() != b"ready":
            raise BenchError("the tracker did not start")
        self.counters = RxCounters(office, args.lan_rate or None)
        self.torrents: dict[str, dict[str, Path]] = {}
        self.join.start(office, work)

    def router_payload(self) -> tuple[list[int], list[int]]:
        """Bytes the router has sent into / received from each subnet so far (wire bytes);
        nothing in a one-subnet office."""
        if self.office.router is None:
            return [], []
        legs = self.office.router_bytes()
        return [legs[k].into for k in sorted(legs)], [legs[k].out_of for k in sorted(legs)]

    def popen_logged(
        self, host: Host, argv: Sequence[str], out: Path, err: Path, **kw: Any
    ) -> subprocess.Popen[bytes]:
        """`Network.popen` with stdout written to `out` and stderr appended to `err`."""
        with contextlib.ExitStack() as stack:
            stdout = stack.enter_context(out.open("wb"))
            stderr = stack.enter_context(err.open("ab"))
            return self.office.popen(host, argv, stdout=stdout, stderr=stderr, **kw)

    # -- mirror ----------------------------------------------------------------------------

    def retransmitted(self) -> int:
        """TCP segments the mirror's namespace has retransmitted (/proc/PID/net/snmp)."""
        lines = [
            line.split()
            for line in Path(f"/proc/{self.site.mirror_proc.pid}/net/snmp").read_text().splitlines()
            if line.startswith("Tcp:")
        ]
        return int(lines[1][lines[0].index("RetransSegs")])

    def file_url(self, repo: Repo, f: RepoFile, direct: bool) -> str:
        """The hub `resolve` URL (LFS answers 302 to the CDN), or with `direct` the CDN's."""
        if direct and f.lfs:
            return f"{self.cdn}/lfs/{f.sha256}"
        return f"{self.hub}/{repo.repo_id}/resolve/main/{f.path}"

    # -- one case --------------------------------------------------------------------------

    def run_case(self, mode: str, model: str) -> CaseResult:
        repo = self.repos[model]
        case_dir = Path(tempfile.mkdtemp(prefix=f"{mode}-{model}-", dir=self.work))
        try:
            return self._run_case(mode, model, repo, case_dir)
        finally:
            if not self.args.keep_work:
                shutil.rmtree(case_dir, ignore_errors=True)

    def _run_case(self, mode: str, model: str, repo: Repo, case_dir: Path) -> CaseResult:
        hosts = self.office.workstations
        size = sum(f.size for f in repo.files)
        ideal = size / self.rate
        timeout = self.args.timeout or (120 + 3 * len(hosts) * ideal)
        outs = {ws.name: case_dir / "out" / ws.name for ws in hosts}
        for out in outs.values():
            out.mkdir(parents=True)
        notes: list[str] = []
        env: dict[str, dict[str, str]] = {}
        done_files: dict[str, Path] = {}
        pids: dict[str, int] = {}
        if mode in ("p2pmodel", "nosharing"):
            self._start_agents(case_dir, mode)
            pids = {ws.name: python_pid(self.site.procs[ws.name].pid) for ws in hosts}
            env = {ws.name: self.site.env(ws) for ws in hosts}
            argvs = {ws.name: self.site.get_cmd(outs[ws.name], repo) for ws in hosts}
        elif mode == "aria2c":
            argvs = {ws.name: self._aria2c_argv(repo, case_dir, ws, outs[ws.name]) for ws in hosts}
        else:
            torrents = self._torrents(model, repo)
            argvs = {}
            for ws in hosts:
                done_files[ws.name] = case_dir / f"{ws.name}.done"
                argvs[ws.name] = self._torrent_argv(
                    repo, torrents, case_dir, ws, outs[ws.name], done_files[ws.name]
                )
        agents = mode in ("p2pmodel", "nosharing")
        msg0 = {ws.name: self._messages(ws) for ws in hosts} if agents else {}
        self.site.stats(reset=True)
        retrans0 = self.retransmitted()
        sent0, base = self.counters.read()
        router0 = self.router_payload()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        launched: dict[str, float] = {}
        client_cpu: dict[str, float] = {}
        cpu0 = {name: proc_cpu(pid) for name, pid in pids.items()}
        wall_offset = time.time() - time.monotonic()

        def reap(name: str, proc: subprocess.Popen[bytes]) -> int | None:
            """Like `proc.poll()`, and keeps the command's CPU time (wait4's rusage)."""
            if proc.returncode is None:
                with contextlib.suppress(ChildProcessError):
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        proc.returncode = os.waitstatus_to_exitcode(status)
                        client_cpu[name] = usage.ru_utime + usage.ru_stime
            return proc.returncode

        for ws in hosts:  # back to back: the launches are a few ms apart
            launched[ws.name] = time.monotonic()
            procs[ws.name] = self.popen_logged(
                ws, argvs[ws.name], case_dir / f"{ws.name}.out", case_dir / f"{ws.name}.err",
                env=env.get(ws.name),
            )  # fmt: skip
        t0 = min(launched.values())
        spread = max(launched.values()) - t0
        finished: dict[str, float] = {}
        codes: dict[str, int | None] = {}
        timeline: list[list[Any]] = []

        def sample() -> None:
            sent, rx = self.counters.read()
            timeline.append(
                [
                    round(time.monotonic() - t0, 3),
                    [
                        [round((m - m0) / WIRE_PER_PAYLOAD), round((n - n0) / WIRE_PER_PAYLOAD)]
                        for (m, n), (m0, n0) in zip(rx, base, strict=True)
                    ],
                    round((sent - sent0) / WIRE_PER_PAYLOAD),
                ]
            )

        next_sample = t0
        deadline = t0 + timeout
        while True:
            if time.monotonic() >= next_sample:
                sample()
                next_sample += SAMPLE_PERIOD
            for ws in hosts:
                name = ws.name
                if name in finished or name in codes:
                    continue
                proc = procs[name]
                if mode == "torrent":
                    when = self._torrent_done(done_files[name], len(repo.files), wall_offset)
                    if when is not None:
                        finished[name] = when - t0
                    elif reap(name, proc) is not None:
                        codes[name] = proc.returncode
                elif reap(name, proc) is not None:
                    codes[name] = proc.returncode
                    if proc.returncode == 0:
                        finished[name] = time.monotonic() - t0
            if all(n in finished or n in codes for n in procs):
                break
            if time.monotonic() > deadline:
                notes.append(f"timed out after {timeout:.0f} s")
                break
            time.sleep(POLL)
        sample()  # the last sample sees everything; then stop whatever still runs
        router1 = self.router_payload()
        for proc in procs.values():
            stop_group(proc)
        for name, proc in procs.items():
            codes.setdefault(name, proc.returncode)
        stats = self.site.stats()
        retrans = self.retransmitted() - retrans0
        agent_cpu: dict[str, float] = {}
        peak: dict[str, int] = {}
        for name, pid in pids.items():
            with contextlib.suppress(OSError):
                agent_cpu[name] = proc_cpu(pid) - cpu0[name]
                peak[name] = proc_status(pid).get("VmHWM", 0)
        msg1 = {ws.name: self._messages(ws) for ws in hosts} if agents else {}
        msg2: dict[str, int | None] = {}
        if agents and self.args.idle:
            time.sleep(self.args.idle)  # nothing to fetch: liveness only
            msg2 = {ws.name: self._messages(ws) for ws in hosts}
        if mode in ("p2pmodel", "nosharing"):
            for ws in hosts:
                self.site.stop(ws)
        results: list[HostResult] = []
        last_rx = timeline[-1][1]
        for i, ws in enumerate(hosts):
            tool: dict[str, Any] = {}
            error = ""
            if mode in ("p2pmodel", "nosharing"):
                with contextlib.suppress(OSError, ValueError):
                    out = json.loads((case_dir / f"{ws.name}.out").read_text())
                    tool = {k: out.get(k) for k in ("fetched", "from_peers")}
            if ws.name not in finished:
                error = (case_dir / f"{ws.name}.err").read_text(errors="replace").strip()[-500:]
                error = error or f"exit {codes.get(ws.name)}"
            exact = not self.site.mismatches(outs[ws.name], repo)
            results.append(
                HostResult(
                    host=ws.name,
                    ip=ws.ip,
                    seconds=finished.get(ws.name),
                    exit_code=codes.get(ws.name),
                    exact=exact,
                    stats_bytes=int(stats.get("by_client", {}).get(ws.ip, 0)),
                    rx_mirror=last_rx[i][0],
                    rx_lan=last_rx[i][1],
                    tool=tool,
                    error=error,
                    client_cpu_s=client_cpu.get(ws.name),
                    agent_cpu_s=agent_cpu.get(ws.name),
                    agent_peak_rss=peak.get(ws.name),
                    messages=_minus(msg1.get(ws.name), msg0.get(ws.name)),
                    idle_messages=_per_30s(
                        _minus(msg2.get(ws.name), msg1.get(ws.name)), self.args.idle
                    ),
                )
            )
        for ws, res in zip(hosts, results, strict=True):
            if mode in ("p2pmodel", "nosharing"):
                text = self.site.log(ws, tail=None)
                if "Traceback" in text:
                    notes.append(f"{ws.name}'s agent logged a traceback: {text[-300:]!r}")
                verified = [float(x) for x in re.findall(r"verified in ([0-9.]+) s", text)]
                res.verify_s = max(verified, default=None)
        return CaseResult(
            mode=mode,
            model=model,
            size=size,
            files=len(repo.files),
            ideal_s=ideal,
            launch_spread_s=spread,
            mirror_bytes=int(timeline[-1][2]),
            stats_bytes=int(stats["bytes_served"]),
            mirror_retransmits=retrans,
            mirror_requests=int(stats["requests"]),
            mirror_connections=int(stats["connections"]),
            hosts=results,
            timeline=timeline,
            wall_s=time.monotonic() - t0,
            notes=notes,
            office=self.label,
            units=sum(len(units_of(f.sha256, f.size, self._segment())) for f in repo.files),
            subnets=len(self.office.switches),
            router_into=[
                round((b - a) / WIRE_PER_PAYLOAD)
                for a, b in zip(router0[0], router1[0], strict=True)
            ],
            router_out_of=[
                round((b - a) / WIRE_PER_PAYLOAD)
                for a, b in zip(router0[1], router1[1], strict=True)
            ],
        )

    # -- p2pmodel ----------------------------------------------------------------------------

    def _segment(self) -> int:
        return self.args.segment_mib * MiB if self.args.segment_mib else SEGMENT

    def _messages(self, ws: Host) -> int | None:
        """ws's agent's peer-link messages so far, sent and received (``status --json``)."""
        try:
            link = self.site.status(ws).get("link", {})
        except (SiteError, ValueError, subprocess.TimeoutExpired):
            return None
        keys = ("messages_sent", "requests", "served", "messages_received")
        return sum(int(link.get(k, 0)) for k in keys)

    def _start_agents(self, case_dir: Path, mode: str) -> None:
        """Fresh homes in ``case_dir``, an agent on every workstation, meshed."""
        hosts = self.office.workstations
        # info: each unit and each digest check with its time (the phases table reads them)
        self.site.extra_env = {"P2PMODEL_LOG": "info"}
        if self.args.segment_mib:
            self.site.extra_env["P2PMODEL_SEGMENT_MIB"] = str(self.args.segment_mib)
        if mode == "nosharing":
            self.site.extra_env["P2PMODEL_SHARING"] = "off"
        for ws in hosts:
            self.site.new_home(ws, self.join.config(self.office, ws), under=case_dir / "homes")
        t = time.monotonic()
        self.site.serve_all(hosts)
        self.site.wait_mesh(hosts, seconds=60)
        log(f"  {len(hosts)} agents up and meshed in {time.monotonic() - t:.1f} s")

    # -- aria2c ------------------------------------------------------------------------------

    @staticmethod
    def _aria2c_common() -> list[str]:
        return [
            "aria2c", "--no-conf=true", "--console-log-level=warn", "--summary-interval=0",
            "--show-console-readout=false", "-x16", "-s16", "-k1M", "--file-allocation=none",
            "--allow-overwrite=true", "--auto-file-renaming=false", "--connect-timeout=10",
            "--timeout=30",
        ]  # fmt: skip

    def _aria2c_argv(self, repo: Repo, case_dir: Path, ws: Host, out: Path) -> list[str]:
        lines = []
        for f in repo.files:
            lines.append(
                f"{self.file_url(repo, f, direct=False)}\n  out={f.path}\n"
                f"  checksum=sha-256={f.sha256}\n"
            )
        listing = case_dir / f"{ws.name}.aria2c-input"
        listing.write_text("".join(lines))
        return [*self._aria2c_common(), "-d", str(out), "-i", str(listing)]

    def _torrents(self, model: str, repo: Repo) -> dict[str, Path]:
        """One .torrent per file of the model (built once): web seed + our tracker."""
        if model in self.torrents:
            return self.torrents[model]
        tdir = self.work / "torrents" / model
        tdir.mkdir(parents=True)
        made: dict[str, Path] = {}
        for f in repo.files:
            plen = piece_size(f.size)
            pieces = bytearray()
            with f.data_path.open("rb") as fh:
                while block := fh.read(plen):
                    pieces += hashlib.sha1(block, usedforsecurity=False).digest()
            info = {
                b"length": f.size,
                b"name": f.path.rsplit("/", 1)[-1].encode(),
                b"piece length": plen,
                b"pieces": bytes(pieces),
                b"private": 1,  # no DHT, no PEX: peers only from the tracker
            }
            torrent = {
                b"announce": self.tracker.encode(),
                b"info": info,
                b"url-list": [self.file_url(repo, f, direct=True).encode()],
            }
            path = tdir / f"{f.sha256}.torrent"
            path.write_bytes(bencode(torrent))
            made[f.path] = path
        self.torrents[model] = made
        return made

    def _torrent_argv(
        self,
        repo: Repo,
        torrents: dict[str, Path],
        case_dir: Path,
        ws: Host,
        out: Path,
        done_file: Path,
    ) -> list[str]:
        lines = []
        for f in repo.files:
            parent = out / f.path.rsplit("/", 1)[0] if "/" in f.path else out
            lines.append(f"{torrents[f.path]}\n  dir={parent}\n")
        listing = case_dir / f"{ws.name}.aria2c-input"
        listing.write_text("".join(lines))
        hook = case_dir / f"{ws.name}.hook"
        hook.write_text(f'#!/bin/sh\necho "$(date +%s.%N) $3" >> {done_file}\n')
        hook.chmod(0o755)
        return [
            *self._aria2c_common(),
            "-i", str(listing), "-j", str(len(repo.files) + 1),
            "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
            "--enable-peer-exchange=false", "--bt-tracker-interval=2",
            "--seed-ratio=0.0", "--seed-time=600", f"--on-bt-download-complete={hook}",
        ]  # fmt: skip

    @staticmethod
    def _torrent_done(done_file: Path, files: int, wall_offset: float) -> float | None:
        """Monotonic time of the last completion hook once all `files` ran, else None."""
        try:
            lines = done_file.read_text().splitlines()
        except OSError:
            return None
        stamps = [float(line.split()[0]) for line in lines if line.strip()]
        if len(stamps) < files:
            return None
        return max(stamps) - wall_offset


# --- report -------------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def case_table(cases: list[CaseResult]) -> list[str]:
    several = len({c.office for c in cases}) > 1
    lines = [
        ("| office " if several else "")
        + "| mode | model | mirror MiB | mirror / size | mirror's count MiB | retransmits MiB "
        "| LAN MiB | first done s | median s | last done s | last / (size/R) | exact "
        "| per-host done s |",
        ("| --- " if several else "")
        + "| --- | --- | "
        + " | ".join(["---:"] * 9)
        + " | --- | --- |",
    ]
    for c in cases:
        s = c.summary()
        per_host = ", ".join(fmt(h.seconds, 1) for h in c.hosts)
        exact = "yes" if s["all_exact"] else "NO"
        lines.append(
            (f"| {c.office} " if several else "")
            + f"| {MODES[c.mode]} | {c.model} | {c.mirror_bytes / MiB:.1f} | {c.mirror_ratio:.2f} "
            f"| {c.stats_bytes / MiB:.1f} | {c.mirror_retransmits * 1448 / MiB:.1f} "
            f"| {s['lan_bytes'] / MiB:.0f} "
            f"| {fmt(s['first_s'], 1)} | {fmt(s['median_s'], 1)} "
            f"| {fmt(s['last_s'], 1)} | {fmt(s['time_ratio'])} | {exact} | {per_host} |"
        )
    return lines


def subnet_table(cases: list[CaseResult]) -> list[str]:
    """Per office and mode: mirror, router bytes into (and out of) each subnet, last finish;
    the one-subnet office (no router) is the reference."""
    most = max(c.subnets for c in cases)
    lines = [
        "| office | mode | model | mirror / size "
        + "".join(f"| router into subnet {k} / size " for k in range(1, most + 1))
        + "| router out of each subnet / size | last done s | last / (size/R) "
        "| vs one subnet | exact |",
        "| --- | --- | --- | " + " | ".join(["---:"] * (most + 5)) + " | --- |",
    ]
    ref = {(c.mode, c.model): c.time_ratio for c in cases if c.subnets == 1}
    for c in cases:
        into = [f"{r:.2f}" for r in c.router_ratios] + ["-"] * (most - len(c.router_ratios))
        out = ", ".join(f"{n / c.size:.2f}" for n in c.router_out_of) or "-"
        base, tr = ref.get((c.mode, c.model)), c.time_ratio
        delta = f"{tr - base:+.2f}" if c.subnets > 1 and tr is not None and base else "-"
        lines.append(
            f"| {c.office} | {MODES[c.mode]} | {c.model} | {c.mirror_ratio:.2f} | "
            + " | ".join(into)
            + f" | {out} | {fmt(c.last_s, 1)} | {fmt(tr)} | {delta} "
            f"| {'yes' if c.all_ok else 'NO'} |"
        )
    return lines


def _minus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b


def _per_30s(n: int | None, seconds: float) -> float | None:
    return None if n is None or not seconds else n * 30 / seconds


def messages_table(cases: list[CaseResult]) -> list[str]:
    """p2pmodel's cases: peer messages per agent during the run and at rest."""
    lines = [
        "| mode | model | hosts | messages per agent, mean | max | bound 4 x (units + peers) "
        "+ 200 | idle messages per agent per 30 s, mean | max |",
        "| --- | --- | " + " | ".join(["---:"] * 6) + " |",
    ]
    for c in cases:
        counts = [h.messages for h in c.hosts if h.messages is not None]
        if c.mode not in ("p2pmodel", "nosharing") or not counts:
            continue
        idle = [h.idle_messages for h in c.hosts if h.idle_messages is not None]
        bound = 4 * (c.units + len(c.hosts) - 1) + 200 if c.units else None
        idle_mean = statistics.fmean(idle) if idle else None
        lines.append(
            f"| {MODES[c.mode]} | {c.model} | {len(c.hosts)} | {statistics.fmean(counts):.0f} "
            f"| {max(counts)} | {fmt(bound, 0)} | {fmt(idle_mean, 0)} "
            f"| {fmt(max(idle) if idle else None, 0)} |"
        )
    return lines


def agent_table(cases: list[CaseResult]) -> list[str]:
    """p2pmodel's cases: CPU per GiB, memory, and when each phase ended (from the timeline)."""
    lines = [
        "| mode | model | size MiB | CPU s per GiB (agent + get) | peak RSS MB (max agent) "
        "| mirror first byte s | mirror last byte s | last LAN byte s | first done s "
        "| last done s | last done - mirror last byte s | longest digest check s |",
        "| --- | --- | " + " | ".join(["---:"] * 10) + " |",
    ]
    several = len({c.office for c in cases}) > 1
    if several:
        lines = [lines[0].replace("| mode ", "| office | mode ", 1), "| --- " + lines[1]]
    for c in cases:
        if c.mode not in ("p2pmodel", "nosharing"):
            continue
        s, ph = c.summary(), c.phases()
        tail = (
            ph["last_done"] - ph["mirror_last"]
            if ph["last_done"] is not None and ph["mirror_last"] is not None
            else None
        )
        rss = s["peak_rss_max"]
        lines.append(
            (f"| {c.office} " if several else "")
            + f"| {MODES[c.mode]} | {c.model} | {c.size / MiB:.0f} | {fmt(s['cpu_s_per_gib'])} "
            f"| {fmt(rss / MB if rss else None, 0)} | {fmt(ph['mirror_first'])} "
            f"| {fmt(ph['mirror_last'], 1)} | {fmt(ph['lan_last'], 1)} "
            f"| {fmt(ph['first_done'], 1)} | {fmt(ph['last_done'], 1)} | {fmt(tail)} "
            f"| {fmt(ph['verify_max'])} |"
        )
    return lines


def checks(cases: list[CaseResult], large: bool = False) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ref = {c.model: c.time_ratio for c in cases if c.mode == "p2pmodel" and c.subnets == 1}
    for c in cases:
        if c.mode != "p2pmodel":
            continue
        if c.subnets > 1:
            out += subnet_checks(c, ref.get(c.model))
            continue
        rss = c.summary()["peak_rss_max"]
        if large:
            out.append(
                {
                    "what": f"p2pmodel, {c.model}: peak RSS of the largest agent, MB",
                    "value": rss / MB if rss else None,
                    "target": f"< {TARGET_PEAK_RSS // MB}",
                    "pass": rss is not None and rss < TARGET_PEAK_RSS,
                }
            )
        out.append(
            {
                "what": f"p2pmodel, {c.model}: mirror bytes / model size",
                "value": c.mirror_ratio,
                "target": f"<= {TARGET_MIRROR_RATIO}",
                "pass": c.mirror_ratio <= TARGET_MIRROR_RATIO,
            }
        )
        tr = c.time_ratio
        out.append(
            {
                "what": f"p2pmodel, {c.model}: last workstation done / (size / R)",
                "value": tr,
                "target": f"<= {TARGET_TIME_RATIO}",
                "pass": tr is not None and tr <= TARGET_TIME_RATIO,
            }
        )
    return out


def subnet_checks(c: CaseResult, ref_time: float | None) -> list[dict[str, Any]]:
    """Issue 17's targets for p2pmodel in an office of several subnets."""
    out: list[dict[str, Any]] = [
        {
            "what": f"p2pmodel, {c.model}, {c.office}: mirror bytes / model size",
            "value": c.mirror_ratio,
            "target": f"<= {TARGET_MIRROR_RATIO}",
            "pass": c.mirror_ratio <= TARGET_MIRROR_RATIO,
        }
    ]
    for k, r in enumerate(c.router_ratios, start=1):
        out.append(
            {
                "what": f"p2pmodel, {c.model}, {c.office}: router bytes into subnet {k} / size",
                "value": r,
                "target": f"<= {TARGET_ROUTER_RATIO}",
                "pass": r <= TARGET_ROUTER_RATIO,
            }
        )
    tr = c.time_ratio
    delta = None if tr is None or ref_time is None else tr - ref_time
    out.append(
        {
            "what": f"p2pmodel, {c.model}, {c.office}: last / (size/R) minus one subnet's",
            "value": delta,
            "target": f"<= {TARGET_SUBNET_TIME_DELTA}",
            "pass": delta is not None and delta <= TARGET_SUBNET_TIME_DELTA,
        }
    )
    return out


SUBNET_TABLE_NOTE = (
    "Router into subnet k: what the router sent on its leg into subnet k during the run (the "
    "leg's tx counter in the router namespace, wire bytes x 1448/1514), over the model size; "
    "into subnet 1 is what subnet 1 pulled from the others, into subnet 2.. includes what the "
    "mirror (in subnet 1) sent there. Out of each subnet: the legs' rx counters, likewise. "
    "vs one subnet: last / (size/R) minus the one-subnet office's figure for the same mode and "
    "model in this run."
)


AGENT_TABLE_NOTE = (
    "CPU s per GiB: each workstation's agent (utime+stime from /proc over the run) plus its "
    "`get` command (wait4), divided by the model size, mean over the workstations. Peak RSS: "
    "the largest VmHWM of an agent at the end. Mirror first/last byte: when the mirror's link "
    "had sent 1 MiB / all but 1 MiB of what it sent; last LAN byte: when the workstations had "
    "received all but 1 MiB of their LAN bytes (timeline, 0.25 s samples). Longest digest "
    "check: the longest `verified in` of the agents' logs (hash of what the prefix hasher had "
    "not hashed yet, overlapped with fdatasync)."
)


def models_text(cfg: dict[str, Any]) -> str:
    if cfg.get("large"):
        return (
            f"sharded: {LARGE_SHARDS} x {LARGE_SHARD_MIB} MiB shards + 4 small files; "
            f"single: one {LARGE_SINGLE_MIB} MiB file + 3 small files"
        )
    return (
        f"{cfg['size_mib']} MiB (sharded: {cfg['shards']} shards + 4 small files; "
        "single: 1 file + 3 small files)"
    )


def report(run: dict[str, Any], cases: list[CaseResult]) -> str:
    cfg = run["config"]
    lines = [
        f"`{run['command']}` ({run['started_utc'][:16].replace('T', ' ')} UTC, took "
        f"{run['took_s'] / 60:.1f} min; load average {run['machine']['loadavg_before'][0]:.2f} "
        f"before, {run['machine']['loadavg_after'][0]:.2f} after)",
        "",
        f"{cfg['hosts']} workstations; models of {models_text(cfg)}; mirror link "
        f"R = {cfg['mirror_rate'] / MiB:.1f} MiB/s, each workstation link "
        f"{cfg['lan_rate'] / MiB:.1f} MiB/s"
        + (
            " (the router's legs too); offices: "
            + ", ".join(dict.fromkeys(c.office for c in cases))
            if cfg.get("subnets", 1) > 1
            else ""
        )
        + "; ideal size / R = "
        + ", ".join(sorted({f"{c.ideal_s:.1f} s" for c in cases})),
        "",
        *case_table(cases),
        "",
    ]
    if any(c.subnets > 1 for c in cases):
        lines += [*subnet_table(cases), "", SUBNET_TABLE_NOTE, ""]
    if any(c.mode in ("p2pmodel", "nosharing") for c in cases):
        lines += [*agent_table(cases), "", AGENT_TABLE_NOTE, ""]
        lines += [*messages_table(cases), ""]
    chk = run["checks"]
    if chk:
        lines += ["| target | value | target | result |", "| --- | ---: | ---: | --- |"]
        for c in chk:
            lines.append(
                f"| {c['what']} | {fmt(c['value'])} | {c['target']} "
                f"| {'PASS' if c['pass'] else 'MISS'} |"
            )
        lines.append("")
    for c in cases:
        for note in c.notes:
            lines.append(f"- {MODES[c.mode]}, {c.model}: {note}")
        for h in c.hosts:
            if h.error:
                lines.append(f"- {MODES[c.mode]}, {c.model}, {h.host}: {h.error[-300:]!r}")
    return "\n".join(lines).rstrip() + "\n"


def plot(cases: list[CaseResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys((c.office, c.mode) for c in cases))
    models = list(dict.fromkeys(c.model for c in cases))
    several = len({c.office for c in cases}) > 1
    fig, axes = plt.subplots(
        len(modes),
        len(models),
        figsize=(6.5 * len(models), 2.9 * len(modes)),
        squeeze=False,
        sharex=True,
    )
    colors = [plt.get_cmap("tab10")(i) for i in range(10)]
    for c in cases:
        ax = axes[modes.index((c.office, c.mode))][models.index(c.model)]
        ts = [row[0] for row in c.timeline]
        for i, h in enumerate(c.hosts):
            color = colors[i % len(colors)]
            mirror = [row[1][i][0] / MiB for row in c.timeline]
            lan = [row[1][i][1] / MiB for row in c.timeline]
            ax.plot(ts, mirror, color=color, lw=1.4, label=f"{h.host} mirror")
            ax.plot(ts, lan, color=color, lw=1.2, ls="--", label=f"{h.host} LAN")
        ax.axhline(c.size / MiB, color="0.5", lw=0.8, ls=":")
        ax.axvline(c.ideal_s, color="0.5", lw=0.8, ls=":")
        last = c.last_s
        ax.set_title(
            (f"{c.office}: " if several else "")
            + f"{MODES[c.mode]}, {c.model}: mirror {c.mirror_ratio:.2f}x size, "
            f"last {fmt(last, 1)} s ({fmt(c.time_ratio)}x ideal)",
            fontsize=9,
        )
        ax.set_ylabel("MiB received", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("seconds since the common start", fontsize=8)
    handles = [
        matplotlib.lines.Line2D([], [], color="k", lw=1.4, label="from the mirror"),
        matplotlib.lines.Line2D([], [], color="k", lw=1.2, ls="--", label="from the LAN"),
        matplotlib.lines.Line2D([], [], color="0.5", lw=0.8, ls=":", label="model size / ideal"),
    ]
    handles += [
        matplotlib.lines.Line2D([], [], color=colors[i % len(colors)], lw=3, label=h.host)
        for i, h in enumerate(cases[0].hosts)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=8)
    fig.suptitle(title, fontsize=10, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


DOC_INTRO = """\
What it measures, all inside a virtual office (`p2pmodel.testing.netns`; nothing but the script
runs in the host namespace, and it only starts commands in the namespaces and reads tc counters):
N workstations (default 6) want the same model at the same moment, and the office has one
internet link. The test mirror (`p2pmodel.testing.mirror`, Hugging Face shapes: hub answers 302
to a CDN port for LFS files) runs in the mirror namespace, whose link is shaped to R bytes/s
(`tc tbf`, goodput ~0.96 R); each workstation's link is shaped to 4R. Two generated models of the
same size: *sharded* (8 safetensors shards + index + 3 small files) and *single* (one
safetensors + 3 small files). For each model, four modes run one after the other with fresh
homes and output directories, every workstation's command started back to back (the launch
spread is a few ms):

1. **p2pmodel**: a `p2pmodel serve` agent per workstation, started and meshed (every agent lists
   every other alive) before the clock starts, then `p2pmodel get hf://REPO --to DIR --json` on
   every workstation at once.
2. **p2pmodel-nosharing**: the same with `P2PMODEL_SHARING=off` for agents and gets (agents
   use only complete LAN holders and mirrors, as before sharing was wired in).
3. **aria2c -x16**: `aria2c -x16 -s16 -k1M` of every file on every host from the hub URLs, with
   `checksum=sha-256=` per file (aria2c's own default of 5 files at a time).
4. **aria2c torrent+url-list**: aria2c on every host with one .torrent per file (v1, private,
   p2pmodel's piece-size rule), `url-list` = the file's CDN URL (web seed), announce = a tiny
   HTTP tracker in the mirror namespace (compact peers, `--bt-tracker-interval=2`); DHT, LPD and
   PEX off; same `-x16 -s16 -k1M`; seeding until every host is done (a host is done when the
   last of its `--on-bt-download-complete` hooks ran).

Columns: *mirror MiB* is what left through the mirror's (internet) link during the run: the
byte counter of the tbf shaping it, wire bytes x 1448/1514 as TCP payload (where every byte
came from the mirror exactly once this reads 1.000-1.002 x the model bytes); *mirror / size* is
its ratio to the model size (1.00 = the office downloaded the model once). *mirror's count MiB*
is the test mirror's own `/_stats` (reset before the run): body bytes it handed to the kernel,
which misses the block (up to 1 MiB) being sent when a client drops a connection, so it reads
low for clients that abort ranges (aria2c's web seed most of all). *retransmits MiB*: TCP
segments the mirror retransmitted (its namespace's `RetransSegs`) x 1448; they are part of
*mirror MiB*. *LAN MiB* is what the
workstations received from one another: counters of htb classes (by source address, packets
under 256 bytes left out) grafted under the tbf of the switch port facing each workstation;
the rate is unchanged, but the port's mirror, LAN and other traffic are then served round robin
rather than as one FIFO. *done s* are seconds from the common start until a workstation's command
exited 0 (p2pmodel: after its sha256 check and the export; aria2c -x16: after its checksum;
torrent: the last completion hook); *last / (size/R)* is the last workstation's time over the
ideal for one download through the shaped link; *exact*: sha256 of every file of every
workstation equals the model's.
The plot shows, per mode and model, what each workstation received over time from the mirror
(solid) and from the LAN (dashed), sampled every 0.25 s.

Targets (issue): for p2pmodel on both models, mirror bytes / size <= 1.02 and last-finish time /
(size / R) <= 1.15. Without sharing (p2pmodel-nosharing) every workstation that starts
before any of its peers holds a complete blob downloads it from the mirror itself: expect about
N x size from the mirror, like aria2c -x16.
"""


SUBNETS_INTRO = """\
The office benchmark above, run in one go first in the one-subnet office (the reference), then
in an office of several subnets (once per `--join`): a switch namespace per subnet and a router
namespace with a leg into each (`net.ipv4.ip_forward=1`, no multicast forwarding), the six
workstations split across the subnets (ws1.. first), the mirror in subnet 1 behind its shaped
internet link, and the router's legs shaped like the workstations' links (4R). `--join` says how
the agents of different subnets find each other: `static`, every agent lists every other in
`peers`; `reflector`, avahi-daemon reflecting mDNS in the router (no static peers); `one`, the
first agent of each other subnet lists ws1 and peer exchange does the rest; `tracker`,
opentracker in the router, configured on the first agent of each subnet (the others learn it by
peer exchange). Each unit crosses the router into a subnet about once (the crossing lease). The
router's bytes into each subnet are read from its legs' interface counters. Targets (issue 17):
mirror <= 1.02x, router bytes into each subnet <= 1.2x the model, last finish within 0.1 of the
one-subnet office's last / (size/R).
"""


def write_docs(
    run: dict[str, Any], body: str, png: Path | None, heading: str = SECTION, intro: str = ""
) -> None:
    machine = run["machine"]
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    section = [
        heading,
        "",
        intro or DOC_INTRO,
        f"Machine: {machine['cpus']} vCPU {machine['cpu_model']}, {machine['mem_gib']:.0f} GiB "
        f"RAM, kernel {machine['kernel']}, Python {machine['python']}, {machine['aria2c']}, "
        f"libtorrent {machine['libtorrent']}. Every agent, aria2c, the mirror and the kernel's "
        f"veth/bridge/tbf work share those cores. p2pmodel from the working tree at commit "
        f"{machine['commit']}.",
        "",
        body.rstrip(),
        "",
    ]
    if png is not None:
        rel = os.path.relpath(png, DOCS.parent)
        section += [f"![bytes received per workstation over time]({rel})", ""]
    new = "\n".join(section)
    start = text.find(heading)
    if start >= 0:
        nxt = re.search(r"^## ", text[start + len(heading) :], re.MULTILINE)
        end = start + len(heading) + nxt.start() if nxt else len(text)
        text = text[:start] + new + ("\n" + text[end:] if nxt else "")
    else:
        text = text.rstrip("\n") + "\n\n\n" + new
    DOCS.write_text(text.rstrip("\n") + "\n")


# --- main ---------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / (1 << 20)
    aria = subprocess.run(["aria2c", "--version"], check=False, capture_output=True, text=True)
    lt = "?"
    with contextlib.suppress(Exception):
        import libtorrent

        lt = str(libtorrent.__version__)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "mem_gib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aria2c": (aria.stdout.splitlines() or ["aria2c ?"])[0],
        "libtorrent": lt,
        "commit": commit + (" + uncommitted changes" if dirty else ""),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench-office",
        description="N workstations get one model at once through one shaped internet link: "
        "p2pmodel vs aria2c -x16 vs aria2c BitTorrent + web seed.",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 3 hosts, 64 MiB, R=16 MiB/s")
    p.add_argument(
        "--large",
        action="store_true",
        help=f"3 hosts, p2pmodel only: a {LARGE_SINGLE_MIB // 1024} GiB single-file model and "
        f"{LARGE_SHARDS} x {LARGE_SHARD_MIB} MiB shards (~{large_disk_gib(3):.0f} GiB of disk)",
    )
    p.add_argument("--hosts", type=int, help="workstations (6; --quick, --large: 3)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size-mib", type=int, help="size of each model in MiB (512; --quick: 64)")
    size.add_argument("--size-gib", type=float, help="size of each model in GiB")
    p.add_argument("--shards", type=int, default=8, help="shards of the sharded model (8)")
    p.add_argument(
        "--mirror-rate", type=int, help="mirror link, bytes/s (33554432 = 32 MiB/s; --quick: 16)"
    )
    p.add_argument("--lan-rate", type=int, help="each workstation's link, bytes/s (4 x mirror)")
    p.add_argument("--modes", help=f"comma list of {','.join(MODES)} (all; --large: p2pmodel)")
    p.add_argument("--models", default=",".join(MODELS), help="comma list: sharded,single (both)")
    p.add_argument(
        "--subnets",
        type=int,
        default=1,
        help="also run in an office of this many subnets joined by a router (1: only the flat "
        "office, the reference)",
    )
    p.add_argument(
        "--join",
        type=_joins,
        default="static",
        help="--subnets: how agents of different subnets find each other: static (every agent "
        "lists all others in peers), reflector (avahi-daemon in the router), one (one static "
        "peer per subnet, then peer exchange) or tracker (opentracker in the router); "
        "a comma list runs each; default static",
    )
    p.add_argument(
        "--segment-mib",
        type=int,
        help="the agents' sharing unit in MiB (P2PMODEL_SEGMENT_MIB; 16): 1 for many units",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=0.0,
        help="after each p2pmodel run, seconds the agents idle while their messages are "
        "counted (liveness at rest; 0: not measured)",
    )
    p.add_argument("--timeout", type=float, help="seconds per run (120 + 3 x hosts x size/R)")
    p.add_argument("--json", type=Path, metavar="FILE", help="results (default: in a tmp dir)")
    p.add_argument("--png", type=Path, help="timeline plot (docs/bench-office.png with docs)")
    docs = p.add_mutually_exclusive_group()
    docs.add_argument("--docs", dest="docs", action="store_true", default=None)
    docs.add_argument(
        "--no-docs",
        dest="docs",
        action="store_false",
        help="do not write docs/benchmarks.md and docs/bench-office.png (the default with "
        "--quick and --large)",
    )
    p.add_argument("--workdir", type=Path, help="parent of the temporary directory (/var/tmp)")
    p.add_argument("--keep-work", action="store_true", help="keep it (logs, outputs) to debug")
    args = p.parse_args(argv)
    if args.quick and args.large:
        p.error("--quick or --large, not both")
    if args.size_gib is not None:
        args.size_mib = round(args.size_gib * 1024)
    preset = QUICK if args.quick else LARGE if args.large else DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.large:
        args.size_mib = LARGE_SINGLE_MIB  # the larger model; the sharded one is smaller
    if args.modes is None:
        args.modes = "p2pmodel" if args.large else ",".join(MODES)
    if args.lan_rate is None:
        args.lan_rate = 4 * args.mirror_rate
    if args.docs is None:
        args.docs = not (args.quick or args.large)
    # "nocoord" is the older name of "nosharing"
    args.modes = [
        "nosharing" if m.strip() == "nocoord" else m.strip()
        for m in args.modes.split(",")
        if m.strip()
    ]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if bad := [m for m in args.modes if m not in MODES] + [
        m for m in args.models if m not in MODELS
    ]:
        p.error(f"unknown modes/models: {', '.join(bad)}")
    if not 2 <= args.hosts <= 30:
        p.error("--hosts must be 2..30")
    if not 1 <= args.subnets <= min(4, args.hosts):
        p.error("--subnets must be 1..4, and at most --hosts")
    if args.size_mib < 8:
        p.error("--size-mib must be at least 8")
    if args.mirror_rate < 100_000 or args.lan_rate < 0 or args.shards < 1:
        p.error("--mirror-rate >= 100000, --lan-rate >= 0 (0: unshaped), --shards >= 1")
    # The models' data, and a store of the model being fetched per workstation (each case's
    # stores are deleted after it; exports are hard links).
    if args.large:
        disk = large_disk_gib(args.hosts) * (1 << 30)
    else:
        disk = (len(args.models) + args.hosts) * args.size_mib * MiB
    workdir = args.workdir or Path("/var/tmp")
    free = shutil.disk_usage(workdir).free
    if disk > 0.8 * free:
        p.error(
            f"that would need ~{disk / (1 << 30):.1f} GiB of disk; {workdir} has "
            f"{free / (1 << 30):.1f} GiB free (at most 80% of it is used)"
        )
    return args


def log_case(case: CaseResult) -> None:
    s = case.summary()
    router = ""
    if case.router_into:
        router = "router into subnets " + ", ".join(f"{r:.2f}x" for r in case.router_ratios)
        router += "; "
    log(
        f"  mirror {case.mirror_bytes / MiB:.1f} MiB ({case.mirror_ratio:.2f}x; "
        f"its count {case.stats_bytes / MiB:.1f}, retransmitted "
        f"{case.mirror_retransmits * 1448 / MiB:.1f}), {router}"
        f"last done {fmt(s['last_s'], 1)} s ({fmt(s['time_ratio'])}x ideal "
        f"{case.ideal_s:.1f} s), exact {s['all_exact']}, "
        f"launch spread {case.launch_spread_s * 1000:.0f} ms"
    )


def _joins(text: str) -> str:
    """--join: a comma list of JOINS names (each office of several subnets runs once)."""
    names = [j.strip() for j in text.split(",") if j.strip()]
    bad = [j for j in names if j not in JOINS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(sorted(JOINS))} (comma list)")
    return ",".join(dict.fromkeys(names))


def large_disk_gib(hosts: int) -> float:
    """Disk --large needs at its peak: both models' data, plus the larger in every store."""
    return (LARGE_SINGLE_MIB + LARGE_SHARDS * LARGE_SHARD_MIB + hosts * LARGE_SINGLE_MIB) / 1024


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    why = netns_available()
    if why is not None:
        raise SystemExit(f"bench-office: cannot build a virtual office: {why}")
    if shutil.which("aria2c") is None and {"aria2c", "torrent"} & set(args.modes):
        raise SystemExit("bench-office: aria2c is not installed (scripts/setup --system-packages)")
    drop_environ()
    stale = cleanup_stale("p2pm-bo")
    if stale:
        log(f"deleted stale namespaces: {', '.join(stale)}")
    others = (
        sorted(p.name for p in Path("/run/netns").glob("*")) if Path("/run/netns").is_dir() else []
    )
    if others:
        log(f"note: other namespaces exist (they may share the CPUs): {', '.join(others)}")
    started = datetime.datetime.now(datetime.UTC)
    t_start = time.monotonic()
    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-office-", dir=args.workdir or Path("/var/tmp")))
    json_path: Path = (
        args.json or Path(tempfile.mkdtemp(prefix="bench-office-result-")) / "bench-office.json"
    )
    size = args.size_mib * MiB
    cases: list[CaseResult] = []
    lan_rate = args.lan_rate or None
    try:
        up = work / "upstream"
        repos: dict[str, Repo] = {}
        shards, shard_size = args.shards, size // args.shards
        if args.large:
            shards, shard_size = LARGE_SHARDS, LARGE_SHARD_MIB * MiB
        t = time.monotonic()
        if "sharded" in args.models:
            repos["sharded"] = make_model(
                up, MODELS["sharded"], shards=shards, shard_size=shard_size, seed=1
            )
        if "single" in args.models:
            repos["single"] = make_model(
                up, MODELS["single"], shards=1, shard_size=size, single_file=True, seed=2
            )
        log(f"wrote the models ({models_text(vars(args))}) in {work}, {time.monotonic() - t:.0f} s")
        # The flat office first; with --subnets, the office of several subnets after it.
        offices: list[tuple[int, Join | None, str]] = [(1, None, "1 subnet")]
        if args.subnets > 1:
            offices += [
                (args.subnets, JOINS[j](), f"{args.subnets} subnets, {j}")
                for j in args.join.split(",")
            ]
        for n, (subnets, join, label) in enumerate(offices, start=1):
            prefix = f"p2pm-bo{os.getpid() % 10000}" + (f"s{subnets}{n}" if subnets > 1 else "")
            office_work = work if n == 1 else work / f"office-{n}"
            office_work.mkdir(exist_ok=True)
            with Network(
                args.hosts,
                subnets=subnets,
                mirror=True,
                mirror_rate=args.mirror_rate,
                lan_rate=lan_rate,
                prefix=prefix,
            ) as office:
                hosts = ", ".join(
                    f"{h.name} {h.ip}" + (f" (subnet {office.subnet_of(h)})" if subnets > 1 else "")
                    for h in office.hosts
                )
                log(f"office {office.prefix} ({label}): {hosts}")
                bench = Bench(office, office_work, repos, args, join, label)
                for model in args.models:
                    for mode in args.modes:
                        log(f"{label}: {MODES[mode]}, {model}: {args.hosts} workstations at once")
                        case = bench.run_case(mode, model)
                        log_case(case)
                        cases.append(case)
    finally:
        if args.keep_work:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    cmd = " ".join(["scripts/bench-office", *(sys.argv[1:] if argv is None else argv)])
    run: dict[str, Any] = {
        "command": cmd.strip(),
        "started_utc": started.isoformat(),
        "took_s": time.monotonic() - t_start,
        "config": {
            "hosts": args.hosts,
            "size_mib": args.size_mib,
            "shards": args.shards,
            "mirror_rate": args.mirror_rate,
            "lan_rate": args.lan_rate,
            "modes": args.modes,
            "models": args.models,
            "large": args.large,
            "subnets": args.subnets,
            "join": args.join if args.subnets > 1 else None,
        },
        "machine": {**machine_info(), "loadavg_before": load0, "loadavg_after": load1},
        "other_namespaces": others,
        "checks": checks(cases, args.large),
    }
    body = report(run, cases)
    docs_png = SUBNETS_PNG if args.subnets > 1 else PNG
    png = args.png or (docs_png if args.docs else json_path.with_suffix(".png"))
    title = (
        (f"1 and {args.subnets} subnets ({args.join}), " if args.subnets > 1 else "")
        + f"{args.hosts} workstations, {models_text(vars(args))}, mirror R = "
        f"{args.mirror_rate / MiB:.0f} MiB/s, LAN {args.lan_rate / MiB:.0f} MiB/s"
    )
    if cases:
        plot(cases, png, title)
    run["png"] = str(png)
    run["cases"] = [
        {**asdict(c), "mode_label": MODES[c.mode], "summary": c.summary()} for c in cases
    ]
    run["table"] = body
    json_path.write_text(json.dumps(run, indent=1) + "\n")
    print(body)
    if args.docs:
        heading, intro = (SUBNETS_SECTION, SUBNETS_INTRO) if args.subnets > 1 else (SECTION, "")
        write_docs(run, body, png if cases else None, heading, intro)
        log(f"wrote {DOCS.relative_to(ROOT)} (section {heading[3:]!r})")
    log(f"results: {json_path}; plot: {png}; took {run['took_s'] / 60:.1f} min")
    return 0  # a MISS is a result shown in the table, not a failure of the benchmark


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench-office: interrupted (office torn down, temp files removed)", file=sys.stderr)
        sys.exit(130)
    except (BenchError, SiteError) as exc:
        print(f"bench-office: {exc}", file=sys.stderr)
        sys.exit(1)
