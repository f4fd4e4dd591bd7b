"""An office of two subnets joined by a router, found without a reflector (virtual office): one
static peer and peer exchange, or the office's tracker (Debian's opentracker in the router,
whitelisting what `p2pmodel tracker whitelist` prints); an agent of another office learns
nothing from either; a laptop carried into the other subnet rejoins within seconds."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pmodel.core.officekey import format_key
from p2pmodel.testing.models import Repo, make_model
from p2pmodel.testing.netns import Host, Network, netns_available
from p2pmodel.testing.services import Tracker, host_daemons

from .netns_site import MiB, Site, assert_exact, wait_for

_UNAVAILABLE = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
]
REJOIN_WITHIN = 5.0  # what the issue asks; the test allows twice that on a loaded 2-CPU box


@pytest.fixture(autouse=True)
def no_daemon_in_the_host() -> Iterator[None]:
    assert host_daemons() == []
    yield
    assert host_daemons() == []


def _office(workstations: int) -> Network:
    return Network(workstations, subnets=2, prefix=f"p2pm-jn{secrets.token_hex(2)}")


def _rows(site: Site[Network], ws: Host) -> dict[str, dict]:
    return {p["agent"]: p for p in site.status(ws)["peers"] if p["alive"]}


def _key() -> str:
    return format_key(secrets.token_bytes(32))


def test_one_static_peer_joins_both_subnets(tmp_path: Path) -> None:
    """ws1, ws2 in subnet 1, ws3, ws4 in subnet 2; only ws3 lists one peer (ws1). mDNS meshes
    each subnet, peer exchange the rest: all four list the three others alive and verified,
    each at its own routed address, those of the other subnet "via router". Then a get on ws4
    takes what ws1 holds over the LAN."""
    repo: Repo = make_model(tmp_path / "up", "acme/join", shards=2, shard_size=2 * MiB)
    with _office(4) as office:
        ws1, ws2, ws3, ws4 = office.workstations
        site = Site(office, repo, tmp_path)
        key = _key()
        for ws in office.workstations:
            site.configure(ws, f'office_key = "{key}"')
        site.configure(ws3, f'office_key = "{key}"\npeers = ["{ws1.ip}:7420"]')
        site.serve_all()
        took = site.wait_mesh(seconds=60)
        print(f"\nfour agents in two subnets, one static peer: meshed in {took:.1f} s")
        ids = {ws.name: site.agent_id(ws) for ws in office.workstations}
        rows = _rows(site, ws2)
        assert set(rows) == {ids["ws1"], ids["ws3"], ids["ws4"]}, rows
        assert rows[ids["ws4"]]["source"] in ("pex", "inbound"), rows
        assert rows[ids["ws4"]]["where"] == "via router", rows
        assert rows[ids["ws1"]]["where"] != "via router", rows
        assert [a.rsplit(":", 1)[0] for a in rows[ids["ws4"]]["addresses"]] == [ws4.ip]
        assert all(r["verified"] for r in rows.values()), rows
        assert site.status(ws4)["link"]["pex_received"] > 0

        site.get(ws1)
        got = site.get(ws4, tmp_path / "out")
        assert_exact(site, tmp_path / "out")
        assert got["from_peers"] > 0, got


def test_the_tracker_alone_joins_both_subnets_and_outsiders_learn_nothing(tmp_path: Path) -> None:
    """opentracker in the router whitelists what `p2pmodel tracker whitelist` prints on ws1.
    Only ws1 (subnet 1: ws1-ws3) and ws4 (subnet 2: ws4, ws5) have `trackers` configured, no
    one has a static peer: all four mesh, and ws2 and ws3 learn the tracker by peer exchange
    and announce too.
    ws5 (subnet 2) holds another office's key and the same tracker: its hash is not on the
    whitelist, the tracker refuses it, mDNS tells it only of another office, and it lists no
    peer at all; none of ours lists it."""
    with _office(5) as office:
        ws1, ws2, ws3, ws4, ws5 = office.workstations
        assert office.router is not None
        repo: Repo = make_model(tmp_path / "up", "acme/tracker", shards=1, shard_size=MiB)
        site = Site(office, repo, tmp_path)
        key = _key()
        for ws in (ws1, ws2, ws3, ws4):
            site.configure(ws, f'office_key = "{key}"')
        listed = site.cli(ws1, "tracker", "whitelist")
        assert listed.returncode == 0, listed.stderr
        hashes = listed.stdout.split()
        assert len(hashes) == 1 and len(hashes[0]) == 40, listed.stdout
        assert key.split("-", 1)[1] not in listed.stdout
        tracker = Tracker(office, office.router, tmp_path / "tracker", hashes)
        assert [office.subnet_of(ws) for ws in office.workstations] == [1, 1, 1, 2, 2]
        for ws in (ws1, ws4):
            site.configure(ws, f'office_key = "{key}"\ntrackers = ["{tracker.url}"]')
        site.configure(ws5, f'office_key = "{_key()}"\ntrackers = ["{tracker.url}"]')
        t0 = time.monotonic()
        site.serve_all()
        took = site.wait_mesh([ws1, ws2, ws3, ws4], seconds=60)
        print(f"\nfour agents, two subnets, a tracker: meshed {took:.1f} s after their start")
        print(f"(from the first start: {time.monotonic() - t0:.1f} s)")
        for ws in (ws2, ws3):
            wait_for(
                lambda ws=ws: (site.status(ws)["tracker"] or {}).get("announces", 0) > 0,
                30,
                f"{ws.name} to announce to the tracker it learned",
            )
            assert [t["url"] for t in site.status(ws)["tracker"]["trackers"]] == [tracker.url]

        ours = {site.agent_id(ws) for ws in (ws1, ws2, ws3, ws4)}
        stranger = site.status(ws5)
        assert stranger["peers"] == [], stranger["peers"]
        assert stranger["link"]["pex_received"] == 0
        assert "not authorized" in (stranger["tracker"]["last_error"] or ""), stranger["tracker"]
        for ws in (ws1, ws2, ws3, ws4):
            assert stranger["agent"] not in site.alive(ws)
            assert site.alive(ws) == ours - {site.agent_id(ws)}


def test_a_laptop_carried_into_the_other_subnet_rejoins(tmp_path: Path) -> None:
    """ws2 (a laptop, its agent following the machine's addresses) leaves subnet 1 for subnet
    2; ws1 stays in subnet 1, ws3 sits in subnet 2; ws3 lists ws1 as its one static peer.
    Within seconds of its new address ws2 lists both alive again at their addresses, both
    list ws2 at its new one, ws3 now "near" it; and its log shows no error loop."""
    repo: Repo = make_model(tmp_path / "up", "acme/laptop", shards=1, shard_size=MiB)
    with Network(3, subnets=[2, 1], prefix=f"p2pm-jn{secrets.token_hex(2)}") as office:
        ws1, ws2, ws3 = office.workstations
        site = Site(office, repo, tmp_path)
        site.extra_env = {"P2PMODEL_LOG": "info"}
        site.configure(ws3, f'peers = ["{ws1.ip}:7420"]')
        site.serve(ws1)
        site.start(ws2, pin=False)
        site.wait_ready(ws2)
        site.serve(ws3)
        site.wait_mesh(seconds=60)
        ids = {ws.name: site.agent_id(ws) for ws in office.workstations}
        assert _rows(site, ws2)[ids["ws3"]]["where"] == "via router"

        laptop = office.move(ws2, 2)
        t0 = time.monotonic()

        def rejoined() -> bool:
            mine = _rows(site, laptop)
            at = [
                [
                    a.rsplit(":", 1)[0]
                    for a in _rows(site, ws).get(ids["ws2"], {}).get("addresses", [])
                ]
                for ws in (ws1, ws3)
            ]
            return set(mine) == {ids["ws1"], ids["ws3"]} and all(a[:1] == [laptop.ip] for a in at)

        try:
            wait_for(rejoined, 2 * REJOIN_WITHIN, "the laptop to rejoin from subnet 2")
        except Exception:
            for ws in (ws1, laptop, ws3):
                print(ws.name, site.status(ws)["interfaces"], _rows(site, ws))
            raise
        took = time.monotonic() - t0
        print(f"\na laptop carried from subnet 1 into subnet 2 rejoined in {took:.1f} s")
        wait_for(
            lambda: _rows(site, laptop)[ids["ws3"]]["where"] != "via router",
            2 * REJOIN_WITHIN,
            "ws3 to be near the laptop",
        )
        assert _rows(site, laptop)[ids["ws1"]]["where"] == "via router"
        time.sleep(3)
        text = site.log(laptop, None)
        assert site.procs[laptop.name].poll() is None, text[-3000:]
        assert "Traceback" not in text and " ERROR " not in text, text[-3000:]
