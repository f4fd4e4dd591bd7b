"""``Scrubber``: ``serve`` re-checks its stored blobs now and then, at low priority (trio).

Theory of operation. Verified blobs are read-only, but a disk can still change them, and
libtorrent's resume data skips checking on a re-add. So the agent walks its store one blob at
a time, every ``every`` seconds, hashing each against its digest in a worker thread and then
resting ``rest`` times as long as the hash took (a duty cycle of 1 / (1 + rest): the store's
disk and a core stay mostly free for gets and peers). A blob that no longer matches goes to
``rotten`` (``GetService.rotten``: unseeded, removed, fetched again when next wanted). A blob
removed meanwhile (``rm``, the cap) is skipped.

A peer that got pieces of one of our blobs that failed their hash says so (``wire.Suspect``):
``suspect`` queues that blob for a check of our own copy, believing nothing else; each blob at
most once per ``COOLDOWN`` and at most ``QUEUE`` waiting, so reports cost a peer more than us.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..adapters.hashing import digest_file
from ..adapters.store import Store
from ..core.digests import algorithm

log = logging.getLogger(__name__)
SCRUB_EVERY = 24 * 3600.0
REST = 9.0
COOLDOWN = 600.0  # seconds before a blob reported again is checked again
QUEUE = 16


class Scrubber:
    def __init__(
        self,
        store: Store,
        rotten: Callable[[str], None],
        *,
        every: float | None = SCRUB_EVERY,
        rest: float = REST,
    ) -> None:
        self.store = store
        self.rotten = rotten
        self.every = every  # None: only blobs peers report are checked
        self.rest = rest
        self.checked = 0  # blobs hashed since the agent started
        self.bad = 0
        self._asked, self._suspects = trio.open_memory_channel[str](QUEUE)
        self._last: dict[str, float] = {}  # blob -> when a report of it was last queued

    def suspect(self, digest: str, now: float) -> bool:
        """A peer says pieces of ``digest`` we served failed: queue a check of our copy
        (False: checked lately, not ours, or too many waiting)."""
        self._last = {d: t for d, t in self._last.items() if now - t < COOLDOWN}
        if digest in self._last or not self.store.blob_path(digest).exists():
            return False
        try:
            self._asked.send_nowait(digest)
        except trio.WouldBlock:
            return False
        self._last[digest] = now
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.every is not None:
                nursery.start_soon(self._every, self.every)
            task_status.started()
            async for digest in self._suspects:
                if await self.check(digest):
                    log.warning("scrub: %s, reported by a peer, failed its digest", digest)

    async def _every(self, every: float) -> None:
        while True:
            await trio.sleep(every)
            await self.scrub()

    async def check(self, digest: str) -> bool:
        """Hash one stored blob; True if it was rotten (and went to ``rotten``)."""
        path = self.store.blob_path(digest)
        try:
            got = await trio.to_thread.run_sync(digest_file, path, algorithm(digest))
        except OSError:
            return False  # removed meanwhile
        self.checked += 1
        if got == digest:
            return False
        self.bad += 1
        self.rotten(digest)
        return True

    async def scrub(self) -> int:
        """One pass over the store; returns how many blobs were found rotten."""
        bad = 0
        blobs = await trio.to_thread.run_sync(lambda: list(self.store.verified_blobs()))
        for digest, _ in blobs:
            t0 = trio.current_time()
            bad += await self.check(digest)
            await trio.sleep(self.rest * (trio.current_time() - t0))
        if bad:
            log.warning("scrub: %d of %d stored blobs failed their digest", bad, len(blobs))
        return bad
