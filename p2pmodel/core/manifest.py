"""Manifests: which files, of which size and upstream digest, make up one model.

A manifest is the unit of trust: blobs may come from anyone, but the list of digests comes only
from a trusted source (upstream listing, the shipped catalog, the user's config). It is encoded
as canonical msgpack (keys sorted, files sorted by path, no floats) so that its own sha256 is a
stable identity that agents can compare.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import ProtocolError

FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILES = 100_000
MAX_FILE_SIZE = 1 << 50  # 1 PiB: far beyond any model file, far within msgpack's integers
DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|gitsha1:[0-9a-f]{40})\Z")
# The source of a model published in the office (``p2pmodel publish``): no upstream has it, and
# its commit is the time it was published (ISO 8601, UTC), so the newest sorts last.
PUBLISHED = "published:"


class ManifestError(ProtocolError):
    """A manifest (or a listing turned into one) breaks the rules below."""


def check_path(path: str) -> str:
    """Return ``path`` if it is a safe repo-relative POSIX path, else raise ``ManifestError``."""
    if not path or len(path) > 1024:
        raise ManifestError(f"bad file path {path!r}: empty or too long")
    if "\\" in path or "\0" in path:
        raise ManifestError(f"bad file path {path!r}: backslash or NUL")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise ManifestError(f"bad file path {path!r}: absolute")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ManifestError(f"bad file path {path!r}: empty, '.' or '..' component")
    return path


def check_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise ManifestError(f"bad digest {digest!r}: expected sha256:<64 hex> or gitsha1:<40 hex>")
    return digest


@dataclass(frozen=True, order=True)
class FileEntry:
    path: str
    size: int
    digest: str  # "sha256:<hex>" or "gitsha1:<hex>"

    def __post_init__(self) -> None:
        check_path(self.path)
        check_digest(self.digest)
        size = self.size
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_SIZE:
            raise ManifestError(f"bad size {self.size!r} for {self.path!r}")


@dataclass(frozen=True)
class Manifest:
    """One model at one version. ``source`` is e.g. ``hf://Qwen/Qwen-Image`` or a file URL."""

    name: str
    source: str
    commit: str
    files: tuple[FileEntry, ...]

    def __post_init__(self) -> None:
        files = tuple(sorted(self.files))
        if len(files) > MAX_FILES:
            raise ManifestError(f"too many files ({len(files)})")
        seen: set[str] = set()
        sizes: dict[str, int] = {}
        for f in files:
            if f.path in seen:
                raise ManifestError(f"duplicate file path {f.path!r}")
            seen.add(f.path)
            if sizes.setdefault(f.digest, f.size) != f.size:
                raise ManifestError(f"{f.digest} listed with two sizes ({f.path!r})")
        # A file cannot also be a directory of another file ("a" and "a/b").
        dirs = {
            "/".join(f.path.split("/")[:i]) for f in files for i in range(1, f.path.count("/") + 1)
        }
        clash = seen & dirs
        if clash:
            raise ManifestError(f"path is both a file and a directory: {sorted(clash)[0]!r}")
        object.__setattr__(self, "files", files)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def blobs(self) -> dict[str, int]:
        """Distinct blobs (digest -> size): two paths with the same content are one blob."""
        return {f.digest: f.size for f in self.files}

    def to_bytes(self) -> bytes:
        obj = {
            "commit": self.commit,
            "files": [[f.path, f.size, f.digest] for f in self.files],
            "name": self.name,
            "source": self.source,
            "v": FORMAT_VERSION,
        }
        return msgpack.packb(obj, use_bin_type=True)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Decode and validate; raises ``ManifestError`` on anything unexpected."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError("manifest too large")
        try:
            obj = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_str_len=1 << 20,
                max_array_len=MAX_FILES,
                max_map_len=64,
                max_bin_len=0,
            )
        except (ValueError, msgpack.UnpackException) as e:
            raise ManifestError(f"undecodable manifest: {e}") from None
        version = obj.get("v") if isinstance(obj, dict) else None
        if type(version) is not int or version != FORMAT_VERSION:
            raise ManifestError("not a version-1 manifest")
        name, source, commit, files = (obj.get(k) for k in ("name", "source", "commit", "files"))
        if not all(isinstance(x, str) for x in (name, source, commit)) or not isinstance(
            files, list
        ):
            raise ManifestError("manifest fields have wrong types")
        return cls(str(name), str(source), str(commit), tuple(_entry(x) for x in files))

    @classmethod
    def build(cls, name: str, source: str, commit: str, files: Iterable[FileEntry]) -> Manifest:
        return cls(name, source, commit, tuple(files))


def is_published(manifest: Manifest) -> bool:
    """Was this model published in the office (no upstream, no mirror has its files)?"""
    return manifest.source.startswith(PUBLISHED)


def _entry(x: Any) -> FileEntry:
    if not (isinstance(x, list) and len(x) == 3):
        raise ManifestError("manifest file entry is not [path, size, digest]")
    path, size, digest = x
    if not isinstance(path, str) or not isinstance(size, int) or not isinstance(digest, str):
        raise ManifestError("manifest file entry has wrong types")
    return FileEntry(path, size, digest)
