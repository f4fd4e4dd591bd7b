"""``p2pmodel service``: the agent as a systemd user unit."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import print_json, user_home


def cmd_service(args: argparse.Namespace) -> int:
    from ..adapters import systemd
    from ..core.unit import UNIT_NAME, exec_start, render_unit

    path = systemd.unit_path()
    if args.action == "status":
        return _service_status(path, args.json)
    if args.action == "uninstall":
        manager = systemd.user_manager()
        if manager.ok:
            systemd.systemctl("disable", "--now", UNIT_NAME)  # fails harmlessly if not loaded
        existed = path.exists()
        path.unlink(missing_ok=True)
        if manager.ok:
            systemd.systemctl("daemon-reload")
        print(f"removed {path}" if existed else f"not installed ({path} does not exist)")
        return 0
    env = {"P2PMODEL_LOG": os.environ.get("P2PMODEL_LOG", "info")}
    if os.environ.get("P2PMODEL_HOME"):
        env["P2PMODEL_HOME"] = str(user_home().resolve())
    text = render_unit(_this_command(), env)
    try:
        systemd.write_unit(path, text)
    except OSError as e:
        from ..core.errors import LocalError

        raise LocalError(f"cannot write {path}: {e.strerror}") from None
    print(f"wrote {path} (runs: {exec_start(text)})")
    manager = systemd.user_manager()
    if manager.ok:
        for step in (("daemon-reload",), ("enable", "--now", UNIT_NAME)):
            done = systemd.systemctl(*step)
            if not done.ok:
                from ..core.errors import LocalError

                raise LocalError(f"systemctl --user {' '.join(step)} failed: {done.output}")
        print(f"enabled and started {UNIT_NAME}; logs: journalctl --user -u {UNIT_NAME}")
    else:
        print(f"no user systemd answers here ({manager.output}); to start the agent, run:")
        print("  systemctl --user daemon-reload")
        print(f"  systemctl --user enable --now {UNIT_NAME}")
    if not systemd.linger_enabled():
        print(
            "on a machine nobody logs in to, let it run without a login session and start "
            "at boot:\n  loginctl enable-linger $USER"
        )
    return 0


def _this_command() -> list[str]:
    """How to start the p2pmodel that runs now: its ``p2pmodel`` executable, else this
    Python with ``-m p2pmodel``."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == "p2pmodel" and os.access(argv0, os.X_OK):
        return [os.path.abspath(argv0)]
    return [sys.executable, "-m", "p2pmodel"]


def _service_status(path: Path, as_json: bool) -> int:
    from ..adapters import systemd
    from ..adapters.control import NoAgent, ask
    from ..core.control import StatusAnswer, StatusAsk
    from ..core.unit import UNIT_NAME, exec_line, exec_start

    home = user_home()
    installed = path.exists()
    runs = exec_start(path.read_text(encoding="utf-8")) if installed else None
    manager = systemd.user_manager()
    enabled = active = None
    if manager.ok and installed:
        enabled = systemd.systemctl("is-enabled", UNIT_NAME).output
        active = systemd.systemctl("is-active", UNIT_NAME).output
    try:
        answer = ask(home, StatusAsk(), timeout=5.0)
        agent = answer.data.get("agent") if isinstance(answer, StatusAnswer) else None
    except NoAgent:
        agent = None
    out = {
        "unit": str(path),
        "installed": installed,
        "exec_start": runs,
        "this_p2pmodel": runs == exec_line([*_this_command(), "serve"]) if runs else None,
        "user_systemd": manager.ok,
        "enabled": enabled,
        "active": active,
        "agent": agent,
        "home": str(home),
    }
    if as_json:
        print_json(out)
        return 0
    print(f"unit: {path} ({'installed' if installed else 'not installed'})")
    if runs:
        note = "" if out["this_p2pmodel"] else " (another p2pmodel than this one)"
        print(f"  runs: {runs}{note}")
    if manager.ok:
        if installed:
            print(f"  systemd: {enabled}, {active}")
    else:
        print(f"  no user systemd answers here ({manager.output})")
    print(f"agent for {home}: {agent or 'none answers'}")
    return 0
