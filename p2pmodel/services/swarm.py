"""The agent's swarm: seeds every verified blob, answers peers' ``have?``/``meta?``, fetches
whole blobs that peers hold, and keeps the unit torrents of blobs being shared out (trio).

Theory of operation. The swarm adapter (``adapters.swarm``: one libtorrent session; the tests'
``testing.fakes.FakeSwarm``) does the transfers; this service decides which. At start it seeds
the store from the saved torrent infos (no re-hash). A get asks ``locate`` which of its missing
blobs live peers hold (``have?``, bounded in time) and ``fetch``es each from its holders: the
info dict comes from a holder (``meta?``; its shape must match our rule, its pieces are
checked by libtorrent, the blob by its digest), and the fetch gives up at once when liveness
says every holder died (the pieces that passed their hash are kept for the mirrors). A blob
comes from the LAN at most once at a time: a second get wanting it waits for the first.
A stored blob whose saved torrent info is missing or of an older piece rule is hashed again
for it when the store is seeded (once: the new info is saved).
Every blob a get stores is seeded at once (``stored``). Unit torrents of blobs nobody wants
any more end after a minute without peers; the loop sleeps until the next may.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import trio

from ..adapters.hashing import hash_blob
from ..adapters.store import Store
from ..core.digests import algorithm
from ..core.locality import RateMeter
from ..core.progress import Progress
from ..core.stats import LanStats
from ..core.torrents import Keying, SwarmFetch, expected_shape, info_bytes, piece_size
from ..core.wire import (
    Have,
    HaveQuery,
    Message,
    Metadata,
    MetadataQuery,
    PeerProtocolError,
    Suspect,
)
from .download import BlobJob
from .link import RpcError
from .peers import PeerService

log = logging.getLogger(__name__)
UNIT_IDLE = 60.0


class SwarmAdapter(Protocol):
    """What the agent needs of a BitTorrent session (``adapters.swarm.Swarm``)."""

    @property
    def port(self) -> int: ...

    @property
    def ca(self) -> Keying: ...  # what keys every info dict (None: an open office)

    def allow(self, hosts: set[str]) -> None: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    def seed(self, digest: str, size: int, info: bytes | None = None) -> bool: ...

    def listen_on(self, listen: Sequence[str]) -> None: ...

    def seeding(self, digest: str) -> bool: ...

    def holds_partial(self, digest: str) -> bool: ...

    def info(self, digest: str) -> bytes | None: ...

    async def fetch(
        self,
        digest: str,
        size: int,
        info: bytes,
        peers: Sequence[tuple[str, int]],
        *,
        stall_timeout: float = ...,
        on_progress: Callable[[int], None] | None = ...,
    ) -> SwarmFetch: ...

    def unit_info(self, digest: str, index: int) -> bytes | None: ...

    def add_unit(
        self,
        digest: str,
        size: int,
        index: int,
        span: range,
        info: bytes,
        path: Path,
        *,
        have: bool,
    ) -> None: ...

    async def fetch_unit(
        self,
        digest: str,
        index: int,
        peers: Callable[[], Sequence[tuple[str, int]]],
        *,
        stall_timeout: float = ...,
        on_progress: Callable[[int], None] | None = ...,
    ) -> SwarmFetch: ...

    def rehome_units(self, digest: str) -> None: ...

    def drop_unit(self, digest: str, index: int) -> None: ...

    def drop_units(self, digest: str) -> None: ...

    def prune_units(self, now: float, keep: set[str], idle: float = ...) -> float | None: ...

    def statistics(self) -> dict[str, Any]: ...

    def set_upload_limit(self, rate: float | None) -> None: ...

    def uploading(self) -> set[str]: ...

    def unseed(self, digests: Sequence[str]) -> list[str]: ...

    def close(self) -> None: ...


def liars(got: SwarmFetch, source: str, holders: list[str]) -> list[str]:
    """Who lied, by how a fetch from peers failed: the peer whose torrent info had the wrong
    shape or described other bytes than the digest; the holders, when pieces failed their hash
    or none of them sent a byte of what they all said they held."""
    if "shape" in got.why or "digest" in got.why:
        return [source]
    if got.bad_pieces or (got.downloaded == 0 and "no progress" in got.why):
        return holders
    return []


class SwarmService:
    def __init__(
        self,
        swarm: SwarmAdapter,
        store: Store,
        peers: PeerService,
        *,
        stall_timeout: float = 10.0,
        locate_timeout: float = 2.0,
        wait_for_peers: float = 0.0,
    ) -> None:
        self.swarm = swarm
        self.store = store
        self.peers = peers
        self.stall_timeout = stall_timeout
        self.locate_timeout = locate_timeout
        self.wait_for_peers = wait_for_peers
        self.stats = LanStats()
        self.rates = RateMeter()  # per peer agent: how fast its unit pieces arrived
        self.keep_units: Callable[[], set[str]] = set  # blobs a get shares out now
        self._lan_fetches: dict[str, trio.Event] = {}  # digest -> set when its LAN fetch ends
        self._holder_checks: set[Callable[[], None]] = set()
        self._prune_wake = trio.Event()
        peers.route([HaveQuery, MetadataQuery], self._answer)
        peers.watch(self._peers_changed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.to_thread.run_sync(self._seed_store)
        task_status.started()
        while True:
            deadline = self.swarm.prune_units(trio.current_time(), self.keep_units(), UNIT_IDLE)
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._prune_wake.wait()
            self._prune_wake = trio.Event()

    def _seed_store(self) -> None:
        """Seed every verified blob (in a thread: listing a big store takes a while)."""
        for digest, size in self.store.verified_blobs():
            info = self.store.torrent_info(digest)
            if size and (info is None or not expected_shape(info, digest, size)):
                info = self._rehash(digest, size)
                if info is None:
                    continue  # unreadable or rotten: not seeded (the log says which)
            trio.from_thread.run_sync(self.swarm.seed, digest, size, info)

    def _rehash(self, digest: str, size: int) -> bytes | None:
        """Make a stored blob's torrent info by the current piece rule (one read of it)."""
        path = self.store.blob_path(digest)
        try:
            got, pieces = hash_blob(path, algorithm(digest), size, piece_size(size))
        except OSError as e:
            log.warning("cannot hash %s for its torrent: %s", digest, e)
            return None
        if got != digest:  # rotten on disk: `p2pmodel verify` removes it
            log.warning("%s does not match its digest: not seeded", digest)
            return None
        info = info_bytes(digest, size, pieces)
        self.store.save_torrent_info(digest, info)
        return info

    def statistics(self) -> dict[str, Any]:
        return self.swarm.statistics()

    def listen_on(self, interfaces: Sequence[str]) -> None:
        """The agent's addresses changed: accept peers there (same port)."""
        self.swarm.listen_on(interfaces)

    # -- limits and the store over time (``services.limits``, ``services.keeper``) -------------

    def set_upload_limit(self, rate: float | None) -> None:
        """What peers may take from us, bytes/s (None: unlimited), from now on."""
        self.swarm.set_upload_limit(rate)

    def uploading(self) -> set[str]:
        """Blobs a peer is fetching from us now (they must stay on disk)."""
        return self.swarm.uploading()

    def unseed(self, digests: Sequence[str]) -> list[str]:
        """Stop seeding blobs about to leave the store; returns those a peer fetches now."""
        busy = self.swarm.unseed(digests)
        self._prune_wake.set()  # unit torrents may have gone
        return busy

    # -- peers' requests -----------------------------------------------------------------------

    async def _answer(self, msg: HaveQuery | MetadataQuery, agent: str) -> Message:
        if isinstance(msg, HaveQuery):
            complete = tuple(d for d in msg.digests if self.swarm.seeding(d))
            partial = tuple(d for d in msg.digests if self.swarm.holds_partial(d))
            return Have(complete, partial)
        return Metadata(msg.digest, self.swarm.info(msg.digest) or b"")

    # -- whole blobs from peers (what a get uses) ----------------------------------------------

    async def locate(self, digests: list[str]) -> set[str]:
        """The digests some live peer holds complete (asked now, bounded in time)."""
        if self.wait_for_peers:
            await self.peers.wait_seen(self.wait_for_peers)
        if not digests:
            return set()
        asked = set(digests)

        async def query(agent: str) -> None:
            try:
                reply = await self.peers.request(agent, HaveQuery(tuple(digests)))
            except (RpcError, PeerProtocolError):
                return
            if isinstance(reply, Have):
                # The answer is about these digests only: what the peer said of others (another
                # get's, running at the same time) still stands.
                peer = self.peers.get(agent)
                complete = (peer.holds - asked if peer else set()) | set(reply.complete)
                partial = (peer.partial - asked if peer else set()) | set(reply.partial)
                self.peers.inventory(agent, complete, partial)

        with trio.move_on_after(self.locate_timeout):
            async with trio.open_nursery() as nursery:
                for agent in sorted(self.peers.alive_ids()):
                    nursery.start_soon(query, agent)
        return {d for d in digests if self.peers.holders(d)}

    async def fetch(self, job: BlobJob, progress: Progress) -> bool:
        """Fetch one blob from the peers that hold it into the store (verified). False: the
        get fetches it from mirrors instead."""
        assert job.digest is not None
        # Another get (of a model sharing this blob) may be fetching it, or have fetched it since
        # this get looked: use that rather than fetch it twice.
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
        assert job.digest is not None
        holders = [p.agent for p in self.peers.holders(job.digest)]
        info, source = b"", ""
        for agent in holders:
            with contextlib.suppress(RpcError, PeerProtocolError):
                reply = await self.peers.request(agent, MetadataQuery(job.digest))
                if isinstance(reply, Metadata) and reply.info:
                    info, source = reply.info, agent
                    break
                # It said it held the blob, and has no torrent of it.
                self.peers.distrust(agent, job.digest, "said it holds it, has no torrent of it")
        if not info:
            return False
        endpoints = [e for a in holders if (e := self.peers.endpoint(a)) is not None]
        progress.add(job.key, job.label, job.size, state="fetching")
        source = f"LAN ({len(endpoints)} peer{'s' if len(endpoints) != 1 else ''})"

        def advance(n: int) -> None:
            progress.advance(job.key, n, source, lan=True)
            self.stats.arrived(n)

        got = SwarmFetch(False, "every holder is gone")
        with trio.CancelScope() as scope:

            def check() -> None:
                # Liveness tells within seconds that every holder died (kill -9, power cut);
                # the swarm alone would wait out its stall timeout. Cancelled, it keeps the
                # pieces that passed their hash.
                if not any(self.peers.is_alive(a) for a in holders):
                    scope.cancel()

            self._holder_checks.add(check)
            try:
                got = await self.swarm.fetch(
                    job.digest,
                    job.size,
                    info,
                    endpoints,
                    stall_timeout=self.stall_timeout,
                    on_progress=advance,
                )
            except Exception:  # the LAN is only a shortcut: whatever went wrong, mirrors remain
                log.exception("fetching %s from peers failed", job.digest)
                got = SwarmFetch(False, "the swarm failed")
            finally:
                self._holder_checks.discard(check)
        if got.ok:
            self.stats.blobs += 1
            progress.set_state(job.key, "done", have=job.size)
        else:
            self.stats.failures += 1
            if "digest" in got.why:
                self.stats.digest_failures += 1
            for agent in liars(got, source, holders):
                self.peers.distrust(agent, job.digest, got.why)
            if got.bad_pieces:  # a holder's disk may have rotted: it checks its own copy
                self.peers.tell(holders, Suspect(job.digest))
            log.warning("fetching %s from peers failed: %s", job.digest, got.why)
            progress.set_state(job.key, "waiting", have=0)
        return got.ok

    def _peers_changed(self) -> None:
        # With a key only peers of a live authenticated session get through libtorrent's
        # IP filter (the adapter ignores this in an open office).
        self.swarm.allow(self.peers.verified_hosts())
        for check in list(self._holder_checks):
            check()

    @property
    def ca(self) -> Keying:
        return self.swarm.ca

    def stored(self, digest: str, size: int) -> None:
        """A blob was verified into the store: seed it; its unit torrents serve from there."""
        self.swarm.seed(digest, size)
        self.swarm.rehome_units(digest)

    # -- unit torrents (for ``services.sharing``) ----------------------------------------------

    def seeding(self, digest: str) -> bool:
        return self.swarm.seeding(digest)

    def unit_info(self, digest: str, index: int) -> bytes | None:
        return self.swarm.unit_info(digest, index)

    def add_unit(
        self,
        digest: str,
        size: int,
        index: int,
        span: range,
        info: bytes,
        path: Path,
        *,
        have: bool,
    ) -> None:
        self.swarm.add_unit(digest, size, index, span, info, path, have=have)
        self._prune_wake.set()

    def drop_unit(self, digest: str, index: int) -> None:
        self.swarm.drop_unit(digest, index)

    def drop_units(self, digest: str) -> None:
        """The blob's bytes failed its digest: its unit torrents must not spread them."""
        self.swarm.drop_units(digest)

    async def fetch_unit(
        self,
        digest: str,
        index: int,
        holders: Callable[[], list[str]],
        on_progress: Callable[[int], None],
    ) -> SwarmFetch:
        """Fetch a unit's pieces from the live ones of ``holders()`` (asked again as they come
        and go) into the blob's partial file."""

        def endpoints() -> list[tuple[str, int]]:
            return [e for a in holders() if (e := self.peers.endpoint(a)) is not None]

        def advance(n: int) -> None:
            on_progress(n)
            self.stats.arrived(n)

        got = await self.swarm.fetch_unit(
            digest, index, endpoints, stall_timeout=self.stall_timeout, on_progress=advance
        )
        for agent in holders():
            endpoint = self.peers.endpoint(agent)
            if endpoint is not None and endpoint[0] in got.by_host:
                self.rates.measured(agent, got.by_host[endpoint[0]], got.seconds)
        if got.ok:
            self.stats.units += 1
        else:
            self.stats.failures += 1
            self.swarm.drop_unit(digest, index)
        return got
