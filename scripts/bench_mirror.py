"""Benchmark: a mirror-only `p2pmodel get` against aria2c and curl, and sha256 hashing speed.

Everything runs on loopback. One big LFS file (a synthetic model) is served by the test mirror
(`p2pmodel.testing.mirror`), which limits every TCP connection to `--per-conn-rate-mib` MiB/s as
public mirrors do, so the wall time of a download is set by how many connections a tool keeps
busy and how little it idles at the start, between ranges and at the tail. On that one mirror,
in the same run, this times:

- `p2pmodel get hf://bench/model` through a `[[mirror]]` rule: listing + download + sha256
  verification + store commit (the end-to-end number a user sees);
- `aria2c -x16 -s16` on the CDN URL of the blob, with `--checksum=sha-256=HEX` (the same work)
  and without (download only);
- single-connection `curl` on a prefix of the blob, extrapolated to the whole file;
- hashing the file: `p2pmodel.adapters.hashing.digest_file` vs `openssl dgst -sha256` (and
  `sha256sum`).

While each tool runs, the mirror's byte counter is polled, so the table also shows when the first
and the last byte left the mirror: startup and ramp-up before, verification and exit after.

`--hubs` instead times the same model on two hubs (`[[same_files]]`): a Hugging Face mirror that
is slow (`--hf-rate-mib` per connection) and a ModelScope one that is fast
(`--per-conn-rate-mib`), each its own mirror process, in the same run: a get from Hugging Face
alone, one from ModelScope alone, and the Hugging Face and the ModelScope get with both hubs
configured, whose blobs the agent's `MirrorBoard` ranks live across the two. It prints time and
bytes per hub of each, and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from p2pmodel.adapters.hashing import digest_file
from p2pmodel.testing.mirror import spawn
from p2pmodel.testing.models import RepoFile, make_model

MiB = 1 << 20
REPO_ID = "bench/model"
POLL_INTERVAL = 0.05
TIME = "/usr/bin/time"  # GNU time (Debian package time)
# Environment variables that would send a tool through a proxy or to another hub origin.
DROPPED_ENV = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "HF_ENDPOINT",
    "MODELSCOPE_ENDPOINT",
)


@dataclass
class Sample:
    """One timed run of one download tool, with what the mirror saw meanwhile."""

    tool: str
    seconds: float
    target_bytes: int  # bytes the tool had to fetch (the whole file, or curl's prefix)
    cpu_seconds: float
    max_rss_mib: float
    served_bytes: int
    requests: int
    connections: int
    first_byte_s: float | None  # since the process started, when the mirror sent body bytes
    last_byte_s: float | None  # when the mirror had sent its last byte to the tool
    steady_mib_s: float | None  # aggregate rate between 10% and 90% of the bytes
    mirror_cpu_seconds: float
    exact: bool  # output checked against the upstream bytes


@dataclass
class ToolResult:
    tool: str
    label: str
    whole_bytes: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def extrapolated(self) -> bool:
        """The tool fetched only a prefix (curl); its time is scaled to the whole file."""
        return self.samples[0].target_bytes < self.whole_bytes

    def median(self, pick: Callable[[Sample], float | None]) -> float | None:
        values = [v for v in map(pick, self.samples) if v is not None]
        return statistics.median(values) if values else None

    @property
    def seconds(self) -> float:
        """Median wall time for the whole file (extrapolated for a prefix)."""
        t = self.median(lambda s: s.seconds)
        assert t is not None
        return t * self.whole_bytes / self.samples[0].target_bytes


# --- the mirror ------------------------------------------------------------------------------


class MirrorControl:
    """The mirror process plus one keep-alive connection to its control endpoints.

    One connection, opened before the first reset, so control traffic never shows in the
    mirror's connection count."""

    def __init__(
        self, proc: subprocess.Popen[bytes], hub_url: str, cdn_url: str, per_conn_rate: int
    ) -> None:
        self.proc, self.hub_url, self.cdn_url = proc, hub_url, cdn_url
        self.per_conn_rate = per_conn_rate
        hub = urlsplit(hub_url)
        assert hub.hostname == "127.0.0.1", "the benchmark only talks to loopback"
        self._conn = http.client.HTTPConnection(hub.hostname, hub.port, timeout=10)
        self._lock = threading.Lock()

    def _call(self, method: str, path: str) -> dict[str, Any]:
        with self._lock:
            self._conn.request(method, path, body=b"" if method == "POST" else None)
            resp = self._conn.getresponse()
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_stats")

    def reset(self) -> None:
        self._call("POST", "/_stats/reset")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self._conn.close()


