"""Shared fixtures: generated models, in-process mirrors and a p2pmodel home per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest
import trio

from p2pmodel.testing.mirror import Faults, Mirror
from p2pmodel.testing.models import Repo, RepoFile, make_model

MiB = 1024 * 1024


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
