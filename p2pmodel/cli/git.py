"""``p2pmodel git``: git and git-lfs take their objects from the office.

``git setup`` writes to the user's global git config (git decides which file: ``HOME``,
``XDG_CONFIG_HOME``, ``GIT_CONFIG_GLOBAL``) the mirror rules as ``insteadOf`` lines and
p2pmodel as git-lfs's standalone custom transfer agent; every entry it adds is also listed
under ``p2pmodel.wrote``, so ``--undo`` removes exactly those. ``--print`` shows the commands.

``git lfs-agent`` is that transfer agent (git-lfs starts it in the repository). For each
object: the store (a hard link, no network); else the LFS batch API is asked here (this
process has the repository's config and the user's git credentials), through the mirror
rules, for the object's hrefs, and the running agent is handed them (``BlobAsk``: peers, the
office's shared fetch, then the hrefs, verified into the store); without a running agent the
same fetch runs in this process. git-lfs gets a path only to a file of the verified store.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .common import user_home

if TYPE_CHECKING:
    from ..adapters.store import Store
    from ..core.config import Config

AGENT = "p2pmodel"
MARKER = "p2pmodel.wrote"


def cmd_git(args: argparse.Namespace) -> int:
    if args.git_command == "setup":
        return _setup(args)
    if args.git_command == "lfs-agent":
        return lfs_agent(sys.stdin, sys.stdout)
    from ..core.errors import UserError

    raise UserError("usage: p2pmodel git {setup,lfs-agent}")


# -- setup -------------------------------------------------------------------------------------


def _agent_command() -> tuple[str, str]:
    """The executable git-lfs runs and its arguments: this p2pmodel."""
    script = Path(sys.executable).with_name("p2pmodel")
    if script.is_file() and os.access(script, os.X_OK):
        return str(script), "git lfs-agent"
    return sys.executable, "-m p2pmodel git lfs-agent"


def wanted_entries(rules: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """(key, value, multi-valued) that setup writes for these mirror rules."""
    out: list[tuple[str, str, bool]] = []
    for rule in rules:
        mirrors = [u for u in rule["use"] if u != rule["for"]]
        if mirrors:
            out.append((f"url.{mirrors[0]}.insteadOf", rule["for"], True))
    path, argv = _agent_command()
    out += [
        (f"lfs.customtransfer.{AGENT}.path", path, False),
        (f"lfs.customtransfer.{AGENT}.args", argv, False),
        (f"lfs.customtransfer.{AGENT}.concurrent", "false", False),
        ("lfs.standalonetransferagent", AGENT, False),
    ]
    return out


def _setup(args: argparse.Namespace) -> int:
    from ..adapters import git
    from ..adapters.home import load_config

    if args.undo:
        wrote = git.global_get_all(MARKER)
        for line in wrote:
            key, _, value = line.partition("\t")
            if args.print:
                print(f"git config --global --fixed-value --unset {shlex.quote(key)} "
                      f"{shlex.quote(value)}")  # fmt: skip
            else:
                git.global_unset(key, value)
        if not args.print:
            for line in wrote:
                git.global_unset(MARKER, line)
            git.global_remove_section_if_empty("p2pmodel")
            print(f"removed {len(wrote)} entries p2pmodel wrote to the global git config")
        return 0
    config = load_config(user_home())
    rules = [{"for": r.prefix, "use": list(r.use)} for r in config.mirrors]
    for key, value, multi in wanted_entries(rules):
        present = git.global_get_all(key)
        if value in present:
            continue
        if args.print:
            flag = "--add " if multi else ""
            print(f"git config --global {flag}{shlex.quote(key)} {shlex.quote(value)}")
            continue
        if multi:
            git.global_add(key, value)
        else:
            git.global_set(key, value)
        git.global_add(MARKER, f"{key}\t{value}")
    if not args.print:
        print("git and git-lfs now fetch through p2pmodel (undo: p2pmodel git setup --undo)")
    return 0


# -- the transfer agent ------------------------------------------------------------------------


def lfs_agent(stdin: IO[str], stdout: IO[str]) -> int:
    """Speak git-lfs's custom transfer protocol until ``terminate`` or end of input."""
    from ..adapters.store import Store
    from ..core import lfs

    home = user_home()
    store = Store(home)
    session: _Session | None = None
    for line in stdin:
        if not line.strip():
            continue
        try:
            event = lfs.parse_event(line)
        except lfs.LfsProtocolError as e:
            print(f"p2pmodel lfs-agent: {e}", file=sys.stderr)
            return 2
        if isinstance(event, lfs.Init):
            if event.operation == "upload":
                _write(stdout, lfs.render_init(lfs.UPLOAD_REFUSED))
                return 0
            session = _Session(home, store, event.remote or "origin")
            _write(stdout, lfs.render_init())
        elif isinstance(event, lfs.Terminate):
            break
        elif isinstance(event, lfs.Upload):
            _write(stdout, lfs.render_error(event.oid, lfs.UPLOAD_REFUSED))
        elif session is None:
            print("p2pmodel lfs-agent: a transfer before init", file=sys.stderr)
            return 2
        else:
            _write(stdout, session.download(event.oid, event.size, stdout))
    if session is not None:
        session.close()
    return 0


def _write(out: IO[str], line: str) -> None:
    out.write(line)
    out.flush()


