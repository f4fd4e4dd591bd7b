"""Spoofed mDNS among real agents on the in-memory fakes (fake clock, no root): an outsider
without the office key announces another agent's id, fingerprint and ports with its own
address, or says goodbye for it. An announced address is only a hint until a hello on it
proves the agent, and a goodbye only a reason to ping, so the spoof costs nothing: the victim
still fetches from the real agent over the LAN, never lists or lets through the outsider's
address, and keeps the real address after the spoof stops."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from p2pmodel.adapters.discovery import (
    SERVICE_TYPE,
    Discovery,
    DiscoveryEvent,
    PeerGone,
    PeerSeen,
    instance_name,
)
from p2pmodel.adapters.tls import OfficeTls
from p2pmodel.adapters.transport import TcpTransport
from p2pmodel.core.config import parse_config
from p2pmodel.core.officekey import OfficeKey, format_key
from p2pmodel.core.peers import PeerAddr
from p2pmodel.core.refs import parse_ref
from p2pmodel.core.wire import PROTOCOL_VERSION, Hello, Ping, Pong, encode
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.services.get import GetRequest, GetResult
from p2pmodel.services.peers import PeerService
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.hostile import HostilePeer
from p2pmodel.testing.models import Repo, make_model

MiB = 1024 * 1024
KEY = format_key(bytes(range(32)))
PHANTOM = "feedfacefeed"  # an agent id nobody runs


class Network:
    def __init__(self, tmp: Path, repo: Repo, key: str | None) -> None:
        self.tmp = tmp
        self.repo = repo
        self.key = key
        self.sim = SimLan(MemoryMirror([repo]), lan_rate=64 * MiB)

    async def agent(self, nursery: trio.Nursery, name: str, **options: Any) -> Agent:
        home = self.tmp / name
        home.mkdir()
        raw: dict[str, Any] = {
            "mirror": [{"for": "https://huggingface.co/", "use": [self.sim.mirror.hub_url + "/"]}]
        }
        if self.key is not None:
            raw["office_key"] = self.key
        opts = AgentOptions(rpc_port=0, segment=256 * 1024, wait_for_peers=0.5, **options)
        agent = Agent(home, parse_config(raw, {}), opts, self.sim.outside())
        started: Agent = await nursery.start(agent.run)
        return started

    def spoof(self, victim_of: Agent, outsider: HostilePeer, agent: str) -> None:
        """``agent`` announced with the outsider's address and ports (where it really listens)
        and the office's public fingerprint."""
        self.sim.mdns.announce(
            PeerSeen(
                agent,
                (outsider.ip,),
                outsider.rpc_port,
                outsider.swarm.port,
                PROTOCOL_VERSION,
                victim_of.peers.office,
            )
        )


async def get(agent: Agent, ref: str = "hf://acme/spoofed") -> GetResult:
    return await agent.gets.get(GetRequest(parse_ref(ref)))


def addresses_of(agent: Agent, of: str) -> list[str]:
    """What ``status`` lists as the addresses of peer ``of`` ([] when it is not listed)."""
    return next((p["addresses"] for p in agent.status()["peers"] if p["agent"] == of), [])


def proven(agent: Agent, of: Agent) -> bool:
    peer = agent.peers.get(of.id)
    return peer is not None and peer.alive and peer.verified


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repo]:
    yield make_model(tmp_path / "up", "acme/spoofed", shards=2, shard_size=MiB)