def start_mirror(work: Path, repo_json: Path, per_conn_rate: int) -> MirrorControl:
    log = (work / "mirror.log").open("wb")
    try:
        proc, urls = spawn(
            repo_json, work, "--per-conn-rate", str(per_conn_rate), stderr=log, env=clean_env()
        )
    except RuntimeError as e:
        tail = (work / "mirror.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"bench-mirror: {e}:\n{tail}") from None
    finally:
        log.close()
    return MirrorControl(proc, urls["hub_url"], urls["cdn_url"], per_conn_rate)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- timing one tool -------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    # Mirror-only, in the host's namespace: never start the embedded LAN agent (libtorrent,
    # mDNS) here. LAN runs belong in namespaces (scripts/bench-lan).
    env["P2PMODEL_LAN"] = "off"
    env.update(extra)
    return env


@contextlib.contextmanager
def byte_timeline(mirror: MirrorControl, t0: float) -> Iterator[list[tuple[float, int]]]:
    """Polls the mirror's byte counter in a thread; yields the growing [(seconds, bytes)]."""
    points: list[tuple[float, int]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_INTERVAL):
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                points.append((time.monotonic() - t0, int(mirror.stats()["bytes_served"])))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield points
    finally:
        stop.set()
        thread.join(timeout=15)


def crossing(points: Sequence[tuple[float, int]], level: float) -> float | None:
    """First polled time at which the counter had reached `level` bytes."""
    return next((t for t, n in points if n >= level), None)


def run_timed(
    tool: str,
    cmd: Sequence[str],
    *,
    mirror: MirrorControl,
    target_bytes: int,
    timeout: float,
    env: dict[str, str] | None = None,
    stdout: int | None = subprocess.DEVNULL,
) -> tuple[Sample, str]:
    """Run `cmd` once: wall time by the monotonic clock, CPU and max RSS by GNU time.

    (os.wait4 would do for CPU, but Linux carries the forking Python's peak RSS across exec.)
    The command runs in its own process group, killed whole on timeout or interruption."""
    mirror.reset()
    cpu0 = mirror.cpu_seconds()
    fd, name = tempfile.mkstemp(prefix="p2pmodel-bench-usage-")
    os.close(fd)
    usage_file = Path(name)
    timed = [TIME, "-f", "%M %U %S", "-o", str(usage_file), *cmd]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        timed,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env or clean_env(),
        start_new_session=True,
    )
    killer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
    killer.start()
    try:
        with byte_timeline(mirror, t0) as points:
            out, err = proc.communicate()
            seconds = time.monotonic() - t0
    finally:
        killer.cancel()
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        usage = usage_file.read_text().split("\n")[-2:] if usage_file.exists() else []
        usage_file.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"bench-mirror: {tool} failed (exit {proc.returncode} after {seconds:.1f} s):\n"
            f"{' '.join(cmd)}\n{err.decode(errors='replace')[-3000:]}"
        )
    rss_kib, user, system = (float(v) for v in usage[0].split())
    stats = mirror.stats()
    points.append((seconds, int(stats["bytes_served"])))
    lo, hi = crossing(points, 0.1 * target_bytes), crossing(points, 0.9 * target_bytes)
    steady = 0.8 * target_bytes / (hi - lo) / MiB if lo is not None and hi and hi > lo else None
    sample = Sample(
        tool=tool,
        seconds=seconds,
        target_bytes=target_bytes,
        cpu_seconds=user + system,
        max_rss_mib=rss_kib / 1024,
        served_bytes=int(stats["bytes_served"]),
        requests=int(stats["requests"]),
        connections=int(stats["connections"]),
        first_byte_s=crossing(points, 1),
        last_byte_s=crossing(points, int(stats["bytes_served"])),
        steady_mib_s=steady,
        mirror_cpu_seconds=mirror.cpu_seconds() - cpu0,
        exact=False,
    )
    return sample, (out or b"").decode()


