"""The virtual office: namespaces on a bridge, shaping, multicast, and cleanup that always runs."""

from __future__ import annotations

import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pmodel.testing.netns import (
    MARKER_DIR,
    Host,
    Network,
    NetworkError,
    cleanup_stale,
    netns_available,
)

_UNAVAILABLE = netns_available()

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
]

ECHO_SERVER = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    with c:
        while data := c.recv(65536):
            c.sendall(data)
"""

ECHO_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
    c.sendall(sys.argv[3].encode())
    c.shutdown(socket.SHUT_WR)
    got = b""
    while data := c.recv(65536):
        got += data
print(got.decode())
"""

BLAST_SERVER = """
import socket, sys
size = int(sys.argv[2])
block = b"x" * (1 << 20)
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    with c:
        left = size
        while left:
            left -= c.send(block[: min(left, len(block))])
"""

DRAIN_CLIENT = """
import socket, sys, time
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as c:
    t0 = time.monotonic()
    total = 0
    while data := c.recv(1 << 20):
        total += len(data)
    print(total, time.monotonic() - t0)
"""

MCAST_RECEIVER = """
import socket, sys
group, port, my_ip = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
mreq = socket.inet_aton(group) + socket.inet_aton(my_ip)
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
s.settimeout(5)
print("ready", flush=True)
data, addr = s.recvfrom(2048)
print(data.decode(), addr[0], flush=True)
"""

MCAST_SENDER = """
import socket, sys, time
group, port, my_ip = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((my_ip, 0))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(my_ip))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
for _ in range(5):
    s.sendto(b"hello-mdns", (group, port))
    time.sleep(0.05)
"""

