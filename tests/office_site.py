"""A virtual office running real agents, shared by the multi-host tests: a mirror serving one
generated repository, and a p2pmodel home per workstation whose agents run as `p2pmodel serve`
processes inside the workstations' namespaces (never in the host's)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from p2pmodel.testing.mirror import spawn
from p2pmodel.testing.models import Repo
from p2pmodel.testing.office import Host, Office

MiB = 1024 * 1024
STATS = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)


class Site:
    """An office whose workstations each can run an agent, and a mirror serving ``repo``."""

    def __init__(self, office: Office, repo: Repo, tmp: Path, others: Sequence[Repo] = ()) -> None:
        self.office = office
        self.repo = repo
        self.tmp = tmp
        mirror = office.mirror_host
        assert mirror is not None
        paths = []
        for i, r in enumerate([repo, *others]):
            paths.append(tmp / f"repo{i}.json")
            paths[-1].write_text(r.to_json())
        _, urls = spawn(
            paths, tmp, host=mirror.ip, ports=(8000, 8001), start=partial(office.popen, mirror)
        )
        self.hub = urls["hub_url"]
        self.homes: dict[str, Path] = {}
        self.extra_env: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for ws in office.workstations:
            home = tmp / ws.name
            home.mkdir()
            self.homes[ws.name] = home
            self.configure(ws)

    @property
    def total(self) -> int:
        return sum(f.size for f in self.repo.files)

    def configure(self, ws: Host, top: str = "") -> None:
        """Write ws's config.toml: top-level keys ``top`` (e.g. ``peers = [...]``), the mirror."""
        (self.homes[ws.name] / "config.toml").write_text(
            f'{top}\n[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["{self.hub}/"]\n'
        )

    def env(self, ws: Host) -> dict[str, str]:
        return {"P2PMODEL_HOME": str(self.homes[ws.name]), "P2PMODEL_LAN": "on", **self.extra_env}

    def sock(self, ws: Host) -> Path:
        return self.homes[ws.name] / "run" / "control.sock"

    def start(self, ws: Host, *args: str) -> subprocess.Popen[bytes]:
        """Start ws's agent (``serve --interface <ws ip> ARGS``) without waiting for it."""
        log = open(self.tmp / f"{ws.name}.serve.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            proc = self.office.popen(
                ws,
                [sys.executable, "-m", "p2pmodel", "serve", "--interface", ws.ip, *args],
                env=self.env(ws),
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        self.procs[ws.name] = proc
        return proc

    def wait_ready(self, ws: Host, seconds: float = 20) -> None:
        proc = self.procs[ws.name]

        def ready() -> bool:
            assert proc.poll() is None, f"agent on {ws.name} exited: {self.log(ws)}"
            return self.sock(ws).exists()

        wait_for(ready, seconds, f"agent on {ws.name}")

    def serve(self, ws: Host, *args: str) -> subprocess.Popen[bytes]:
        """Start ws's agent and wait until its control socket is there."""
        proc = self.start(ws, *args)
        self.wait_ready(ws)
        return proc

    def serve_all(self, hosts: Sequence[Host], *args: str) -> None:
        """Start agents on ``hosts`` together (faster than one after the other), wait for all."""
        for ws in hosts:
            self.start(ws, *args)
        for ws in hosts:
            self.wait_ready(ws)

    def kill(self, ws: Host, sig: int = signal.SIGKILL) -> subprocess.Popen[bytes]:
        """Send ``sig`` to ws's agent's process group (office.popen gave it its own session)."""
        proc = self.procs[ws.name]
        os.killpg(proc.pid, sig)
        return proc

    def log(self, ws: Host) -> str:
        path = self.tmp / f"{ws.name}.serve.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def cli(self, ws: Host, *args: str, timeout: float = 120) -> Any:
        return ws.run(sys.executable, "-m", "p2pmodel", *args, env=self.env(ws), timeout=timeout)

    def get_cmd(self, out: Path, repo: Repo | None = None) -> list[str]:
        """The argv of a ``p2pmodel get --json`` of the repo (or ``repo``) into ``out``."""
        ref = f"hf://{(repo or self.repo).repo_id}"
        return [sys.executable, "-m", "p2pmodel", "get", ref, "--to", str(out), "--json"]

    def get(self, ws: Host, out: Path, repo: Repo | None = None) -> dict[str, Any]:
        """``p2pmodel get`` of the repo (or ``repo``) into ``out`` on ws; its JSON output."""
        r = ws.run(*self.get_cmd(out, repo), env=self.env(ws), timeout=120)
        assert r.returncode == 0, f"get on {ws.name}: {r.stderr}\nagent: {self.log(ws)}"
        assert_exact(self, out, repo)
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def served(self) -> int:
        """Bytes the mirror has served so far."""
        ws = self.office.workstations[0]
        r = ws.run(sys.executable, "-c", STATS, f"{self.hub}/_stats", check=True)
        return int(json.loads(r.stdout)["bytes_served"])

    def status(self, ws: Host) -> dict[str, Any]:
        r = self.cli(ws, "status", "--json", timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]


def wait_for(cond: Callable[[], Any], seconds: float, what: str, every: float = 0.05) -> float:
    """Poll ``cond`` until true (at most ``seconds``); returns the seconds it took."""
    t0 = time.monotonic()
    deadline = t0 + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(every)
    return time.monotonic() - t0


def peers_alive(site: Site, ws: Host) -> set[str]:
    return {p["agent"] for p in site.status(ws)["peers"] if p["alive"]}


def assert_exact(site: Site, out: Path, repo: Repo | None = None) -> None:
    for f in (repo or site.repo).files:
        assert (out / f.path).read_bytes() == f.data_path.read_bytes(), f.path
