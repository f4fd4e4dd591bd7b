"""Deterministic torrents (pure): blob torrents and the unit torrents of a shared blob."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import libtorrent as lt
import pytest

from p2pmodel.adapters.hashing import piece_hashes
from p2pmodel.core.sharing import SEGMENT
from p2pmodel.core.torrents import (
    NO_HASH,
    info_hash,
    piece_size,
    pieces_of,
    unit_hashes,
    unit_info,
    unit_piece_size,
    unit_pieces,
    unit_shape,
)

MiB = 1024 * 1024
DIGEST = "sha256:" + "ab" * 32


def test_unit_piece_size_targets_2048_pieces_within_bounds():
    """Unit torrents' pieces: ~2048 per file, 1..16 MiB, never more than the segment."""
    assert unit_piece_size(100 * MiB, 64 * MiB) == MiB
    assert unit_piece_size(4_000 * MiB, 64 * MiB) == 2 * MiB  # 2000 pieces, not 4000
    assert unit_piece_size(20_000 * MiB, 64 * MiB) == 16 * MiB  # 1250 pieces
    assert unit_piece_size(10**15, 64 * MiB) == 16 * MiB  # the blob's piece, at most 16 MiB
    assert unit_piece_size(10**15, 8 * MiB) == 8 * MiB  # never more than the segment
    assert unit_piece_size(100 * MiB, 256 * 1024) == 256 * 1024


def test_a_blobs_pieces_are_its_units_pieces():
    """With the default segment, a blob's torrent has the pieces of its unit torrents, so its
    piece list is the concatenation of the units' hashes."""
    for size in (5, 3 * MiB + 1, 100 * MiB, 20_000 * MiB, 10**12):
        assert piece_size(size) == unit_piece_size(size, SEGMENT)
        assert SEGMENT % piece_size(size) == 0


def test_unit_hashes_are_the_units_slice_of_the_piece_list():
    """``unit_hashes`` takes a unit's own piece hashes out of its unit torrent's info."""
    size, piece = 10 * MiB, MiB
    hashes = os.urandom(20 * 3)
    info = unit_info("sha256:" + "cd" * 32, size, 1, 4 * MiB, 7 * MiB, piece, hashes)
    assert unit_hashes(info, 4 * MiB, 7 * MiB, piece) == hashes
    assert len(pieces_of(info)) == 20 * 10


def test_piece_hashes_of_a_range(tmp_path: Path):
    data = os.urandom(5 * MiB + 123)
    path = tmp_path / "f"
    path.write_bytes(data)
    got = piece_hashes(path, 2 * MiB, len(data), MiB)
    want = b"".join(
        hashlib.sha1(data[p : min(p + MiB, len(data))]).digest()
        for p in range(2 * MiB, len(data), MiB)
    )
    assert got == want and len(got) == 20 * 4


def test_unit_info_has_zero_hashes_outside_the_unit_and_libtorrent_reads_it():
    size, piece = 10 * MiB + 5, MiB
    span = unit_pieces(4 * MiB, 8 * MiB, piece)
    hashes = b"".join(bytes([i]) * 20 for i in span)
    info = unit_info(DIGEST, size, 1, 4 * MiB, 8 * MiB, piece, hashes)
    ti = lt.torrent_info(lt.bdecode(b"d4:info" + info + b"e"))
    assert ti.num_pieces() == 11 and ti.total_size() == size and ti.name() == "ab" * 32
    assert ti.hash_for_piece(4) == bytes([4]) * 20 and ti.hash_for_piece(3) == NO_HASH
    assert unit_shape(info, DIGEST, size, 1, 4 * MiB, 8 * MiB, piece)


def test_units_of_one_blob_have_distinct_info_hashes_and_derive_alike():
    size, piece = 3 * MiB, MiB
    same = [unit_info(DIGEST, size, i, i * MiB, (i + 1) * MiB, piece, NO_HASH) for i in range(3)]
    assert len({info_hash(i) for i in same}) == 3
    again = unit_info(DIGEST, size, 1, MiB, 2 * MiB, piece, NO_HASH)
    assert info_hash(again) == info_hash(same[1])


@pytest.mark.parametrize(
    "args",
    [
        (DIGEST, 10 * MiB, 2, 4 * MiB, 8 * MiB, MiB),  # another index
        (DIGEST, 10 * MiB, 1, 0, 4 * MiB, MiB),  # another range
        (DIGEST, 11 * MiB, 1, 4 * MiB, 8 * MiB, MiB),  # another size
        ("sha256:" + "cd" * 32, 10 * MiB, 1, 4 * MiB, 8 * MiB, MiB),  # another blob
    ],
)
def test_unit_shape_rejects_any_other_unit(args):
    info = unit_info(DIGEST, 10 * MiB, 1, 4 * MiB, 8 * MiB, MiB, b"\1" * 80)
    assert unit_shape(info, DIGEST, 10 * MiB, 1, 4 * MiB, 8 * MiB, MiB)
    assert not unit_shape(info, *args)


def test_unit_shape_rejects_hashes_outside_the_unit():
    """A peer cannot make us fetch pieces outside the unit it announced."""
    good = unit_info(DIGEST, 10 * MiB, 1, 4 * MiB, 8 * MiB, MiB, b"\1" * 80)
    bad = good.replace(NO_HASH, b"\2" * 20, 1)
    assert len(bad) == len(good)
    assert not unit_shape(bad, DIGEST, 10 * MiB, 1, 4 * MiB, 8 * MiB, MiB)
