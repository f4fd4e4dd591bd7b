"""A virtual LAN in Linux network namespaces, for tests, the demo and benchmarks.

Theory of operation: a `Network` builds one namespace per host (the "mirror" standing for the
internet, and N workstations) plus a switch namespace `<prefix>-sw` holding a bridge `br0`. Each
host gets a veth pair created from inside its own namespace: `eth0` stays in the host with an
address on one flat /24, the peer (named after the host) moves into the switch namespace and
joins `br0`. Nothing but the `ip netns` names themselves is created in the root namespace, and
multicast snooping is off on the bridge so mDNS floods like on a dumb office switch.

An office of several subnets (`subnets=2`, or a list of workstation counts per subnet) has a
switch namespace per subnet (`<prefix>-sw1`, `<prefix>-sw2`, ...) and a router namespace
`<prefix>-rt` with one veth leg into each switch: `eth<k>` at `.1` of subnet k in the router, its
peer `rt` on that subnet's bridge. Subnet k is `10.(230+k).X.0/24` (subnet 1 is the one-subnet
office's), every host has a default route via its subnet's router address, and the router has
`net.ipv4.ip_forward=1` and nothing else: unicast is routed, multicast (mDNS) is not, as on an
office router without a reflector. The mirror sits in subnet 1; workstations fill the subnets in
order (ws1.. in subnet 1). `router_bytes` reads the router's interface counters per leg (what
went into and out of each subnet through the router). With one subnet there is no router and
the office is exactly the flat one described above.

Rates are shaped with `tc tbf` (the kernel has no netem): `mirror_rate` on what the mirror sends
(the egress of its `eth0`), `lan_rate` on both ends of every workstation's veth and of every
router leg. `Network.shape` and `Network.shape_leg` change or remove a shaper at runtime. tbf
counts Ethernet frames, so TCP goodput comes out ~4% under the nominal rate (measured 0.96-0.97x
from 1 MB/s to 1 GB/s with `tbf_burst`).

Cleanup is the point of this module. Processes started through `Network.popen` are tracked and
run in their own session; on exit they (and anything else still running inside the office's
namespaces) get SIGTERM, then SIGKILL after `kill_timeout` seconds, and the namespaces are
deleted. `__exit__` is idempotent and also registered with `atexit`. For runs that died harder
(SIGKILL), a marker file `/run/p2pmodel-office/<prefix>.pid` records the creator's pid, its start
time and the namespace names, and `cleanup_stale` deletes the namespaces of dead creators.

Usage::

    with Network(4, mirror_rate=8_000_000) as office:
        server = office.popen(office.mirror_host, ["python3", "-m", "http.server"])
        office.workstations[0].run("curl", f"http://{office.mirror_host.ip}:8000/")

    with Network(6, subnets=2, lan_rate=32_000_000) as office:  # ws1-3 | router | ws4-6
        before = office.router_bytes()[2].into  # bytes routed into subnet 2 so far
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

MARKER_DIR = Path("/run/p2pmodel-office")
NETNS_DIR = Path("/run/netns")
SWITCH_SUFFIX = "sw"
ROUTER_SUFFIX = "rt"
ROUTER_PORT = "rt"  # the router's port on each subnet's bridge
BRIDGE = "br0"
ROUTER_OCTET = 1
MIRROR_OCTET = 2
FIRST_WORKSTATION_OCTET = 11
MAX_WORKSTATIONS = 240
MAX_SUBNETS = 16
# tbf bucket: big enough that the kernel timer is not the limit at 1 GB/s (rate/100 bytes, i.e.
# 10 ms worth), never smaller than 32 KiB so a 64 KiB GSO packet is split, not dropped.
MIN_BURST = 32 * 1024
TBF_LATENCY = "50ms"

Direction = Literal["egress", "ingress", "both"]

_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}")


class NetworkError(RuntimeError):
    """A namespace, link or qdisc operation failed; the message names the command and stderr."""


def _run_checked(argv: Sequence[str], *, stdin: str | None = None) -> str:
    """Run an iproute2 command; raise `NetworkError` with the command and its stderr on failure."""
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"`{' '.join(argv)}` could not run: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().replace("\n", " | ")
        what = " ".join(argv)
        if stdin is not None:
            what += " <<< " + "; ".join(line for line in stdin.splitlines() if line)
        raise NetworkError(f"`{what}` failed (exit {done.returncode}): {detail}")
    return done.stdout


def _ip_batch(netns: str | None, lines: Iterable[str], *, force: bool = False) -> None:
    argv = ["ip"]
    if netns is not None:
        argv += ["-n", netns]
    if force:
        argv.append("-force")
    argv += ["-batch", "-"]
    _run_checked(argv, stdin="".join(f"{line}\n" for line in lines))


def tbf_burst(rate: int) -> int:
    """The tbf bucket size in bytes used for `rate` bytes/s."""
    return max(rate // 100, MIN_BURST)


def _tbf_argv(netns: str, dev: str, rate: int) -> list[str]:
    tbf = ["rate", f"{rate * 8}bit", "burst", str(tbf_burst(rate)), "latency", TBF_LATENCY]
    return ["tc", "-n", netns, "qdisc", "replace", "dev", dev, "root", "tbf", *tbf]


@dataclass(frozen=True)
class LegBytes:
    """Bytes through one router leg so far: ``into`` the subnet (what the router sent on that
    leg, its tx counter) and ``out_of`` it (what the router received on that leg)."""

    into: int
    out_of: int


def split_subnets(workstations: int, subnets: int | Sequence[int]) -> list[int]:
    """Workstations per subnet: `subnets` as a count (split as evenly as possible, the first
    subnets take the remainder) or as the list of counts itself (which must sum up)."""
    if isinstance(subnets, int):
        if not 1 <= subnets <= MAX_SUBNETS:
            raise ValueError(f"subnets must be in 1..{MAX_SUBNETS}, not {subnets}")
        q, r = divmod(workstations, subnets)
        return [q + (1 if k < r else 0) for k in range(subnets)]
    counts = list(subnets)
    if not 1 <= len(counts) <= MAX_SUBNETS or any(c < 0 for c in counts):
        raise ValueError(f"subnets must be 1..{MAX_SUBNETS} counts >= 0, not {counts}")
    if sum(counts) != workstations:
        raise ValueError(f"subnets {counts} do not add up to {workstations} workstations")
    return counts


@dataclass(frozen=True)
class Host:
    """One machine of the office: a network namespace with `eth0` at `ip` on the office /24."""

    name: str
    netns: str
    ip: str

    def cmd(self, *argv: str) -> list[str]:
        """`argv` wrapped to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a command in this host (text mode, output captured, no check unless asked)."""
        kw.setdefault("capture_output", True)
        check = bool(kw.pop("check", False))
        if kw.get("env") is not None:
            kw["env"] = {**os.environ, **kw["env"]}
        done: subprocess.CompletedProcess[str] = subprocess.run(
            self.cmd(*argv), check=check, text=True, **kw
        )
        return done

    def popen(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        """Start a command in this host. `env` is added on top of `os.environ`. Not tracked:
        prefer `Network.popen`, which kills what it started when the office closes."""
        full_env = {**os.environ, **env} if env is not None else None
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.cmd(*argv), env=full_env, **kw)
        return proc


def _proc_start_time(pid: int) -> int | None:
    """Kernel start time (clock ticks since boot) of `pid`, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in {"Z", "X"}:
        return None
    return int(fields[19])


