"""The one module that drives libtorrent: a session that seeds verified blobs and fetches
blobs from LAN peers.

Theory of operation. One ``lt.session`` listens on the agent's interfaces with DHT, LSD, UPnP,
NAT-PMP and uTP off: peers are only ever added by ``connect_peer`` with addresses that
discovery found. Every verified blob is a torrent whose info dictionary is derived from the blob
(``torrents``), so all agents agree on its info-hash; seeding a blob after a restart reads the
stored info and trusts the read-only file (``seed_mode``), no re-hash. A fetched blob lands in
``partial/swarm/`` under its hex name; when libtorrent has every piece, the whole file is checked
against the upstream digest (in a thread) and only then moved into ``blobs/`` with
``move_storage``, where it keeps seeding. The alert pump wakes on ``set_alert_fd`` and turns
alerts into plain events at once (alerts die at the next ``pop_alerts``).

With an office key (``tls``) every info dict is keyed (``torrents.keyed``), so that only
the office can compute an info-hash, and the session speaks only in one of two ways:

- by default, protocol encryption (MSE/PE) forced both ways (``ENCRYPTION``). Its handshake
  proves on both ends knowledge of the info-hash (the dialling side sends only an obfuscated
  hash of it, and both derive the handshake's RC4 keys from the DH secret *and* the
  info-hash); a plain BitTorrent handshake is refused. Info dicts end with a tag derived from
  the key (``TorrentSecret``), so knowing the key is what lets a peer in. The payload is
  plaintext (RC4 cost as much as TLS), and the answering side's BitTorrent handshake with it,
  so a sniffer of a transfer learns that torrent's info-hash and sees its bytes;
- with ``swarm_tls`` (``tls.swarm_tls``), SSL torrents (the CA's PEM in the info dict), and
  the session listens only for SSL connections: a peer must show a certificate the office CA
  signed, and each torrent is handed this agent's own when libtorrent asks
  (``torrent_need_cert_alert``). It costs ~5x the CPU per byte (docs/benchmarks.md).

On top of either, the IP filter lets through only the addresses of peers with a live
authenticated session (``allow``), so a host the office does not know is reset before any
handshake, and a peer whose session ended (found dead) is cut off at once. The store keeps
torrent infos in their open form, so a new key needs no re-hash.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libtorrent as lt
import trio

from ..core.digests import algorithm, hex_part
from ..core.openfiles import SWARM_MOST
from ..core.rangeset import RangeSet
from ..core.torrents import (
    Keying,
    SwarmFetch,
    TorrentSecret,
    expected_shape,
    info_hash,
    keyed,
    keying_of,
    unkeyed,
)
from .hashing import digest_file
from .store import PartialState, Store

if TYPE_CHECKING:
    from .tls import OfficeTls

# Peers one torrent connects to at most: each unit reaches an office of hundreds through a
# few holders and the partial copies of the peers fetching it, not a connection to everyone.
TORRENT_PEERS = 50


def _torrent_info(info: bytes) -> Any:
    return lt.torrent_info(lt.bdecode(b"d4:info" + info + b"e"))  # type: ignore[arg-type]


# An office keyed by its torrent secret: protocol encryption (MSE/PE) forced both ways. Its
# handshake needs the info-hash at both ends: the dialling side sends only an obfuscated hash
# of it, and derives the RC4 keys of the rest of the handshake (its BitTorrent handshake
# included) from it. The stream after the handshake stays plaintext: RC4 for all of it ran
# at the rate of SSL torrents, ~0.2x curl against ~0.5x plaintext (docs/benchmarks.md).
# The answering side's BitTorrent handshake then goes in clear, info-hash included: a LAN
# sniffer of a transfer learns that torrent's info-hash (never the key, nor another's).
ENCRYPTION = {
    "out_enc_policy": int(lt.enc_policy.pe_forced),
    "in_enc_policy": int(lt.enc_policy.pe_forced),
    "allowed_enc_level": int(lt.enc_level.pe_plaintext),
}


def session_settings(
    listen: Sequence[str],
    port: int,
    ssl: bool = False,
    connections: int = SWARM_MOST,
    encrypted: bool = False,
) -> dict[str, Any]:
    # SSL torrents: listen for SSL connections only ("s"): nothing else is served.
    # ``encrypted``: protocol encryption forced (ENCRYPTION).
    interfaces = ",".join(f"{ip}:{port}{'s' if ssl else ''}" for ip in listen)
    return {
        "listen_interfaces": interfaces,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        "allow_multiple_connections_per_ip": True,
        "user_agent": "p2pmodel",
        "peer_fingerprint": b"-PM0100-",
        "alert_mask": (
            lt.alert_category.error
            | lt.alert_category.status
            | lt.alert_category.storage
            | lt.alert_category.peer
        ),
        # LAN transfers: bigger buffers than libtorrent's internet-minded defaults.
        "send_buffer_watermark": 4 * 1024 * 1024,
        "send_buffer_low_watermark": 1024 * 1024,
        "tick_interval": 100,  # ms: a connect_peer'ed peer is dialled at the next tick
        "connections_limit": connections,  # what the open-files budget gives it
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
        # Two ends that both have what they want of a torrent hang up (a unit torrent's
        # holder and a peer that finished it): a model of 8 GiB is 512 unit torrents, and
        # connections kept between finished ends filled connections_limit, after which no
        # new unit could connect (measured: every unit fetch stalled, the gets never ended).
        "close_redundant_connections": True,
        # A failed dial (a peer still adding the torrent, a handshake in a busy moment) is
        # retried at our next connect_peer: libtorrent's default waits 60 s x the failures.
        "min_reconnect_time": 1,
        "peer_connect_timeout": 5,
        # Every peer is an office colleague: no tit-for-tat. libtorrent's default of 8
        # unchoked peers, re-chosen every 15 s, left newly announced units waiting.
        "unchoke_slots_limit": -1,
        # [limits] lan_upload counts what peers receive, not TCP/IP headers.
        "rate_limit_ip_overhead": False,
        **(ENCRYPTION if encrypted else {}),
    }


def _one_peer_class(session: Any) -> None:
    """Every peer in the global peer class, so ``upload_rate_limit`` applies to all of them.
    libtorrent's default filter puts private and loopback addresses (the whole office) in its
    "local" class, which no session-wide rate limit touches (measured: an 8 MB/s limit left
    loopback peers at full speed; with this filter, 2 MB/s held)."""
    everyone = lt.ip_filter()
    flags = 1 << session.global_peer_class_id
    everyone.add_rule("0.0.0.0", "255.255.255.255", flags)
    everyone.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", flags)
    session.set_peer_class_filter(everyone)


def _bytes_by_host(handle: Any) -> dict[str, int]:
    """Payload bytes each connected peer sent us on this torrent, by its address."""
    out: dict[str, int] = {}
    try:
        infos = handle.get_peer_info()
    except RuntimeError:
        return out
    for p in infos:
        host = str(p.ip[0])
        out[host] = out.get(host, 0) + int(p.total_download)
    return out


@dataclass
class _Torrent:
    digest: str
    size: int
    handle: Any
    seeding: bool
    finished: trio.Event = field(default_factory=trio.Event)
    moved: trio.Event = field(default_factory=trio.Event)
    flushed: trio.Event = field(default_factory=trio.Event)
    hash_failures: int = 0
    error: str = ""
    unit: int = -1  # >= 0: the unit torrent of that unit of a shared blob
    span: range = range(0)  # a unit torrent's pieces
    idle_since: float = 0.0
    path: Path | None = None

    def info(self) -> bytes:
        """The bencoded info dictionary (libtorrent's copy: a unit torrent's is not kept
        twice; for a 10 GB file each is ~50-100 KB, hundreds of them while it is shared)."""
        try:
            return bytes(self.handle.torrent_file().info_section())
        except RuntimeError:
            return b""


class Swarm:
    def __init__(
        self,
        store: Store,
        listen: Sequence[str],
        port: int = 0,
        tls: OfficeTls | None = None,
        connections: int = SWARM_MOST,  # libtorrent's connections_limit (core.openfiles)
    ) -> None:
        self.store = store
        self.listen = list(listen)
        self.tls = tls
        self.ssl = tls is not None and tls.swarm_tls  # SSL torrents, else protocol encryption
        self.ca: Keying = None  # what keys every info dict (the name sharing knows it by)
        if tls is not None:
            self.ca = tls.ca_pem if self.ssl else TorrentSecret(tls.key.torrent_secret())
        settings = session_settings(
            self.listen,
            port,
            ssl=self.ssl,
            connections=connections,
            encrypted=tls is not None and not self.ssl,
        )
        self.session = lt.session(settings)  # type: ignore[call-overload]
        _one_peer_class(self.session)
        if tls is not None:
            self.allow(set())
        self._by_hash: dict[str, _Torrent] = {}
        self._by_digest: dict[str, _Torrent] = {}
        self._units: dict[tuple[str, int], _Torrent] = {}
        self.swarm_dir = store.partial / "swarm"
        self._uploaded_before = 0
        self._port = port
        self._hash_failures_before = 0

    def listen_on(self, listen: Sequence[str]) -> None:
        """Listen on these addresses from now on, on the same port (peers know it)."""
        if list(listen) != self.listen:
            self.listen = list(listen)
            port = self.port
            ssl = "s" if self.ssl else ""
            self.session.apply_settings(
                {"listen_interfaces": ",".join(f"{ip}:{port}{ssl}" for ip in self.listen)}
            )

    @property
    def port(self) -> int:
        # Remembered: while the listen sockets are being re-opened on other addresses
        # (listen_on), the session says 0, and peers must keep being told the same port.
        # With SSL torrents only the SSL listener is open.
        port = int(self.session.ssl_listen_port() if self.ssl else self.session.listen_port())
        if port:
            self._port = port
        return self._port

    def allow(self, hosts: set[str]) -> None:
        """With a key: only these addresses may connect or be connected to (every other one
        is reset, also mid-transfer). An open office filters nothing."""
        if self.tls is None:
            return
        f = lt.ip_filter()
        f.add_rule("0.0.0.0", "255.255.255.255", 1)  # 1: blocked
        f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)
        for host in sorted(hosts):
            f.add_rule(host, host, 0)
        self.session.set_ip_filter(f)

    # -- the alert pump ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self.session.set_alert_fd(w)
        try:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(r)
                with contextlib.suppress(BlockingIOError):
                    while os.read(r, 4096):
                        pass
                self._dispatch(self.session.pop_alerts())
        finally:
            self.session.set_alert_fd(-1)
            os.close(r)
            os.close(w)

    def _add(self, params: Any) -> Any:
        """Add a torrent; with SSL torrents, give it our certificate at once. Waiting for
        libtorrent's ``torrent_need_cert_alert`` left a window in which a peer's SSL handshake
        failed, and libtorrent then waits before dialling that peer again."""
        handle = self.session.add_torrent(params)
        self._certify(handle)
        return handle

    def _certify(self, handle: Any) -> None:
        if self.tls is not None and self.ssl:
            with contextlib.suppress(RuntimeError):
                handle.set_ssl_certificate_buffer(
                    self.tls.cert_pem.decode(),
                    self.tls.key_pem.decode(),
                    self.tls.dh_params.decode(),
                )

    def _dispatch(self, alerts: list[Any]) -> None:
        for a in alerts:
            if isinstance(a, lt.torrent_need_cert_alert):
                self._certify(a.handle)
                continue
            t = self._torrent_of(a)
            if t is None:
                continue
            if isinstance(a, lt.torrent_finished_alert):
                t.finished.set()
            elif isinstance(a, lt.storage_moved_alert | lt.storage_moved_failed_alert):
                if isinstance(a, lt.storage_moved_failed_alert):
                    t.error = a.message()
                t.moved.set()
            elif isinstance(a, lt.cache_flushed_alert):
                t.flushed.set()
            elif isinstance(a, lt.hash_failed_alert):
                t.hash_failures += 1
            elif isinstance(a, lt.torrent_error_alert | lt.file_error_alert):
                t.error = a.message()
                t.finished.set()

    def _torrent_of(self, alert: Any) -> _Torrent | None:
        handle = getattr(alert, "handle", None)
        if handle is None or not handle.is_valid():
            return None
        return self._by_hash.get(str(handle.info_hashes().v1))

    # -- seeding -------------------------------------------------------------------------------

    def seeding(self, digest: str) -> bool:
        t = self._by_digest.get(digest)
        return t is not None and t.seeding

    def holds_partial(self, digest: str) -> bool:
        t = self._by_digest.get(digest)
        return t is not None and not t.seeding

    def info(self, digest: str) -> bytes | None:
        """The info dictionary of a blob we seed or fetch (for peers' metadata queries)."""
        if digest in self._by_digest:
            info = self.store.torrent_info(digest)
            return keyed(info, self.ca) if info is not None else None
        return None

    def seed(self, digest: str, size: int, info: bytes | None = None) -> bool:
        """Seed a verified blob of the store (no re-hash) with its saved torrent ``info``
        (read from the store when not given). False if its torrent is unknown."""
        if digest in self._by_digest or size == 0:
            return digest in self._by_digest
        if info is None:
            info = self.store.torrent_info(digest)
        if info is None:
            return False
        info = keyed(info, self.ca)
        params = lt.add_torrent_params()
        params.ti = _torrent_info(info)
        params.max_connections = TORRENT_PEERS
        params.save_path = str(self.store.blob_path(digest).parent)
        params.flags |= lt.torrent_flags.seed_mode
        # We computed these piece hashes from the verified bytes ourselves: without this,
        # seed mode re-hashes each piece on its first request (~1 CPU-s per GiB).
        params.verified_pieces = [True] * params.ti.num_pieces()
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        handle = self._add(params)
        self._track(digest, size, handle, info, seeding=True)
        return True

    def _track(
        self, digest: str, size: int, handle: Any, info: bytes, *, seeding: bool
    ) -> _Torrent:
        t = _Torrent(digest, size, handle, seeding)
        self._by_hash[info_hash(info)] = t
        self._by_digest[digest] = t
        return t

    def _uploaded(self, t: _Torrent) -> int:
        try:
            return int(t.handle.status().total_payload_upload)
        except RuntimeError:
            return 0

    def _forget(self, t: _Torrent, *, delete_files: bool) -> None:
        self._uploaded_before += self._uploaded(t)
        self._hash_failures_before += t.hash_failures
        self._by_digest.pop(t.digest, None)
        self._by_hash = {h: x for h, x in self._by_hash.items() if x is not t}
        flags = lt.session.delete_files if delete_files else 0
        with contextlib.suppress(RuntimeError):
            self.session.remove_torrent(t.handle, flags)

    def connect(self, digest: str, peers: Sequence[tuple[str, int]]) -> None:
        t = self._by_digest.get(digest)
        if t is None:
            return
        for peer in peers:
            with contextlib.suppress(RuntimeError):
                t.handle.connect_peer(peer)

    # -- fetching from peers -------------------------------------------------------------------

    async def fetch(
        self,
        digest: str,
        size: int,
        info: bytes,
        peers: Sequence[tuple[str, int]],
        *,
        stall_timeout: float = 10.0,
        on_progress: Callable[[int], None] | None = None,
    ) -> SwarmFetch:
        """Fetch a blob from peers, check its digest and move it into the store, seeding.

        Gives up (``ok=False``) when the info has the wrong shape, nothing arrives for
        ``stall_timeout`` seconds, or the bytes fail the digest; the caller then uses mirrors.
        """
        if not expected_shape(info, digest, size, self.ca):
            theirs, ours = keying_of(info), keying_of(keyed(b"de", self.ca))
            if self.tls is not None and theirs != ours:  # a setting, not a lie: no "shape"
                why = f"peer's torrents are {theirs}, ours {ours}: set swarm_tls alike everywhere"
                return SwarmFetch(False, why)
            return SwarmFetch(False, "peer sent torrent info of the wrong shape")
        if digest in self._by_digest:
            return SwarmFetch(False, "already in the swarm")
        self.swarm_dir.mkdir(parents=True, exist_ok=True)
        params = lt.add_torrent_params()
        params.ti = _torrent_info(info)
        params.max_connections = TORRENT_PEERS
        params.save_path = str(self.swarm_dir)
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        handle = self._add(params)
        t = self._track(digest, size, handle, info, seeding=False)
        self.connect(digest, peers)
        try:
            why, got = await self._follow(t, stall_timeout=stall_timeout, on_progress=on_progress)
            if why:
                bad = t.hash_failures
                await self._salvage(t)
                return SwarmFetch(False, why, got, bad)
            path = self.swarm_dir / hex_part(digest)
            await self._flush(t)
            actual = await trio.to_thread.run_sync(digest_file, path, algorithm(digest), size)
            if actual != digest:
                self._forget(t, delete_files=True)
                return SwarmFetch(False, "bytes from peers failed the digest", got, t.hash_failures)
            # Verified: into the store, where it keeps seeding.
            await trio.to_thread.run_sync(
                self.store.save_torrent_info, digest, unkeyed(info, self.ca)
            )
            dest = self.store.blob_path(digest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            handle.move_storage(str(dest.parent), lt.move_flags_t.dont_replace)
            with trio.fail_after(60):
                await t.moved.wait()
            if t.error or not dest.exists():
                self._forget(t, delete_files=True)
                return SwarmFetch(False, f"could not move into the store: {t.error}", got)
            os.chmod(dest, 0o444)
            t.seeding = True
            return SwarmFetch(True, "", got)
        except BaseException:
            if not t.seeding:  # cancelled (shutdown, Ctrl-C): keep what passed its hash
                with trio.CancelScope(shield=True):
                    await self._salvage(t)
            raise

    async def _salvage(self, t: _Torrent) -> None:
        """Peers stopped before the end: keep the pieces that passed their hash as resume
        state of the mirror fetcher, so nothing received is fetched again."""
        try:
            have = list(t.handle.status(lt.status_flags_t.query_pieces).pieces)
            piece = t.handle.torrent_file().piece_length()
        except RuntimeError:
            have, piece = [], 0
        self._forget(t, delete_files=False)
        src = self.swarm_dir / hex_part(t.digest)
        done = RangeSet(
            (i * piece, min((i + 1) * piece, t.size)) for i, ok in enumerate(have) if ok
        )
        if not done or not src.exists():
            with contextlib.suppress(OSError):
                src.unlink()
            return
        part = self.store.partial_path(t.digest)

        def move() -> None:
            lock = self.store.lock_partial(t.digest)
            if lock is None:  # a mirror download of it runs: it has its own partial file
                src.unlink(missing_ok=True)
                return
            try:
                os.replace(src, part)
                self.store.save_state(t.digest, t.size, PartialState(done, {}))
            finally:
                os.close(lock)

        await trio.to_thread.run_sync(move)

    # -- unit torrents (sharing: a unit of a blob nobody has whole yet) --------------------

    def unit_info(self, digest: str, index: int) -> bytes | None:
        """The info of a unit torrent we seed (None: we do not hold that unit)."""
        t = self._units.get((digest, index))
        return t.info() or None if t is not None and t.seeding else None

    def add_unit(
        self,
        digest: str,
        size: int,
        index: int,
        span: range,
        info: bytes,
        path: Path,
        *,
        have: bool,
    ) -> None:
        """Add the torrent of one unit over the blob's file ``path`` (the partial file, or the
        stored blob), wanting only the unit's pieces. ``have``: we hold them (fetched from a
        mirror and hashed by us: trusted, no re-check); otherwise they come from peers."""
        if (digest, index) in self._units:
            return
        params = lt.add_torrent_params()
        params.ti = _torrent_info(info)
        params.max_connections = TORRENT_PEERS
        params.save_path = str(path.parent)
        if path.name != hex_part(digest):
            params.renamed_files = {0: path.name}
        n = params.ti.num_pieces()
        params.piece_priorities = [1 if i in span else 0 for i in range(n)]
        # Resume data that says what we have: libtorrent then skips hashing the whole file.
        params.have_pieces = [have and i in span for i in range(n)]
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        handle = self._add(params)
        t = _Torrent(digest, size, handle, seeding=have, unit=index, span=span)
        t.path = path
        if have:
            t.finished.set()
        self._by_hash[info_hash(info)] = t
        self._units[(digest, index)] = t

    async def fetch_unit(
        self,
        digest: str,
        index: int,
        peers: Callable[[], Sequence[tuple[str, int]]],
        *,
        stall_timeout: float = 10.0,
        on_progress: Callable[[int], None] | None = None,
    ) -> SwarmFetch:
        """Fetch a unit torrent's pieces from ``peers()`` (asked again every few seconds:
        holders come and go). Returns once the pieces are hash-checked and on disk."""
        t = self._units.get((digest, index))
        if t is None:
            return SwarmFetch(False, "no such unit torrent")
        started = trio.current_time()
        why, got = await self._follow(
            t, stall_timeout=stall_timeout, on_progress=on_progress, peers=peers
        )
        by_host = _bytes_by_host(t.handle)
        seconds = trio.current_time() - started
        if why:
            return SwarmFetch(False, why, got, t.hash_failures, by_host, seconds)
        await self._flush(t)  # our hash of the whole blob reads the file: written out first
        t.seeding = True
        return SwarmFetch(True, "", got, 0, by_host, seconds)

    async def _follow(
        self,
        t: _Torrent,
        *,
        stall_timeout: float,
        on_progress: Callable[[int], None] | None,
        peers: Callable[[], Sequence[tuple[str, int]]] | None = None,
    ) -> tuple[str, int]:
        """Wait until the torrent has every wanted piece, hash-checked, reporting the bytes as
        they arrive and (with ``peers``) dialling those every 2 s. Returns why it failed ("":
        it did not) and the payload bytes received."""
        got, last_change, last_dial = 0, trio.current_time(), -math.inf

        def received() -> int:
            nonlocal got, last_change
            st = t.handle.status()
            wanted = int(st.total_wanted)
            done = min(int(st.total_wanted_done), wanted)
            if done > got:
                if on_progress is not None:
                    on_progress(done - got)
                got, last_change = done, trio.current_time()
            # Only libtorrent's own "finished" ends it: while a torrent is still being added
            # (checking its resume data) it may want 0 bytes, which read as done.
            return 0 if st.is_finished else max(1, wanted - done)

        try:
            while not t.finished.is_set():
                if peers is not None and trio.current_time() - last_dial >= 2.0:
                    last_dial = trio.current_time()
                    for peer in peers():
                        with contextlib.suppress(RuntimeError):
                            t.handle.connect_peer(peer)
                with trio.move_on_after(0.25):
                    await t.finished.wait()
                if received() == 0:
                    break
                if trio.current_time() - last_change > stall_timeout:
                    return f"no progress from peers for {stall_timeout:.0f} s", got
            with trio.move_on_after(5):
                await t.finished.wait()  # written out, not only hashed
            received()
        except RuntimeError:
            return "torrent removed", got
        return t.error, got

    async def _flush(self, t: _Torrent) -> None:
        """Have libtorrent write out what it holds (asynchronous: wait for it to say so)."""
        t.flushed = trio.Event()
        t.handle.flush_cache()
        with trio.move_on_after(30):
            await t.flushed.wait()

    def rehome_units(self, digest: str) -> None:
        """The blob was verified and moved into the store: its finished unit torrents go on
        serving from there (peers may still be fetching units); unfinished ones end."""
        dest = self.store.blob_path(digest)
        for (d, index), t in list(self._units.items()):
            if d != digest or t.path == dest:
                continue
            info = t.info()
            self._forget_unit(t)
            if t.seeding and info:
                self.add_unit(d, t.size, index, t.span, info, dest, have=True)

    def drop_unit(self, digest: str, index: int) -> None:
        t = self._units.get((digest, index))
        if t is not None:
            self._forget_unit(t)

    def drop_units(self, digest: str) -> None:
        for (d, _), t in list(self._units.items()):
            if d == digest:
                self._forget_unit(t)

    def prune_units(self, now: float, keep: set[str], idle: float = 60.0) -> float | None:
        """Unit torrents with no peer for ``idle`` seconds end, but for blobs in ``keep``
        (a get still wants them: peers may come for their units). A stored blob is then
        served by its whole-blob torrent; a partial one waits for the next get. Returns when
        the next unit torrent may turn idle long enough (None: there is none)."""
        for t in list(self._units.values()):
            try:
                busy = t.handle.status().num_peers > 0
            except RuntimeError:
                busy = False
            if busy or not t.idle_since or t.digest in keep:
                t.idle_since = now
            elif now >= t.idle_since + idle:  # the sum the deadline below is: no spin
                self._forget_unit(t)
        return min((t.idle_since + idle for t in self._units.values()), default=None)

    def _forget_unit(self, t: _Torrent) -> None:
        self._uploaded_before += self._uploaded(t)
        self._hash_failures_before += t.hash_failures
        self._units.pop((t.digest, t.unit), None)
        self._by_hash = {h: x for h, x in self._by_hash.items() if x is not t}
        with contextlib.suppress(RuntimeError):
            self.session.remove_torrent(t.handle)
        t.error = t.error or "removed"
        t.finished.set()

    # -- limits and the store over time ---------------------------------------------------------

    def set_upload_limit(self, rate: float | None) -> None:
        """What this agent serves to peers, in payload bytes per second (None: unlimited).
        Applies at once to running transfers."""
        self.session.apply_settings({"upload_rate_limit": 0 if rate is None else max(1, int(rate))})

    def uploading(self) -> set[str]:
        """Digests of blobs a peer that lacks them is connected for (whole blob or unit
        torrents): a peer fetching them from us, so they must stay on disk. A peer that is a
        seed too (it has them all) does not count."""
        busy = set()
        for t in [*self._by_digest.values(), *self._units.values()]:
            with contextlib.suppress(RuntimeError):
                st = t.handle.status()
                if st.num_peers > st.num_seeds:
                    busy.add(t.digest)
        return busy

    def unseed(self, digests: Sequence[str]) -> list[str]:
        """Stop seeding these blobs before they leave the store; returns the ones a peer is
        connected for now (they stay seeded, and on disk)."""
        busy = self.uploading()
        for digest in digests:
            if digest in busy:
                continue
            t = self._by_digest.get(digest)
            if t is not None and t.seeding:
                self._forget(t, delete_files=False)
            for (d, _), u in list(self._units.items()):
                if d == digest:
                    self._forget_unit(u)
        return [d for d in digests if d in busy]

    def statistics(self) -> dict[str, Any]:
        seeding = [t for t in self._by_digest.values() if t.seeding]
        # Torrents come and go (unit torrents are pruned): what the gone ones sent is kept.
        uploaded = self._uploaded_before + sum(
            self._uploaded(t) for t in [*self._by_digest.values(), *self._units.values()]
        )
        return {
            "port": self.port,
            "seeding": len(seeding),
            "fetching": len(self._by_digest) - len(seeding),
            "units": len(self._units),
            "uploaded": uploaded,
            "hash_failures": self._hash_failures_before
            + sum(t.hash_failures for t in [*self._by_digest.values(), *self._units.values()]),
        }

    def close(self) -> None:
        for t in [*self._by_digest.values(), *self._units.values()]:
            with contextlib.suppress(RuntimeError):
                self.session.remove_torrent(t.handle)
        self._by_digest.clear()
        self._units.clear()
        self._by_hash.clear()
