"""Deterministic blob torrents (pure): any two agents holding a blob derive the same info-hash.

The info dictionary of a blob is a function of its bytes alone: a single-file v1 torrent named
after the digest's hex, private, with a piece size that is a fixed function of the size. The
piece hashes are computed in the same read that checks the upstream digest, so a verified blob
is ready to seed without a second pass.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .digests import hex_part

KiB = 1024
MIN_PIECE = 256 * KiB
MAX_PIECE = 16 * 1024 * KiB
TARGET_PIECES = 1000


def piece_size(size: int) -> int:
    """The smallest power of two >= size/1000, clamped to [256 KiB, 16 MiB]."""
    want = -(-size // TARGET_PIECES)
    p = MIN_PIECE
    while p < want and p < MAX_PIECE:
        p *= 2
    return p


def info_dict(digest: str, size: int, pieces: bytes) -> dict[bytes, Any]:
    return {
        b"length": size,
        b"name": hex_part(digest).encode(),
        b"piece length": piece_size(size),
        b"pieces": pieces,
        b"private": 1,
    }


def bencode(obj: Any) -> bytes:
    out = bytearray()
    _bencode(obj, out)
    return bytes(out)


def _bencode(obj: Any, out: bytearray) -> None:
    if isinstance(obj, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(obj, int):
        out += b"i%de" % obj
    elif isinstance(obj, bytes):
        out += b"%d:" % len(obj) + obj
    elif isinstance(obj, str):
        _bencode(obj.encode(), out)
    elif isinstance(obj, list):
        out += b"l"
        for x in obj:
            _bencode(x, out)
        out += b"e"
    elif isinstance(obj, dict):
        out += b"d"
        for k in sorted(obj):
            _bencode(k, out)
            _bencode(obj[k], out)
        out += b"e"
    else:
        raise TypeError(f"cannot bencode {type(obj).__name__}")


def info_bytes(digest: str, size: int, pieces: bytes) -> bytes:
    return bencode(info_dict(digest, size, pieces))


def info_hash(info: bytes) -> str:
    return hashlib.sha1(info, usedforsecurity=False).hexdigest()


def expected_shape(info: bytes, digest: str, size: int) -> bool:
    """Does ``info`` (e.g. from a peer) have exactly the shape our rule gives this blob?

    Its piece hashes cannot be checked before the data arrives; the digest check does that."""
    n = -(-size // piece_size(size)) if size else 0
    head = info_bytes(digest, size, b"\0" * 20 * n)
    return len(info) == len(head) and _strip_pieces(info) == _strip_pieces(head)


def _strip_pieces(info: bytes) -> bytes:
    marker = b"6:pieces"
    i = info.find(marker)
    if i < 0:
        return info
    j = info.index(b":", i + len(marker))
    length = int(info[i + len(marker) : j])
    return info[: j + 1] + info[j + 1 + length :]
