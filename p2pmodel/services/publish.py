"""``p2pmodel publish DIR NAME:TAG``: a model directory of this workstation into the store,
under a name of the office (synchronous: the CLI runs it; no trio).

Theory of operation. Every regular file under the directory (``.git`` and the Hugging Face
``local_dir`` metadata under ``.cache/huggingface`` left out) becomes a blob: it is hard-linked
into the store's partial area (a copy only across filesystems, or where a link is not allowed),
made read-only (a hard link is the same file: edited in place, it would change a blob the office
trusts), hashed there once for its sha256 and the torrent's piece hashes, and moved into
``blobs/``. So a published model takes no second copy on disk, and its bytes were hashed where
the store keeps them. The manifest is the usual one: the files' paths (checked like any
manifest's), sizes and sha256; its source is ``published:<agent>`` and its commit the time of
publication, so when the office holds two versions of a name, the newest wins. Publishing a
name again with the same files changes nothing; with other files it is refused unless forced.
Offering the name to the office is the running agent's part (``services.names.NameService.
publish``).

What is read (the rules are ``core.publishing``'s): only regular files inside the directory.
A symlink that resolves inside it stands for its target (published under the link's path; a
link to a directory is walked under the link's path); one that leads outside it, into ``.git``,
or back to a directory being walked is refused, and so are fifos, sockets, devices, a directory
under ``/proc``, ``/sys`` or ``/dev`` and any file on a pseudo filesystem. The scan decides from
paths; then each file is opened again from the directory's own descriptor, one component at a
time with ``O_NOFOLLOW``, checked on the open descriptor (a regular file, the inode the scan
saw, not on a pseudo filesystem), hard-linked by name from its parent's descriptor without
following links, and the store's new name checked to be that same inode before the mode is
changed, through the descriptor. A file swapped for a link meanwhile is refused, never followed.

Nothing is half done: blobs wait in the partial area until every file is hashed and the name
check passed, and any failure (a refusal, a read error, a full disk, an interrupt) puts back
every mode changed and removes every name this publish made in the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import secrets
import stat
from pathlib import Path, PurePosixPath

from ..adapters.hashing import BUFFER, hash_blob
from ..adapters.store import Store, disk_errors
from ..core.errors import UserError
from ..core.manifest import MAX_FILES, PUBLISHED, FileEntry, Manifest, ManifestError
from ..core.publishing import (
    beneath,
    forbidden_place,
    is_loop,
    left_out,
    pseudo_devices,
    shown,
    special_kind,
)
from ..core.refs import Ref
from ..core.torrents import info_bytes, piece_size

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# A hard link refused for these reasons is a copy instead (another filesystem, a file we may
# not link or chmod, too many links).
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES)

Inode = tuple[int, int]
Pseudo = dict[tuple[int, int], str]


@dataclasses.dataclass(frozen=True)
class Found:
    """A file to publish: its repo path, and where it really is (components under the
    directory, no symlink among them when it was scanned)."""

    path: str
    real: tuple[str, ...]


class _Changed(Exception):
    """A file or directory is not what the scan saw (swapped, removed, made a link)."""


def _inode(st: os.stat_result) -> Inode:
    return st.st_dev, st.st_ino


def _device(st: os.stat_result) -> tuple[int, int]:
    return os.major(st.st_dev), os.minor(st.st_dev)


def read_pseudo_devices() -> Pseudo:
    """The pseudo filesystems mounted here by device (none known if mountinfo is unreadable:
    the ``/proc``, ``/sys``, ``/dev`` rule still holds)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            return pseudo_devices(f.read())
    except OSError:
        return {}


