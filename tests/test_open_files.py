"""The agent raises its open-files limit as far as the hard limit allows (a systemd user
service starts with a soft limit of 1024), shares what it got out as connection caps that
leave it files of its own, and outlives running out of files anyway."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from p2pmodel.adapters.httpserver import CLOSE_GRACE
from p2pmodel.core.config import parse_config
from p2pmodel.core.openfiles import (
    HTTP_MOST,
    LINK_MOST,
    LINK_PER_HOST,
    RESERVE,
    SWARM_MOST,
    Admission,
    Caps,
    budget,
)
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.services.hfendpoint import serve_bounded
from p2pmodel.testing.fakes import MemoryMirror, SimLan

PROBE = """
import resource
from p2pmodel.adapters.rlimit import raise_open_files
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, ({low}, {hard}))
print(raise_open_files(), *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def _after(low: int, hard: str) -> tuple[int, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(low=low, hard=hard)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


def test_a_low_soft_limit_is_raised_to_the_hard_limit() -> None:
    """Soft 256 under a hard 4096 becomes 4096, and the function says so."""
    assert _after(256, "4096") == (4096, 4096, 4096)


def test_the_hard_limit_is_never_passed() -> None:
    """A hard limit of 600 leaves the soft one at 600."""
    assert _after(256, "600") == (600, 600, 600)


@pytest.mark.parametrize("files", [64, 256, 1024, 4096, 65536, 524288, 1 << 20])
def test_the_caps_fit_under_the_limit_with_a_reserve(files: int) -> None:
    """libtorrent's connections, the link's and twice the HTTP ones (a socket and a blob file
    each) leave at least the reserve of files free, whenever the limit allows one."""
    b = budget(files)
    used = b.swarm + b.link.total + 2 * b.http.total
    if files >= 2 * RESERVE:
        assert files - used >= max(RESERVE, files // 4)
    assert b.link.per_host <= b.link.total and b.http.per_host <= b.http.total
    assert b.swarm <= SWARM_MOST and b.link.total <= LINK_MOST and b.http.total <= HTTP_MOST


def test_the_caps_at_a_soft_limit_of_1024_and_when_files_are_plenty() -> None:
    """The numbers of a systemd user unit that cannot raise its limit, and of one that can."""
    assert budget(1024).describe() == {
        "files": 1024,
        "swarm": 288,
        "link": 192,
        "link_per_host": 16,
        "http": 96,
        "http_per_host": 48,
    }
    plenty = budget(524288)
    assert (plenty.swarm, plenty.link, plenty.http.total) == (
        SWARM_MOST,
        Caps(LINK_MOST, LINK_PER_HOST),
        HTTP_MOST,
    )


def test_admission_caps_per_address_and_in_all() -> None:
    """At most per_host from one address and total in all; a leave makes room again."""
    gate = Admission(Caps(total=3, per_host=2))
    assert gate.admit("a") and gate.admit("a") and not gate.admit("a")
    assert gate.admit("b") and not gate.admit("c")
    gate.leave("a")
    assert gate.admit("c") and gate.refused == 2
    gate.leave("x")  # never admitted: nothing changes
    assert gate.total == 3 and gate.held == {"a": 1, "b": 1, "c": 1}


async def test_a_look_at_the_network_that_runs_out_of_files_is_tried_again(
    tmp_path: Path, clock: Any
) -> None:
    """An agent whose look at its addresses fails with EMFILE (a connection flood elsewhere in
    the process) keeps running and follows a new address once looking works again."""
    office = SimLan(MemoryMirror([]))
    outside = office.outside()
    looks = {"n": 0}

    def interfaces() -> list[str]:
        looks["n"] += 1
        if looks["n"] <= 4:
            return ["10.0.0.1"]  # the address the fake gave it, at start
        if looks["n"] <= 8:
            raise OSError(errno.EMFILE, "Too many open files")
        return ["10.0.9.9"]

    outside.interfaces = interfaces
    home = tmp_path / "home"
    home.mkdir()
    async with trio.open_nursery() as n:
        agent = Agent(home, parse_config({}, {}), AgentOptions(rpc_port=0), outside)
        await n.start(agent.run)
        with trio.fail_after(60):
            while agent.interfaces != ["10.0.9.9"]:  # noqa: ASYNC110 (fake clock)
                await trio.sleep(1)
        assert looks["n"] > 8
        n.cancel_scope.cancel()


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_the_http_server_refuses_over_its_cap_and_frees_places_when_clients_leave(
    nursery: trio.Nursery,
) -> None:
    """Six idle connections to a server capped at four: the next request is refused; once
    they close, a request is answered within about CLOSE_GRACE (not after hypercorn's
    keep-alive timeout of 30 s)."""
    from hypercorn.config import Config as ServerConfig

    cfg = ServerConfig()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    cfg.keep_alive_timeout = 30
    urls: list[str] = await nursery.start(serve_bounded, _ok, cfg, Caps(total=4, per_host=4))
    host, port = urls[0].removeprefix("http://").rsplit(":", 1)
    held = [await trio.open_tcp_stream(host, int(port)) for _ in range(6)]
    await trio.sleep(0.2)
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(urls[0], timeout=2)
        for stream in held:
            await stream.aclose()
        start = trio.current_time()
        with trio.fail_after(10):
            while True:
                try:
                    reply = await client.get(urls[0], timeout=2)
                    break
                except httpx.HTTPError:
                    await trio.sleep(0.1)
        assert reply.text == "ok"
        assert trio.current_time() - start < CLOSE_GRACE + 3