@pytest.mark.parametrize("keyed", [True, False], ids=["office-key", "open-office"])
async def test_an_outsider_announcing_an_agent_at_its_own_address_costs_nothing(
    tmp_path: Path, repo: Repo, clock: Any, keyed: bool
) -> None:
    """An outsider without the key announces agent A (id, fingerprint, its own reachable
    ports) and a phantom agent at its own address, every second for 20 s, while B fetches
    what A holds: B takes it all from A over the LAN (0 mirror bytes), status never shows the
    outsider's address for A, the phantom is never a live peer, with a key the swarm's IP
    filter never lets the outsider in, and 80 s after the spoof stopped B still has A at its
    real address."""
    office = Network(tmp_path, repo, KEY if keyed else None)
    async with trio.open_nursery() as n:
        a = await office.agent(n, "a")
        b = await office.agent(n, "b")
        outsider = HostilePeer(office.sim, tmp_path / "outsider", None)
        await n.start(outsider.run)
        with trio.fail_after(30):
            while not (proven(a, b) and proven(b, a)):  # noqa: ASYNC110 (fake clock)
                await trio.sleep(0.1)
        real = f"{a.interfaces[0]}:{a.rpc_port}"
        assert addresses_of(b, a.id) == [real]
        held = await get(a)
        assert held.fetched == held.manifest.total_size

        seen_by_b: list[list[str]] = []
        allowed: list[set[str] | None] = []

        async def spoof() -> None:
            for _ in range(20):
                office.spoof(a, outsider, a.id)
                office.spoof(a, outsider, PHANTOM)
                await trio.sleep(0.5)
                seen_by_b.append(addresses_of(b, a.id))
                allowed.append(b.swarm.swarm.allowed)  # type: ignore[attr-defined]
                assert not b.peers.is_alive(PHANTOM)
                await trio.sleep(0.5)

        async with trio.open_nursery() as spoofing:
            spoofing.start_soon(spoof)
            await trio.sleep(2)
            got = await get(b)
        assert got.from_peers == got.manifest.total_size and got.fetched == 0
        for f in repo.files:
            assert (got.path / f.path).read_bytes() == f.data_path.read_bytes(), f.path
        assert len(seen_by_b) == 20
        assert all(outsider.ip not in ":".join(addrs) for addrs in seen_by_b), seen_by_b
        if keyed:
            assert all(hosts is not None and outsider.ip not in hosts for hosts in allowed)
            assert a.interfaces[0] in (b.swarm.swarm.allowed or set())  # type: ignore[attr-defined]
        assert outsider.ip not in str(b.peers.endpoint(a.id))

        await trio.sleep(80)
        assert proven(b, a) and addresses_of(b, a.id) == [real]
        assert not b.peers.is_alive(PHANTOM)
        n.cancel_scope.cancel()


@pytest.mark.parametrize("keyed", [True, False], ids=["office-key", "open-office"])
async def test_a_spoofed_goodbye_costs_a_ping(
    tmp_path: Path, repo: Repo, clock: Any, keyed: bool
) -> None:
    """Goodbyes for agent A sent by someone else every 0.1 s while B fetches what A holds: A
    never leaves B's live peers, B takes everything from A; a real goodbye (A stops) still
    ends A at B within a second."""
    office = Network(tmp_path, repo, KEY if keyed else None)

    async def host_a(task_status: trio.TaskStatus[tuple[Agent, trio.CancelScope]]) -> None:
        async with trio.open_nursery() as own:
            task_status.started((await office.agent(own, "a"), own.cancel_scope))

    async with trio.open_nursery() as n:
        a, stop_a = await n.start(host_a)
        b = await office.agent(n, "b")
        with trio.fail_after(30):
            while not (proven(a, b) and proven(b, a)):  # noqa: ASYNC110 (fake clock)
                await trio.sleep(0.1)
        await get(a)
        alive: list[bool] = []

        async def goodbyes() -> None:
            for _ in range(100):
                office.sim.mdns.announce(PeerGone(a.id))
                await trio.sleep(0.1)
                alive.append(b.peers.is_alive(a.id))

        async with trio.open_nursery() as spoofing:
            spoofing.start_soon(goodbyes)
            got = await get(b)
        assert got.from_peers == got.manifest.total_size and got.fetched == 0
        assert len(alive) == 100 and all(alive)
        assert b.peers.link.stats.requests > 100  # each goodbye cost a ping

        stop_a.cancel()  # a real goodbye: A stops
        with trio.fail_after(1):
            while b.peers.is_alive(a.id):  # noqa: ASYNC110 (fake clock)
                await trio.sleep(0.01)
        n.cancel_scope.cancel()


@pytest.mark.parametrize("keyed", [True, False], ids=["office-key", "open-office"])
async def test_a_peer_never_announced_is_tried_where_it_connected_from(
    tmp_path: Path, repo: Repo, clock: Any, keyed: bool
) -> None:
    """An agent B never saw announced (no mDNS; it has B as a static peer) says hello to B:
    B tries the address it came from with the RPC port its hello names, and lists it alive
    and verified there, so one missed announcement or one failed try does not hide a peer."""
    office = Network(tmp_path, repo, KEY if keyed else None)
    async with trio.open_nursery() as n:
        b = await office.agent(n, "b")
        a = await office.agent(n, "a", discovery=False)
        a.peers.set_static_peers([f"{b.interfaces[0]}:{b.rpc_port}"])
        with trio.fail_after(30):
            while not (proven(a, b) and proven(b, a)):  # noqa: ASYNC110 (fake clock)
                await trio.sleep(0.1)
        assert addresses_of(b, a.id) == [f"{a.interfaces[0]}:{a.rpc_port}"]
        n.cancel_scope.cancel()


