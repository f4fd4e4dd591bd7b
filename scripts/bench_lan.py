"""Benchmark: agent-to-agent LAN rate vs curl from nginx, discovery latency, idle agent cost.

Everything runs in a virtual office (`p2pmodel.testing.netns`): network namespaces on one
bridge, nothing in the host namespace but this process, which only starts commands inside the
namespaces and reads /proc. One run measures:

1. **LAN rate.** A `--size-mib` blob is fetched from the (unshaped) test mirror by ws1's agent,
   which then seeds it. ws2's `p2pmodel get` (handed to ws2's agent) takes it over the LAN.
   Reference on the same link: nginx started inside ws1's namespace serving the very same file
   from ws1's store (sendfile on), fetched by `curl` in ws2 writing to a file on the same disk
   (and to /dev/null, for information). ws2's received bytes are sampled every 10 ms from its
   `eth0` counter, so both tools get the same *transfer window* (first to last byte on the
   wire); p2pmodel's end-to-end time adds startup, resolve, locate and, after the last byte,
   the sha256 check and the move into the store. Between repetitions ws2's agent is stopped, its
   store deleted and the agent started again. The whole is repeated per `--lan-rate` (0 =
   unshaped; otherwise a tbf of that many MB/s on both ends of both workstations' links).
2. **Discovery latency.** With observers polling the control socket every 50 ms (the request
   `status --json` makes, without a process start per poll), a fresh agent B (new home, new id)
   is started on ws3: time until B's control socket answers, until A (ws1) lists B alive, and
   until B lists A alive. B is stopped after each repetition.
3. **Idle agent.** ws1's agent gets a model of `--idle-shards` shards so it seeds at least that
   many blobs; with two live peers (ws2, ws3) its VmRSS (and RssAnon/RssFile) and CPU
   (utime+stime from /proc/PID/stat over `--idle-seconds` of wall time) are measured, once for
   the agent that did all the transfers above and once after restarting it.

Parts 1 and 2 run once per `--key` mode: `off` (an open office), `on` (every agent with the
same office key: mutual TLS on the peer link, torrents tagged with the key over forced protocol
encryption, the IP filter) and `tls` (the same with `swarm_tls = true`: SSL torrents), the
agents restarted between modes; the last table compares the modes in the same run.

Targets (BRIEF section 6): LAN rate p2pmodel/curl >= 0.9; idle agent RSS < 100 MB; idle CPU < 1%.
Network key (issue 10): the LAN ratio to curl with the key within 5% of the one without, and
discovery within 0.3 s; issue 18: a keyed transfer on the unshaped link >= 0.8x curl. MB here
is 10^6 bytes; sizes of blobs are in MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from p2pmodel.adapters.store import Store
from p2pmodel.core.officekey import format_key
from p2pmodel.testing.models import Repo, make_model
from p2pmodel.testing.netns import Host, Network, cleanup_stale, netns_available
from p2pmodel.testing.site import (
    Site,
    SiteError,
    children,
    drop_environ,
    proc_cpu,
    proc_status,
    python_pid,
    stop_group,
    wait_for,
)

MiB = 1 << 20
MB = 1_000_000
LAN_REPO = "bench/lan"
IDLE_REPO = "bench/idle"
NGINX_PORT = 8080
RX_PERIOD = 0.01  # seconds between samples of ws2's eth0 rx counter
FIRST_BYTES = 256 * 1024  # rx bytes above the baseline that mark the transfer's start
TAIL_SLACK = 256 * 1024  # rx bytes under the final total that mark its end
STATUS_POLL = 0.05
P2P, CURL = "p2pmodel get, agent to agent", "curl from nginx to a file"

# Runs inside a namespace: samples eth0's rx byte counter until its stdin closes, then prints
# "monotonic_time value" lines (CLOCK_MONOTONIC is the same clock in every namespace).
RX_SAMPLER = r"""
import select, sys, time
period = float(sys.argv[1])
def rx():
    with open('/sys/class/net/eth0/statistics/rx_bytes', 'rb') as f:
        return int(f.read())
samples, last = [], None
print('ready', flush=True)
while True:
    v = rx()
    if v != last:
        samples.append((time.monotonic(), v))
        last = v
    if select.select([sys.stdin], [], [], period)[0]:
        break
samples.append((time.monotonic(), rx()))
sys.stdout.write(''.join('%.6f %d\n' % s for s in samples))
"""

# Runs inside a namespace: after "go" on stdin, asks HOME's agent for its status every PERIOD s
# (the same control request `p2pmodel status --json` makes) and prints "up T" when the agent
# first answers and "seen T" when it lists agent WANT alive.
STATUS_WATCHER = r"""
import sys, time
from pathlib import Path
from p2pmodel.adapters import control
home, want, period, timeout = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
print('ready', flush=True)
sys.stdin.readline()
deadline, up = time.monotonic() + timeout, False
while time.monotonic() < deadline:
    try:
        st = next(iter(control.request(home, {'op': 'status'}, timeout=5)))
    except Exception:
        st = None
    now = time.monotonic()
    if st is not None:
        if not up:
            print('up %.6f' % now, flush=True)
            up = True
        if any(p.get('agent') == want and p.get('alive') for p in st.get('peers', [])):
            print('seen %.6f' % now, flush=True)
            sys.exit(0)
    time.sleep(period)
