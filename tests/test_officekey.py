"""The office key: its text form and derivations, the config keys that carry it, the office's
certificates, keyed torrents, and the peer link that gives outsiders a closed connection."""

from __future__ import annotations

import _ssl
import os
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from p2pmodel.adapters.discovery import Discovery
from p2pmodel.adapters.home import load_config, write_private
from p2pmodel.adapters.tls import OfficeTls, office_ca, peer_agent
from p2pmodel.core.config import parse_config
from p2pmodel.core.errors import UserError
from p2pmodel.core.officekey import OfficeKey, exposed_key_warning, format_key
from p2pmodel.core.peers import PeerAddr
from p2pmodel.core.torrents import (
    TorrentSecret,
    expected_shape,
    info_bytes,
    info_hash,
    keyed,
    keying_of,
    unit_info,
    unit_shape,
    unkeyed,
    with_cert,
    without_cert,
)
from p2pmodel.core.wire import PROTOCOL_VERSION, FrameDecoder, Hello, Ping, Pong, encode
from p2pmodel.services.link import PeerLink, RpcError
from p2pmodel.testing.fakes import MemoryNetwork

TEXT = format_key(bytes(range(32)))
KEY = OfficeKey.parse(TEXT)
OTHER = OfficeKey(bytes(32))


# -- the key -------------------------------------------------------------------------------------


def test_key_text_round_trips_and_shows_only_its_fingerprint() -> None:
    """A key parses back from its text (case and spaces aside); repr and str show the
    fingerprint, which shares nothing with the text."""
    assert OfficeKey.parse(f"  {TEXT.upper()}\n") == KEY
    assert KEY.text == TEXT
    assert repr(KEY) == str(KEY) == f"OfficeKey({KEY.fingerprint})"
    assert len(KEY.fingerprint) == 16 and KEY.fingerprint not in TEXT
    assert OTHER.fingerprint != KEY.fingerprint
    assert KEY.ca_seed() != OTHER.ca_seed() and len(KEY.ca_seed()) == 32
    derived = {KEY.ca_seed(), KEY.torrent_secret(), KEY.rendezvous(), OTHER.torrent_secret()}
    assert len(derived) == 4 and len(KEY.torrent_secret()) == 32


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("hunter2", "not a p2pmodel office key"),
        ("p2pk1-" + "a" * 10, "not a p2pmodel office key"),
        ("p2pk1-" + "!" * 56, "not a p2pmodel office key"),
        (TEXT[:-1] + ("a" if TEXT[-1] != "a" else "b"), "typo"),
    ],
)
def test_a_bad_key_is_one_line_that_never_quotes_it(text: str, why: str) -> None:
    """Whatever is wrong with a key, the error says so without repeating it."""
    with pytest.raises(UserError, match=why) as e:
        OfficeKey.parse(text, "office_key")
    assert text.strip() not in str(e.value)
    assert "office_key" in str(e.value)


def test_config_takes_the_key_from_env_then_config_then_file(tmp_path: Path) -> None:
    """P2PMODEL_OFFICE_KEY wins over office_key; office_key_file is read relative to the home;
    giving both config keys, or a bad key, is a one-line error without the key."""
    other = format_key(bytes(32))
    assert parse_config({"office_key": TEXT}, {}).office_key == KEY
    assert parse_config({"office_key": TEXT}, {"P2PMODEL_OFFICE_KEY": other}).office_key == OTHER
    assert parse_config({}, {}).office_key is None
    (tmp_path / "office.key").write_text(TEXT + "\n")
    (tmp_path / "config.toml").write_text('office_key_file = "office.key"\n')
    assert load_config(tmp_path, {}).office_key == KEY
    with pytest.raises(UserError, match="not both"):
        parse_config({"office_key": TEXT, "office_key_file": "x"}, {})
    with pytest.raises(UserError, match=r"bad config .*office_key has a typo") as e:
        parse_config({"office_key": TEXT[:-2] + "zz"}, {})
    assert TEXT[:-2] not in str(e.value)
    (tmp_path / "config.toml").write_text('office_key_file = "missing.key"\n')
    with pytest.raises(UserError, match="cannot read office_key_file"):
        load_config(tmp_path, {})
    assert TEXT not in repr(parse_config({"office_key": TEXT}, {}))


