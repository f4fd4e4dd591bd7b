"""The office agent: ``p2pmodel serve``, and the embedded agent a daemonless ``get`` runs.

Theory of operation. ``Agent.run`` is the one root nursery. In it: the libtorrent swarm and its
alert pump, the peer RPC server on the agent's interfaces, mDNS discovery, a liveness loop
(pings peers that went quiet and expires silent ones, long before mDNS TTLs would), a loop that
says hello to configured static peers, and, for ``serve``, the control socket that ``get``,
``ls`` and ``status`` talk to. On start every verified blob in the store is seeded from its
saved torrent info (no re-hash). Decisions about peers live in ``PeerTable``; this module only
wires events and answers to it. A blob comes from the LAN at most once at a time (a second get
wanting it waits for the first), and a LAN fetch gives up as soon as liveness says all its
holders are gone; whatever the reason it fails, the get goes on with mirrors.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..adapters.discovery import Discovery, DiscoveryEvent, PeerSeen
from ..adapters.home import agent_id, segment_from_env
from ..adapters.store import Store
from ..adapters.swarm import Swarm
from ..core.config import Config
from ..core.peers import PeerAddr, PeerTable
from ..core.progress import Progress
from ..core.wire import (
    PROTOCOL_VERSION,
    Claim,
    Error,
    Have,
    HaveQuery,
    Hello,
    Message,
    Metadata,
    MetadataQuery,
    OfficeQuery,
    PeerProtocolError,
    Ping,
    Pong,
    Release,
    Resolved,
    ResolveQuery,
    UnitDone,
    UnitQuery,
)
from .download import BlobJob, Gate
from .link import RpcError, RpcServer, connect
from .sharing import Sharing

log = logging.getLogger(__name__)
DEFAULT_RPC_PORT = 7420
LIVENESS_TICK = 1.0
TRIM_EVERY = 30.0
PRUNE_EVERY = 10.0


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


def local_ipv4() -> list[str]:
    """This host's IPv4 addresses other than loopback (for the default interfaces)."""
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(ip.ip)
    return out or ["127.0.0.1"]


@dataclass
class AgentOptions:
    interfaces: list[str] = field(default_factory=list)  # empty: every IPv4 of the host
    rpc_port: int = DEFAULT_RPC_PORT
    torrent_port: int = 0
    discovery: bool = True
    stall_timeout: float = 10.0
    locate_timeout: float = 2.0
    wait_for_peers: float = 0.0  # embedded agent: give discovery a moment before a get
    # WAN sharing (issue 4): split the mirror work with peers. P2PMODEL_COORDINATION=off
    # turns it off (then only blobs some peer holds whole come over the LAN).
    sharing: bool = field(
        default_factory=lambda: os.environ.get("P2PMODEL_COORDINATION", "on").lower() != "off"
    )
    segment: int = field(
        default_factory=lambda: segment_from_env(os.environ.get("P2PMODEL_SEGMENT_MIB"))
    )


