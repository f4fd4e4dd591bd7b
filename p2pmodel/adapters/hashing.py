"""Hashing files (blocking: call from a worker thread).

Reads with ``readinto``/``preadv`` into one reused 8 MiB buffer, which runs at OpenSSL speed with
SHA-NI (~0.95 GB/s here).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..core.digests import BlobHasher, new_hasher

BUFFER = 8 * 1024 * 1024


def _blocks(path: Path, size: int) -> Iterator[memoryview]:
    """The file's bytes in views of one reused buffer (valid until the next one)."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(min(BUFFER, max(size, 1)))
        view = memoryview(buf)
        while n := f.readinto(buf):
            yield view[:n]


def digest_file(path: Path, algo: str, size: int | None = None) -> str:
    """Digest of a file's content. ``size`` defaults to the file's size."""
    if size is None:
        size = os.stat(path).st_size
    h = new_hasher(algo, size)
    for block in _blocks(path, size):
        h.update(block)
    return f"{algo}:{h.hexdigest()}"


def hash_into(h: BlobHasher, path: Path, stop: int) -> None:
    """Feed ``path[h.pos:stop]`` to ``h``."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(min(BUFFER, max(stop - h.pos, 1)))
        view = memoryview(buf)
        while h.pos < stop:
            want = min(len(buf), stop - h.pos)
            n = os.preadv(f.fileno(), [view[:want]], h.pos)
            if n == 0:
                raise OSError(f"{path} ends at byte {h.pos}, before {stop}")
            h.update(view[:n])


def hash_blob(path: Path, algo: str, size: int, piece: int) -> tuple[str, bytes]:
    """One read of a blob: its upstream digest and the SHA-1 of each ``piece``-byte piece
    (the v1 torrent piece hashes)."""
    h = BlobHasher(algo, size, piece)
    for block in _blocks(path, size):
        h.update(block)
    return h.result()


def piece_hashes(path: Path, start: int, stop: int, piece: int) -> bytes:
    """SHA-1 of each ``piece``-byte piece of ``path[start:stop]`` (``start`` on a piece
    boundary; the last piece may be short)."""
    out = bytearray()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(piece)
        view = memoryview(buf)
        for pos in range(start, stop, piece):
            want = min(piece, stop - pos)
            got = 0
            while got < want:
                n = os.preadv(f.fileno(), [view[got:want]], pos + got)
                if n == 0:
                    raise OSError(f"{path} ends before byte {stop}")
                got += n
            out += hashlib.sha1(view[:want], usedforsecurity=False).digest()
    return bytes(out)
