"""What an office of several subnets may already run, started inside a virtual office: Debian's
`avahi-daemon` as an mDNS reflector in the router, and `opentracker` as the office's tracker.

Theory of operation: both are real daemons started through `Network.popen`, so they run in a
namespace of the office, in a session of their own, and die with it (SIGTERM on close, SIGKILL
after the office's `kill_timeout`; `cleanup_stale` covers a creator that died harder). Nothing of
theirs runs in, or leaves anything in, the host's namespaces:

- `Reflector` runs `avahi-daemon --no-drop-root --no-chroot --no-rlimits -f CONF` in the router
  namespace with a config of its own (`reflector_config`): IPv4 only, only the router's legs,
  `enable-dbus=no`, publishing nothing of its own, `enable-reflector=yes`. avahi-daemon insists on
  `/run/avahi-daemon/` for its pid file (and a socket it would open without D-Bus too), so it
  starts under a tmpfs mounted over `/run` in the mount namespace `ip netns exec` already gave it:
  the host's `/run` is never written, and a second office's reflector cannot clash with the first.
  Ready when it logs "Server startup complete" (it logs to stderr, kept in `<work>/avahi.log`).
- `Tracker` runs `opentracker -i IP -p PORT -P PORT -w /whitelist -d DIR` in a given host. It
  chroots to DIR (so the whitelist path is the one inside it) and drops to `nobody`, so DIR and
  the whitelist are world-readable. Debian's build is whitelist-only: `allow` rewrites the
  whitelist (40 hex digits a line) and sends SIGHUP, on which it re-reads the file. Ready when its
  TCP port listens (read from `/proc/<pid>/net/tcp`, that is the namespace's own table).

`host_daemons` lists avahi-daemon / opentracker processes running outside every named network
namespace (so in the host's), which tests check is always empty.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import quote_from_bytes

from p2pmodel.testing.netns import NETNS_DIR, Host, Network

AVAHI = "/usr/sbin/avahi-daemon"
OPENTRACKER = "/usr/bin/opentracker"
TRACKER_PORT = 6969
START_TIMEOUT = 15.0
DAEMONS = ("avahi-daemon", "opentracker")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_GET = (  # no proxy from the environment: the tracker is in the office
    "import sys, urllib.request as u; "
    "print(u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=5).read())"
)

# Runs avahi-daemon ("$@") under a private /run: `ip netns exec` made this process a mount
# namespace of its own (slave to the host's), so the tmpfs is seen by nobody else.
_PRIVATE_RUN = 'mount -t tmpfs -o mode=0755,size=1m p2pm-run /run && exec "$@"'


class ServiceError(RuntimeError):
    """A daemon did not start (or is not installed); the message ends with its log."""


def reflector_config(interfaces: Sequence[str]) -> str:
    """An avahi-daemon.conf that reflects IPv4 mDNS between `interfaces` and does nothing else."""
    return "\n".join(
        [
            "[server]",
            "host-name=p2pm-router",
            "use-ipv4=yes",
            "use-ipv6=no",
            f"allow-interfaces={','.join(interfaces)}",
            "enable-dbus=no",
            "disallow-other-stacks=no",
            "ratelimit-interval-usec=1000000",
            "ratelimit-burst=1000",
            "[wide-area]",
            "enable-wide-area=no",
            "[publish]",
            "disable-publishing=yes",
            "disable-user-service-publishing=yes",
            "publish-addresses=no",
            "publish-hinfo=no",
            "publish-workstation=no",
            "[reflector]",
            "enable-reflector=yes",
            "reflect-ipv=no",
            "[rlimits]",
            "",
        ]
    )


def _wait_started(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path, what: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            how = f"exited {proc.returncode}" if proc.poll() is not None else "timed out"
            _stop(proc)
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ServiceError(f"{what} did not start ({how}): {tail}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Reflector:
    """avahi-daemon reflecting mDNS between the router's legs of `office` (see the module)."""

    def __init__(self, office: Network, work: Path, *, timeout: float = START_TIMEOUT) -> None:
        if office.router is None:
            raise ValueError("a reflector needs an office of several subnets (a router)")
        if not os.access(AVAHI, os.X_OK):
            raise ServiceError(f"{AVAHI} is not installed (Debian package avahi-daemon)")
        work.mkdir(parents=True, exist_ok=True)
        legs = [office.router_leg(k) for k in range(1, len(office.switches) + 1)]
        self.conf = work / "avahi-daemon.conf"
        self.conf.write_text(reflector_config(legs))
        self.log = work / "avahi.log"
        argv = [AVAHI, "--no-drop-root", "--no-chroot", "--no-rlimits", "-f", str(self.conf)]
        with self.log.open("ab") as log:
            self.proc = office.popen(
                office.router,
                ["sh", "-c", _PRIVATE_RUN, "sh", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

        def ready() -> bool:
            return "Server startup complete" in self.log.read_text(errors="replace")

        _wait_started(self.proc, ready, self.log, "avahi-daemon", timeout)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 5 s) and wait; the office would do it on close too."""
        _stop(self.proc)


def _listening(pid: int, ip: str, port: int) -> bool:
    """Whether the network namespace of `pid` has a TCP socket listening on ip:port."""
    want = f"{int.from_bytes(bytes(map(int, ip.split('.'))), 'little'):08X}:{port:04X}"
    try:
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1] == want and line.split()[3] == "0A" for line in lines)


class Tracker:
    """opentracker listening on `host`'s address, tracking only `hashes` (see the module)."""

    def __init__(
        self,
        office: Network,
        host: Host,
        work: Path,
        hashes: Iterable[str] = (),
        *,
        port: int = TRACKER_PORT,
        timeout: float = START_TIMEOUT,
    ) -> None:
        if not os.access(OPENTRACKER, os.X_OK):
            raise ServiceError(f"{OPENTRACKER} is not installed (Debian package opentracker)")
        self.host = host
        self.port = port
        self.url = f"http://{host.ip}:{port}/announce"
        self.root = work / "opentracker"
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # its chroot: it runs as nobody there
        self.whitelist = self.root / "whitelist"
        self._write(hashes)
        self.log = work / "opentracker.log"
        argv = [OPENTRACKER, "-i", host.ip, "-p", str(port), "-P", str(port)]
        argv += ["-w", "/whitelist", "-d", str(self.root)]
        with self.log.open("ab") as log:
            self.proc = office.popen(host, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        _wait_started(
            self.proc,
            lambda: _listening(self.proc.pid, host.ip, port),
            self.log,
            "opentracker",
            timeout,
        )
        first = next(iter(self._hashes), None)
        if first is not None:
            # It listens before it has read its whitelist (another thread): until then every
            # hash is refused. Ready once the first one is tracked ("stopped": no peer added).
            _wait_started(
                self.proc, lambda: self.tracks(first), self.log, "opentracker's whitelist", timeout
            )

    def tracks(self, info_hash: str) -> bool:
        """Whether the tracker takes an announce of `info_hash` (40 hex) now: a "stopped"
        announce from its own host, which adds no peer."""
        query = f"info_hash={quote_from_bytes(bytes.fromhex(info_hash))}&peer_id={'0' * 20}"
        query += "&port=1&uploaded=0&downloaded=0&left=0&compact=1&event=stopped"
        done = self.host.run(sys.executable, "-c", _GET, f"{self.url}?{query}", timeout=10)
        return done.returncode == 0 and "not authorized" not in done.stdout

    def _write(self, hashes: Iterable[str]) -> None:
        lines = [h.lower() for h in hashes]
        self._hashes = lines
        if bad := [h for h in lines if not _HEX40.fullmatch(h)]:
            raise ValueError(f"info-hashes are 40 hex digits, not {bad}")
        tmp = self.whitelist.with_suffix(".new")
        tmp.write_text("".join(f"{h}\n" for h in lines))
        tmp.chmod(0o644)
        os.replace(tmp, self.whitelist)

    def allow(self, hashes: Iterable[str]) -> None:
        """Track exactly `hashes` from now on (rewrite the whitelist, SIGHUP, wait until the
        first of them is taken)."""
        self._write(hashes)
        self.proc.send_signal(signal.SIGHUP)
        first = next(iter(self._hashes), None)
        if first is not None:  # it re-reads the file in another thread: wait until it did
            _wait_started(
                self.proc, lambda: self.tracks(first), self.log, "opentracker's reload", 30.0
            )

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 5 s) and wait; the office would do it on close too."""
        _stop(self.proc)


def host_daemons(names: Sequence[str] = DAEMONS) -> list[tuple[int, str]]:
    """(pid, name) of every `names` process whose network namespace is not a named one (not in
    `/run/netns`): one in the host's namespace, or in an anonymous one nobody can clean up.
    (pid 1's namespace cannot always be read, even by root in a container, so it is not asked.)"""
    named = set()
    for entry in os.scandir(NETNS_DIR) if NETNS_DIR.is_dir() else ():
        with contextlib.suppress(OSError):
            named.add(os.stat(entry.path).st_ino)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
            if comm in names and os.stat(f"/proc/{entry.name}/ns/net").st_ino not in named:
                found.append((int(entry.name), comm))
        except OSError:
            continue
    return found


__all__ = [
    "DAEMONS",
    "TRACKER_PORT",
    "Reflector",
    "ServiceError",
    "Tracker",
    "host_daemons",
    "reflector_config",
]
