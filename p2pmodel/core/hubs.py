"""The same files on another hub (``[[same_files]]``): which repositories hold them, and which
blobs of a manifest another hub's listing may serve (pure).

Theory of operation. An office says that repositories under some prefixes hold the same files::

    [[same_files]]
    repos = ["hf://Qwen/", "ms://Qwen/"]

A get of ``hf://Qwen/Qwen-Image`` then also lists ``ms://Qwen/Qwen-Image`` (the same path under
the other prefix, at that hub's default branch). The manifest, which digests make up the
model, still comes only from the reference's own hub; the other listing only adds sources: a
blob whose digest (and size) it also gives may be fetched from that hub's file URL too, a blob
it does not list, or lists with another digest, never. Every byte is still checked against the
manifest's digest, so another hub can waste bandwidth but never change the model. Hugging Face
gives a sha256 for LFS files only and ModelScope one for every file, so git-only small files
of an ``hf://`` model always come from Hugging Face.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .manifest import Manifest
from .refs import Ref

_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
# An organisation ("hf://Qwen/": every repository in it) or one repository ("hf://Qwen/x").
_PREFIX = re.compile(rf"^(hf|ms)://({_PART})/({_PART})?\Z")
HUB_NAMES = {"hf": "Hugging Face", "ms": "ModelScope"}


class SameFilesError(ValueError):
    """A bad ``[[same_files]]`` table (the user's config)."""


@dataclass(frozen=True)
class SameFiles:
    """Repository prefixes (``hf://org/`` or ``ms://org/repo``) that hold the same files."""

    repos: tuple[str, ...]


def parse_same_files(raw: Any) -> tuple[SameFiles, ...]:
    """``[[same_files]]`` tables; ``SameFilesError`` with one line saying what is wrong."""
    if not isinstance(raw, list):
        raise SameFilesError("[[same_files]] must be an array of tables")
    out: list[SameFiles] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(raw, 1):
        where = f"same_files #{i}"
        if not isinstance(table, dict) or set(table) != {"repos"}:
            raise SameFilesError(f"{where}: give exactly 'repos' (a list of repository prefixes)")
        repos = table["repos"]
        if not (isinstance(repos, list) and all(isinstance(r, str) for r in repos)):
            raise SameFilesError(f"{where}: 'repos' must be a list of strings")
        if len(set(repos)) < 2:
            raise SameFilesError(f"{where}: 'repos' needs at least two different prefixes")
        whole = set()
        for prefix in repos:
            match = _PREFIX.match(prefix)
            if match is None:
                raise SameFilesError(
                    f"{where}: {prefix!r} is not 'hf://org/' or 'ms://org/' (or a whole "
                    "repository 'hf://org/name', no revision)"
                )
            if match.group(2) == "datasets" or ".." in prefix:
                raise SameFilesError(f"{where}: {prefix!r}: only model repositories")
            whole.add(match.group(3) is not None)
            if prefix in seen and seen[prefix] != i:
                raise SameFilesError(f"{where}: {prefix!r} is also in same_files #{seen[prefix]}")
            seen[prefix] = i
        if len(whole) > 1:
            raise SameFilesError(
                f"{where}: mix of organisations ('hf://org/') and whole repositories "
                "('hf://org/name'): give one kind"
            )
        out.append(SameFiles(tuple(dict.fromkeys(repos))))
    return tuple(out)


def other_repos(rules: Sequence[SameFiles], source: str) -> list[Ref]:
    """The repositories said to hold the same files as ``source`` (``hf://org/name``), each at
    its hub's default branch; none when no rule names it."""
    best: tuple[int, SameFiles, str] | None = None
    for rule in rules:
        for prefix in rule.repos:
            matches = source == prefix or (prefix.endswith("/") and source.startswith(prefix))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rule, prefix)
    if best is None:
        return []
    _, rule, mine = best
    rest = source[len(mine) :]
    out = []
    for prefix in rule.repos:
        other = prefix + rest
        if prefix != mine and other != source and "/" in other.partition("://")[2]:
            kind, _, name = other.partition("://")
            out.append(Ref("hf" if kind == "hf" else "ms", name))
    return out


def hub_of(source: str) -> str:
    """The hub a manifest's source lives on: ``hf``, ``ms``, or "" (a URL, a publication)."""
    kind = source.partition("://")[0]
    return kind if kind in HUB_NAMES else ""


def shared_paths(manifest: Manifest, other: Manifest) -> dict[str, str]:
    """Digest -> the path in ``other`` of each blob of ``manifest`` that ``other`` lists with
    the same sha256 and size. ``gitsha1:`` digests (git-only files) are never matched: two hubs'
    git objects are not the same thing."""
    theirs: dict[tuple[str, int], str] = {}
    for f in other.files:
        if f.digest.startswith("sha256:"):
            theirs.setdefault((f.digest, f.size), f.path)
    out: dict[str, str] = {}
    for f in manifest.files:
        path = theirs.get((f.digest, f.size))
        if path is not None and f.digest.startswith("sha256:"):
            out.setdefault(f.digest, path)
    return out
