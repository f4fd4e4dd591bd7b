"""The office service's commands (part of the CLI): ``rm``, ``pin``/``unpin`` and ``gc``,
and what ``ls`` shows of the store's upkeep.

Each is a quick command: it imports no trio, httpx, libtorrent, zeroconf or rich. What needs the
running agent (``rm`` and ``gc`` of a store it seeds) goes over the control socket; without an
agent the command does the work itself. Errors are one line and an exit code, as everywhere
in the CLI.
"""

from __future__ import annotations

import argparse
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
        error = P2PModelError(str(answer.get("message")))
        error.exit_code = int(answer.get("code") or 1)
        raise error
    if answer.get("event") == "status" and "agent" in answer:  # an agent from before rm/gc
        raise UserError(f"the running agent does not know '{req['op']}': restart it")
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


COMMANDS = {
    "rm": cmd_rm,
    "pin": cmd_pin,
    "unpin": cmd_pin,
    "gc": cmd_gc,
}


def add_keeping(store: Any, rows: list[dict[str, Any]]) -> int:
    """Add to ``ls`` rows what the store's upkeep knows: bytes on disk, last use, pin, the
    models each shares blobs with. Returns the bytes the store takes."""
    from .core.retention import shared

    sizes = dict(store.verified_blobs())
    models = {m.ref: m for m in store.models()}
    sharing = shared(models.values(), sizes)
    for r in rows:
        m = models[r["ref"]]
        r["on_disk"] = sum(sizes.get(d, 0) for d in m.blobs)
        r["last_use"] = m.last_use
        r["pinned"] = m.pinned
        r["shared_with"] = [vars(x) for x in sharing.get(r["ref"], [])]
    return int(sum(sizes.values()) + sum(store.partial_files().values()))


def ago(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{seconds // span:.0f} {unit} ago"
    return "just now"
