"""The ``git`` command: reading a repository's config, the user's global config, credentials.

Plain blocking subprocesses (``p2pmodel git setup`` is a quick command: no trio, no httpx).
Every call runs with the caller's environment, so git itself decides which global file
``--global`` means (``HOME``, ``XDG_CONFIG_HOME``, ``GIT_CONFIG_GLOBAL``). Credentials are asked
for one host at a time and never logged.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..core.errors import UserError
from ..core.lfs import credential_query, parse_credential


def _git(args: list[str], cwd: Path | None = None, stdin: str | None = None) -> tuple[int, str]:
    try:
        r = subprocess.run(
            ["git", *args],
            cwd=cwd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except FileNotFoundError:
        raise UserError("git is not installed") from None
    except subprocess.TimeoutExpired:
        return 1, ""
    return r.returncode, r.stdout


def config_get(key: str, cwd: Path | None = None) -> str | None:
    """``git config --get KEY`` as the repository in ``cwd`` sees it (None: unset)."""
    rc, out = _git(["config", "--get", key], cwd)
    return out.strip() or None if rc == 0 else None


def git_dir(cwd: Path | None = None) -> Path | None:
    rc, out = _git(["rev-parse", "--absolute-git-dir"], cwd)
    return Path(out.strip()) if rc == 0 and out.strip() else None


def global_get_all(key: str) -> list[str]:
    rc, out = _git(["config", "--global", "--get-all", key])
    return out.splitlines() if rc == 0 else []


def global_add(key: str, value: str) -> None:
    rc, _ = _git(["config", "--global", "--add", key, value])
    if rc != 0:
        raise UserError(f"git config --global --add {key} failed")


def global_set(key: str, value: str) -> None:
    rc, _ = _git(["config", "--global", "--replace-all", key, value])
    if rc != 0:
        raise UserError(f"git config --global {key} failed")


def global_unset(key: str, value: str) -> None:
    """Remove exactly ``key = value`` from the global config (other values stay)."""
    _git(["config", "--global", "--fixed-value", "--unset-all", key, value])


def global_remove_section_if_empty(section: str) -> None:
    rc, out = _git(["config", "--global", "--get-regexp", "^" + section.replace(".", r"\.")])
    if rc != 0 or not out.strip():
        _git(["config", "--global", "--remove-section", section])


def credential_fill(url: str) -> tuple[str, str] | None:
    """The user's git credential for the host of ``url`` (asked for that host only; no
    prompt), or None."""
    rc, out = _git(["credential", "fill"], stdin=credential_query(url))
    return parse_credential(out) if rc == 0 else None
