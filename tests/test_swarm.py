"""The libtorrent adapter: deterministic blob torrents seeded and fetched between two agents.

These run libtorrent in-process, so they are marked ``lan``: scripts/test runs them inside a
loopback-only network namespace, and they skip anywhere else.
"""

from __future__ import annotations

import _ssl
import hashlib
import os
import socket
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from p2pmodel.adapters.hashing import hash_blob
from p2pmodel.adapters.store import Store
from p2pmodel.adapters.swarm import TORRENT_PEERS, Swarm
from p2pmodel.adapters.tls import OfficeTls
from p2pmodel.core.officekey import OfficeKey
from p2pmodel.core.torrents import (
    TorrentSecret,
    info_bytes,
    info_hash,
    keyed,
    piece_size,
    with_cert,
)

pytestmark = pytest.mark.lan
MiB = 1024 * 1024


def put_verified(store: Store, data: bytes) -> tuple[str, bytes]:
    """Store ``data`` as a verified blob with its torrent info, as the downloader does."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = store.put_blob_bytes(digest, data)
    got, pieces = hash_blob(path, "sha256", len(data), piece_size(len(data)))
    assert got == digest
    info = info_bytes(digest, len(data), pieces)
    store.save_torrent_info(digest, info)
    return digest, info


class Arrived:
    """An ``on_progress`` callback that sums the bytes and wakes whoever waits for a total."""

    def __init__(self) -> None:
        self.total = 0
        self._changed = trio.Event()

    def __call__(self, nbytes: int) -> None:
        self.total += nbytes
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, total: int) -> None:
        while self.total < total:
            await self._changed.wait()


async def alerts_until(
    monkeypatch: pytest.MonkeyPatch, swarms: tuple[Swarm, ...], cond: Callable[[], bool]
) -> None:
    """Re-check ``cond`` each time one of ``swarms`` pumps libtorrent alerts (a peer that
    connects or hangs up posts one), instead of on a timer."""
    changed = trio.Event()
    for s in swarms:

        def dispatch(alerts: list[Any], _real: Callable[[list[Any]], None] = s._dispatch) -> None:
            nonlocal changed
            _real(alerts)
            changed.set()
            changed = trio.Event()

        monkeypatch.setattr(s, "_dispatch", dispatch)
    while not cond():
        await changed.wait()


async def seeder_and_fetcher(
    tmp_path: Path, nursery: trio.Nursery, data: bytes
) -> tuple[str, bytes, tuple[Swarm, Swarm]]:
    """Two running swarms on loopback: the first's store holds ``data`` verified."""
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    digest, info = put_verified(a, data)
    sa, sb = Swarm(a, ["127.0.0.1"]), Swarm(b, ["127.0.0.1"])
    for s in (sa, sb):
        await nursery.start(s.run)
    return digest, info, (sa, sb)


async def test_a_blob_seeded_by_one_agent_is_fetched_by_another(tmp_path: Path, nursery):
    """A fetched blob arrives exact, lands read-only in the store and is seeded on at once."""
    data = os.urandom(6 * MiB + 123)
    a, b, c = (Store(tmp_path / n) for n in "abc")
    digest, info = put_verified(a, data)
    sa, sb, sc = (Swarm(s, ["127.0.0.1"]) for s in (a, b, c))
    for s in (sa, sb, sc):
        await nursery.start(s.run)
    assert sa.seed(digest, len(data))
    with trio.fail_after(30):
        got = await sb.fetch(digest, len(data), info, [("127.0.0.1", sa.port)])
    assert got.ok, got.why
    path = b.blob_path(digest)
    assert path.read_bytes() == data
    assert not stat.S_IMODE(path.stat().st_mode) & 0o222
    assert sb.seeding(digest)
    assert b.torrent_info(digest) == info
    # The second agent now serves a third one on its own.
    sa.close()
    with trio.fail_after(30):
        again = await sc.fetch(digest, len(data), info, [("127.0.0.1", sb.port)])
    assert again.ok, again.why
    assert c.blob_path(digest).read_bytes() == data
    # Each torrent connects to at most TORRENT_PEERS peers, whatever the size of the office.
    for swarm in (sb, sc):
        assert swarm._by_digest[digest].handle.max_connections() == TORRENT_PEERS == 50


