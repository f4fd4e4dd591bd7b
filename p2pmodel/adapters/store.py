"""The content-addressed store under ``$P2PMODEL_HOME/store`` (all blocking file IO).

Theory of operation. A verified blob lives at ``blobs/<algo>/<hh>/<hex>``, read-only, and is
never rewritten. Bytes being fetched live in ``partial/<algo>-<hex>.part`` (allocated to full
size, filled by ranged writes) beside a ``.state`` file with the ranges that are on disk; the
state is written atomically after the data is flushed, so a ``kill -9`` loses only what was in
flight. A blob reaches ``blobs/`` by ``os.replace`` after its digest matched, so a final path
never holds unverified bytes. Manifests are stored by their own digest; ``refs.msgpack`` maps a
reference as typed to a manifest digest; snapshots are directories of relative symlinks.

Everything here blocks: async callers use a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from ..core import hfinfo
from ..core.digests import algorithm, hex_part
from ..core.errors import LocalError, P2PModelError
from ..core.manifest import Manifest, ManifestError
from ..core.rangeset import RangeSet
from ..core.refs import Ref, parse_ref
from ..core.retention import Model, Plan, plan

STATE_VERSION = 1


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Any:
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):
        return None


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to disk without waiting (Linux sync_file_range), so
    the fdatasync before a commit finds little left to do. Blocking; a no-op elsewhere."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


@contextlib.contextmanager
def disk_errors(what: str) -> Iterator[None]:
    """Turn disk-full and permission errors into one-line ``LocalError``s."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise LocalError(f"disk full while {what}") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise LocalError(f"cannot write while {what}: {e.strerror} ({e.filename})") from None
        raise


@dataclass
class PartialState:
    done: RangeSet
    by_mirror: dict[str, RangeSet]


