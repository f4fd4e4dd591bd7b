"""The virtual office of several subnets: a router between switches, routed unicast, no
multicast across it unless avahi-daemon reflects it, the router's counters, and opentracker."""

from __future__ import annotations

import secrets
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pmodel.testing.fakes import bdecode
from p2pmodel.testing.netns import MARKER_DIR, Network, netns_available, split_subnets
from p2pmodel.testing.services import Reflector, Tracker, host_daemons

from .test_netns import (
    BLAST_SERVER,
    DRAIN_CLIENT,
    MCAST_SENDER,
    _echo,
    _netns_list,
    _read_line,
)

_UNAVAILABLE = netns_available()

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
]

# Waits up to 3 s for one datagram to 224.0.0.251:5353 on its address; prints it or "nothing".
MCAST_LISTENER = """
import socket, sys
my_ip = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 5353))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton("224.0.0.251") + socket.inet_aton(my_ip))
s.settimeout(3)
print("ready", flush=True)
try:
    while True:
        data, addr = s.recvfrom(9000)
        if sys.argv[2].encode() in data:
            print("got", addr[0], flush=True)
            break
except socket.timeout:
    print("nothing", flush=True)
"""

# An mDNS response (from port 5353, IP TTL 255) with one A record `<name>.local` -> my ip.
MDNS_ANNOUNCER = """
import socket, struct, sys, time
my_ip, name = sys.argv[1], sys.argv[2]
qname = b"".join(bytes([len(p)]) + p for p in (name.encode(), b"local")) + b"\\0"
packet = struct.pack("!6H", 0, 0x8400, 0, 1, 0, 0) + qname
packet += struct.pack("!HHIH", 1, 0x8001, 120, 4) + socket.inet_aton(my_ip)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((my_ip, 5353))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(my_ip))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
for _ in range(5):
    s.sendto(packet, ("224.0.0.251", 5353))
    time.sleep(0.2)
"""

# A BitTorrent HTTP announce; prints the body as hex.
ANNOUNCE = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().hex())
"""


@pytest.fixture(autouse=True)
def no_daemon_in_the_host() -> Iterator[None]:
    """Before and after every test: no avahi-daemon or opentracker outside the offices."""
    assert host_daemons() == []
    yield
    assert host_daemons() == []


@pytest.fixture
def office() -> Iterator[Network]:
    with Network(2, subnets=2, prefix=f"p2pm-sn{secrets.token_hex(2)}") as o:
        yield o


def test_split_subnets() -> None:
    """Workstations are split evenly (the first subnets take the rest), or as listed."""
    assert split_subnets(6, 2) == [3, 3]
    assert split_subnets(6, 4) == [2, 2, 1, 1]
    assert split_subnets(3, [1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="add up"):
        split_subnets(3, [1, 1])
    with pytest.raises(ValueError):
        split_subnets(3, 0)


def test_layout_of_three_subnets() -> None:
    """Three subnets: a switch each and a router; ws1.. fill them in order; every host routes
    via its own subnet's router address; the marker lists every namespace; all gone after."""
    with Network(5, subnets=3, prefix=f"p2pm-sn{secrets.token_hex(2)}") as o:
        assert o.router is not None
        assert [o.subnet_of(ws) for ws in o.workstations] == [1, 1, 2, 2, 3]
        assert o.mirror_host is not None and o.subnet_of(o.mirror_host) == 1
        assert len(set(o.subnets)) == 3 and o.subnet == o.subnets[0]
        for h in o.hosts:
            route = h.run("ip", "route", "show", "default", check=True).stdout
            assert f"via {o.router_ips[o.subnet_of(h) - 1]} " in route
            assert h.ip.rsplit(".", 1)[0] == o.subnets[o.subnet_of(h) - 1].rsplit(".", 1)[0]
        forward = o.router.run("sysctl", "-n", "net.ipv4.ip_forward", check=True).stdout
        assert forward.strip() == "1"
        names = set(o.namespaces)
        assert {f"{o.prefix}-sw1", f"{o.prefix}-sw3", f"{o.prefix}-rt"} <= names <= _netns_list()
        marker = (MARKER_DIR / f"{o.prefix}.pid").read_text().split()[2:]
        assert set(marker) == names
    assert not names & _netns_list()


def test_unicast_crosses_the_router(office: Network) -> None:
    """TCP from a workstation of subnet 2 reaches one of subnet 1 and the mirror, via the router."""
    ws1, ws2 = office.workstations
    assert office.subnet_of(ws1) == 1 and office.subnet_of(ws2) == 2
    assert _echo(office, ws1, ws2) == "ping"
    assert office.mirror_host is not None
    assert _echo(office, office.mirror_host, ws2) == "ping"


def _listen(office: Network, where: str, tag: str) -> subprocess.Popen[bytes]:
    host = office.host(where)
    proc = office.popen(
        host, [sys.executable, "-c", MCAST_LISTENER, host.ip, tag], stdout=subprocess.PIPE
    )
    assert _read_line(proc) == "ready"
    return proc


def test_multicast_stays_in_its_subnet_without_a_reflector(office: Network) -> None:
    """An mDNS datagram from ws1 (subnet 1) reaches the mirror beside it but not ws2 (subnet 2),
    also with the multicast TTL at 255."""
    ws1, _ = office.workstations
    near, far = _listen(office, "mirror", "hello-mdns"), _listen(office, "ws2", "hello-mdns")
    sent = ws1.run(sys.executable, "-c", MCAST_SENDER, "224.0.0.251", "5353", ws1.ip, timeout=10)
    assert sent.returncode == 0, sent.stderr
    assert _read_line(near) == f"got {ws1.ip}"
    assert _read_line(far) == "nothing"