def sha256_of(path: Path) -> str:
    return digest_file(path, "sha256").removeprefix("sha256:")


def bench_p2pmodel(work: Path, mirror: MirrorControl, blob: RepoFile, conns: int) -> Sample:
    home = work / "p2pmodel-home"
    home.mkdir()
    try:
        (home / "config.toml").write_text(
            f'[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["{mirror.hub_url}/"]\n'
        )
        cmd = [sys.executable, "-m", "p2pmodel", "get", f"hf://{REPO_ID}", "--progress", "none"]
        cmd += ["--connections", str(conns)]
        sample, out = run_timed(
            "p2pmodel",
            cmd,
            mirror=mirror,
            target_bytes=blob.size,
            timeout=timeout_for(blob.size, conns, mirror),
            env=clean_env(P2PMODEL_HOME=str(home)),
            stdout=subprocess.PIPE,
        )
        got = Path(out.strip().splitlines()[-1]) / blob.path
        sample.exact = got.stat().st_size == blob.size and sha256_of(got) == blob.sha256
        return sample
    finally:
        shutil.rmtree(home, ignore_errors=True)


def bench_aria2c(
    work: Path, mirror: MirrorControl, blob: RepoFile, conns: int, *, checksum: bool
) -> Sample:
    out_dir = work / "aria2c-out"
    out_dir.mkdir()
    try:
        x = min(conns, 16)  # aria2c refuses more than 16 connections per server
        cmd = ["aria2c", "--no-conf=true", "--quiet=true", f"-x{x}", f"-s{conns}", "-k1M"]
        cmd += ["--file-allocation=none", "--allow-overwrite=true", "--auto-file-renaming=false"]
        cmd += ["--connect-timeout=10", "--timeout=30", "-d", str(out_dir), "-o", "out"]
        if checksum:
            cmd.append(f"--checksum=sha-256={blob.sha256}")
        cmd.append(f"{mirror.cdn_url}/lfs/{blob.sha256}")
        sample, _ = run_timed(
            "aria2c" if checksum else "aria2c-nocheck",
            cmd,
            mirror=mirror,
            target_bytes=blob.size,
            timeout=timeout_for(blob.size, conns, mirror),
        )
        got = out_dir / "out"
        sample.exact = got.stat().st_size == blob.size and sha256_of(got) == blob.sha256
        return sample
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def bench_curl(work: Path, mirror: MirrorControl, blob: RepoFile, prefix: int) -> Sample:
    got = work / "curl-out"
    try:
        cmd = ["curl", "-sS", "--noproxy", "*", "--max-time", str(int(prefix / MiB * 2 + 60))]
        if prefix < blob.size:
            cmd += ["-r", f"0-{prefix - 1}"]
        cmd += ["-o", str(got), f"{mirror.cdn_url}/lfs/{blob.sha256}"]
        sample, _ = run_timed(
            "curl", cmd, mirror=mirror, target_bytes=prefix, timeout=prefix / MiB * 2 + 60
        )
        with blob.data_path.open("rb") as f:
            expected = hashlib.sha256(f.read(prefix)).hexdigest()
        sample.exact = got.stat().st_size == prefix and sha256_of(got) == expected
        return sample
    finally:
        got.unlink(missing_ok=True)


def timeout_for(size: int, conns: int, mirror: MirrorControl) -> float:
    """Ten times the ideal transfer time plus a minute: a stuck tool fails instead of hanging."""
    return 60 + 10 * size / (min(conns, 16) * mirror.per_conn_rate)


def run_downloads(
    args: argparse.Namespace, work: Path, mirror: MirrorControl, blob: RepoFile, prefix: int
) -> list[ToolResult]:
    """Each tool `--repeat` times, interleaved, so a noisy moment does not hit one tool only."""
    conns, x = args.connections, min(args.connections, 16)
    tools: list[tuple[ToolResult, Callable[[], Sample]]] = [
        (
            ToolResult("p2pmodel", f"p2pmodel get --connections {conns}", blob.size),
            lambda: bench_p2pmodel(work, mirror, blob, conns),
        ),
        (
            ToolResult("aria2c", f"aria2c -x{x} -s{conns} --checksum", blob.size),
            lambda: bench_aria2c(work, mirror, blob, conns, checksum=True),
        ),
        (
            ToolResult("aria2c-nocheck", f"aria2c -x{x} -s{conns}", blob.size),
            lambda: bench_aria2c(work, mirror, blob, conns, checksum=False),
        ),
        (
            ToolResult("curl", "curl (1 connection)", blob.size),
            lambda: bench_curl(work, mirror, blob, prefix),
        ),
    ]
    for i in range(args.repeat):
        for result, run in tools:
            sample = run()
            result.samples.append(sample)
            print(
                f"bench-mirror: run {i + 1}/{args.repeat} {result.tool:15} {sample.seconds:7.2f} s"
                f"  (cpu {sample.cpu_seconds:.2f} s, exact {sample.exact})",
                flush=True,
            )
    return [result for result, _ in tools]


