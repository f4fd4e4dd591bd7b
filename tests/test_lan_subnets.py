"""An office of two subnets joined by a router (virtual office): with an mDNS reflector in the
router (Debian's avahi-daemon, `enable-reflector=yes`) two agents with no static peers find
each other and share a model over the LAN; without one, mDNS stays in its subnet and they do not."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pmodel.testing.models import Repo, make_model
from p2pmodel.testing.netns import Network, netns_available
from p2pmodel.testing.services import Reflector, host_daemons

from .netns_site import MiB, Site, assert_exact

_UNAVAILABLE = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
]
APART_FOR = 8.0  # seconds two agents without a reflector are watched not finding each other


@pytest.fixture(autouse=True)
def no_daemon_in_the_host() -> Iterator[None]:
    assert host_daemons() == []
    yield
    assert host_daemons() == []


def _office() -> Network:
    return Network(2, subnets=2, prefix=f"p2pm-sn{secrets.token_hex(2)}")


def _peers(site: Site[Network], ws_name: str) -> list[dict]:
    ws = site.office.host(ws_name)
    return list(site.status(ws)["peers"])


def test_agents_in_two_subnets_find_each_other_through_a_reflector(tmp_path: Path) -> None:
    """With avahi-daemon reflecting in the router and no static peers, ws1 (subnet 1) and ws2
    (subnet 2) become verified peers at each other's own (routed) address, and a get on ws2
    takes the model ws1 holds from ws1 rather than from the mirror."""
    repo: Repo = make_model(tmp_path / "up", "acme/subnets", shards=2, shard_size=2 * MiB)
    with _office() as office:
        ws1, ws2 = office.workstations
        assert office.subnet_of(ws1) != office.subnet_of(ws2)
        Reflector(office, tmp_path / "avahi")
        site = Site(office, repo, tmp_path)
        site.serve_all()
        took = site.wait_mesh(seconds=30)
        print(f"\ntwo agents in two subnets meshed through the reflector in {took:.1f} s")
        for me, other in ((ws1, ws2), (ws2, ws1)):
            peers = _peers(site, me.name)
            assert [p["agent"] for p in peers] == [site.agent_id(other)], peers
            (peer,) = peers
            assert peer["alive"] and peer["verified"], peer
            assert peer["source"] == "mdns", peer
            assert [a.rsplit(":", 1)[0] for a in peer["addresses"]] == [other.ip], peer

        site.get(ws1)
        served = site.served()
        got = site.get(ws2, tmp_path / "out")
        assert_exact(site, tmp_path / "out")
        assert got["from_peers"] > 0, got
        blobs = sum(f.size for f in repo.files if f.lfs)
        assert site.served() - served < blobs / 2, "ws2 took the blobs from the mirror"


def test_without_a_reflector_the_subnets_stay_apart(tmp_path: Path) -> None:
    """Without a reflector two agents in two subnets (no static peers) list no peer for
    APART_FOR seconds, though each can reach the other; once the router starts reflecting,
    they find each other without a restart."""
    repo: Repo = make_model(tmp_path / "up", "acme/apart", shards=1, shard_size=MiB)
    with _office() as office:
        ws1, ws2 = office.workstations
        site = Site(office, repo, tmp_path)
        site.serve_all()
        deadline = time.monotonic() + APART_FOR
        while time.monotonic() < deadline:
            assert _peers(site, ws1.name) == [] and _peers(site, ws2.name) == []
            time.sleep(0.5)
        reach = ws2.run("python3", "-c", _CONNECT, ws1.ip, "7420", timeout=10)
        assert reach.returncode == 0, reach.stderr  # routed: only discovery is missing

        Reflector(office, tmp_path / "avahi")
        t0 = time.monotonic()
        site.wait_mesh(seconds=120)
        print(f"\nreflector started late: the agents met {time.monotonic() - t0:.1f} s after")


_CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)"
