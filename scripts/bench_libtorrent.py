"""Benchmark: what libtorrent alone costs per GiB on this machine, the floor under an agent,
and what each way of keying an office's torrents costs (`--key-mode`).

Two processes inside network namespaces (nothing in the host's): a seeder holding a
`--size-mib` blob (the agent's own session settings, the blob torrent by the agent's rule,
`core.torrents.info_bytes`, pieces marked verified as an agent seeds a stored blob) and a
downloader that fetches it into an empty directory, as an agent's LAN get does. Each process
reports its own CPU (utime+stime of all its threads) per GiB, the downloader its rate over the
transfer window (first payload byte to the last piece checked). Then, in this process, the one
sha256 pass a LAN get adds (`digest_file`, warm page cache). DHT, LSD, UPnP, NAT-PMP and uTP are
off (the agent's settings); the sessions listen on namespace addresses only.

`--link lo` (default): both processes in one fresh namespace with only `lo` up. `--link veth`:
a virtual office of two workstations (`testing.netns`: a veth each, one bridge, unshaped), the
seeder in ws1, the downloader in ws2; every repetition starts with `curl` in ws2 fetching the
same file from nginx in ws1 (sendfile on) into a file, the reference the modes are compared to
in the same run (its rate over curl's own transfer window, starttransfer to total).

Key modes (each repetition runs every mode in turn, so they share the machine's load):

- `open`: no key, the plain blob torrent (what an open office runs);
- `filter`: the same torrent, each session's IP filter letting in only the other's address;
- `ssl`: the office CA's PEM in the info dict (an SSL torrent), each side its certificate
  signed by that CA, the SSL listener only, the IP filter (an office with `swarm_tls = true`);
- `tag-rc4`, `tag-plaintext`, `tag-both`: the info dict with the office's tag
  (`core.torrents.keyed` with the key's torrent secret), protocol encryption forced both ways
  (`pe_forced`), `allowed_enc_level` pe_rc4, pe_plaintext or pe_both (with libtorrent's
  default `prefer_rc4` off, the answering side then picks plaintext), the IP filter. The
  downloader reports what was negotiated. `tag-rc4` is what a keyed agent runs by default.

    scripts/bench-libtorrent [--size-mib 1024] [--repeat 3] [--link lo|veth]
                             [--key-mode open,filter,ssl,tag-rc4,tag-plaintext,tag-both]
"""

from __future__ import annotations

import argparse
import datetime
import json
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
SEED_PORT, LEECH_PORT = 36881, 36882
MODES = ("open", "filter", "ssl", "tag-rc4", "tag-plaintext", "tag-both")
NGINX_PORT = 8080


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


EXTRA: dict[str, int | bool] = {}  # --set: settings to compare against the agent's


def _session(ip: str, port: int, mode: str, peer: str):  # type: ignore[no-untyped-def]
    import libtorrent as lt

    from p2pmodel.adapters.swarm import session_settings

    ssl, tag = mode == "ssl", mode.startswith("tag-")
    settings = session_settings([ip], port, ssl=ssl, encrypted=tag)
    if tag:
        level = mode.removeprefix("tag-")
        settings["allowed_enc_level"] = int(getattr(lt.enc_level, f"pe_{level}"))
        settings["prefer_rc4"] = level == "rc4"
    ses = lt.session({**settings, **EXTRA})
    if mode != "open":
        f = lt.ip_filter()
        f.add_rule("0.0.0.0", "255.255.255.255", 1)
        f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)
        f.add_rule(peer, peer, 0)
        ses.set_ip_filter(f)
    return ses


def _add(ses: Any, work: Path, mode: str, save: Path, role: str) -> Any:
    import libtorrent as lt

    ti = lt.torrent_info(str(work / f"{mode}.torrent"))
    p = lt.add_torrent_params()
    p.ti = ti
    p.save_path = str(save)
    p.flags &= ~lt.torrent_flags.auto_managed
    p.flags &= ~lt.torrent_flags.paused
    if role == "seed":
        p.flags |= lt.torrent_flags.seed_mode
        p.verified_pieces = [True] * ti.num_pieces()
    h = ses.add_torrent(p)
    if mode == "ssl":
        tls = work / f"tls-{role}"
        h.set_ssl_certificate_buffer(
            *((tls / name).read_text() for name in ("cert.pem", "key.pem", "dh.pem"))
        )
    return h


