"""Upstream digests: ``sha256:<hex>`` (LFS files) and ``gitsha1:<hex>`` (git blob ids).

Hashing reads with ``readinto`` into one reused 8 MiB buffer, which runs at OpenSSL speed with
SHA-NI (~0.95 GB/s here). These functions block: call them from a worker thread.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

BUFFER = 8 * 1024 * 1024


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


def algorithm(digest: str) -> str:
    return digest.split(":", 1)[0]


def hex_part(digest: str) -> str:
    return digest.split(":", 1)[1]


def new_hasher(algo: str, size: int) -> Hasher:
    if algo == "sha256":
        return hashlib.sha256()
    if algo == "gitsha1":
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\0" % size)
        return h
    raise ValueError(f"unknown digest algorithm {algo!r}")


def digest_bytes(algo: str, data: bytes) -> str:
    h = new_hasher(algo, len(data))
    h.update(data)
    return f"{algo}:{h.hexdigest()}"


def _blocks(path: Path, size: int) -> Iterator[memoryview]:
    """The file's bytes in views of one reused buffer (valid until the next one)."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(min(BUFFER, max(size, 1)))
        view = memoryview(buf)
        while n := f.readinto(buf):
            yield view[:n]


def digest_file(path: Path, algo: str, size: int | None = None) -> str:
    """Digest of a file's content (blocking). ``size`` defaults to the file's size."""
    if size is None:
        size = os.stat(path).st_size
    h = new_hasher(algo, size)
    for block in _blocks(path, size):
        h.update(block)
    return f"{algo}:{h.hexdigest()}"


class BlobHasher:
    """A blob's upstream digest and its v1 torrent piece hashes, fed in order, in blocks of
    any size (so a download can hash what is on disk while the rest still arrives)."""

    def __init__(self, algo: str, size: int, piece: int) -> None:
        self.algo, self.size, self.piece = algo, size, piece
        self.pos = 0
        self._h = new_hasher(algo, size)
        self._pieces = bytearray()
        self._ph = hashlib.sha1(usedforsecurity=False)
        self._in_piece = 0

    def update(self, block: memoryview | bytes) -> None:
        self._h.update(block)
        pos, n = 0, len(block)
        while pos < n:
            take = min(n - pos, self.piece - self._in_piece)
            self._ph.update(block[pos : pos + take])
            self._in_piece += take
            pos += take
            if self._in_piece == self.piece:
                self._pieces += self._ph.digest()
                self._ph = hashlib.sha1(usedforsecurity=False)
                self._in_piece = 0
        self.pos += n

    def update_from(self, path: Path, stop: int) -> None:
        """Hash ``path[self.pos:stop]`` (blocking)."""
        with open(path, "rb", buffering=0) as f:
            buf = bytearray(min(BUFFER, max(stop - self.pos, 1)))
            view = memoryview(buf)
            while self.pos < stop:
                want = min(len(buf), stop - self.pos)
                n = os.preadv(f.fileno(), [view[:want]], self.pos)
                if n == 0:
                    raise OSError(f"{path} ends at byte {self.pos}, before {stop}")
                self.update(view[:n])

    def result(self) -> tuple[str, bytes]:
        pieces = bytes(self._pieces)
        if self._in_piece:
            pieces += self._ph.digest()
        return f"{self.algo}:{self._h.hexdigest()}", pieces


def hash_blob(path: Path, algo: str, size: int, piece: int) -> tuple[str, bytes]:
    """One read of a blob: its upstream digest and the SHA-1 of each ``piece``-byte piece
    (the v1 torrent piece hashes). Blocking."""
    h = BlobHasher(algo, size, piece)
    for block in _blocks(path, size):
        h.update(block)
    return h.result()


def piece_hashes(path: Path, start: int, stop: int, piece: int) -> bytes:
    """SHA-1 of each ``piece``-byte piece of ``path[start:stop]`` (``start`` on a piece
    boundary; the last piece may be short). Blocking."""
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
