"""WAN sharing (IO glue): an agent's ``Coordinator`` wired to the peer RPC, unit torrents and
the downloader's ``Gate``, so an office pulls each byte of a model from the internet once.

Theory of operation. ``Sharing.run`` lives in the agent's root nursery. Each tick (or when
something happened) it tells the coordinator who is alive, notices units a mirror finished,
and carries out what ``poll`` returns:

- ``Claim``/``Renew``/``Release``/``Done`` go to every live peer, in order, through one outbox
  task per peer (a message that cannot be delivered in a few seconds is dropped: leases lapse
  and liveness forgets dead peers, so nothing waits on it);
- ``FetchFromMirror`` opens the unit's bytes in the gate of the get that wants the blob, and
  ``Abort`` closes them again (a peer has the unit);
- ``FetchFromPeer`` adds the unit's torrent over the blob's partial file and fetches its pieces
  from every agent that announced the unit, then marks the bytes done in the gate.

A unit fetched from a mirror is hashed into its unit torrent (``torrents.unit_info``) and
seeded at once, then announced ``Done``: peers start on it while this agent still fetches
other units. The whole blob is still checked against its upstream digest by the downloader
before it enters the store; then the unit torrents are re-pointed at the stored file.

``share`` is what one ``get`` uses: it learns what peers are doing (``OfficeQuery``), hands the
blobs to the coordinator and yields the gate for the download; on the way out (done, failed or
cancelled) leases still held go back to the office at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ..adapters.hashing import piece_hashes
from ..core import wire
from ..core.coordinator import (
    SEGMENT,
    Abort,
    Action,
    Claim,
    Coordinator,
    Done,
    FetchFromMirror,
    FetchFromPeer,
    Release,
    Renew,
    Unit,
    units_of,
)
from ..core.digests import hex_part
from ..core.progress import Progress
from ..core.torrents import unit_info, unit_piece_size, unit_pieces, unit_shape
from .download import BlobJob, Gate
from .link import RpcClient, RpcError, connect

if TYPE_CHECKING:
    from ..adapters.swarm import _Torrent
    from .agent import Agent

log = logging.getLogger(__name__)
TICK = 0.25
SEND_TIMEOUT = 3.0
SYNC_TIMEOUT = 2.0
OUTBOX = 4096
CLAIM_WAIT = 1.0


class _Delivery:
    """A broadcast: set ``event`` when every peer it went to answered or gave up."""

    def __init__(self, peers: int) -> None:
        self.left = peers
        self.event = trio.Event()
        if peers == 0:
            self.event.set()

    def one_done(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.event.set()


@dataclass
class _Want:
    gate: Gate
    progress: Progress
    job: BlobJob


class Sharing:
    def __init__(self, agent: Agent, segment: int = SEGMENT) -> None:
        self.agent = agent
        self.segment = segment
        self.coord = Coordinator(agent.id, segment=segment)
        self._wake = trio.Event()
        self._wants: dict[str, _Want] = {}  # blob -> the get that wants it
        self._sizes: dict[str, int] = {}
        self._mirror_units: dict[tuple[str, int], Unit] = {}
        self._alive: set[str] = set()
        self._outboxes: dict[str, trio.MemorySendChannel[tuple[wire.Message, _Delivery]]] = {}
        self._claims_out: dict[tuple[str, int], _Delivery] = {}
        self._nursery: trio.Nursery | None = None
        self.messages_sent = 0

    def wake(self) -> None:
        self._wake.set()

    def wanted(self) -> set[str]:
        """Blobs a running get shares out now."""
        return set(self._wants)

    def status(self, now: float) -> dict[str, object]:
        return {
            "leases": [
                {"blob": u.blob, "index": u.index, "start": u.start, "stop": u.stop}
                for u, _ in self.coord.claims(now)
            ],
            "sharing_blobs": len(self._wants),
            "messages_sent": self.messages_sent,
        }

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                self.step(trio.current_time())
                with trio.move_on_after(TICK):
                    await self._wake.wait()
                self._wake = trio.Event()

    def step(self, now: float) -> None:
        alive = {p.agent for p in self.agent.peers.alive()}
        for gone in self._alive - alive:
            self.coord.peer_gone(gone)
            box = self._outboxes.pop(gone, None)
            if box is not None:
                box.close()
        self._alive = alive
        self.coord.set_peers(alive)
        for blob, sharing in list(self._wants.items()):
            if not sharing.gate.gated(blob) and sharing.gate.bound.is_set():
                # It failed its digest: the download now fetches all of it from mirrors.
                del self._wants[blob]
                self.coord.drop({blob})
        self._claims_out = {k: d for k, d in self._claims_out.items() if self.coord.holds_key(k)}
        for key, u in list(self._mirror_units.items()):
            want = self._wants.get(u.blob)
            if want is None:
                del self._mirror_units[key]
            elif want.gate.covered(u.blob, u.start, u.stop):
                del self._mirror_units[key]
                self.coord.landed(u)  # the next unit may start while this one is hashed
                self._spawn(self.publish, u, False)
        for action in self.coord.poll(now):
            self.dispatch(action, now)

    def dispatch(self, action: Action, now: float) -> None:
        u = action.unit
        if isinstance(action, Claim | Renew):
            ttl = max(0, int((action.expires - now) * 1000))
            sent = self.broadcast(wire.Claim(u.blob, u.index, u.start, u.stop, ttl))
            if isinstance(action, Claim):
                self._claims_out[u.key] = sent
        elif isinstance(action, Release):
            self.broadcast(wire.Release(u.blob, u.index))
        elif isinstance(action, Done):
            self.broadcast(wire.UnitDone(u.blob, u.index, u.start, u.stop))
        elif isinstance(action, FetchFromMirror):
            want = self._wants.get(u.blob)
            if want is None or not want.gate.gated(u.blob):
                self.coord.failed(u)
                return
            self._spawn(self._open_to_mirrors, u, self._claims_out.pop(u.key, None))
        elif isinstance(action, Abort):
            log.info(
                "unit %s/%d: mirror fetch aborted (a peer has it)", hex_part(u.blob)[:12], u.index
            )
            self._mirror_units.pop(u.key, None)
            want = self._wants.get(u.blob)
            if want is not None:
                want.gate.disallow(u.blob, u.start, u.stop)
        elif isinstance(action, FetchFromPeer):
            self._spawn(self.from_peers, u, action.agent)

    async def _open_to_mirrors(self, u: Unit, claim: _Delivery | None) -> None:
        """Open the unit to the mirror workers once every peer has our claim (or a moment
        passed): a peer that claimed it at the same moment has heard of us by then, and the
        loser drops its claim before either fetched a byte."""
        if claim is not None:
            with trio.move_on_after(CLAIM_WAIT):
                await claim.event.wait()
        want = self._wants.get(u.blob)
        if want is None or not self.coord.holds(u):
            return  # aborted meanwhile (a rival's claim won, or a peer has it)
        log.info("unit %s/%d: fetching from mirrors", hex_part(u.blob)[:12], u.index)
        self._mirror_units[u.key] = u
        want.gate.allow(u.blob, u.start, u.stop)
        self.wake()

    def _spawn(self, fn: object, *args: object) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)  # type: ignore[arg-type]

    # -- telling peers -------------------------------------------------------------------------

    def broadcast(self, msg: wire.Message) -> _Delivery:
        """Send ``msg`` to every live peer, in order per peer; the result says when all of
        them answered (or gave up)."""
        sent = _Delivery(len(self._alive))
        for agent in sorted(self._alive):
            box = self._outboxes.get(agent)
            if box is None:
                box, inbox = trio.open_memory_channel[tuple[wire.Message, _Delivery]](OUTBOX)
                self._outboxes[agent] = box
                self._spawn(self._deliver, agent, inbox)
            try:
                box.send_nowait((msg, sent))
            except (trio.WouldBlock, trio.ClosedResourceError):
                sent.one_done()
        return sent

    async def _deliver(
        self, agent: str, inbox: trio.MemoryReceiveChannel[tuple[wire.Message, _Delivery]]
    ) -> None:
        """One peer's outbox, over one kept connection (opened again when it breaks)."""
        async with inbox, contextlib.AsyncExitStack() as conn:
            client: RpcClient | None = None
            async for msg, sent in inbox:
                try:
                    with trio.move_on_after(SEND_TIMEOUT) as scope:
                        for fresh in (client is None, True):
                            try:
                                if client is None:
                                    client = await self._open(conn, agent)
                                await client.request(msg)
                                self.agent.peers.heard(agent, trio.current_time())
                                self.messages_sent += 1
                                break
                            except (RpcError, wire.PeerProtocolError):
                                client = None
                                await conn.aclose()
                                if fresh:
                                    break
                    if scope.cancelled_caught:  # a request may be half done: start over
                        client = None
                        await conn.aclose()
                finally:
                    sent.one_done()

    async def _open(self, stack: contextlib.AsyncExitStack, agent: str) -> RpcClient:
        peer = self.agent.peers.get(agent)
        if peer is None:
            raise RpcError(f"unknown peer {agent}")
        last = RpcError("no address")
        for addr in list(peer.addrs):
            try:
                return await stack.enter_async_context(
                    connect(addr.host, addr.rpc_port, self.agent.hello())
                )
            except RpcError as e:
                last = e
        raise last

    # -- what peers tell us --------------------------------------------------------------------

    def _unit(self, digest: str, index: int, start: int, stop: int) -> Unit | None:
        """The unit a peer names, if it matches how we cut that blob (or we do not know it)."""
        size = self._sizes.get(digest)
        unit = Unit(digest, index, start, stop)
        if size is None:
            return unit if start < stop else None
        units = units_of(digest, size, self.segment)
        return unit if index < len(units) and units[index] == unit else None

    def on_message(self, agent: str, msg: wire.Message) -> wire.Message:
        now = trio.current_time()
        if isinstance(msg, wire.Claim):
            if u := self._unit(msg.digest, msg.index, msg.start, msg.stop):
                self.coord.peer_claim(agent, u, now + msg.ttl_ms / 1000)
        elif isinstance(msg, wire.UnitDone):
            if u := self._unit(msg.digest, msg.index, msg.start, msg.stop):
                self.coord.peer_done(agent, u)
        elif isinstance(msg, wire.Release):
            self.coord.peer_release(agent, Unit(msg.digest, msg.index, 0, 0))  # by key
        self.wake()
        return wire.Ack()

    def office_state(self, digests: tuple[str, ...]) -> wire.OfficeState:
        now = trio.current_time()
        asked = set(digests)
        swarm = self.agent.swarm
        claims = tuple(
            (u.blob, u.index, u.start, u.stop, int((exp - now) * 1000))
            for u, exp in self.coord.claims(now)
            if u.blob in asked
        )
        done: list[tuple[str, int, int, int, int]] = []
        complete: list[str] = []
        for d in digests:
            if swarm is not None and swarm.seeding(d):
                complete.append(d)
                continue
            for u in units_of(d, self._sizes.get(d, 0), self.segment):
                t = swarm.unit(d, u.index) if swarm is not None else None
                if t is not None and t.seeding:
                    done.append((d, u.index, u.start, u.stop, 0))
        return wire.OfficeState(claims, tuple(done), tuple(complete))

    async def unit_query(self, digest: str, index: int) -> wire.UnitInfo:
        swarm = self.agent.swarm
        t = swarm.unit(digest, index) if swarm is not None else None
        if t is not None and t.seeding:
            return wire.UnitInfo(digest, index, t.info())
        # A blob we hold whole: derive the unit's torrent from the stored file.
        store = self.agent.store
        path = store.blob_path(digest)
        if swarm is None or not swarm.seeding(digest) or not path.exists():
            return wire.UnitInfo(digest, index)
        size = path.stat().st_size
        units = units_of(digest, size, self.segment)
        if index >= len(units):
            return wire.UnitInfo(digest, index)
        t = await self._add_held(units[index], size)
        return wire.UnitInfo(digest, index, t.info())

    async def _add_held(self, u: Unit, size: int) -> _Torrent:
        """Seed a unit whose bytes we hold, in the stored blob or else its partial file."""
        assert self.agent.swarm is not None
        store = self.agent.store

        def where() -> Path:
            stored = store.has_blob(u.blob, size)
            return store.blob_path(u.blob) if stored else store.partial_path(u.blob)

        piece = unit_piece_size(size, self.segment)
        hashes = await trio.to_thread.run_sync(piece_hashes, where(), u.start, u.stop, piece)
        info = unit_info(u.blob, size, u.index, u.start, u.stop, piece, hashes)
        span = unit_pieces(u.start, u.stop, piece)
        # where() again: committed while we hashed means same bytes, new place.
        return self.agent.swarm.add_unit(u.blob, size, u.index, span, info, where(), have=True)

    # -- one get's share -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def share(self, jobs: list[BlobJob], progress: Progress) -> AsyncIterator[Gate]:
        shared = [j for j in jobs if j.digest is not None and j.size > 0]
        gate = Gate({j.key for j in shared}, on_stored=self.agent.stored, on_change=self.wake)
        blobs = {j.key for j in shared}
        # _join runs in the sharing loop's nursery, not one of ours: the download's own
        # errors must leave this block as they are, not wrapped in an exception group.
        scope = trio.CancelScope()

        async def join() -> None:
            with scope:
                try:
                    await self._join(gate, shared, progress)
                except Exception:  # a bug of ours: the get goes on, mirrors only
                    log.exception("sharing out %d blobs failed", len(shared))
                    for key in blobs:
                        gate.ungate(key)

        self._spawn(join)
        try:
            yield gate
        finally:
            scope.cancel()
            ours = {b for b in blobs if b in self._wants and self._wants[b].gate is gate}
            for b in ours:
                del self._wants[b]
            for key in [k for k in self._mirror_units if k[0] in ours]:
                del self._mirror_units[key]
            self.coord.drop(ours)
            self.wake()

    async def _join(self, gate: Gate, jobs: list[BlobJob], progress: Progress) -> None:
        await gate.bound.wait()
        # A blob another get of this agent is fetching right now is not in this download
        # (it waits for that one): only the gated ones are ours to share.
        jobs = [j for j in jobs if gate.gated(j.key) and j.key not in self._wants]
        for j in jobs:
            self._sizes[j.key] = j.size
        await self.sync([j.key for j in jobs])
        resumed: list[Unit] = []
        for j in jobs:
            self._wants[j.key] = _Want(gate, progress, j)
            for u in units_of(j.key, j.size, self.segment):
                if gate.covered(j.key, u.start, u.stop):
                    self.coord.have(u)
                    resumed.append(u)
        self.coord.want({j.key: j.size for j in jobs})
        for u in resumed:
            self._spawn(self.publish, u, True)
        self.wake()

    async def sync(self, digests: list[str]) -> None:
        """Learn peers' leases and holdings of these blobs before claiming any."""

        async def ask(agent: str) -> None:
            try:
                reply = await self.agent.ask(agent, wire.OfficeQuery(tuple(digests)))
            except (RpcError, wire.PeerProtocolError):
                return
            if not isinstance(reply, wire.OfficeState):
                return
            now = trio.current_time()
            for d, i, start, stop, ttl in reply.claims:
                if u := self._unit(d, i, start, stop):
                    self.coord.peer_claim(agent, u, now + ttl / 1000)
            for d, i, start, stop, _ in reply.done:
                if u := self._unit(d, i, start, stop):
                    self.coord.peer_done(agent, u)
            for d in reply.complete:
                for u in units_of(d, self._sizes.get(d, 0), self.segment):
                    self.coord.peer_done(agent, u)

        with trio.move_on_after(SYNC_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for peer in self.agent.peers.alive():
                    nursery.start_soon(ask, peer.agent)

    # -- units ---------------------------------------------------------------------------------

    async def publish(self, u: Unit, resumed: bool) -> None:
        """A unit is on our disk (from a mirror, or an earlier run): seed it, announce it."""
        want = self._wants.get(u.blob)
        size = self._sizes.get(u.blob)
        if size is None:
            return
        try:
            await self._add_held(u, size)
        except OSError as e:
            log.warning("cannot seed unit %s/%d: %s", u.blob, u.index, e)
            if want is not None:
                self.coord.failed(u)
            return
        log.info(
            "unit %s/%d: seeding (%s)",
            hex_part(u.blob)[:12],
            u.index,
            "resumed" if resumed else "mirror",
        )
        if resumed:
            self.broadcast(wire.UnitDone(u.blob, u.index, u.start, u.stop))
        else:
            self.coord.fetched(u)
        self.wake()

    async def from_peers(self, u: Unit, first: str) -> None:
        """Fetch a unit that peers announced, into the blob's partial file."""
        want = self._wants.get(u.blob)
        swarm = self.agent.swarm
        if want is None or swarm is None:
            self.coord.failed(u)
            return
        size = want.job.size
        log.info(
            "unit %s/%d: fetching from peers (%s first)", hex_part(u.blob)[:12], u.index, first
        )
        piece = unit_piece_size(size, self.segment)
        span = unit_pieces(u.start, u.stop, piece)
        info = b""
        for agent in [first, *sorted(self.coord.holders(u) - {first})]:
            with (
                trio.move_on_after(SEND_TIMEOUT),
                contextlib.suppress(RpcError, wire.PeerProtocolError),
            ):
                reply = await self.agent.ask(agent, wire.UnitQuery(u.blob, u.index))
                if isinstance(reply, wire.UnitInfo) and unit_shape(
                    reply.info, u.blob, size, u.index, u.start, u.stop, piece
                ):
                    info = reply.info
                    break
            self.coord.distrust(u, agent)  # no answer, or not that unit's torrent
        if not info:
            self.coord.failed(u)
            self.wake()
            return
        path = self.agent.store.partial_path(u.blob)
        want.gate.unmark(u.blob, u.start, u.stop)  # libtorrent writes all of it
        t = swarm.add_unit(u.blob, size, u.index, span, info, path, have=False)

        def endpoints() -> list[tuple[str, int]]:
            out = []
            for agent in sorted(self.coord.holders(u)):
                peer = self.agent.peers.get(agent)
                if peer is not None and peer.alive and peer.torrent_port and peer.addrs:
                    out.append((peer.addrs[0].host, peer.torrent_port))
            return out

        def advance(n: int) -> None:
            want.progress.advance(u.blob, n, "LAN", lan=True)
            self.agent.from_peers += n

        got = await swarm.fetch_unit(
            t, endpoints, stall_timeout=self.agent.opts.stall_timeout, on_progress=advance
        )
        if got.ok and u.blob in self._wants:
            log.info(
                "unit %s/%d: from peers (%d bytes)", hex_part(u.blob)[:12], u.index, got.downloaded
            )
            want.gate.mark_done(u.blob, u.start, u.stop)
            self.coord.fetched(u)
        else:
            log.info("unit %s/%d from peers failed: %s", u.blob, u.index, got.why)
            swarm.drop_unit(u.blob, u.index)
            self.coord.failed(u, first)
        self.wake()
