"""Which worker fetches which bytes of which blob from which mirror.

Theory of operation. A ``FetchPlan`` holds the blobs one ``get`` still needs, each with the byte
ranges already on disk (``done``, restored from resume state), the ranges each mirror served
(``by_mirror``, so a digest mismatch can be blamed), and the assignments in flight. Workers ask
``assign(worker, now)`` and get an ``Assignment`` (a byte range and a URL), a ``Wait`` (nothing
to do before some time, or before the plan changes) or ``Finished``. Blobs are served in order,
at most ``per_blob`` connections each while others have work, so several files progress at
once while the first finishes first. When nothing unassigned is left, an idle worker splits
the largest remaining in-flight range (endgame), so a slow connection cannot hold the tail of
a blob. When a blob has several candidates, a connection to a mirror whose rate is not measured
yet takes a short first chunk (``probe_chunk``): the board learns a rate only when a connection
ends, so the choice between the candidates is made again within a fraction of a second instead
of after a whole chunk from whichever mirror answered first (a blob with one candidate has no
choice to revisit, and keeps its chunks).

When every byte of a blob is done the plan says so (``Verify``); the IO layer hashes the file
and answers ``verified`` or ``mismatch``. On a mismatch the mirrors that served bytes are banned
for that blob if some other candidate is left; if every candidate contributed, the blob is
refetched one mirror at a time (``single_source``), which isolates the culprit. A blob resumed
from an earlier run is refetched once before anyone is blamed: resume state is not fsynced, so
after a power cut it may name bytes the disk lost. Nothing here does IO or reads a clock.

A blob the office shares out is gated (``allowed``: the only ranges mirrors may serve). The
office's decisions reach the plan through a ``core.gate.Gate``: ``follow(gate)`` brings the
gated blobs in line with it (ranges opened and closed, bytes that peers will write or wrote,
a blob let go whole); the IO layer calls it whenever sharing wrote into the gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from .gate import Gate
from .mirrors import Failure, MirrorBoard, mirror_key
from .rangeset import RangeSet

MiB = 1024 * 1024


class BlobState(Enum):
    FETCHING = "fetching"
    VERIFYING = "verifying"
    DONE = "done"
    FAILED = "failed"


@dataclass
class Assignment:
    worker: int
    blob: str
    url: str
    mirror: str
    start: int
    stop: int  # may shrink when an idle worker takes the tail (endgame)
    pos: int
    started_at: float
    got_first_byte: bool = False

    @property
    def remaining(self) -> int:
        return max(0, self.stop - self.pos)


@dataclass(frozen=True)
class Wait:
    until: float | None  # None: until the plan changes (a release, a verification)


@dataclass(frozen=True)
class Finished:
    pass


@dataclass
class Followed:
    """What ``FetchPlan.follow`` changed: the blobs it touched, the bytes that arrived from
    peers per blob, and per blob the lowest offset peers will write again."""

    touched: set[str] = field(default_factory=set)
    arrived: dict[str, int] = field(default_factory=dict)
    rewritten: dict[str, int] = field(default_factory=dict)


@dataclass
class BlobTask:
    key: str  # the blob's digest (or a provisional key for a URL whose digest is unknown)
    size: int
    urls: dict[str, str]  # mirror key -> URL, in configured order
    done: RangeSet = field(default_factory=RangeSet)
    by_mirror: dict[str, RangeSet] = field(default_factory=dict)
    state: BlobState = BlobState.FETCHING
    single_source: bool = False
    source_lock: str | None = None  # in single-source mode, the mirror in use
    error: str = ""
    restored: bool = False  # holds bytes from an earlier run (maybe lost by a power cut)
    attempt: int = 0  # how many times its bytes failed the digest and were thrown away
    # The ranges mirrors may serve (None: all). Set when the office's sharing shares the
    # blob out: only the units this agent leases are fetched here, the rest come from peers.
    allowed: RangeSet | None = None

    @property
    def complete(self) -> bool:
        return self.done.covers(0, self.size)


class FetchPlan:
    def __init__(
        self,
        board: MirrorBoard,
        *,
        per_blob: int = 16,
        max_active_blobs: int = 4,
        chunk_size: int | None = None,
        min_split: int = 1 * MiB,
        connections: int | None = None,
        probe_chunk: int = 1 * MiB,
    ) -> None:
        self.board = board
        self.per_blob = per_blob
        self.connections = connections or per_blob  # workers in all
        self.max_active_blobs = max_active_blobs
        self.chunk_size = chunk_size
        self.min_split = min_split
        self.probe_chunk = probe_chunk
        self.blobs: dict[str, BlobTask] = {}
        self.inflight: dict[int, Assignment] = {}

    # -- setup ---------------------------------------------------------------------------------

    def add_blob(
        self,
        key: str,
        size: int,
        urls: Sequence[str],
        *,
        done: RangeSet | None = None,
        by_mirror: dict[str, RangeSet] | None = None,
        allowed: RangeSet | None = None,
    ) -> BlobTask:
        by_key = {mirror_key(u): u for u in urls}
        self.board.add(by_key)
        task = BlobTask(key, size, by_key, done or RangeSet(), by_mirror or {}, allowed=allowed)
        task.restored = bool(task.done)
        if task.complete:
            task.state = BlobState.VERIFYING
        self.blobs[key] = task
        return task

    # -- questions -----------------------------------------------------------------------------

    def to_verify(self) -> list[BlobTask]:
        """Blobs whose bytes are all on disk and no worker is still writing to them."""
        busy = {a.blob for a in self.inflight.values()}
        return [
            b for b in self.blobs.values() if b.state is BlobState.VERIFYING and b.key not in busy
        ]

    @property
    def finished(self) -> bool:
        return all(b.state in (BlobState.DONE, BlobState.FAILED) for b in self.blobs.values())

    def failures(self) -> list[BlobTask]:
        return [b for b in self.blobs.values() if b.state is BlobState.FAILED]

    def _chunk(self, blob: BlobTask, mirror: str) -> int:
        if self.chunk_size:
            return self.chunk_size
        if blob.allowed is not None:
            # A shared blob opens a unit at a time: cut it so every connection has a range
            # from the start. Splitting a range later (endgame) closes the victim's response
            # early, and what the mirror had in flight on it is wasted on the internet link.
            size = max(MiB, min(32 * MiB, self._allowed_missing(blob) // self.connections))
        else:
            size = max(MiB, min(32 * MiB, blob.size // (2 * self.per_blob) or MiB))
        if self.board.stats(mirror).rate is None and self._choices(blob) > 1:
            # Unmeasured, and another candidate might be faster: end soon and choose again.
            size = min(size, self.probe_chunk)
        return size

    def _choices(self, blob: BlobTask) -> int:
        return sum(1 for k in blob.urls if self.board.usable_for(k, blob.key))

    def _reserved(self, blob: BlobTask) -> RangeSet:
        """Bytes no worker may take now: on disk, in flight, or (gated blobs) not ours."""
        taken = blob.done.copy()
        for a in self.inflight.values():
            if a.blob == blob.key:
                taken.add(a.pos, a.stop)
        if blob.allowed is not None:
            for start, stop in blob.allowed.gaps(0, blob.size):
                taken.add(start, stop)
        return taken

    def _open(self, blob: BlobTask) -> bool:
        """Has the blob bytes mirrors may serve that are not on disk yet?"""
        return blob.allowed is None or self._allowed_missing(blob) > 0

    @staticmethod
    def _allowed_missing(blob: BlobTask) -> int:
        assert blob.allowed is not None
        return sum(b - a for s, e in blob.allowed for a, b in blob.done.gaps(s, e))

    # -- assigning -----------------------------------------------------------------------------

    def assign(self, worker: int, now: float) -> Assignment | Wait | Finished:
        assert worker not in self.inflight, "worker already holds an assignment"
        wake: list[float] = []
        fetching = [
            b for b in self.blobs.values() if b.state is BlobState.FETCHING and self._open(b)
        ]
        fetching = fetching[: self.max_active_blobs]
        # First respect the per-blob cap so several files move at once; if that leaves this
        # worker idle (one big file, or the others fully assigned), lift it.
        for cap in (self.per_blob, None):
            for blob in fetching:
                if blob.state is not BlobState.FETCHING:
                    continue  # failed during this call
                conns = sum(1 for a in self.inflight.values() if a.blob == blob.key)
                if cap is not None and conns >= cap:
                    continue
                gap = next(self._reserved(blob).gaps(0, blob.size), None)
                if gap is None:
                    continue
                mirror = self._choose(blob, now, wake)
                if mirror is None:
                    continue
                start, stop = gap[0], min(gap[1], gap[0] + self._chunk(blob, mirror))
                return self._start(worker, blob, mirror, start, stop, now)
        steal = self._endgame(worker, now, wake)
        if steal is not None:
            return steal
        if self.finished and not self.inflight:
            return Finished()
        return Wait(min(wake) if wake else None)

    def _choose(self, blob: BlobTask, now: float, wake: list[float]) -> str | None:
        keys = list(blob.urls)
        if self.board.hopeless(keys, blob.key):
            self._fail(blob, "every mirror failed or lacks it")
            return None
        if blob.single_source:
            if blob.source_lock is None or not self.board.usable_for(blob.source_lock, blob.key):
                blob.source_lock = None
                busy = any(a.blob == blob.key for a in self.inflight.values())
                if busy:
                    return None
                blob.source_lock = self.board.choose(keys, blob.key, now)
            else:
                st = self.board.stats(blob.source_lock)
                if st.backoff_until > now:
                    wake.append(st.backoff_until)
                    return None
            return blob.source_lock
        mirror = self.board.choose(keys, blob.key, now)
        if mirror is None:
            t = self.board.next_change(keys, blob.key, now)
            if t is not None:
                wake.append(t)
        return mirror

    def _endgame(self, worker: int, now: float, wake: list[float]) -> Assignment | None:
        candidates = [a for a in self.inflight.values() if a.remaining >= 2 * self.min_split]
        for victim in sorted(candidates, key=lambda a: -a.remaining):
            blob = self.blobs[victim.blob]
            mirror = self._choose(blob, now, wake)
            if mirror is None:
                continue
            mid = victim.pos + victim.remaining // 2
            stop, victim.stop = victim.stop, mid
            return self._start(worker, blob, mirror, mid, stop, now)
        return None

    def _start(
        self, worker: int, blob: BlobTask, mirror: str, start: int, stop: int, now: float
    ) -> Assignment:
        a = Assignment(worker, blob.key, blob.urls[mirror], mirror, start, stop, start, now)
        self.inflight[worker] = a
        self.board.started(mirror, now)
        return a

    # -- progress ------------------------------------------------------------------------------

    def progress(self, worker: int, nbytes: int) -> bool:
        """``nbytes`` more were written at the assignment's position. False: stop reading."""
        a = self.inflight[worker]
        if not a.got_first_byte and nbytes > 0:
            a.got_first_byte = True
            self.board.first_byte(a.mirror)
        end = min(a.pos + nbytes, a.stop)
        blob = self.blobs[a.blob]
        if end > a.pos:
            blob.done.add(a.pos, end)
            blob.by_mirror.setdefault(a.mirror, RangeSet()).add(a.pos, end)
        a.pos = end
        return a.pos < a.stop

    def release(
        self,
        worker: int,
        now: float,
        failure: Failure | None = None,
        *,
        retry_after: float | None = None,
        detail: str = "",
    ) -> None:
        """The worker is done with its assignment; unfinished bytes return to the pool."""
        a = self.inflight.pop(worker)
        seconds = max(0.0, now - a.started_at)
        fetched = a.pos - a.start
        if failure is None:
            self.board.finished(a.mirror, fetched, seconds)
        else:
            self.board.failed(
                a.mirror,
                failure,
                now,
                blob=a.blob if failure in (Failure.MISSING, Failure.PROTOCOL) else None,
                nbytes=fetched,
                seconds=seconds,
                retry_after=retry_after,
                started_at=a.started_at,
                detail=detail,
            )
        blob = self.blobs[a.blob]
        if blob.state is BlobState.FETCHING and blob.complete:
            blob.state = BlobState.VERIFYING

    # -- the office gate (sharing leases) -----------------------------------------------

    def follow(self, gate: Gate) -> Followed:
        """Bring the blobs the gate shares out in line with it: gate them, open and close
        what it opens and closes, and take the LAN's news (peers will write these bytes, then
        these arrived). Blobs the plan does not hold are not its business."""
        out = Followed()
        for key in gate.blobs():
            blob = self.blobs.get(key)
            if blob is None:
                continue
            rewrite, arrived = gate.take_lan(key)
            want = gate.open_ranges(key)
            if rewrite:
                for start, stop in rewrite:
                    self.unmark(key, start, stop)
                out.rewritten[key] = rewrite.to_list()[0][0]
                out.touched.add(key)
            if want is None:
                if blob.allowed is not None:
                    self.ungate(key)
                    out.touched.add(key)
            else:
                if blob.allowed is None:
                    self.gate(key)
                    out.touched.add(key)
                have = blob.allowed
                assert have is not None
                opened = [g for s, e in want for g in have.gaps(s, e)]
                closed = [g for s, e in have for g in want.gaps(s, e)]
                for start, stop in opened:
                    self.allow(key, start, stop)
                for start, stop in closed:
                    self.disallow(key, start, stop)
                if opened or closed:
                    out.touched.add(key)
            if arrived:
                for start, stop in arrived:
                    self.mark_done(key, start, stop)
                out.arrived[key] = arrived.total()
                out.touched.add(key)
        return out

    def gate(self, key: str) -> None:
        """Mirrors may serve nothing of this blob until ranges are ``allow``ed (the office
        shares its mirror work out)."""
        blob = self.blobs[key]
        if blob.allowed is None:
            blob.allowed = RangeSet()

    def allow(self, key: str, start: int, stop: int) -> None:
        """Mirrors may now serve these bytes of a gated blob (a lease of ours)."""
        blob = self.blobs[key]
        if blob.allowed is not None:
            blob.allowed.add(start, stop)

    def disallow(self, key: str, start: int, stop: int) -> None:
        """A peer serves these bytes after all: stop fetching them from mirrors. Workers inside
        the range stop at their next write (``progress`` says False); what they wrote stays."""
        blob = self.blobs[key]
        if blob.allowed is None:
            return
        blob.allowed.subtract(start, stop)
        for a in self.inflight.values():
            if a.blob == key and a.pos < stop and a.stop > start:
                a.stop = max(a.pos, min(a.stop, start))

    def mark_done(self, key: str, start: int, stop: int) -> None:
        """These bytes arrived by another way (checked pieces from LAN peers)."""
        blob = self.blobs[key]
        if blob.state is not BlobState.FETCHING:
            return
        blob.done.add(start, stop)
        if blob.complete and not any(a.blob == key for a in self.inflight.values()):
            blob.state = BlobState.VERIFYING

    def unmark(self, key: str, start: int, stop: int) -> None:
        """These bytes will be written again (by peers): not done until they are."""
        self.blobs[key].done.subtract(start, stop)

    def covered(self, key: str, start: int, stop: int) -> bool:
        blob = self.blobs[key]
        return blob.state is not BlobState.FETCHING or blob.done.covers(start, stop)

    def ungate(self, key: str) -> None:
        """Mirrors may serve all of it (the coordinated copy failed its digest)."""
        self.blobs[key].allowed = None

    # -- verification outcomes -----------------------------------------------------------------

    def verified(self, key: str) -> None:
        self.blobs[key].state = BlobState.DONE

    def mismatch(self, key: str, detail: str = "digest mismatch") -> list[str]:
        """The finished bytes failed the digest. Returns the mirrors banned for this blob."""
        blob = self.blobs[key]
        contributors = [m for m, r in blob.by_mirror.items() if r.total() > 0]
        others = [m for m in blob.urls if m not in contributors and self.board.usable_for(m, key)]
        banned: list[str] = []
        if blob.allowed is not None:
            # Shared out by the office: peers' bytes are in it too. Fetch all of it from
            # mirrors, blaming nobody yet (a second mismatch then blames the mirrors).
            blob.allowed = None
        elif blob.restored:
            # Bytes from an earlier run may have been lost by the disk, not by a mirror:
            # refetch once before blaming anyone.
            blob.restored = False
        elif len(contributors) == 1 or others:
            banned = contributors
        else:
            blob.single_source = True  # every usable mirror contributed: isolate the culprit
        for m in banned:
            self.board.ban(m, key, detail)
        blob.done = RangeSet()
        blob.by_mirror = {}
        blob.source_lock = None
        blob.attempt += 1
        blob.state = BlobState.FETCHING
        if self.board.hopeless(list(blob.urls), key):
            self._fail(blob, f"{detail} from every mirror")
        return banned

    def _fail(self, blob: BlobTask, why: str) -> None:
        blob.state = BlobState.FAILED
        blob.error = why