@pytest.mark.parametrize(
    ("mode", "who"),
    [
        (0o100600, None),
        (0o100400, None),
        (0o100700, None),
        (0o100640, "its group"),
        (0o100604, "other users"),
        (0o100644, "its group and other users"),
        (0o100622, None),  # writable, not readable: the key cannot be read from it
    ],
)
def test_a_key_file_others_can_read_is_named_with_the_fix(mode: int, who: str | None) -> None:
    """The warning says who besides the owner can read a file holding the key and how to fix
    it; a file only its owner reads gets none."""
    warning = exposed_key_warning("/h/config.toml", mode)
    if who is None:
        assert warning is None
    else:
        assert warning is not None and who in warning and "chmod 600 /h/config.toml" in warning
        assert f"{mode & 0o777:o}" in warning


def test_loading_a_key_others_can_read_warns_once_per_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """config.toml holding office_key, or the office_key_file, readable by others: one warning
    line each when the config is loaded; none once they are 0600, none without a key."""
    config = tmp_path / "config.toml"
    config.write_text(f'office_key = "{TEXT}"\n')
    config.chmod(0o644)
    with caplog.at_level("WARNING"):
        assert load_config(tmp_path, {}).office_key == KEY
    assert [r.getMessage() for r in caplog.records] == [exposed_key_warning(str(config), 0o644)]
    assert TEXT not in caplog.text
    caplog.clear()
    (tmp_path / "office.key").write_text(TEXT + "\n")
    (tmp_path / "office.key").chmod(0o640)
    config.write_text('office_key_file = "office.key"\n')  # no key in it now
    with caplog.at_level("WARNING"):
        load_config(tmp_path, {})
    assert len(caplog.records) == 1 and str(tmp_path / "office.key") in caplog.text
    caplog.clear()
    (tmp_path / "office.key").chmod(0o600)
    config.write_text("connections = 4\n")
    with caplog.at_level("WARNING"):
        load_config(tmp_path, {})
        config.write_text('office_key_file = "office.key"\n')
        load_config(tmp_path, {})
    assert caplog.records == []


def test_a_config_written_by_the_test_office_is_private(tmp_path: Path) -> None:
    """``write_private`` (how the test office writes configs that may hold a key) makes a
    file only its owner can read, also in place of an older one others could read."""
    path = tmp_path / "config.toml"
    path.write_text("old\n")
    path.chmod(0o644)
    write_private(path, f'office_key = "{TEXT}"\n')
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == f'office_key = "{TEXT}"\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


# -- certificates and torrents ---------------------------------------------------------------------


def test_every_agent_derives_the_same_office_ca_and_its_own_certificate() -> None:
    """The CA is byte-identical for one key (and differs for another); each agent's
    certificate is fresh and names the agent."""
    a, b = OfficeTls(KEY, "aaaaaaaa"), OfficeTls(KEY, "bbbbbbbb")
    assert a.ca_pem == b.ca_pem == OfficeTls(KEY, "cccccccc").ca_pem
    assert a.ca_pem != OfficeTls(OTHER, "aaaaaaaa").ca_pem
    assert a.cert_pem != OfficeTls(KEY, "aaaaaaaa").cert_pem  # a fresh key every start
    assert office_ca(KEY)[1].subject.rfc4514_string().endswith(KEY.fingerprint)
    assert TEXT.encode() not in a.ca_pem + a.cert_pem + a.key_pem