async def test_restart_seeds_without_rehashing(tmp_path: Path, nursery):
    """Seeding a stored blob uses its saved torrent info, so no piece is re-hashed."""
    data = os.urandom(2 * MiB)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    digest, info = put_verified(a, data)
    sa = Swarm(a, ["127.0.0.1"])
    await nursery.start(sa.run)
    assert sa.seed(digest, len(data))
    st = sa._by_digest[digest].handle.status()
    assert st.is_seeding
    assert st.state != st.checking_files
    sb = Swarm(b, ["127.0.0.1"])
    await nursery.start(sb.run)
    with trio.fail_after(30):
        assert (await sb.fetch(digest, len(data), info, [("127.0.0.1", sa.port)])).ok


async def test_wrong_torrent_info_from_a_peer_is_refused(tmp_path: Path, nursery):
    """Torrent info that does not have our rule's shape for the blob is refused outright."""
    data = os.urandom(MiB)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    digest, info = put_verified(a, data)
    sb = Swarm(b, ["127.0.0.1"])
    await nursery.start(sb.run)
    bad = info.replace(b"i1e", b"i0e")  # not private
    got = await sb.fetch(digest, len(data), bad, [])
    assert not got.ok and "shape" in got.why


async def test_bytes_that_fail_the_digest_never_enter_the_store(tmp_path: Path, nursery):
    """A peer seeding other bytes under a well-shaped torrent is caught by the digest check."""
    good = os.urandom(MiB)
    evil = os.urandom(MiB)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    # The liar stores other bytes under the honest digest's name, with matching piece hashes.
    path = a.blob_path(digest)
    path.parent.mkdir(parents=True)
    path.write_bytes(evil)
    _, pieces = hash_blob(path, "sha256", MiB, piece_size(MiB))
    lie = info_bytes(digest, MiB, pieces)
    a.save_torrent_info(digest, lie)
    sa, sb = Swarm(a, ["127.0.0.1"]), Swarm(b, ["127.0.0.1"])
    for s in (sa, sb):
        await nursery.start(s.run)
    assert sa.seed(digest, MiB)
    with trio.fail_after(30):
        got = await sb.fetch(digest, MiB, lie, [("127.0.0.1", sa.port)])
    assert not got.ok and "digest" in got.why
    assert not b.blob_path(digest).exists()
    assert not sb.seeding(digest)


async def test_a_silent_swarm_gives_up_after_the_stall_timeout(
    tmp_path: Path, nursery, autojump_clock
):
    """With no peer sending anything, fetch returns instead of waiting forever."""
    data = os.urandom(MiB)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    digest, info = put_verified(a, data)
    sb = Swarm(b, ["127.0.0.1"])
    await nursery.start(sb.run)
    got = await sb.fetch(digest, MiB, info, [], stall_timeout=5)
    assert not got.ok and "no progress" in got.why


async def test_pieces_from_a_seeder_that_vanished_are_kept_for_the_mirrors(tmp_path: Path, nursery):
    """When peers stop mid-blob, the pieces that passed their hash become resume state, so
    the mirror fetcher only fetches the rest."""
    data = os.urandom(8 * MiB)
    digest, info, (sa, sb) = await seeder_and_fetcher(tmp_path, nursery, data)
    b = sb.store
    sa.session.apply_settings(
        {"upload_rate_limit": 2 * MiB, "ignore_limits_on_local_network": False}
    )
    assert sa.seed(digest, len(data))
    arrived = Arrived()

    async def pull_the_plug() -> None:
        await arrived.wait_for(2 * MiB)  # a few pieces are in
        sa.close()

    nursery.start_soon(pull_the_plug)
    with trio.fail_after(30):
        got = await sb.fetch(
            digest, len(data), info, [("127.0.0.1", sa.port)], stall_timeout=2, on_progress=arrived
        )
    assert not got.ok
    state = b.load_state(digest, len(data))
    assert 0 < state.done.total() < len(data)
    part = b.partial_path(digest).read_bytes()
    for start, stop in state.done:
        assert part[start:stop] == data[start:stop]


