"""Peer RPC messages and framing (pure: bytes in, typed messages out).

Theory of operation. A connection carries frames: a 4-byte big-endian length, then one msgpack
array ``[kind, request_id, body]``. ``FrameDecoder`` buffers received bytes and yields complete
frames, refusing any frame over ``MAX_FRAME`` before buffering it. ``decode`` turns a frame into
one of the message dataclasses below, checking every field's type at the edge; anything else is
a ``PeerProtocolError`` (the peer's fault: drop it). Requests carry a positive id that the answer
repeats, so one connection can carry several requests at once.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import msgpack

from .errors import ProtocolError
from .peers import MAX_ADDRS, MAX_GOSSIP
from .pex import MAX_ENTRIES, Entry
from .tracker import MAX_TRACKERS, check_url

# 2: sharing (claims, units); 3: finer units at the tail of a blob, and blob torrents
# with their units' pieces (other info-hashes); 4: ``suspect`` (pieces you sent failed);
# 5: ``crossing`` (one agent of a subnet brings a unit in from behind a router);
# 6: ``peers`` (peer exchange: the agents and trackers I know); 7: ``gone`` on pings and
# pongs (deaths gossiped, SWIM-style), the unit torrent's info on ``done``
PROTOCOL_VERSION = 7
MAX_FRAME = 8 * 1024 * 1024
MAX_DIGESTS = 10_000
_HEADER = struct.Struct(">I")
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|gitsha1:[0-9a-f]{40})\Z")
_AGENT_ID = re.compile(r"[0-9a-f]{8,64}\Z")


class PeerProtocolError(ProtocolError):
    """A peer sent something that breaks the protocol: drop the connection."""


@dataclass(frozen=True)
class Message:
    kind: ClassVar[str] = ""


@dataclass(frozen=True)
class Hello(Message):
    """First message each way: who I am and where my torrent port listens."""

    kind: ClassVar[str] = "hello"
    agent: str
    proto: int
    torrent_port: int
    rpc_port: int


@dataclass(frozen=True)
class HaveQuery(Message):
    """Which of these digests do you hold?"""

    kind: ClassVar[str] = "have?"
    digests: tuple[str, ...]


@dataclass(frozen=True)
class Have(Message):
    """Answer to ``HaveQuery``: complete (verified) and partial (torrent known) digests."""

    kind: ClassVar[str] = "have"
    complete: tuple[str, ...] = ()
    partial: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetadataQuery(Message):
    """Send me the torrent info dictionary of this digest."""

    kind: ClassVar[str] = "meta?"
    digest: str


@dataclass(frozen=True)
class Metadata(Message):
    """The bencoded info dictionary (``b""`` when unknown). Checked against the info-hash
    the receiver derives, and the blob itself against its digest, so it needs no trust."""

    kind: ClassVar[str] = "meta"
    digest: str
    info: bytes = b""


@dataclass(frozen=True)
class ResolveQuery(Message):
    kind: ClassVar[str] = "resolve?"
    ref: str


@dataclass(frozen=True)
class Resolved(Message):
    """A canonical manifest (``b""``: unknown). Believed only as the trust rules allow."""

    kind: ClassVar[str] = "resolved"
    ref: str
    manifest: bytes = b""


@dataclass(frozen=True)
class Ping(Message):
    """Are you there? ``gone``: agents I found dead (a doubt for you: ping them yourself)."""

    kind: ClassVar[str] = "ping"
    gone: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pong(Message):
    kind: ClassVar[str] = "pong"
    gone: tuple[str, ...] = ()


# -- sharing: leases on units of blobs nobody in the office holds yet ---------


@dataclass(frozen=True)
class Claim(Message):
    """I fetch bytes [start, stop) of this blob from a mirror; my lease lapses in ``ttl_ms``
    (relative: peers' clocks differ). Sent again to renew."""

    kind: ClassVar[str] = "claim"
    digest: str
    index: int
    start: int
    stop: int
    ttl_ms: int


@dataclass(frozen=True)
class Release(Message):
    """I gave up my lease on this unit."""

    kind: ClassVar[str] = "release"
    digest: str
    index: int


@dataclass(frozen=True)
class UnitDone(Message):
    """I hold this unit and seed its unit torrent, whose info dictionary this is (``b""``:
    ask ``UnitQuery``); shape-checked by the receiver like ``UnitInfo``'s."""

    kind: ClassVar[str] = "done"
    digest: str
    index: int
    start: int
    stop: int
    info: bytes = b""


@dataclass(frozen=True)
class Crossing(Message):
    """I bring this unit into our subnet from holders behind a router: take it from me when I
    announce it. A lease like a claim's, lapsing in ``ttl_ms``; sent again to renew."""

    kind: ClassVar[str] = "crossing"
    digest: str
    index: int
    start: int
    stop: int
    ttl_ms: int


@dataclass(frozen=True)
class Ack(Message):
    kind: ClassVar[str] = "ack"


@dataclass(frozen=True)
class UnitQuery(Message):
    kind: ClassVar[str] = "unit?"
    digest: str
    index: int


@dataclass(frozen=True)
class UnitInfo(Message):
    """The unit torrent's info dictionary (``b""``: not held); shape-checked by the receiver."""

    kind: ClassVar[str] = "unit"
    digest: str
    index: int
    info: bytes = b""


@dataclass(frozen=True)
class OfficeQuery(Message):
    """What are you fetching or holding of these blobs? (asked when a get starts)"""

    kind: ClassVar[str] = "office?"
    digests: tuple[str, ...]


Units = tuple[tuple[str, int, int, int, int], ...]  # (digest, index, start, stop, ttl_ms)


@dataclass(frozen=True)
class OfficeState(Message):
    kind: ClassVar[str] = "office"
    claims: Units = ()
    done: Units = ()
    complete: tuple[str, ...] = ()
    crossing: Units = ()  # units I bring into my subnet from behind a router now
    wanted: tuple[str, ...] = ()  # of the blobs asked, those I am fetching too


@dataclass(frozen=True)
class Suspect(Message):
    """Pieces of this blob that you served me failed their hash: check your copy. The receiver
    believes nothing: it re-hashes its own copy (at most now and then per blob)."""

    kind: ClassVar[str] = "suspect"
    digest: str


@dataclass(frozen=True)
class KnownPeers(Message):
    """The agents I know alive (agent, addresses a hello proved, ms since I heard from it) and
    the trackers I use: hints for you to say hello to, never to believe (``core.pex``)."""

    kind: ClassVar[str] = "peers"
    peers: tuple[Entry, ...] = ()
    trackers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Error(Message):
    kind: ClassVar[str] = "error"
    message: str = ""


MESSAGES: dict[str, type[Message]] = {
    m.kind: m
    for m in (
        Hello,
        HaveQuery,
        Have,
        MetadataQuery,
        Metadata,
        ResolveQuery,
        Resolved,
        Ping,
        Pong,
        Claim,
        Release,
        UnitDone,
        Crossing,
        Ack,
        UnitQuery,
        UnitInfo,
        OfficeQuery,
        OfficeState,
        Suspect,
        KnownPeers,
        Error,
    )
}
_MAX_INT = 2**62


def _check_field(cls: type[Message], name: str, value: Any) -> Any:
    where = f"{cls.kind}.{name}"
    if name in ("digests", "complete", "partial", "wanted"):
        if not isinstance(value, list) or len(value) > MAX_DIGESTS:
            raise PeerProtocolError(f"{where}: not a list of at most {MAX_DIGESTS} digests")
        for d in value:
            if not isinstance(d, str) or not _DIGEST.match(d):
                raise PeerProtocolError(f"{where}: bad digest")
        return tuple(value)
    if name == "digest":
        if not isinstance(value, str) or not _DIGEST.match(value):
            raise PeerProtocolError(f"{where}: bad digest")
        return value
    if name == "agent":
        if not isinstance(value, str) or not _AGENT_ID.match(value):
            raise PeerProtocolError(f"{where}: bad agent id")
        return value
    if name == "gone":
        if not isinstance(value, list) or len(value) > MAX_GOSSIP:
            raise PeerProtocolError(f"{where}: not a list of at most {MAX_GOSSIP} agents")
        return tuple(_check_field(cls, "agent", a) for a in value)
    if name in ("proto", "torrent_port", "rpc_port"):
        if type(value) is not int or not 0 <= value < 65536:
            raise PeerProtocolError(f"{where}: not a small integer")
        return value
    if name in ("index", "start", "stop", "ttl_ms"):
        if type(value) is not int or not 0 <= value < _MAX_INT:
            raise PeerProtocolError(f"{where}: not a non-negative integer")
        return value
    if name in ("claims", "done", "crossing"):
        if not isinstance(value, list) or len(value) > MAX_DIGESTS:
            raise PeerProtocolError(f"{where}: not a list of at most {MAX_DIGESTS} units")
        units = []
        for u in value:
            if not (isinstance(u, list) and len(u) == 5):
                raise PeerProtocolError(f"{where}: a unit is [digest, index, start, stop, ttl]")
            digest = _check_field(cls, "digest", u[0])
            index, start, stop, ttl = (_check_field(cls, "index", x) for x in u[1:])
            if start >= stop:
                raise PeerProtocolError(f"{where}: empty unit")
            units.append((digest, index, start, stop, ttl))
        return tuple(units)
    if name == "peers":
        if not isinstance(value, list) or len(value) > MAX_ENTRIES:
            raise PeerProtocolError(f"{where}: not a list of at most {MAX_ENTRIES} agents")
        return tuple(_entry(cls, where, e) for e in value)
    if name == "trackers":
        if not isinstance(value, list) or len(value) > MAX_TRACKERS:
            raise PeerProtocolError(f"{where}: not a list of at most {MAX_TRACKERS} URLs")
        if any(not isinstance(u, str) or check_url(u) is not None for u in value):
            raise PeerProtocolError(f"{where}: not a tracker URL")
        return tuple(value)
    if name in ("info", "manifest"):
        if not isinstance(value, bytes):
            raise PeerProtocolError(f"{where}: not bytes")
        return value
    if name in ("ref", "message"):
        if not isinstance(value, str) or len(value) > 4096:
            raise PeerProtocolError(f"{where}: not a short string")
        return value
    raise AssertionError(f"no rule for field {where}")  # pragma: no cover - our bug


def _entry(cls: type[Message], where: str, e: Any) -> Entry:
    if not (isinstance(e, list) and len(e) == 3 and isinstance(e[1], list)):
        raise PeerProtocolError(f"{where}: an agent is [agent, [[host, port], ...], age_ms]")
    agent = _check_field(cls, "agent", e[0])
    if len(e[1]) > MAX_ADDRS:
        raise PeerProtocolError(f"{where}: over {MAX_ADDRS} addresses")
    addrs = []
    for a in e[1]:
        if not (isinstance(a, list) and len(a) == 2 and isinstance(a[0], str)):
            raise PeerProtocolError(f"{where}: an address is [host, port]")
        try:
            host = str(ipaddress.ip_address(a[0]))
        except ValueError:
            raise PeerProtocolError(f"{where}: not an IP address") from None
        port = _check_field(cls, "rpc_port", a[1])
        if port == 0:
            raise PeerProtocolError(f"{where}: port 0")
        addrs.append((host, port))
    age = _check_field(cls, "index", e[2])
    return (agent, tuple(addrs), age)


def encode(msg: Message, request_id: int) -> bytes:
    """One frame (header included) carrying ``msg``."""
    body = {f.name: _plain(getattr(msg, f.name)) for f in fields(msg)}
    payload = msgpack.packb([msg.kind, request_id, body], use_bin_type=True)
    if len(payload) > MAX_FRAME:
        raise ValueError(f"{msg.kind} frame of {len(payload)} bytes is over the limit")
    return _HEADER.pack(len(payload)) + payload


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def decode(payload: bytes) -> tuple[Message, int]:
    """A frame's payload -> (message, request id); ``PeerProtocolError`` if malformed."""
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_FRAME,
            max_bin_len=MAX_FRAME,
            max_array_len=MAX_DIGESTS,
            max_map_len=32,
            max_ext_len=0,
        )
    except (ValueError, msgpack.UnpackException) as e:
        raise PeerProtocolError(f"undecodable frame: {e}") from None
    if not (isinstance(obj, list) and len(obj) == 3):
        raise PeerProtocolError("frame is not [kind, id, body]")
    kind, request_id, body = obj
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise PeerProtocolError(f"unknown message kind {kind!r}")
    if type(request_id) is not int or not 0 <= request_id < 2**32:
        raise PeerProtocolError("bad request id")
    if not isinstance(body, dict):
        raise PeerProtocolError(f"{kind}: body is not a map")
    names = {f.name for f in fields(cls)}
    if set(body) - names:
        raise PeerProtocolError(f"{kind}: unexpected fields {sorted(set(body) - names)}")
    kwargs = {}
    for f in fields(cls):
        if f.name in body:
            kwargs[f.name] = _check_field(cls, f.name, body[f.name])
        elif f.default is MISSING:
            raise PeerProtocolError(f"{kind}: missing field {f.name!r}")
    return cls(**kwargs), request_id


@dataclass
class FrameDecoder:
    """Feed received bytes; take complete frame payloads out. Pure and incremental."""

    max_frame: int = MAX_FRAME
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buf)
            if length > self.max_frame:
                raise PeerProtocolError(f"frame of {length} bytes is over the limit")
            if len(self._buf) < _HEADER.size + length:
                break
            out.append(bytes(self._buf[_HEADER.size : _HEADER.size + length]))
            del self._buf[: _HEADER.size + length]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