def test_keyed_info_hashes_are_the_same_per_key_and_differ_between_keys() -> None:
    """A blob's torrent info is a function of the content and the key: agents of one office
    agree on its info-hash, another office or an open one gets another, and the open form comes
    back out of the keyed one."""
    digest, size = "sha256:" + "ab" * 32, 3 * 1024 * 1024
    info = info_bytes(digest, size, os.urandom(20 * 3))  # 1 MiB pieces
    ours = with_cert(info, OfficeTls(KEY, "aaaaaaaa").ca_pem)
    assert ours == with_cert(info, OfficeTls(KEY, "bbbbbbbb").ca_pem)
    theirs = with_cert(info, OfficeTls(OTHER, "aaaaaaaa").ca_pem)
    assert len({info_hash(info), info_hash(ours), info_hash(theirs)}) == 3
    ca = OfficeTls(KEY, "x1234567").ca_pem
    assert without_cert(ours, ca) == info
    assert expected_shape(ours, digest, size, ca) and not expected_shape(info, digest, size, ca)
    assert not expected_shape(theirs, digest, size, ca)
    with pytest.raises(ValueError):
        without_cert(theirs, ca)


def test_tagged_info_hashes_are_the_same_per_key_and_tell_nothing_of_another() -> None:
    """By default a keyed info dict ends with its own tag (an HMAC of the open dict under the
    key's torrent secret): every agent of the office derives the same info-hash, another
    office or an open one another; the tag differs per torrent; the open form comes back out
    and a dict tagged by another key, or keyed the SSL way, is refused; the secret's repr
    shows nothing of it."""
    secret, other = TorrentSecret(KEY.torrent_secret()), TorrentSecret(OTHER.torrent_secret())
    digest, size = "sha256:" + "cd" * 32, 3 * 1024 * 1024
    info = info_bytes(digest, size, os.urandom(20 * 3))
    ours = keyed(info, secret)
    assert ours == keyed(info, TorrentSecret(OfficeKey.parse(TEXT).torrent_secret()))
    assert ours.startswith(info[:-1]) and ours.endswith(b"12:x-office-tag32:" + ours[-33:])
    theirs = keyed(info, other)
    assert len({info_hash(info), info_hash(ours), info_hash(theirs)}) == 3
    assert unkeyed(ours, secret) == info
    assert expected_shape(ours, digest, size, secret)
    for wrong in (info, theirs, with_cert(info, OfficeTls(KEY, "a1234567").ca_pem)):
        assert not expected_shape(wrong, digest, size, secret)
        with pytest.raises(ValueError):
            unkeyed(wrong, secret)
    # Another blob's dict carries another tag: one seen tells nothing of the next.
    info2 = info_bytes("sha256:" + "ef" * 32, size, os.urandom(20 * 3))
    assert keyed(info2, secret)[-33:] != ours[-33:]
    assert KEY.torrent_secret().hex() not in repr(secret) and "key" not in repr(secret)
    assert (keying_of(ours), keying_of(info)) == ("tagged torrents", "open torrents")
    assert keying_of(with_cert(info, b"PEM")) == "SSL torrents (swarm_tls)"


def test_unit_torrents_are_tagged_and_their_shape_checked_under_the_tag() -> None:
    """A unit torrent keyed with the tag passes its shape check for this office only, its
    hashes included in what the tag covers."""
    secret = TorrentSecret(KEY.torrent_secret())
    digest, size, piece = "sha256:" + "12" * 32, 8 * 1024 * 1024, 1024 * 1024
    hashes = os.urandom(20 * 2)
    info = unit_info(digest, size, 1, 2 * piece, 4 * piece, piece, hashes, secret)
    assert unit_shape(info, digest, size, 1, 2 * piece, 4 * piece, piece, secret)
    other = TorrentSecret(OTHER.torrent_secret())
    assert not unit_shape(info, digest, size, 1, 2 * piece, 4 * piece, piece, other)
    assert not unit_shape(info, digest, size, 2, 2 * piece, 4 * piece, piece, secret)
    forged = info.replace(hashes, os.urandom(40))  # other hashes: the tag no longer fits
    assert not unit_shape(forged, digest, size, 1, 2 * piece, 4 * piece, piece, secret)