def scan(top: Path, pseudo: Pseudo | None = None) -> list[Found]:
    """The files to publish under ``top`` (absolute, resolved), sorted by repo path.
    ``UserError`` for anything publish refuses (see the module's docstring); a dangling
    symlink inside the directory is left out."""
    pseudo = read_pseudo_devices() if pseudo is None else pseudo
    base = PurePosixPath(top)
    found: list[Found] = []

    def refuse(what: str) -> UserError:
        return UserError(f"cannot publish {top}: {what}")

    # (where it really is, its repo path, the real directories walked to get there)
    stack: list[tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, ...], ...]]]
    stack = [((), (), ((),))]
    walked = 0
    while stack:
        real, repo, walking = stack.pop()
        walked += 1
        if walked + len(found) > MAX_FILES:  # links to directories can multiply a small tree
            raise refuse(f"more than {MAX_FILES} files and directories to walk")
        with os.scandir(top.joinpath(*real)) as it:
            entries = sorted(it, key=lambda e: e.name)
        below = []
        for entry in entries:
            parts = (*repo, entry.name)
            if left_out(parts):
                continue
            name = shown("/".join(parts))
            where = (*real, entry.name)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target = shown(os.readlink(top.joinpath(*where)))
                name = f"{name} (a symlink to {target})"
                resolved = PurePosixPath(os.path.realpath(top.joinpath(*where)))
                inside = beneath(base, resolved)
                if inside is None:
                    raise refuse(
                        f"{name} leads outside the directory, to {shown(str(resolved))}; "
                        "publish reads only files in it"
                    )
                if skipped := left_out(inside):
                    raise refuse(f"{name} leads into {shown(skipped)}, which publish leaves out")
                try:
                    st = os.lstat(top.joinpath(*inside))
                except FileNotFoundError:
                    continue  # dangling: nothing to publish
                if stat.S_ISLNK(st.st_mode):
                    raise refuse(f"{name} is a symlink loop")
                where = inside
            if _device(st) in pseudo:
                raise refuse(f"{name} is on a {pseudo[_device(st)]} filesystem, not a model file")
            if stat.S_ISDIR(st.st_mode):
                if is_loop(where, walking):
                    raise refuse(
                        f"{name} is a symlink loop (it leads back to a directory above it)"
                    )
                below.append((where, parts, (*walking, where)))
            elif stat.S_ISREG(st.st_mode):
                found.append(Found("/".join(parts), where))
            else:
                kind = special_kind(st.st_mode) or "not a regular file"
                raise refuse(f"{name} is {kind}; publish takes regular files only")
        stack.extend(reversed(below))  # walked in name order
    return sorted(found, key=lambda f: f.path)


@dataclasses.dataclass
class _Undo:
    """What this publish changed so far, to put back when it fails: the names it made in the
    store (with their inode) and the first mode seen of every file it made read-only."""

    names: dict[Path, Inode] = dataclasses.field(default_factory=dict)
    modes: dict[Inode, int] = dataclasses.field(default_factory=dict)
    infos: list[Path] = dataclasses.field(default_factory=list)

    def give_back_mode(self, name: Path) -> None:
        """Put back the mode of the file at ``name`` (a name of ours in the store: opened
        without following links, changed only if it is the inode we changed)."""
        fd = os.open(name, _FILE)
        try:
            st = os.fstat(fd)
            mode = self.modes.pop(_inode(st), None)
            if mode is not None and stat.S_ISREG(st.st_mode) and self.names.get(name) == _inode(st):
                os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def drop(self, name: Path) -> None:
        """Remove a name of ours from the store, if it still is ours."""
        inode = self.names.pop(name, None)
        with contextlib.suppress(FileNotFoundError):
            if inode is not None and _inode(os.lstat(name)) == inode:
                name.unlink()

    def rollback(self) -> None:
        for name in reversed(list(self.names)):
            with contextlib.suppress(OSError):
                self.give_back_mode(name)
            with contextlib.suppress(OSError):
                self.drop(name)
        for path in self.infos:
            with contextlib.suppress(OSError):
                path.unlink()


@dataclasses.dataclass(frozen=True)
class _Adopted:
    path: str
    digest: str
    size: int
    tmp: Path
    inode: Inode  # of the store's copy: the user's file itself when linked
    info: bytes | None
    linked: bool


