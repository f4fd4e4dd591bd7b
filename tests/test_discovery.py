"""Zeroconf discovery: TXT parsing, the thread-to-trio bridge, and real mDNS in a namespace.

The netns tests never run mDNS in the host's network namespace: each creates a lo-only namespace
and runs this module as a script inside it (``python -m tests.test_discovery SCENARIO``), which
prints one JSON line of measurements for the test to check.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from zeroconf import ServiceInfo, ServiceStateChange

from p2pmodel.adapters.discovery import (
    SERVICE_TYPE,
    Discovery,
    DiscoveryEvent,
    PeerGone,
    PeerSeen,
    _Running,
    agent_of,
    parse_service,
)

ROOT = Path(__file__).resolve().parent.parent
LO = "127.0.0.1"


def info(
    agent: str = "a1", addrs: list[str] | None = None, txt: dict[str, str] | None = None
) -> ServiceInfo:
    """A service announcement as a peer would send it; TXT value "-" means leave the key out."""
    props = {"agent": agent, "proto": "1", "rpc": "7001", "bt": "6881"} | (txt or {})
    return ServiceInfo(
        SERVICE_TYPE,
        f"{agent}.{SERVICE_TYPE}",
        port=7001,
        properties={k: v for k, v in props.items() if v != "-"},
        server=f"{agent}.local.",
        parsed_addresses=[LO] if addrs is None else addrs,
    )


# -- pure parsing -------------------------------------------------------------------------------


def test_parse_service_reads_txt_and_addresses() -> None:
    """A well-formed announcement becomes a PeerSeen with ports from the TXT record."""
    seen = parse_service(f"a1.{SERVICE_TYPE}", info(addrs=["10.0.0.2", "192.168.1.2"]))
    assert seen == PeerSeen("a1", ("10.0.0.2", "192.168.1.2"), 7001, 6881, 1)


@pytest.mark.parametrize(
    "txt",
    [
        {"rpc": "abc"},
        {"rpc": "0"},
        {"rpc": "70000"},
        {"bt": "-1"},
        {"bt": "\uff16\uff18\uff18\uff11"},  # fullwidth digits: isdigit() but not ASCII
        {"proto": "-"},
        {"rpc": "1" * 30},
        {"agent": "someone-else"},
        {"agent": "-"},
    ],
)
def test_parse_service_rejects_bad_txt(txt: dict[str, str]) -> None:
    """A missing, non-numeric, out-of-range or mismatched TXT value makes the peer ignored."""
    assert parse_service(f"a1.{SERVICE_TYPE}", info(txt=txt)) is None


def test_parse_service_needs_an_ipv4_address() -> None:
    """A service with no IPv4 address is ignored."""
    assert parse_service(f"a1.{SERVICE_TYPE}", info(addrs=["fe80::1"])) is None


def test_agent_of_instance_names() -> None:
    """The agent id is the instance label of one of our services, else None."""
    assert agent_of(f"ws-1.{SERVICE_TYPE}") == "ws-1"
    assert agent_of("ws-1._http._tcp.local.") is None
    assert agent_of(f"a.b.{SERVICE_TYPE}") is None
    assert agent_of(f".{SERVICE_TYPE}") is None


@pytest.mark.parametrize(
    "kw",
    [
        {"agent": "has.dot"},
        {"agent": ""},
        {"interfaces": []},
        {"interfaces": ["::1"]},
        {"rpc_port": 0},
        {"torrent_port": 65536},
        {"proto": -1},
    ],
)
def test_discovery_rejects_bad_arguments(kw: dict[str, Any]) -> None:
    """Bad agent ids, interfaces and ports are refused before anything opens."""
    args: dict[str, Any] = {
        "agent": "a1",
        "interfaces": [LO],
        "rpc_port": 7001,
        "torrent_port": 6881,
        "on_event": lambda ev: None,
    } | kw
    with pytest.raises(ValueError):
        Discovery(**args)


def test_service_info_announces_ports_in_txt() -> None:
    """Our announcement parses back into the PeerSeen a peer would get."""
    d = Discovery(agent="a1", interfaces=[LO], rpc_port=7001, torrent_port=6881, on_event=print)
    assert parse_service(f"a1.{SERVICE_TYPE}", d.service_info()) == PeerSeen(
        "a1", (LO,), 7001, 6881, 1
    )


# -- the browser-thread bridge, without a network -----------------------------------------------


class FakeZeroconf:
    """Stands in for ``Zeroconf`` in a handler call: answers ``get_service_info`` from a dict."""

    def __init__(self, infos: dict[str, ServiceInfo]) -> None:
        self.infos = infos

    def get_service_info(self, type_: str, name: str, timeout: int = 3000) -> ServiceInfo | None:
        return self.infos.get(name)


async def test_handler_thread_hands_events_to_trio() -> None:
    """Handler calls on a foreign thread reach on_event on the trio thread, minus self and junk."""
    got: list[DiscoveryEvent] = []

    def on_event(ev: DiscoveryEvent) -> None:
        trio.lowlevel.current_task()  # raises unless called on the trio thread
        got.append(ev)

    d = Discovery(agent="me", interfaces=[LO], rpc_port=7001, torrent_port=6881, on_event=on_event)
    st = _Running(token=trio.lowlevel.current_trio_token())
    zc: Any = FakeZeroconf({f"a1.{SERVICE_TYPE}": info(), f"bad.{SERVICE_TYPE}": info("other")})
    calls = [
        (f"a1.{SERVICE_TYPE}", ServiceStateChange.Added),
        (f"me.{SERVICE_TYPE}", ServiceStateChange.Added),  # ourselves
        (f"bad.{SERVICE_TYPE}", ServiceStateChange.Added),  # TXT agent does not match the name
        (f"gone.{SERVICE_TYPE}", ServiceStateChange.Updated),  # does not resolve
        (f"a1.{SERVICE_TYPE}", ServiceStateChange.Removed),
    ]
    for name, change in calls:
        await trio.to_thread.run_sync(d._on_change, st, zc, SERVICE_TYPE, name, change)
    assert got == [PeerSeen("a1", (LO,), 7001, 6881, 1), PeerGone("a1")]
    st.closing.set()
    await trio.to_thread.run_sync(
        d._on_change, st, zc, SERVICE_TYPE, f"a1.{SERVICE_TYPE}", ServiceStateChange.Removed
    )
    assert len(got) == 2  # nothing is delivered once closing


# -- real mDNS in a lo-only network namespace ---------------------------------------------------


def _netns_skip_reason() -> str | None:
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2 `ip` not found"
    return None


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace with only lo up, deleted afterwards whatever happens."""
    reason = _netns_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"p2pm-{secrets.token_hex(4)}-x"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(
            ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True, timeout=10
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def run_in_netns(ns: str, *args: str, timeout: float = 15) -> dict[str, Any]:
    """Run this module as a script in ``ns`` and return the JSON it prints last."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.test_discovery", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.netns
def test_two_agents_find_each_other_and_see_goodbye(netns: str) -> None:
    """Two agents meet within 3 s, never see themselves, and a cancelled one is gone within 2 s."""
    r = run_in_netns(netns, "pair")
    print(f"discovery latency: {r}")
    assert r["a_saw"] == {"agent": "b", "addrs": [LO], "rpc": 7002, "bt": 6882, "proto": 1}
    assert r["b_saw"] == {"agent": "a", "addrs": [LO], "rpc": 7001, "bt": 6881, "proto": 1}
    assert r["a_seen_b_after"] < 3.0 and r["b_seen_a_after"] < 3.0
    assert r["gone_after"] < 2.0
    assert r["self_reports"] == 0
    assert r["early_cancel_took"] < 4.0


@pytest.mark.netns
def test_sigkilled_peer_lingers_and_is_seen_again_on_restart(netns: str) -> None:
    """A SIGKILLed peer sends no goodbye (mDNS keeps it while a later peer's goodbye comes
    and goes); restarted, it is reported again."""
    r = run_in_netns(netns, "kill")
    print(f"sigkill: {r}")
    assert r["gone_events"] == 0
    assert r["seen_again_after_restart"] < 5.0


# -- scenarios, run inside the namespace ---------------------------------------------------------


class Recorder:
    """Collects one Discovery's events with their trio time."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.events: list[tuple[float, DiscoveryEvent]] = []
        self.changed = trio.Event()

    def __call__(self, ev: DiscoveryEvent) -> None:
        self.events.append((trio.current_time(), ev))
        self.changed.set()
        self.changed = trio.Event()

    def first(self, kind: type, agent: str) -> tuple[float, Any] | None:
        for t, ev in self.events:
            if isinstance(ev, kind) and ev.agent == agent:
                return t, ev
        return None

    async def wait_for(self, kind: type, agent: str) -> tuple[float, Any]:
        while (hit := self.first(kind, agent)) is None:
            await self.changed.wait()
        return hit


def _seen_dict(ev: PeerSeen) -> dict[str, Any]:
    return {
        "agent": ev.agent,
        "addrs": list(ev.addrs),
        "rpc": ev.rpc_port,
        "bt": ev.torrent_port,
        "proto": ev.proto,
    }


async def scenario_pair() -> dict[str, Any]:
    ra, rb = Recorder("a"), Recorder("b")
    da = Discovery(agent="a", interfaces=[LO], rpc_port=7001, torrent_port=6881, on_event=ra)
    db = Discovery(agent="b", interfaces=[LO], rpc_port=7002, torrent_port=6882, on_event=rb)
    out: dict[str, Any] = {}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            b_scope = trio.CancelScope()

            async def run_b() -> None:
                with b_scope:
                    await db.run()

            t0 = trio.current_time()
            nursery.start_soon(da.run)
            nursery.start_soon(run_b)
            ta, seen_b = await ra.wait_for(PeerSeen, "b")
            tb, seen_a = await rb.wait_for(PeerSeen, "a")
            out |= {
                "a_seen_b_after": round(ta - t0, 3),
                "b_seen_a_after": round(tb - t0, 3),
                "a_saw": _seen_dict(seen_b),
                "b_saw": _seen_dict(seen_a),
            }
            t1 = trio.current_time()
            b_scope.cancel()
            tg, _ = await ra.wait_for(PeerGone, "b")
            out["gone_after"] = round(tg - t1, 3)
            nursery.cancel_scope.cancel()
        # Cancelled while still probing: run() still says goodbye, closes and returns promptly.
        dc = Discovery(agent="c", interfaces=[LO], rpc_port=7003, torrent_port=6883, on_event=ra)
        t2 = trio.current_time()
        with trio.move_on_after(0.2):
            await dc.run()
        out["early_cancel_took"] = round(trio.current_time() - t2, 3)
    out["self_reports"] = sum(
        1 for r in (ra, rb) for _, ev in r.events if getattr(ev, "agent", None) == r.me
    )
    return out


async def scenario_kill() -> dict[str, Any]:
    rec = Recorder("a")
    da = Discovery(agent="a", interfaces=[LO], rpc_port=7001, torrent_port=6881, on_event=rec)
    peer_cmd = [sys.executable, "-m", "tests.test_discovery", "peer", "victim"]
    out: dict[str, Any] = {}
    child: trio.Process | None = None
    try:
        with trio.fail_after(12):
            async with trio.open_nursery() as nursery:
                await nursery.start(da.run)
                child = await trio.lowlevel.open_process(peer_cmd)
                await rec.wait_for(PeerSeen, "victim")
                child.send_signal(signal.SIGKILL)
                await child.wait()
                # A witness announces and says goodbye after the kill: once its goodbye is
                # in, so would be anything the victim sent before dying (it sent nothing).
                witness = Discovery(
                    agent="witness", interfaces=[LO], rpc_port=7004, torrent_port=6884,
                    on_event=lambda ev: None,
                )  # fmt: skip
                w_scope = trio.CancelScope()

                async def run_witness(task_status: trio.TaskStatus[None]) -> None:
                    with w_scope:
                        await witness.run(task_status=task_status)

                await nursery.start(run_witness)
                await rec.wait_for(PeerSeen, "witness")
                w_scope.cancel()
                await rec.wait_for(PeerGone, "witness")
                out["gone_events"] = sum(
                    1 for _, ev in rec.events if isinstance(ev, PeerGone) and ev.agent == "victim"
                )
                # The same agent comes back on the same ports: still reported (new boot id).
                before = len(rec.events)
                t0 = trio.current_time()
                child = await trio.lowlevel.open_process(peer_cmd)
                while not any(isinstance(ev, PeerSeen) for _, ev in rec.events[before:]):
                    await rec.changed.wait()
                out["seen_again_after_restart"] = round(trio.current_time() - t0, 3)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if child is not None and child.returncode is None:
                child.kill()
                await child.wait()
    return out


async def scenario_peer(agent: str) -> None:
    d = Discovery(agent=agent, interfaces=[LO], rpc_port=7009, torrent_port=6889, on_event=print)
    with trio.fail_after(30):  # never outlive the test if the parent forgets us
        await d.run()


def main(argv: list[str]) -> None:
    if argv[0] == "pair":
        print(json.dumps(trio.run(scenario_pair)))
    elif argv[0] == "kill":
        print(json.dumps(trio.run(scenario_kill)))
    elif argv[0] == "peer":
        trio.run(scenario_peer, argv[1])
    else:
        raise SystemExit(f"unknown scenario {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