# -- real mDNS inside the test namespace (scripts/test makes it: lo only) ----------------------


class Recording:
    """A discovery factory that records what the real ``Discovery`` reports to a service."""

    def __init__(self) -> None:
        self.events: list[DiscoveryEvent] = []

    def __call__(self, **kw: Any) -> Discovery:
        on_event = kw.pop("on_event")

        def record(event: DiscoveryEvent) -> None:
            self.events.append(event)
            on_event(event)

        return Discovery(on_event=record, **kw)


def real_peer(agent: str, ip: str, key: OfficeKey | None, discovery: Recording) -> PeerService:
    return PeerService(
        agent,
        TcpTransport(),
        interfaces=[ip],
        rpc_port=0,
        torrent_port=lambda: 6881,
        discovery=discovery,
        tls=OfficeTls(key, agent) if key is not None else None,
    )


async def impostor(stream: trio.abc.Stream) -> None:
    """The outsider's RPC port: whatever comes, a hello as another agent, then it hangs up."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.receive_some(65536)
        await stream.send_all(encode(Hello("bad0bad0bad0", PROTOCOL_VERSION, 6999, 1), 0))
    await trio.aclose_forcefully(stream)


@pytest.mark.lan
@pytest.mark.parametrize("keyed", [True, False], ids=["office-key", "open-office"])
async def test_a_real_zeroconf_spoof_from_another_address_changes_nothing(keyed: bool) -> None:
    """Real zeroconf and TCP: agents A (127.0.0.1) and B (127.0.0.2) meet; an outsider at
    127.0.0.3 registers A's service name with A's TXT (id, fingerprint) and its own address and
    RPC port. B's zeroconf reports A at 127.0.0.3; B tries that address once, refutes it (the
    hello names another agent, or the TLS handshake fails), and keeps A alive at 127.0.0.1
    with nothing of the outsider in status."""
    key = OfficeKey.parse(KEY) if keyed else None
    seen_by_b = Recording()
    a = real_peer("aaaa0000aaaa", "127.0.0.1", key, Recording())
    b = real_peer("bbbb0000bbbb", "127.0.0.2", key, seen_by_b)
    zc: Zeroconf | None = None
    with trio.fail_after(40):
        async with trio.open_nursery() as n:
            await n.start(a.run)
            await n.start(b.run)
            while not (a.is_alive(b.id) and b.is_alive(a.id)):  # noqa: ASYNC110 (real time)
                await trio.sleep(0.05)
            real = f"127.0.0.1:{a.rpc_port}"
            port: int = await n.start(TcpTransport().serve, "127.0.0.3", 0, impostor)
            spoof = PeerAddr("127.0.0.3", port)
            props = {"agent": a.id, "proto": str(PROTOCOL_VERSION), "rpc": str(port)}
            props |= {"bt": "6999", "boot": "spoofed"} | ({"office": a.office} if keyed else {})
            info = ServiceInfo(
                SERVICE_TYPE,
                instance_name(a.id),
                port=port,
                properties=props,
                server="impostor-p2pmodel.local.",
                parsed_addresses=["127.0.0.3"],
            )
            try:
                zc = await trio.to_thread.run_sync(
                    lambda: Zeroconf(interfaces=["127.0.0.3"], ip_version=IPVersion.V4Only)
                )
                await trio.to_thread.run_sync(
                    lambda: zc.register_service(info, cooperating_responders=True)
                )
                while not any(  # noqa: ASYNC110 (real time)
                    isinstance(e, PeerSeen) and e.agent == a.id and "127.0.0.3" in e.addrs
                    for e in seen_by_b.events
                ):
                    await trio.sleep(0.05)
                peer = b.get(a.id)
                assert peer is not None
                while spoof not in peer.held:  # noqa: ASYNC110 (real time)
                    await trio.sleep(0.05)
                for _ in range(20):
                    assert b.is_alive(a.id) and peer.verified
                    listed = next(p for p in b.snapshot(trio.current_time()) if p["agent"] == a.id)
                    assert listed["addresses"] == [real] and listed["unproven"] == 0
                    assert b.verified_hosts() == {"127.0.0.1"}
                    assert b.endpoint(a.id) == ("127.0.0.1", 6881)
                    await trio.sleep(0.1)
                assert isinstance(await b.request(a.id, Ping()), Pong)
            finally:
                if zc is not None:
                    await trio.to_thread.run_sync(zc.close)
            n.cancel_scope.cancel()
