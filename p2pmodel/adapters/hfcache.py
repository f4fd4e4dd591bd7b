"""The Hugging Face cache on disk, as ``huggingface_hub`` lays it out, filled from the store
(``get --hf-cache``) so ``HF_HUB_OFFLINE=1`` and ``from_pretrained("org/name")`` find a model
with no copy of its weights; and the bookkeeping a ``local_dir`` download leaves (``get --to``),
so a later ``snapshot_download(local_dir=DIR)`` re-downloads nothing.

Layout (``core.hfapi`` names the parts): ``models--org--name/blobs/<etag>`` (a hardlink to the
stored blob, a copy across filesystems), ``snapshots/<commit>/<path>`` (relative symlinks to the
blobs), ``refs/<revision>`` (the commit, no newline) and ``trees/<commit>.json`` (the file list
the client checks a snapshot against when offline). Everything is written atomically and kept
when already right, so running it twice changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from ..core import hfapi
from ..core.errors import UserError
from ..core.manifest import Manifest
from ..core.refs import COMMIT_RE
from .store import Store, disk_errors, place


def cache_root(env: dict[str, str] | None = None) -> Path:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    env = dict(os.environ) if env is None else env
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.p2pmodel-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _symlink(link: Path, target: str) -> None:
    if link.is_symlink() and os.readlink(link) == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.p2pmodel-tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def export(store: Store, manifest: Manifest, revision: str, root: Path) -> Path:
    """Put ``manifest``'s files in the HF cache under ``root``; the snapshot directory.

    ``revision`` is what the user asked for: a branch or tag gets ``refs/<revision>``; a commit
    also becomes ``refs/main`` when the cache has no main yet, so a plain
    ``from_pretrained("org/name")`` finds it offline."""
    if not manifest.source.startswith("hf://"):
        raise UserError(f"--hf-cache needs a Hugging Face model (hf://), not {manifest.source}")
    top = root / hfapi.cache_folder(manifest.source)
    with disk_errors(f"writing the Hugging Face cache {top}"):
        for f in manifest.files:
            blob = top / "blobs" / hfapi.etag(f)
            place(store.blob_path(f.digest), blob)
            link = top / "snapshots" / manifest.commit / f.path
            _symlink(link, os.path.relpath(blob, link.parent))
        ref = revision or hfapi.DEFAULT_REVISION
        if COMMIT_RE.match(ref):
            if not (top / "refs" / hfapi.DEFAULT_REVISION).exists():
                _write(top / "refs" / hfapi.DEFAULT_REVISION, manifest.commit)
        else:
            _write(top / "refs" / ref, manifest.commit)
        tree = json.dumps(hfapi.tree_cache(manifest), indent=1)
        _write(top / "trees" / f"{manifest.commit}.json", tree)
    return top / "snapshots" / manifest.commit


def local_dir_metadata(manifest: Manifest, dest: Path) -> None:
    """What ``snapshot_download(local_dir=dest)`` leaves beside the files it wrote: it then
    treats the files placed by ``get --to`` as its own and downloads none of them again."""
    if not manifest.source.startswith("hf://"):
        return
    meta = dest / ".cache" / "huggingface"
    now = time.time()
    with disk_errors(f"writing download metadata under {meta}"):
        for f in manifest.files:
            # The client trusts a metadata file only if the file is not newer than it.
            stamp = max(now, (dest / f.path).stat().st_mtime)
            text = hfapi.download_metadata(manifest.commit, f, stamp)
            _write(meta / "download" / f"{f.path}.metadata", text)
        tree = json.dumps(hfapi.tree_cache(manifest), indent=1)
        _write(meta / "trees" / f"{manifest.commit}.json", tree)
