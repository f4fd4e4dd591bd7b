"""A virtual LAN in Linux network namespaces, for tests, the demo and benchmarks.

Theory of operation: a `Network` builds one namespace per host (the "mirror" standing for the
internet, and N workstations) plus a switch namespace `<prefix>-sw` holding a bridge `br0`. Each
host gets a veth pair created from inside its own namespace: `eth0` stays in the host with an
address on one flat /24, the peer (named after the host) moves into the switch namespace and
joins `br0`. Nothing but the `ip netns` names themselves is created in the root namespace, and
multicast snooping is off on the bridge so mDNS floods like on a dumb office switch.

Rates are shaped with `tc tbf` (the kernel has no netem): `mirror_rate` on what the mirror sends
(the egress of its `eth0`), `lan_rate` on both ends of every workstation's veth. `Network.shape`
changes or removes a shaper at runtime. tbf counts Ethernet frames, so TCP goodput comes out ~4%
under the nominal rate (measured 0.96-0.97x from 1 MB/s to 1 GB/s with `tbf_burst`).

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
"""

from __future__ import annotations

import atexit
import contextlib
import functools
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
BRIDGE = "br0"
MIRROR_OCTET = 2
FIRST_WORKSTATION_OCTET = 11
MAX_WORKSTATIONS = 240
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
    """N workstations and an optional mirror on one bridge, each in its own network namespace."""

    def __init__(
        self,
        workstations: int,
        *,
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
        third = zlib.crc32(self.prefix.encode()) % 254 + 1
        self.subnet = f"10.231.{third}.0/24"
        base = f"10.231.{third}."
        self.switch_netns = f"{self.prefix}-{SWITCH_SUFFIX}"
        self.mirror_host: Host | None = (
            Host("mirror", f"{self.prefix}-mirror", f"{base}{MIRROR_OCTET}") if mirror else None
        )
        self.workstations: list[Host] = [
            Host(f"ws{i}", f"{self.prefix}-ws{i}", f"{base}{FIRST_WORKSTATION_OCTET + i - 1}")
            for i in range(1, workstations + 1)
        ]
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
        """Every namespace name this office owns, switch first."""
        return [self.switch_netns] + [h.netns for h in self.hosts]

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
        _ip_batch(
            self.switch_netns,
            [
                "link set lo up",
                f"link add {BRIDGE} type bridge mcast_snooping 0",
                f"link set {BRIDGE} up",
            ],
        )
        for h in self.hosts:
            _ip_batch(
                h.netns,
                [
                    "link set lo up",
                    f"link add name eth0 type veth peer name {h.name} netns {self.switch_netns}",
                    f"addr add {h.ip}/24 dev eth0",
                    "link set eth0 up",
                ],
            )
        _ip_batch(
            self.switch_netns,
            [f"link set {h.name} master {BRIDGE}" for h in self.hosts]
            + [f"link set {h.name} up" for h in self.hosts],
        )
        if self.mirror_host is not None and self.mirror_rate is not None:
            self.shape(self.mirror_host, self.mirror_rate)
        if self.lan_rate is not None:
            for h in self.workstations:
                self.shape(h, self.lan_rate)

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
            ends.append((self.switch_netns, host.name))
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
    "Network",
    "NetworkError",
    "cleanup_stale",
    "netns_available",
    "tbf_burst",
]
