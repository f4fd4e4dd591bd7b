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


def lookup_name(ref: Ref, config: Config, catalog: Catalog) -> NameTarget:
    """Resolve ``name:tag`` through the user's config, then the catalog; else a ``UserError``
    that suggests close names."""
    key = ref.text
    for origin, models, files in (
        ("config", config.models, config.files),
        ("catalog", catalog.models, catalog.files),
    ):
        if key in models:
            return NameTarget(source=parse_ref(models[key]), origin=origin)
        if key in files:
            return NameTarget(file=files[key], origin=origin)
    known = sorted({*config.models, *config.files, *catalog.models, *catalog.files})
    same_name = [k for k in known if k.split(":", 1)[0] == ref.name]
    close = same_name or difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see 'p2pmodel ls --catalog'"
    raise UserError(f"unknown model {key!r}{hint}")
