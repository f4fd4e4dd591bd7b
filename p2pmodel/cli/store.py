"""The store's commands: ``ls``, ``rm``, ``pin``/``unpin``, ``gc`` and ``verify``.

Each is a quick command: it imports no trio, httpx, libtorrent, zeroconf or rich. ``rm`` and
``gc`` of a store a running agent seeds go over the control socket; without an agent the
command does the work itself."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..core.control import CollectAsk, RemoveAsk
from ..core.errors import UserError
from .common import agent_op, ago, print_json, ref_text, user_home


def cmd_ls(args: argparse.Namespace) -> int:
    if args.catalog:
        from ..adapters.home import load_catalog, load_config

        config, catalog = load_config(user_home()), load_catalog()
        names = {**catalog.models, **{k: v.url for k, v in catalog.files.items()}}
        names.update(config.models)
        names.update({k: v.url for k, v in config.files.items()})
        if args.json:
            print_json([{"name": k, "source": v} for k, v in sorted(names.items())])
        else:
            for k, v in sorted(names.items()):
                print(f"{k:32} {v}")
        return 0
    from ..adapters.store import Store
    from ..core.progress import human

    store = Store(user_home())
    rows, on_disk = store.listing()
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no models yet (p2pmodel get NAME:TAG)")
    now = time.time()
    for r in rows:
        state = "complete" if r["complete"] else f"partial, {human(r['missing_bytes'])} missing"
        print(
            f"{r['ref']:40} {human(r['size']):>10}  {r['files']:>4} files  {state}"
            f"  used {ago(now - r['last_use'])}{'  pinned' if r['pinned'] else ''}"
        )
        for other in r["shared_with"]:
            n = other["blobs"]
            print(
                f"    shares {n} blob{'s' if n != 1 else ''} ({human(other['bytes'])}) "
                f"with {other['ref']}"
            )
    if rows:
        from ..adapters.home import load_config

        cap = load_config(user_home()).store_max
        print(f"store: {human(on_disk)} on disk" + (f" (cap {human(cap)})" if cap else ""))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from ..adapters.home import load_config
    from ..adapters.store import Store

    home, ref = user_home(), ref_text(args.ref)
    out = agent_op(home, RemoveAsk(ref))
    if out is None:
        store = Store(home)
        if ref not in store.refs():
            raise UserError(f"{ref} is not in the store (see p2pmodel ls)")
        if ref in store.pins():
            raise UserError(f"{ref} is pinned (p2pmodel unpin {ref} first)")
        out = _collected(store, None, (ref,), load_config(home).store_max)
    if args.json:
        print_json(out)
    else:
        _print_collected(out, f"rm {ref}")
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from ..adapters.store import Store

    store, ref = Store(user_home()), ref_text(args.ref)
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
    from ..adapters.home import load_config
    from ..adapters.store import Store

    home = user_home()
    out = agent_op(home, CollectAsk())
    if out is None:
        cap = load_config(home).store_max
        out = _collected(Store(home), cap, (), cap)
    if args.json:
        print_json(out)
    else:
        _print_collected(out, "gc")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Hash every blob again; a blob that no longer matches its digest is removed (the next
    get fetches it again) and reported. Exit 4 if any was bad."""
    from ..adapters.hashing import digest_file
    from ..adapters.store import Store
    from ..core.digests import algorithm
    from ..core.errors import IntegrityError
    from ..core.refs import parse_ref

    store = Store(user_home())
    if args.ref:
        ref = parse_ref(args.ref)
        m = store.lookup(ref.text)
        if m is None:
            raise UserError(f"{ref.text} is not in the store")
        blobs = sorted(m.blobs().items())
    else:
        blobs = list(store.verified_blobs())
    bad = []
    for digest, size in blobs:
        path = store.blob_path(digest)
        if not path.exists():
            continue
        if digest_file(path, algorithm(digest)) != digest or path.stat().st_size != size:
            bad.append(digest)
            store.remove_blob(digest)
    if args.json:
        print_json({"checked": len(blobs), "bad": bad})
    else:
        print(f"checked {len(blobs)} blobs: {len(bad)} bad")
        for d in bad:
            print(f"removed {d} (did not match its digest; the next get fetches it again)")
    if bad:
        raise IntegrityError(
            f"{len(bad)} stored blob(s) did not match their digest and were removed"
        )
    return 0


def _collected(store: Any, cap: int | None, drop: tuple[str, ...], shown: int | None) -> Any:
    """No agent runs: collect in this process (nothing of this agent uses the store); the
    same report as the agent's (``shown``: the cap it names)."""
    from ..core.retention import Collected

    plan, deleted = store.collect(cap=cap, drop=drop)
    return Collected(plan, deleted, shown).describe()


def _print_collected(out: dict[str, Any], what: str) -> None:
    from ..core.progress import human

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