def _open_beneath(top_fd: int, real: tuple[str, ...]) -> tuple[int, int, os.stat_result]:
    """(its directory's fd, the file's fd, its fstat) for the file at ``real`` under the
    directory open as ``top_fd``, following no symlink on the way. ``_Changed`` when a
    component is not what the scan saw."""
    dfd = os.open(".", _DIR, dir_fd=top_fd)
    try:
        try:
            for part in real[:-1]:
                nfd = os.open(part, _DIR, dir_fd=dfd)
                os.close(dfd)
                dfd = nfd
            # Looked at before it is opened: opening a device swapped in could do something.
            seen = os.stat(real[-1], dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(seen.st_mode):
                raise _Changed
            fd = os.open(real[-1], _FILE, dir_fd=dfd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.ENXIO):
                raise _Changed from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or _inode(st) != _inode(seen):
            os.close(fd)
            raise _Changed
        return dfd, fd, st
    except BaseException:
        os.close(dfd)
        raise


def _copy(undo: _Undo, fd: int, tmp: Path, size: int) -> None:
    """Copy the open file into the store's new ``tmp``, made read-only there. ``_Changed``
    when it holds other than the ``size`` bytes fstat said (growing, or a pseudo file)."""
    out = os.open(tmp, _NEW, 0o600)
    try:
        undo.names[tmp] = _inode(os.fstat(out))
        buf = bytearray(min(BUFFER, max(size, 1)))
        copied = 0
        while n := os.readv(fd, [buf]):
            os.write(out, memoryview(buf)[:n])
            copied += n
            if copied > size:
                break
        if copied != size:
            raise _Changed
        os.fchmod(out, 0o444)
    finally:
        os.close(out)


def adopt(
    store: Store,
    undo: _Undo,
    top_fd: int,
    found: Found,
    pseudo: Pseudo,
    seen: dict[Inode, _Adopted],
) -> _Adopted:
    """Give the file a name in the store's partial area (a hard link, else a copy), make the
    store's copy read-only and hash it there. Everything it changes is in ``undo``; ``seen``
    has the files adopted so far by inode (a file reached again through a link is not hashed
    twice)."""
    dfd, fd, st = _open_beneath(top_fd, found.real)
    try:
        if _device(st) in pseudo:
            raise UserError(f"{shown(found.path)} is on a {pseudo[_device(st)]} filesystem")
        if (again := seen.get(_inode(st))) is not None:
            return dataclasses.replace(again, path=found.path)
        store.partial.mkdir(parents=True, exist_ok=True)
        tmp = store.partial / f"publish-{secrets.token_hex(8)}.tmp"
        linked = True
        try:
            os.link(found.real[-1], tmp, src_dir_fd=dfd, follow_symlinks=False)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            linked = False
        if linked:
            undo.names[tmp] = _inode(os.lstat(tmp))
            if undo.names[tmp] != _inode(st):  # the name was swapped after it was opened
                raise _Changed
            try:
                mode = stat.S_IMODE(st.st_mode)
                os.fchmod(fd, 0o444)  # the user's file too: it is the blob now
                undo.modes.setdefault(_inode(st), mode)
            except PermissionError:
                undo.drop(tmp)
                linked = False
        if not linked:
            with disk_errors(f"copying {found.path} into the store"):
                _copy(undo, fd, tmp, st.st_size)
        size = st.st_size
        digest, pieces = hash_blob(tmp, "sha256", size, piece_size(size))
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (size, st.st_mtime_ns):
            raise _Changed  # written to while it was hashed: the digest may not be its bytes
        info = info_bytes(digest, size, pieces) if size else None
        seen[_inode(st)] = _Adopted(found.path, digest, size, tmp, undo.names[tmp], info, linked)
        return seen[_inode(st)]
    finally:
        os.close(fd)
        os.close(dfd)


def _commit(store: Store, undo: _Undo, adopted: list[_Adopted]) -> None:
    """Move the new blobs into ``blobs/`` (with their torrent info), drop the partial names of
    blobs the store held already, and give back the mode of any file that did not become a
    blob (the store holds its bytes as another file)."""
    blobs: set[Inode] = set()
    for a in adopted:
        if a.info is not None and store.torrent_info(a.digest) is None:
            store.save_torrent_info(a.digest, a.info)
            undo.infos.append(store.torrent_info_path(a.digest))
        dest = store.blob_path(a.digest)
        if store.has_blob(a.digest, a.size):
            blobs.add(_inode(os.lstat(dest)))
            continue
        with disk_errors(f"storing {a.digest}"):
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(a.tmp, dest)
        undo.names[dest] = undo.names.pop(a.tmp)
        blobs.add(a.inode)
    for a in adopted:
        if a.tmp in undo.names:
            if a.inode not in blobs:
                undo.give_back_mode(a.tmp)
            undo.drop(a.tmp)


def prepare(
    store: Store, top: Path, ref: Ref, agent: str, now_iso: str, *, force: bool
) -> tuple[Manifest, bool, int]:
    """Store the files under ``top`` and the manifest naming them ``ref``. Returns the
    manifest to publish (the stored one if the files are the same), whether it was already
    published, and how many files were copied instead of hard-linked. ``UserError`` for a
    directory publish refuses, and when the name is published here with other content and
    ``force`` is off; then, as after any failure, nothing has changed."""
    top = Path(os.path.realpath(top))
    place = forbidden_place(PurePosixPath(top))
    if place is not None:
        raise UserError(
            f"cannot publish {top}: it is under {place}, which holds the system's state, "
            "not model files"
        )
    pseudo = read_pseudo_devices()
    try:
        top_fd = os.open(top, _DIR)
    except OSError:
        raise UserError(f"{top} is not a directory") from None
    try:
        fs = pseudo.get(_device(os.fstat(top_fd)))
        if fs is not None:
            raise UserError(
                f"cannot publish {top}: it is on a {fs} filesystem, which holds the system's state"
            )
        try:
            files = scan(top, pseudo)
        except OSError as e:
            raise UserError(f"cannot publish {top}: {e.strerror} ({e.filename})") from None
        if not files:
            raise UserError(f"{top} holds no files to publish")
        for f in files:
            try:
                FileEntry(f.path, 0, "sha256:" + "0" * 64)
            except ManifestError as e:
                raise UserError(f"cannot publish {top}: {e}") from None
        return _publish(store, top, top_fd, files, pseudo, ref, agent, now_iso, force=force)
    finally:
        os.close(top_fd)


def _publish(
    store: Store,
    top: Path,
    top_fd: int,
    files: list[Found],
    pseudo: Pseudo,
    ref: Ref,
    agent: str,
    now_iso: str,
    *,
    force: bool,
) -> tuple[Manifest, bool, int]:
    undo = _Undo()
    seen: dict[Inode, _Adopted] = {}
    try:
        adopted = []
        for f in files:
            try:
                adopted.append(adopt(store, undo, top_fd, f, pseudo, seen))
            except _Changed:
                raise UserError(
                    f"cannot publish {top}: {shown(f.path)} changed while it was being "
                    "published; nothing was stored, try again"
                ) from None
            except OSError as e:
                raise UserError(f"cannot publish {top / f.path}: {e.strerror}") from None
        entries = tuple(FileEntry(a.path, a.size, a.digest) for a in adopted)
        manifest = Manifest(ref.text, PUBLISHED + agent, now_iso, entries)
        old = store.lookup(ref.text)
        same = old is not None and old.files == manifest.files
        if old is not None and not same and not force:
            raise UserError(
                f"{ref.text} is already published here with other content (manifest "
                f"{old.digest[:19]}); --force replaces it"
            )
        _commit(store, undo, adopted)
        copied = sum(not a.linked for a in adopted)
        if old is not None and same:
            return old, True, copied
        store.save_manifest(manifest)
        return manifest, False, copied
    except BaseException:
        undo.rollback()
        raise
