"""The office site of the multi-host tests: `p2pmodel.testing.site`, plus the two checks the
tests spell as functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2pmodel.testing.models import Repo
from p2pmodel.testing.netns import Host
from p2pmodel.testing.site import MiB, Site, wait_for

__all__ = ["MiB", "Site", "assert_exact", "peers_alive", "wait_for"]


def peers_alive(site: Site[Any], ws: Host) -> set[str]:
    return site.alive(ws)


def assert_exact(site: Site[Any], out: Path, repo: Repo | None = None) -> None:
    bad = site.mismatches(out, repo)
    assert not bad, f"not exact in {out}: {', '.join(bad)}"
