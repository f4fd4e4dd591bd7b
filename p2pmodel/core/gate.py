"""The gate between one get's sharing and its download (pure): what the office decided about
the blobs it shares out, and what the download tells the office, in one object.

Theory of operation. A get that shares its mirror work with the office has one ``Gate``, made
by ``SharingService.share`` and handed to ``download``. Neither side calls into the other: each
writes facts here and reads the other side's. Each side may register a ``wake`` (no argument,
no answer), which the gate calls when the *other* side wrote something, so it looks again
(sharing on its next step, the download in its gate follower, ``FetchPlan.follow``).

Sharing writes what the office decided, per blob:

- ``gate(key)``: the blob is shared out; mirrors serve none of its bytes until a range is
  opened. Written before the download starts, which gates those blobs before any worker runs.
- ``open``/``close``: bytes open to the mirror workers (a lease of ours), closed again (a peer
  serves them after all: workers inside stop at their next write, what they wrote stays).
- ``rewrite``: peers will write these bytes (libtorrent over the partial file): not done, and
  not hashed, until they ``arrived``.
- ``arrived``: these bytes came from peers (their pieces checked).
- ``let_go(key)``: mirrors may serve all of it (sharing it out failed).
- ``hashed``: the torrent piece hashes of a unit this agent holds (hashed as it came from a
  mirror, or checked as it came from peers), so verifying reads no byte again for SHA-1.

The download writes what happened:

- ``started``: the gated blobs it holds (another get of this agent may be fetching the others)
  and what of each is on disk already (resumed from an earlier run);
- ``mirror_wrote``: a mirror's bytes reached the disk (read by sharing when it looks next);
- ``mirror_done``: a worker finished a range (a leased unit may be complete: look now);
- ``digest_failed(key)``: the shared copy failed its digest; the blob is let go whole and
  fetched again from mirrors, and sharing drops it.

The download reads ``open_ranges`` (state: the plan diffs it against its own) and takes the
LAN's news (``take_lan``: what to rewrite, what arrived, each once); sharing reads ``held``,
``covered``, ``failed`` and ``gated``. Nothing here does IO, reads a clock or knows trio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .rangeset import RangeSet


def _nobody() -> None:
    pass


@dataclass
class _Blob:
    """One shared blob as both sides know it."""

    open: RangeSet | None = field(default_factory=RangeSet)  # None: let go, mirrors serve all
    done: RangeSet = field(default_factory=RangeSet)  # on the download's disk (what it said)
    lan: RangeSet = field(default_factory=RangeSet)  # peers are writing these now
    rewrite: RangeSet = field(default_factory=RangeSet)  # news for the download, not taken yet
    arrived: RangeSet = field(default_factory=RangeSet)  # news for the download, not taken yet
    pieces: dict[tuple[int, int, int], bytes] = field(default_factory=dict)  # (start, stop, piece)
    failed: bool = False


class Gate:
    def __init__(self) -> None:
        self._blobs: dict[str, _Blob] = {}
        self._held: set[str] | None = None
        self._wake_sharing: Callable[[], None] = _nobody
        self._wake_download: Callable[[], None] = _nobody

    # -- wake-ups --------------------------------------------------------------------------------

    def wake_sharing_with(self, wake: Callable[[], None]) -> None:
        """``wake()`` is called whenever the download wrote something."""
        self._wake_sharing = wake

    def wake_download_with(self, wake: Callable[[], None]) -> None:
        """``wake()`` is called whenever sharing wrote something."""
        self._wake_download = wake

    # -- sharing writes --------------------------------------------------------------------------

    def gate(self, key: str) -> None:
        """Share this blob out: mirrors serve none of it until ranges are opened."""
        self._blobs.setdefault(key, _Blob())
        self._wake_download()

    def open(self, key: str, start: int, stop: int) -> None:
        """Mirrors may now serve these bytes (a lease of ours)."""
        blob = self._blobs.get(key)
        if blob is None or blob.open is None:
            return
        blob.open.add(start, stop)
        blob.lan.subtract(start, stop)  # ours again: mirror bytes there count
        self._wake_download()

    def close(self, key: str, start: int, stop: int) -> None:
        """A peer serves these bytes after all: mirrors stop fetching them."""
        blob = self._blobs.get(key)
        if blob is None or blob.open is None:
            return
        blob.open.subtract(start, stop)
        self._wake_download()

    def rewrite(self, key: str, start: int, stop: int) -> None:
        """Peers will write these bytes, over whatever a mirror wrote there before the range
        went to them: they are not done until they ``arrived``."""
        blob = self._live(key)
        if blob is None:
            return
        blob.done.subtract(start, stop)
        blob.lan.add(start, stop)
        blob.arrived.subtract(start, stop)  # not taken yet: it does not hold any more
        blob.rewrite.add(start, stop)
        self._wake_download()

    def arrived(self, key: str, start: int, stop: int) -> None:
        """These bytes came from peers, their pieces checked."""
        blob = self._live(key)
        if blob is None:
            return
        blob.done.add(start, stop)
        blob.lan.subtract(start, stop)
        blob.arrived.add(start, stop)
        self._wake_download()

    def let_go(self, key: str) -> None:
        """Mirrors may serve all of this blob (sharing it out failed)."""
        blob = self._blobs.get(key)
        if blob is None or blob.open is None:
            return
        blob.open = None
        self._wake_download()

    def hashed(self, key: str, start: int, stop: int, piece: int, hashes: bytes) -> None:
        """The SHA-1 of each ``piece``-byte piece of ``[start, stop)``: a unit this agent
        holds (hashed as it came from a mirror, or checked as it came from peers)."""
        blob = self._live(key)
        if blob is None:
            return
        blob.pieces[(start, stop, piece)] = hashes
        self._wake_download()

    # -- the download writes ---------------------------------------------------------------------

    def started(self, done: dict[str, RangeSet]) -> None:
        """The download runs with these blobs (key -> bytes already on disk); the gated ones
        among them are this get's to share, the others another get of the agent fetches."""
        self._held = {key for key in done if key in self._blobs}
        for key in self._held:
            self._blobs[key].done = done[key].copy()
        self._wake_sharing()

    def mirror_wrote(self, key: str, start: int, stop: int) -> None:
        """A mirror's bytes of a blob are on disk. Wakes nobody: sharing reads them when it
        looks next (``mirror_done`` wakes it), as a worker writes every 50 ms or so."""
        blob = self._live(key)
        if blob is not None:
            for a, b in blob.lan.gaps(start, stop):  # peers rewrite the rest: not done yet
                blob.done.add(a, b)

    def mirror_done(self, key: str) -> None:
        """A worker finished a range of this blob: a leased unit may be complete."""
        if self._live(key) is not None:
            self._wake_sharing()

    def digest_failed(self, key: str) -> None:
        """The shared copy of this blob failed its digest: mirrors now fetch all of it, and
        nothing the office did for it counts any more."""
        blob = self._blobs.get(key)
        if blob is None or blob.failed:
            return
        self._blobs[key] = _Blob(open=None, failed=True)
        self._wake_sharing()

    # -- what the download reads -----------------------------------------------------------------

    def blobs(self) -> Iterator[str]:
        """The blobs shared out (or once shared out) through this gate."""
        return iter(list(self._blobs))

    def open_ranges(self, key: str) -> RangeSet | None:
        """The bytes of a gated blob mirrors may serve; None: all (not gated, or let go)."""
        blob = self._blobs.get(key)
        return None if blob is None or blob.open is None else blob.open.copy()

    def take_lan(self, key: str) -> tuple[RangeSet, RangeSet]:
        """(to rewrite, arrived) since the last take: peers will write the first (before
        the second, which holds bytes that arrived since)."""
        blob = self._blobs.get(key)
        if blob is None:
            return RangeSet(), RangeSet()
        news = blob.rewrite, blob.arrived
        blob.rewrite, blob.arrived = RangeSet(), RangeSet()
        return news

    def piece_hashes(self, key: str, piece: int) -> list[tuple[int, int, bytes]]:
        """(start, stop, SHA-1 of each ``piece``-byte piece) of the units of ``key`` the
        agent holds, in pieces of that size."""
        blob = self._blobs.get(key)
        if blob is None:
            return []
        return sorted((a, b, h) for (a, b, p), h in blob.pieces.items() if p == piece)

    # -- what sharing reads ----------------------------------------------------------------------

    def held(self) -> set[str] | None:
        """The gated blobs the download holds; None until it started."""
        return None if self._held is None else set(self._held)

    def gated(self, key: str) -> bool:
        """Is this blob shared out now (gated, not let go, its digest not failed)?"""
        blob = self._blobs.get(key)
        return blob is not None and blob.open is not None

    def covered(self, key: str, start: int, stop: int) -> bool:
        """Are these bytes of a shared blob on the download's disk?"""
        blob = self._live(key)
        return blob is not None and blob.done.covers(start, stop)

    def failed(self, key: str) -> bool:
        """Did the shared copy of this blob fail its digest?"""
        blob = self._blobs.get(key)
        return blob is not None and blob.failed

    def _live(self, key: str) -> _Blob | None:
        blob = self._blobs.get(key)
        return None if blob is None or blob.failed else blob
