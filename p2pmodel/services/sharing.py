"""Sharing a model's mirror work with the office (trio): the agent's ``Sharing`` wired to
the peers, the unit torrents of the swarm, and the downloads of running gets.

Theory of operation. ``SharingService.run`` lives in the agent's root nursery and sleeps until
the sharing state's next deadline or a wake-up (a peer's message, a download that wrote into its
gate, the set of live peers changed). Then it tells the sharing state who is alive, reads what
the downloads wrote into their gates (a download that started, a shared blob that failed its
digest, units a mirror finished), and carries out what ``poll`` returns:

- ``SendClaim`` goes to the unit's arbiter only (``Sharing.arbiter``; nothing when we are it),
  as a request whose answer is the verdict: ``ack``, or the ``claim`` that stands, and then we
  drop ours; ``SendRenew``/``SendRelease`` go to the arbiter through the peer link's outbox;
  ``AnnounceDone`` to every live peer; ``SendCrossing`` to the near ones (``core.locality``: on
  one of this agent's subnets), which then wait for this agent to bring the unit in;
- ``FetchFromMirror`` opens the unit's bytes to the mirror workers in the gate of the get that
  wants the blob (once the arbiter answered the claim, at most ``CLAIM_WAIT``), and
  ``StopMirrorFetch`` closes them;
- ``FetchFromPeer`` adds the unit's torrent over the blob's partial file and fetches its pieces
  from every agent that announced the unit, then writes into the gate that the bytes arrived.

A unit fetched from a mirror is hashed into its unit torrent (``core.torrents.unit_info``) and
seeded at once, then announced: peers start on it while this agent still fetches other units.
The whole blob is still checked against its upstream digest by the download before it enters
the store; then the unit torrents are re-pointed at the stored file.

``share`` is what one get uses: it yields a ``core.gate.Gate`` in which the blobs nobody else
of this agent is fetching are gated, and the get hands it to its download. The service never
calls the download, nor the download the service: each writes facts into the gate and reads
the other's, woken by the gate when the other side wrote. Once the download says which blobs
it holds (``Gate.started``), the service learns what peers are doing (``office?``) and hands
those blobs to the sharing state. On the way out (done, failed or cancelled) leases still held go
back to the office at once. A shared blob that fails its digest (``Gate.failed``) leaves
sharing and is fetched whole from the mirrors.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from ..adapters.hashing import piece_hashes
from ..adapters.store import Store
from ..core import wire
from ..core.digests import hex_part
from ..core.gate import Gate
from ..core.locality import Locality
from ..core.progress import Progress
from ..core.sharing import (
    SEGMENT,
    Action,
    AnnounceDone,
    FetchFromMirror,
    FetchFromPeer,
    SendClaim,
    SendCrossing,
    SendRelease,
    SendRenew,
    Sharing,
    StopMirrorFetch,
    Unit,
    units_of,
)
from ..core.stats import SharingStats
from ..core.torrents import unit_hashes, unit_info, unit_piece_size, unit_pieces, unit_shape
from .download import BlobJob
from .link import Delivery, RpcError
from .peers import PeerService
from .swarm import SwarmService

log = logging.getLogger(__name__)
ASK_TIMEOUT = 3.0
SYNC_TIMEOUT = 2.0
CLAIM_WAIT = 5.0  # for the arbiter's verdict (a busy one answers late; a gone one refuses at once)
MAX_TTL_MS = 60_000  # a peer's lease lasts at most this long without a renewal
MAX_FOREIGN = 65_536  # leases kept as arbiter of units of blobs this agent does not share


@dataclass
class _Want:
    """A blob a running get shares out: its share (with the gate), progress and job."""

    share: _Share
    progress: Progress
    job: BlobJob

    @property
    def gate(self) -> Gate:
        return self.share.gate


class _Share:
    """One get's share of the office's work, and the gate its download reads."""

    def __init__(self, jobs: list[BlobJob], progress: Progress) -> None:
        self.jobs = [j for j in jobs if j.digest is not None and j.size > 0]
        self.progress = progress
        self.gate = Gate()
        self.blobs: set[str] = set()
        self.joined = False  # the download said which blobs it holds, and we took them
        self.scope = trio.CancelScope()


class SharingService:
    def __init__(
        self,
        agent: str,
        peers: PeerService,
        swarm: SwarmService,
        store: Store,
        *,
        segment: int = SEGMENT,
        locality: Callable[[], Locality] = Locality,
    ) -> None:
        self.id = agent
        self.locality = locality
        self.peers = peers
        self.swarm = swarm
        self.store = store
        self.segment = segment
        self.state = Sharing(agent, segment=segment)
        self.stats = SharingStats()
        self._wake = trio.Event()
        self._wants: dict[str, _Want] = {}  # blob -> the get that shares it out
        self._shares: list[_Share] = []  # of running gets
        self._sizes: dict[str, int] = {}
        # Unit torrents' info dictionaries announced with a unit (unchecked until used):
        # unit -> holder -> info. Only units of blobs we share out (``_unit``).
        self._infos: dict[tuple[str, int], dict[str, bytes]] = {}
        # As arbiter of units of blobs we do not share: unit -> (leaseholder, expiry).
        self._foreign: dict[tuple[str, int], tuple[str, float]] = {}
        self._mirror_units: dict[tuple[str, int], Unit] = {}
        self._alive: frozenset[str] = frozenset()
        self._claims_out: dict[tuple[str, int], Delivery] = {}
        self._nursery: trio.Nursery | None = None
        peers.route([wire.Claim, wire.Release, wire.UnitDone, wire.Crossing], self._on_message)
        peers.route([wire.OfficeQuery], self._office_state)
        peers.route([wire.UnitQuery], self._unit_query)
        peers.watch(self.wake)
        swarm.keep_units = self.wanted

    def wake(self) -> None:
        self._wake.set()

    def wanted(self) -> set[str]:
        """Blobs a running get shares out now."""
        return set(self._wants)

    def set_rate(self, rate: float | None) -> None:
        """This agent's mirror rate limit now: the units it leases alone are sized to it."""
        self.state.set_rate(rate)
        self.wake()

    def status(self, now: float) -> dict[str, object]:
        return {
            "leases": [
                {"blob": u.blob, "index": u.index, "start": u.start, "stop": u.stop}
                for u, _ in self.state.claims(now)
            ],
            "sharing_blobs": len(self._wants),
            "messages_sent": self.stats.messages,
            "units_from_mirrors": self.stats.units_from_mirrors,
            "units_from_peers": self.stats.units_from_peers,
            "infos_announced": self.stats.infos_announced,
        }

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                self.step(trio.current_time())
                deadline = self.state.next_deadline()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    await self._wake.wait()
                self._wake = trio.Event()

    def step(self, now: float) -> None:
        alive = self.peers.alive_ids()
        for gone in self._alive - alive:
            self.state.peer_gone(gone)
            for told in self._infos.values():
                told.pop(gone, None)
        self._alive = alive
        self.state.set_peers(set(alive))
        self.state.set_near(self.near(alive))
        self._claims_out = {k: d for k, d in self._claims_out.items() if self.state.holds_key(k)}
        for share in self._shares:
            held = share.gate.held()
            if not share.joined and held is not None:
                share.joined = True
                self._attach(share, held)
        for blob in list(self._wants):
            self._want(blob)  # drops a blob whose shared copy failed its digest
        for key, u in list(self._mirror_units.items()):
            want = self._wants.get(u.blob)
            if want is None:
                del self._mirror_units[key]
            elif want.gate.covered(u.blob, u.start, u.stop):
                del self._mirror_units[key]
                self.state.landed(u)  # the next unit may start while this one is hashed
                self._spawn(self._publish, u, False)
        for action in self.state.poll(now):
            self._dispatch(action, now)

    def _dispatch(self, action: Action, now: float) -> None:
        u = action.unit
        if isinstance(action, SendClaim | SendRenew):
            ttl = max(0, int((action.expires - now) * 1000))
            arbiter = self.state.arbiter(u)
            if arbiter == self.id:
                return  # ours to give: nobody to ask
            claim = wire.Claim(u.blob, u.index, u.start, u.stop, ttl)
            self.stats.messages += 1
            if isinstance(action, SendRenew):
                self.peers.tell([arbiter], claim)
            else:
                self._claims_out[u.key] = asked = Delivery(1)
                self._spawn(self._claim_from, arbiter, u, claim, asked)
        elif isinstance(action, SendCrossing):
            ttl = max(0, int((action.expires - now) * 1000))
            near = self.near(self._alive)
            msg = wire.Crossing(u.blob, u.index, u.start, u.stop, ttl)
            log.info("unit %s: bringing it in from behind a router", _name(u))
            self.stats.messages += len(near) if near is not None else len(self._alive)
            self.peers.tell(near if near is not None else self._alive, msg)
        elif isinstance(action, SendRelease):
            arbiter = self.state.arbiter(u)
            if arbiter != self.id:
                self.stats.messages += 1
                self.peers.tell([arbiter], wire.Release(u.blob, u.index))
        elif isinstance(action, AnnounceDone):
            self._broadcast(self._done(u))
        elif isinstance(action, FetchFromMirror):
            want = self._want(u.blob)
            if want is None or not want.gate.gated(u.blob):
                self.state.failed(u)
                return
            self._spawn(self._open_to_mirrors, u, self._claims_out.pop(u.key, None))
        elif isinstance(action, StopMirrorFetch):
            log.info("unit %s: mirror fetch stopped (a peer has it)", _name(u))
            self._mirror_units.pop(u.key, None)
            want = self._want(u.blob)
            if want is not None:
                want.gate.close(u.blob, u.start, u.stop)
        elif isinstance(action, FetchFromPeer):
            self._spawn(self._from_peers, u, action.agent)

    def near(self, agents: frozenset[str]) -> set[str] | None:
        """Of these peers, the ones on this agent's subnets (None: all, one segment)."""
        where = self.locality()
        if not where.nets:
            return None
        near = set()
        for agent in agents:
            peer = self.peers.get(agent)
            if peer is not None and where.near(a.host for a in peer.addrs):
                near.add(agent)
        return near

    def _done(self, u: Unit) -> wire.UnitDone:
        """Our announcement of a unit we seed, with its torrent's info: a peer that takes
        it from us needs no ``unit?`` round trip first."""
        info = self.swarm.unit_info(u.blob, u.index) or b""
        return wire.UnitDone(u.blob, u.index, u.start, u.stop, info)

    def _broadcast(self, msg: wire.Message) -> Delivery:
        self.stats.messages += len(self._alive)
        return self.peers.broadcast(msg)

    async def _claim_from(self, arbiter: str, u: Unit, claim: wire.Claim, asked: Delivery) -> None:
        """Ask the unit's arbiter for it; its answer is the verdict (no answer: ours)."""
        try:
            with trio.move_on_after(CLAIM_WAIT) as waited:
                reply = await self.peers.request(arbiter, claim)
                if isinstance(reply, wire.Claim) and reply.index == u.index:
                    # Refused: the lease that stands (the arbiter's, or the first claimer's).
                    now = trio.current_time()
                    self.state.peer_claim(arbiter, u, now + min(reply.ttl_ms, MAX_TTL_MS) / 1000)
                    self.wake()
            if waited.cancelled_caught:
                log.info("unit %s: no verdict from its arbiter %s, fetching", _name(u), arbiter)
        except (RpcError, wire.PeerProtocolError) as e:
            log.info("unit %s: arbiter %s not reached (%s), fetching", _name(u), arbiter, e)
        finally:
            asked.one_done()

    async def _open_to_mirrors(self, u: Unit, claim: Delivery | None) -> None:
        if claim is not None:
            with trio.move_on_after(CLAIM_WAIT):
                await claim.event.wait()
        want = self._want(u.blob)
        if want is None or not self.state.holds(u):
            return  # stopped meanwhile (a rival's claim won, or a peer has it)
        log.info("unit %s: fetching from mirrors", _name(u))
        self._mirror_units[u.key] = u
        want.gate.open(u.blob, u.start, u.stop)
        self.wake()

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        assert self._nursery is not None, "the sharing service is not running"
        self._nursery.start_soon(fn, *args)

    # -- what peers tell us and ask --------------------------------------------------------------

    def _unit(self, digest: str, index: int, start: int, stop: int) -> Unit | None:
        """The unit a peer names, if it is one of a blob we share out (or did) and matches
        how we cut it. Others' units are not ours to track: a get that wants them later asks
        the office (``office?``) first, and a flood of claims for random blobs costs nothing."""
        size = self._sizes.get(digest)
        unit = Unit(digest, index, start, stop)
        if size is None:
            return None
        units = units_of(digest, size, self.segment)
        return unit if index < len(units) and units[index] == unit else None

    async def _on_message(
        self, msg: wire.Claim | wire.Release | wire.UnitDone | wire.Crossing, agent: str
    ) -> wire.Message:
        now = trio.current_time()
        if isinstance(msg, wire.Claim):
            if self._unit(msg.digest, msg.index, msg.start, msg.stop) is None:
                return self._arbitrate(msg, agent, now)
            if u := self._unit(msg.digest, msg.index, msg.start, msg.stop):
                stands = self.state.peer_claim(agent, u, now + min(msg.ttl_ms, MAX_TTL_MS) / 1000)
                if stands is not None:  # we are its arbiter (or fetch it): refused
                    self.wake()
                    ttl = max(1, int((stands - now) * 1000))
                    return wire.Claim(u.blob, u.index, u.start, u.stop, ttl)
        elif isinstance(msg, wire.Crossing):
            if u := self._unit(msg.digest, msg.index, msg.start, msg.stop):
                self.state.peer_crossing(agent, u, now + min(msg.ttl_ms, MAX_TTL_MS) / 1000)
        elif isinstance(msg, wire.UnitDone):
            self._foreign.pop((msg.digest, msg.index), None)
            u = self._unit(msg.digest, msg.index, msg.start, msg.stop)
            if u is not None and self.peers.trusted(agent, u.blob):
                self.state.peer_done(agent, u)
                if msg.info:
                    self._infos.setdefault(u.key, {})[agent] = msg.info
        else:
            held = self._foreign.get((msg.digest, msg.index))
            if held is not None and held[0] == agent:
                del self._foreign[(msg.digest, msg.index)]
            self.state.peer_release(agent, Unit(msg.digest, msg.index, 0, 0))  # by key
        self.wake()
        return wire.Ack()

    def _arbitrate(self, msg: wire.Claim, agent: str, now: float) -> wire.Message:
        """A claim of a unit of a blob we do not share: we are its arbiter all the same (the
        office agrees on arbiters among every live agent). The first claim stands until it
        lapses or is released; others are answered with it."""
        self.stats.foreign_claims += 1
        key = (msg.digest, msg.index)
        held = self._foreign.get(key)
        if held is not None and held[0] != agent and held[1] > now:
            ttl = max(1, int((held[1] - now) * 1000))
            return wire.Claim(msg.digest, msg.index, msg.start, msg.stop, ttl)
        self._foreign.pop(key, None)
        self._foreign[key] = (agent, now + min(msg.ttl_ms, MAX_TTL_MS) / 1000)
        while len(self._foreign) > MAX_FOREIGN:  # the oldest go first
            del self._foreign[next(iter(self._foreign))]
        return wire.Ack()

    async def _office_state(self, msg: wire.OfficeQuery, agent: str) -> wire.Message:
        now = trio.current_time()
        asked = set(msg.digests)
        self.state.peer_wants(agent, asked)  # it asks because a get of its wants them
        claims = tuple(
            (u.blob, u.index, u.start, u.stop, int((exp - now) * 1000))
            for u, exp in self.state.claims(now)
            if u.blob in asked
        )
        done: list[tuple[str, int, int, int, int]] = []
        complete: list[str] = []
        for d in msg.digests:
            if self.swarm.seeding(d):
                complete.append(d)
                continue
            for u in units_of(d, self._sizes.get(d, 0), self.segment):
                if self.swarm.unit_info(d, u.index) is not None:
                    done.append((d, u.index, u.start, u.stop, 0))
        crossing = tuple(
            (u.blob, u.index, u.start, u.stop, int((exp - now) * 1000))
            for u, exp in self.state.crossings(now)
            if u.blob in asked
        )
        wanted = tuple(d for d in msg.digests if self.state.wants(d))
        return wire.OfficeState(claims, tuple(done), tuple(complete), crossing, wanted)

    async def _unit_query(self, msg: wire.UnitQuery, agent: str) -> wire.Message:
        digest, index = msg.digest, msg.index
        info = self.swarm.unit_info(digest, index)
        if info is not None:
            return wire.UnitInfo(digest, index, info)
        # A blob we hold whole: derive the unit's torrent from the stored file.
        path = self.store.blob_path(digest)
        if not self.swarm.seeding(digest) or not path.exists():
            return wire.UnitInfo(digest, index)
        size = path.stat().st_size
        units = units_of(digest, size, self.segment)
        if index >= len(units):
            return wire.UnitInfo(digest, index)
        await self._add_held(units[index], size)
        return wire.UnitInfo(digest, index, self.swarm.unit_info(digest, index) or b"")

    async def _add_held(self, u: Unit, size: int) -> bytes:
        """Seed a unit whose bytes we hold, in the stored blob or else its partial file;
        returns its piece hashes."""
        store = self.store

        def where() -> Path:
            stored = store.has_blob(u.blob, size)
            return store.blob_path(u.blob) if stored else store.partial_path(u.blob)

        piece = unit_piece_size(size, self.segment)
        hashes = await trio.to_thread.run_sync(piece_hashes, where(), u.start, u.stop, piece)
        info = unit_info(u.blob, size, u.index, u.start, u.stop, piece, hashes, self.swarm.ca)
        span = unit_pieces(u.start, u.stop, piece)
        # where() again: committed while we hashed means same bytes, new place.
        self.swarm.add_unit(u.blob, size, u.index, span, info, where(), have=True)
        return hashes

    # -- one get's share -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def share(self, jobs: list[BlobJob], progress: Progress) -> AsyncIterator[Gate]:
        """While inside, the download handed the yielded gate splits its mirror work for these
        blobs with the office."""
        share = _Share(jobs, progress)
        # A blob another get of this agent shares out is not this one's (its download waits
        # for that one): only the rest are gated.
        for j in share.jobs:
            if j.key not in self._wants:
                share.gate.gate(j.key)
        share.gate.wake_sharing_with(self.wake)
        self._shares.append(share)
        try:
            yield share.gate
        finally:
            self._shares.remove(share)
            share.scope.cancel()
            ours = {b for b in share.blobs if b in self._wants and self._wants[b].share is share}
            for b in ours:
                del self._wants[b]
            for key in [k for k in self._mirror_units if k[0] in ours]:
                del self._mirror_units[key]
            self._infos = {k: v for k, v in self._infos.items() if k[0] not in ours}
            self.state.drop(ours)
            self.wake()

    def _attach(self, share: _Share, held: set[str]) -> None:
        # A blob another get of this agent is fetching right now is not in this download
        # (it waits for that one): only the rest are this get's to share.
        jobs = [j for j in share.jobs if j.key in held and j.key not in self._wants]
        for key in held - {j.key for j in jobs}:
            share.gate.let_go(key)  # another get shares it out since ours began
        for j in jobs:
            self._sizes[j.key] = j.size
        share.blobs = {j.key for j in jobs}
        if jobs:
            self._spawn(self._join, share, jobs)

    async def _join(self, share: _Share, jobs: list[BlobJob]) -> None:
        # In the service's nursery, not the get's: the download's own errors must leave the
        # get as they are, not wrapped in an exception group.
        with share.scope:
            try:
                await self._sync([j.key for j in jobs])
                resumed: list[Unit] = []
                for j in jobs:
                    self._wants[j.key] = _Want(share, share.progress, j)
                    for u in units_of(j.key, j.size, self.segment):
                        if share.gate.covered(j.key, u.start, u.stop):
                            self.state.have(u)
                            resumed.append(u)
                self.state.want({j.key: j.size for j in jobs})
                for u in resumed:
                    self._spawn(self._publish, u, True)
                self.wake()
            except Exception:  # a bug of ours: the get goes on, mirrors only
                log.exception("sharing out %d blobs failed", len(jobs))
                for j in jobs:
                    self._wants.pop(j.key, None)
                    share.gate.let_go(j.key)

    def _want(self, key: str) -> _Want | None:
        """The get that shares this blob out, unless its copy failed the digest (what the
        download wrote into the gate): then the blob leaves sharing, its units unseeded."""
        want = self._wants.get(key)
        if want is not None and want.gate.failed(key):
            del self._wants[key]
            self.state.drop({key})
            self.swarm.drop_units(key)
            self.wake()
            return None
        return want

    async def _sync(self, digests: list[str]) -> None:
        """Learn peers' leases and holdings of these blobs before claiming any."""

        async def ask(agent: str) -> None:
            try:
                reply = await self.peers.request(agent, wire.OfficeQuery(tuple(digests)))
            except (RpcError, wire.PeerProtocolError):
                return
            if not isinstance(reply, wire.OfficeState):
                return
            now = trio.current_time()
            self.state.peer_wants(agent, set(reply.wanted) & set(digests))
            for d, i, start, stop, ttl in reply.claims:
                if u := self._unit(d, i, start, stop):
                    self.state.peer_claim(agent, u, now + min(ttl, MAX_TTL_MS) / 1000)
            for d, i, start, stop, ttl in reply.crossing:
                if u := self._unit(d, i, start, stop):
                    self.state.peer_crossing(agent, u, now + min(ttl, MAX_TTL_MS) / 1000)
            for d, i, start, stop, _ in reply.done:
                u = self._unit(d, i, start, stop)
                if u is not None and self.peers.trusted(agent, d):
                    self.state.peer_done(agent, u)
            for d in reply.complete:
                for u in units_of(d, self._sizes.get(d, 0), self.segment):
                    self.state.peer_done(agent, u)

        with trio.move_on_after(SYNC_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for agent in sorted(self.peers.alive_ids()):
                    nursery.start_soon(ask, agent)

    # -- units -----------------------------------------------------------------------------------

    async def _publish(self, u: Unit, resumed: bool) -> None:
        """A unit is on our disk (from a mirror, or an earlier run): seed it, announce it."""
        size = self._sizes.get(u.blob)
        want = self._want(u.blob)
        if size is None or want is None:
            return
        try:
            hashes = await self._add_held(u, size)
        except OSError as e:
            log.warning("cannot seed unit %s: %s", _name(u), e)
            if self._want(u.blob) is not None:
                self.state.failed(u)
            return
        if self._want(u.blob) is not want:
            # The get ended meanwhile, or its bytes failed the digest: do not offer them.
            self.swarm.drop_unit(u.blob, u.index)
            return
        want.gate.hashed(u.blob, u.start, u.stop, unit_piece_size(size, self.segment), hashes)
        log.info("unit %s: seeding (%s)", _name(u), "resumed" if resumed else "mirror")
        if resumed:
            self.stats.units_resumed += 1
            self._broadcast(self._done(u))
        else:
            self.stats.units_from_mirrors += 1
            self.state.fetched(u)
        self.wake()

    async def _from_peers(self, u: Unit, first: str) -> None:
        """Fetch a unit that peers announced, into the blob's partial file."""
        want = self._want(u.blob)
        if want is None:
            self.state.failed(u)
            return
        size = want.job.size
        log.info("unit %s: fetching from peers (%s first)", _name(u), first)
        piece = unit_piece_size(size, self.segment)
        span = unit_pieces(u.start, u.stop, piece)
        ca = self.swarm.ca
        info = b""
        for agent in [first, *sorted(self.state.sources(u) - {first})]:
            told = self._infos.get(u.key, {}).get(agent, b"")
            if told and unit_shape(told, u.blob, size, u.index, u.start, u.stop, piece, ca):
                info = told  # announced with the unit: no round trip
                self.stats.infos_announced += 1
                break
            with (
                trio.move_on_after(ASK_TIMEOUT),
                contextlib.suppress(RpcError, wire.PeerProtocolError),
            ):
                reply = await self.peers.request(agent, wire.UnitQuery(u.blob, u.index))
                if isinstance(reply, wire.UnitInfo) and unit_shape(
                    reply.info, u.blob, size, u.index, u.start, u.stop, piece, self.swarm.ca
                ):
                    info = reply.info
                    break
                if isinstance(reply, wire.UnitInfo):  # announced, then not served: a lie
                    why = "a unit torrent of the wrong shape" if reply.info else "no unit"
                    self.peers.distrust(agent, u.blob, f"announced unit {u.index}, sent {why}")
            self.state.distrust(u, agent)  # no answer, or not that unit's torrent
        if not info or self._want(u.blob) is None:
            self.state.failed(u)
            self.wake()
            return
        want.gate.rewrite(u.blob, u.start, u.stop)  # libtorrent writes all of it
        path = self.store.partial_path(u.blob)
        self.swarm.add_unit(u.blob, size, u.index, span, info, path, have=False)

        def holders() -> list[str]:  # near ones while there are any
            return sorted(a for a in self.state.sources(u) if self.peers.is_alive(a))

        def advance(n: int) -> None:
            want.progress.advance(u.blob, n, "LAN", lan=True)

        got = await self.swarm.fetch_unit(u.blob, u.index, holders, advance)
        if got.ok and self._want(u.blob) is want:
            log.info("unit %s: from peers (%d bytes)", _name(u), got.downloaded)
            self.stats.units_from_peers += 1
            want.gate.hashed(
                u.blob, u.start, u.stop, piece, unit_hashes(info, u.start, u.stop, piece)
            )
            want.gate.arrived(u.blob, u.start, u.stop)
            self.state.fetched(u)
        elif not got.ok:
            log.info("unit %s from peers failed: %s", _name(u), got.why)
            if got.bad_pieces:
                for agent in holders() or [first]:
                    self.peers.distrust(agent, u.blob, "sent pieces that failed their hash")
                self.peers.tell(holders() or [first], wire.Suspect(u.blob))
            self.state.failed(u, first)
        self.wake()


def _name(u: Unit) -> str:
    return f"{hex_part(u.blob)[:12]}/{u.index}"
