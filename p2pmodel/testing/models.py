"""Synthetic model repositories on disk, for the fake mirror, tests, the demo and benchmarks.

Theory of operation: `make_model` writes a repository shaped like a diffusers model (sharded
`.safetensors` weights, a shard index, small JSON/Markdown files) under `root/<org>/<name>/` and
returns a `Repo` that records, per file, where its bytes live and the digests an upstream would
advertise (sha256 for LFS files, the git blob id for every file). The commit id is derived from
the content, so the same arguments always give the same commit.

Weights must be produced at disk speed (500 MiB in a few seconds), which rules out drawing every
byte from `random`: instead each file gets a 1 MiB pool of seeded random bytes and is assembled
from 16 KiB units, each a unit counter followed by a slice of the pool at a seeded random offset.
Every unit is distinct (the counter), so no two pieces of a file collide in a piece/merkle tree,
and content depends only on (seed, path, size): two repos made with the same seed share blobs,
which is how tests exercise store deduplication.

A `Repo` round-trips through plain JSON so a mirror running in another process can be handed it.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hashlib import _Hash

MIB = 1 << 20
LFS_MIN_SIZE = MIB
LFS_SUFFIXES = (".safetensors", ".bin")

_UNIT = 16 * 1024
_UNITS_PER_BLOCK = 512  # 8 MiB written per call: large enough to hit disk speed
_POOL_SIZE = MIB
_COUNTER = struct.Struct("<Q")


@dataclass(frozen=True)
class RepoFile:
    """One file of a repository: its repo-relative path, where it lives, and its digests."""

    path: str
    data_path: Path
    size: int
    sha256: str
    gitsha1: str
    lfs: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "data_path": str(self.data_path),
            "size": self.size,
            "sha256": self.sha256,
            "gitsha1": self.gitsha1,
            "lfs": self.lfs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RepoFile:
        return cls(
            path=str(data["path"]),
            data_path=Path(data["data_path"]),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            gitsha1=str(data["gitsha1"]),
            lfs=bool(data["lfs"]),
        )


@dataclass(frozen=True)
class Repo:
    """A repository at one commit; `branch` is the one branch name that resolves to it."""

    repo_id: str
    commit: str
    files: tuple[RepoFile, ...]
    branch: str = "main"
    repo_type: str = "model"  # or "dataset"
    token: str | None = None  # gated: only this bearer token may list or fetch it
    # What the Hub says of it besides its files (pipeline_tag, tags, cardData, lastModified...)
    info: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def key(self) -> str:
        """How the Hub's paths name it: ``org/name``, or ``datasets/org/name``."""
        return self.repo_id if self.repo_type == "model" else f"datasets/{self.repo_id}"

    @property
    def ref(self) -> str:
        """The p2pmodel reference of this repository (``hf://...``)."""
        return f"hf://{self.key}"

    def resolve(self, rev: str) -> str | None:
        """The commit `rev` (a branch name or the commit itself) points to, or None."""
        return self.commit if rev in (self.commit, self.branch) else None

    def file(self, path: str) -> RepoFile | None:
        return next((f for f in self.files if f.path == path), None)

    def to_json(self) -> str:
        return json.dumps(
            {
                "repo_id": self.repo_id,
                "commit": self.commit,
                "branch": self.branch,
                "repo_type": self.repo_type,
                "token": self.token,
                "info": self.info,
                "files": [f.to_dict() for f in self.files],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Repo:
        data = json.loads(text)
        return cls(
            repo_id=str(data["repo_id"]),
            commit=str(data["commit"]),
            files=tuple(RepoFile.from_dict(f) for f in data["files"]),
            branch=str(data.get("branch", "main")),
            repo_type=str(data.get("repo_type", "model")),
            token=data.get("token"),
            info=data.get("info"),
        )


def is_lfs(path: str, size: int) -> bool:
    """Whether the Hub would keep this file in LFS (big, or a weights format)."""
    return size >= LFS_MIN_SIZE or path.endswith(LFS_SUFFIXES)


def git_blob_id(size: int) -> _Hash:
    """A sha1 hasher primed with git's blob header; feed it the content to get the blob id."""
    return hashlib.sha1(b"blob %d\0" % size)


def file_from_disk(path: str, data_path: Path) -> RepoFile:
    """Describe an existing file, hashing it (used for release assets given on the command line)."""
    size = data_path.stat().st_size
    sha256, gitsha1 = hashlib.sha256(), git_blob_id(size)
    with data_path.open("rb") as f:
        while block := f.read(8 * MIB):
            sha256.update(block)
            gitsha1.update(block)
    return RepoFile(
        path, data_path, size, sha256.hexdigest(), gitsha1.hexdigest(), is_lfs(path, size)
    )


def make_model(
    root: Path,
    repo_id: str,
    *,
    shards: int,
    shard_size: int,
    small_files: dict[str, bytes] | None = None,
    seed: int = 0,
    single_file: bool = False,
) -> Repo:
    """Write a diffusers-shaped repository under `root/<repo_id>/` and describe it.

    Weights are `transformer/diffusion_pytorch_model-0000i-of-0000n.safetensors` plus their
    index, or one `transformer/diffusion_pytorch_model.safetensors` when `single_file` (then
    `shards` must be 1). `small_files` replaces the default small files (pass `{}` for none).
    """
    if shards < 1 or shard_size < 0:
        raise ValueError("need shards >= 1 and shard_size >= 0")
    if single_file and shards != 1:
        raise ValueError("single_file needs shards=1")
    repo_dir = root / repo_id
    stem = "transformer/diffusion_pytorch_model"
    if single_file:
        weight_paths = [f"{stem}.safetensors"]
    else:
        weight_paths = [f"{stem}-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    texts = _default_small_files(repo_id, seed) if small_files is None else dict(small_files)
    if not single_file:
        weight_map = {f"block_{i}.weight": p.rsplit("/", 1)[1] for i, p in enumerate(weight_paths)}
        index = {"metadata": {"total_size": shards * shard_size}, "weight_map": weight_map}
        texts.setdefault(f"{stem}.safetensors.index.json", json.dumps(index, indent=2).encode())

    files = [_write_random(repo_dir, p, shard_size, seed) for p in weight_paths]
    files += [_write_bytes(repo_dir, p, data) for p, data in texts.items()]
    files.sort(key=lambda f: f.path)
    listing = "".join(f"{f.path}\0{f.sha256}\n" for f in files)
    commit = hashlib.sha1(listing.encode()).hexdigest()
    return Repo(repo_id=repo_id, commit=commit, files=tuple(files))


def make_single_file(root: Path, name: str, size: int, seed: int) -> RepoFile:
    """Write one standalone file (a "GitHub release asset") at `root/name`."""
    return _write_random(root, name, size, seed)


def _default_small_files(repo_id: str, seed: int) -> dict[str, bytes]:
    model_index = {
        "_class_name": "FluxPipeline",
        "_diffusers_version": "0.30.0",
        "transformer": ["diffusers", "FluxTransformer2DModel"],
    }
    config = {"_class_name": "FluxTransformer2DModel", "num_layers": 19, "seed": seed}
    readme = f"# {repo_id}\n\nSynthetic test model written by p2pmodel.testing.models.\n"
    return {
        "model_index.json": json.dumps(model_index, indent=2).encode(),
        "transformer/config.json": json.dumps(config, indent=2).encode(),
        "README.md": readme.encode(),
    }


def _write_bytes(repo_dir: Path, path: str, data: bytes) -> RepoFile:
    target = repo_dir / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    gitsha1 = git_blob_id(len(data))
    gitsha1.update(data)
    sha256 = hashlib.sha256(data).hexdigest()
    return RepoFile(path, target, len(data), sha256, gitsha1.hexdigest(), is_lfs(path, len(data)))


def _write_random(repo_dir: Path, path: str, size: int, seed: int) -> RepoFile:
    # A str seed is hashed with sha512 by `random`, so this is stable across runs and platforms.
    rng = random.Random(f"{seed}\0{path}\0{size}")
    pool = rng.randbytes(_POOL_SIZE + _UNIT)
    sha256, gitsha1 = hashlib.sha256(), git_blob_id(size)
    target = repo_dir / path
    target.parent.mkdir(parents=True, exist_ok=True)
    written, unit = 0, 0
    with target.open("wb") as out:
        while written < size:
            parts: list[bytes] = []
            for _ in range(_UNITS_PER_BLOCK):
                offset = rng.randrange(_POOL_SIZE)
                parts += (_COUNTER.pack(unit), pool[offset : offset + _UNIT - _COUNTER.size])
                unit += 1
            block = b"".join(parts)[: size - written]
            sha256.update(block)
            gitsha1.update(block)
            out.write(block)
            written += len(block)
    return RepoFile(path, target, size, sha256.hexdigest(), gitsha1.hexdigest(), is_lfs(path, size))