# --- hashing ---------------------------------------------------------------------------------


@dataclass
class HashResult:
    tool: str
    seconds: list[float]

    @property
    def best(self) -> float:
        return min(self.seconds)


def bench_hashing(path: Path, expected: str, runs: int) -> list[HashResult]:
    """Best of `runs` warm-cache runs each (one untimed read first brings the file to cache)."""
    sha256_of(path)

    def timed(fn: Callable[[], str]) -> float:
        t0 = time.monotonic()
        got = fn()
        seconds = time.monotonic() - t0
        if expected not in got:
            raise SystemExit(f"bench-mirror: hashing gave {got!r}, expected {expected}")
        return seconds

    def command(*cmd: str) -> Callable[[], str]:
        return lambda: subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    tools: list[tuple[str, Callable[[], str]]] = [
        ("p2pmodel digest_file", lambda: digest_file(path, "sha256")),
        ("openssl dgst -sha256", command("openssl", "dgst", "-sha256", str(path))),
        ("sha256sum", command("sha256sum", str(path))),
    ]
    results = [HashResult(name, []) for name, _ in tools]
    for _ in range(runs):  # interleaved, so a noisy moment does not hit one tool only
        for result, (_, fn) in zip(results, tools, strict=True):
            result.seconds.append(timed(fn))
    return results


# --- report ----------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _tail(s: Sample) -> float | None:
    return None if s.last_byte_s is None else s.seconds - s.last_byte_s


# (header, cell of one tool's row); medians over the tool's runs
COLUMNS: list[tuple[str, Callable[[ToolResult, int], str]]] = [
    ("tool", lambda r, size: r.label),
    ("seconds", lambda r, size: f"{r.seconds:.2f}"),
    ("MiB/s", lambda r, size: f"{size / MiB / r.seconds:.1f}"),
    ("first byte s", lambda r, size: fmt(r.median(lambda s: s.first_byte_s))),
    ("last byte s", lambda r, size: fmt(r.median(lambda s: s.last_byte_s))),
    ("tail s", lambda r, size: fmt(r.median(_tail))),
    ("steady MiB/s", lambda r, size: fmt(r.median(lambda s: s.steady_mib_s), ".1f")),
    ("CPU s", lambda r, size: fmt(r.median(lambda s: s.cpu_seconds))),
    ("max RSS MiB", lambda r, size: fmt(r.median(lambda s: s.max_rss_mib), ".0f")),
    ("served MiB", lambda r, size: fmt(r.median(lambda s: s.served_bytes / MiB), ".1f")),
    ("conns / reqs", lambda r, size: f"{r.samples[0].connections} / {r.samples[0].requests}"),
    ("mirror CPU s", lambda r, size: fmt(r.median(lambda s: s.mirror_cpu_seconds))),
    ("exact", lambda r, size: "yes" if all(s.exact for s in r.samples) else "NO"),
]