class Agent:
    def __init__(self, home: Path, config: Config, options: AgentOptions | None = None) -> None:
        self.home = home
        self.config = config
        self.opts = options or AgentOptions()
        self.store = Store(home)
        self.id = agent_id(home)
        self.interfaces = self.opts.interfaces or list(config.interfaces) or local_ipv4()
        self.peers = PeerTable(self.id)
        self.swarm: Swarm | None = None
        self.rpc_port = 0
        self.from_mirrors = 0
        self.from_peers = 0
        self.transfers: dict[str, Progress] = {}
        self._lan_fetches: dict[str, trio.Event] = {}  # digest -> set when its LAN fetch ends
        self.sharing = Sharing(self, self.opts.segment) if self.opts.sharing else None
        self._peer_seen = trio.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        tune_malloc()
        self.swarm = Swarm(self.store, self.interfaces, self.opts.torrent_port)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.swarm.run)
                server = RpcServer(self.hello, self.answer)
                self.rpc_port = await nursery.start(
                    server.run, self.interfaces[0], self.opts.rpc_port
                )
                for ip in self.interfaces[1:]:
                    await nursery.start(server.run, ip, self.rpc_port)
                await trio.to_thread.run_sync(self.seed_store)
                if self.opts.discovery:
                    disc = Discovery(
                        agent=self.id,
                        interfaces=self.interfaces,
                        rpc_port=self.rpc_port,
                        torrent_port=self.swarm.port,
                        proto=PROTOCOL_VERSION,
                        on_event=self.on_discovery,
                    )
                    await nursery.start(disc.run)
                nursery.start_soon(self.liveness)
                if self.sharing is not None:
                    await nursery.start(self.sharing.run)
                if self.config.peers:
                    nursery.start_soon(self.static_peers)
                task_status.started(self)
        finally:
            self.swarm.close()

    def seed_store(self) -> None:
        """Seed every verified blob (blocking: called in a thread, torrents are cheap to add)."""
        assert self.swarm is not None
        for digest, size in self.store.verified_blobs():
            trio.from_thread.run_sync(self.swarm.seed, digest, size)

    def hello(self) -> Hello:
        port = self.swarm.port if self.swarm else 0
        return Hello(self.id, PROTOCOL_VERSION, port, self.rpc_port)

    # -- peers ---------------------------------------------------------------------------------

    def on_discovery(self, event: DiscoveryEvent) -> None:
        now = trio.current_time()
        if isinstance(event, PeerSeen):
            addrs = [PeerAddr(a, event.rpc_port) for a in event.addrs]
            if self.peers.seen(event.agent, addrs, event.torrent_port, "mdns", now):
                self._peer_seen.set()
        else:
            self.peers.gone(event.agent, now)

    async def liveness(self) -> None:
        last_trim = last_prune = trio.current_time()
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                for peer in self.peers.due_pings(now):
                    nursery.start_soon(self.ping, peer.agent)
                self.peers.expire(now)
                if self.swarm is not None and now - last_prune >= PRUNE_EVERY:
                    # A status() of every unit torrent: not every tick (hundreds while a big
                    # file is shared).
                    last_prune = now
                    self.swarm.prune_units(now, self.sharing.wanted() if self.sharing else set())
                if now - last_trim >= TRIM_EVERY:
                    last_trim = now
                    trim_memory()
                await trio.sleep(LIVENESS_TICK)

    async def ping(self, agent: str) -> None:
        try:
            await self.ask(agent, Ping())
        except (RpcError, PeerProtocolError):
            self.peers.ping_failed(agent, trio.current_time())

    async def static_peers(self) -> None:
        while True:
            for text in self.config.peers:
                host, _, port = text.rpartition(":")
                with contextlib.suppress(RpcError, PeerProtocolError, OSError):
                    async with connect(host, int(port), self.hello()) as client:
                        p = client.peer
                        addrs = [PeerAddr(host, p.rpc_port)]
                        self.peers.seen(
                            p.agent, addrs, p.torrent_port, "static", trio.current_time()
                        )
                        self._peer_seen.set()
            await trio.sleep(5.0)

    async def ask(self, agent: str, msg: Message) -> Message:
        """One request to a peer (trying its addresses in turn); marks it heard on success."""
        peer = self.peers.get(agent)
        if peer is None:
            raise RpcError(f"unknown peer {agent}")
        last: Exception = RpcError("no address")
        for addr in list(peer.addrs):
            try:
                async with connect(addr.host, addr.rpc_port, self.hello()) as client:
                    reply = await client.request(msg)
                self.peers.heard(agent, trio.current_time())
                return reply
            except (RpcError, PeerProtocolError) as e:
                last = e
        raise last

    async def answer(self, msg: Message, peer: Hello) -> Message:
        """Answer a peer's request (the RPC server's handler)."""
        self.peers.heard(peer.agent, trio.current_time())
        swarm = self.swarm
        if isinstance(msg, Ping):
            return Pong()
        if isinstance(msg, HaveQuery):
            complete = tuple(d for d in msg.digests if swarm is not None and swarm.seeding(d))
            partial = tuple(d for d in msg.digests if swarm is not None and swarm.holds_partial(d))
            return Have(complete, partial)
        if isinstance(msg, MetadataQuery):
            info = swarm.info(msg.digest) if swarm is not None else None
            return Metadata(msg.digest, info or b"")
        if self.sharing is not None:
            if isinstance(msg, Claim | Release | UnitDone):
                return self.sharing.on_message(peer.agent, msg)
            if isinstance(msg, OfficeQuery):
                return self.sharing.office_state(msg.digests)
            if isinstance(msg, UnitQuery):
                return await self.sharing.unit_query(msg.digest, msg.index)
        if isinstance(msg, ResolveQuery):
            # Names are answered (so an office key can later make them believable) but a
            # peer's answer is not used for names until then: see BRIEF's trust rules.
            m = self.store.lookup(msg.ref)
            return Resolved(msg.ref, m.to_bytes() if m else b"")
        return Error(f"unexpected {msg.kind}")

    # -- the LanSource that get() uses ---------------------------------------------------------

    async def locate(self, digests: list[str]) -> set[str]:
        if self.opts.wait_for_peers and not self.peers.alive():
            with trio.move_on_after(self.opts.wait_for_peers):
                await self._peer_seen.wait()
        if not digests:
            return set()

        async def query(agent: str) -> None:
            try:
                reply = await self.ask(agent, HaveQuery(tuple(digests)))
            except (RpcError, PeerProtocolError):
                self.peers.ping_failed(agent, trio.current_time())
                return
            if isinstance(reply, Have):
                # The answer is about these digests only: what the peer said of others (another
                # get's, running at the same time) still stands.
                peer = self.peers.get(agent)
                asked = set(digests)
                complete = (peer.holds - asked if peer else set()) | set(reply.complete)
                partial = (peer.partial - asked if peer else set()) | set(reply.partial)
                self.peers.inventory(agent, complete, partial, trio.current_time())

        with trio.move_on_after(self.opts.locate_timeout):
            async with trio.open_nursery() as nursery:
                for peer in self.peers.alive():
                    nursery.start_soon(query, peer.agent)
        return {d for d in digests if self.peers.holders(d)}

    async def fetch(self, job: BlobJob, progress: Progress) -> bool:
        assert job.digest is not None
        # Another get (of a model sharing this blob) may be fetching it, or have fetched it since
        # this get looked: use that rather than fetch it twice (the swarm refuses a second
        # torrent for it, and the fallback would be the mirrors).
        running = self._lan_fetches.get(job.digest)
        if running is not None:
            progress.add(job.key, job.label, job.size, state="waiting")
            await running.wait()
        if self.store.has_blob(job.digest, job.size):
            progress.add(job.key, job.label, job.size, have=job.size, state="done")
            return True
        if running is not None:
            return False
        done = self._lan_fetches[job.digest] = trio.Event()
        try:
            return await self._fetch(job, progress)
        finally:
            del self._lan_fetches[job.digest]
            done.set()

    async def _fetch(self, job: BlobJob, progress: Progress) -> bool:
        assert self.swarm is not None and job.digest is not None
        holders = self.peers.holders(job.digest)
        info = b""
        for peer in holders:
            with contextlib.suppress(RpcError, PeerProtocolError):
                reply = await self.ask(peer.agent, MetadataQuery(job.digest))
                if isinstance(reply, Metadata) and reply.info:
                    info = reply.info
                    break
        if not info:
            return False
        endpoints = [
            (a.host, p.torrent_port) for p in holders if p.torrent_port for a in p.addrs[:1]
        ]
        progress.add(job.key, job.label, job.size, state="fetching")
        source = f"LAN ({len(endpoints)} peer{'s' if len(endpoints) != 1 else ''})"

        received, last_progress = 0, trio.current_time()

        def advance(n: int) -> None:
            nonlocal received, last_progress
            received, last_progress = received + n, trio.current_time()
            progress.advance(job.key, n, source, lan=True)
            self.from_peers += n

        async def give_up_when_holders_die(scope: trio.CancelScope) -> None:
            # Pings tell within seconds that every holder died (kill -9, power cut); the swarm
            # alone would wait out its stall timeout. Cancelled, it keeps the verified pieces.
            while True:
                await trio.sleep(LIVENESS_TICK)
                if (
                    received < job.size
                    and trio.current_time() - last_progress >= LIVENESS_TICK
                    and not any(self._alive(p.agent) for p in holders)
                ):
                    scope.cancel()
                    return

        ok = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(give_up_when_holders_die, nursery.cancel_scope)
                got = await self.swarm.fetch(
                    job.digest,
                    job.size,
                    info,
                    endpoints,
                    stall_timeout=self.opts.stall_timeout,
                    on_progress=advance,
                )
                ok = got.ok
                if not ok:
                    log.warning("fetching %s from peers failed: %s", job.digest, got.why)
                nursery.cancel_scope.cancel()
        except Exception:  # the LAN is only a shortcut: whatever went wrong, mirrors remain
            log.exception("fetching %s from peers failed", job.digest)
            ok = False
        if ok:
            progress.set_state(job.key, "done", have=job.size)
        else:
            progress.set_state(job.key, "waiting", have=0)
        return ok

    def _alive(self, agent: str) -> bool:
        peer = self.peers.get(agent)
        return peer is not None and peer.alive

    def stored(self, digest: str, size: int) -> None:
        if self.swarm is not None:
            self.swarm.seed(digest, size)
            self.swarm.rehome_units(digest)

    @contextlib.asynccontextmanager
    async def share(self, jobs: list[BlobJob], progress: Progress) -> AsyncIterator[Gate | None]:
        """Split the mirror work for these blobs with peers (see ``wan``); None: sharing off."""
        if self.sharing is None:
            yield None
            return
        async with self.sharing.share(jobs, progress) as gate:
            yield gate

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        swarm = self.swarm.statistics() if self.swarm else {}
        transfers = [
            {
                "label": f.label,
                "size": f.size,
                "have": f.have,
                "state": f.state,
                "source": f.source,
            }
            for p in self.transfers.values()
            for f in p.files.values()
            if f.state not in ("done", "present")
        ]
        return {
            "agent": self.id,
            "home": str(self.home),
            "interfaces": self.interfaces,
            "rpc_port": self.rpc_port,
            "torrent_port": swarm.get("port"),
            "seeding": swarm.get("seeding", 0),
            "uploaded": swarm.get("uploaded", 0),
            "peers": self.peers.snapshot(now),
            "transfers": transfers,
            "from_mirrors": self.from_mirrors,
            "from_peers": self.from_peers,
            "internet_bytes_saved": self.from_peers,
            "units": swarm.get("units", 0),
            "sharing": self.sharing.status(now) if self.sharing is not None else None,
        }
