"""The office service's commands (part of the CLI): ``rm``, ``pin``/``unpin``, ``gc``,
``mirrors`` and ``service``, and what ``ls`` shows of the store's upkeep.

Each is a quick command: it imports no trio, httpx, libtorrent, zeroconf or rich. What needs the
running agent (``rm`` and ``gc`` of a store it seeds, live mirror statistics) goes over the
control socket; without an agent the command does the work itself (the store) or says what it
cannot know (mirrors' rates). Errors are one line and an exit code, as everywhere in the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .cli import _home, _print_json
from .core.errors import P2PModelError, UserError


def add_commands(sub: Any) -> None:
    rm = sub.add_parser("rm", help="remove a model (its blobs no other model uses go too)")
    rm.add_argument("ref", help="the reference as `p2pmodel ls` shows it")
    rm.add_argument("--json", action="store_true", help="print JSON")
    for name, what in (("pin", "never evict"), ("unpin", "allow evicting")):
        pn = sub.add_parser(name, help=f"{what} a model to keep the store under store_max")
        pn.add_argument("ref", help="the reference as `p2pmodel ls` shows it")
    gc = sub.add_parser("gc", help="delete unused blobs; evict old models over store_max")
    gc.add_argument("--json", action="store_true", help="print JSON")
    mi = sub.add_parser("mirrors", help="mirror rules, their candidates and how they do")
    mi.add_argument("--json", action="store_true", help="print JSON")
    mi.add_argument(
        "--git-config",
        action="store_true",
        help="print `git config --global url.<mirror>.insteadOf <origin>` for the same rules",
    )
    se = sub.add_parser("service", help="run the agent in the background (systemd user unit)")
    se.add_argument("action", choices=["install", "uninstall", "status"])
    se.add_argument("--json", action="store_true", help="status as JSON")


def _ref_text(text: str) -> str:
    from .core.refs import parse_ref

    return parse_ref(text).text


def _agent_op(home: Path, req: dict[str, Any]) -> dict[str, Any] | None:
    """One request to the running agent; None when no agent runs. Its error is raised here as
    the same one-line error with the same exit code."""
    from .adapters.control import NoAgent, request

    try:
        answer = next(iter(request(home, req, timeout=600.0)))
    except NoAgent:
        return None
    if answer.get("event") == "error":
        message = str(answer.get("message"))
        if message.startswith("bad op"):  # an agent started before this p2pmodel was updated
            raise UserError(f"the running agent does not know '{req['op']}': restart it")
        error = P2PModelError(message)
        error.exit_code = int(answer.get("code") or 1)
        raise error
    answer.pop("event", None)
    return answer


def _collected(store: Any, cap: int | None, drop: tuple[str, ...]) -> dict[str, Any]:
    """No agent runs: collect in this process (nothing of this agent uses the store)."""
    plan, deleted = store.collect(cap=cap, drop=drop)
    return {
        "evicted": list(plan.evict),
        "deleted": len(deleted),
        "freed": plan.freed,
        "kept_in_use": list(plan.kept_busy),
        "size": plan.size_after,
        "cap": cap,
        "over_cap": plan.over_cap,
    }


def _print_collected(out: dict[str, Any], what: str) -> None:
    from .core.progress import human

    evicted = ", ".join(out["evicted"]) or "nothing"
    print(
        f"{what}: evicted {evicted}; deleted {out['deleted']} blobs, freed {human(out['freed'])};"
        f" store now {human(out['size'])}"
        + (f" (cap {human(out['cap'])})" if out.get("cap") else "")
    )
    if out.get("kept_in_use"):
        print(f"  kept {len(out['kept_in_use'])} blobs a get or a peer uses now (next gc)")
    if out.get("over_cap"):
        print("  still over the cap: pinned models and transfers in progress hold the rest")


def cmd_rm(args: argparse.Namespace) -> int:
    from .adapters.store import Store

    home, ref = _home(), _ref_text(args.ref)
    out = _agent_op(home, {"op": "rm", "ref": ref})
    if out is None:
        store = Store(home)
        if ref not in store.refs():
            raise UserError(f"{ref} is not in the store (see p2pmodel ls)")
        if ref in store.pins():
            raise UserError(f"{ref} is pinned (p2pmodel unpin {ref} first)")
        out = _collected(store, None, (ref,))
    if args.json:
        _print_json(out)
    else:
        _print_collected(out, f"rm {ref}")
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from .adapters.store import Store

    store, ref = Store(_home()), _ref_text(args.ref)
    pin = args.command == "pin"
    if pin and ref not in store.refs():
        raise UserError(f"{ref} is not in the store (see p2pmodel ls)")
    was = ref in store.pins()
    store.set_pinned(ref, pin)
    if pin:
        print(f"{ref} is pinned: it is never evicted to keep the store under store_max")
    else:
        print(f"{ref} is {'no longer' if was else 'not'} pinned")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from .adapters.home import load_config
    from .adapters.store import Store

    home = _home()
    out = _agent_op(home, {"op": "gc"})
    if out is None:
        out = _collected(Store(home), load_config(home).store_max, ())
    if args.json:
        _print_json(out)
    else:
        _print_collected(out, "gc")
    return 0


def cmd_mirrors(args: argparse.Namespace) -> int:
    from .adapters.home import load_config
    from .core.mirrors import mirror_key

    home = _home()
    config = load_config(home)
    rules = [{"for": r.prefix, "use": list(r.use)} for r in config.mirrors]
    if args.git_config:
        for line in git_config_lines(rules):
            print(line)
        return 0
    live = _agent_op(home, {"op": "mirrors"})
    if live is not None:
        rules = live["rules"]  # the agent's own (it may run with an older config)
    board: dict[str, Any] = live["mirrors"] if live else {}
    table: list[dict[str, Any]] = [
        {
            "for": r["for"],
            "use": [
                {"url": u, "mirror": mirror_key(u), **board.get(mirror_key(u), {})}
                for u in r["use"]
            ],
        }
        for r in rules
    ]
    if args.json:
        _print_json({"agent": live is not None, "rules": table})
        return 0
    if not table:
        print("no [[mirror]] rules: every URL is fetched from its origin (see README)")
    for rule in table:
        print(rule["for"])
        for c in rule["use"]:
            print(f"  {c['url']:40} {_mirror_state(c) if live else ''}".rstrip())
    if live is None:
        print("(no agent runs: rates, errors and states are measured by a running p2pmodel serve)")
    return 0


def _mirror_state(c: dict[str, Any]) -> str:
    from .core.progress import human

    if "state" not in c:
        return "not used yet"
    state = c["state"]
    if state == "backing off":
        state += f" ({c['backoff_for']:.0f} s)"
    parts = [state]
    if c.get("rate"):
        parts.append(f"{human(c['rate'])}/s per connection")
    parts.append(f"{human(c['delivered'])} delivered")
    if c.get("errors"):
        parts.append(f"{c['errors']} errors (last: {c['last_error']})")
    if c.get("banned_for"):
        parts.append(f"banned for {len(c['banned_for'])} files")
    return ", ".join(parts)


def git_config_lines(rules: list[dict[str, Any]]) -> list[str]:
    """``git config`` commands that make git use the same mirrors (one per origin: git has no
    failover, so the first mirror that is not the origin itself)."""
    import shlex

    out = []
    for rule in rules:
        origin = rule["for"]
        mirrors = [u for u in rule["use"] if u != origin]
        if not mirrors:
            out.append(f"# {origin}: no mirror besides the origin itself")
            continue
        key = f"url.{mirrors[0]}.insteadOf"
        out.append(f"git config --global {shlex.quote(key)} {shlex.quote(origin)}")
        if len(mirrors) > 1:
            out.append(f"#   (git takes one mirror per origin; not used: {', '.join(mirrors[1:])})")
    return out


def cmd_service(args: argparse.Namespace) -> int:
    from .adapters import systemd
    from .core.unit import UNIT_NAME, exec_start, render_unit

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
        env["P2PMODEL_HOME"] = str(_home().resolve())
    text = render_unit(_this_command(), env)
    try:
        systemd.write_unit(path, text)
    except OSError as e:
        from .core.errors import LocalError

        raise LocalError(f"cannot write {path}: {e.strerror}") from None
    print(f"wrote {path} (runs: {exec_start(text)})")
    manager = systemd.user_manager()
    if manager.ok:
        for step in (("daemon-reload",), ("enable", "--now", UNIT_NAME)):
            done = systemd.systemctl(*step)
            if not done.ok:
                from .core.errors import LocalError

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
    from .adapters import systemd
    from .adapters.control import NoAgent, request
    from .core.unit import UNIT_NAME, exec_line, exec_start

    home = _home()
    installed = path.exists()
    runs = exec_start(path.read_text(encoding="utf-8")) if installed else None
    manager = systemd.user_manager()
    enabled = active = None
    if manager.ok and installed:
        enabled = systemd.systemctl("is-enabled", UNIT_NAME).output
        active = systemd.systemctl("is-active", UNIT_NAME).output
    try:
        agent = next(iter(request(home, {"op": "status"}, timeout=5.0))).get("agent")
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
        _print_json(out)
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


COMMANDS = {
    "rm": cmd_rm,
    "pin": cmd_pin,
    "unpin": cmd_pin,
    "gc": cmd_gc,
    "mirrors": cmd_mirrors,
    "service": cmd_service,
}


def ago(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{seconds // span:.0f} {unit} ago"
    return "just now"
