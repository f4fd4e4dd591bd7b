"""Where upstream things live, and how upstream listings become manifests (pure).

Hugging Face: ``GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`` gives ``sha`` (the
commit) and ``siblings[{rfilename, size, blobId, lfs{sha256, size}}]``; files come from
``{endpoint}/{repo}/resolve/{commit}/{path}`` (datasets: ``/api/datasets/...`` and
``/datasets/{repo}/resolve/...``). ModelScope: ``GET {endpoint}/api/v1/models/{repo}/
repo/files?Revision={rev}&Recursive=true`` gives ``Data.Files[{Path, Type, Size, Sha256}]``;
files come from ``{endpoint}/models/{repo}/resolve/{rev}/{path}``. A branch is resolved to a
commit once and the manifest pins it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .manifest import FileEntry, Manifest, ManifestError
from .refs import COMMIT_RE, Ref

HF_DEFAULT_REV = "main"
MS_DEFAULT_REV = "master"


def listing_url(ref: Ref, hf_endpoint: str, ms_endpoint: str) -> str:
    if ref.kind == "hf":
        rev = quote(ref.tag or HF_DEFAULT_REV, safe="")
        plural = "models" if ref.repo_type == "model" else "datasets"
        return f"{hf_endpoint}/api/{plural}/{ref.repo}/revision/{rev}?blobs=true"
    if ref.kind == "ms":
        rev = quote(ref.tag or MS_DEFAULT_REV, safe="")
        return f"{ms_endpoint}/api/v1/models/{ref.name}/repo/files?Revision={rev}&Recursive=true"
    raise ValueError(f"no listing for {ref.kind} references")


def file_url(manifest: Manifest, path: str, hf_endpoint: str, ms_endpoint: str) -> str:
    """The origin URL of one file of ``manifest`` (mirror rules are applied afterwards)."""
    source, commit = manifest.source, manifest.commit
    qpath = quote(path, safe="/")
    if source.startswith("hf://"):
        return f"{hf_endpoint}/{source[5:]}/resolve/{commit}/{qpath}"
    if source.startswith("ms://"):
        return f"{ms_endpoint}/models/{source[5:]}/resolve/{commit}/{qpath}"
    if source.startswith(("https://", "http://")):
        return source
    raise ValueError(f"unknown manifest source {source!r}")


def _get(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], kind):
        raise ManifestError(f"{where}: missing or malformed {key!r}")
    return obj[key]


def parse_hf_listing(ref: Ref, name: str, data: Any) -> Manifest:
    """Turn a Hugging Face model-info answer into a manifest; raises ``ManifestError``."""
    where = f"listing of hf://{ref.name}"
    commit = _get(data, "sha", str, where)
    if not COMMIT_RE.match(commit):
        raise ManifestError(f"{where}: {commit!r} is not a commit id")
    files = []
    for sib in _get(data, "siblings", list, where):
        path = _get(sib, "rfilename", str, where)
        lfs = sib.get("lfs") if isinstance(sib, dict) else None
        if isinstance(lfs, dict):
            sha = _get(lfs, "sha256", str, f"{where}: {path}")
            size = _get(lfs, "size", int, f"{where}: {path}")
            files.append(FileEntry(path, size, f"sha256:{sha.lower()}"))
        else:
            blob_id = _get(sib, "blobId", str, f"{where}: {path} (ask with ?blobs=true)")
            size = _get(sib, "size", int, f"{where}: {path}")
            files.append(FileEntry(path, size, f"gitsha1:{blob_id.lower()}"))
    if not files:
        raise ManifestError(f"{where}: the repository has no files")
    return Manifest(name, f"hf://{ref.name}", commit, tuple(files))


def listing_gated(data: Any) -> bool:
    """Does a Hugging Face model-info answer say the repository is gated (access by token)?"""
    gated = data.get("gated") if isinstance(data, dict) else None
    return gated not in (None, False, "false", "False")


def parse_ms_listing(ref: Ref, name: str, data: Any) -> Manifest:
    """Turn a ModelScope file listing into a manifest; raises ``ManifestError``."""
    where = f"listing of ms://{ref.name}"
    if isinstance(data, dict) and data.get("Code") not in (None, 200):
        raise ManifestError(f"{where}: {data.get('Message') or data.get('Code')}")
    files, revisions = [], set()
    for item in _get(_get(data, "Data", dict, where), "Files", list, where):
        if not isinstance(item, dict):
            raise ManifestError(f"{where}: a file entry is not an object")
        if item.get("Type") == "tree":
            continue
        path = _get(item, "Path", str, where)
        size = _get(item, "Size", int, f"{where}: {path}")
        sha = _get(item, "Sha256", str, f"{where}: {path}")
        files.append(FileEntry(path, size, f"sha256:{sha.lower()}"))
        if isinstance(item.get("Revision"), str):
            revisions.add(item["Revision"])
    if not files:
        raise ManifestError(f"{where}: the repository has no files")
    # Pin the commit when the listing names exactly one; else keep the revision we asked for.
    pinned = [r for r in revisions if COMMIT_RE.match(r)]
    commit = pinned[0] if len(revisions) == 1 and pinned else (ref.tag or MS_DEFAULT_REV)
    return Manifest(name, f"ms://{ref.name}", commit, tuple(files))
