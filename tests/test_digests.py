"""Upstream digests of bytes and files (``p2pmodel.core.digests``)."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from p2pmodel.adapters.hashing import BUFFER, digest_file
from p2pmodel.core.digests import algorithm, digest_bytes, hex_part, new_hasher

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_GITSHA1 = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # `git hash-object /dev/null`
HELLO_SHA256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
HELLO_GITSHA1 = "ce013625030ba8dba906f756967f9e9ca394464a"  # `echo hello | git hash-object --stdin`


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.mark.parametrize(
    ("algo", "data", "expected"),
    [
        ("sha256", b"", EMPTY_SHA256),
        ("sha256", b"hello\n", HELLO_SHA256),
        ("gitsha1", b"", EMPTY_GITSHA1),
        ("gitsha1", b"hello\n", HELLO_GITSHA1),
    ],
)
def test_known_digests_of_bytes(algo: str, data: bytes, expected: str):
    """``digest_bytes`` gives the well-known sha256 and git blob ids, prefixed by algorithm."""
    assert digest_bytes(algo, data) == f"{algo}:{expected}"


@pytest.mark.parametrize(
    ("algo", "data", "expected"),
    [
        ("sha256", b"", EMPTY_SHA256),
        ("sha256", b"hello\n", HELLO_SHA256),
        ("gitsha1", b"", EMPTY_GITSHA1),
        ("gitsha1", b"hello\n", HELLO_GITSHA1),
    ],
)
def test_known_digests_of_files(tmp_path: Path, algo: str, data: bytes, expected: str):
    """``digest_file`` gives the same well-known digests, including for an empty file."""
    path = tmp_path / "f"
    path.write_bytes(data)
    assert digest_file(path, algo) == f"{algo}:{expected}"


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A file a little over 9 MiB, so hashing needs more than one 8 MiB buffer."""
    data = random.Random(0).randbytes(9 * 1024 * 1024 + 12345)
    assert len(data) > BUFFER
    path = tmp_path_factory.mktemp("big") / "blob"
    path.write_bytes(data)
    return path, data


def test_file_bigger_than_the_buffer_sha256(big: tuple[Path, bytes]):
    """A file larger than the read buffer hashes to hashlib's sha256 of its whole content."""
    path, data = big
    assert digest_file(path, "sha256") == "sha256:" + hashlib.sha256(data).hexdigest()
    assert digest_bytes("sha256", data) == digest_file(path, "sha256")


def test_file_bigger_than_the_buffer_gitsha1(big: tuple[Path, bytes]):
    """A file larger than the read buffer hashes to git's blob id of its whole content."""
    path, data = big
    assert digest_file(path, "gitsha1") == "gitsha1:" + git_blob_id(data)
    assert digest_bytes("gitsha1", data) == digest_file(path, "gitsha1")


@pytest.mark.parametrize("size", [1, BUFFER - 1, BUFFER, BUFFER + 1])
def test_file_sizes_around_the_buffer(tmp_path: Path, size: int):
    """Files of exactly, just under and just over the buffer size hash like their bytes."""
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    path = tmp_path / "f"
    path.write_bytes(data)
    for algo in ("sha256", "gitsha1"):
        assert digest_file(path, algo) == digest_bytes(algo, data)


def test_gitsha1_header_uses_the_given_size(tmp_path: Path):
    """An explicit ``size`` goes into the git blob header (the default is the file's size)."""
    path = tmp_path / "f"
    path.write_bytes(b"hello\n")
    assert digest_file(path, "gitsha1", size=6) == f"gitsha1:{HELLO_GITSHA1}"
    assert digest_file(path, "gitsha1", size=7) != f"gitsha1:{HELLO_GITSHA1}"


def test_incremental_hasher_matches_one_shot():
    """Feeding a hasher in pieces (bytes and memoryviews) equals hashing all at once."""
    data = random.Random(1).randbytes(10_000)
    for algo in ("sha256", "gitsha1"):
        h = new_hasher(algo, len(data))
        h.update(data[:3])
        h.update(memoryview(data)[3:5000])
        h.update(data[5000:])
        assert f"{algo}:{h.hexdigest()}" == digest_bytes(algo, data)


@pytest.mark.parametrize("algo", ["md5", "sha1", "SHA256", "sha-256", ""])
def test_unknown_algorithms_are_rejected(algo: str):
    """Only ``sha256`` and ``gitsha1`` are known; anything else raises ``ValueError``."""
    with pytest.raises(ValueError, match="unknown digest algorithm"):
        new_hasher(algo, 0)
    with pytest.raises(ValueError):
        digest_bytes(algo, b"x")


def test_digest_file_rejects_unknown_algorithm(tmp_path: Path):
    """``digest_file`` refuses an unknown algorithm too."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(ValueError):
        digest_file(path, "md5")


@pytest.mark.parametrize(
    ("digest", "algo", "hexpart"),
    [
        (f"sha256:{EMPTY_SHA256}", "sha256", EMPTY_SHA256),
        (f"gitsha1:{HELLO_GITSHA1}", "gitsha1", HELLO_GITSHA1),
    ],
)
def test_algorithm_and_hex_part_split_a_digest(digest: str, algo: str, hexpart: str):
    """``algorithm`` and ``hex_part`` split a digest at its first colon."""
    assert algorithm(digest) == algo
    assert hex_part(digest) == hexpart


def test_blob_hasher_fed_in_steps_matches_one_read(tmp_path: Path):
    """The prefix hashing of a download: any cut into steps gives the one-read result."""
    from p2pmodel.adapters.hashing import hash_blob, hash_into
    from p2pmodel.core.digests import BlobHasher

    data = os.urandom(3 * 1024 * 1024 + 12345)
    path = tmp_path / "blob"
    path.write_bytes(data)
    want = hash_blob(path, "sha256", len(data), 256 * 1024)
    for cuts in (
        [len(data)],
        [1, 300_000, 2 * 1024 * 1024, len(data)],
        [len(data) // 2, len(data)],
    ):
        h = BlobHasher("sha256", len(data), 256 * 1024)
        for stop in cuts:
            hash_into(h, path, stop)
        assert h.pos == len(data) and h.result() == want
    short = BlobHasher("gitsha1", len(data), 256 * 1024)
    with pytest.raises(OSError):
        hash_into(short, path, len(data) + 1)
