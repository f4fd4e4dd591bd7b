"""What a front end asks of a get, and what it gets back (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.manifest import Manifest
from ...core.refs import Ref


@dataclass
class GetRequest:
    ref: Ref
    to: Path | None = None
    sha256: str | None = None
    refresh: bool = False
    token: str | None = field(default=None, repr=False)  # the user's HF token (never logged)
    hf_cache: Path | None = None  # also lay the model out in this Hugging Face cache


@dataclass
class GetResult:
    path: Path
    manifest: Manifest
    fetched: int = 0  # bytes this run took from mirrors
    warnings: list[str] = field(default_factory=list)
    from_peers: int = 0  # bytes this run took from LAN peers
    name_from: str = "store"  # who said what the reference stands for (``core.resolve``)
    manifest_from: str = "store"  # store | upstream | office | pinned
    peer: str | None = None  # the keyed peer that gave the manifest
    hubs: dict[str, int] = field(default_factory=dict)  # hub (hf, ms) -> bytes its URLs gave
    file_hubs: dict[str, dict[str, int]] = field(default_factory=dict)  # digest -> the same
    same_files: list[str] = field(default_factory=list)  # other hubs' repositories listed

    def describe(self, ref: str) -> dict[str, Any]:
        """Plain data for ``get --json`` (also what the agent sends back to the CLI)."""
        m = self.manifest
        return {
            "ref": ref,
            "path": str(self.path),
            "manifest": m.digest,
            "source": m.source,
            "commit": m.commit,
            "size": m.total_size,
            "fetched": self.fetched,
            "from_peers": self.from_peers,
            "name_from": self.name_from,
            "manifest_from": self.manifest_from,
            "peer": self.peer,
            "hubs": self.hubs,
            "same_files": self.same_files,
            "files": [
                {"path": f.path, "size": f.size, "digest": f.digest}
                | ({"hubs": self.file_hubs[f.digest]} if f.digest in self.file_hubs else {})
                for f in m.files
            ],
        }