def _pid_alive(pid: int, start_time: int | None) -> bool:
    now = _proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def _netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _pids_in(namespaces: Iterable[str]) -> set[int]:
    """Live pids whose network namespace is one of `namespaces` (by nsfs inode)."""
    keys: set[tuple[int, int]] = set()
    for name in namespaces:
        with contextlib.suppress(OSError):
            st = os.stat(NETNS_DIR / name)
            keys.add((st.st_dev, st.st_ino))
    if not keys:
        return set()
    me = os.getpid()
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in keys and _proc_start_time(int(entry.name)) is not None:
            found.add(int(entry.name))
    return found


def _signal(pid: int, sig: int, *, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _kill_namespace_processes(namespaces: Sequence[str], timeout: float) -> None:
    """SIGTERM everything running in `namespaces`, SIGKILL what is left after `timeout` s."""
    pids = _pids_in(namespaces)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        time.sleep(0.02)
        pids = _pids_in(namespaces)
    for _ in range(50):
        if not pids:
            return
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.02)
        pids = _pids_in(namespaces)


def _delete_namespaces(namespaces: Iterable[str]) -> list[str]:
    present = [name for name in namespaces if _netns_exists(name)]
    if present:
        with contextlib.suppress(NetworkError):  # -force: go on past errors; checked below
            _ip_batch(None, (f"netns del {name}" for name in present), force=True)
    left = [name for name in present if _netns_exists(name)]
    if left:
        raise NetworkError(f"could not delete network namespaces: {', '.join(left)}")
    return present


