"""The store's low-priority scrub: a blob the disk changed is found, reported and removed;
good blobs stay; the scrub rests between blobs (fake clock, real files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio

from p2pmodel.adapters.store import Store
from p2pmodel.services.scrub import Scrubber


def put(store: Store, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.put_blob_bytes(digest, data)
    return digest


async def test_a_rotten_blob_is_reported_and_good_ones_stay(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """One pass hashes every blob; the one whose bytes changed goes to ``rotten`` (which
    removes it), the others stay; each blob is followed by a rest of ``rest`` times its
    hashing time."""
    store = Store(tmp_path)
    good = put(store, b"a" * 300_000)
    bad = put(store, b"b" * 300_000)
    path = store.blob_path(bad)
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.seek(1234)
        f.write(b"X")
    reported: list[str] = []

    def rotten(digest: str) -> None:
        reported.append(digest)
        store.remove_blob(digest)

    scrub = Scrubber(store, rotten, every=3600.0, rest=9.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(scrub.run)
        with trio.fail_after(7200):
            while scrub.checked < 2:  # noqa: ASYNC110 - the fake clock drives it
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert reported == [bad]
    assert scrub.bad == 1
    assert store.has_blob(good, 300_000)
    assert not path.exists()
    assert trio.current_time() >= 3600.0  # the first pass waited its interval