def report(
    args: argparse.Namespace,
    size: int,
    results: list[ToolResult],
    hashing: list[HashResult],
    verify_seconds: float,
) -> tuple[str, dict[str, Any]]:
    by_tool = {r.tool: r for r in results}
    ideal = size / (args.connections * args.per_conn_rate_mib * MiB)
    lines = [
        f"{size / MiB:.0f} MiB file, mirror limit {args.per_conn_rate_mib:g} MiB/s per "
        f"connection, {args.connections} connections (ideal {ideal:.2f} s), "
        f"median of {args.repeat} run(s)",
        "",
        "| " + " | ".join(name for name, _ in COLUMNS) + " |",
        "| --- |" + " ---: |" * (len(COLUMNS) - 2) + " --- |",
    ]
    lines += ["| " + " | ".join(cell(r, size) for _, cell in COLUMNS) + " |" for r in results]
    lines += [
        "",
        "first/last byte: seconds from the tool's start until the mirror sent it the first/last "
        f"body byte (polled every {POLL_INTERVAL * 1000:.0f} ms); tail: after the last byte "
        "(sha256 check, fsync, exit); steady: aggregate rate from 10% to 90% of the bytes; "
        "CPU s and max RSS: the tool's, by GNU time; mirror CPU s: the mirror process meanwhile.",
    ]
    curl = by_tool["curl"]
    if curl.extrapolated:
        prefix_mib = curl.samples[0].target_bytes / MiB
        lines += [
            "",
            f"curl fetched a {prefix_mib:.0f} MiB prefix (`-r`); its seconds and MiB/s are "
            "extrapolated to the whole file (its other columns are for the prefix).",
        ]
    lines += [
        "",
        f"| hashing (warm cache, best of {len(hashing[0].seconds)}) | seconds | MiB/s |",
        "| --- | ---: | ---: |",
    ]
    for h in hashing:
        lines.append(f"| {h.tool} | {h.best:.3f} | {size / MiB / h.best:.0f} |")

    p2p, aria, aria_nc = by_tool["p2pmodel"], by_tool["aria2c"], by_tool["aria2c-nocheck"]
    time_ratio = p2p.seconds / aria.seconds
    hash_ratio = hashing[1].best / hashing[0].best  # throughput p2pmodel / openssl
    exact = all(s.exact for r in results for s in r.samples)
    p2p_download = p2p.seconds - verify_seconds
    p2p_last, aria_last = (r.median(lambda x: x.last_byte_s) for r in (p2p, aria_nc))
    last_ratio = p2p_last / aria_last if p2p_last and aria_last else None
    lines += [
        "",
        "| ratio | value | target | result |",
        "| --- | ---: | ---: | --- |",
        f"| p2pmodel / aria2c time (both verify sha256) | {time_ratio:.2f} | <= 1.0 "
        f"| {verdict(time_ratio <= 1.0)} |",
        f"| hashing p2pmodel / openssl throughput | {hash_ratio:.2f} | >= 0.9 "
        f"| {verdict(hash_ratio >= 0.9)} |",
        f"| p2pmodel output byte-identical (sha256) | {'yes' if exact else 'no'} | yes "
        f"| {verdict(exact)} |",
        f"| p2pmodel / aria2c without checksum | {p2p.seconds / aria_nc.seconds:.2f} | info | |",
        f"| p2pmodel minus one hash of the file ({verify_seconds:.2f} s) / aria2c without "
        f"checksum | {p2p_download / aria_nc.seconds:.2f} | info | |",
        f"| p2pmodel / aria2c without checksum, time to the mirror's last byte "
        f"| {fmt(last_ratio)} | info | |",
        f"| p2pmodel / curl (single connection) time | {p2p.seconds / curl.seconds:.3f} | info | |",
    ]
    data: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "params": {
            "size_mib": args.size_mib,
            "per_conn_rate_mib": args.per_conn_rate_mib,
            "connections": args.connections,
            "repeat": args.repeat,
            "curl_prefix_mib": curl.samples[0].target_bytes / MiB,
        },
        "ideal_seconds": ideal,
        "tools": {
            r.tool: {
                "label": r.label,
                "seconds": r.seconds,
                "extrapolated": r.extrapolated,
                "samples": [asdict(s) for s in r.samples],
            }
            for r in results
        },
        "hashing": {h.tool: {"best_seconds": h.best, "seconds": h.seconds} for h in hashing},
        "ratios": {
            "p2pmodel_over_aria2c_time": time_ratio,
            "p2pmodel_over_aria2c_time_pass": time_ratio <= 1.0,
            "hash_p2pmodel_over_openssl_throughput": hash_ratio,
            "hash_p2pmodel_over_openssl_throughput_pass": hash_ratio >= 0.9,
            "p2pmodel_over_aria2c_nocheck_time": p2p.seconds / aria_nc.seconds,
            "p2pmodel_download_only_over_aria2c_nocheck": p2p_download / aria_nc.seconds,
            "p2pmodel_over_aria2c_nocheck_last_byte": last_ratio,
            "p2pmodel_over_curl_time": p2p.seconds / curl.seconds,
        },
        "exact": exact,
    }
    return "\n".join(lines), data