def test_swarm_tls_is_a_boolean_setting_off_by_default() -> None:
    """``swarm_tls`` picks SSL torrents for an office that wants its LAN payload encrypted;
    anything but a boolean is a config error."""
    assert parse_config({}, {}).swarm_tls is False
    assert parse_config({"swarm_tls": True}, {}).swarm_tls is True
    with pytest.raises(UserError, match="swarm_tls must be true or false"):
        parse_config({"swarm_tls": "yes"}, {})
    assert OfficeTls(KEY, "aaaaaaaa").swarm_tls is False


def test_mdns_carries_the_fingerprint_not_the_key() -> None:
    """The announcement's TXT record has the key's fingerprint and nothing of the key, nor
    of the torrent secret derived from it."""
    d = Discovery(
        agent="aaaaaaaa",
        interfaces=["127.0.0.1"],
        rpc_port=1,
        torrent_port=2,
        office=KEY.fingerprint,
        on_event=lambda e: None,
    )
    txt = d.service_info().text
    assert KEY.fingerprint.encode() in txt
    assert TEXT.encode() not in txt and TEXT[6:20].encode() not in txt
    secret = KEY.torrent_secret()
    assert secret not in txt and secret.hex().encode() not in txt


# -- the peer link ---------------------------------------------------------------------------------


def link(agent: str, net: MemoryNetwork, key: OfficeKey | None, served: list[object]) -> PeerLink:
    port = {"port": 0}

    async def handle(msg: object, peer: Hello) -> object:
        served.append(msg)
        return Pong()

    lnk = PeerLink(
        net.transport(agent),
        lambda: Hello(agent, PROTOCOL_VERSION, 1, port["port"]),
        handle,  # type: ignore[arg-type]
        lambda a: [PeerAddr("h", 7000)],
        connect_timeout=2,
        request_timeout=2,
        tls=OfficeTls(key, agent) if key is not None else None,
    )
    return lnk


async def listening(nursery: trio.Nursery, net: MemoryNetwork, served: list[object]) -> PeerLink:
    """Agent aaaaaaaa of the office, serving on h:7000 and logging what it served."""
    office = link("aaaaaaaa", net, KEY, served)
    await nursery.start(office.run)
    await office.listen("h", 7000)
    return office


@pytest.mark.parametrize("outsider", ["no key", "another key"])
async def test_an_outsider_gets_a_closed_connection_and_no_hello(nursery, outsider: str) -> None:
    """A peer of the office answers its own; one without the key or with another gets no
    hello and none of its requests reach a handler, and neither does the office's request
    reach the outsider."""
    net, served = MemoryNetwork(), []
    office = await listening(nursery, net, served)
    friend = link("bbbbbbbb", net, KEY, [])
    stranger = link("cccccccc", net, None if outsider == "no key" else OTHER, [])
    for lnk in (friend, stranger):
        await nursery.start(lnk.run)
    assert isinstance(await friend.request("aaaaaaaa", Ping()), Pong)
    with pytest.raises(RpcError):
        await stranger.request("aaaaaaaa", Ping())
    assert served == [Ping()]
    assert office.stats.handshake_failures >= 1

    # What a raw client that speaks the plain protocol receives: no frame at all.
    stream = await net.transport("raw").connect("h", 7000)
    await stream.send_all(encode(Hello("dddddddd", PROTOCOL_VERSION, 1, 1), 0))
    got = b""
    with trio.move_on_after(5):
        while chunk := await stream.receive_some(65536):
            got += chunk
    frames = FrameDecoder().feed(got) if len(got) >= 4 else []
    assert not frames or struct.unpack(">I", got[:4])[0] > len(got)
    assert b"hello" not in got and b"aaaaaaaa" not in got
    assert served == [Ping()]