def _write_marker(prefix: str, namespaces: Sequence[str]) -> Path:
    MARKER_DIR.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    path = MARKER_DIR / f"{prefix}.pid"
    tmp = path.with_name(f".{path.name}.{pid}")
    tmp.write_text(f"{pid} {_proc_start_time(pid)}\n" + "".join(f"{n}\n" for n in namespaces))
    os.replace(tmp, path)
    return path


def _read_marker(path: Path) -> tuple[int, int | None, list[str]] | None:
    try:
        lines = path.read_text().splitlines()
        pid_text, start_text = lines[0].split()
        start = None if start_text == "None" else int(start_text)
        return int(pid_text), start, [line for line in lines[1:] if line]
    except (OSError, ValueError, IndexError):
        return None


def cleanup_stale(prefix_root: str = "p2pm-") -> list[str]:
    """Delete namespaces left by offices whose creator process is gone; return their names.

    Only namespaces listed in a marker file under `/run/p2pmodel-office/` whose office prefix
    starts with `prefix_root` and whose creator pid (and start time) is no longer alive are
    touched; processes still running inside them are killed first.
    """
    if not MARKER_DIR.is_dir():
        return []
    deleted: list[str] = []
    for path in sorted(MARKER_DIR.glob("*.pid")):
        if not path.name.startswith(prefix_root):
            continue
        marker = _read_marker(path)
        if marker is None:
            continue
        pid, start, namespaces = marker
        if _pid_alive(pid, start):
            continue
        _kill_namespace_processes(namespaces, timeout=1.0)
        deleted += _delete_namespaces(namespaces)
        path.unlink(missing_ok=True)
    return deleted


