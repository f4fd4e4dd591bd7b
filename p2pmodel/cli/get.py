"""``p2pmodel get``: the fast path in this process, else the running agent, else an agent run
here for the command's duration (with the LAN off for ``--no-lan``). The front end renders
the get's ``Progress``; the agent never does."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import UserError
from .common import failure, print_json, user_home

if TYPE_CHECKING:
    from ..core.control import ProgressReport
    from ..core.progress import Progress
    from ..core.resolve import Decision
    from ..services.get import GetRequest, GetResult

RENDER_EVERY = 0.25


def cmd_get(args: argparse.Namespace) -> int:
    from ..core.refs import parse_ref
    from ..services.get import GetRequest
    from ..services.get.flow import fast_get

    if args.connections is not None and not 1 <= args.connections <= 256:
        raise UserError("--connections must be from 1 to 256")
    req = GetRequest(
        parse_ref(args.ref),
        to=args.to.expanduser().resolve() if args.to else None,
        sha256=args.sha256,
        refresh=args.refresh,
        hf_cache=_hf_cache() if args.hf_cache else None,
    )
    mode = "none" if args.json and args.progress == "auto" else args.progress
    home = user_home()
    # The one decision of this get (an unknown name fails here, before any heavy import);
    # a model already complete is linked at once.
    decision, result = fast_get(req, home)
    if result is None:
        from ..adapters import control

        try:
            return _get_via_agent(req, home, args.json, mode)
        except control.NoAgent:
            from ..adapters.home import switches

            lan = not args.no_lan and switches().lan
            result = _run_get(req, decision, home, args.connections, lan, mode)
    for w in result.warnings:
        print(f"p2pmodel: warning: {w}", file=sys.stderr)
    if args.json:
        print_json(result.describe(req.ref.text))
    else:
        print(result.path)
    return 0


def _run_get(
    req: GetRequest,
    decision: Decision,
    home: Path,
    connections: int | None,
    lan: bool,
    mode: str,
) -> GetResult:
    """No agent runs: the get runs here, in an agent for the command's duration: the LAN on
    (libtorrent, mDNS and the peer link on this host's interfaces) or, with ``lan`` off, none
    of it (mirrors only). The same ``GetService.get`` as in ``serve``."""
    import trio

    from ..adapters.home import load_config, switches
    from ..core.errors import first_cause
    from ..core.progress import Progress
    from ..services.agent import AgentOptions, open_agent

    config = load_config(home)
    env = switches()
    _agent_logs(env.log)
    opts = AgentOptions(
        rpc_port=0, wait_for_peers=1.5, sharing=env.sharing, segment=env.segment, lan=lan
    )

    async def run() -> GetResult:
        progress = Progress()
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_show, progress, mode, done)
            try:
                async with open_agent(home, config, opts) as agent:
                    return await agent.gets.get(
                        req, progress, connections=connections, decision=decision
                    )
            finally:
                done.set()

    try:
        return trio.run(run)
    except BaseExceptionGroup as eg:
        raise first_cause(eg) from None


def _agent_logs(level: str) -> None:
    """The agent run here logs as ``serve`` does only when ``P2PMODEL_LOG`` asks: otherwise its
    log lines would mix with what ``get`` prints (a running agent's go to its own log)."""
    import logging
    import os

    if os.environ.get("P2PMODEL_LOG"):
        from ..adapters.journal import setup_logging

        setup_logging(level)
    else:
        logging.getLogger().addHandler(logging.NullHandler())


async def _show(progress: Progress, mode: str, done: Any) -> None:
    """Render the get's progress until ``done`` (a ``trio.Event``); nothing until there is a
    file to fetch."""
    import trio

    from ..adapters.terminal import make_renderer

    renderer = None
    try:
        while True:
            if renderer is None and progress.files:
                renderer = make_renderer(progress, mode)
            if renderer is not None:
                renderer.update()
            if done.is_set():
                return
            with trio.move_on_after(RENDER_EVERY):
                await done.wait()
    finally:
        if renderer is not None:
            renderer.close()  # the last state, also on failure (what was kept is visible)


def _get_via_agent(req: GetRequest, home: Path, as_json: bool, mode: str) -> int:
    """Hand the get to the running agent and show its progress here."""
    from ..adapters import control
    from ..adapters.terminal import make_renderer
    from ..core.control import Done, Failed, GetAsk, ProgressReport
    from ..core.progress import Progress

    progress = Progress()
    renderer: Any = None  # made once there is a file to fetch
    ask = GetAsk(
        req.ref.text,
        str(req.to) if req.to else None,
        str(req.hf_cache) if req.hf_cache else None,
        req.sha256,
        req.refresh,
    )
    answer: Any = None
    try:
        for answer in control.request(home, ask):
            if isinstance(answer, ProgressReport):
                _apply_progress(progress, answer)
                if renderer is None and progress.files:
                    renderer = make_renderer(progress, mode)
                if renderer is not None:
                    renderer.update()
    finally:
        if renderer is not None:
            renderer.close()
    if isinstance(answer, Failed):
        raise failure(answer, ask.op)
    assert isinstance(answer, Done)
    for w in answer.warnings:
        print(f"p2pmodel: warning: {w}", file=sys.stderr)
    if as_json:
        print_json(answer.data)
    else:
        print(answer.data.get("path"))
    return 0


def _apply_progress(progress: Progress, report: ProgressReport) -> None:
    progress.from_mirrors = report.from_mirrors
    progress.from_peers = report.from_peers
    for key, label, size, have, source, state in report.files:
        if key not in progress.files:
            progress.add(key, label, size)
        f = progress.files[key]
        f.have, f.source, f.state = have, source, state


def _hf_cache() -> Path:
    from ..adapters.hfcache import cache_root

    return cache_root().resolve()
