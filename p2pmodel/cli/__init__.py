"""The ``p2pmodel`` command: a module per command group (``get``, ``serve`` and ``status``,
``store``: ls/rm/pin/gc/verify, ``mirrors``, ``service``, ``publish``, ``key`` and ``tracker``,
``git``), each importing only what it uses (``common`` is what they share).

Every error a user can cause or meet prints one line on stderr and exits non-zero with a code
that says whose fault it was (``core.errors``); a bug of ours prints one line too and leaves the
traceback in ``$P2PMODEL_HOME/log/``. The fast path of ``get`` imports neither trio nor httpx.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import P2PModelError, UserError
from . import get, git, key, mirrors, publish, serve, service, store

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "get": get.cmd_get,
    "serve": serve.cmd_serve,
    "status": serve.cmd_status,
    "ls": store.cmd_ls,
    "rm": store.cmd_rm,
    "pin": store.cmd_pin,
    "unpin": store.cmd_pin,
    "gc": store.cmd_gc,
    "verify": store.cmd_verify,
    "mirrors": mirrors.cmd_mirrors,
    "service": service.cmd_service,
    "publish": publish.cmd_publish,
    "key": key.cmd_key,
    "tracker": key.cmd_tracker,
    "git": git.cmd_git,
}


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

    tr = sub.add_parser("tracker", help="what the office's BitTorrent tracker needs to know")
    trs = tr.add_subparsers(dest="tracker_command", metavar="TRACKER_COMMAND", parser_class=_Parser)
    trs.add_parser(
        "whitelist", help="print the info-hash(es) the tracker must allow (opentracker -w FILE)"
    )

    gt = sub.add_parser("git", help="git clone / git lfs pull take LFS objects from the office")
    gts = gt.add_subparsers(dest="git_command", metavar="GIT_COMMAND", parser_class=_Parser)
    gsu = gts.add_parser(
        "setup", help="make git use the mirror rules and p2pmodel as git-lfs's transfer agent"
    )
    gsu.add_argument("--print", action="store_true", help="show what it would write, write nothing")
    gsu.add_argument("--undo", action="store_true", help="remove only what setup wrote")
    gts.add_parser("lfs-agent", help="the git-lfs custom transfer agent (git-lfs starts it)")

    ls = sub.add_parser("ls", help="list the models in the store")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--catalog", action="store_true", help="list the names p2pmodel knows")
    _store_commands(sub)
    return p


def _store_commands(sub: Any) -> None:
    """rm, pin, unpin, gc, mirrors, service."""
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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        handler = COMMANDS[args.command]
        try:
            return handler(args)
        except BaseExceptionGroup as eg:  # a trio nursery's: report the one cause that matters
            from ..core.errors import first_cause

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
        from ..adapters.home import default_home

        log = default_home() / "log" / "p2pmodel.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {sys.argv!r}\n")
            f.write(traceback.format_exc())
        return str(log)
    except OSError:
        traceback.print_exc()
        return "the traceback above"
