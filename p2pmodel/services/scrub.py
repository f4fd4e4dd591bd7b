"""``Scrubber``: ``serve`` re-checks its stored blobs now and then, at low priority (trio).

Theory of operation. Verified blobs are read-only, but a disk can still change them, and
libtorrent's resume data skips checking on a re-add. So the agent walks its store one blob at
a time, every ``every`` seconds, hashing each against its digest in a worker thread and then
resting ``rest`` times as long as the hash took (a duty cycle of 1 / (1 + rest): the store's
disk and a core stay mostly free for gets and peers). A blob that no longer matches goes to
``rotten`` (``GetService.rotten``: unseeded, removed, fetched again when next wanted). A blob
removed meanwhile (``rm``, the cap) is skipped.
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


class Scrubber:
    def __init__(
        self,
        store: Store,
        rotten: Callable[[str], None],
        *,
        every: float = SCRUB_EVERY,
        rest: float = REST,
    ) -> None:
        self.store = store
        self.rotten = rotten
        self.every = every
        self.rest = rest
        self.checked = 0  # blobs hashed since the agent started
        self.bad = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.every)
            await self.scrub()

    async def scrub(self) -> int:
        """One pass over the store; returns how many blobs were found rotten."""
        bad = 0
        blobs = await trio.to_thread.run_sync(lambda: list(self.store.verified_blobs()))
        for digest, size in blobs:
            path = self.store.blob_path(digest)
            t0 = trio.current_time()
            try:
                got = await trio.to_thread.run_sync(digest_file, path, algorithm(digest))
                actual = path.stat().st_size
            except OSError:
                continue  # removed meanwhile
            self.checked += 1
            if got != digest or actual != size:
                bad += 1
                self.bad += 1
                self.rotten(digest)
            await trio.sleep(self.rest * (trio.current_time() - t0))
        if bad:
            log.warning("scrub: %d of %d stored blobs failed their digest", bad, len(blobs))
        return bad
