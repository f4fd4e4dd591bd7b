"""Names known without any configuration (``catalog.toml`` shipped inside the package), and the
order in which a ``name:tag`` is looked up."""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field

from .config import Config, FileSpec, parse_files_table
from .errors import UserError
from .refs import Ref, parse_ref


@dataclass(frozen=True)
class Catalog:
    models: dict[str, str] = field(default_factory=dict)
    files: dict[str, FileSpec] = field(default_factory=dict)


def parse_catalog(text: str) -> Catalog:
    """A catalog from its TOML text (``adapters.home.load_catalog`` reads the shipped one)."""
    raw = tomllib.loads(text)
    models = {parse_ref(k).text: v for k, v in raw.get("models", {}).items()}
    return Catalog(models, parse_files_table(raw.get("files", {}), "catalog [files]"))


@dataclass(frozen=True)
class NameTarget:
    """What a ``name:tag`` stands for: a source reference, or a single pinned file."""

    source: Ref | None = None
    file: FileSpec | None = None
    origin: str = ""  # "config" or "catalog", for messages


def find_name(ref: Ref, config: Config, catalog: Catalog) -> NameTarget | None:
    """What ``name:tag`` stands for in the user's config, else in the catalog (None: in
    neither; with an office key, keyed peers may still know it)."""
    key = ref.text
    for origin, models, files in (
        ("config", config.models, config.files),
        ("catalog", catalog.models, catalog.files),
    ):
        if key in models:
            return NameTarget(source=parse_ref(models[key]), origin=origin)
        if key in files:
            return NameTarget(file=files[key], origin=origin)
    return None


def describe_target(target: NameTarget) -> str:
    return (
        target.file.url if target.file is not None else target.source.text if target.source else ""
    )


def lookup_name(ref: Ref, config: Config, catalog: Catalog) -> NameTarget:
    """Resolve ``name:tag`` through the user's config, then the catalog; else a ``UserError``
    that suggests close names."""
    target = find_name(ref, config, catalog)
    if target is not None:
        return target
    raise unknown_name(ref, config, catalog)


def unknown_name(ref: Ref, config: Config, catalog: Catalog, office: bool = False) -> UserError:
    """The error for a name nobody knows, with close names as hints."""
    key = ref.text
    known = sorted({*config.models, *config.files, *catalog.models, *catalog.files})
    same_name = [k for k in known if k.split(":", 1)[0] == ref.name]
    close = same_name or difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see 'p2pmodel ls --catalog'"
    where = " (no keyed peer holds it either)" if office else ""
    return UserError(f"unknown model {key!r}{where}{hint}")