def _atomic_write(path: Path, data: bytes, *, sync: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def place(blob: Path, out: Path) -> None:
    """Make ``out`` the blob's bytes: a hardlink where the filesystem allows, else a copy,
    swapped in atomically; nothing to do when ``out`` already is the blob."""
    try:
        st_out, st_blob = out.stat(), blob.stat()
        if (st_out.st_ino, st_out.st_dev) == (st_blob.st_ino, st_blob.st_dev):
            return
    except FileNotFoundError:
        pass
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.p2pmodel-tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(blob, tmp)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(blob, tmp)
    os.replace(tmp, out)


class Store:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.root = home / "store"
        self.blobs = self.root / "blobs"
        self.partial = self.root / "partial"
        self.manifests = self.root / "manifests"
        self.snapshots = self.root / "snapshots"
        self.refs_file = self.root / "refs.msgpack"
        self.torrents = self.root / "torrents"
        self.uses_file = self.root / "used.msgpack"
        self.pins_file = self.root / "pins.msgpack"
        self.hub_info_dir = self.root / "info"

    # -- blobs ---------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        h = hex_part(digest)
        return self.blobs / algorithm(digest) / h[:2] / h

    def has_blob(self, digest: str, size: int) -> bool:
        try:
            return self.blob_path(digest).stat().st_size == size
        except OSError:
            return False

    def partial_path(self, key: str) -> Path:
        return self.partial / (key.replace(":", "-") + ".part")

    def state_path(self, key: str) -> Path:
        return self.partial / (key.replace(":", "-") + ".state")

    def lock_partial(self, key: str) -> int | None:
        """Take the exclusive lock on one blob's partial files (a lock fd), or None when another
        download (this process or another) holds it. Closing the fd releases it."""
        self.partial.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            self.partial / (key.replace(":", "-") + ".lock"), os.O_RDWR | os.O_CREAT, 0o644
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def open_partial(self, key: str, size: int, label: str = "") -> int:
        """Open (creating and allocating if needed) the partial file; returns a raw fd."""
        path = self.partial_path(key)
        label = label or key
        with disk_errors(f"allocating {size} bytes for {label}"):
            self.partial.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size != size:
                    os.ftruncate(fd, size)
                if size:
                    try:
                        os.posix_fallocate(fd, 0, size)
                    except OSError as e:  # unsupported is fine (sparse file); full is not
                        if e.errno in (errno.ENOSPC, errno.EDQUOT):
                            raise LocalError(
                                f"disk full: no room for {label} ({size} bytes) in {self.partial}"
                            ) from None
            except BaseException:
                os.close(fd)
                raise
        return fd

    def load_state(self, key: str, size: int) -> PartialState:
        """Resume state of a partial blob; empty if absent, stale or unreadable."""
        empty = PartialState(RangeSet(), {})
        try:
            if self.partial_path(key).stat().st_size != size:
                return empty
            raw = msgpack.unpackb(self.state_path(key).read_bytes(), raw=False)
        except (OSError, ValueError, msgpack.UnpackException):
            return empty
        try:
            if raw["v"] != STATE_VERSION or raw["size"] != size:
                return empty
            done = RangeSet((int(a), int(b)) for a, b in raw["done"] if 0 <= a < b <= size)
            by = {
                str(m): RangeSet((int(a), int(b)) for a, b in rs if 0 <= a < b <= size)
                for m, rs in raw["by"].items()
            }
        except (KeyError, TypeError, ValueError):
            return empty
        return PartialState(done, by)

    def save_state(self, key: str, size: int, state: PartialState) -> None:
        """Persist resume state (atomic rename; the ranges were written before, so a killed
        process loses nothing they name). It is not fsynced: after a power cut the state may
        name bytes the disk lost, which the digest check catches (see ``FetchPlan.mismatch``)."""
        obj = {
            "v": STATE_VERSION,
            "size": size,
            "done": state.done.to_list(),
            "by": {m: r.to_list() for m, r in state.by_mirror.items()},
        }
        with disk_errors(f"saving resume state of {key}"):
            _atomic_write(self.state_path(key), msgpack.packb(obj))

    def discard_partial(self, key: str) -> None:
        for p in (self.partial_path(key), self.state_path(key)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def commit_blob(self, key: str, digest: str, synced: bool = False) -> Path:
        """Move a verified partial file to its final, read-only place, durably (``synced``:
        the caller already flushed the file's data)."""
        src, dst = self.partial_path(key), self.blob_path(digest)
        with disk_errors(f"storing {digest}"):
            if not synced:
                fd = os.open(src, os.O_RDONLY)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(src, 0o444)
            os.replace(src, dst)
            with contextlib.suppress(FileNotFoundError):
                self.state_path(key).unlink()
            dfd = os.open(dst.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return dst

    def torrent_info_path(self, digest: str) -> Path:
        return self.torrents / (digest.replace(":", "-") + ".info")

    def save_torrent_info(self, digest: str, info: bytes) -> None:
        """Keep a verified blob's torrent info so seeding after a restart needs no re-hash."""
        with disk_errors(f"saving the torrent of {digest}"):
            _atomic_write(self.torrent_info_path(digest), info)

    def torrent_info(self, digest: str) -> bytes | None:
        try:
            return self.torrent_info_path(digest).read_bytes()
        except OSError:
            return None

    def verified_blobs(self) -> Iterator[tuple[str, int]]:
        """Every blob in the store as (digest, size)."""
        for algo_dir in sorted(self.blobs.glob("*")):
            for path in sorted(algo_dir.glob("*/*")):
                if not path.name.startswith("."):
                    yield f"{algo_dir.name}:{path.name}", path.stat().st_size

    def stored_bytes(self) -> int:
        """Bytes of every verified blob."""
        return sum(size for _, size in self.verified_blobs())

    def remove_blob(self, digest: str) -> None:
        """Drop a blob (found corrupt by a scrub) and its torrent info."""
        for path in (self.blob_path(digest), self.torrent_info_path(digest)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def put_blob_bytes(self, digest: str, data: bytes) -> Path:
        """Store small verified content directly (used by tests and tiny files)."""
        dst = self.blob_path(digest)
        with disk_errors(f"storing {digest}"):
            _atomic_write(dst, data, sync=True)
            os.chmod(dst, 0o444)
        return dst

    # -- manifests and refs --------------------------------------------------------------------

    def save_manifest(self, manifest: Manifest) -> str:
        digest = manifest.digest
        path = self.manifests / f"{hex_part(digest)}.msgpack"
        if not path.exists():
            with disk_errors("saving a manifest"):
                _atomic_write(path, manifest.to_bytes(), sync=True)
        return digest

    def load_manifest(self, digest: str) -> Manifest | None:
        path = self.manifests / f"{hex_part(digest)}.msgpack"
        try:
            m = Manifest.from_bytes(path.read_bytes())
        except (OSError, ManifestError):
            return None
        return m if m.digest == digest else None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def refs(self) -> dict[str, str]:
        try:
            raw = msgpack.unpackb(self.refs_file.read_bytes(), raw=False)
        except (OSError, ValueError, msgpack.UnpackException):
            return {}
        if not isinstance(raw, dict):
            return {}
        return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}

    def set_ref(self, ref: str, manifest_digest: str) -> None:
        with self._lock(), disk_errors("recording a reference"):
            refs = self.refs()
            refs[ref] = manifest_digest
            _atomic_write(self.refs_file, msgpack.packb(dict(sorted(refs.items()))))
            self._touch_locked(ref)  # a get starts using it (and is not the first evicted)

    def _hub_info_path(self, manifest_digest: str) -> Path:
        return self.hub_info_dir / f"{hex_part(manifest_digest)}.json"

    def hub_info(self, manifest_digest: str) -> dict[str, Any]:
        """What upstream said of the repository a manifest lists, at its commit
        (``core.hfinfo``: ``info``, ``refs``, ``commits``; empty when nothing was kept)."""
        try:
            with open(self._hub_info_path(manifest_digest), "rb") as f:
                data = f.read(hfinfo.LIMIT + 1)
        except OSError:
            return {}
        return hfinfo.decode(data)

    def keep_hub_info(self, manifest_digest: str, **parts: Any) -> None:
        """Keep what upstream said (``info``, ``refs`` or ``commits``) beside the manifest,
        with what was kept before: filtered and bounded (``hfinfo.encode``), an atomic
        rewrite. Best effort: a store that cannot write it still serves the model."""
        with contextlib.suppress(OSError), self._lock():
            doc = {**self.hub_info(manifest_digest), **parts}
            _atomic_write(self._hub_info_path(manifest_digest), hfinfo.encode(doc))

    def gated(self) -> set[str]:
        """Digests of manifests of gated repositories (served only to a token upstream took)."""
        try:
            raw = msgpack.unpackb((self.root / "gated.msgpack").read_bytes(), raw=False)
        except (OSError, ValueError, msgpack.UnpackException):
            return set()
        return {d for d in raw if isinstance(d, str)} if isinstance(raw, list) else set()

    def mark_gated(self, manifest_digest: str) -> None:
        with self._lock(), disk_errors("recording a gated repository"):
            gated = self.gated() | {manifest_digest}
            _atomic_write(self.root / "gated.msgpack", msgpack.packb(sorted(gated)))

    def lookup(self, ref: str) -> Manifest | None:
        digest = self.refs().get(ref)
        return self.load_manifest(digest) if digest else None

    def missing_blobs(self, manifest: Manifest) -> dict[str, int]:
        return {d: s for d, s in manifest.blobs().items() if not self.has_blob(d, s)}

    # -- snapshots and exports -----------------------------------------------------------------

    def snapshot_dir(self, ref: Ref) -> Path:
        return self.snapshots.joinpath(*ref.snapshot_parts())

    def make_snapshot(self, ref: Ref, manifest: Manifest) -> Path:
        """A directory of relative symlinks to blobs, at the files' repo paths (idempotent).
        Under the store lock: two gets of one model (threads or processes) finishing at once
        would otherwise drop each other's links in the making."""
        top = self.snapshot_dir(ref)
        with self._lock(), disk_errors(f"making the snapshot {top}"):
            wanted = set()
            for f in manifest.files:
                link = top / f.path
                wanted.add(link)
                target = os.path.relpath(self.blob_path(f.digest), link.parent)
                if link.is_symlink() and os.readlink(link) == target:
                    continue
                link.parent.mkdir(parents=True, exist_ok=True)
                tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.symlink(target, tmp)
                os.replace(tmp, link)
            for path in sorted(top.rglob("*"), reverse=True):  # drop files of an older version
                if (path.is_symlink() or path.is_file()) and path not in wanted:
                    path.unlink()
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
        # Every get, fast or not, and every --to export passes here. Best effort: a store
        # that cannot record it (read-only, full) still serves the model.
        with contextlib.suppress(LocalError, OSError):
            self.touch(ref.text)
        return top

    def export(self, manifest: Manifest, dest: Path) -> Path:
        """Place the files at their repo paths under ``dest``: hardlinks, or copies across
        filesystems. A file that already is the blob (same inode) is kept."""
        with disk_errors(f"exporting to {dest}"):
            dest.mkdir(parents=True, exist_ok=True)
            for f in manifest.files:
                place(self.blob_path(f.digest), dest / f.path)
        return dest

    # -- the store over time: last use, pins, removal and collection ---------------------------
    #
    # Last use is one small map (ref -> wall-clock seconds) rewritten under the store lock when
    # a get records its ref and whenever a snapshot is made (every get, the fast path and
    # --to exports): ~0.3 ms, no scan. Pins are a list of refs. What to evict is decided by
    # ``core.retention``; ``collect`` gathers its inputs and carries the plan out.

    def _read_map(self, path: Path) -> dict[str, Any]:
        try:
            raw = msgpack.unpackb(path.read_bytes(), raw=False)
        except (OSError, ValueError, msgpack.UnpackException):
            return {}
        return {k: v for k, v in raw.items() if isinstance(k, str)} if isinstance(raw, dict) else {}

    def last_used(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._read_map(self.uses_file).items() if _number(v)}

    def _touch_locked(self, ref: str) -> None:
        uses = self._read_map(self.uses_file)
        uses[ref] = time.time()
        _atomic_write(self.uses_file, msgpack.packb(uses))

    def touch(self, ref: str) -> None:
        """Record that ``ref`` was used now (it is evicted last)."""
        with self._lock(), disk_errors("recording the last use of a model"):
            self._touch_locked(ref)

    def pins(self) -> set[str]:
        return {k for k, v in self._read_map(self.pins_file).items() if v is True}

    def set_pinned(self, ref: str, pinned: bool) -> None:
        with self._lock(), disk_errors("recording a pin"):
            pins = {k: True for k in self.pins()}
            if pinned:
                pins[ref] = True
            else:
                pins.pop(ref, None)
            _atomic_write(self.pins_file, msgpack.packb(dict(sorted(pins.items()))))

    def models(self) -> list[Model]:
        """Every ref in the store as the retention rules see it. A ref with no recorded use
        (an older store) counts as used when its manifest was stored."""
        uses, pins = self.last_used(), self.pins()
        out = []
        for ref, digest in sorted(self.refs().items()):
            m = self.load_manifest(digest)
            blobs = frozenset(m.blobs()) if m is not None else frozenset()
            when = uses.get(ref)
            if when is None:
                try:
                    when = (self.manifests / f"{hex_part(digest)}.msgpack").stat().st_mtime
                except OSError:
                    when = 0.0
            out.append(Model(ref, blobs, when, ref in pins))
        return out

    def listing(self) -> tuple[list[dict[str, Any]], int]:
        """What ``ls``, its ``--json`` and the dashboard show: a row per model (size, state,
        bytes on disk, last use, pin, the models it shares blobs with) and the bytes the store
        takes in all (partial files included)."""
        from ..core.retention import shared

        sizes = dict(self.verified_blobs())
        models = {m.ref: m for m in self.models()}
        sharing = shared(models.values(), sizes)
        rows: list[dict[str, Any]] = []
        for ref_text, digest in sorted(self.refs().items()):
            m = self.load_manifest(digest)
            keep = models.get(ref_text)
            if m is None or keep is None:
                continue
            missing = self.missing_blobs(m)
            rows.append(
                {
                    "ref": ref_text,
                    "manifest": digest,
                    "source": m.source,
                    "commit": m.commit,
                    "files": len(m.files),
                    "size": m.total_size,
                    "complete": not missing,
                    "missing_bytes": sum(missing.values()),
                    "path": str(self.snapshot_dir(parse_ref(ref_text))),
                    "on_disk": sum(sizes.get(d, 0) for d in keep.blobs),
                    "last_use": keep.last_use,
                    "pinned": keep.pinned,
                    "shared_with": [vars(x) for x in sharing.get(ref_text, [])],
                }
            )
        return rows, int(sum(sizes.values()) + sum(self.partial_files().values()))

    def partial_files(self) -> dict[str, int]:
        """Partial downloads by key, with the bytes their files take."""
        out: dict[str, int] = {}
        for path in self.partial.glob("*.part"):
            with contextlib.suppress(OSError):
                key = path.name[: -len(".part")]
                out[key.replace("-", ":", 1) if not key.startswith("url-") else key] = (
                    path.stat().st_blocks * 512
                )
        return out

    def plan_collection(
        self,
        *,
        cap: int | None = None,
        drop: Collection[str] = (),
        busy_refs: Collection[str] = (),
        busy_blobs: Collection[str] = (),
    ) -> Plan:
        """What ``core.retention.plan`` would evict and delete now (reads only)."""
        partials = self.partial_files()
        return plan(
            self.models(),
            dict(self.verified_blobs()),
            cap=cap,
            drop=drop,
            busy_refs=busy_refs,
            busy_blobs=busy_blobs,
            extra=sum(partials.values()),
        )

    def collect(
        self,
        *,
        cap: int | None = None,
        drop: Collection[str] = (),
        busy_refs: Collection[str] = (),
        busy_blobs: Collection[str] = (),
        deletable: Collection[str] | None = None,
    ) -> tuple[Plan, list[str]]:
        """Carry out the plan, decided again under the store lock (a get recording its ref
        meanwhile waits, and a blob it names is then kept). ``deletable``: the only blobs that
        may be deleted (those the agent stopped seeding; None: any). Returns the plan and the
        blobs deleted."""
        with self._lock(), disk_errors("removing models from the store"):
            p = self.plan_collection(cap=cap, drop=drop, busy_refs=busy_refs, busy_blobs=busy_blobs)
            refs = self.refs()
            if p.evict:
                for ref in p.evict:
                    refs.pop(ref, None)
                _atomic_write(self.refs_file, msgpack.packb(dict(sorted(refs.items()))))
                for ref in p.evict:
                    self._drop_snapshot(ref, refs)
                for path in (self.uses_file, self.pins_file):
                    entries = self._read_map(path)
                    if entries.keys() & set(p.evict):
                        for ref in p.evict:
                            entries.pop(ref, None)
                        _atomic_write(path, msgpack.packb(entries))
            deleted = [d for d in p.delete if deletable is None or d in deletable]
            for digest in deleted:
                self.remove_blob(digest)
            self._sweep(refs, busy_blobs)
        return p, deleted

    def _drop_snapshot(self, ref: str, remaining: dict[str, str]) -> None:
        """Remove a ref's snapshot directory unless a remaining ref shares it (``hf://o/r``
        and ``hf://o/r@main`` do)."""
        parts = _snapshot_parts(ref)
        if parts is None or any(_snapshot_parts(r) == parts for r in remaining):
            return
        top = self.snapshots.joinpath(*parts)
        shutil.rmtree(top, ignore_errors=True)
        for parent in top.parents:  # empty directories above it (org/, hf/) go too
            if parent == self.snapshots or not parent.is_relative_to(self.snapshots):
                break
            with contextlib.suppress(OSError):
                parent.rmdir()

    def _sweep(self, refs: dict[str, str], busy: Collection[str]) -> None:
        """Manifests no ref names (stored over an hour ago: a get saves its manifest a moment
        before it records the ref), and partial downloads of blobs no ref wants that no
        download holds (their lock is free), leave the store."""
        wanted: set[str] = set(busy)
        digests = set(refs.values())
        for digest in digests:
            m = self.load_manifest(digest)
            if m is not None:
                wanted |= set(m.blobs())
        old = time.time() - 3600
        for path in [*self.manifests.glob("*.msgpack"), *self.hub_info_dir.glob("*.json")]:
            with contextlib.suppress(OSError):
                if f"sha256:{path.stem}" not in digests and path.stat().st_mtime < old:
                    path.unlink()
        for key in self.partial_files():
            if key in wanted or key.startswith("url-"):
                continue  # a URL's download has no digest yet: its own get cleans up
            lock = self.lock_partial(key)
            if lock is None:
                continue
            try:
                self.discard_partial(key)
                with contextlib.suppress(FileNotFoundError):
                    (self.partial / (key.replace(":", "-") + ".lock")).unlink()
            finally:
                os.close(lock)


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _snapshot_parts(ref: str) -> tuple[str, ...] | None:
    try:
        return parse_ref(ref).snapshot_parts()
    except P2PModelError:
        return None