@functools.cache
def netns_available() -> str | None:
    """None if this process can build an office, else a one-line reason why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"p2pm-probe-{secrets.token_hex(3)}"
    try:
        _run_checked(["ip", "netns", "add", probe])
    except NetworkError as exc:
        return str(exc)
    try:
        _ip_batch(
            probe,
            [
                f"link add {BRIDGE} type bridge mcast_snooping 0",
                "link add name va type veth peer name vb",
                f"link set vb master {BRIDGE}",
            ],
        )
        _run_checked(_tbf_argv(probe, "va", 1_000_000))
    except NetworkError as exc:
        return str(exc)
    finally:
        with contextlib.suppress(NetworkError):
            _delete_namespaces([probe])
    return None


class Network:
    """N workstations and an optional mirror on one bridge (or on one bridge per subnet, joined
    by a router), each in its own network namespace."""

    def __init__(
        self,
        workstations: int,
        *,
        subnets: int | Sequence[int] = 1,
        mirror: bool = True,
        mirror_rate: int | None = None,
        lan_rate: int | None = None,
        prefix: str | None = None,
        kill_timeout: float = 5.0,
    ) -> None:
        if not 0 <= workstations <= MAX_WORKSTATIONS:
            raise ValueError(f"workstations must be in 0..{MAX_WORKSTATIONS}, not {workstations}")
        for label, rate in (("mirror_rate", mirror_rate), ("lan_rate", lan_rate)):
            if rate is not None and rate <= 0:
                raise ValueError(f"{label} must be a positive number of bytes/s, not {rate}")
        self.prefix = prefix if prefix is not None else f"p2pm-{secrets.token_hex(2)}"
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"bad office prefix {self.prefix!r}")
        self.mirror_rate = mirror_rate
        self.lan_rate = lan_rate
        self.kill_timeout = kill_timeout
        counts = split_subnets(workstations, subnets)
        third = zlib.crc32(self.prefix.encode()) % 254 + 1
        bases = [f"10.{230 + k}.{third}." for k in range(1, len(counts) + 1)]
        self.subnets: list[str] = [f"{base}0/24" for base in bases]  # subnet k is [k - 1]
        self.subnet = self.subnets[0]
        base = bases[0]
        if len(counts) == 1:
            self.switches = [f"{self.prefix}-{SWITCH_SUFFIX}"]
        else:
            self.switches = [f"{self.prefix}-{SWITCH_SUFFIX}{k}" for k in range(1, len(counts) + 1)]
        self.switch_netns = self.switches[0]
        self.router: Host | None = None  # several subnets: the namespace joining them
        self.router_ips: list[str] = []  # its address in subnet k is [k - 1]
        if len(counts) > 1:
            self.router_ips = [f"{b}{ROUTER_OCTET}" for b in bases]
            self.router = Host("router", f"{self.prefix}-{ROUTER_SUFFIX}", self.router_ips[0])
        self.mirror_host: Host | None = (
            Host("mirror", f"{self.prefix}-mirror", f"{base}{MIRROR_OCTET}") if mirror else None
        )
        self._subnet_of: dict[str, int] = {"mirror": 1}
        self.workstations: list[Host] = []
        for k, count in enumerate(counts, start=1):
            for j in range(count):
                i = len(self.workstations) + 1
                ip = f"{bases[k - 1]}{FIRST_WORKSTATION_OCTET + j}"
                self.workstations.append(Host(f"ws{i}", f"{self.prefix}-ws{i}", ip))
                self._subnet_of[f"ws{i}"] = k
        self._procs: list[tuple[subprocess.Popen[bytes], bool]] = []  # (process, own session)
        self._marker: Path | None = None
        self._created: list[str] = []  # namespaces this office made: the only ones it deletes
        self._entered = False
        self._closed = False

    # -- structure -------------------------------------------------------------------------

    @property
    def hosts(self) -> list[Host]:
        """The mirror (if any) followed by the workstations."""
        return ([self.mirror_host] if self.mirror_host else []) + self.workstations

    @property
    def namespaces(self) -> list[str]:
        """Every namespace name this office owns: switches first, then the router (if any)."""
        router = [self.router.netns] if self.router is not None else []
        return self.switches + router + [h.netns for h in self.hosts]

    def subnet_of(self, host: Host) -> int:
        """The number (1, 2, ...) of the subnet `host` sits in; the router is in all of them."""
        if host not in self.hosts:
            raise ValueError(f"{host.name} is not a host of office {self.prefix}")
        return self._subnet_of[host.name]

    def switch_of(self, host: Host) -> str:
        """The switch namespace `host`'s link plugs into (its port there is named `host.name`)."""
        return self.switches[self.subnet_of(host) - 1]

    def in_subnet(self, subnet: int) -> list[Host]:
        """The workstations of subnet `subnet` (1, 2, ...)."""
        return [h for h in self.workstations if self._subnet_of[h.name] == subnet]

    def router_leg(self, subnet: int) -> str:
        """The router's device on subnet `subnet` (in the router namespace)."""
        if self.router is None or not 1 <= subnet <= len(self.switches):
            raise ValueError(f"office {self.prefix} has no router leg into subnet {subnet}")
        return f"eth{subnet}"

    def host(self, name: str) -> Host:
        """The host called `name` ("mirror", "ws1", ...)."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def __enter__(self) -> Network:
        if self._entered:
            raise RuntimeError("an Network can be entered only once")
        self._entered = True
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        clash = [name for name in self.namespaces if _netns_exists(name)]
        if clash:
            raise NetworkError(f"network namespaces already exist: {', '.join(clash)}")
        self._marker = _write_marker(self.prefix, self.namespaces)
        for name in self.namespaces:
            _run_checked(["ip", "netns", "add", name])
            self._created.append(name)
        for switch in self.switches:
            _ip_batch(
                switch,
                [
                    "link set lo up",
                    f"link add {BRIDGE} type bridge mcast_snooping 0",
                    f"link set {BRIDGE} up",
                ],
            )
        for h in self.hosts:
            lines = [
                "link set lo up",
                f"link add name eth0 type veth peer name {h.name} netns {self.switch_of(h)}",
                f"addr add {h.ip}/24 dev eth0",
                "link set eth0 up",
            ]
            if self.router is not None:
                lines.append(f"route add default via {self.router_ips[self.subnet_of(h) - 1]}")
            _ip_batch(h.netns, lines)
        if self.router is not None:
            self._build_router(self.router)
        for k, switch in enumerate(self.switches, start=1):
            ports = [h.name for h in self.hosts if self._subnet_of[h.name] == k]
            ports += [ROUTER_PORT] if self.router is not None else []
            _ip_batch(
                switch,
                [f"link set {port} master {BRIDGE}" for port in ports]
                + [f"link set {port} up" for port in ports],
            )
        if self.mirror_host is not None and self.mirror_rate is not None:
            self.shape(self.mirror_host, self.mirror_rate)
        if self.lan_rate is not None:
            for h in self.workstations:
                self.shape(h, self.lan_rate)
            if self.router is not None:
                for k in range(1, len(self.switches) + 1):
                    self.shape_leg(k, self.lan_rate)

    def _build_router(self, router: Host) -> None:
        lines = ["link set lo up"]
        for k, (switch, ip) in enumerate(zip(self.switches, self.router_ips, strict=True), 1):
            lines += [
                f"link add name eth{k} type veth peer name {ROUTER_PORT} netns {switch}",
                f"addr add {ip}/24 dev eth{k}",
                f"link set eth{k} up",
            ]
        _ip_batch(router.netns, lines)
        # Unicast forwarding only: without a multicast routing daemon nothing joins the legs'
        # groups, and 224.0.0.0/24 (mDNS) is link-local anyway.
        _run_checked(router.cmd("sysctl", "-q", "-w", "net.ipv4.ip_forward=1"))

    def move(self, host: Host, subnet: int) -> Host:
        """Carry workstation `host` into subnet `subnet` (a laptop from Wi-Fi to a wired desk):
        its address goes, its link is plugged into that subnet's switch, and it gets a new
        address there (octet 200 + its number) with a default route via that subnet's router.
        Returns the host with its new address (its name and namespace stay)."""
        if self.router is None or not 1 <= subnet <= len(self.switches):
            raise ValueError(f"office {self.prefix} has no subnet {subnet} to move to")
        if host not in self.workstations:
            raise ValueError(f"{host.name} is not a workstation of office {self.prefix}")
        old = self.switch_of(host)
        new_switch = self.switches[subnet - 1]
        ip = self.subnets[subnet - 1].rsplit(".", 1)[0] + f".{200 + int(host.name[2:])}"
        _ip_batch(host.netns, ["addr flush dev eth0"])
        if old != new_switch:
            _ip_batch(old, [f"link set {host.name} netns {new_switch}"])
            _ip_batch(
                new_switch, [f"link set {host.name} master {BRIDGE}", f"link set {host.name} up"]
            )
        _ip_batch(
            host.netns,
            [
                f"addr add {ip}/24 dev eth0",
                f"route replace default via {self.router_ips[subnet - 1]}",
            ],
        )
        moved = Host(host.name, host.netns, ip)
        self.workstations[self.workstations.index(host)] = moved
        self._subnet_of[host.name] = subnet
        return moved

    def router_bytes(self) -> dict[int, LegBytes]:
        """Bytes through each router leg so far, by subnet number (the legs' device counters,
        read inside the router: every byte the router routed into a subnet, headers and all)."""
        if self.router is None:
            raise ValueError(f"office {self.prefix} has one subnet and no router")
        links = json.loads(_run_checked(["ip", "-n", self.router.netns, "-s", "-j", "link"]))
        by_dev = {link["ifname"]: link["stats64"] for link in links}
        out: dict[int, LegBytes] = {}
        for k in range(1, len(self.switches) + 1):
            stats = by_dev[self.router_leg(k)]
            out[k] = LegBytes(into=int(stats["tx"]["bytes"]), out_of=int(stats["rx"]["bytes"]))
        return out

    # -- processes -------------------------------------------------------------------------

    def popen(
        self, host: Host, argv: Sequence[str], env: Mapping[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in `host` (in a new session unless `start_new_session=False` is passed);
        it and its process group are killed when the office closes. `env` is added on top of
        `os.environ`; other keywords go to `subprocess.Popen`."""
        if self._closed or not self._entered:
            raise RuntimeError("Network.popen needs an open network (use `with Network(...)`)")
        kw.setdefault("start_new_session", True)
        proc = host.popen(argv, env=env, **kw)
        self._procs.append((proc, bool(kw["start_new_session"])))
        return proc

    def _stop_processes(self) -> None:
        deadline = time.monotonic() + self.kill_timeout
        # poll() is None means not yet reaped, so the pid (and group id) cannot have been reused.
        for proc, group in self._procs:
            if proc.poll() is None:
                _signal(proc.pid, signal.SIGTERM, group=group)
        for proc, group in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                _signal(proc.pid, signal.SIGKILL, group=group)
                proc.wait()
        # Whatever is still in our namespaces: children of tracked processes, untracked starts.
        _kill_namespace_processes(self._created, max(0.0, deadline - time.monotonic()))
        for proc, _ in self._procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    # -- shaping ---------------------------------------------------------------------------

    def shape(self, host: Host, rate: int | None, *, direction: Direction | None = None) -> None:
        """Set (or with `rate=None` remove) a tbf of `rate` bytes/s on `host`'s link.

        `direction` defaults to "egress" (what the host sends) for the mirror and "both" for
        workstations; "ingress" shapes the switch side of the veth (what the host receives).
        """
        if host not in self.hosts:
            raise ValueError(f"{host.name} is not a host of office {self.prefix}")
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be a positive number of bytes/s, not {rate}")
        if direction is None:
            direction = "egress" if host == self.mirror_host else "both"
        ends: list[tuple[str, str]] = []
        if direction in ("egress", "both"):
            ends.append((host.netns, "eth0"))
        if direction in ("ingress", "both"):
            ends.append((self.switch_of(host), host.name))
        self._shape_ends(ends, rate)

    def shape_leg(self, subnet: int, rate: int | None, *, direction: Direction = "both") -> None:
        """Set (or with `rate=None` remove) a tbf of `rate` bytes/s on the router's leg into
        subnet `subnet`: "egress" is what the router sends into the subnet, "ingress" what the
        subnet sends to the router (the switch side of the veth)."""
        dev = self.router_leg(subnet)
        assert self.router is not None
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be a positive number of bytes/s, not {rate}")
        ends: list[tuple[str, str]] = []
        if direction in ("egress", "both"):
            ends.append((self.router.netns, dev))
        if direction in ("ingress", "both"):
            ends.append((self.switches[subnet - 1], ROUTER_PORT))
        self._shape_ends(ends, rate)

    def _shape_ends(self, ends: Sequence[tuple[str, str]], rate: int | None) -> None:
        for netns, dev in ends:
            if rate is None:
                self._unshape(netns, dev)
            else:
                _run_checked(_tbf_argv(netns, dev, rate))

    @staticmethod
    def _unshape(netns: str, dev: str) -> None:
        try:
            _run_checked(["tc", "-n", netns, "qdisc", "del", "dev", dev, "root"])
        except NetworkError as exc:
            # No root qdisc to delete (already unshaped) is fine; anything else is not.
            text = str(exc)
            if "handle of zero" not in text and "No such file" not in text:
                raise

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Kill tracked processes and everything in the office, delete its namespaces.

        Idempotent; called by `__exit__` and at interpreter exit."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        try:
            self._stop_processes()
        finally:
            _delete_namespaces(self._created)
            if self._marker is not None:
                with contextlib.suppress(OSError):
                    self._marker.unlink()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = [
    "Host",
    "LegBytes",
    "Network",
    "NetworkError",
    "cleanup_stale",
    "netns_available",
    "split_subnets",
    "tbf_burst",
]
