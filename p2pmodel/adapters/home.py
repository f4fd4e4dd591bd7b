"""The user's side of the machine: ``$P2PMODEL_HOME``, its ``config.toml``, the catalog shipped
in the package, this home's agent id and the environment switches.

Everything here reads files or the environment; ``core.config`` and ``core.catalog`` parse what
it reads. Quick commands use it, so it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..core.catalog import Catalog, parse_catalog
from ..core.config import Config, parse_config
from ..core.coordinator import SEGMENT
from ..core.errors import UserError
from ..core.officekey import OfficeKey


def default_home() -> Path:
    env = os.environ.get("P2PMODEL_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs  # only when needed: it is not free to import

    return Path(platformdirs.user_data_dir("p2pmodel", appauthor=False))


def load_config(home: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read ``home/config.toml`` (absent = defaults) and the environment; ``UserError`` if bad."""
    env = os.environ if env is None else env
    path = home / "config.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raw = {}
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"bad config {path}: {e}") from None
    config = parse_config(raw, env, str(path))
    if config.office_key is None and config.office_key_file is not None:
        config = dataclasses.replace(config, office_key=read_key_file(home, config.office_key_file))
    return config


def read_key_file(home: Path, name: str) -> OfficeKey:
    """The key in ``office_key_file`` (a path relative to the home, ``~`` expanded)."""
    path = home / Path(name).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not text"
        raise UserError(f"cannot read office_key_file {path}: {reason}") from None
    return OfficeKey.parse(text, f"office_key_file {path}")


def load_catalog() -> Catalog:
    """The names shipped with the package (``p2pmodel/catalog.toml``)."""
    text = resources.files("p2pmodel").joinpath("catalog.toml").read_text(encoding="utf-8")
    return parse_catalog(text)


def agent_id(home: Path) -> str:
    """A stable id for this home's agent (hex, kept in ``$P2PMODEL_HOME/agent-id``)."""
    path = home / "agent-id"
    with contextlib.suppress(OSError):
        text = path.read_text().strip()
        if 8 <= len(text) <= 32 and all(c in "0123456789abcdef" for c in text):
            return text
    new = secrets.token_hex(8)
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(new + "\n")
    return new


@dataclass(frozen=True)
class Switches:
    """What the environment turns on or off (read once, by the CLI)."""

    lan: bool = True  # P2PMODEL_LAN=off: a daemonless get fetches from mirrors only
    sharing: bool = True  # P2PMODEL_SHARING=off (older: P2PMODEL_COORDINATION=off)
    segment: int = SEGMENT  # P2PMODEL_SEGMENT_MIB: the sharing unit, a power of two
    log: str = "warning"  # P2PMODEL_LOG: serve's log level


def switches(env: Mapping[str, str] | None = None) -> Switches:
    env = os.environ if env is None else env

    def off(name: str) -> bool:
        return env.get(name, "on").strip().lower() == "off"

    return Switches(
        lan=not off("P2PMODEL_LAN"),
        sharing=not (off("P2PMODEL_SHARING") or off("P2PMODEL_COORDINATION")),
        segment=segment_from_env(env.get("P2PMODEL_SEGMENT_MIB")),
        log=env.get("P2PMODEL_LOG", "warning").strip().lower() or "warning",
    )


def segment_from_env(value: str | None) -> int:
    """``P2PMODEL_SEGMENT_MIB`` (a power of two; tests and demos use small models)."""
    if not value:
        return SEGMENT
    mib = int(value) if value.isdigit() else 0
    if mib < 1 or mib & (mib - 1):
        raise UserError(f"P2PMODEL_SEGMENT_MIB must be a power of two (MiB), not {value!r}")
    return mib * 1024 * 1024
