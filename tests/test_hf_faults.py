"""Faults behind the agent's Hugging Face endpoint, seen by a real HTTP client on loopback:
a file no source can provide answers an HTTP error that carries the cause, never a 200 that
hangs; a blob that rotted in the store is never sent whole."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from p2pmodel.testing.mirror import Faults
from p2pmodel.testing.models import Repo

from .test_hfendpoint import repos, start_endpoint

__all__ = ["repos"]  # the module fixture, shared


async def test_a_file_every_mirror_was_banned_for_is_a_502_at_once(
    nursery: trio.Nursery, tmp_path: Path, repos: dict[str, Repo]
) -> None:
    """The only mirror sends bad bytes: the first GET is cut short (the digest failed, the
    mirror is banned for the file); every later GET answers 502 with the cause in
    X-Error-Message before any body, never a 200 that sends nothing."""
    ep = await start_endpoint(nursery, tmp_path, repos, Faults(corrupt=True))()
    repo = repos["model"]
    lfs = next(f for f in repo.files if f.lfs)
    url = f"{ep.url}/{repo.repo_id}/resolve/main/{lfs.path}"
    async with httpx.AsyncClient(timeout=httpx.Timeout(20.0)) as http:
        with trio.fail_after(60):
            cut = 0
            while True:  # until the mirror is banned for it: at most a few cut-short bodies
                try:
                    async with http.stream("GET", url) as r:
                        if r.status_code == 502:
                            break
                        assert r.status_code == 200
                        async for _ in r.aiter_bytes():
                            pass
                except httpx.RemoteProtocolError:
                    cut += 1
                    assert cut <= 3, "the mirror was never banned for the file"
                else:
                    raise AssertionError("a body of bad bytes was sent whole")
            assert cut >= 1
            for _ in range(3):
                r = await http.get(url)
                assert r.status_code == 502, (r.status_code, r.headers)
                assert "mismatch" in r.headers["x-error-message"], r.headers


async def test_a_rotten_stored_blob_is_cut_short_dropped_and_fetched_again(
    nursery: trio.Nursery, tmp_path: Path, repos: dict[str, Repo]
) -> None:
    """A byte flipped in a stored blob: the endpoint checks each piece before sending it, so
    the response ends before the bad piece (never a complete wrong file); the blob leaves the
    store and the swarm, and the next GET fetches it again and is exact."""
    ep = await start_endpoint(nursery, tmp_path, repos)()
    repo = repos["model"]
    lfs = next(f for f in repo.files if f.lfs)
    url = f"{ep.url}/{repo.repo_id}/resolve/main/{lfs.path}"
    want = lfs.data_path.read_bytes()
    async with httpx.AsyncClient(timeout=httpx.Timeout(20.0)) as http:
        with trio.fail_after(60):
            assert (await http.get(url)).content == want
            store = ep.agent.store
            digest = f"sha256:{lfs.sha256}"
            blob = store.blob_path(digest)
            seeding = ep.agent.swarm.statistics()["seeding"]
            blob.chmod(0o644)
            with blob.open("r+b") as f:  # the disk rots one byte in the second piece
                f.seek(len(want) // 2 + 7)
                old = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([old[0] ^ 0xFF]))
            got = b""
            with pytest.raises(httpx.RemoteProtocolError):
                async with http.stream("GET", url) as r:
                    assert r.status_code == 200
                    async for chunk in r.aiter_bytes():
                        got += chunk
            assert len(got) < len(want) and want.startswith(got)
            assert not store.has_blob(digest, len(want))
            assert ep.agent.swarm.statistics()["seeding"] == seeding - 1
            served = ep.served()
            assert (await http.get(url)).content == want
            assert ep.served() - served >= len(want)
            assert store.has_blob(digest, len(want))


def test_a_large_stored_blob_without_torrent_info_is_read_a_block_at_a_time(
    tmp_path: Path,
) -> None:
    """With no piece hashes to check a large stored blob against, its bytes are sent as they
    are (logged), a block at a time: never the whole file in memory."""
    import hashlib
    import os

    from p2pmodel.core.manifest import FileEntry
    from p2pmodel.services.get.reader import READ, WHOLE, StoredPieces

    data = os.urandom(WHOLE + 3 * READ + 5)
    path = tmp_path / "blob"
    path.write_bytes(data)
    entry = FileEntry("big.bin", len(data), "sha256:" + hashlib.sha256(data).hexdigest())
    fd = os.open(path, os.O_RDONLY)
    try:
        pieces = StoredPieces(fd, entry, None)
        got, pos = bytearray(), 0
        while pos < len(data):
            chunk = pieces.read(pos, 4 * READ)
            assert 0 < len(chunk) <= READ and len(pieces.data) <= READ
            got += chunk
            pos += len(chunk)
        assert bytes(got) == data
    finally:
        os.close(fd)