class _Session:
    """One git-lfs run: the repository's LFS endpoint and where finished files are put."""

    def __init__(self, home: Path, store: Store, remote: str) -> None:
        from ..adapters import git
        from ..adapters.home import load_config

        self.home, self.store, self.remote = home, store, remote
        self.config: Config = load_config(home)
        gitdir = git.git_dir()
        base = gitdir / "lfs" / "tmp" if gitdir is not None else None
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="p2pmodel-", dir=base))
        self.endpoint = _endpoint(remote)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def download(self, oid: str, size: int, out: IO[str]) -> str:
        from ..core import lfs
        from ..core.errors import P2PModelError

        digest = f"sha256:{oid}"
        try:
            if not self.store.has_blob(digest, size):
                urls, headers, why = self._hrefs(oid, size)
                self._fetch(digest, size, urls, headers, why, oid, out)
            path = self._place(digest, oid)
        except P2PModelError as e:
            return lfs.render_error(oid, str(e))
        except OSError as e:
            return lfs.render_error(oid, f"cannot place the object: {e}")
        return lfs.render_complete(oid, str(path))

    def _hrefs(self, oid: str, size: int) -> tuple[list[str], list[dict[str, str]], str]:
        """The object's hrefs from the batch API (through the mirror rules), or none and why."""
        from ..adapters import git
        from ..adapters.lfs import hrefs
        from ..core.errors import P2PModelError
        from ..core.lfs import Href

        if self.endpoint is None:
            return [], [], "the remote has no HTTP(S) LFS endpoint"
        try:
            found = hrefs(
                list(self.config.candidates(self.endpoint)), [(oid, size)], git.credential_fill
            )
        except P2PModelError as e:
            return [], [], str(e)
        got = found.get(oid)
        if isinstance(got, Href):
            return [got.url], [got.headers], ""
        return [], [], got.message if got is not None else "the LFS server did not list it"

    def _fetch(
        self,
        digest: str,
        size: int,
        urls: list[str],
        headers: list[dict[str, str]],
        why: str,
        oid: str,
        out: IO[str],
    ) -> None:
        from ..adapters import control
        from ..core.control import BlobAsk, Done, Failed, ProgressReport
        from ..core.errors import SourceError
        from .common import failure

        report = _Reporter(oid, out)
        ask = BlobAsk(digest, size, tuple(urls), tuple(headers), self.endpoint or "")
        try:
            answer: Any = None
            for answer in control.request(self.home, ask):
                if isinstance(answer, ProgressReport):
                    report.update(sum(r[3] for r in answer.files if r[0] == digest))
            if isinstance(answer, Failed):
                error = failure(answer, ask.op)
                if why:
                    error.args = (_with_why(str(error), why),)
                raise error
            assert isinstance(answer, Done)
            return
        except control.NoAgent:
            pass
        try:
            self._fetch_here(ask, report)
        except SourceError as e:
            raise SourceError(_with_why(str(e), why)) from None

    def _fetch_here(self, ask: Any, report: _Reporter) -> None:
        """No agent runs: the same fetch in this process (the LAN as ``P2PMODEL_LAN`` says)."""
        import trio

        from ..adapters.home import switches
        from ..core.errors import first_cause
        from ..core.progress import Progress
        from ..services.agent import AgentOptions, open_agent
        from .get import _agent_logs

        env = switches()
        _agent_logs(env.log)
        opts = AgentOptions(
            rpc_port=0, wait_for_peers=1.5, sharing=env.sharing, segment=env.segment, lan=env.lan
        )
        headers = dict(zip(ask.urls, ask.headers, strict=False))

        async def run() -> None:
            progress = Progress()
            async with trio.open_nursery() as nursery:

                async def show() -> None:
                    while True:
                        f = progress.files.get(ask.digest)
                        if f is not None:
                            report.update(f.have)
                        await trio.sleep(0.25)

                nursery.start_soon(show)
                async with open_agent(self.home, self.config, opts) as agent:
                    await agent.gets.fetch_blob(
                        ask.digest, ask.size, list(ask.urls), headers, progress, keep_as=ask.keep_as
                    )
                nursery.cancel_scope.cancel()

        try:
            trio.run(run)
        except BaseExceptionGroup as eg:
            raise first_cause(eg) from None

    def _place(self, digest: str, oid: str) -> Path:
        """The verified store blob where git-lfs takes it from: a hard link, else a copy."""
        src = self.store.blob_path(digest)
        dst = self.tmp / oid
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            partial = self.tmp / f".{oid}.part"
            shutil.copyfile(src, partial)
            os.replace(partial, dst)
        return dst


class _Reporter:
    """``progress`` lines for one object as its bytes arrive."""

    def __init__(self, oid: str, out: IO[str]) -> None:
        self.oid, self.out, self.so_far = oid, out, 0

    def update(self, have: int) -> None:
        from ..core.lfs import render_progress

        if have > self.so_far:
            _write(self.out, render_progress(self.oid, have, have - self.so_far))
            self.so_far = have


def _with_why(message: str, why: str) -> str:
    return f"{message} (LFS batch API: {why})" if why else message


def _endpoint(remote: str) -> str | None:
    from ..adapters import git
    from ..core.lfs import endpoint

    return endpoint(
        git.config_get("lfs.url"),
        git.config_get(f"remote.{remote}.lfsurl"),
        git.config_get(f"remote.{remote}.url"),
    )
