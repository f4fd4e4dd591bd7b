"""``p2pmodel publish``: a local model directory into the store, offered to the office."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import UserError
from .common import failure, print_json, user_home


def cmd_publish(args: argparse.Namespace) -> int:
    """Store a local model directory (hard links, no second copy) and offer it to the office
    through the running agent."""
    import datetime

    from ..adapters import control
    from ..adapters.home import agent_id, load_catalog, load_config
    from ..adapters.store import Store
    from ..core.catalog import describe_target, find_name
    from ..core.control import Failed, PublishAsk
    from ..core.refs import parse_ref
    from ..services.get import GetResult
    from ..services.publish import prepare

    ref = parse_ref(args.name)
    if ref.kind != "name":
        raise UserError(f"publish takes a NAME:TAG of your own, not {ref.text!r}")
    home = user_home()
    config = load_config(home)
    target = find_name(ref, config, load_catalog())
    warnings = []
    if target is not None and target.origin == "config":
        warnings.append(
            f"{ref.text} is in this workstation's config ({describe_target(target)}): config "
            "names win, so 'get' here still gives that; keyed workstations without it in their "
            "config get the published model"
        )
    elif target is not None:
        warnings.append(
            f"{ref.text} is a catalog name ({describe_target(target)}): on keyed workstations "
            "the published model wins over the catalog's"
        )
    if config.office_key is None:
        warnings.append(
            "no office key: other workstations take names only from keyed peers, so they "
            "cannot get it by name (see 'p2pmodel key new')"
        )
    store = Store(home)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    manifest, already, copied = prepare(
        store, args.dir.expanduser().resolve(), ref, agent_id(home), now, force=args.force
    )
    if copied:
        warnings.append(f"{copied} file(s) were copied: the directory is on another filesystem")
    if already:
        warnings.append(f"{ref.text} is published with these very files already")
    try:
        req = PublishAsk(ref.text, manifest.digest, args.force)
        answer = control.ask(home, req, timeout=30)
        if isinstance(answer, Failed):
            raise failure(answer, req.op)
    except control.NoAgent:
        store.set_ref(ref.text, manifest.digest)
        warnings.append("no agent runs here: start 'p2pmodel serve' to offer it to the office")
    path = store.make_snapshot(ref, manifest)
    for w in warnings:
        print(f"p2pmodel: warning: {w}", file=sys.stderr)
    if args.json:
        result = GetResult(path, manifest, name_from="published", manifest_from="store")
        print_json({**result.describe(ref.text), "already_published": already})
    else:
        print(path)
    return 0