print('timeout', flush=True)
"""

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {{
        listen {ip}:{port};
        root {root};
    }}
}}
"""


def log(msg: str) -> None:
    print(f"bench-lan: {msg}", file=sys.stderr, flush=True)


# --- sampling ws2's wire -----------------------------------------------------------------------


@dataclass
class Window:
    """What the receiver's eth0 counter says about one transfer (times from the command start)."""

    rx_bytes: int
    first_byte_s: float | None
    last_byte_s: float | None
    steady_mb_s: float | None  # from 10% to 90% of the received bytes

    @property
    def transfer_s(self) -> float | None:
        if self.first_byte_s is None or self.last_byte_s is None:
            return None
        return self.last_byte_s - self.first_byte_s


class RxSampler:
    def __init__(self, office: Network, host: Host) -> None:
        self.proc = office.popen(
            host,
            [sys.executable, "-c", RX_SAMPLER, str(RX_PERIOD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise SystemExit("bench-lan: the rx sampler did not start")

    def stop(self) -> list[tuple[float, int]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        text = self.proc.stdout.read().decode()
        self.proc.wait(timeout=10)
        return [(float(t), int(v)) for t, v in (line.split() for line in text.splitlines())]


def window(samples: list[tuple[float, int]], t0: float) -> Window:
    base = samples[0][1]
    total = samples[-1][1] - base

    def when(level: float) -> float | None:
        return next((t - t0 for t, v in samples if v - base >= level), None)

    first = when(min(FIRST_BYTES, total))
    last = when(max(total - TAIL_SLACK, 1))
    lo, hi = when(0.1 * total), when(0.9 * total)
    steady = 0.8 * total / (hi - lo) / MB if lo is not None and hi is not None and hi > lo else None
    if total < 2 * FIRST_BYTES:
        first = last = None
    return Window(total, first, last, steady)


# --- the office --------------------------------------------------------------------------------


class LanSite(Site[Network]):
    """The office site, plus what this benchmark reads of its agents: their pids and memory,
    and the office key every config gets while ``key`` is set."""

    def __init__(self, office: Network, repo: Repo, work: Path, others: Sequence[Repo]) -> None:
        self.key: str | None = None
        self.swarm_tls = False
        super().__init__(office, repo, work, others)
        self.pids: dict[str, int] = {}
        self.memory: list[dict[str, Any]] = []  # agents' memory at points of the run

    def configure(self, ws: Host, top: str = "") -> None:
        key = f'office_key = "{self.key}"\n' if self.key else ""
        key += "swarm_tls = true\n" if self.key and self.swarm_tls else ""
        super().configure(ws, key + top)

    def wait_ready(self, ws: Host, seconds: float = 30) -> None:
        super().wait_ready(ws, seconds)
        self.pids[ws.name] = python_pid(self.procs[ws.name].pid)

    def serve(self, ws: Host, *args: str) -> subprocess.Popen[bytes]:
        proc = super().serve(ws, *args)
        self.note_memory(ws, "started")
        return proc

    def stop(self, ws: Host, timeout: float = 15) -> None:
        self.pids.pop(ws.name, None)
        super().stop(ws, timeout)

    def note_memory(self, ws: Host, when: str) -> None:
        pid = self.pids.get(ws.name)
        if pid is None:
            return
        mem = proc_status(pid)
        self.memory.append(
            {
                "agent": ws.name,
                "when": when,
                "vm_rss": mem["VmRSS"],
                "rss_anon": mem.get("RssAnon", 0),
                "rss_file": mem.get("RssFile", 0),
                "vm_hwm": mem.get("VmHWM", 0),
                "threads": mem.get("Threads", 0),
            }
        )


# --- 1. LAN rate --------------------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    rate_mb_s: int  # 0: unshaped link
    seconds: float  # wall time of the command, as run from this script
    window: Window
    receiver_cpu_s: float
    sender_cpu_s: float
    tool_seconds: float | None = None  # curl's own %{time_total}
    from_peers: int | None = None
    fetched: int | None = None


@dataclass
class LanResult:
    tool: str
    rate_mb_s: int
    runs: list[Run] = field(default_factory=list)

    def med(self, pick: Callable[[Run], float | None]) -> float | None:
        values = [v for v in map(pick, self.runs) if v is not None]
        return statistics.median(values) if values else None


class Nginx:
    def __init__(self, office: Network, host: Host, root: Path, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, ip=host.ip, port=NGINX_PORT, root=root))
        self.proc = office.popen(
            host,
            ["nginx", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "stderr.log").open("wb"),
        )
        self.tmp = tmp

    def worker_pids(self) -> list[int]:
        master = python_free_pid(self.proc.pid, b"nginx")
        return children(master)

    def stop(self) -> None:
        """Stop it (and its workers), so a later part can start its own on the same port."""
        stop_group(self.proc)


def python_free_pid(pid: int, name: bytes) -> int:
    """The process named `name` under a Popen of `ip netns exec ...` (it may exec or fork)."""
    todo = [pid]
    while todo:
        p = todo.pop(0)
        with contextlib.suppress(OSError):
            if name in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]:
                return p
        todo += children(p)
    raise SystemExit(f"bench-lan: no {name.decode()} process under pid {pid}")


def sync_disk() -> None:
    os.sync()
    time.sleep(0.5)


def run_curl(
    office: Network, ws2: Host, url: str, out: str, rate: int, sender: Callable[[], float]
) -> Run:
    sync_disk()
    sampler = RxSampler(office, ws2)
    cpu0, before = sender(), os.times()
    t0 = time.monotonic()
    r = ws2.run(
        "curl", "-sS", "--fail", "--noproxy", "*", "-o", out,
        "-w", "%{time_total} %{size_download}", url, timeout=600,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    after, cpu1 = os.times(), sender()
    w = window(sampler.stop(), t0)
    if r.returncode != 0:
        raise SystemExit(f"bench-lan: curl failed: {r.stderr.strip()}")
    tool_s, size = r.stdout.split()
    if out != "/dev/null":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out)
    receiver = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    label = "curl from nginx to a file" if out != "/dev/null" else "curl from nginx to /dev/null"
    run = Run(label, rate, elapsed, w, receiver, cpu1 - cpu0, tool_seconds=float(tool_s))
    run.fetched = int(size)
    return run


def run_p2pmodel(site: LanSite, ws1: Host, ws2: Host, ref: str, size: int, rate: int) -> Run:
    sync_disk()
    office = site.office
    sampler = RxSampler(office, ws2)
    pid1, pid2 = site.pids[ws1.name], site.pids[ws2.name]
    send0, recv0, before = proc_cpu(pid1), proc_cpu(pid2), os.times()
    t0 = time.monotonic()
    r = site.cli(ws2, "get", ref, "--json", timeout=600)
    elapsed = time.monotonic() - t0
    after, send1, recv1 = os.times(), proc_cpu(pid1), proc_cpu(pid2)
    w = window(sampler.stop(), t0)
    if r.returncode != 0:
        raise SystemExit(f"bench-lan: get on {ws2.name} failed: {r.stderr.strip()}")
    out = json.loads(r.stdout)
    client = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    run = Run(
        "p2pmodel get, agent to agent", rate, elapsed, w, recv1 - recv0 + client, send1 - send0
    )
    run.from_peers, run.fetched = int(out.get("from_peers") or 0), int(out.get("fetched") or 0)
    if run.from_peers < 0.98 * size:
        log(f"warning: from_peers {run.from_peers} of {size} bytes (fetched {run.fetched})")
    return run


def reset_receiver(site: LanSite, ws1: Host, ws2: Host) -> None:
    """ws2 forgets the blob: stop its agent, delete its store, start it again, wait for ws1."""
    site.stop(ws2)
    shutil.rmtree(site.homes[ws2.name] / "store", ignore_errors=True)
    site.serve(ws2)
    site.wait_mesh([ws1, ws2])


def bench_lan(
    site: LanSite, repo: Repo, rates: Sequence[int], repeat: int, devnull: bool
) -> list[LanResult]:
    office = site.office
    ws1, ws2 = office.workstations[0], office.workstations[1]
    blob = repo.files[0] if len(repo.files) == 1 else max(repo.files, key=lambda f: f.size)
    size = blob.size
    digest = f"sha256:{blob.sha256}"
    ref = f"hf://{LAN_REPO}"

    log(f"ws1 fetches the {size // MiB} MiB blob from the mirror (unshaped)")
    t0 = time.monotonic()
    out = site.get(ws1, repo=repo, timeout=600)
    secs = time.monotonic() - t0
    site.note_memory(ws1, f"after its get of {size // MiB} MiB from the mirror")
    log(f"  {secs:.2f} s, {out['fetched'] / MB / secs:.0f} MB/s from the mirror")
    blob_path = Store(site.homes[ws1.name]).blob_path(digest)
    assert blob_path.stat().st_size == size, blob_path
    # Same bytes: the mirror's copy becomes a hard link to ws1's blob (one copy less on disk;
    # the mirror stays able to serve it should a LAN fetch fall back to it).
    # (Already one in a later key mode: rename() of two links to one file does nothing.)
    if not os.path.samefile(blob_path, blob.data_path):
        tmp_link = blob.data_path.with_name(blob.data_path.name + ".link")
        os.link(blob_path, tmp_link)
        os.replace(tmp_link, blob.data_path)
    wait_for(lambda: site.status(ws1)["seeding"] >= 1, 20, "ws1 to seed the blob")

    nginx = Nginx(office, ws1, blob_path.parent, site.work / "nginx")
    url = f"http://{ws1.ip}:{NGINX_PORT}/{blob_path.name}"

    def nginx_up() -> bool:
        r = ws2.run("curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-I", "--fail", url)
        return r.returncode == 0

    wait_for(nginx_up, 20, "nginx in ws1", every=0.2)

    def nginx_cpu() -> float:
        return sum(proc_cpu(p) for p in nginx.worker_pids())

    curl_out = str(site.work / "homes" / "curl.out")  # same filesystem as the agents' stores
    results: dict[tuple[str, int], LanResult] = {}
    for rate in rates:
        for ws in (ws1, ws2):
            office.shape(ws, rate * MB if rate else None)
        link = f"tbf {rate} MB/s" if rate else "unshaped"
        for i in range(repeat):
            runs = [run_curl(office, ws2, url, curl_out, rate, nginx_cpu)]
            if devnull:
                runs.append(run_curl(office, ws2, url, "/dev/null", rate, nginx_cpu))
            runs.append(run_p2pmodel(site, ws1, ws2, ref, size, rate))
            site.note_memory(ws1, f"after upload {i + 1} ({link})")
            site.note_memory(ws2, f"after its LAN get {i + 1} ({link})")
            for run in runs:
                results.setdefault((run.tool, rate), LanResult(run.tool, rate)).runs.append(run)
                t = run.window.transfer_s
                log(
                    f"[{link} {i + 1}/{repeat}] {run.tool}: {run.seconds:.2f} s end to end, "
                    f"transfer {t if t is None else round(t, 2)} s "
                    f"({size / t / MB if t else 0:.0f} MB/s)"
                )
            reset_receiver(site, ws1, ws2)
    for ws in (ws1, ws2):
        office.shape(ws, None)
    nginx.stop()
    return list(results.values())


# --- 2. discovery -------------------------------------------------------------------------------


@dataclass
class Discovery:
    agent_up_s: float | None
    a_sees_b_s: float | None
    b_sees_a_s: float | None


class Watcher:
    def __init__(self, office: Network, host: Host, home: Path, want: str, timeout: float) -> None:
        self.proc = office.popen(
            host,
            [sys.executable, "-c", STATUS_WATCHER, str(home), want, str(STATUS_POLL), str(timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise SystemExit("bench-lan: a status watcher did not start")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, float]:
        assert self.proc.stdout is not None
        text = self.proc.stdout.read().decode()
        self.proc.wait(timeout=10)
        out = {}
        for line in text.splitlines():
            word, _, value = line.partition(" ")
            if value:
                out[word] = float(value)
        return out


def bench_discovery(site: LanSite, reps: int, timeout: float = 30) -> list[Discovery]:
    office = site.office
    ws1, ws3 = office.workstations[0], office.workstations[2]
    a_id = site.agent_id(ws1)
    out = []
    for i in range(reps):
        b_id = secrets.token_hex(8)
        home_b = site.new_home(ws3, agent=b_id)
        a_watch = Watcher(office, ws1, site.homes[ws1.name], b_id, timeout)
        b_watch = Watcher(office, ws3, home_b, a_id, timeout)
        time.sleep(0.3)  # let the watchers finish importing before B starts
        a_watch.go()
        b_watch.go()
        t0 = time.monotonic()
        site.start(ws3)
        a, b = a_watch.result(), b_watch.result()
        d = Discovery(
            b["up"] - t0 if "up" in b else None,
            a["seen"] - t0 if "seen" in a else None,
            b["seen"] - t0 if "seen" in b else None,
        )
        log(
            f"[discovery {i + 1}/{reps}] B answers after {fmt(d.agent_up_s)} s, A sees B after "
            f"{fmt(d.a_sees_b_s)} s, B sees A after {fmt(d.b_sees_a_s)} s"
        )
        out.append(d)
        site.wait_ready(ws3)
        site.stop(ws3)
    return out


# --- 3. idle agent ------------------------------------------------------------------------------


@dataclass
class Idle:
    label: str
    seeding: int
    peers_alive: int
    seconds: float
    cpu_s: float
    rss: int  # VmRSS at the end
    rss_max: int  # highest VmRSS sampled during the window
    rss_anon: int
    rss_file: int
    threads: int

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu_s / self.seconds


def measure_idle(
    site: LanSite, ws: Host, label: str, seconds: float, settle: float, min_peers: int
) -> Idle:
    wait_for(
        lambda: len(site.alive(ws)) >= min_peers, 30, f"{min_peers} live peers of {ws.name}", 0.2
    )
    st = site.status(ws)
    time.sleep(settle)
    pid = site.pids[ws.name]
    t0, c0 = time.monotonic(), proc_cpu(pid)
    rss_max = 0
    while (left := t0 + seconds - time.monotonic()) > 0:
        rss_max = max(rss_max, proc_status(pid)["VmRSS"])
        time.sleep(min(1.0, left))
    t1, c1 = time.monotonic(), proc_cpu(pid)
    mem = proc_status(pid)
    alive = sum(1 for p in site.status(ws)["peers"] if p["alive"])
    idle = Idle(
        label,
        int(st["seeding"]),
        alive,
        t1 - t0,
        c1 - c0,
        mem["VmRSS"],
        max(rss_max, mem["VmRSS"]),
        mem.get("RssAnon", 0),
        mem.get("RssFile", 0),
        mem.get("Threads", 0),
    )
    log(
        f"[idle: {label}] seeding {idle.seeding}, {alive} peers alive, "
        f"VmRSS {idle.rss / MB:.1f} MB "
        f"(anon {idle.rss_anon / MB:.1f}, file {idle.rss_file / MB:.1f}), "
        f"CPU {idle.cpu_pct:.2f}% over {idle.seconds:.0f} s"
    )
    return idle


def bench_idle(site: LanSite, repo: Repo, seconds: float, settle: float, shards: int) -> list[Idle]:
    office = site.office
    ws1, ws2, ws3 = office.workstations[:3]
    site.configure(ws3)  # the key (or none) ws1 and ws2 run with now
    site.serve(ws3)
    site.wait_mesh([ws1, ws2, ws3])
    log(f"ws1 gets {IDLE_REPO} ({shards} shards) from the mirror")
    site.get(ws1, repo=repo, timeout=600)
    site.note_memory(ws1, f"after its get of {IDLE_REPO} from the mirror")
    wait_for(lambda: site.status(ws1)["seeding"] >= shards, 30, f"ws1 to seed {shards} blobs")
    out = [measure_idle(site, ws1, "agent after the transfers", seconds, settle, 2)]
    site.note_memory(ws1, "after the idle window")
    site.stop(ws1)
    site.serve(ws1)
    site.wait_mesh([ws1, ws2, ws3])
    out.append(measure_idle(site, ws1, "same agent restarted", seconds, settle, 2))
    site.note_memory(ws1, "restarted, after the idle window")
    return out


# --- report -------------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def lan_table(n: int, size: int, lan: list[LanResult]) -> list[str]:
    lines: list[str] = []
    lines.append(
        f"{size // MiB} MiB blob, ws1 -> ws2 over one veth + bridge link, median of {n} run(s) "
        "per link; MB = 10^6 bytes"
    )
    lines.append("")
    lines.append(
        "| tool | link | seconds | MB/s | first byte s | last byte s | tail s | transfer s "
        "| transfer MB/s | steady MB/s | receiver CPU s | sender CPU s | from peers MiB |"
    )
    lines.append("| --- | --- | " + " | ".join(["---:"] * 11) + " |")
    for res in lan:
        link = f"tbf {res.rate_mb_s} MB/s" if res.rate_mb_s else "unshaped"
        secs = res.med(lambda r: r.seconds)
        tr = res.med(lambda r: r.window.transfer_s)
        first = res.med(lambda r: r.window.first_byte_s)
        last = res.med(lambda r: r.window.last_byte_s)
        tail = res.med(
            lambda r: None if r.window.last_byte_s is None else r.seconds - r.window.last_byte_s
        )
        peers = res.med(lambda r: r.from_peers)
        lines.append(
            f"| {res.tool} | {link} | {fmt(secs)} | {fmt(size / MB / secs if secs else None, 0)} "
            f"| {fmt(first)} | {fmt(last)} | {fmt(tail)} | {fmt(tr)} "
            f"| {fmt(size / MB / tr if tr else None, 0)} "
            f"| {fmt(res.med(lambda r: r.window.steady_mb_s), 0)} "
            f"| {fmt(res.med(lambda r: r.receiver_cpu_s))} "
            f"| {fmt(res.med(lambda r: r.sender_cpu_s))} "
            f"| {fmt(peers / MiB if peers is not None else None, 1)} |"
        )
    lines.append("")
    lines.append(
        "seconds: the command's wall time from start to exit, as run by the script "
        "(p2pmodel: `get`, handed to ws2's agent: resolve, locate, transfer, sha256 check, "
        "move into the store; curl: `curl -o FILE` on the same disk, or `-o /dev/null`). "
        "first/last byte: from the command's start until ws2's eth0 had received 256 KiB / "
        "all but 256 KiB of what it received during the run (counter sampled every 10 ms); "
        "transfer = last - first byte; tail = seconds - last byte. receiver CPU: ws2's agent "
        "plus the `get` client, or curl; sender CPU: ws1's agent, or the nginx worker."
    )
    lines.append("")
    return lines


def report(
    args: argparse.Namespace,
    size: int,
    lan: list[LanResult],
    disc: list[Discovery],
    idle: list[Idle],
    memory: list[dict[str, Any]],
) -> tuple[str, list[dict[str, Any]]]:
    lines: list[str] = []
    if lan:
        lines += lan_table(args.repeat, size, lan)
    if disc:
        lines.append(
            "| discovery (fresh agent B on ws3, A on ws1) | median s | min s | max s | n |"
        )
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        for label, pick in (
            ("start B -> B's control socket answers", lambda d: d.agent_up_s),
            ("start B -> A's status lists B alive", lambda d: d.a_sees_b_s),
            ("start B -> B's status lists A alive", lambda d: d.b_sees_a_s),
        ):
            vals = [v for v in map(pick, disc) if v is not None]
            lines.append(
                f"| {label} | {fmt(statistics.median(vals) if vals else None)} "
                f"| {fmt(min(vals) if vals else None)} | {fmt(max(vals) if vals else None)} "
                f"| {len(vals)}/{len(disc)} |"
            )
        lines.append("")
    if idle:
        lines.append(
            "| idle agent (ws1, 2 peers alive) | blobs seeded | peers alive | window s | CPU % "
            "| VmRSS MB | max VmRSS MB | RssAnon MB | RssFile MB | threads |"
        )
        lines.append("| --- | " + " | ".join(["---:"] * 9) + " |")
        for i in idle:
            lines.append(
                f"| {i.label} | {i.seeding} | {i.peers_alive} | {i.seconds:.0f} "
                f"| {i.cpu_pct:.2f} | {i.rss / MB:.1f} | {i.rss_max / MB:.1f} "
                f"| {i.rss_anon / MB:.1f} | {i.rss_file / MB:.1f} | {i.threads} |"
            )
        lines.append("")
    if memory:
        lines.append("| agent memory over the run | VmRSS MB | RssAnon MB | RssFile MB | threads |")
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        shown: set[str] = set()
        for m in memory:
            # ws2's agent restarts with an empty store before every LAN get: show it once
            # freshly started and after the first get per link.
            if m["agent"] == "ws2" and (
                m["when"] in shown or ("get" in m["when"] and "1 (" not in m["when"])
            ):
                continue
            if m["agent"] == "ws2":
                shown.add(m["when"])
            lines.append(
                f"| {m['agent']}, {m['when']} | {m['vm_rss'] / MB:.1f} | {m['rss_anon'] / MB:.1f} "
                f"| {m['rss_file'] / MB:.1f} | {m['threads']} |"
            )
        lines.append("")

    checks: list[dict[str, Any]] = []

    def lookup(tool: str, rate: int) -> LanResult | None:
        return next((r for r in lan if r.tool == tool and r.rate_mb_s == rate), None)

    for rate in args.lan_rate:
        p2p = lookup("p2pmodel get, agent to agent", rate)
        curl = lookup("curl from nginx to a file", rate)
        if p2p is None or curl is None:
            continue
        link = f"tbf {rate} MB/s" if rate else "unshaped"
        p_tr = p2p.med(lambda r: r.window.transfer_s)
        p_all = p2p.med(lambda r: r.seconds)
        c_all = curl.med(lambda r: r.seconds)
        c_tr = curl.med(lambda r: r.window.transfer_s)
        if p_tr and c_all:
            checks.append(
                {
                    "what": f"LAN rate, p2pmodel transfer / curl to a file ({link})",
                    "value": c_all / p_tr,
                    "target": ">= 0.9",
                    "pass": c_all / p_tr >= 0.9,
                }
            )
        if p_all and c_all:
            checks.append(
                {
                    "what": f"LAN rate, p2pmodel end to end / curl to a file ({link})",
                    "value": c_all / p_all,
                    "target": "info",
                    "pass": None,
                }
            )
        if p_tr and c_tr:
            checks.append(
                {
                    "what": f"LAN rate, both as transfer windows on the wire ({link})",
                    "value": c_tr / p_tr,
                    "target": "info",
                    "pass": None,
                }
            )
    p2p_runs = [r for res in lan if res.tool.startswith("p2pmodel") for r in res.runs]
    if p2p_runs:
        worst = min((r.from_peers or 0) / size for r in p2p_runs)
        checks.append(
            {
                "what": "every LAN get took the blob from the peer (lowest from_peers / size)",
                "value": worst,
                "target": ">= 0.98",
                "pass": worst >= 0.98,
            }
        )
    vals = [d.a_sees_b_s for d in disc if d.a_sees_b_s is not None]
    if vals:
        checks.append(
            {
                "what": "discovery: start B -> A lists B alive, median s",
                "value": statistics.median(vals),
                "target": "info",
                "pass": None,
            }
        )
    for i in idle:
        checks.append(
            {
                "what": f"idle VmRSS MB, {i.label} ({i.seeding} blobs)",
                "value": i.rss_max / MB,
                "target": "< 100",
                "pass": i.rss_max < 100 * MB,
            }
        )
        checks.append(
            {
                "what": f"idle CPU %, {i.label}",
                "value": i.cpu_pct,
                "target": "< 1",
                "pass": i.cpu_pct < 1.0,
            }
        )
    lines.append("| ratio / target | value | target | result |")
    lines.append("| --- | ---: | ---: | --- |")
    for c in checks:
        result = "" if c["pass"] is None else verdict(c["pass"])
        lines.append(f"| {c['what']} | {c['value']:.2f} | {c['target']} | {result} |")
    return "\n".join(lines), checks


def key_report(
    args: argparse.Namespace,
    size: int,
    modes: dict[str, list[LanResult]],
    discs: dict[str, list[Discovery]],
) -> tuple[str, list[dict[str, Any]]]:
    """The key's cost, every mode measured in this run: LAN ratios to curl, CPU per GiB of
    both agents, discovery."""
    names = {"off": "off", "on": "on (tagged torrents, PE)", "tls": "tls (SSL torrents)"}
    lines = [
        "| key | link | curl MB/s | p2pmodel MB/s | p2pmodel / curl | / key off "
        "| sender CPU s per GiB | receiver CPU s per GiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    checks: list[dict[str, Any]] = []
    gib = size / (1 << 30)

    def pick(mode: str, tool: str, rate: int) -> LanResult | None:
        return next(
            (r for r in modes.get(mode, []) if r.tool == tool and r.rate_mb_s == rate), None
        )

    def ratio(mode: str, rate: int) -> float | None:
        p2p, curl = pick(mode, P2P, rate), pick(mode, CURL, rate)
        if p2p is None or curl is None:
            return None
        p, c = p2p.med(lambda r: r.window.transfer_s), curl.med(lambda r: r.window.transfer_s)
        return c / p if p and c else None

    for rate in args.lan_rate:
        link = f"tbf {rate} MB/s" if rate else "unshaped"
        off = ratio("off", rate)
        for mode in args.key:
            p2p, curl, r = pick(mode, P2P, rate), pick(mode, CURL, rate), ratio(mode, rate)
            if p2p is None or curl is None or r is None:
                continue
            p_t = p2p.med(lambda x: x.window.transfer_s) or 0
            c_t = curl.med(lambda x: x.window.transfer_s) or 0
            rel = f"{r / off:.3f}" if off else ""
            lines.append(
                f"| {names[mode]} | {link} | {size / c_t / MB:.0f} | {size / p_t / MB:.0f} "
                f"| {r:.3f} | {rel} | {fmt(p2p.med(lambda x: x.sender_cpu_s / gib))} "
                f"| {fmt(p2p.med(lambda x: x.receiver_cpu_s / gib))} |"
            )
            if off and mode != "off":
                ok = r >= 0.95 * off
                checks.append({"what": f"key {mode} / off, LAN ratio to curl ({link})",
                               "value": r / off, "target": ">= 0.95", "pass": ok})  # fmt: skip
            if mode != "off" and rate == 0:
                checks.append({"what": f"key {mode}, LAN ratio to curl (unshaped)",
                               "value": r, "target": ">= 0.8", "pass": r >= 0.8})  # fmt: skip
    medians = {}
    for mode, ds in discs.items():
        vals = [d.a_sees_b_s for d in ds if d.a_sees_b_s is not None]
        if vals:
            medians[mode] = statistics.median(vals)
    for mode in args.key:
        if mode != "off" and "off" in medians and mode in medians:
            diff = medians[mode] - medians["off"]
            checks.append({"what": f"key {mode} - off, discovery median s", "value": diff,
                           "target": "<= 0.3", "pass": diff <= 0.3})  # fmt: skip
    lines += ["", "| ratio / target | value | target | result |", "| --- | ---: | ---: | --- |"]
    for c in checks:
        lines.append(f"| {c['what']} | {c['value']:.3f} | {c['target']} | {verdict(c['pass'])} |")
    return "\n".join(lines), checks


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench-lan",
        description="LAN rate agent to agent vs curl from nginx, discovery latency, idle agent.",
    )
    p.add_argument("--size-mib", type=int, default=1024, help="blob size for the LAN rate (1024)")
    p.add_argument(
        "--lan-rate",
        default="0,100",
        help="comma-separated link rates in MB/s to run the LAN test at; 0 = unshaped (0,100)",
    )
    p.add_argument("--repeat", type=int, default=3, help="LAN runs per link rate (3)")
    p.add_argument("--no-devnull", action="store_true", help="skip curl to /dev/null")
    p.add_argument("--discovery-reps", type=int, default=5, help="discovery repetitions (5)")
    p.add_argument("--idle-seconds", type=float, default=30.0, help="idle window (30)")
    p.add_argument("--idle-settle", type=float, default=5.0, help="wait before the window (5)")
    p.add_argument("--idle-shards", type=int, default=50, help="blobs for the idle test (50)")
    p.add_argument("--idle-shard-mib", type=int, default=2, help="their size in MiB (2)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: lan,discovery,idle")
    p.add_argument(
        "--key",
        default="off,on",
        help="office key modes to run parts 1 and 2 in: off, on, tls (on with swarm_tls) (off,on)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--workdir", type=Path, help="parent of the temporary directory (/var/tmp)")
    p.add_argument("--keep-work", action="store_true", help="keep it (logs, stores) for debugging")
    args = p.parse_args(argv)
    args.lan_rate = [int(x) for x in str(args.lan_rate).split(",") if x.strip()]
    args.skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    args.key = [x.strip() for x in str(args.key).split(",") if x.strip()]
    if not args.key or set(args.key) - {"on", "off", "tls"}:
        p.error("--key is a comma list of off, on and tls")
    if not 1 <= args.size_mib <= 1024:
        p.error("--size-mib must be 1..1024 (the data limit of this machine)")
    if args.repeat < 1 or args.discovery_reps < 0 or args.idle_shards < 1:
        p.error("--repeat >= 1, --discovery-reps >= 0, --idle-shards >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    why = netns_available()
    if why is not None:
        raise SystemExit(f"bench-lan: cannot build a virtual office: {why}")
    drop_environ()
    stale = cleanup_stale()
    if stale:
        log(f"deleted stale namespaces: {', '.join(stale)}")
    others = (
        sorted(p.name for p in Path("/run/netns").glob("p2pm-*"))
        if Path("/run/netns").is_dir()
        else []
    )
    if others:
        log(f"note: other offices are running (they share the CPUs): {', '.join(others)}")
    started = datetime.datetime.now(datetime.UTC)
    load0 = os.getloadavg()
    parent = args.workdir or Path("/var/tmp")
    work = Path(tempfile.mkdtemp(prefix="bench-lan-", dir=parent))
    idle: list[Idle] = []
    memory: list[dict[str, Any]] = []
    modes: dict[str, list[LanResult]] = {}
    discs: dict[str, list[Discovery]] = {}
    key_text = format_key(secrets.token_bytes(32))  # never printed: the key is a secret
    size = args.size_mib * MiB
    try:
        log(f"writing a {args.size_mib} MiB model and a {args.idle_shards}-shard model in {work}")
        up = work / "upstream"
        big = make_model(
            up, LAN_REPO, shards=1, shard_size=size, single_file=True, small_files={}, seed=1
        )
        small = make_model(
            up, IDLE_REPO, shards=args.idle_shards, shard_size=args.idle_shard_mib * MiB, seed=2
        )
        n_ws = 3 if ({"discovery", "idle"} - args.skip) else 2
        with Network(n_ws, mirror=True) as office:
            log(f"office {office.prefix}: {', '.join(h.name + ' ' + h.ip for h in office.hosts)}")
            site = LanSite(office, big, work, [small])
            memory = site.memory
            ws1, ws2 = office.workstations[:2]
            for mode in args.key:
                site.key = key_text if mode in ("on", "tls") else None
                site.swarm_tls = mode == "tls"
                for ws in (ws1, ws2):
                    if ws.name in site.procs:
                        site.stop(ws)
                    site.configure(ws)
                    site.serve(ws)
                site.wait_mesh([ws1, ws2])
                log(f"== office key {mode}")
                if "lan" not in args.skip:
                    modes[mode] = bench_lan(
                        site, big, args.lan_rate, args.repeat, not args.no_devnull
                    )
                if "discovery" not in args.skip:
                    discs[mode] = bench_discovery(site, args.discovery_reps)
            if "idle" not in args.skip:
                idle = bench_idle(
                    site, small, args.idle_seconds, args.idle_settle, args.idle_shards
                )
    finally:
        if args.keep_work:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    table, checks = "", []
    for i, mode in enumerate(args.key):
        last = i == len(args.key) - 1
        part, part_checks = report(
            args, size, modes.get(mode, []), discs.get(mode, []), idle if last else [],
            memory if last else [],
        )  # fmt: skip
        table += f"### office key {mode}\n\n{part}\n\n"
        checks += [{**c, "key": mode} for c in part_checks]
    if len(args.key) > 1:
        part, part_checks = key_report(args, size, modes, discs)
        table += f"### office key modes compared (same run)\n\n{part}\n"
        checks += part_checks
    cmd = " ".join(["scripts/bench-lan", *(sys.argv[1:] if argv is None else argv)])
    header = (
        f"`{cmd.strip()}` ({started:%Y-%m-%d %H:%M} UTC; load average {load0[0]:.2f} before, "
        f"{load1[0]:.2f} after)"
    )
    print(header)
    print()
    print(table)
    if args.json:
        data = {
            "command": cmd.strip(),
            "started_utc": started.isoformat(),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "kernel": platform.release(),
                "loadavg_before": load0,
                "loadavg_after": load1,
                "other_offices": others,
            },
            "size_bytes": size,
            "lan": {
                m: [
                    {
                        "tool": r.tool,
                        "rate_mb_s": r.rate_mb_s,
                        "runs": [{**asdict(x), "transfer_s": x.window.transfer_s} for x in r.runs],
                    }
                    for r in results
                ]
                for m, results in modes.items()
            },
            "discovery": {m: [asdict(d) for d in ds] for m, ds in discs.items()},
            "idle": [{**asdict(i), "cpu_pct": i.cpu_pct} for i in idle],
            "memory": memory,
            "checks": checks,
            "table": table,
        }
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    return 0  # like bench-mirror: a MISS is a result, shown in the table, not a failure


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench-lan: interrupted (office torn down, temp files removed)", file=sys.stderr)
        sys.exit(130)
    except SiteError as exc:
        print(f"bench-lan: {exc}", file=sys.stderr)
        sys.exit(1)