TERM_IGNORER_WITH_ORPHAN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
print(orphan.pid, flush=True)
time.sleep(60)
"""

DYING_CREATOR = """
import sys, time
from p2pmodel.testing.netns import Network
office = Network(1, mirror=True, prefix=sys.argv[1]).__enter__()
office.popen(office.workstations[0], ["sleep", "60"])
print("ready", flush=True)
time.sleep(60)
"""


def _netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _root_links_and_addrs() -> tuple[set[str], set[str]]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True)
    names = {line.split(":")[1].strip() for line in links.stdout.splitlines() if line}
    inets = {" ".join(line.split()[1:4]) for line in addrs.stdout.splitlines() if line}
    return names, inets


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _read_line(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "process printed nothing in time"
    return proc.stdout.readline().decode().strip()


def _unique_prefix() -> str:
    return f"p2pm-t{secrets.token_hex(2)}"


@pytest.fixture
def office() -> Iterator[Network]:
    with Network(2) as o:
        yield o


def _echo(office: Network, server_host: Host, client_host: Host) -> str:
    server = office.popen(
        server_host, [sys.executable, "-c", ECHO_SERVER, server_host.ip], stdout=subprocess.PIPE
    )
    port = _read_line(server)
    done = client_host.run(
        sys.executable, "-c", ECHO_CLIENT, server_host.ip, port, "ping", timeout=10
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_workstations_reach_each_other_over_tcp(office: Network) -> None:
    """A TCP echo server on ws1 answers a client on ws2 across the bridge."""
    ws1, ws2 = office.workstations
    assert _echo(office, ws1, ws2) == "ping"


def test_workstation_reaches_mirror(office: Network) -> None:
    """A workstation talks TCP to a server on the mirror host at its fixed .2 address."""
    assert office.mirror_host is not None
    assert office.mirror_host.ip.endswith(".2")
    assert [h.ip.rsplit(".", 1)[1] for h in office.workstations] == ["11", "12"]
    assert _echo(office, office.mirror_host, office.workstations[0]) == "ping"


def test_root_namespace_gains_no_links_or_addresses() -> None:
    """Building and using a shaped office adds no link or address to the root namespace."""
    before = _root_links_and_addrs()
    with Network(2, mirror_rate=8_000_000, lan_rate=50_000_000) as o:
        during = _root_links_and_addrs()
        assert set(o.namespaces) <= _netns_list()
    after = _root_links_and_addrs()
    assert before == during == after


def test_namespaces_gone_after_exit_even_when_body_raises() -> None:
    """All namespaces and the marker file are removed on exit, normal or by exception."""
    with Network(1) as o:
        names = set(o.namespaces)
        marker = MARKER_DIR / f"{o.prefix}.pid"
        assert names <= _netns_list()
        assert marker.exists()
    assert not names & _netns_list()
    assert not marker.exists()

    with pytest.raises(RuntimeError, match="boom"), Network(2) as o2:
        names = set(o2.namespaces)
        assert names <= _netns_list()
        raise RuntimeError("boom")
    assert not names & _netns_list()
    o2.close()  # idempotent


def test_processes_dead_after_exit() -> None:
    """Tracked processes (even ones ignoring SIGTERM) and their escaped children are killed."""
    with Network(1, mirror=False, kill_timeout=0.5) as o:
        ws1 = o.workstations[0]
        polite = o.popen(ws1, ["sleep", "60"])
        stubborn = o.popen(
            ws1, [sys.executable, "-c", TERM_IGNORER_WITH_ORPHAN], stdout=subprocess.PIPE
        )
        orphan = int(_read_line(stubborn))
        assert _alive(polite.pid) and _alive(stubborn.pid) and _alive(orphan)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 2
    while _alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(orphan)


def test_mirror_rate_shapes_what_the_mirror_sends() -> None:
    """~4 MB from a mirror shaped to 8 MB/s takes >= 0.35 s and is much faster once unshaped."""
    size = 4_000_000
    with Network(1, mirror_rate=8_000_000) as o:
        mirror, ws1 = o.mirror_host, o.workstations[0]
        assert mirror is not None
        server = o.popen(
            mirror,
            [sys.executable, "-c", BLAST_SERVER, mirror.ip, str(size)],
            stdout=subprocess.PIPE,
        )
        port = _read_line(server)

        def fetch() -> float:
            done = ws1.run(sys.executable, "-c", DRAIN_CLIENT, mirror.ip, port, timeout=20)
            assert done.returncode == 0, done.stderr
            total, elapsed = done.stdout.split()
            assert int(total) == size
            return float(elapsed)

        shaped = fetch()
        o.shape(mirror, None)
        o.shape(mirror, None)  # removing twice is fine
        unshaped = fetch()
    assert shaped >= 0.35, shaped
    assert unshaped * 3 < shaped, (unshaped, shaped)


def test_multicast_crosses_the_bridge(office: Network) -> None:
    """An mDNS datagram sent from ws1 to 224.0.0.251:5353 is received on ws2."""
    ws1, ws2 = office.workstations
    receiver = office.popen(
        ws2,
        [sys.executable, "-c", MCAST_RECEIVER, "224.0.0.251", "5353", ws2.ip],
        stdout=subprocess.PIPE,
    )
    assert _read_line(receiver) == "ready"
    sent = ws1.run(sys.executable, "-c", MCAST_SENDER, "224.0.0.251", "5353", ws1.ip, timeout=10)
    assert sent.returncode == 0, sent.stderr
    assert _read_line(receiver) == f"hello-mdns {ws1.ip}"


def test_cleanup_stale_removes_namespaces_of_dead_creator() -> None:
    """Namespaces of a SIGKILLed creator are deleted; a live office's are left alone."""
    dead_prefix = _unique_prefix()
    creator = subprocess.Popen(
        [sys.executable, "-c", DYING_CREATOR, dead_prefix],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert _read_line(creator) == "ready"
        creator.kill()
        creator.wait()
        expected = {f"{dead_prefix}-{suffix}" for suffix in ("sw", "mirror", "ws1")}
        assert expected <= _netns_list()
        with Network(1, mirror=False, prefix=f"{dead_prefix}x") as live:
            assert cleanup_stale(live.prefix) == []
            assert set(live.namespaces) <= _netns_list()
            assert set(cleanup_stale(dead_prefix)) == expected
            assert set(live.namespaces) <= _netns_list()
        assert not expected & _netns_list()
        assert not (MARKER_DIR / f"{dead_prefix}.pid").exists()
        assert cleanup_stale(dead_prefix) == []
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()
        assert creator.stdout is not None
        creator.stdout.close()
        cleanup_stale(dead_prefix)


def test_errors_name_the_failing_command() -> None:
    """A failing namespace operation raises NetworkError naming the command and its stderr."""
    prefix = _unique_prefix()
    squatter = f"{prefix}-ws1"
    subprocess.run(["ip", "netns", "add", squatter], check=True)
    try:
        with pytest.raises(NetworkError, match=squatter), Network(1, prefix=prefix):
            pass
        assert squatter in _netns_list()  # not ours: left in place
        assert not {f"{prefix}-sw", f"{prefix}-mirror"} & _netns_list()
    finally:
        subprocess.run(["ip", "netns", "del", squatter], check=True)

    with Network(1, mirror=False) as o:
        ws1 = o.workstations[0]
    with pytest.raises(NetworkError, match=rf"`tc -n {ws1.netns} qdisc replace .*failed.*: \S"):
        o.shape(ws1, 1_000_000)


def test_env_reaches_processes(office: Network) -> None:
    """`env` passed to popen/run is added on top of the caller's environment."""
    ws1 = office.workstations[0]
    done = ws1.run("sh", "-c", "echo $P2PM_TEST_VAR:$PATH", env={"P2PM_TEST_VAR": "yes"})
    assert done.stdout.strip() == f"yes:{os.environ['PATH']}"
