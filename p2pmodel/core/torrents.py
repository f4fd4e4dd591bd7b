"""Deterministic blob torrents (pure): any two agents holding a blob derive the same info-hash.

The info dictionary of a blob is a function of its bytes alone: a single-file v1 torrent named
after the digest's hex, private, with a piece size that is a fixed function of the size, the
same as the pieces of its unit torrents (below) with the default segment. So the piece list of
a blob the office shared out is the concatenation of its units' piece hashes, which the agent
computed (units from mirrors) or libtorrent checked (units from peers): verifying it needs
only the upstream digest's pass. A blob fetched whole from mirrors gets its piece hashes in the
same read that checks the digest; either way a verified blob is ready to seed without a
second pass.

With an office key, every info dict ends with one more field (``keyed``), so that its
info-hash is one nobody outside the office can compute, while every agent of the office
derives the same one:

- by default ``x-office-tag``, an HMAC-SHA256 of the open dict under the office's torrent
  secret (``OfficeKey.torrent_secret``): plain torrents, which the swarm exchanges only over
  protocol encryption (MSE), whose handshake needs the info-hash on both ends and never
  shows it. One tag per torrent: a dict or info-hash seen tells nothing about another;
- with ``swarm_tls``, ``ssl-cert``, the office CA's certificate: libtorrent then makes it an
  SSL torrent, exchanged only with peers holding a certificate that CA signed.

The store keeps the open form (``unkeyed``), so a new key needs no re-hash.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from .digests import hex_part

KiB = 1024


@dataclass(frozen=True)
class SwarmFetch:
    """How fetching a torrent from peers ended (the swarm adapter's answer)."""

    ok: bool
    why: str = ""
    downloaded: int = 0  # payload bytes received from peers
    bad_pieces: int = 0  # pieces that failed their hash (a peer sent wrong bytes)
    by_host: dict[str, int] = field(default_factory=dict)  # payload bytes per peer address
    seconds: float = 0.0  # how long the fetch took


MIN_PIECE = 1024 * KiB
MAX_PIECE = 16 * 1024 * KiB  # the default segment: unit torrents' pieces never exceed it
TARGET_PIECES = 2048


def piece_size(size: int) -> int:
    """The smallest power of two >= size/2048, clamped to [1 MiB, 16 MiB]: at most ~40 KB of
    piece hashes per info dict, which every unit torrent of the file carries (an 8 GiB file
    is 512 of them; with 8192 pieces an agent's RSS passed 200 MB)."""
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


# -- unit torrents ------------------------------------------------------------------------------
#
# While an office shares a blob out (``sharing``), each unit (a byte range) that one agent
# fetched from a mirror spreads as a torrent of its own, before anyone has the whole blob. Its
# info dictionary describes the whole file (so libtorrent writes every unit at its place in
# the one partial file: no second copy), with the real SHA-1 of the unit's pieces and twenty
# zero bytes for every other piece; those pieces get priority 0 and are never requested. The
# info is a function of the unit's bytes alone, so every holder derives the same info-hash.

UNIT_KEY = b"p2pmodel unit"
NO_HASH = b"\0" * 20


def unit_piece_size(size: int, segment: int) -> int:
    """Pieces of unit torrents: the blob's (``piece_size``), at most the segment (a power of
    two, so units start on a piece boundary)."""
    return max(min(piece_size(size), segment), 16 * KiB)


def unit_pieces(start: int, stop: int, piece: int) -> range:
    return range(start // piece, -(-stop // piece))


def unit_info(
    digest: str,
    size: int,
    index: int,
    start: int,
    stop: int,
    piece: int,
    hashes: bytes,
    ca: Keying = None,
) -> bytes:
    """The info dict of one unit; ``hashes`` are the SHA-1s of its pieces (``ca``: what
    keys the office's torrents, see ``keyed``)."""
    n = -(-size // piece)
    first = start // piece
    pieces = NO_HASH * first + hashes + NO_HASH * (n - first - len(hashes) // 20)
    info = bencode(
        {
            b"length": size,
            b"name": hex_part(digest).encode(),
            b"piece length": piece,
            b"pieces": pieces,
            b"private": 1,
            UNIT_KEY: [index, start, stop],
        }
    )
    return keyed(info, ca)


def unit_shape(
    info: bytes,
    digest: str,
    size: int,
    index: int,
    start: int,
    stop: int,
    piece: int,
    ca: Keying = None,
) -> bool:
    """Is ``info`` (from a peer) a unit torrent of exactly this shape, keyed for this office?
    Zero hashes outside the unit; its own piece hashes are checked by libtorrent as the bytes
    arrive."""
    try:
        info = unkeyed(info, ca)
    except ValueError:
        return False
    span = unit_pieces(start, stop, piece)
    head = unit_info(digest, size, index, start, stop, piece, NO_HASH * len(span))
    if len(info) != len(head) or _strip_pieces(info) != _strip_pieces(head):
        return False
    hashes = pieces_of(info)
    return hashes[: 20 * span.start] == NO_HASH * span.start and hashes[
        20 * span.stop :
    ] == NO_HASH * (len(hashes) // 20 - span.stop)


def _pieces_span(info: bytes) -> tuple[int, int] | None:
    """Where the ``pieces`` string's bytes stand in a bencoded info dict (None: it has none)."""
    marker = b"6:pieces"
    i = info.find(marker)
    if i < 0:
        return None
    j = info.index(b":", i + len(marker))
    return j + 1, j + 1 + int(info[i + len(marker) : j])


def pieces_of(info: bytes) -> bytes:
    """The piece hashes of an info dict (all of them, 20 bytes each)."""
    span = _pieces_span(info)
    return b"" if span is None else info[span[0] : span[1]]


def piece_length_of(info: bytes) -> int | None:
    """The ``piece length`` of a bencoded info dict (None: it has none)."""
    marker = b"12:piece lengthi"
    i = info.find(marker)
    if i < 0:
        return None
    j = info.find(b"e", i + len(marker))
    try:
        return int(info[i + len(marker) : j])
    except ValueError:
        return None


def bad_piece(data: bytes, first: int, piece: int, hashes: bytes) -> int | None:
    """The index of the first piece of ``data`` (pieces ``first``, ``first + 1``... of
    ``piece`` bytes, the last one possibly short) whose SHA-1 is not its hash in ``hashes``;
    None when all match. A piece with no hash there counts as bad."""
    for k in range(0, len(data), piece):
        index = first + k // piece
        want = hashes[20 * index : 20 * index + 20]
        if hashlib.sha1(data[k : k + piece], usedforsecurity=False).digest() != want:
            return index
    return None


def unit_hashes(info: bytes, start: int, stop: int, piece: int) -> bytes:
    """The SHA-1s of the pieces of ``[start, stop)`` in a unit torrent's info dict."""
    span = unit_pieces(start, stop, piece)
    return pieces_of(info)[20 * span.start : 20 * span.stop]


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


CERT_KEY = b"ssl-cert"  # sorts after every other key of our info dicts: it goes last
TAG_KEY = b"x-office-tag"  # the same
TAG_BYTES = 32


@dataclass(frozen=True)
class TorrentSecret:
    """An office's torrent secret (``OfficeKey.torrent_secret``). Its ``repr`` shows nothing:
    with it anyone computes the office's info-hashes, which open connections to its agents."""

    key: bytes = field(repr=False)

    def tag(self, info: bytes) -> bytes:
        """The ``x-office-tag`` of the open info dict ``info``."""
        return hmac.new(self.key, info, hashlib.sha256).digest()


# What keys an office's info dicts: its CA's PEM (SSL torrents, ``swarm_tls``), its torrent
# secret (the default), or None (an open office: info dicts as the bytes alone make them).
Keying = bytes | TorrentSecret | None


def keyed(info: bytes, ca: Keying) -> bytes:
    """The open info dict ``info`` as a torrent of the office keyed by ``ca`` (None: an open
    office, ``info`` unchanged). The field goes last, as bencoding's key order wants."""
    if ca is None:
        return info
    if isinstance(ca, TorrentSecret):
        return info[:-1] + bencode(TAG_KEY) + bencode(ca.tag(info)) + b"e"
    return info[:-1] + bencode(CERT_KEY) + bencode(ca) + b"e"


def unkeyed(info: bytes, ca: Keying) -> bytes:
    """The open form of an info dict made by ``keyed(open, ca)``; ``ValueError`` for one that
    is not (another office's, or one keyed another way)."""
    if ca is None:
        return info
    if isinstance(ca, TorrentSecret):
        cut = len(bencode(TAG_KEY)) + len(bencode(bytes(TAG_BYTES))) + 1
        head = info[:-cut] + b"e"
        if len(info) > cut and hmac.compare_digest(keyed(head, ca), info):
            return head
        raise ValueError("not an info dict of this office")
    tail = bencode(CERT_KEY) + bencode(ca) + b"e"
    if not info.endswith(tail):
        raise ValueError("not an info dict of this office")
    return info[: -len(tail)] + b"e"


def keying_of(info: bytes) -> str:
    """How an info dict is keyed, by its last field alone (its value is not checked), in words
    for a message: agents whose ``swarm_tls`` differ cannot exchange blobs."""
    if info[: -1 - TAG_BYTES].endswith(bencode(TAG_KEY) + b"%d:" % TAG_BYTES):
        return "tagged torrents"
    if bencode(CERT_KEY) in info:
        return "SSL torrents (swarm_tls)"
    return "open torrents"


# The names of the days when only the CA keyed info dicts (the test fakes still use them).
with_cert = keyed
without_cert = unkeyed


def info_hash(info: bytes) -> str:
    return hashlib.sha1(info, usedforsecurity=False).hexdigest()


def expected_shape(info: bytes, digest: str, size: int, ca: Keying = None) -> bool:
    """Does ``info`` (e.g. from a peer) have exactly the shape our rule gives this blob (as a
    torrent of the office keyed by ``ca``)?

    Its piece hashes cannot be checked before the data arrives; the digest check does that."""
    try:
        info = unkeyed(info, ca)
    except ValueError:
        return False
    n = -(-size // piece_size(size)) if size else 0
    head = info_bytes(digest, size, b"\0" * 20 * n)
    return len(info) == len(head) and _strip_pieces(info) == _strip_pieces(head)


def _strip_pieces(info: bytes) -> bytes:
    span = _pieces_span(info)
    return info if span is None else info[: span[0]] + info[span[1] :]
