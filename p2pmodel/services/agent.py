"""The office agent: ``p2pmodel serve``, and the embedded agent a daemonless ``get`` runs.

Theory of operation. ``Agent.run`` is the one root nursery. With its LAN on (``Lan``) it opens
the swarm adapter (libtorrent), then starts ``SwarmService`` (seeds the store), ``PeerService``
(serves the peer link, announces the agent, judges liveness, exchanges peers),
``TrackerService`` (the office's tracker, if one is configured or learned) and
``SharingService`` (unless sharing is off); always ``GetService``, its ``LimitsService``
(the ``[limits]`` schedule), the ``StoreKeeper`` (the store's cap), and for ``serve`` the HF
endpoint and the control socket.
Every get runs in an agent: ``serve``'s, the embedded one of a daemonless ``get``, or for
``--no-lan`` one with the LAN off (no socket, no libtorrent, no mDNS), so what a get does to
the store is the same whichever way it ran. The services know each other
only through the narrow methods docs/architecture.md lists; the agent wires them and renders
their statistics (``status``). ``Outside`` names the outside things the agent uses, so tests
run real agents on in-memory fakes (``testing.fakes``). ``open_agent`` runs an agent for the
duration of a block (the embedded agent of a daemonless ``get``); an error in the block leaves
it as it was raised, never wrapped in an exception group. ``reload`` takes a re-read config
(``SIGHUP``): mirrors for the gets that start next, limits and the cap at once, static peers
dialled and trackers announced to at once; running transfers go on.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..adapters.home import agent_id, load_config
from ..adapters.netif import local_ipv4, local_ipv4_networks
from ..adapters.rlimit import current_budget, raise_open_files
from ..adapters.store import Store
from ..adapters.tls import OfficeTls
from ..adapters.transport import TcpTransport, Transport
from ..core import wire
from ..core.config import Config
from ..core.control import CollectAsk, MirrorsAsk, PublishAsk, RemoveAsk
from ..core.errors import UserError
from ..core.limits import Rates
from ..core.locality import Locality
from ..core.sharing import SEGMENT
from ..core.timeline import Timeline
from . import dashboard, metrics
from .get.service import GetService, HttpFactory
from .hfendpoint import HfEndpoint, Page
from .keeper import StoreKeeper
from .names import NameService
from .peers import AnnouncerFactory, PeerService
from .scrub import Scrubber
from .sharing import SharingService
from .swarm import SwarmAdapter, SwarmService
from .tracker import TrackerGet, TrackerService

log = logging.getLogger(__name__)
DEFAULT_RPC_PORT = 7420
NETWORK_EVERY = 2.0  # seconds between looks at the machine's addresses (joins within 5 s)
TRIM_EVERY = 30.0


def trim_memory() -> None:
    """Hand freed heap back to the OS. glibc keeps what a transfer freed (tens of MB after a
    fast LAN upload or a many-file get); an idle agent should be small (measured: 111 -> 33 MB)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def tune_malloc() -> None:
    """For a long-lived agent: big buffers (1 MiB writes, 8 MiB hash reads) straight from
    mmap, so freeing them returns the memory; few arenas for the worker threads. Measured
    with scripts/bench-lan: idle RSS after a many-file get stays far lower."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX


@dataclass
class AgentOptions:
    interfaces: list[str] = field(default_factory=list)  # empty: config, else every IPv4
    rpc_port: int = DEFAULT_RPC_PORT
    torrent_port: int = 0
    discovery: bool = True
    stall_timeout: float = 10.0
    locate_timeout: float = 2.0
    wait_for_peers: float = 0.0  # embedded agent: give discovery a moment before a get
    sharing: bool = True  # share the mirror work of a model with the office
    segment: int = SEGMENT  # the unit of that sharing (every agent of an office alike)
    hf_endpoint: str | None = None  # host:port to serve the Hugging Face API on (serve)
    lan: bool = True  # peers, the swarm and sharing (off: mirrors only, no socket, no mDNS)
    control: bool = False  # serve the control socket (serve; an embedded agent does not)
    scrub_every: float | None = None  # seconds between re-checks of the store (serve: a day;
    # None: only blobs a peer reports are checked)


def _real_swarm(
    store: Store, interfaces: list[str], port: int, tls: OfficeTls | None = None
) -> SwarmAdapter:
    from ..adapters.swarm import Swarm

    return Swarm(store, interfaces, port, tls, connections=current_budget().swarm)


def _real_tracker() -> TrackerGet:
    from ..adapters.tracker import TrackerHttp

    return TrackerHttp()


def _real_discovery(**kw: Any) -> Any:
    from ..adapters.discovery import Discovery

    return Discovery(**kw)


@dataclass
class Outside:
    """The outside things an agent uses: real ones by default, fakes in tests."""

    transport: Transport = field(default_factory=TcpTransport)
    swarm: Callable[[Store, list[str], int, OfficeTls | None], SwarmAdapter] = _real_swarm
    discovery: AnnouncerFactory = _real_discovery
    tracker: Callable[[], TrackerGet] = _real_tracker
    http: HttpFactory | None = None  # None: a real HTTP client
    interfaces: Callable[[], list[str]] = local_ipv4
    networks: Callable[[], list[str]] = local_ipv4_networks  # "address/prefix" each


@dataclass
class Lan:
    """The services an agent runs when its LAN is on (``AgentOptions.lan``)."""

    peers: PeerService
    swarm: SwarmService
    sharing: SharingService | None
    names: NameService
    tracker: TrackerService


class Agent:
    lan: Lan | None = None
    gets: GetService
    hf: HfEndpoint | None = None
    keeper: StoreKeeper
    scrub: Scrubber

    def __init__(
        self,
        home: Path,
        config: Config,
        options: AgentOptions | None = None,
        outside: Outside | None = None,
    ) -> None:
        self.home = home
        self.config = config
        self.opts = options or AgentOptions()
        self.outside = outside or Outside()
        self.store = Store(home)
        self.id = agent_id(home)
        self.timeline = Timeline()
        self.interfaces = (
            self.opts.interfaces or list(config.interfaces) or self.outside.interfaces()
        )
        # With an office key: the office CA and this agent's own certificate (fresh each start).
        key = config.office_key
        self.tls = OfficeTls(key, self.id, config.swarm_tls) if key is not None else None
        self._locality = Locality()

    def locality(self) -> Locality:
        """Which peers are near: the subnets of the interfaces the agent serves on now."""
        return self._locality

    def _look_at_subnets(self) -> None:
        serving = set(self.interfaces)
        self._locality = Locality.of(
            n for n in self.outside.networks() if n.split("/", 1)[0] in serving
        )

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        tune_malloc()
        raise_open_files()  # the connection caps are sized from what it gives
        opts = self.opts
        adapter = None
        if opts.lan:
            adapter = self.outside.swarm(self.store, self.interfaces, opts.torrent_port, self.tls)
        try:
            async with trio.open_nursery() as nursery:
                if adapter is not None:
                    await nursery.start(adapter.run)
                    self.lan = self._lan_services(adapter)
                lan = self.lan
                self.gets = GetService(
                    self.store,
                    self.config,
                    lan=lan.swarm if lan is not None else None,
                    sharing=lan.sharing if lan is not None else None,
                    http=self.outside.http,
                    names=lan.names if lan is not None and self.tls is not None else None,
                )
                if lan is not None:
                    self.gets.on_rotten.append(lambda digest: lan.swarm.unseed([digest]))
                    await nursery.start(lan.swarm.run)
                    await nursery.start(lan.peers.run)
                    await nursery.start(lan.tracker.run)
                    if lan.sharing is not None:
                        await nursery.start(lan.sharing.run)
                self.keeper = StoreKeeper(
                    self.store,
                    self.config.store_max,
                    in_use=self.gets.in_use,
                    swarm=lan.swarm if lan is not None else None,
                )
                self.gets.after_get.append(self.keeper.got)
                self.gets.limits.watch(self._apply_rates)
                await nursery.start(self.gets.run)
                await nursery.start(self.gets.limits.run)
                await nursery.start(self.keeper.run)
                self.scrub = Scrubber(self.store, self.gets.rotten, every=opts.scrub_every)
                await nursery.start(self.scrub.run)
                if lan is not None:
                    lan.peers.route([wire.Suspect], self._suspect)
                if opts.hf_endpoint is not None:
                    self.hf = HfEndpoint(self.gets, opts.hf_endpoint, pages=self._pages())
                    await nursery.start(self.hf.run)
                    nursery.start_soon(self._sample)
                if opts.control:
                    from .control import ControlServer

                    self.gets.after_get.append(_trimmed)
                    control = ControlServer(self.home, self.gets, self.status, self.control_ops())
                    await nursery.start(control.run)
                nursery.start_soon(_trim_every, TRIM_EVERY)
                if lan is not None:
                    nursery.start_soon(self._follow_network)
                task_status.started(self)
        finally:
            if adapter is not None:
                adapter.close()

    def _lan_services(self, adapter: SwarmAdapter) -> Lan:
        opts = self.opts
        peers = PeerService(
            self.id,
            self.outside.transport,
            interfaces=self.interfaces,
            rpc_port=opts.rpc_port,
            torrent_port=lambda: adapter.port,
            discovery=self.outside.discovery if opts.discovery else None,
            static_peers=self.config.peers,
            trackers=self.config.trackers,
            tls=self.tls,
        )
        swarm = SwarmService(
            adapter,
            self.store,
            peers,
            stall_timeout=opts.stall_timeout,
            locate_timeout=opts.locate_timeout,
            wait_for_peers=opts.wait_for_peers,
        )
        sharing = (
            SharingService(
                self.id, peers, swarm, self.store, segment=opts.segment, locality=self.locality
            )
            if opts.sharing
            else None
        )
        names = NameService(
            peers, self.store, keyed=self.tls is not None, wait_for_peers=opts.wait_for_peers
        )
        tracker = TrackerService(peers, self.config.office_key, self.outside.tracker)
        return Lan(peers, swarm, sharing, names, tracker)

    @property
    def swarm(self) -> SwarmService:
        assert self.lan is not None, "the LAN is off"
        return self.lan.swarm

    @property
    def peers(self) -> PeerService:
        assert self.lan is not None, "the LAN is off"
        return self.lan.peers

    @property
    def sharing(self) -> SharingService | None:
        return self.lan.sharing if self.lan is not None else None

    @property
    def names(self) -> NameService:
        assert self.lan is not None, "the LAN is off"
        return self.lan.names

    async def publish(self, name: str, manifest_digest: str, force: bool) -> None:
        """Offer a manifest ``p2pmodel publish`` stored to the office as ``name``."""
        from ..core.errors import UserError

        manifest = self.store.load_manifest(manifest_digest)
        if manifest is None:
            raise UserError(f"no manifest {manifest_digest[:19]} in the store to publish")
        await self.names.publish(name, manifest, force, self.swarm.stored)

    async def _suspect(self, msg: wire.Suspect, agent: str) -> wire.Message:
        """A peer says pieces we served failed: our copy is checked, nothing else believed."""
        if self.scrub.suspect(msg.digest, trio.current_time()):
            log.info("agent %s reports bad pieces of %s: checking our copy", agent, msg.digest)
        return wire.Ack()

    def _apply_rates(self, rates: Rates) -> None:
        if self.lan is None:
            return
        self.lan.swarm.set_upload_limit(rates.lan_upload)
        if self.lan.sharing is not None:
            self.lan.sharing.set_rate(rates.mirror_download)

    def _pinned(self) -> list[str]:
        """Addresses the user chose (``--interface``, then config ``interfaces``); [] = all."""
        return self.opts.interfaces or list(self.config.interfaces)

    async def _follow_network(self) -> None:
        """Follow the machine's addresses while it runs: one that appears (a laptop docks,
        Wi-Fi joins) is served and announced at the next look, one that goes is dropped."""
        while True:
            try:
                wanted = self._pinned() or self.outside.interfaces()
                if wanted != self.interfaces:
                    await self._use_interfaces(wanted)
                self._look_at_subnets()
            except OSError as e:  # out of files (a connection flood): look again later
                log.warning("cannot follow the network now: %s", e)
            await trio.sleep(NETWORK_EVERY)

    async def _use_interfaces(self, wanted: list[str]) -> None:
        log.info("interfaces: %s -> %s", ", ".join(self.interfaces), ", ".join(wanted))
        await self.peers.set_interfaces(wanted)
        self.interfaces = list(self.peers.interfaces) or wanted
        self.swarm.listen_on(self.interfaces)
        if self.lan is not None:
            self.lan.tracker.moved()

    def reload(self, config: Config) -> list[str]:
        """A re-read config (``SIGHUP``): applied without stopping anything (pinned
        ``interfaces`` too, at the next look at the network). Returns notes on what needs a
        restart instead."""
        notes: list[str] = []
        self.config = config
        self.gets.reload(config)
        if self.lan is not None:
            self.lan.peers.set_static_peers(config.peers)
            self.lan.peers.set_trackers(config.trackers)
        self.keeper.set_cap(config.store_max)
        if config.office_key != (self.tls.key if self.tls is not None else None):
            notes.append("the office key changed: it takes effect when the agent restarts")
        elif self.tls is not None and config.swarm_tls != self.tls.swarm_tls:
            notes.append("swarm_tls changed: it takes effect when the agent restarts")
        return notes

    async def reload_config(self) -> None:
        """``SIGHUP``: read ``config.toml`` again and apply it; a bad one is logged and the
        agent goes on with the config it has."""
        try:
            config = await trio.to_thread.run_sync(load_config, self.home)
        except UserError as e:
            log.error("config not reloaded: %s", e)
            return
        for note in self.reload(config):
            log.warning("%s", note)
        log.info("config reloaded from %s", config.path)

    def control_ops(self) -> dict[str, Callable[[Any], Awaitable[dict[str, Any]]]]:
        """What the control socket offers besides ``status`` and ``get`` (``core.control``)."""

        async def rm(req: RemoveAsk) -> dict[str, Any]:
            return (await self.keeper.remove(req.ref)).describe()

        async def gc(req: CollectAsk) -> dict[str, Any]:
            return (await self.keeper.collect()).describe()

        async def mirrors(req: MirrorsAsk) -> dict[str, Any]:
            return {
                "rules": [{"for": r.prefix, "use": list(r.use)} for r in self.config.mirrors],
                "mirrors": self.gets.board.snapshot(trio.current_time()),
            }

        async def publish(req: PublishAsk) -> dict[str, Any]:
            await self.publish(req.ref, req.manifest, req.force)
            return {}

        return {"rm": rm, "gc": gc, "mirrors": mirrors, "publish": publish}

    @property
    def rpc_port(self) -> int:
        return self.peers.rpc_port

    # -- the dashboard and /metrics (on the HF endpoint's server) ------------------------------

    def _pages(self) -> dict[str, Page]:
        async def page() -> tuple[str, bytes]:
            return "text/html; charset=utf-8", dashboard.PAGE.encode()

        async def state() -> tuple[str, bytes]:
            return "application/json", json.dumps(await dashboard.data(self)).encode()

        async def scrape() -> tuple[str, bytes]:
            stored = await trio.to_thread.run_sync(self.store.stored_bytes)
            return metrics.CONTENT_TYPE, metrics.render(self, stored)

        return {"/": page, "/api/p2pmodel/status": state, "/metrics": scrape}

    async def _sample(self) -> None:
        """The dashboard's timeline: the byte totals at the end of each bucket."""
        while True:
            self.timeline.record(
                trio.current_time(),
                {"mirror": self.gets.stats.from_mirrors_total, "lan": self._from_peers()},
            )
            await trio.sleep_until(self.timeline.next_sample(trio.current_time()))

    def _from_peers(self) -> int:
        return self.lan.swarm.stats.from_peers if self.lan is not None else 0

    def _peer_rows(self, now: float) -> list[dict[str, Any]]:
        """The peer table's rows, each with where the peer is (its subnet, or "via router")
        and the rate its LAN bytes last arrived at (bytes/s, None before any)."""
        rows = self.peers.snapshot(now)
        for row in rows:
            peer = self.peers.get(row["agent"])
            hosts = [a.host for a in peer.addrs] if peer is not None else []
            row["where"] = self._locality.where(hosts)
            rate = self.swarm.rates.rate(row["agent"])
            row["rate"] = round(rate) if rate is not None else None
        return rows

    def status(self) -> dict[str, Any]:
        """What ``status --json`` and the dashboard show (with the LAN off: no peers)."""
        now = trio.current_time()
        lan = self.lan
        swarm = lan.swarm.statistics() if lan is not None else {}
        from_peers = self._from_peers()
        return {
            "agent": self.id,
            "home": str(self.home),
            "interfaces": lan.peers.interfaces if lan is not None else [],  # served on now
            "office": {
                "key": self.tls is not None,
                "fingerprint": self.tls.fingerprint if self.tls is not None else None,
                # how blobs move between keyed agents: "tls" (SSL torrents) or "tagged"
                "swarm": None if self.tls is None else "tls" if self.tls.swarm_tls else "tagged",
                "other_office_agents": len(lan.peers.other_offices) if lan is not None else 0,
            },
            "rpc_port": lan.peers.rpc_port if lan is not None else None,
            "torrent_port": swarm.get("port"),
            "seeding": swarm.get("seeding", 0),
            "uploaded": swarm.get("uploaded", 0),
            "peers": self._peer_rows(now) if lan is not None else [],
            "transfers": self.gets.transfers(),
            "from_mirrors": self.gets.stats.from_mirrors_total,
            "from_mirrors_by_mirror": dict(self.gets.stats.from_mirrors),
            "from_hubs": dict(self.gets.stats.from_hubs),
            "from_peers": from_peers,
            "internet_bytes_saved": from_peers,
            "units": swarm.get("units", 0),
            "gets": {
                "started": self.gets.stats.started,
                "completed": self.gets.stats.completed,
                "failed": self.gets.stats.failed,
                "running": self.gets.stats.running,
            },
            "link": vars(lan.peers.stats).copy() if lan is not None else {},
            "tracker": lan.tracker.status() if lan is not None else None,
            "sharing": self.sharing.status(now) if self.sharing is not None else None,
            "hf_endpoint": self.hf.url if self.hf is not None else None,
            "limits": self.gets.limits.status(),
            "store": self.keeper.last.describe() if self.keeper.last else None,
            "scrub": {"checked": self.scrub.checked, "bad": self.scrub.bad},
        }


async def _trimmed(ref: str) -> None:
    trim_memory()  # a long-lived agent after a get (see trim_memory)


async def _trim_every(seconds: float) -> None:
    while True:
        await trio.sleep(seconds)
        trim_memory()


@contextlib.asynccontextmanager
async def open_agent(
    home: Path,
    config: Config,
    options: AgentOptions | None = None,
    outside: Outside | None = None,
) -> AsyncIterator[Agent]:
    """An agent running for the duration of the block (the embedded agent of a get, and with
    the LAN off the agent of ``get --no-lan``)."""
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(home, config, options, outside).run)
        try:
            yield agent
        except BaseException as e:  # re-raised as it is once the agent stopped
            failure = e
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
