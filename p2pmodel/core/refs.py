"""Model references as users type them.

``name:tag`` (a catalog or config name), ``hf://org/repo[@rev]`` (a model; a dataset is
``hf://datasets/org/repo[@rev]``), ``ms://org/repo[@rev]`` and plain ``https://`` URLs of single
files. Parsing is pure; resolving to a manifest is ``resolver``'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from .errors import UserError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}\Z")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
REPO_RE = re.compile(rf"^{_REPO_PART}/{_REPO_PART}\Z")
REV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}\Z")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}\Z")
DATASETS = "datasets/"

Kind = Literal["name", "hf", "ms", "url"]


@dataclass(frozen=True)
class Ref:
    """A parsed reference. ``text`` is the canonical spelling, used as the key in the store."""

    kind: Kind
    name: str = ""  # name:tag -> name; hf/ms -> "org/repo" ("datasets/org/repo"); url -> the URL
    tag: str = ""  # name:tag -> tag; hf/ms -> revision ("" = default branch)

    @property
    def repo_type(self) -> Literal["model", "dataset"]:
        return "dataset" if self.name.startswith(DATASETS) else "model"

    @property
    def repo(self) -> str:
        """``org/repo`` of an hf/ms reference (without ``datasets/``)."""
        return self.name.removeprefix(DATASETS)

    @property
    def text(self) -> str:
        if self.kind == "name":
            return f"{self.name}:{self.tag}"
        if self.kind in ("hf", "ms"):
            return f"{self.kind}://{self.name}" + (f"@{self.tag}" if self.tag else "")
        return self.name

    @property
    def pinned(self) -> bool:
        """True when the reference names one immutable content (a commit, or a URL + digest)."""
        return self.kind in ("hf", "ms") and bool(COMMIT_RE.match(self.tag))

    def snapshot_parts(self) -> tuple[str, ...]:
        """Relative directory of this ref's snapshot under ``store/snapshots``."""
        if self.kind == "name":
            return (self.name, self.tag)
        if self.kind in ("hf", "ms"):
            org, repo = self.repo.split("/")
            # One path component per ref: a revision like "v1/fix" must not nest directories.
            default = "main" if self.kind == "hf" else "master"
            kind = self.kind if self.repo_type == "model" else f"{self.kind}-datasets"
            return (kind, org, repo, (self.tag or default).replace("/", "%2F"))
        parts = urlsplit(self.name)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{parts.netloc}{parts.path}").strip("_.")
        return ("url", safe[:200] or "file")


def parse_ref(text: str) -> Ref:
    """Parse what the user typed, or raise ``UserError`` saying what is wrong with it."""
    text = text.strip()
    if not text:
        raise UserError("empty model reference")
    for kind in ("hf", "ms"):
        prefix = f"{kind}://"
        if text.startswith(prefix):
            body = text[len(prefix) :]
            repo, _, rev = body.partition("@")
            repo = repo.strip("/")
            dataset = kind == "hf" and repo.startswith(DATASETS)
            if dataset:
                repo = repo.removeprefix(DATASETS)
            if not REPO_RE.match(repo) or ".." in repo:
                raise UserError(f"bad repository in {text!r}: expected {prefix}org/repo[@revision]")
            if rev and (not REV_RE.match(rev) or ".." in rev):
                raise UserError(f"bad revision {rev!r} in {text!r}")
            return Ref("hf" if kind == "hf" else "ms", DATASETS + repo if dataset else repo, rev)
    if text.startswith(("https://", "http://")):
        parts = urlsplit(text)
        if not parts.netloc or not parts.path.strip("/"):
            raise UserError(f"bad URL {text!r}: expected the URL of a single file")
        return Ref("url", text)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise UserError(
            f"unknown scheme {scheme!r} in {text!r} (use name:tag, hf://, ms://, https://)"
        )
    name, sep, tag = text.partition(":")
    tag = tag if sep else "latest"
    if not NAME_RE.match(name):
        raise UserError(
            f"bad model name {name!r}: use lowercase letters, digits, '.', '_' and '-'"
            " (e.g. qwen-image:v1.0)"
        )
    if not TAG_RE.match(tag):
        raise UserError(f"bad tag {tag!r} in {text!r}")
    return Ref("name", name, tag)
