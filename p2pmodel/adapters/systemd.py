"""The user's systemd: where the unit file goes and the ``systemctl --user`` calls around it.

The unit lives at ``$XDG_CONFIG_HOME/systemd/user/p2pmodel.service`` (default
``~/.config/...``). Whether a user manager answers is asked with ``systemctl --user
show-environment`` (bounded in time); without one (a container, an SSH session without a
login manager) the unit is still written and the user is told the commands to run. Blocking
subprocess calls: only the CLI's ``service`` command uses this module.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..core.unit import UNIT_NAME

TIMEOUT = 20.0


def unit_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    config = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(config) / "systemd" / "user" / UNIT_NAME


@dataclass(frozen=True)
class Outcome:
    ok: bool
    output: str  # what systemctl said (stderr, else stdout), one line


def systemctl(*args: str) -> Outcome:
    """``systemctl --user ARGS``; not ok when systemctl is missing or does not answer."""
    exe = shutil.which("systemctl")
    if exe is None:
        return Outcome(False, "systemctl is not installed")
    try:
        r = subprocess.run(
            [exe, "--user", *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return Outcome(False, str(e))
    text = (r.stderr.strip() or r.stdout.strip()).replace("\n", " | ")
    return Outcome(r.returncode == 0, text)


def user_manager() -> Outcome:
    """Does a user systemd answer here?"""
    return systemctl("show-environment")


def write_unit(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def linger_enabled(user: str | None = None) -> bool:
    """Does this user's manager start at boot and outlive logouts (``loginctl enable-linger``)?"""
    try:
        user = user or getpass.getuser()
    except (KeyError, OSError):
        return False
    return (Path("/var/lib/systemd/linger") / user).exists()
