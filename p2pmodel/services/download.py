"""Runs a ``FetchPlan`` with real connections (trio + httpx) and the store.

Theory of operation. ``download`` opens every missing blob's partial file, restores its resume
state into the plan, then runs in one nursery: N workers (each loops ``plan.assign`` -> one
Range GET streamed into the partial file -> ``plan.release``), a verifier (hashes complete
blobs in a thread, commits or reports a mismatch), a saver (persists resume state when ranges
land, at most ten times a second, and once more on the way out, even when cancelled), a prefix
hasher (hashes each blob's contiguous on-disk prefix as it grows, so verifying reads only the
rest); the get's front end renders its ``Progress``. Workers write blocks of up to 1 MiB, or
whatever arrived in the last 50 ms (small writes inline, big ones from a thread), so a crash
loses at most a fraction of a second of traffic. Every block from a mirror goes through the
agent's token bucket (its mirror rate limit) and is counted as it arrives. The plan is only
touched from the trio thread; any change wakes waiting workers.

A running download is a ``Download``. When the office shares a model's mirror work
(``services.sharing``), the download gets that get's ``core.gate.Gate`` and never calls the
sharing service: before any worker starts it gates the blobs the gate shares out and writes
which blobs it holds (``Gate.started``); a gate follower task brings the plan in line with the
gate whenever sharing wrote into it (``FetchPlan.follow``: ranges opened to the mirrors and
closed again, bytes peers will write and bytes that arrived by the LAN, a blob let go whole).
The download writes its own facts back: bytes a mirror wrote (``mirror_wrote``), a worker
finished a range (``mirror_done``), a shared blob failed its digest (``digest_failed``).
A gated blob is hashed for its digest only: its torrent's piece hashes are its units'
(sharing writes them into the gate; the units it lacks are hashed from the file at the end),
which saves the SHA-1 pass over every byte.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import trio

from ..adapters.hashing import hash_into, piece_hashes
from ..adapters.http import FetchFailure, RangeBody, Timeouts, make_client, open_range
from ..adapters.store import PartialState, Store, disk_errors, start_writeback
from ..core.config import unreachable_hint
from ..core.digests import BlobHasher, algorithm
from ..core.errors import IntegrityError, SourceError
from ..core.fetchplan import Assignment, BlobState, BlobTask, FetchPlan, Finished, Wait
from ..core.gate import Gate
from ..core.mirrors import Failure, MirrorBoard
from ..core.progress import Progress
from ..core.rangeset import RangeSet
from ..core.tokenbucket import TokenBucket
from ..core.torrents import info_bytes, piece_size

log = logging.getLogger(__name__)
WRITE_BLOCK = 1024 * 1024
INLINE_WRITE = 128 * 1024  # smaller writes go straight from the trio thread
HASH_AHEAD = 16 * 1024 * 1024  # hash the on-disk prefix of a blob in steps of at least this
HASH_STEP = 64 * 1024 * 1024  # and at most this per thread call
WRITEBACK_EVERY = 32 * 1024 * 1024  # start writing a blob's dirty pages to disk this often
FLUSH_AGE = 0.05


@dataclass
class BlobJob:
    """One blob to fetch: ``digest`` is ``sha256:``/``gitsha1:``, or None if unknown (a URL
    fetched with no published digest: it is hashed with sha256 and stored under that)."""

    key: str
    digest: str | None
    size: int
    urls: list[str]
    label: str
    token: str | None = field(default=None, repr=False)  # the user's, for ``trusted`` URLs only
    trusted: frozenset[str] = frozenset()  # the candidates that may see the token
    hubs: dict[str, str] = field(default_factory=dict)  # candidate -> its hub (hf, ms)

    def headers(self, url: str) -> dict[str, str] | None:
        """What a request to ``url`` (a candidate, not a redirect's target) carries."""
        if self.token and url in self.trusted:
            return {"Authorization": f"Bearer {self.token}"}
        return None


@dataclass
class DownloadOptions:
    connections: int = 16
    max_active_blobs: int = 4
    chunk_size: int | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    save_interval: float = 0.1
    board: MirrorBoard | None = None  # the agent's (ranks survive across gets); else a new one
    bucket: TokenBucket | None = None  # the agent's mirror rate limit; None: unlimited
    on_mirror_bytes: Callable[[str, int], None] | None = None  # (mirror, bytes) as they land
    on_hub_bytes: Callable[[str, int], None] | None = None  # (hub, bytes) as they land
    on_stored: Callable[[str, int], None] | None = None  # a blob was verified into the store
    watch: DownloadWatch | None = None  # told when a download starts and ends


class DownloadWatch(Protocol):
    """Who follows running downloads (``GetService``: the HF endpoint streams from them)."""

    def started(self, download: Download) -> None: ...

    def ended(self, download: Download) -> None: ...

    def discarded(self, key: str, attempt: int) -> None:
        """The bytes of this attempt at the blob failed the digest and are thrown away."""
        ...


class _Changed:
    """A level-triggered 'something changed' signal for waiting workers."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self, until: float | None) -> None:
        event = self._event
        with trio.move_on_at(until if until is not None else math.inf):
            await event.wait()


async def download(
    store: Store,
    jobs: list[BlobJob],
    progress: Progress,
    options: DownloadOptions | None = None,
    *,
    client: httpx.AsyncClient | None = None,
    gate: Gate | None = None,
) -> dict[str, str]:
    """Fetch and verify every job; returns {job key: final digest}. Raises on what failed,
    after every other blob was finished and kept. A ``gate`` shares blobs out (see above)."""
    opts = options or DownloadOptions()
    locks: dict[str, int] = {}
    busy: list[BlobJob] = []
    try:
        for job in jobs:
            lock = await trio.to_thread.run_sync(store.lock_partial, job.key)
            if lock is None:
                busy.append(job)  # another get is fetching it right now: see below
            else:
                locks[job.key] = lock
        free = [j for j in jobs if j.key in locks]
        results = await _download(store, free, progress, opts, client, gate) if free else {}
    finally:
        for lock in locks.values():
            os.close(lock)
    if busy:
        # Wait for the other download to finish or give up, then take what it stored and
        # fetch whatever it did not.
        while True:
            for job in list(busy):
                lock = await trio.to_thread.run_sync(store.lock_partial, job.key)
                if lock is None:
                    continue
                busy.remove(job)
                os.close(lock)
                if job.digest and store.has_blob(job.digest, job.size):
                    progress.add(job.key, job.label, job.size, have=job.size, state="done")
                    results[job.key] = job.digest
                else:
                    results.update(await download(store, [job], progress, opts, client=client))
            if not busy:
                break
            await trio.sleep(0.25)
    return results


async def _download(
    store: Store,
    jobs: list[BlobJob],
    progress: Progress,
    opts: DownloadOptions,
    client: httpx.AsyncClient | None,
    gate: Gate | None = None,
) -> dict[str, str]:
    board = opts.board or MirrorBoard()
    plan = FetchPlan(
        board,
        per_blob=max(1, min(opts.connections, max(8, opts.connections // 2))),
        max_active_blobs=opts.max_active_blobs,
        chunk_size=opts.chunk_size,
        connections=opts.connections,
    )
    fds: dict[str, int] = {}
    jobs_by_key = {j.key: j for j in jobs}
    results: dict[str, str] = {}
    try:
        for job in jobs:
            fds[job.key] = await trio.to_thread.run_sync(
                store.open_partial, job.key, job.size, job.label
            )
            state = await trio.to_thread.run_sync(store.load_state, job.key, job.size)
            plan.add_blob(job.key, job.size, job.urls, done=state.done, by_mirror=state.by_mirror)
            progress.add(job.key, job.label, job.size, have=state.done.total())
        owns_client = client is None
        http = client or make_client(opts.timeouts, connections=opts.connections * 2)
        try:
            run = Download(store, plan, progress, opts, http, fds, jobs_by_key, results, gate)
            if gate is not None:
                run.follow()  # gated before any worker starts
                gate.started({key: blob.done.copy() for key, blob in plan.blobs.items()})
            if opts.watch is not None:
                opts.watch.started(run)
            try:
                await run.main()
            finally:
                if opts.watch is not None:
                    opts.watch.ended(run)
        finally:
            if owns_client:
                with trio.CancelScope(shield=True):
                    await http.aclose()
    finally:
        for fd in fds.values():
            os.close(fd)
    _raise_failures(plan, board, jobs_by_key)
    return results


def _raise_failures(plan: FetchPlan, board: MirrorBoard, jobs: dict[str, BlobJob]) -> None:
    failed = plan.failures()
    if not failed:
        return
    first = failed[0]
    label = jobs[first.key].label
    more = f" (and {len(failed) - 1} more files)" if len(failed) > 1 else ""
    mismatched = [s.key for s in board.all_stats() if "mismatch" in s.bans.get(first.key, "")]
    if mismatched and all(
        "mismatch" in board.stats(m).bans.get(first.key, "") or board.stats(m).dead
        for m in first.urls
    ):
        raise IntegrityError(
            f"{label}: digest mismatch from every mirror ({', '.join(mismatched)}){more}"
        )
    causes = []
    for m in first.urls:
        s = board.stats(m)
        why = s.bans.get(first.key) or s.last_error or "no answer"
        causes.append(f"{m}: {why}")
    hint = unreachable_hint(jobs[first.key].urls)
    more += f" ({hint})" if hint else ""
    raise SourceError(f"cannot fetch {label}: {'; '.join(causes)}{more}")


class Download:
    """One running download. With a ``Gate`` (its blobs shared out with the office), every
    change sharing writes there reaches the plan (``follow``), wakes the workers and marks
    resume state to be saved; what the download tells sharing it writes into the gate."""

    def __init__(
        self,
        store: Store,
        plan: FetchPlan,
        progress: Progress,
        opts: DownloadOptions,
        http: httpx.AsyncClient,
        fds: dict[str, int],
        jobs: dict[str, BlobJob],
        results: dict[str, str],
        gate: Gate | None = None,
    ) -> None:
        self.store, self.plan, self.progress, self.opts = store, plan, progress, opts
        self.http, self.fds, self.jobs, self.results = http, fds, jobs, results
        self.gate = gate
        self.gate_news = _Changed()  # sharing wrote into the gate
        if gate is not None:
            gate.wake_download_with(self.gate_news.fire)
        self.changed = _Changed()
        self.dirty_signal = _Changed()
        self.landed = _Changed()  # bytes reached the disk, or a blob was verified or failed
        self.dirty: set[str] = set()
        self.prefix: dict[str, BlobHasher] = {}  # blob -> hash of its on-disk prefix so far
        self.hash_locks: dict[str, trio.Lock] = {}
        self.unwritten: dict[str, int] = {}
        self.redirects: dict[str, str] = {}

    def has(self, key: str) -> bool:
        """Is this blob part of the download (not waiting for another get that fetches it)?"""
        return key in self.plan.blobs

    # -- the gate ------------------------------------------------------------------------------

    def follow(self) -> None:
        """Bring the plan in line with what sharing wrote into the gate."""
        assert self.gate is not None
        got = self.plan.follow(self.gate)
        for key, start in got.rewritten.items():
            # Peers write these bytes over what a mirror may have written before the range
            # went to them: they are not hashed until they did.
            hashed = self.prefix.get(key)
            if hashed is not None and hashed.pos > start:
                del self.prefix[key]  # hash it again from the start
        for key, n in got.arrived.items():
            self.unwritten[key] = self.unwritten.get(key, 0) + n
        for key in got.touched:
            self._dirty(key)
        if got.touched:
            self.changed.fire()
        if got.arrived:
            self.landed.fire()

    async def gate_follower(self) -> None:
        """Follow the gate whenever sharing wrote into it (its wake-up fires ``gate_news``)."""
        while True:
            self.follow()
            await self.gate_news.wait(None)

    # -- following a blob (what the HF endpoint streams) ---------------------------------------

    def frontier(self, key: str, pos: int) -> int:
        """How far the bytes on disk reach without a gap from ``pos``."""
        blob = self.plan.blobs[key]
        return next((b for a, b in blob.done if a <= pos < b), pos)

    def attempt(self, key: str) -> int:
        """Bumps each time the blob's bytes failed the digest and were thrown away."""
        return self.plan.blobs[key].attempt

    def state(self, key: str) -> BlobState:
        return self.plan.blobs[key].state

    def _dirty(self, key: str) -> None:
        self.dirty.add(key)
        self.dirty_signal.fire()

    # -- running -------------------------------------------------------------------------------

    async def main(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for w in range(self.opts.connections):
                    nursery.start_soon(self.worker, w)
                nursery.start_soon(self.verifier)
                nursery.start_soon(self.prefix_hasher)
                nursery.start_soon(self.saver)
                if self.gate is not None:
                    nursery.start_soon(self.gate_follower)
                await self.wait_finished()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.save_all()

    async def wait_finished(self) -> None:
        while not self.plan.finished:
            await self.changed.wait(None)

    # -- workers -------------------------------------------------------------------------------

    async def worker(self, w: int) -> None:
        while True:
            step = self.plan.assign(w, trio.current_time())
            if isinstance(step, Finished):
                return
            if isinstance(step, Wait):
                await self.changed.wait(step.until)
                continue
            failure: FetchFailure | None = None
            try:
                await self.fetch(w, step)
            except FetchFailure as f:
                failure = f
            finally:
                if w in self.plan.inflight:
                    now = trio.current_time()
                    if failure is None and step.pos < step.stop:
                        failure = FetchFailure(Failure.SHORT, "body ended early")
                    if failure is None:
                        self.plan.release(w, now)
                    else:
                        self.plan.release(
                            w,
                            now,
                            failure.kind,
                            retry_after=failure.retry_after,
                            detail=failure.detail,
                        )
                    self.changed.fire()
                    if self.gate is not None:
                        self.gate.mirror_done(step.blob)

    async def fetch(self, w: int, a: Assignment) -> None:
        fd = self.fds[a.blob]
        size = self.plan.blobs[a.blob].size
        # A hub answers each file with a redirect to its CDN: ask the hub once per blob and
        # mirror, then go to the CDN directly until it stops answering (signed URLs expire).
        cached = self.redirects.get(a.url)
        # The token goes to the trusted candidate only; a redirect's target (a CDN) never
        # sees it (httpx drops it across origins, and a cached target is asked without it).
        headers = None if cached else self.jobs[a.blob].headers(a.url)
        try:
            async with open_range(self.http, cached or a.url, a.pos, a.stop, size, headers) as body:
                if body.url != (cached or a.url):
                    self.redirects[a.url] = body.url
                await self.stream(w, a, fd, body)
        except FetchFailure as f:
            if cached is None:
                raise
            self.redirects.pop(a.url, None)  # other workers may have dropped it already
            if f.kind in (Failure.MISSING, Failure.PROTOCOL):
                raise FetchFailure(
                    Failure.SERVER, f"redirect target went stale: {f.detail}"
                ) from None
            raise

    async def stream(self, w: int, a: Assignment, fd: int, body: RangeBody) -> None:
        buf = bytearray()
        last = trio.current_time()
        bucket = self.opts.bucket
        async for chunk in body.chunks:
            buf += chunk
            now = trio.current_time()
            if bucket is not None and (delay := bucket.reserve(len(chunk), now)) > 0:
                await trio.sleep(delay)  # TCP holds the mirror back meanwhile
                now = trio.current_time()
            # Write often enough that a crash loses little: by size, or by age on a slow link.
            if len(buf) >= WRITE_BLOCK or now - last >= FLUSH_AGE:
                last = now
                if not await self.flush(w, a, fd, buf):
                    return
        if buf:
            await self.flush(w, a, fd, buf)

    async def flush(self, w: int, a: Assignment, fd: int, buf: bytearray) -> bool:
        """Write what the assignment still wants of ``buf``; False when it wants no more."""
        n = min(len(buf), a.stop - a.pos)
        if n > 0:
            with memoryview(buf) as view, disk_errors(f"writing {self.jobs[a.blob].label}"):
                if n <= INLINE_WRITE:  # into the page cache: cheaper than a thread hop
                    os.pwrite(fd, view[:n], a.pos)
                else:
                    await trio.to_thread.run_sync(os.pwrite, fd, view[:n], a.pos)
            self._dirty(a.blob)
            self.unwritten[a.blob] = self.unwritten.get(a.blob, 0) + n
            hub = self.jobs[a.blob].hubs.get(a.url, "")
            self.progress.advance(a.blob, n, a.mirror, hub=hub)
            if self.opts.on_mirror_bytes is not None:
                self.opts.on_mirror_bytes(a.mirror, n)
            if hub and self.opts.on_hub_bytes is not None:
                self.opts.on_hub_bytes(hub, n)
        pos = a.pos
        more = self.plan.progress(w, n)
        if n > 0:
            if self.gate is not None:
                self.gate.mirror_wrote(a.blob, pos, a.pos)
            self.landed.fire()
        buf.clear()
        return more

    # -- verification --------------------------------------------------------------------------

    async def verifier(self) -> None:
        while not self.plan.finished:
            ready = self.plan.to_verify()
            if not ready:
                await self.changed.wait(None)
                continue
            for blob in ready:
                await self.verify(blob)
                self.changed.fire()

    async def verify(self, blob: BlobTask) -> None:
        job = self.jobs[blob.key]
        self.progress.set_state(blob.key, "verifying")
        path = self.store.partial_path(blob.key)
        fd = self.fds[blob.key]
        got = ""

        pieces = b""
        tail = reread = 0  # bytes hashed after the last one arrived; re-read for SHA-1

        async def hash_it() -> None:
            nonlocal got, pieces, tail, reread
            async with self.hash_lock(blob.key):
                h = self.prefix.pop(blob.key, None) or self.new_hasher(blob)
                tail = blob.size - h.pos
                await trio.to_thread.run_sync(hash_into, h, path, blob.size)
                got, pieces = h.result()
                if not h.pieces and blob.size:
                    pieces, reread = await self.unit_pieces(blob, path)

        # Flushing to disk and hashing overlap: both are needed before the commit.
        t0 = trio.current_time()
        synced = t0

        async def sync_it() -> None:
            nonlocal synced
            await trio.to_thread.run_sync(os.fdatasync, fd)
            synced = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hash_it)
            nursery.start_soon(sync_it)
        log.info(
            "%s: verified in %.2f s (fdatasync %.2f s; hashed %d MiB after the last byte, "
            "%d MiB read again for piece hashes)",
            job.label,
            trio.current_time() - t0,
            synced - t0,
            tail >> 20,
            reread >> 20,
        )
        if job.digest is None or got == job.digest:
            os.close(self.fds.pop(blob.key))
            await trio.to_thread.run_sync(self.store.commit_blob, blob.key, got, True)
            if blob.size:
                info = info_bytes(got, blob.size, pieces)
                await trio.to_thread.run_sync(self.store.save_torrent_info, got, info)
            self.plan.verified(blob.key)
            self.results[blob.key] = got
            if self.opts.on_stored is not None and blob.size:
                self.opts.on_stored(got, blob.size)  # seed it now: peers may want it
            self.progress.set_state(blob.key, "done", have=blob.size)
            self.landed.fire()
            return
        self.prefix.pop(blob.key, None)
        gated = blob.allowed is not None
        attempt = blob.attempt
        self.plan.mismatch(blob.key, f"digest mismatch (got {got[:20]}...)")
        if self.opts.watch is not None:
            self.opts.watch.discarded(blob.key, attempt)
        if gated and blob.allowed is None and self.gate is not None:
            # Before the plan next follows the gate (which would gate the blob again): the
            # mismatch let it go to the mirrors whole, and sharing must drop it.
            self.gate.digest_failed(blob.key)
        self.landed.fire()  # whoever streams these bytes must stop: they were wrong
        # The bytes on disk are worthless now: forget them so a crash does not resume them.
        await trio.to_thread.run_sync(
            self.store.save_state, blob.key, blob.size, PartialState(blob.done, {})
        )
        self.progress.set_state(
            blob.key, "failed" if blob.state is BlobState.FAILED else "fetching", have=0
        )

    def new_hasher(self, blob: BlobTask) -> BlobHasher:
        job = self.jobs[blob.key]
        algo = algorithm(job.digest) if job.digest else "sha256"
        shared = blob.allowed is not None and self.gate is not None
        return BlobHasher(algo, blob.size, piece_size(blob.size), pieces=not shared)

    async def unit_pieces(self, blob: BlobTask, path: Path) -> tuple[bytes, int]:
        """The torrent piece hashes of a shared blob: its units' from the gate, and the
        SHA-1 of whatever no unit of ours covers (a unit still being seeded, a sharing that
        ended) read from the file."""
        piece = piece_size(blob.size)
        out = bytearray(20 * -(-blob.size // piece))
        known = RangeSet()
        for start, stop, hashes in self.gate.piece_hashes(blob.key, piece) if self.gate else []:
            if start % piece == 0 and len(hashes) == 20 * -(-(stop - start) // piece):
                out[20 * (start // piece) : 20 * (start // piece) + len(hashes)] = hashes
                known.add(start, stop)
        reread = 0
        for start, stop in list(known.gaps(0, blob.size)):
            first = start - start % piece  # units start on pieces; a gap does too
            hashes = await trio.to_thread.run_sync(piece_hashes, path, first, stop, piece)
            out[20 * (first // piece) : 20 * (first // piece) + len(hashes)] = hashes
            reread += stop - first
        return bytes(out), reread

    def hash_lock(self, key: str) -> trio.Lock:
        return self.hash_locks.setdefault(key, trio.Lock())

    async def prefix_hasher(self) -> None:
        """Hash each blob's contiguous prefix on disk as it grows, so that verifying a blob
        once its last byte arrived reads only what came after the first gap."""
        while True:
            work = None
            for blob in self.plan.blobs.values():
                if blob.state is not BlobState.FETCHING:
                    continue
                h = self.prefix.get(blob.key)
                pos = h.pos if h is not None else 0
                frontier = next((b for a, b in blob.done if a <= pos < b), pos)
                if frontier - pos >= HASH_AHEAD:
                    work = (blob, min(frontier, pos + HASH_STEP))
                    break
            if work is None:
                # Bytes landing move the frontier: from mirrors, and from peers (a shared
                # blob's units, which used to wake nothing here).
                await self.landed.wait(None)
                continue
            blob, stop = work
            async with self.hash_lock(blob.key):
                if blob.state is not BlobState.FETCHING:
                    continue
                h = self.prefix.setdefault(blob.key, self.new_hasher(blob))
                path = self.store.partial_path(blob.key)
                await trio.to_thread.run_sync(hash_into, h, path, stop)

    # -- persistence and display ---------------------------------------------------------------

    async def saver(self) -> None:
        """Save resume state when ranges landed, at most every ``save_interval`` seconds."""
        while True:
            if not self.dirty:
                await self.dirty_signal.wait(None)
            await trio.sleep(self.opts.save_interval)
            await self.save_all()
            for key, n in list(self.unwritten.items()):
                fd = self.fds.get(key)
                if n >= WRITEBACK_EVERY and fd is not None:
                    self.unwritten[key] = 0
                    await trio.to_thread.run_sync(start_writeback, fd)

    async def save_all(self) -> None:
        dirty, self.dirty = self.dirty, set()
        for key in dirty:
            blob = self.plan.blobs[key]
            if blob.state is not BlobState.FETCHING and blob.state is not BlobState.VERIFYING:
                continue
            snap = PartialState(blob.done.copy(), {m: r.copy() for m, r in blob.by_mirror.items()})
            try:
                await trio.to_thread.run_sync(self.store.save_state, key, blob.size, snap)
            except OSError:
                self.dirty.add(key)
                raise
