"""Benchmark: what libtorrent alone costs per GiB on this machine, the floor under an agent.

Two processes inside a fresh network namespace with only `lo` up (nothing in the host's): a
seeder holding a `--size-mib` blob (the agent's own session settings, the blob torrent by the
agent's piece rule, pieces marked verified as an agent seeds a stored blob) and a downloader
that fetches it into an empty directory, as an agent's LAN get does. Each process reports its
own CPU (utime+stime of all its threads) per GiB, the downloader its rate. Then, in this
process, the one sha256 pass a LAN get adds (`digest_file`, warm page cache). DHT, LSD, UPnP,
NAT-PMP and uTP are off (the agent's settings); both sessions listen on 127.0.0.1 only.

    scripts/bench-libtorrent [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
SEED_PORT, LEECH_PORT = 36881, 36882


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


EXTRA: dict[str, int | bool] = {}  # --set: settings to compare against the agent's


def _session(port: int):  # type: ignore[no-untyped-def]
    import libtorrent as lt

    from p2pmodel.adapters.swarm import session_settings

    return lt.session({**session_settings(["127.0.0.1"], port), **EXTRA})


def _params(work: Path, save: Path, seed: bool):  # type: ignore[no-untyped-def]
    import libtorrent as lt

    ti = lt.torrent_info(str(work / "blob.torrent"))
    p = lt.add_torrent_params()
    p.ti = ti
    p.save_path = str(save)
    p.flags &= ~lt.torrent_flags.auto_managed
    p.flags &= ~lt.torrent_flags.paused
    if seed:
        p.flags |= lt.torrent_flags.seed_mode
        p.verified_pieces = [True] * ti.num_pieces()
    return p


def seeder(work: Path, size: int) -> None:
    ses = _session(SEED_PORT)
    ses.add_torrent(_params(work, work / "seed", seed=True))
    c0 = _cpu()

    def done(*_: object) -> None:
        print(f"{(_cpu() - c0) / (size / (1 << 30)):.3f}", flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, done)
    print("ready", flush=True)
    while True:
        time.sleep(1)


def leecher(work: Path, size: int) -> None:
    ses = _session(LEECH_PORT)
    out = Path(tempfile.mkdtemp(dir=work))
    c0, t0 = _cpu(), time.monotonic()
    h = ses.add_torrent(_params(work, out, seed=False))
    h.connect_peer(("127.0.0.1", SEED_PORT))
    while not h.status().is_seeding:
        if time.monotonic() - t0 > 300:
            sys.exit("leecher: no end after 300 s")
        time.sleep(0.02)
    t1 = time.monotonic()
    print(f"{size / (t1 - t0) / 1e6:.1f} {(_cpu() - c0) / (size / (1 << 30)):.3f}", flush=True)
    shutil.rmtree(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="a libtorrent setting on top of the agent's (repeatable), to compare",
    )
    ap.add_argument("--role", choices=["seed", "leech"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = args.size_mib * MiB
    for item in args.set:
        name, _, value = item.partition("=")
        EXTRA[name] = value.lower() == "true" if value.lower() in ("true", "false") else int(value)
    if args.role == "seed":
        return seeder(args.work, size)
    if args.role == "leech":
        return leecher(args.work, size)

    import libtorrent as lt

    from p2pmodel.adapters.hashing import digest_file
    from p2pmodel.core.torrents import piece_size

    if os.geteuid() != 0:
        sys.exit("bench-libtorrent: needs root (it makes a network namespace)")
    ns = f"p2pm-blt{os.getpid()}-{secrets.token_hex(2)}"
    work = Path(tempfile.mkdtemp(prefix="bench-libtorrent-", dir="/var/tmp"))
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        (work / "seed").mkdir()
        blob = work / "seed" / "blob"
        with open(blob, "wb") as f:
            for left in range(size, 0, -64 * MiB):
                f.write(os.urandom(min(left, 64 * MiB)))
        fs = lt.file_storage()
        fs.add_file("blob", size)
        ct = lt.create_torrent(fs, piece_size(size), flags=lt.create_torrent.v1_only)
        ct.set_priv(True)
        lt.set_piece_hashes(ct, str(work / "seed"))
        (work / "blob.torrent").write_bytes(lt.bencode(ct.generate()))
        me = [sys.executable, "-W", "ignore", __file__, "--size-mib", str(args.size_mib)]
        me += [f"--set={item}" for item in args.set]
        rates, leech_cpu, seed_cpu = [], [], []
        for _ in range(args.repeat):
            seed = subprocess.Popen(
                ["ip", "netns", "exec", ns, *me, "--role", "seed", "--work", str(work)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert seed.stdout is not None
            if seed.stdout.readline().strip() != "ready":
                sys.exit("bench-libtorrent: the seeder did not start")
            got = subprocess.run(
                ["ip", "netns", "exec", ns, *me, "--role", "leech", "--work", str(work)],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
                timeout=400,
            ).stdout.split()
            seed.send_signal(signal.SIGTERM)
            seed_cpu.append(float(seed.communicate(timeout=30)[0].strip()))
            rates.append(float(got[0]))
            leech_cpu.append(float(got[1]))
        best = []
        for _ in range(2):
            c0 = _cpu()
            digest_file(blob, "sha256", size)
            best.append((_cpu() - c0) / (size / (1 << 30)))
        med = statistics.median
        print(
            f"libtorrent {lt.__version__} alone, {args.size_mib} MiB blob over loopback in a "
            f"network namespace, piece {piece_size(size) // 1024} KiB, median of {args.repeat}"
            f"{', with ' + ', '.join(args.set) if args.set else ''}\n"
        )
        print("| measure | value |\n| --- | ---: |")
        print(f"| downloader rate, MB/s | {med(rates):.0f} |")
        print(f"| downloader CPU s per GiB (receive, SHA-1 checks, write) | {med(leech_cpu):.2f} |")
        print(f"| seeder CPU s per GiB (read, send) | {med(seed_cpu):.2f} |")
        print(f"| sha256 of the blob, CPU s per GiB (warm cache, best of 2) | {min(best):.2f} |")
        print(
            f"| floor for an agent's LAN get (downloader + sha256), CPU s per GiB | "
            f"{med(leech_cpu) + min(best):.2f} |"
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
