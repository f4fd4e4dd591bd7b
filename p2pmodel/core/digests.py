"""Upstream digests (pure): ``sha256:<hex>`` (LFS files) and ``gitsha1:<hex>`` (git blob ids).

``BlobHasher`` computes a blob's upstream digest and (unless told not to: a blob the office
shares out has its units' piece hashes already) its v1 torrent piece hashes in one pass, fed in
blocks of any size, so a download can hash what is on disk while the rest still arrives.
Reading files is ``adapters.hashing``'s job.
"""

from __future__ import annotations

import hashlib
from typing import Protocol


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


class BlobHasher:
    """A blob's upstream digest and (``pieces``) its v1 torrent piece hashes, fed in order,
    in blocks of any size; ``pos`` is how many bytes it has seen."""

    def __init__(self, algo: str, size: int, piece: int, pieces: bool = True) -> None:
        self.algo, self.size, self.piece = algo, size, piece
        self.pieces = pieces  # False: the digest only (SHA-1 of pieces is ~1 CPU-s per GiB)
        self.pos = 0
        self._h = new_hasher(algo, size)
        self._pieces = bytearray()
        self._ph = hashlib.sha1(usedforsecurity=False)
        self._in_piece = 0

    def update(self, block: memoryview | bytes) -> None:
        self._h.update(block)
        if not self.pieces:
            self.pos += len(block)
            return
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

    def result(self) -> tuple[str, bytes]:
        pieces = bytes(self._pieces)
        if self._in_piece:
            pieces += self._ph.digest()
        return f"{self.algo}:{self._h.hexdigest()}", pieces
