"""The systemd user unit that runs ``p2pmodel serve`` in the background (pure: text only).

``render_unit`` writes the unit for the command line that starts the agent and the environment
it needs (``P2PMODEL_HOME`` when the user set one), quoted as systemd reads it: a word with
spaces or quotes in double quotes with backslash escapes, ``%`` doubled (unit specifiers) and,
in command lines, ``$`` doubled (variable expansion). ``Restart=on-failure`` brings the agent
back after a crash; ``systemctl --user reload p2pmodel`` sends ``SIGHUP`` (config re-read).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

UNIT_NAME = "p2pmodel.service"
MARKER = "# Written by `p2pmodel service install`; `p2pmodel service uninstall` removes it."
_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+=:,@")


def _quote(word: str) -> str:
    if word and set(word) <= _PLAIN:
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_line(argv: Sequence[str]) -> str:
    """A command line for ``ExecStart=``."""
    return " ".join(_quote(a.replace("%", "%%").replace("$", "$$")) for a in argv)


def env_line(name: str, value: str) -> str:
    """One ``Environment=`` assignment."""
    return _quote(f"{name}={value}".replace("%", "%%"))


def render_unit(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The unit file for the agent started by ``argv`` (``serve`` is appended) with ``env``."""
    lines = [
        MARKER,
        "[Unit]",
        "Description=p2pmodel office agent: fetches AI models once, shares them over the LAN",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_line([*argv, 'serve'])}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        *(f"Environment={env_line(k, v)}" for k, v in sorted(env.items())),
        "Restart=on-failure",
        "RestartSec=5s",
        # libtorrent closes its session on the way out (seconds with an SSL listener).
        "TimeoutStopSec=30s",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def exec_start(unit_text: str) -> str | None:
    """The ``ExecStart=`` of a unit file's text (to tell whether it runs this p2pmodel)."""
    for line in unit_text.splitlines():
        if line.startswith("ExecStart="):
            return line.removeprefix("ExecStart=")
    return None