def test_reflector_repeats_mdns_into_the_other_subnet(office: Network, tmp_path: Path) -> None:
    """With avahi-daemon reflecting in the router, an mDNS response from ws1 is heard in
    subnet 2 (sent by the router's address there); once it is stopped, no more."""
    ws1 = office.workstations[0]
    assert office.router is not None
    reflector = Reflector(office, tmp_path / "avahi")
    far = _listen(office, "ws2", "p2pm-reflected")
    sent = ws1.run(sys.executable, "-c", MDNS_ANNOUNCER, ws1.ip, "p2pm-reflected", timeout=10)
    assert sent.returncode == 0, sent.stderr
    assert _read_line(far) == f"got {office.router_ips[1]}"
    reflector.stop()
    assert reflector.proc.returncode == 0
    far = _listen(office, "ws2", "p2pm-unreflected")
    ws1.run(sys.executable, "-c", MDNS_ANNOUNCER, ws1.ip, "p2pm-unreflected", timeout=10)
    assert _read_line(far) == "nothing"


def test_router_counters_count_bytes_into_each_subnet(office: Network) -> None:
    """4 MB sent from subnet 1 to subnet 2 show up as >= 4 MB into subnet 2 on the router's
    leg, and only the acknowledgements (well under 1 MB) go into subnet 1."""
    size = 4_000_000
    ws1, ws2 = office.workstations
    server = office.popen(
        ws1, [sys.executable, "-c", BLAST_SERVER, ws1.ip, str(size)], stdout=subprocess.PIPE
    )
    port = _read_line(server)
    before = office.router_bytes()
    done = ws2.run(sys.executable, "-c", DRAIN_CLIENT, ws1.ip, port, timeout=20)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[0]) == size
    after = office.router_bytes()
    into = {k: after[k].into - before[k].into for k in after}
    out_of = {k: after[k].out_of - before[k].out_of for k in after}
    assert size <= into[2] < 1.1 * size, into
    assert into[1] < size / 4, into
    assert size <= out_of[1] < 1.1 * size, out_of


def test_router_legs_are_shaped_like_the_lan() -> None:
    """`lan_rate` puts the same tbf on both ends of every router leg as on workstation links."""
    with Network(2, subnets=2, lan_rate=10_000_000, prefix=f"p2pm-sn{secrets.token_hex(2)}") as o:
        assert o.router is not None
        for k in (1, 2):
            for netns, dev in ((o.router.netns, f"eth{k}"), (o.switches[k - 1], "rt")):
                out = subprocess.run(
                    ["tc", "-n", netns, "qdisc", "show", "dev", dev],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                assert "tbf" in out and "rate 80Mbit" in out, out
        o.shape_leg(2, None)
        o.shape_leg(2, None)  # removing twice is fine


def _announce(office: Network, where: str, url: str, info_hash: bytes, port: int) -> dict:
    query = urllib.parse.urlencode(
        {
            "info_hash": info_hash,
            "peer_id": secrets.token_bytes(20),
            "port": port,
            "compact": 1,
            "uploaded": 0,
            "downloaded": 0,
            "left": 0,
        }
    )
    host = office.host(where)
    done = host.run(sys.executable, "-c", ANNOUNCE, f"{url}?{query}", timeout=20)
    assert done.returncode == 0, done.stderr
    reply: dict = bdecode(bytes.fromhex(done.stdout.strip()))
    return reply


def _compact(peers: bytes) -> set[tuple[str, int]]:
    return {
        (".".join(map(str, peers[i : i + 4])), int.from_bytes(peers[i + 4 : i + 6], "big"))
        for i in range(0, len(peers), 6)
    }


def test_opentracker_tracks_only_its_whitelist(office: Network, tmp_path: Path) -> None:
    """opentracker in the router answers announces of a whitelisted info-hash with a compact
    peer list of the announcers (across subnets), refuses any other hash, and after `allow`
    (SIGHUP) tracks the new list."""
    listed, other = secrets.token_bytes(20), secrets.token_bytes(20)
    assert office.router is not None
    tracker = Tracker(office, office.router, tmp_path, [listed.hex()])
    assert tracker.url == f"http://{office.router_ips[0]}:6969/announce"
    ws1 = office.workstations[0]
    _announce(office, "ws1", tracker.url, listed, 7001)
    reply = _announce(office, "ws2", tracker.url, listed, 7002)
    assert b"failure reason" not in reply, reply
    assert (ws1.ip, 7001) in _compact(reply[b"peers"]), reply
    assert reply[b"interval"] > 60  # clients are asked to come back only much later
    refused = _announce(office, "ws2", tracker.url, other, 7002)
    assert b"not authorized" in refused.get(b"failure reason", b""), refused

    tracker.allow([other.hex()])
    for _ in range(50):  # the HUP is handled asynchronously
        reply = _announce(office, "ws1", tracker.url, other, 7001)
        if b"failure reason" not in reply:
            break
    assert b"failure reason" not in reply, reply
    stopped = tracker.proc
    tracker.stop()
    assert stopped.poll() is not None