async def test_the_upload_limit_holds_loopback_peers_and_lifts_live(tmp_path: Path, nursery):
    """A seeder limited to 64 KiB/s is still serving a 4 MiB blob once 256 KiB arrived (LAN
    and loopback peers are limited too); meanwhile the blob counts as being uploaded, so it is
    not unseeded; lifting the limit lets the same transfer finish at once."""
    data = os.urandom(4 * MiB)
    digest, info, (sa, sb) = await seeder_and_fetcher(tmp_path, nursery, data)
    b = sb.store
    assert sa.seed(digest, len(data))
    sa.set_upload_limit(64 * 1024)
    arrived = Arrived()
    result = []
    done = trio.Event()

    async def fetch() -> None:
        peers = [("127.0.0.1", sa.port)]
        result.append(await sb.fetch(digest, len(data), info, peers, on_progress=arrived))
        done.set()

    nursery.start_soon(fetch)
    with trio.fail_after(30):
        await arrived.wait_for(256 * 1024)
    assert not result, "the whole blob went through a 64 KiB/s limit at once"
    assert sa.uploading() == {digest}
    assert sa.unseed([digest]) == [digest] and sa.seeding(digest)
    sa.set_upload_limit(None)
    with trio.fail_after(30):  # at 64 KiB/s the rest would take ~60 s
        await done.wait()
    assert result[0].ok, result[0].why
    assert b.blob_path(digest).read_bytes() == data
    assert sa.unseed([digest]) == [] and not sa.seeding(digest)


async def test_ends_that_both_finished_a_unit_hang_up(tmp_path: Path, nursery, monkeypatch):
    """A unit's holder and a peer that finished fetching it close their connection, so unit
    torrents of a large model (hundreds) never fill libtorrent's connections_limit (they did:
    every later unit stalled)."""
    from p2pmodel.adapters.hashing import piece_hashes
    from p2pmodel.core.torrents import unit_info, unit_pieces

    size, start, stop, piece = 4 * MiB, MiB, 3 * MiB, MiB
    data = os.urandom(size)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    src = tmp_path / "src.part"
    src.write_bytes(data)
    info = unit_info(digest, size, 1, start, stop, piece, piece_hashes(src, start, stop, piece))
    span = unit_pieces(start, stop, piece)
    sa, sb = (
        Swarm(Store(tmp_path / "a"), ["127.0.0.1"]),
        Swarm(Store(tmp_path / "b"), ["127.0.0.1"]),
    )
    for s in (sa, sb):
        await nursery.start(s.run)
    sa.add_unit(digest, size, 1, span, info, src, have=True)
    dest = tmp_path / "dest.part"
    dest.write_bytes(b"\0" * size)
    sb.add_unit(digest, size, 1, span, info, dest, have=False)
    with trio.fail_after(30):
        got = await sb.fetch_unit(digest, 1, lambda: [("127.0.0.1", sa.port)])
    assert got.ok, got.why
    assert dest.read_bytes()[start:stop] == data[start:stop]
    peers = lambda s: s._units[(digest, 1)].handle.status().num_peers  # noqa: E731
    with trio.fail_after(15):
        await alerts_until(monkeypatch, (sa, sb), lambda: not (peers(sa) or peers(sb)))
    assert (peers(sa), peers(sb)) == (0, 0)