# --- two hubs (--hubs) -----------------------------------------------------------------------


@dataclass
class HubRun:
    """One timed `p2pmodel get` with what each hub's mirror sent meanwhile."""

    seconds: float
    hf_bytes: int  # body bytes the Hugging Face mirror sent (its hub and CDN ports)
    ms_bytes: int
    said: dict[str, int]  # what `get --json` says each hub gave ("hubs")
    exact: bool


def start_named(work: Path, repo_json: Path, rate: int, name: str) -> MirrorControl:
    log = (work / f"{name}.log").open("wb")
    try:
        proc, urls = spawn(
            repo_json,
            work,
            "--per-conn-rate",
            str(rate),
            name=name,
            stderr=log,
            env=clean_env(),
        )
    except RuntimeError as e:
        tail = (work / f"{name}.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"bench-mirror: {e}:\n{tail}") from None
    finally:
        log.close()
    return MirrorControl(proc, urls["hub_url"], urls["cdn_url"], rate)


def hub_get(
    work: Path,
    ref: str,
    hf: MirrorControl,
    ms: MirrorControl,
    repo: Any,
    conns: int,
    *,
    same_files: bool,
) -> HubRun:
    home = work / "p2pmodel-home"
    home.mkdir()
    try:
        text = (
            f'[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["{hf.hub_url}/"]\n'
            f'[[mirror]]\nfor = "https://www.modelscope.cn/"\nuse = ["{ms.hub_url}/"]\n'
        )
        if same_files:
            text += '[[same_files]]\nrepos = ["hf://bench/", "ms://bench/"]\n'
        (home / "config.toml").write_text(text)
        hf.reset()
        ms.reset()
        cmd = [sys.executable, "-m", "p2pmodel", "get", ref, "--json", "--progress", "none"]
        cmd += ["--connections", str(conns)]
        size = sum(f.size for f in repo.files)
        t0 = time.monotonic()
        proc = subprocess.run(
            cmd,
            env=clean_env(P2PMODEL_HOME=str(home)),
            capture_output=True,
            check=False,
            timeout=60 + 20 * size / (min(conns, 16) * hf.per_conn_rate),
        )
        seconds = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(
                f"bench-mirror: {' '.join(cmd)} failed (exit {proc.returncode}):\n"
                f"{proc.stderr.decode(errors='replace')[-3000:]}"
            )
        result = json.loads(proc.stdout)
        root = Path(result["path"])
        exact = all(
            (root / f.path).stat().st_size == f.size and sha256_of(root / f.path) == f.sha256
            for f in repo.files
        )
        return HubRun(
            seconds,
            int(hf.stats()["bytes_served"]),
            int(ms.stats()["bytes_served"]),
            {k: int(v) for k, v in result.get("hubs", {}).items()},
            exact,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def bench_hubs(args: argparse.Namespace) -> int:
    """The `--hubs` benchmark (see the module's docstring)."""
    size_mib = args.size_mib if args.size_mib is not None else 256
    shards = 4
    conns = args.connections
    hf_rate, ms_rate = int(args.hf_rate_mib * MiB), int(args.per_conn_rate_mib * MiB)
    work = Path(tempfile.mkdtemp(prefix="p2pmodel-bench-hubs-"))
    mirrors: list[MirrorControl] = []
    try:
        repo = make_model(
            work / "upstream", "bench/model", shards=shards, shard_size=size_mib * MiB // shards
        )
        repo_json = work / "repo.json"
        repo_json.write_text(repo.to_json())
        size = sum(f.size for f in repo.files)
        hf = start_named(work, repo_json, hf_rate, "hf")
        mirrors.append(hf)
        ms = start_named(work, repo_json, ms_rate, "ms")
        mirrors.append(ms)
        print(
            f"bench-mirror: {size / MiB:.0f} MiB model; Hugging Face mirror {hf.hub_url} "
            f"({args.hf_rate_mib:g} MiB/s per connection), ModelScope mirror {ms.hub_url} "
            f"({args.per_conn_rate_mib:g} MiB/s per connection)"
        )
        subprocess.run(
            [sys.executable, "-m", "p2pmodel", "--version"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=clean_env(),
        )
        kinds = [
            ("hf", "hf://bench/model, Hugging Face only", "hf://bench/model", False),
            ("ms", "ms://bench/model, ModelScope only", "ms://bench/model", False),
            ("both", "hf://bench/model, both hubs ([[same_files]])", "hf://bench/model", True),
            ("ms+hf", "ms://bench/model, both hubs ([[same_files]])", "ms://bench/model", True),
        ]
        runs: dict[str, list[HubRun]] = {k: [] for k, *_ in kinds}
        for i in range(args.repeat):  # interleaved, so a noisy moment does not hit one only
            for kind, _label, ref, same in kinds:
                run = hub_get(work, ref, hf, ms, repo, conns, same_files=same)
                runs[kind].append(run)
                print(
                    f"bench-mirror: run {i + 1}/{args.repeat} {kind:5} {run.seconds:7.2f} s "
                    f"(HF {run.hf_bytes / MiB:.1f} MiB, MS {run.ms_bytes / MiB:.1f} MiB, "
                    f"exact {run.exact})",
                    flush=True,
                )

        def med(kind: str, pick: Callable[[HubRun], float]) -> float:
            return statistics.median(pick(r) for r in runs[kind])

        lines = [
            f"{size / MiB:.0f} MiB model ({shards} shards + small git files), {conns} "
            f"connections; Hugging Face mirror {args.hf_rate_mib:g} MiB/s per connection, "
            f"ModelScope mirror {args.per_conn_rate_mib:g} MiB/s per connection; "
            f"median of {args.repeat} run(s)",
            "",
            "| get | seconds | MiB/s | from HF MiB | from ModelScope MiB | get --json hubs MiB "
            "| exact |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for kind, label, *_ in kinds:
            said = runs[kind][len(runs[kind]) // 2].said
            said_text = ", ".join(f"{h} {n / MiB:.1f}" for h, n in sorted(said.items())) or "-"
            lines.append(
                f"| {label} | {med(kind, lambda r: r.seconds):.2f} "
                f"| {size / MiB / med(kind, lambda r: r.seconds):.1f} "
                f"| {med(kind, lambda r: r.hf_bytes) / MiB:.1f} "
                f"| {med(kind, lambda r: r.ms_bytes) / MiB:.1f} | {said_text} "
                f"| {'yes' if all(r.exact for r in runs[kind]) else 'NO'} |"
            )
        both, hf_only, ms_only, ms_both = (
            med(k, lambda r: r.seconds) for k in ("both", "hf", "ms", "ms+hf")
        )
        share = med("both", lambda r: r.ms_bytes / max(1, r.ms_bytes + r.hf_bytes))
        served = med("both", lambda r: (r.ms_bytes + r.hf_bytes) / size)
        lines += [
            "",
            "| ratio | value |",
            "| --- | ---: |",
            f"| both hubs / Hugging Face only, time | {both / hf_only:.2f} |",
            f"| both hubs / ModelScope only, time | {both / ms_only:.2f} |",
            f"| both hubs: bytes from ModelScope / all bytes served | {share:.2f} |",
            f"| both hubs: bytes served by both mirrors / model size | {served:.3f} |",
            f"| ms:// with both hubs / ModelScope only, time | {ms_both / ms_only:.2f} |",
        ]
        print()
        print("\n".join(lines))
        if args.json:
            data = {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "params": {
                    "size_mib": size_mib,
                    "hf_rate_mib": args.hf_rate_mib,
                    "ms_rate_mib": args.per_conn_rate_mib,
                    "connections": conns,
                    "repeat": args.repeat,
                },
                "runs": {k: [asdict(r) for r in v] for k, v in runs.items()},
                "ratios": {
                    "both_over_hf_time": both / hf_only,
                    "both_over_ms_time": both / ms_only,
                    "both_ms_share": share,
                    "both_served_over_size": served,
                    "ms_both_over_ms_time": ms_both / ms_only,
                },
            }
            args.json.write_text(json.dumps(data, indent=1) + "\n")
            print(f"\nbench-mirror: results written to {args.json}")
        exact = all(r.exact for v in runs.values() for r in v)
        return 0 if exact else 1
    finally:
        for m in mirrors:
            m.close()
            stop_process(m.proc)
        if args.keep:
            print(f"bench-mirror: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# --- main ------------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run the finally blocks: kill the mirror, remove the temp dir


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/bench-mirror",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    ap.add_argument(
        "--size-mib", type=int, help="file size (default 512; with --hubs the model, 256)"
    )
    ap.add_argument(
        "--per-conn-rate-mib",
        type=float,
        default=8.0,
        help="the mirror's limit per connection in MiB/s (default 8)",
    )
    ap.add_argument("--connections", type=int, default=16, help="for p2pmodel and aria2c (16)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per download tool (median)")
    ap.add_argument(
        "--curl-mib",
        type=int,
        help="curl fetches this prefix and is extrapolated to the whole file "
        "(default: 4 s worth at the per-connection rate; 0: the whole file)",
    )
    ap.add_argument("--hash-runs", type=int, default=2, help="timed runs per hasher (best)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory (debugging)")
    ap.add_argument(
        "--hubs",
        action="store_true",
        help="instead: one model on a slow Hugging Face and a fast ModelScope mirror, a get "
        "with both hubs ([[same_files]]) against each hub alone",
    )
    ap.add_argument(
        "--hf-rate-mib",
        type=float,
        default=2.0,
        help="with --hubs: the Hugging Face mirror's limit per connection in MiB/s (default 2)",
    )
    args = ap.parse_args(argv)
    if args.hubs:
        if args.hf_rate_mib <= 0 or args.per_conn_rate_mib <= 0 or args.repeat < 1:
            ap.error("rates must be positive and --repeat at least 1")
        signal.signal(signal.SIGTERM, _terminate)
        return bench_hubs(args)
    if args.size_mib is None:
        args.size_mib = 512
    if not (args.size_mib >= 1 and args.connections >= 1 and args.repeat >= 1):
        ap.error("--size-mib, --connections and --repeat must be at least 1")
    if args.per_conn_rate_mib <= 0:
        ap.error("--per-conn-rate-mib must be positive")
    for tool in ("aria2c", "curl", "openssl", "sha256sum", TIME):
        if shutil.which(tool) is None:
            ap.error(f"{tool} is not installed (scripts/bench-mirror installs it)")

    signal.signal(signal.SIGTERM, _terminate)
    size = args.size_mib * MiB
    rate = int(args.per_conn_rate_mib * MiB)
    curl_mib = args.curl_mib if args.curl_mib is not None else max(4, 4 * args.per_conn_rate_mib)
    prefix = size if curl_mib <= 0 else min(size, int(curl_mib * MiB))
    work = Path(tempfile.mkdtemp(prefix="p2pmodel-bench-"))
    mirror: MirrorControl | None = None
    try:
        t = time.monotonic()
        repo = make_model(
            work / "upstream", REPO_ID, shards=1, shard_size=size, single_file=True, small_files={}
        )
        (blob,) = repo.files
        repo_json = work / "repo.json"
        repo_json.write_text(repo.to_json())
        print(f"bench-mirror: made a {size / MiB:.0f} MiB model in {time.monotonic() - t:.1f} s")
        mirror = start_mirror(work, repo_json, rate)
        print(f"bench-mirror: mirror hub {mirror.hub_url}, cdn {mirror.cdn_url}")
        # Warm the interpreter's bytecode cache so the first p2pmodel run is not penalised.
        subprocess.run(
            [sys.executable, "-m", "p2pmodel", "--version"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=clean_env(),
        )

        results = run_downloads(args, work, mirror, blob, prefix)
        hashing = bench_hashing(blob.data_path, blob.sha256, args.hash_runs)
        table, data = report(args, size, results, hashing, hashing[0].best)
        print()
        print(table)
        if args.json:
            args.json.write_text(json.dumps(data, indent=1) + "\n")
            print(f"\nbench-mirror: results written to {args.json}")
        return 0
    finally:
        if mirror is not None:
            mirror.close()
            stop_process(mirror.proc)
        if args.keep:
            print(f"bench-mirror: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench-mirror: interrupted (mirror stopped, temp files removed)", file=sys.stderr)
        sys.exit(130)
