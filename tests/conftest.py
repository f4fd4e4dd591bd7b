"""Shared fixtures: generated models, in-process mirrors and a p2pmodel home per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pmodel.testing.mirror import Faults, Mirror
from p2pmodel.testing.models import Repo, RepoFile, make_model

MiB = 1024 * 1024

# A `p2pmodel get` with no agent running starts an embedded agent (libtorrent, mDNS). Tests in
# the host's network namespace must never do that: they fetch from mirrors only.
if not os.environ.get("P2PMODEL_TEST_NETNS"):
    os.environ["P2PMODEL_LAN"] = "off"


def in_own_netns() -> str | None:
    """None when this process runs inside the network namespace that scripts/test made for it
    (named in P2PMODEL_TEST_NETNS); otherwise why ``lan`` tests must not run here."""
    name = os.environ.get("P2PMODEL_TEST_NETNS")
    if not name:
        return "lan tests run only inside the network namespace scripts/test makes"
    try:
        same = os.stat("/proc/self/ns/net").st_ino == os.stat(f"/run/netns/{name}").st_ino
    except OSError as e:
        return f"cannot check the network namespace {name}: {e}"
    return None if same else f"not inside network namespace {name}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = in_own_netns()
    if reason is None:
        return
    for item in items:
        if "lan" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """A fake clock for in-process agents (tests that take it run under it). It jumps only
    once every task has been idle for 10 ms of real time: a thread hashing or writing a block
    then finishes before deadlines that depend on it fire."""
    return trio.testing.MockClock(autojump_threshold=0.01)


@pytest.fixture(scope="session")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """A diffusers-shaped model: 3 shards of 3 MiB plus small git files (~9 MiB)."""
    return make_model(tmp_path_factory.mktemp("repos"), "acme/tiny", shards=3, shard_size=3 * MiB)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def write_config(
    home: Path, mirrors: Iterable[str], origin: str = "https://huggingface.co/", extra: str = ""
) -> None:
    use = ", ".join(f'"{m.rstrip("/")}/"' for m in mirrors)
    (home / "config.toml").write_text(f'[[mirror]]\nfor = "{origin}"\nuse = [{use}]\n{extra}')


StartMirror = Callable[..., "trio.lowlevel.Task"]


@pytest.fixture
async def start_mirror(nursery: trio.Nursery) -> AsyncIterator[Callable[..., object]]:
    """Start in-process mirrors on loopback; they stop when the test ends."""

    async def start(
        repos: Iterable[Repo] = (),
        singles: dict[str, RepoFile] | None = None,
        faults: Faults | None = None,
    ) -> Mirror:
        mirror = Mirror(list(repos), singles or {}, faults=faults or Faults())
        return await nursery.start(mirror.run)  # type: ignore[no-any-return]

    yield start
