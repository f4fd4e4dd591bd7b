"""The agent raises its open-files limit to fit libtorrent's connections (a systemd user
service starts with a soft limit of 1024), never above the hard limit."""

from __future__ import annotations

import subprocess
import sys

from p2pmodel.adapters.swarm import CONNECTIONS

PROBE = """
import resource
from p2pmodel.adapters.swarm import raise_open_files
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, ({low}, {hard}))
raise_open_files()
print(*resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def _after(low: int, hard: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(low=low, hard=hard)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def test_a_low_soft_limit_is_raised_to_fit_the_connections() -> None:
    soft, hard = _after(256, "hard")
    assert soft == min(CONNECTIONS + 500, hard) and soft > 256


def test_the_hard_limit_is_never_passed() -> None:
    assert _after(256, "600") == (600, 600)
