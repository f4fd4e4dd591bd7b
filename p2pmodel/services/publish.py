"""``p2pmodel publish DIR NAME:TAG``: a model directory of this workstation into the store,
under a name of the office (synchronous: the CLI runs it; no trio).

Theory of operation. Every regular file under the directory (symlinks followed, ``.git`` and
the Hugging Face ``local_dir`` metadata under ``.cache/huggingface`` left out) becomes a blob:
it is hard-linked into the store's partial area (a copy only across filesystems, or where a
link is not allowed), made read-only (a hard link is the same file: edited in place, it would
change a blob the office trusts), hashed there once for its sha256 and the torrent's piece
hashes, and moved into ``blobs/``. So a published model takes no second copy on disk, and its
bytes were hashed where the store keeps them. The manifest is the usual one: the files' paths
(checked like any manifest's), sizes and sha256; its source is ``published:<agent>`` and its
commit the time of publication, so when the office holds two versions of a name, the newest
wins. Publishing a name again with the same files changes nothing; with other files it is
refused unless forced. Offering the name to the office is the running agent's part
(``services.names.NameService.publish``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

from ..adapters.hashing import hash_blob
from ..adapters.store import Store, disk_errors
from ..core.errors import UserError
from ..core.manifest import PUBLISHED, FileEntry, Manifest, ManifestError
from ..core.refs import Ref
from ..core.torrents import info_bytes, piece_size


def _skipped(rel: str, name: str) -> bool:
    return name == ".git" or (rel == ".cache" and name == "huggingface")


def scan(top: Path) -> list[tuple[str, Path]]:
    """The files to publish under ``top``: (repo path, file), sorted by path."""
    found: list[tuple[str, Path]] = []
    seen: set[tuple[int, int]] = set()  # directories walked: a symlink loop is walked once
    for root, dirs, files in os.walk(top, followlinks=True):
        here = Path(root)
        st = here.stat()
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        rel = here.relative_to(top)
        dirs[:] = sorted(d for d in dirs if not _skipped(rel.as_posix(), d))
        for name in sorted(files):
            path = here / name
            if path.is_file():  # follows symlinks; sockets, fifos and dangling links are skipped
                found.append(((rel / name).as_posix(), path))
    return sorted(found)


def adopt(store: Store, path: Path) -> tuple[str, int, bool]:
    """Make the file at ``path`` a blob of the store: (digest, size, hard-linked)."""
    store.partial.mkdir(parents=True, exist_ok=True)
    tmp = store.partial / f"publish-{secrets.token_hex(8)}.tmp"
    linked = True
    try:
        try:
            os.link(path, tmp)
            os.chmod(tmp, 0o444)  # the user's file too: it is the blob now
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                raise
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            linked = False
            with disk_errors(f"copying {path} into the store"):
                shutil.copyfile(path, tmp)
                os.chmod(tmp, 0o444)
        size = tmp.stat().st_size
        digest, pieces = hash_blob(tmp, "sha256", size, piece_size(size))
        if size:
            store.save_torrent_info(digest, info_bytes(digest, size, pieces))
        if store.has_blob(digest, size):
            tmp.unlink()  # the store has these bytes already
        else:
            dest = store.blob_path(digest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        return digest, size, linked
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def prepare(
    store: Store, top: Path, ref: Ref, agent: str, now_iso: str, *, force: bool
) -> tuple[Manifest, bool, int]:
    """Store the files under ``top`` and the manifest naming them ``ref``. Returns the
    manifest to publish (the stored one if the files are the same), whether it was already
    published, and how many files were copied instead of hard-linked. ``UserError`` when the
    name is published here with other content and ``force`` is off."""
    if not top.is_dir():
        raise UserError(f"{top} is not a directory")
    files = scan(top)
    if not files:
        raise UserError(f"{top} holds no files to publish")
    for rel, _ in files:
        try:
            FileEntry(rel, 0, "sha256:" + "0" * 64)
        except ManifestError as e:
            raise UserError(f"cannot publish {top}: {e}") from None
    entries, copied = [], 0
    for rel, path in files:
        try:
            digest, size, linked = adopt(store, path)
        except OSError as e:
            raise UserError(f"cannot publish {path}: {e.strerror}") from None
        copied += not linked
        entries.append(FileEntry(rel, size, digest))
    manifest = Manifest(ref.text, PUBLISHED + agent, now_iso, tuple(entries))
    old = store.lookup(ref.text)
    if old is not None and old.files == manifest.files:
        return old, True, copied
    if old is not None and not force:
        raise UserError(
            f"{ref.text} is already published here with other content (manifest "
            f"{old.digest[:19]}); --force replaces it"
        )
    store.save_manifest(manifest)
    return manifest, False, copied
