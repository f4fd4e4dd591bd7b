"""What a reference stands for, decided once per get (pure).

Theory of operation. ``resolve`` takes what is known without any network: the reference, the
user's config, the shipped catalog, the manifest the store has for the reference (None with
``--refresh``), the ``--sha256`` the user gave and whether keyed peers may be asked. It returns
one ``Decision``, which the get runner (``services.get``) carries out:

- ``UseStored``: the store's manifest stands (a complete one needs no network at all: the CLI's
  fast path);
- ``AskOffice``: with an office key, keyed peers are asked for a name the config does not have;
  what they answer wins over a catalog name (``shadows``, a warning), and if nobody answers the
  runner goes on with ``otherwise`` (the catalog's decision, or None: an unknown name);
- ``ListUpstream``: the repository's upstream listing through the mirrors; when no mirror answers
  and the source pins a commit, ``office_fallback`` says which keyed peer manifests fit;
- ``FetchFile``: a single file pinned by URL (and digest, when one is known).

An unknown name without an office key is a ``UserError`` raised here, before any heavy import.
The order of a name is the store, the config, keyed peers, then the catalog; a stored manifest
that no longer matches what the config or catalog say the name stands for is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import Catalog, NameTarget, find_name, unknown_name
from .config import Config, FileSpec
from .errors import UserError
from .manifest import Manifest
from .refs import Ref


@dataclass(frozen=True)
class UseStored:
    manifest: Manifest
    name_from: str  # "store" for a name, "reference" for a source reference


@dataclass(frozen=True)
class ListUpstream:
    source: Ref
    name_from: str  # config | catalog | reference
    office_fallback: NameTarget | None = None  # mirrors unreachable: keyed peers' manifests


@dataclass(frozen=True)
class FetchFile:
    spec: FileSpec  # spec.sha256 == "": no published digest (stored as fetched, warned)
    name_from: str  # config | catalog | reference


@dataclass(frozen=True)
class AskOffice:
    text: str
    shadows: NameTarget | None  # the catalog's target a peer's answer wins over (a warning)
    otherwise: Decision | None  # nobody answers: this (None: the name is unknown)


Decision = UseStored | AskOffice | ListUpstream | FetchFile


def check_sha(sha256: str | None) -> str | None:
    """``--sha256`` as 64 lowercase hex digits (a ``sha256:`` prefix allowed)."""
    if sha256 is None:
        return None
    sha = sha256.lower().removeprefix("sha256:")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise UserError(f"--sha256 wants 64 hex digits, not {sha256!r}")
    return sha


def matches_target(target: NameTarget, manifest: Manifest) -> bool:
    """Does a manifest match what config/catalog say the name stands for?"""
    if target.file is not None:
        return manifest.source == target.file.url and [f.digest for f in manifest.files] == [
            f"sha256:{target.file.sha256}"
        ]
    src = target.source
    assert src is not None
    if manifest.source != f"{src.kind}://{src.name}":
        return False
    return not src.tag or not src.pinned or manifest.commit == src.tag


def resolve(
    ref: Ref,
    config: Config,
    catalog: Catalog,
    stored: Manifest | None,
    *,
    sha256: str | None = None,
    keyed: bool = False,
) -> Decision:
    """The one decision of a get (see the module docs). ``stored``: the store's manifest for
    ``ref.text`` (None when absent or refreshing); ``keyed``: keyed peers can be asked."""
    sha = check_sha(sha256)
    if stored is not None and sha and [f.digest for f in stored.files] != [f"sha256:{sha}"]:
        stored = None
    if ref.kind == "url":
        if stored is not None:
            return UseStored(stored, "reference")
        return FetchFile(FileSpec(ref.name, sha or "", None), "reference")
    if ref.kind != "name":
        if stored is not None:
            return UseStored(stored, "reference")
        return ListUpstream(ref, "reference", NameTarget(source=ref) if keyed else None)
    target = find_name(ref, config, catalog)
    if stored is not None and (target is None or matches_target(target, stored)):
        return UseStored(stored, "store")
    by_target = _by_target(target, keyed) if target is not None else None
    if by_target is not None and target is not None and target.origin == "config":
        return by_target  # config names never ask the office
    if keyed:
        return AskOffice(ref.text, target, by_target)
    if by_target is None:
        raise unknown_name(ref, config, catalog)
    return by_target


def _by_target(target: NameTarget, keyed: bool) -> Decision:
    if target.file is not None:
        return FetchFile(target.file, target.origin)
    assert target.source is not None
    return ListUpstream(target.source, target.origin, target if keyed else None)
