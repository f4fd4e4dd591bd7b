"""The content-addressed store: partial files, resume state, commits, snapshots, exports."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from p2pmodel.adapters.store import PartialState, Store
from p2pmodel.core.digests import digest_bytes
from p2pmodel.core.errors import LocalError
from p2pmodel.core.manifest import FileEntry, Manifest
from p2pmodel.core.rangeset import RangeSet
from p2pmodel.core.refs import parse_ref


def manifest_of(store: Store, files: dict[str, bytes]) -> Manifest:
    entries = []
    for path, data in files.items():
        digest = digest_bytes("sha256", data)
        store.put_blob_bytes(digest, data)
        entries.append(FileEntry(path, len(data), digest))
    return Manifest("demo:v1", "hf://org/demo", "a" * 40, tuple(entries))


def test_partial_state_round_trip(tmp_path):
    """Resume state written for a partial blob reads back as the same ranges."""
    store = Store(tmp_path)
    fd = store.open_partial("sha256:" + "1" * 64, 1000)
    try:
        state = PartialState(RangeSet([(0, 100), (500, 700)]), {"http://a": RangeSet([(0, 100)])})
        store.save_state("sha256:" + "1" * 64, 1000, state)
    finally:
        os.close(fd)
    back = store.load_state("sha256:" + "1" * 64, 1000)
    assert back.done == state.done
    assert back.by_mirror == state.by_mirror


def test_state_for_another_size_is_ignored(tmp_path):
    """Resume state is dropped when the blob's expected size differs (never trust stale ranges)."""
    store = Store(tmp_path)
    key = "sha256:" + "2" * 64
    os.close(store.open_partial(key, 1000))
    store.save_state(key, 1000, PartialState(RangeSet([(0, 1000)]), {}))
    assert store.load_state(key, 999).done.total() == 0


def test_corrupt_state_file_means_start_over(tmp_path):
    """An unreadable resume state is treated as nothing done."""
    store = Store(tmp_path)
    key = "sha256:" + "3" * 64
    os.close(store.open_partial(key, 10))
    store.state_path(key).write_bytes(b"\xc1garbage")
    assert store.load_state(key, 10).done.total() == 0


def test_commit_moves_the_blob_read_only(tmp_path):
    """A committed blob sits at its digest path, read-only, and its partial files are gone."""
    store = Store(tmp_path)
    data = b"hello world\n"
    digest = digest_bytes("sha256", data)
    fd = store.open_partial(digest, len(data))
    os.pwrite(fd, data, 0)
    store.save_state(digest, len(data), PartialState(RangeSet([(0, len(data))]), {}))
    os.close(fd)
    path = store.commit_blob(digest, digest)
    assert path.read_bytes() == data
    assert not (stat.S_IMODE(path.stat().st_mode) & 0o222)
    assert not store.partial_path(digest).exists()
    assert not store.state_path(digest).exists()
    assert store.has_blob(digest, len(data))
    assert not store.has_blob(digest, len(data) + 1)


def test_allocation_failure_for_lack_of_space_is_a_one_line_error(tmp_path, monkeypatch):
    """Running out of disk while allocating a partial file raises LocalError, not OSError."""

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(LocalError, match="disk full"):
        Store(tmp_path).open_partial("sha256:" + "4" * 64, 10_000)


def test_snapshot_links_files_and_drops_old_ones(tmp_path):
    """A snapshot has a relative symlink per file, and a newer version removes stale files."""
    store = Store(tmp_path)
    ref = parse_ref("demo:v1")
    m1 = manifest_of(store, {"a.txt": b"A", "sub/b.bin": b"BB"})
    top = store.make_snapshot(ref, m1)
    assert (top / "a.txt").read_bytes() == b"A"
    assert (top / "sub" / "b.bin").is_symlink()
    assert not os.path.isabs(os.readlink(top / "sub" / "b.bin"))
    m2 = manifest_of(store, {"a.txt": b"A2"})
    store.make_snapshot(ref, m2)
    assert (top / "a.txt").read_bytes() == b"A2"
    assert not (top / "sub").exists()


def test_export_hardlinks_and_is_idempotent(tmp_path):
    """--to places hardlinks of blobs at repo paths; a second export changes nothing."""
    store = Store(tmp_path / "home")
    m = manifest_of(store, {"x/y.json": b"{}", "w.bin": b"\0" * 100})
    dest = store.export(m, tmp_path / "out")
    blob = store.blob_path(m.files[0].digest)
    assert (dest / m.files[0].path).stat().st_ino == blob.stat().st_ino
    before = {p: p.stat().st_ino for p in dest.rglob("*") if p.is_file()}
    store.export(m, tmp_path / "out")
    assert before == {p: p.stat().st_ino for p in dest.rglob("*") if p.is_file()}


def test_export_copies_across_filesystems(tmp_path, monkeypatch):
    """When hardlinking is impossible (another filesystem), files are copied."""
    store = Store(tmp_path / "home")
    m = manifest_of(store, {"f": b"content"})

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    dest = store.export(m, tmp_path / "out")
    assert (dest / "f").read_bytes() == b"content"
    assert (dest / "f").stat().st_ino != store.blob_path(m.files[0].digest).stat().st_ino


def test_refs_and_manifests_round_trip(tmp_path):
    """A recorded reference finds its manifest again; a tampered manifest file is refused."""
    store = Store(tmp_path)
    m = manifest_of(store, {"f": b"1"})
    store.save_manifest(m)
    store.set_ref("demo:v1", m.digest)
    assert store.lookup("demo:v1") == m
    assert store.lookup("other:v1") is None
    path = next(store.manifests.iterdir())
    path.write_bytes(Manifest("x:y", "hf://o/r", "b" * 40, m.files).to_bytes())
    assert store.lookup("demo:v1") is None