def _outsider_chain(port: int, sni: str | None) -> tuple[bool, list[bytes]]:
    """An outsider's TLS handshake with libtorrent's SSL port (it verifies nothing, shows no
    certificate): whether it completed, and the certificates libtorrent sent (PEM)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        tls = ctx.wrap_socket(sock, server_hostname=sni, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
            done = True
        except (OSError, ssl.SSLError):
            done = False
        obj: Any = tls
        chain = getattr(obj, "get_unverified_chain", None) or obj._sslobj.get_unverified_chain
        der = [c.public_bytes(_ssl.ENCODING_DER) for c in chain() or []]
        return done, [x509.load_der_x509_certificate(d).public_bytes(Encoding.PEM) for d in der]


async def test_libtorrent_shows_no_certificate_to_a_client_that_names_no_torrent(
    tmp_path: Path, nursery
):
    """With SSL torrents (``swarm_tls``), libtorrent picks a torrent's TLS context by the
    server name the client asks for (the info-hash): without one, or with another, the
    handshake fails and not a certificate is sent, so the office CA does not leak from there.
    (Named by its keyed info-hash, which only the CA gives, it sends its certificate and the
    CA.)"""
    store = Store(tmp_path / "a")
    digest, info = put_verified(store, os.urandom(MiB))
    tls = OfficeTls(OfficeKey(bytes(range(32))), "aaaaaaaa", swarm_tls=True)
    swarm = Swarm(store, ["127.0.0.1"], 0, tls)
    await nursery.start(swarm.run)
    assert swarm.seed(digest, MiB, info)
    swarm.allow({"127.0.0.1"})  # past the IP filter, to reach the TLS layer
    other = info_hash(with_cert(info, OfficeTls(OfficeKey(bytes(32)), "x").ca_pem))
    for sni in (None, "p2pmodel", os.urandom(20).hex(), other):
        assert await trio.to_thread.run_sync(_outsider_chain, swarm.port, sni) == (False, [])


# -- the office key, by default: tagged torrents over forced protocol encryption ---------------

KEY = OfficeKey(bytes(range(32)))


async def keyed_pair(
    tmp_path: Path, nursery: trio.Nursery, data: bytes
) -> tuple[str, bytes, bytes, tuple[Swarm, Swarm]]:
    """Two swarms of one office on loopback, letting each other through the IP filter; the
    first seeds ``data``. Returns the digest, the open and the keyed info."""
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    digest, info = put_verified(a, data)
    sa = Swarm(a, ["127.0.0.1"], 0, OfficeTls(KEY, "aaaaaaaa"))
    sb = Swarm(b, ["127.0.0.1"], 0, OfficeTls(KEY, "bbbbbbbb"))
    for s in (sa, sb):
        await nursery.start(s.run)
        s.allow({"127.0.0.1"})
    assert sa.seed(digest, len(data))
    return digest, info, keyed(info, TorrentSecret(KEY.torrent_secret())), (sa, sb)


async def test_two_keyed_swarms_exchange_a_tagged_blob(tmp_path: Path, nursery):
    """By default a keyed swarm seeds the blob's torrent tagged with the key's secret (no SSL
    listener, no certificate); another agent of the office fetches it, and its store keeps
    the open form of the info."""
    data = os.urandom(3 * MiB + 5)
    digest, info, tagged, (sa, sb) = await keyed_pair(tmp_path, nursery, data)
    assert not sa.ssl and sa.session.ssl_listen_port() == 0
    assert sa.info(digest) == tagged
    with trio.fail_after(30):
        got = await sb.fetch(digest, len(data), tagged, [("127.0.0.1", sa.port)])
    assert got.ok, got.why
    assert sb.store.blob_path(digest).read_bytes() == data
    assert sb.store.torrent_info(digest) == info


def _raw_client(
    info: bytes, port: int, out: Path, encryption: str, seconds: float = 6.0
) -> dict[str, int]:
    """A libtorrent session of our own (not an agent) that holds ``info`` and dials the
    swarm at ``port`` for ``seconds``, with protocol encryption ``encryption`` (``disabled``:
    a plain BitTorrent handshake; ``forced``: PE only, plaintext after it; ``enabled``:
    libtorrent's default, PE first). What it got."""
    import time

    import libtorrent as lt

    policy = getattr(lt.enc_policy, f"pe_{encryption}")
    ses = lt.session(
        {
            "listen_interfaces": "127.0.0.1:0",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_incoming_utp": False,
            "enable_outgoing_utp": False,
            "out_enc_policy": int(policy),
            "in_enc_policy": int(policy),
            "allowed_enc_level": int(lt.enc_level.pe_both),
            "min_reconnect_time": 1,
        }
    )
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(lt.bdecode(b"d4:info" + info + b"e"))
    p.save_path = str(out)
    h = ses.add_torrent(p)
    peers, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds and not h.status().is_seeding:
        h.connect_peer(("127.0.0.1", port))
        time.sleep(0.2)
        peers = max(peers, h.status().num_peers)
    st = h.status()
    return {"payload": int(st.total_payload_download), "peers": peers, "done": st.is_seeding}


async def test_a_keyed_swarm_needs_the_tagged_info_hash_and_protocol_encryption(
    tmp_path: Path, nursery
):
    """Past the IP filter, a client with the blob's open torrent (anyone holding the bytes
    can compute it) gets 0 bytes, and so does one with the tagged torrent that speaks a
    plain BitTorrent handshake; the tagged info-hash over protocol encryption gets the blob:
    the info-hash is what opens the swarm, and only the key (or a sniffed transfer of that
    very blob, docs/architecture.md) gives it."""
    data = os.urandom(2 * MiB)
    _, info, tagged, (sa, _) = await keyed_pair(tmp_path, nursery, data)
    port = sa.port

    def try_(name: str, torrent: bytes, encryption: str) -> dict[str, int]:
        out = tmp_path / name
        out.mkdir()
        return _raw_client(torrent, port, out, encryption)

    opened = await trio.to_thread.run_sync(try_, "open", info, "enabled")
    assert (opened["payload"], opened["peers"]) == (0, 0)
    plain = await trio.to_thread.run_sync(try_, "plain", tagged, "disabled")
    assert (plain["payload"], plain["peers"]) == (0, 0)
    pe = await trio.to_thread.run_sync(try_, "pe", tagged, "forced")
    assert pe["done"] and pe["payload"] == len(data)


async def test_a_tagged_info_hash_alone_does_not_give_the_info_dict(tmp_path: Path, nursery):
    """A client that knows only a tagged info-hash (a sniffed transfer shows one) and gets
    past the IP filter and the handshake still never receives the info dict (libtorrent sends
    none for private torrents), so it learns no tag and no piece hash from the swarm."""
    import time

    import libtorrent as lt

    data = os.urandom(MiB)
    _, _, tagged, (sa, _) = await keyed_pair(tmp_path, nursery, data)
    port = sa.port

    def magnet() -> tuple[bool, int]:
        ses = lt.session(
            {
                "listen_interfaces": "127.0.0.1:0",
                "enable_dht": False,
                "enable_lsd": False,
                "enable_upnp": False,
                "enable_natpmp": False,
                "enable_incoming_utp": False,
                "enable_outgoing_utp": False,
                "out_enc_policy": int(lt.enc_policy.pe_forced),
                "in_enc_policy": int(lt.enc_policy.pe_forced),
                "min_reconnect_time": 1,
            }
        )
        p = lt.add_torrent_params()
        p.info_hashes = lt.info_hash_t(lt.sha1_hash(bytes.fromhex(info_hash(tagged))))
        p.save_path = str(tmp_path / "magnet")
        h = ses.add_torrent(p)
        peers, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < 5:
            h.connect_peer(("127.0.0.1", port))
            time.sleep(0.2)
            peers = max(peers, h.status().num_peers)
        return h.status().has_metadata, peers

    has_metadata, peers = await trio.to_thread.run_sync(magnet)
    assert peers >= 1  # it did get through: the info-hash opens the handshake
    assert not has_metadata


class Sniffer:
    """Every TCP payload byte on ``lo`` (of this test's namespace), per direction, as a
    passive listener on the LAN would see it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * MiB)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.flows: dict[tuple[int, int], bytearray] = {}
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            try:
                frame, addr = self.sock.recvfrom(262144)
            except TimeoutError:
                continue
            if addr[2] == socket.PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
                continue  # each frame on lo shows twice; IPv4 only
            ip = frame[14:]
            if ip[9] != 6:
                continue
            tcp = ip[(ip[0] & 0x0F) * 4 : int.from_bytes(ip[2:4], "big")]
            sport, dport = int.from_bytes(tcp[0:2], "big"), int.from_bytes(tcp[2:4], "big")
            payload = tcp[(tcp[12] >> 4) * 4 :]
            self.flows.setdefault((sport, dport), bytearray()).extend(payload)


async def test_what_a_sniffer_of_a_keyed_transfer_sees(tmp_path: Path, nursery):
    """On the wire of a keyed transfer: never the key's torrent secret nor the tag, and the
    tagged info-hash never from the dialling side (protocol encryption hides its handshake);
    it does show once in the answering side's BitTorrent handshake, which libtorrent sends
    in clear when the payload is plaintext, and the payload itself goes in clear. That is the
    cost of the default documented in docs/architecture.md; SSL torrents (``swarm_tls``)
    hide the payload."""
    sniffer = Sniffer()
    nursery.start_soon(trio.to_thread.run_sync, sniffer.run)
    try:
        data = os.urandom(2 * MiB)
        digest, _, tagged, (sa, sb) = await keyed_pair(tmp_path, nursery, data)
        with trio.fail_after(30):
            got = await sb.fetch(digest, len(data), tagged, [("127.0.0.1", sa.port)])
        assert got.ok, got.why
        sb.close()
        sa.close()
        await trio.sleep(0.5)  # the last frames
    finally:
        sniffer.stop = True
    secret = KEY.torrent_secret()
    ih = bytes.fromhex(info_hash(tagged))
    dialling = b"".join(v for (_, dport), v in sniffer.flows.items() if dport == sa.port)
    answering = b"".join(v for (sport, _), v in sniffer.flows.items() if sport == sa.port)
    assert len(answering) > len(data)  # the capture saw the transfer
    for wire in (dialling, answering):
        assert secret not in wire and tagged[-33:-1] not in wire
    assert ih not in dialling
    assert answering.count(ih) == 1
    assert data[: 16 * 1024] in answering  # plaintext payload (a block, between headers)


async def test_a_peer_keyed_the_other_way_is_a_setting_not_a_liar(tmp_path: Path, nursery):
    """A keyed swarm handed an info dict of the office keyed the other way (an agent with
    another ``swarm_tls``) refuses it saying which setting differs, and nobody is taken for a
    liar for it."""
    from p2pmodel.services.swarm import liars

    data = os.urandom(MiB)
    digest, info = put_verified(Store(tmp_path / "a"), data)
    swarm = Swarm(Store(tmp_path / "b"), ["127.0.0.1"], 0, OfficeTls(KEY, "bbbbbbbb"))
    await nursery.start(swarm.run)
    ssl_kind = with_cert(info, OfficeTls(KEY, "cccccccc", swarm_tls=True).ca_pem)
    got = await swarm.fetch(digest, len(data), ssl_kind, [])
    assert not got.ok and "swarm_tls" in got.why and "SSL torrents" in got.why
    assert liars(got, "cccccccc", ["cccccccc"]) == []
