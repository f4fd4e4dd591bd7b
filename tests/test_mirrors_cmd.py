"""``p2pmodel mirrors`` (live from a running agent's MirrorBoard, else the config), its
``--git-config`` lines, and ``rm``/``gc`` handed to a running agent over the control socket."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from p2pmodel import cli
from p2pmodel.core.config import parse_config
from p2pmodel.core.mirrors import MirrorBoard
from p2pmodel.core.refs import parse_ref
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.services.get import GetRequest
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.models import make_model

MiB = 1024 * 1024
DEAD = "http://dead.mirror.test/"
CONFIG = """
[[mirror]]
for = "https://huggingface.co/"
use = ["https://hf-mirror.com/", "https://huggingface.co/"]

[[mirror]]
for = "https://github.com/"
use = ["https://mirrors.example.edu/github release/", "https://gh.example.org/"]

[[mirror]]
for = "https://example.com/"
use = ["https://example.com/"]
"""


def run(monkeypatch, capsys, home: Path, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("P2PMODEL_HOME", str(home))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_git_config_lines_use_the_first_mirror_of_each_rule(tmp_path, monkeypatch, capsys):
    """Each rule becomes one shell-quoted ``git config`` line for its first mirror that is not
    the origin, the others named in a comment; a rule with only the origin is a comment."""
    (tmp_path / "config.toml").write_text(CONFIG)
    code, out, _ = run(monkeypatch, capsys, tmp_path, "mirrors", "--git-config")
    assert code == 0
    assert out.splitlines() == [
        "git config --global url.https://hf-mirror.com/.insteadOf https://huggingface.co/",
        "git config --global 'url.https://mirrors.example.edu/github release/.insteadOf' "
        "https://github.com/",
        "#   (git takes one mirror per origin; not used: https://gh.example.org/)",
        "# https://example.com/: no mirror besides the origin itself",
    ]


def test_without_an_agent_mirrors_lists_the_configured_candidates(tmp_path, monkeypatch, capsys):
    """With no agent running, ``mirrors`` shows each rule's candidates from the config and says
    that rates come from a running agent."""
    (tmp_path / "config.toml").write_text(CONFIG)
    code, out, _ = run(monkeypatch, capsys, tmp_path, "mirrors")
    assert code == 0
    assert out.splitlines()[:3] == [
        "https://huggingface.co/",
        "  https://hf-mirror.com/",
        "  https://huggingface.co/",
    ]
    assert "no agent runs" in out
    code, out, _ = run(monkeypatch, capsys, tmp_path, "mirrors", "--json")
    assert json.loads(out)["agent"] is False


def test_the_board_snapshot_names_each_state():
    """A mirror's state reads untried, ok, backing off, given up, with its bans."""
    from p2pmodel.core.mirrors import Failure

    board = MirrorBoard(max_failures=2)
    board.add(["a", "b", "c"])
    board.started("b", 0.0)
    board.finished("b", 1_000_000, 1.0)
    board.ban("b", "sha256:x", "digest mismatch")
    board.started("c", 0.0)
    board.failed("c", Failure.TIMEOUT, 1.0, detail="timed out")
    snap = board.snapshot(1.05)
    assert snap["a"]["state"] == "untried"
    assert snap["b"]["state"] == "ok" and snap["b"]["banned_for"] == ["sha256:x"]
    assert snap["c"]["state"] == "backing off" and snap["c"]["last_error"] == "timed out"
    board.started("c", 2.0)
    board.failed("c", Failure.TIMEOUT, 3.0)
    assert board.snapshot(3.0)["c"]["state"] == "given up"


async def test_a_running_agent_shows_live_mirrors_and_runs_rm_and_gc(
    tmp_path, monkeypatch, capsys, nursery
):
    """With an agent running, ``mirrors`` shows the measured rate and bytes of the mirror that
    served and the errors and backoff of a dead one; ``rm`` and ``gc`` run in the agent, and
    its errors come back as the same one line and exit code."""
    repo = make_model(tmp_path / "up", "acme/live", shards=1, shard_size=2 * MiB)
    office = SimLan(MemoryMirror([repo]))
    outside = office.outside()

    async def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "dead.mirror.test":
            raise httpx.ConnectError("refused", request=request)
        return await office.mirror.handle(request)

    outside.http = lambda: httpx.AsyncClient(
        transport=httpx.MockTransport(route), follow_redirects=True
    )
    home = tmp_path / "home"
    hub = office.mirror.hub_url + "/"
    config = parse_config({"mirror": [{"for": "https://huggingface.co/", "use": [DEAD, hub]}]}, {})
    opts = AgentOptions(rpc_port=0, control=True)
    agent = await nursery.start(Agent(home, config, opts, outside).run)
    await agent.gets.get(GetRequest(parse_ref("hf://acme/live")))

    def cli_run(*argv: str) -> tuple[int, str, str]:
        return run(monkeypatch, capsys, home, *argv)

    code, out, _ = await trio.to_thread.run_sync(cli_run, "mirrors", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["agent"] is True
    dead, live = shown["rules"][0]["use"]
    assert dead["url"] == DEAD and dead["errors"] >= 1
    assert dead["state"] in ("backing off", "failing", "given up")
    assert live["state"] == "ok" and live["delivered"] >= 2 * MiB and live["rate"] > 0
    code, out, _ = await trio.to_thread.run_sync(cli_run, "mirrors")
    assert f"  {hub}" in out and "delivered" in out and "errors (last: " in out

    code, _, err = await trio.to_thread.run_sync(cli_run, "rm", "hf://acme/other")
    assert code == 2 and "hf://acme/other is not in the store" in err
    code, out, _ = await trio.to_thread.run_sync(cli_run, "rm", "hf://acme/live", "--json")
    assert code == 0 and json.loads(out)["evicted"] == ["hf://acme/live"]
    assert agent.store.refs() == {} and list(agent.store.verified_blobs()) == []
    code, out, _ = await trio.to_thread.run_sync(cli_run, "gc")
    assert code == 0 and out.startswith("gc: evicted nothing")


@pytest.mark.parametrize("argv", [["mirrors", "--git-config"], ["mirrors", "--json"]])
def test_mirrors_with_a_bad_config_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv):
    """A bad config.toml stops ``mirrors`` with one line naming the file, exit 2."""
    (tmp_path / "config.toml").write_text('[[mirror]]\nfor = "ftp://x/"\nuse = ["a"]\n')
    code, _, err = run(monkeypatch, capsys, tmp_path, *argv)
    assert code == 2 and err.startswith("p2pmodel: error: bad config")
