"""The user's side of the machine: ``$P2PMODEL_HOME``, its ``config.toml``, the catalog shipped
in the package, this home's agent id and the environment switches.

Everything here reads files or the environment; ``core.config`` and ``core.catalog`` parse what
it reads. Quick commands use it, so it imports nothing heavy. A file holding the office key
(``config.toml`` with ``office_key``, the ``office_key_file``) that others can read is named
in a warning each time it is loaded (on stderr: ``serve``'s log, or the command's own);
``write_private`` writes a file only its owner can read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..core.catalog import Catalog, parse_catalog
from ..core.config import Config, parse_config
from ..core.errors import UserError
from ..core.officekey import OfficeKey, exposed_key_warning
from ..core.sharing import SEGMENT

log = logging.getLogger(__name__)


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
    if isinstance(raw.get("office_key"), str):
        _warn_if_exposed(path)
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
    _warn_if_exposed(path)
    return OfficeKey.parse(text, f"office_key_file {path}")


def _warn_if_exposed(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    warning = exposed_key_warning(str(path), mode)
    if warning is not None:
        log.warning("%s", warning)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600, whatever the umask), in
    place of what was there: a file that may hold the office key."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
