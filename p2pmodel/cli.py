"""The ``p2pmodel`` command.

Every error a user can cause or meet prints one line on stderr and exits non-zero with a code
that says whose fault it was (``errors``); a bug of ours prints one line too and leaves the
traceback in ``$P2PMODEL_HOME/log/``. The fast path of ``get`` imports neither trio nor httpx.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .core.errors import P2PModelError, UserError

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, like every other user error
        raise UserError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="p2pmodel",
        description="Fetch large AI models once per office: mirrors, LAN peers, verified store.",
    )
    p.add_argument("--version", action="version", version=f"p2pmodel {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser("get", help="fetch a model and print the path of its directory")
    g.add_argument("ref", help="name:tag, hf://org/repo[@rev], ms://org/repo[@rev] or https://URL")
    g.add_argument("--to", type=Path, metavar="DIR", help="also place the files under DIR")
    g.add_argument(
        "--hf-cache",
        action="store_true",
        help="also lay the model out in the Hugging Face cache ($HF_HUB_CACHE), so "
        "HF_HUB_OFFLINE=1 from_pretrained finds it",
    )
    g.add_argument("--sha256", metavar="HEX", help="expected digest of a single-file URL")
    g.add_argument("--refresh", action="store_true", help="resolve the reference again upstream")
    g.add_argument("--connections", type=int, metavar="N", help="parallel connections (16)")
    g.add_argument(
        "--progress",
        choices=["auto", "rich", "plain", "none"],
        default="auto",
        help="progress display (auto: live on a terminal, plain lines otherwise)",
    )
    g.add_argument("--json", action="store_true", help="print the result as JSON")
    g.add_argument(
        "--no-lan",
        action="store_true",
        help="without a running agent, fetch from mirrors only (also: P2PMODEL_LAN=off)",
    )

    sv = sub.add_parser("serve", help="run the office agent (foreground)")
    sv.add_argument(
        "--interface",
        action="append",
        metavar="IP",
        help="IPv4 address to listen and announce on (repeatable; default: config "
        "'interfaces', else all of this host's)",
    )
    sv.add_argument("--port", type=int, default=7420, help="peer RPC port (7420)")
    sv.add_argument("--torrent-port", type=int, default=0, help="libtorrent port (0: any)")
    sv.add_argument("--no-discovery", action="store_true", help="no mDNS; static peers only")

    vf = sub.add_parser("verify", help="re-check stored blobs against their digests (scrub)")
    vf.add_argument("ref", nargs="?", help="only this model's blobs (default: the whole store)")
    vf.add_argument("--json", action="store_true", help="print JSON")

    st = sub.add_parser("status", help="this agent, its peers and transfers")
    st.add_argument("--json", action="store_true", help="print JSON")

    pb = sub.add_parser(
        "publish", help="offer a model directory of this workstation to the office as NAME:TAG"
    )
    pb.add_argument("dir", type=Path, metavar="DIR", help="the model's directory")
    pb.add_argument("name", metavar="NAME:TAG", help="the name keyed workstations get it by")
    pb.add_argument("--force", action="store_true", help="replace a NAME:TAG of other content")
    pb.add_argument("--json", action="store_true", help="print the result as JSON")

    ky = sub.add_parser("key", help="the office key: only agents holding it exchange anything")
    kys = ky.add_subparsers(dest="key_command", metavar="KEY_COMMAND", parser_class=_Parser)
    kys.add_parser("new", help="print a fresh office key (put it in every workstation's config)")
    kys.add_parser("fingerprint", help="print the configured key's fingerprint (it is public)")

    ls = sub.add_parser("ls", help="list the models in the store")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--catalog", action="store_true", help="list the names p2pmodel knows")
    from .cli_office import add_commands  # rm, pin, unpin, gc, mirrors, service

    add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from .cli_office import COMMANDS as OFFICE_COMMANDS

        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        handler = {
            "get": cmd_get,
            "key": cmd_key,
            "publish": cmd_publish,
            "ls": cmd_ls,
            "serve": cmd_serve,
            "status": cmd_status,
            "verify": cmd_verify,
            **OFFICE_COMMANDS,
        }[args.command]
        try:
            return handler(args)
        except BaseExceptionGroup as eg:  # a trio nursery's: report the one cause that matters
            from .core.errors import first_cause

            cause = first_cause(eg)
            if cause is eg:
                raise
            raise cause from None
    except P2PModelError as e:
        print(f"p2pmodel: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("p2pmodel: interrupted; progress is saved, run it again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 1
    except Exception as e:
        where = _log_traceback()
        print(
            f"p2pmodel: internal error: {type(e).__name__}: {e} (details in {where})",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _log_traceback() -> str:
    try:
        from .adapters.home import default_home

        log = default_home() / "log" / "p2pmodel.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {sys.argv!r}\n")
            f.write(traceback.format_exc())
        return str(log)
    except OSError:
        traceback.print_exc()
        return "the traceback above"


def _home() -> Path:
    from .adapters.home import default_home

    return default_home()


def _hf_cache() -> Path:
    from .adapters.hfcache import cache_root

    return cache_root().resolve()


def cmd_get(args: argparse.Namespace) -> int:
    from .core.refs import parse_ref
    from .services.get import GetRequest, fast_get

    if args.connections is not None and not 1 <= args.connections <= 256:
        raise UserError("--connections must be from 1 to 256")
    req = GetRequest(
        parse_ref(args.ref),
        to=args.to.expanduser().resolve() if args.to else None,
        sha256=args.sha256,
        refresh=args.refresh,
        progress="none" if args.json and args.progress == "auto" else args.progress,
        hf_cache=_hf_cache() if args.hf_cache else None,
    )
    home = _home()
    if req.ref.kind == "name":  # an unknown name fails here, before any heavy import
        from .adapters.home import load_catalog, load_config
        from .adapters.store import Store
        from .core.catalog import find_name, unknown_name

        config, catalog = load_config(home), load_catalog()
        known = find_name(req.ref, config, catalog) or Store(home).lookup(req.ref.text)
        if known is None and config.office_key is None:  # with a key, the office may know it
            raise unknown_name(req.ref, config, catalog)
    result = fast_get(req, home)
    if result is None:
        from .adapters import control

        try:
            return _get_via_agent(req, home, args.json)
        except control.NoAgent:
            from .adapters.home import switches

            lan = not args.no_lan and switches().lan
            result = _run_get(req, home, args.connections, lan)
    for w in result.warnings:
        print(f"p2pmodel: warning: {w}", file=sys.stderr)
    if args.json:
        _print_json(result.describe(req.ref.text))
    else:
        print(result.path)
    return 0


def _run_get(req: Any, home: Path, connections: int | None, lan: bool) -> Any:
    """No agent runs: fetch in this process, with an embedded agent for its duration (or,
    with ``lan`` off, mirrors only). Either way the get runs in a ``GetService``."""
    import trio

    from .adapters.home import load_config, switches
    from .core.errors import first_cause
    from .services.gets import GetService

    config = load_config(home)
    env = switches()

    async def run() -> Any:
        if not lan:
            async with GetService(home, config).open() as gets:
                return await gets.get(req, connections=connections)
        from .services.agent import AgentOptions, open_agent

        opts = AgentOptions(
            rpc_port=0, wait_for_peers=1.5, sharing=env.sharing, segment=env.segment
        )
        async with open_agent(home, config, opts) as agent:
            return await agent.gets.get(req, connections=connections)

    try:
        return trio.run(run)
    except BaseExceptionGroup as eg:
        raise first_cause(eg) from None


def _get_via_agent(req: Any, home: Path, as_json: bool) -> int:
    """Hand the get to the running agent and show its progress here."""
    from .adapters import control
    from .adapters.terminal import make_renderer
    from .core.progress import Progress

    progress = Progress()
    renderer: Any = None  # made once the agent answers (no output if there is none)
    msg: dict[str, Any] = {}
    try:
        for msg in control.request(
            home,
            {
                "op": "get",
                "ref": req.ref.text,
                "to": str(req.to) if req.to else None,
                "hf_cache": str(req.hf_cache) if req.hf_cache else None,
                "sha256": req.sha256,
                "refresh": req.refresh,
            },
        ):
            if msg.get("event") == "progress":
                _apply_progress(progress, msg)
                if renderer is None and not as_json:
                    renderer = make_renderer(progress, req.progress)
                if renderer is not None:
                    renderer.update()
    finally:
        if renderer is not None:
            renderer.close()
    if msg.get("event") == "error":
        print(f"p2pmodel: error: {msg.get('message')}", file=sys.stderr)
        return int(msg.get("code") or 1)
    for w in msg.get("warnings") or []:
        print(f"p2pmodel: warning: {w}", file=sys.stderr)
    if as_json:
        _print_json({k: v for k, v in msg.items() if k not in ("event", "warnings")})
    else:
        print(msg.get("path"))
    return 0


def _apply_progress(progress: Any, msg: dict[str, Any]) -> None:
    progress.from_mirrors = int(msg.get("from_mirrors") or 0)
    progress.from_peers = int(msg.get("from_peers") or 0)
    for key, label, size, have, source, state in msg.get("files") or []:
        if key not in progress.files:
            progress.add(key, label, size)
        f = progress.files[key]
        f.have, f.source, f.state = have, source, state


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    import trio

    from .adapters.control import NoAgent, request
    from .adapters.home import load_config, switches
    from .adapters.journal import setup_logging
    from .services.agent import Agent, AgentOptions, trim_memory
    from .services.control import ControlServer

    env = switches()
    setup_logging(env.log)
    home = _home()
    config = load_config(home)
    try:
        for _ in request(home, {"op": "status"}, timeout=2.0):
            pass
        raise UserError(f"an agent already runs for {home}")
    except NoAgent:
        pass
    opts = AgentOptions(
        interfaces=args.interface or [],
        rpc_port=args.port,
        torrent_port=args.torrent_port,
        discovery=not args.no_discovery,
        sharing=env.sharing,
        segment=env.segment,
        hf_endpoint=config.hf_endpoint,
    )
    if config.office_key is None:
        print(
            "p2pmodel: no office key: an open office (any host on the LAN can fetch what this "
            "agent seeds, and names are not taken from peers; see 'p2pmodel key new')",
            file=sys.stderr,
        )
    if config.hf_endpoint and not config.hf_endpoint.startswith("127."):
        print(
            f"p2pmodel: warning: the Hugging Face endpoint listens on {config.hf_endpoint}: "
            "it serves anyone who can reach that address",
            file=sys.stderr,
        )

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                agent = Agent(home, config, opts)
                try:
                    await nursery.start(agent.run)
                except OSError as e:
                    raise UserError(f"cannot listen on {agent.interfaces}: {e.strerror}") from None
                control = ControlServer(
                    home, agent.gets, agent.status, after_get=trim_memory, ops=agent.control_ops()
                )
                await nursery.start(control.run)
                office = f"office key {agent.tls.fingerprint}" if agent.tls else "open office"
                print(
                    f"p2pmodel: agent {agent.id} serving on {', '.join(agent.interfaces)} "
                    f"(rpc {agent.rpc_port}, torrent {agent.status()['torrent_port']}, {office})",
                    file=sys.stderr,
                    flush=True,
                )
                async for sig in signals:
                    if sig == signal.SIGHUP:  # re-read config.toml; transfers go on
                        await agent.reload_config()
                        continue
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)
    print("p2pmodel: agent stopped", file=sys.stderr)
    return 0


def cmd_key(args: argparse.Namespace) -> int:
    """``key new``: a fresh key on stdout (nowhere else); ``key fingerprint``: the
    configured key's public fingerprint, to check two workstations agree."""
    if args.key_command == "new":
        import secrets

        from .core.officekey import KEY_BYTES, format_key

        print(format_key(secrets.token_bytes(KEY_BYTES)))
        if sys.stdout.isatty():
            print(
                'p2pmodel: put it in every workstation\'s config.toml as office_key = "..." '
                "(or in a file named by office_key_file), then restart the agents",
                file=sys.stderr,
            )
        return 0
    if args.key_command == "fingerprint":
        from .adapters.home import load_config

        key = load_config(_home()).office_key
        if key is None:
            raise UserError(
                "no office key is configured (office_key, office_key_file, "
                "P2PMODEL_OFFICE_KEY): an open office"
            )
        print(key.fingerprint)
        return 0
    raise UserError("p2pmodel key needs a command: new or fingerprint")