async def test_a_hello_must_name_the_agent_its_certificate_names(nursery) -> None:
    """A keyed peer whose hello claims another agent id than its certificate is refused."""
    net, served = MemoryNetwork(), []
    office = await listening(nursery, net, served)
    liar = link("bbbbbbbb", net, KEY, [])
    liar.hello = lambda: Hello("eeeeeeee", PROTOCOL_VERSION, 1, 1)
    await nursery.start(liar.run)
    with pytest.raises(RpcError, match="refused"):
        await liar.request("aaaaaaaa", Ping())
    assert served == []
    assert office.stats.refused == 1


def test_peer_agent_reads_the_common_name() -> None:
    """The agent id of a verified certificate is its common name; none without one."""
    assert peer_agent({"subject": ((("commonName", "aaaaaaaa"),),)}) == "aaaaaaaa"
    assert peer_agent(None) is None
    assert peer_agent({"subject": ((("organizationName", "x"),),)}) is None


async def test_memory_pair_handshake_completes(nursery) -> None:
    """The office's TLS contexts complete a mutual handshake over any stream (here memory)."""
    a, b = OfficeTls(KEY, "aaaaaaaa"), OfficeTls(KEY, "bbbbbbbb")
    cs, ss = trio.testing.memory_stream_pair()
    client = trio.SSLStream(cs, a.client_context(), server_hostname="p2pmodel")
    server = trio.SSLStream(ss, b.server_context(), server_side=True)
    async with trio.open_nursery() as n:
        n.start_soon(client.do_handshake)
        n.start_soon(server.do_handshake)
    assert peer_agent(client.getpeercert()) == "bbbbbbbb"
    assert peer_agent(server.getpeercert()) == "aaaaaaaa"
    assert client.version() == "TLSv1.3"


def _chain(stream: trio.SSLStream[trio.testing.MemoryStream]) -> list[bytes]:
    """The certificates the other side sent, verified or not, as PEM (``SSLObject``'s
    ``get_unverified_chain``; before Python 3.13 only its C object has it)."""
    obj: Any = stream._ssl_object
    chain = getattr(obj, "get_unverified_chain", None) or obj._sslobj.get_unverified_chain
    der = [c.public_bytes(_ssl.ENCODING_DER) for c in chain() or []]
    return [x509.load_der_x509_certificate(d).public_bytes(Encoding.PEM) for d in der]


async def test_the_office_ca_never_travels_in_a_handshake() -> None:
    """An outsider that verifies nothing and shows no certificate receives the agent's own
    certificate, not the office CA (whose PEM keys every info-hash); between two agents of the
    office neither side sends it either."""
    server_tls = OfficeTls(KEY, "aaaaaaaa")
    outsider = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    outsider.check_hostname = False
    outsider.verify_mode = ssl.CERT_NONE
    cs, ss = trio.testing.memory_stream_pair()
    client = trio.SSLStream(cs, outsider, server_hostname="p2pmodel")
    server = trio.SSLStream(ss, server_tls.server_context(), server_side=True)

    async def refused() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await server.do_handshake()  # no certificate of the office

    async with trio.open_nursery() as n:
        n.start_soon(client.do_handshake)
        n.start_soon(refused)
    sent = _chain(client)
    assert set(sent) == {server_tls.cert_pem}  # the chain repeats it (adapters.tls)
    assert server_tls.ca_pem not in b"".join(sent)

    a, b = OfficeTls(KEY, "aaaaaaaa"), OfficeTls(KEY, "bbbbbbbb")
    cs, ss = trio.testing.memory_stream_pair()
    client = trio.SSLStream(cs, a.client_context(), server_hostname="p2pmodel")
    server = trio.SSLStream(ss, b.server_context(), server_side=True)
    async with trio.open_nursery() as n:
        n.start_soon(client.do_handshake)
        n.start_soon(server.do_handshake)
    assert a.ca_pem not in b"".join(_chain(client) + _chain(server))
    assert peer_agent(client.getpeercert()) == "bbbbbbbb"
