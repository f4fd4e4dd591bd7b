"""An office site: the test mirror and real `p2pmodel serve` agents in a virtual office, for the
multi-host tests, the office demo and the LAN and office benchmarks.

Theory of operation: a `Site` is handed an open place (an `Network` of network namespaces, or a
`Loopback` stand-in where no namespace can be made) and the generated repositories to serve.
It starts the test mirror (`p2pmodel.testing.mirror.spawn`) in the mirror host, then gives every
workstation a home of its own whose `config.toml` sends `https://huggingface.co/` to that mirror
(plus any top-level keys, e.g. `peers = [...]`). What p2pmodel runs on a workstation, its agent
(`serve --interface <its ip>`, logging to `serve.log` in its home) and every CLI call (`status
--json`, `get ... --json`), takes its environment from `Site.env` alone: the home, the LAN on,
the site's `extra_env`, and none of the caller's proxy, endpoint or `P2PMODEL_*` variables
(`DROPPED_ENV`), so a shell's settings cannot steer a test or a measurement; scripts also drop
them from their own environment (`drop_environ`) for the other tools they start. Waiting is
polling with a deadline (`wait_for`): for an agent's control socket, and for the mesh, when
every agent lists every other one alive in `status --json`. The mirror's byte counters
(`/_stats`) are read from inside the mirror host, so reading them adds nothing to the link a
benchmark measures. Failures raise `SiteError` with the agent's log tail; the place, not the
site, owns the processes and kills whatever is left when it closes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

from p2pmodel.adapters.home import write_private
from p2pmodel.testing.mirror import spawn
from p2pmodel.testing.models import Repo
from p2pmodel.testing.netns import Host, Network

MiB = 1024 * 1024
CLI = (sys.executable, "-m", "p2pmodel")
MIRROR_PORTS = (8000, 8001)  # hub, CDN: fixed in a namespace, where nothing else listens
LOG_TAIL = 3000

# What a shell may have set that would change what an agent or a `get` does: proxies (httpx,
# curl and aria2c honour them), the upstream origins (`hf://` would bypass the mirror rule), and
# every P2PMODEL_* switch (home, LAN, sharing, unit size, log level), which the site sets itself.
DROPPED_ENV = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "HF_ENDPOINT",
    "MODELSCOPE_ENDPOINT",
)
DROPPED_PREFIX = "P2PMODEL_"

# Runs in the mirror host: GET (or with "post", POST) a control URL of the mirror, print the body.
STATS = (
    "import sys, urllib.request as u; "
    "r = u.Request(sys.argv[1], data=b'' if sys.argv[2:] == ['post'] else None); "
    "print(u.urlopen(r, timeout=10).read().decode())"
)


class SiteError(RuntimeError):
    """Something the site needs did not work: a process did not start, a wait timed out, a
    command failed; the message says which and, for an agent, ends with its log."""


def dropped_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """The names in ``environ`` (default: this process's) that the site keeps from its
    agents and CLI calls."""
    environ = os.environ if environ is None else environ
    return [n for n in environ if n in DROPPED_ENV or n.startswith(DROPPED_PREFIX)]


def blanked_env() -> dict[str, str]:
    """The dropped variables of this process's environment, each set empty: for a child
    started through `Network.popen` or `Host.run`, which lay ``env`` over ``os.environ`` and so
    cannot remove a variable. Empty reads as unset to p2pmodel and to urllib/httpx, curl and
    aria2c."""
    return dict.fromkeys(dropped_env(), "")


def drop_environ() -> list[str]:
    """Remove the dropped variables from this process's environment; return their names.

    For scripts, which own their process: then the other tools they start (curl, aria2c,
    nginx) run without them too. Tests must not: the pytest process's own settings (e.g.
    P2PMODEL_LAN=off for the tests in the host's namespace) have to stay."""
    names = dropped_env()
    for name in names:
        del os.environ[name]
    return names


def wait_for(cond: Callable[[], Any], seconds: float, what: str, every: float = 0.05) -> float:
    """Poll ``cond`` until true (at most ``seconds``); returns the seconds it took."""
    t0 = time.monotonic()
    deadline = t0 + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise SiteError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - t0


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM a process started in its own session, and its group; SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    """Numeric fields of /proc/PID/status (kB values as bytes)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def python_pid(pid: int) -> int:
    """The python process behind a Popen of `ip netns exec ... python ...` (it may exec or fork)."""
    for _ in range(50):
        todo = [pid]
        while todo:
            p = todo.pop(0)
            with contextlib.suppress(OSError):
                argv0 = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]
                if b"python" in os.path.basename(argv0):
                    return p
            todo += children(p)
        time.sleep(0.05)
    raise SiteError(f"no python process under pid {pid}")


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- loopback: the office without namespaces ---------------------------------------------------


@dataclass(frozen=True)
class LocalHost(Host):
    """A workstation of a `Loopback`: commands run here as they are; its agent listens on
    127.0.0.1 at ports of its own and knows its peers from the config, not from mDNS."""

    rpc_port: int = 0
    torrent_port: int = 0

    def cmd(self, *argv: str) -> list[str]:
        return list(argv)


class Loopback:
    """Stands in for an `Network` where no namespace can be made: every workstation and the
    mirror are processes of this namespace on 127.0.0.1. No shaping (the mirror throttles
    itself, e.g. ``--total-rate``) and no mDNS. Processes started through `popen` get their own
    session and are stopped on close."""

    def __init__(self, workstations: int, base_port: int | None = None) -> None:
        # Spread by pid so two runs on one machine do not fight over ports.
        base = 17400 + os.getpid() % 500 * 20 if base_port is None else base_port
        self.mirror_host: Host | None = LocalHost("mirror", "", "127.0.0.1")
        self.workstations: list[Host] = [
            LocalHost(f"ws{i}", "", "127.0.0.1", base + 2 * i - 2, base + 2 * i - 1)
            for i in range(1, workstations + 1)
        ]
        self._procs: list[subprocess.Popen[bytes]] = []

    def popen(
        self, host: Host, argv: Sequence[str], env: Mapping[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        kw.setdefault("start_new_session", True)
        proc = host.popen(argv, env=env, **kw)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self._procs:
            stop_group(proc, timeout=10)

    def __enter__(self) -> Loopback:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


Place = Network | Loopback
P = TypeVar("P", bound=Network | Loopback)


# --- the site -----------------------------------------------------------------------------------


class Site(Generic[P]):
    """The mirror serving ``repo`` (and ``others``) and a home and an agent per workstation of
    ``office``; files live under ``work``."""

    def __init__(
        self,
        office: P,
        repo: Repo,
        work: Path,
        others: Sequence[Repo] = (),
        *,
        mirror_flags: Sequence[str] = (),
    ) -> None:
        self.office = office
        self.repo = repo
        self.repos = [repo, *others]
        self.work = work
        self.homes: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.extra_env: dict[str, str] = {}  # laid over the site's own settings
        mirror = office.mirror_host
        if mirror is None:
            raise SiteError("the site needs an office with a mirror host")
        self.mirror = mirror
        self.mirror_proc, urls = self._spawn_mirror(mirror, mirror_flags)
        self.hub = urls["hub_url"]
        self.cdn = urls["cdn_url"]
        for ws in office.workstations:
            self.new_home(ws)

    def _spawn_mirror(
        self, mirror: Host, flags: Sequence[str]
    ) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
        paths = []
        for i, repo in enumerate(self.repos):
            paths.append(self.work / f"repo{i}-{repo.repo_id.replace('/', '_')}.json")
            paths[-1].write_text(repo.to_json())
        # Outside a namespace any fixed port may be taken: let the mirror pick free ones.
        ports = (0, 0) if isinstance(mirror, LocalHost) else MIRROR_PORTS
        log = self.work / "mirror.log"
        try:
            with log.open("ab") as stderr:
                return spawn(
                    paths,
                    self.work,
                    *flags,
                    host=mirror.ip,
                    ports=ports,
                    start=partial(self.office.popen, mirror),
                    stderr=stderr,
                )
        except RuntimeError as exc:
            raise SiteError(f"{exc}: {log.read_text(errors='replace')[-LOG_TAIL:]}") from None

    @property
    def total(self) -> int:
        """Bytes of ``repo``."""
        return sum(f.size for f in self.repo.files)

    # -- homes and environment -------------------------------------------------------------

    def new_home(
        self, ws: Host, top: str = "", *, agent: str | None = None, under: Path | None = None
    ) -> Path:
        """A fresh home for ws (under ``under``, default ``work/homes``), from now on its own;
        ``agent`` fixes its agent id, ``top`` goes to its config (see `configure`)."""
        parent = self.work / "homes" if under is None else under
        home, n = parent / ws.name, 1
        while home.exists():
            n += 1
            home = parent / f"{ws.name}-{n}"
        home.mkdir(parents=True)
        if agent is not None:
            (home / "agent-id").write_text(agent + "\n")
        self.homes[ws.name] = home
        self.configure(ws, top)
        return home

    def configure(self, ws: Host, top: str = "") -> None:
        """Write ws's config.toml: top-level keys ``top`` (e.g. ``peers = [...]``), the mirror."""
        if isinstance(ws, LocalHost):
            peers = ", ".join(
                f'"127.0.0.1:{o.rpc_port}"'
                for o in self.office.workstations
                if isinstance(o, LocalHost) and o != ws
            )
            # Every agent shares one loopback: their HF endpoints each take a free port.
            top = f'peers = [{peers}]\nhf_endpoint = "127.0.0.1:0"\n{top}'
        # 0600: the config may hold the office key (a subclass's ``top``).
        write_private(
            self.homes[ws.name] / "config.toml",
            f'{top}\n[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["{self.hub}/"]\n',
        )

    def env(self, ws: Host) -> dict[str, str]:
        """What ws's agent and CLI calls run with, laid over this process's environment."""
        home = {"P2PMODEL_HOME": str(self.homes[ws.name]), "P2PMODEL_LAN": "on"}
        return blanked_env() | home | self.extra_env

    def sock(self, ws: Host) -> Path:
        return self.homes[ws.name] / "run" / "control.sock"

    def popen(self, ws: Host, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ws with ws's environment (`env`); keywords go to Popen."""
        return self.office.popen(ws, argv, env=self.env(ws), **kw)

    # -- agents ------------------------------------------------------------------------------

    def start(self, ws: Host, *args: str, pin: bool = True) -> subprocess.Popen[bytes]:
        """Start ws's agent (``serve --interface <ws ip> ARGS``) without waiting for it;
        ``pin=False``: no ``--interface``, the agent follows the machine's addresses."""
        argv = [*CLI, "serve", *(["--interface", ws.ip] if pin else [])]
        if isinstance(ws, LocalHost):
            argv += ["--port", str(ws.rpc_port), "--torrent-port", str(ws.torrent_port)]
            argv.append("--no-discovery")
        with (self.homes[ws.name] / "serve.log").open("ab") as log:
            proc = self.popen(ws, [*argv, *args], stdout=log, stderr=log)
        self.procs[ws.name] = proc
        return proc

    def wait_ready(self, ws: Host, seconds: float = 30) -> None:
        """Until ws's agent has its control socket; `SiteError` if it exits first."""
        proc = self.procs[ws.name]

        def ready() -> bool:
            if proc.poll() is not None:
                code = proc.returncode
                raise SiteError(f"the agent on {ws.name} exited ({code}):\n{self.log(ws)}")
            return self.sock(ws).exists()

        wait_for(ready, seconds, f"the agent on {ws.name}")

    def serve(self, ws: Host, *args: str) -> subprocess.Popen[bytes]:
        """Start ws's agent and wait until its control socket is there."""
        proc = self.start(ws, *args)
        self.wait_ready(ws)
        return proc

    def serve_all(self, hosts: Iterable[Host] | None = None, *args: str) -> None:
        """Start agents on ``hosts`` (default: every workstation) together, wait for all."""
        hosts = list(self.office.workstations if hosts is None else hosts)
        for ws in hosts:
            self.start(ws, *args)
        for ws in hosts:
            self.wait_ready(ws)

    def kill(self, ws: Host, sig: int = signal.SIGKILL) -> subprocess.Popen[bytes]:
        """Send ``sig`` to ws's agent's process group (the place gave it its own session)."""
        proc = self.procs[ws.name]
        os.killpg(proc.pid, sig)
        return proc

    def stop(self, ws: Host, timeout: float = 15) -> None:
        """Stop ws's agent: SIGTERM, SIGKILL after ``timeout`` s; wait for it."""
        stop_group(self.procs.pop(ws.name), timeout)

    def log(self, ws: Host, tail: int | None = LOG_TAIL) -> str:
        """The end (``tail=None``: all) of the log of ws's agent in its current home."""
        path = self.homes[ws.name] / "serve.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text if tail is None else text[-tail:]

    def wait_mesh(self, hosts: Iterable[Host] | None = None, seconds: float = 30) -> float:
        """Until every agent on ``hosts`` (default: every workstation) has listed every other
        one alive; returns the seconds it took."""
        hosts = list(self.office.workstations if hosts is None else hosts)
        ids = {ws.name: self.agent_id(ws) for ws in hosts}
        pending = list(hosts)

        def meshed() -> bool:
            # A host that saw all the others is not asked again: one process start less a poll.
            pending[:] = [
                ws for ws in pending if not set(ids.values()) - {ids[ws.name]} <= self.alive(ws)
            ]
            return not pending

        try:
            return wait_for(meshed, seconds, "the agents to see each other", every=0.2)
        except SiteError as exc:
            raise SiteError(f"{exc} (not yet: {', '.join(ws.name for ws in pending)})") from None

    # -- the CLI ---------------------------------------------------------------------------

    def cli(self, ws: Host, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``p2pmodel ARGS`` on ws (output captured, text)."""
        return ws.run(*CLI, *args, env=self.env(ws), timeout=timeout)

    def status(self, ws: Host) -> dict[str, Any]:
        """ws's ``status --json``."""
        r = self.cli(ws, "status", "--json", timeout=30)
        if r.returncode != 0:
            raise SiteError(f"status on {ws.name} failed: {r.stderr.strip()}")
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def agent_id(self, ws: Host) -> str:
        return str(self.status(ws)["agent"])

    def alive(self, ws: Host) -> set[str]:
        """The agent ids ws's agent lists alive."""
        return {p["agent"] for p in self.status(ws)["peers"] if p["alive"]}

    def get_cmd(self, out: Path | None = None, repo: Repo | None = None) -> list[str]:
        """The argv of a ``p2pmodel get --json`` of the repo (or ``repo``), ``--to out``."""
        to = [] if out is None else ["--to", str(out)]
        return [*CLI, "get", f"hf://{(repo or self.repo).repo_id}", *to, "--json"]

    def get(
        self, ws: Host, out: Path | None = None, repo: Repo | None = None, timeout: float = 120
    ) -> dict[str, Any]:
        """``p2pmodel get`` of the repo (or ``repo``) on ws, into ``out`` if given (whose files
        must then be exact); its JSON output."""
        r = ws.run(*self.get_cmd(out, repo), env=self.env(ws), timeout=timeout)
        if r.returncode != 0:
            raise SiteError(f"get on {ws.name} failed: {r.stderr.strip()}\nagent: {self.log(ws)}")
        if out is not None and (bad := self.mismatches(out, repo)):
            raise SiteError(f"get on {ws.name}: files not exact: {', '.join(bad)}")
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def mismatches(self, out: Path, repo: Repo | None = None) -> list[str]:
        """The files of the repo (or ``repo``) that ``out`` lacks or holds other bytes of."""
        bad = []
        for f in (repo or self.repo).files:
            path = out / f.path
            if not path.is_file() or path.stat().st_size != f.size or sha256_file(path) != f.sha256:
                bad.append(f.path)
        return bad

    # -- the mirror --------------------------------------------------------------------------

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """The mirror's counters (``/_stats``); with ``reset``, zeroed first."""
        url = f"{self.hub}/_stats/reset" if reset else f"{self.hub}/_stats"
        argv = [sys.executable, "-c", STATS, url, *(["post"] if reset else [])]
        r = self.mirror.run(*argv, env=blanked_env(), timeout=30)  # no proxy between us
        if r.returncode != 0:
            raise SiteError(f"reading the mirror's counters failed: {r.stderr.strip()}")
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def served(self) -> int:
        """Body bytes the mirror has served so far."""
        return int(self.stats()["bytes_served"])


__all__ = [
    "DROPPED_ENV",
    "DROPPED_PREFIX",
    "LocalHost",
    "Loopback",
    "MiB",
    "Place",
    "Site",
    "SiteError",
    "blanked_env",
    "children",
    "drop_environ",
    "dropped_env",
    "proc_cpu",
    "proc_status",
    "python_pid",
    "sha256_file",
    "stop_group",
    "wait_for",
]
