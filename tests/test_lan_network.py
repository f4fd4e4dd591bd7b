"""An agent follows the network while it runs (virtual office): an address that appears on the
machine (a laptop docks, Wi-Fi joins) is served and announced within seconds, no restart; one
that goes away is dropped quietly, and the agent comes back when it returns."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from p2pmodel.core.officekey import format_key
from p2pmodel.testing.models import Repo, make_model
from p2pmodel.testing.netns import Network, netns_available

from .netns_site import MiB, Site, peers_alive, wait_for

_UNAVAILABLE = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
]
JOIN_WITHIN = 5.0  # what the issue asks; the test allows twice that on a loaded 2-CPU box


@pytest.mark.parametrize("keyed", [False, True], ids=["open", "keyed"])
def test_an_address_that_appears_is_announced_without_a_restart(
    tmp_path: Path, keyed: bool
) -> None:
    """ws2's agent starts with no address on its LAN interface (loopback only). When the
    address is added, both agents list each other alive within seconds; when it is removed
    again ws2's agent keeps running and logs no error; when it returns, so does the peer (also
    with an office key: the SSL-only swarm listener follows the address too)."""
    repo: Repo = make_model(tmp_path / "up", "acme/net", shards=1, shard_size=MiB)
    with Network(2, prefix=f"p2pm-net{secrets.token_hex(2)}") as office:
        site = Site(office, repo, tmp_path)
        ws1, ws2 = office.workstations
        site.extra_env = {"P2PMODEL_LOG": "info"}
        if keyed:
            key = format_key(secrets.token_bytes(32))
            for ws in (ws1, ws2):
                site.configure(ws, f'office_key = "{key}"')
        ws2.run("ip", "addr", "flush", "dev", "eth0", check=True)
        site.serve(ws1)
        # No --interface and no config 'interfaces': every IPv4 address the machine has.
        site.start(ws2, pin=False)
        site.wait_ready(ws2)
        ids = {ws.name: site.status(ws)["agent"] for ws in (ws1, ws2)}
        assert site.status(ws2)["interfaces"] == ["127.0.0.1"]
        assert ids[ws2.name] not in peers_alive(site, ws1)

        ws2.run("ip", "addr", "add", f"{ws2.ip}/24", "dev", "eth0", check=True)
        t0 = time.monotonic()
        wait_for(lambda: ids[ws2.name] in peers_alive(site, ws1), 2 * JOIN_WITHIN, "ws1 sees ws2")
        wait_for(lambda: ids[ws1.name] in peers_alive(site, ws2), 2 * JOIN_WITHIN, "ws2 sees ws1")
        joined = time.monotonic() - t0
        print(f"\nan address added on ws2: both agents see each other after {joined:.1f} s")
        wait_for(lambda: site.status(ws2)["interfaces"] == [ws2.ip], 5, "ws2's interfaces")

        ws2.run("ip", "addr", "flush", "dev", "eth0", check=True)
        wait_for(lambda: site.status(ws2)["interfaces"] == ["127.0.0.1"], 10, "ws2 to let go")
        wait_for(lambda: ids[ws2.name] not in peers_alive(site, ws1), 20, "ws1 to see ws2 gone")
        time.sleep(3)  # a few looks at the network with the address gone
        assert site.procs[ws2.name].poll() is None, site.log(ws2)
        text = site.log(ws2, None)
        assert "Traceback" not in text and " ERROR " not in text, text[-3000:]

        ws2.run("ip", "addr", "add", f"{ws2.ip}/24", "dev", "eth0", check=True)
        wait_for(lambda: ids[ws2.name] in peers_alive(site, ws1), 2 * JOIN_WITHIN, "ws2 back")
        # And it can serve what it holds over its new address: a get of ws1's model from ws2.
        site.get(ws1)
        got = site.get(ws2, tmp_path / "out")
        assert got["from_peers"] > 0
