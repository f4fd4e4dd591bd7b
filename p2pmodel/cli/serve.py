"""``p2pmodel serve`` (the office agent, foreground) and ``p2pmodel status``."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import P2PModelError, UserError
from .common import print_json, user_home


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    import trio

    from ..adapters.control import NoAgent, ask
    from ..adapters.home import load_config, switches
    from ..adapters.journal import setup_logging
    from ..core.control import StatusAsk
    from ..services.agent import Agent, AgentOptions
    from ..services.scrub import SCRUB_EVERY

    env = switches()
    setup_logging(env.log)
    home = user_home()
    config = load_config(home)
    try:
        ask(home, StatusAsk(), timeout=2.0)
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
        control=True,
        scrub_every=SCRUB_EVERY,
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
                office = f"office key {agent.tls.fingerprint}" if agent.tls else "open office"
                if agent.tls is not None and agent.tls.swarm_tls:
                    office += ", SSL torrents"
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


def cmd_status(args: argparse.Namespace) -> int:
    from ..adapters.control import NoAgent, ask
    from ..core.control import StatusAnswer, StatusAsk
    from ..core.progress import human

    home = user_home()
    try:
        answer = ask(home, StatusAsk(), timeout=10.0)
    except NoAgent:
        raise P2PModelError(f"no agent is running for {home} (start one: p2pmodel serve)") from None
    if not isinstance(answer, StatusAnswer):
        raise P2PModelError("the running agent did not answer its status")
    status = answer.data
    if args.json:
        print_json(status)
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
        from ..core.limits import describe_rate

        window = f" (schedule {limits['window']})" if limits.get("window") else ""
        print(
            f"limits: mirror download {describe_rate(limits['mirror_download'])}, "
            f"LAN upload {describe_rate(limits['lan_upload'])}{window}"
        )
    alive = [p for p in status["peers"] if p["alive"]]
    print(f"peers: {len(alive)} alive")
    for p in status["peers"]:
        state = "alive" if p["alive"] else "gone"
        rate = f", {human(p['rate'])}/s" if p.get("rate") else ""
        print(
            f"  {p['agent']:18} {', '.join(p['addresses']):24} {state:5} "
            f"{p.get('where') or '-'}{rate}, "
            f"heard {p['last_heard_age']:.1f} s ago, holds {p['holds']}"
        )
        for lie in p.get("distrusted") or []:
            print(f"    distrusted for {lie['content']}: {lie['why']}")
    for t in status["transfers"]:
        print(f"  {t['label']}: {human(t['have'])}/{human(t['size'])} {t['state']} {t['source']}")
    return 0