def _port(ses: Any, mode: str) -> int:
    return int(ses.ssl_listen_port() if mode == "ssl" else ses.listen_port())


def seeder(args: argparse.Namespace, size: int) -> None:
    ses = _session(args.ip, SEED_PORT, args.mode, args.peer)
    _add(ses, args.work, args.mode, args.work / "seed", "seed")
    c0 = _cpu()

    def done(*_: object) -> None:
        print(f"{(_cpu() - c0) / (size / GiB):.3f}", flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, done)
    print(f"ready {_port(ses, args.mode)}", flush=True)
    while True:
        time.sleep(1)


def _negotiated(h: Any, mode: str) -> str:
    import libtorrent as lt

    words = []
    for p in h.get_peer_info():
        if mode == "ssl":  # the bindings have no flag for it; only the SSL listener is open
            words.append("TLS")
        elif p.flags & lt.peer_info.rc4_encrypted:
            words.append("RC4")
        elif p.flags & lt.peer_info.plaintext_encrypted:
            words.append("PE handshake, plaintext")
        else:
            words.append("plain")
    return "+".join(sorted(set(words))) or "?"


def leecher(args: argparse.Namespace, size: int) -> None:
    ses = _session(args.ip, LEECH_PORT, args.mode, args.peer)
    out = Path(tempfile.mkdtemp(dir=args.work))
    c0, t0 = _cpu(), time.monotonic()
    h = _add(ses, args.work, args.mode, out, "leech")
    h.connect_peer((args.peer, args.peer_port))
    first, enc = None, "?"
    while not h.status().is_seeding:
        now = time.monotonic()
        if now - t0 > 300:
            sys.exit("leecher: no end after 300 s")
        if first is None and h.status().total_payload_download > 0:
            first, enc = now, _negotiated(h, args.mode)
        time.sleep(0.01)
    t1 = time.monotonic()
    result = {
        "rate": size / (t1 - (first or t0)) / 1e6,
        "cpu": (_cpu() - c0) / (size / GiB),
        "enc": enc,
    }
    print(json.dumps(result), flush=True)
    shutil.rmtree(out)


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {{
        listen {ip}:{port};
        root {root};
    }}
}}
"""


class Place:
    """Where the two processes run: one lo-only namespace, or ws1 and ws2 of a virtual office."""

    def __init__(self, link: str) -> None:
        self.link = link
        self.office: Any = None
        self.ns = ""
        self.seed_ip = self.leech_ip = "127.0.0.1"

    def __enter__(self) -> Place:
        if self.link == "veth":
            from p2pmodel.testing.netns import Network

            self.office = Network(2, mirror=False, prefix=f"p2pm-blt{secrets.token_hex(2)}")
            self.office.__enter__()
            self.seed_ip, self.leech_ip = (h.ip for h in self.office.workstations)
        else:
            self.ns = f"p2pm-blt{os.getpid()}-{secrets.token_hex(2)}"
            subprocess.run(["ip", "netns", "add", self.ns], check=True)
            subprocess.run(
                ["ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up"], check=True
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.office is not None:
            self.office.close()
        if self.ns:
            subprocess.run(["ip", "netns", "del", self.ns], stderr=subprocess.DEVNULL, check=False)

    def cmd(self, role: str, argv: Sequence[str]) -> list[str]:
        if self.office is not None:
            return self.office.workstations[0 if role == "seed" else 1].cmd(*argv)
        return ["ip", "netns", "exec", self.ns, *argv]


def run_pair(place: Place, me: list[str], work: Path, mode: str) -> dict[str, Any]:
    os.sync()  # the previous run's written file out first, as before curl
    common = ["--work", str(work), "--mode", mode]
    seed = subprocess.Popen(
        place.cmd(
            "seed",
            [*me, "--role", "seed", *common, "--ip", place.seed_ip, "--peer", place.leech_ip],
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert seed.stdout is not None
    word, _, port = seed.stdout.readline().strip().partition(" ")
    if word != "ready":
        seed.kill()
        sys.exit(f"bench-libtorrent: the seeder did not start ({mode})")
    try:
        got = subprocess.run(
            place.cmd(
                "leech",
                [
                    *me,
                    "--role",
                    "leech",
                    *common,
                    "--ip",
                    place.leech_ip,
                    "--peer",
                    place.seed_ip,
                    "--peer-port",
                    port,
                ],
            ),
            stdout=subprocess.PIPE,
            text=True,
            check=True,
            timeout=400,
        ).stdout
    finally:
        seed.send_signal(signal.SIGTERM)
        seed_cpu = seed.communicate(timeout=30)[0].strip()
    return {**json.loads(got), "seed_cpu": float(seed_cpu)}


def run_curl(place: Place, url: str, out: Path, nginx_pid: int, size: int) -> dict[str, Any]:
    from p2pmodel.testing.site import children, proc_cpu

    def sender() -> float:
        return sum(proc_cpu(p) for p in children(nginx_pid))

    os.sync()
    s0, r0 = sender(), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(
        place.cmd(
            "leech",
            [
                "curl",
                "-sS",
                "--fail",
                "--noproxy",
                "*",
                "-o",
                str(out),
                "-w",
                "%{time_starttransfer} %{time_total} %{size_download}",
                url,
            ],
        ),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    s1, r1 = sender(), resource.getrusage(resource.RUSAGE_CHILDREN)
    out.unlink(missing_ok=True)
    if r.returncode != 0:
        sys.exit(f"bench-libtorrent: curl failed: {r.stderr.strip()}")
    start, total, got = r.stdout.split()
    if int(got) != size:
        sys.exit(f"bench-libtorrent: curl got {got} bytes of {size}")
    recv = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return {
        "rate": size / (float(total) - float(start)) / 1e6,
        "cpu": recv / (size / GiB),
        "seed_cpu": (s1 - s0) / (size / GiB),
        "enc": "HTTP",
    }


def nginx_master(pid: int) -> int:
    from p2pmodel.testing.site import children

    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            argv0 = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if b"nginx" in argv0:
            return p
        todo += children(p)
    sys.exit("bench-libtorrent: nginx did not start")


def write_torrents(work: Path, blob: Path, size: int, modes: Sequence[str]) -> str:
    """The blob's torrent per mode (keyed for a throwaway office key) and, for `ssl`, each
    side's certificate: files in the private work directory, nothing on a command line."""
    from p2pmodel.adapters.hashing import hash_blob
    from p2pmodel.adapters.tls import OfficeTls
    from p2pmodel.core.digests import hex_part
    from p2pmodel.core.officekey import OfficeKey
    from p2pmodel.core.torrents import TorrentSecret, info_bytes, keyed, piece_size

    digest, pieces = hash_blob(blob, "sha256", size, piece_size(size))
    blob.rename(blob.with_name(hex_part(digest)))
    info = info_bytes(digest, size, pieces)
    key = OfficeKey(secrets.token_bytes(32))
    tls = {role: OfficeTls(key, role) for role in ("seed", "leech")}
    for mode in modes:
        ca = None
        if mode == "ssl":
            ca = tls["seed"].ca_pem
        elif mode.startswith("tag-"):
            ca = TorrentSecret(key.torrent_secret())
        (work / f"{mode}.torrent").write_bytes(b"d4:info" + keyed(info, ca) + b"e")
    for role, t in tls.items():
        d = work / f"tls-{role}"
        d.mkdir(mode=0o700)
        for name, pem in (
            ("cert.pem", t.cert_pem),
            ("key.pem", t.key_pem),
            ("dh.pem", t.dh_params),
        ):
            (d / name).write_bytes(pem)
    return hex_part(digest)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--link",
        choices=["lo", "veth"],
        default="lo",
        help="lo: one namespace's loopback (default); veth: two workstations on a "
        "bridge, with curl from nginx on the same link as the reference",
    )
    ap.add_argument(
        "--key-mode", default="open", help=f"comma list of {', '.join(MODES)} (default: open)"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="a libtorrent setting on top of the agent's (repeatable), to compare",
    )
    ap.add_argument("--role", choices=["seed", "leech"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--ip", help=argparse.SUPPRESS)
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--peer-port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = args.size_mib * MiB
    for item in args.set:
        name, _, value = item.partition("=")
        EXTRA[name] = value.lower() == "true" if value.lower() in ("true", "false") else int(value)
    if args.role == "seed":
        return seeder(args, size)
    if args.role == "leech":
        return leecher(args, size)
    modes = [m.strip() for m in args.key_mode.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        ap.error(f"--key-mode is a comma list of {', '.join(MODES)}")
    if not 1 <= args.size_mib <= 1024:
        ap.error("--size-mib must be 1..1024 (the data limit of this machine)")

    import libtorrent as lt

    from p2pmodel.adapters.hashing import digest_file
    from p2pmodel.core.torrents import piece_size

    if os.geteuid() != 0:
        sys.exit("bench-libtorrent: needs root (it makes network namespaces)")
    started, load0 = datetime.datetime.now(datetime.UTC), os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-libtorrent-", dir="/var/tmp"))
    nginx = None
    try:
        (work / "seed").mkdir()
        blob = work / "seed" / "blob"
        with open(blob, "wb") as f:
            for left in range(size, 0, -64 * MiB):
                f.write(os.urandom(min(left, 64 * MiB)))
        name = write_torrents(work, blob, size, modes)
        blob = work / "seed" / name
        me = [sys.executable, "-W", "ignore", __file__, "--size-mib", str(args.size_mib)]
        me += [f"--set={item}" for item in args.set]
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in ["curl", *modes]}
        with Place(args.link) as place:
            if args.link == "veth":
                tmp = work / "nginx"
                tmp.mkdir()
                conf = tmp / "nginx.conf"
                conf.write_text(
                    NGINX_CONF.format(
                        tmp=tmp, ip=place.seed_ip, port=NGINX_PORT, root=work / "seed"
                    )
                )
                nginx = place.office.popen(
                    place.office.workstations[0],
                    ["nginx", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                url = f"http://{place.seed_ip}:{NGINX_PORT}/{name}"
                head = place.cmd("leech", ["curl", "-sSfI", "--noproxy", "*", url])
                for _ in range(100):
                    if subprocess.run(head, capture_output=True, check=False).returncode == 0:
                        break
                    time.sleep(0.1)
                master = nginx_master(nginx.pid)
            for i in range(args.repeat):
                if args.link == "veth":
                    runs["curl"].append(run_curl(place, url, work / "curl.out", master, size))
                for mode in modes:
                    runs[mode].append(run_pair(place, me, work, mode))
                line = ", ".join(f"{m} {r[-1]['rate']:.0f}" for m, r in runs.items() if r)
                print(f"bench-libtorrent: [{i + 1}/{args.repeat}] MB/s: {line}", file=sys.stderr)
        best = []
        for _ in range(2):
            c0 = _cpu()
            digest_file(blob, "sha256", size)
            best.append((_cpu() - c0) / (size / GiB))
    finally:
        if nginx is not None:
            nginx.terminate()
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    med = statistics.median
    cmd = " ".join(["scripts/bench-libtorrent", *sys.argv[1:]])
    print(
        f"`{cmd}` ({started:%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs; load average "
        f"{load0[0]:.2f} before, {load1[0]:.2f} after)\n\n"
        f"libtorrent {lt.__version__}, {args.size_mib} MiB blob, "
        f"{'veth + bridge, unshaped' if args.link == 'veth' else 'loopback'}, piece "
        f"{piece_size(size) // 1024} KiB, median of {args.repeat}"
        f"{', with ' + ', '.join(args.set) if args.set else ''}; MB = 10^6 bytes\n"
    )
    curl = med(r["rate"] for r in runs["curl"]) if runs["curl"] else None
    print(
        "| mode | on the wire | transfer MB/s | / curl | receiver CPU s per GiB "
        "| sender CPU s per GiB |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for mode, rs in runs.items():
        if not rs:
            continue
        rate = med(r["rate"] for r in rs)
        ratio = f"{rate / curl:.2f}" if curl else ""
        enc = "/".join(sorted({r["enc"] for r in rs}))
        label = "curl from nginx" if mode == "curl" else mode
        print(
            f"| {label} | {enc} | {rate:.0f} | {ratio} | {med(r['cpu'] for r in rs):.2f} "
            f"| {med(r['seed_cpu'] for r in rs):.2f} |"
        )
    if runs.get("open"):
        leech = med(r["cpu"] for r in runs["open"])
        print(
            f"\nsha256 of the blob, CPU s per GiB (warm cache, best of 2): {min(best):.2f}; "
            f"floor for an agent's LAN get (open downloader + sha256): "
            f"{leech + min(best):.2f}"
        )


if __name__ == "__main__":
    main()
