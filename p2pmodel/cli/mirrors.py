"""``p2pmodel mirrors``: the mirror rules, with what a running agent measured of them."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.control import MirrorsAsk
from .common import agent_op, print_json, user_home


def cmd_mirrors(args: argparse.Namespace) -> int:
    from ..adapters.home import load_config
    from ..core.mirrors import mirror_key

    home = user_home()
    config = load_config(home)
    rules = [{"for": r.prefix, "use": list(r.use)} for r in config.mirrors]
    if args.git_config:
        for line in git_config_lines(rules):
            print(line)
        return 0
    live = agent_op(home, MirrorsAsk())
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
        print_json({"agent": live is not None, "rules": table})
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
    from ..core.progress import human

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