def cmd_publish(args: argparse.Namespace) -> int:
    """Store a local model directory (hard links, no second copy) and offer it to the office
    through the running agent."""
    import datetime

    from .adapters import control
    from .adapters.home import agent_id, load_catalog, load_config
    from .adapters.store import Store
    from .core.catalog import describe_target, find_name
    from .core.refs import parse_ref
    from .services.get import GetResult
    from .services.publish import prepare

    ref = parse_ref(args.name)
    if ref.kind != "name":
        raise UserError(f"publish takes a NAME:TAG of your own, not {ref.text!r}")
    home = _home()
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
        req = {"op": "publish", "ref": ref.text, "manifest": manifest.digest, "force": args.force}
        answer = next(iter(control.request(home, req, timeout=30)))
        if answer.get("event") == "error":
            print(f"p2pmodel: error: {answer.get('message')}", file=sys.stderr)
            return int(answer.get("code") or 1)
    except control.NoAgent:
        store.set_ref(ref.text, manifest.digest)
        warnings.append("no agent runs here: start 'p2pmodel serve' to offer it to the office")
    path = store.make_snapshot(ref, manifest)
    for w in warnings:
        print(f"p2pmodel: warning: {w}", file=sys.stderr)
    if args.json:
        result = GetResult(path, manifest, name_from="published", manifest_from="store")
        _print_json({**result.describe(ref.text), "already_published": already})
    else:
        print(path)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Hash every blob again; a blob that no longer matches its digest is removed (the next
    get fetches it again) and reported. Exit 4 if any was bad."""
    from .adapters.hashing import digest_file
    from .adapters.store import Store
    from .core.digests import algorithm
    from .core.errors import IntegrityError
    from .core.refs import parse_ref

    store = Store(_home())
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
        _print_json({"checked": len(blobs), "bad": bad})
    else:
        print(f"checked {len(blobs)} blobs: {len(bad)} bad")
        for d in bad:
            print(f"removed {d} (did not match its digest; the next get fetches it again)")
    if bad:
        raise IntegrityError(
            f"{len(bad)} stored blob(s) did not match their digest and were removed"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .adapters.control import NoAgent, request
    from .core.progress import human

    home = _home()
    try:
        status = next(iter(request(home, {"op": "status"}, timeout=10.0)))
    except NoAgent:
        raise P2PModelError(f"no agent is running for {home} (start one: p2pmodel serve)") from None
    status.pop("event", None)
    if args.json:
        _print_json(status)
        return 0
    office = status.get("office") or {}
    key = f"office key {office['fingerprint']}" if office.get("key") else "open office"
    print(
        f"agent {status['agent']} on {', '.join(status['interfaces'])} "
        f"(rpc {status['rpc_port']}, {key})"
    )
    print(
        f"seeding {status['seeding']} blobs; from LAN {human(status['from_peers'])}, "
        f"from mirrors {human(status['from_mirrors'])}"
    )
    if limits := status.get("limits"):
        from .core.limits import describe_rate

        window = f" (schedule {limits['window']})" if limits.get("window") else ""
        print(
            f"limits: mirror download {describe_rate(limits['mirror_download'])}, "
            f"LAN upload {describe_rate(limits['lan_upload'])}{window}"
        )
    alive = [p for p in status["peers"] if p["alive"]]
    print(f"peers: {len(alive)} alive")
    for p in status["peers"]:
        state = "alive" if p["alive"] else "gone"
        print(
            f"  {p['agent']:18} {', '.join(p['addresses']):24} {state:5} "
            f"heard {p['last_heard_age']:.1f} s ago, holds {p['holds']}"
        )
        for lie in p.get("distrusted") or []:
            print(f"    distrusted for {lie['content']}: {lie['why']}")
    for t in status["transfers"]:
        print(f"  {t['label']}: {human(t['have'])}/{human(t['size'])} {t['state']} {t['source']}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    if args.catalog:
        from .adapters.home import load_catalog, load_config

        config, catalog = load_config(_home()), load_catalog()
        names = {**catalog.models, **{k: v.url for k, v in catalog.files.items()}}
        names.update(config.models)
        names.update({k: v.url for k, v in config.files.items()})
        if args.json:
            _print_json([{"name": k, "source": v} for k, v in sorted(names.items())])
        else:
            for k, v in sorted(names.items()):
                print(f"{k:32} {v}")
        return 0
    from .adapters.store import Store
    from .cli_office import ago
    from .core.progress import human

    store = Store(_home())
    rows, on_disk = store.listing()
    if args.json:
        _print_json(rows)
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
        from .adapters.home import load_config

        cap = load_config(_home()).store_max
        print(f"store: {human(on_disk)} on disk" + (f" (cap {human(cap)})" if cap else ""))
    return 0


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    sys.exit(main())
