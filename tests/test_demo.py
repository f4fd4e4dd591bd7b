"""The README's main command: the office demo, in both of its modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from p2pmodel.testing.netns import netns_available

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "demo_lan.py"
ARGS = ["--workstations", "3", "--size-mib", "24", "--rate-mib", "8", "--segment-mib", "2"]


def run_demo(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "demo.json"
    r = subprocess.run(
        [sys.executable, str(DEMO), *ARGS, "--json", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| workstation | from the mirror | from the LAN | seconds | exact |" in r.stdout
    result = json.loads(out.read_text())
    rows, mirror = result["rows"][:-1], result["rows"][-1]
    assert len(rows) == 3 and all(r["exact"] for r in rows)
    assert sum(r["from_peers"] for r in rows) >= 1.5 * result["total"]
    assert mirror["served"] <= 1.05 * result["total"] + 64 * 1024
    return result


@pytest.mark.lan
def test_demo_on_loopback_shares_the_model(tmp_path: Path):
    """Without namespaces: agents on 127.0.0.1 with static peers (run inside the namespace
    scripts/test made, never in the host's)."""
    run_demo(tmp_path, "--loopback")


@pytest.mark.netns
@pytest.mark.skipif(netns_available() is not None, reason=netns_available() or "")
def test_demo_in_a_virtual_office_shares_the_model(tmp_path: Path):
    run_demo(tmp_path)
