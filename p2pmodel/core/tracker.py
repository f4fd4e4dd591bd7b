"""A BitTorrent tracker as the office's directory (pure: URLs, bencoded answers, timing).

Theory of operation. An office whose subnets mDNS does not cross may already run a tracker
(Debian's ``opentracker``). Every agent announces one *rendezvous* info-hash with its peer-link
port and says hello to every address the tracker gives back; a hello proves an agent as usual,
so the tracker is a source of hints, never of trust. The rendezvous hash comes out of the office
key by HKDF with a label of its own (``rendezvous``): the tracker, or anyone reading its
whitelist, learns neither the key nor any other value derived from it (fingerprint, CA). An open
office (no key) uses ``OPEN_OFFICE``, a public constant. The tracker never sees a model's name,
a manifest or a blob's info-hash: only this hash, the agent's address and port, and a random
peer id made at each start.

A tracker asks its clients back only every ~15-30 minutes (opentracker: ``interval`` ~1,900 s).
A newcomer does not wait for that: it announces at once and says hello to those already there,
who so learn of it too. ``Schedule`` keeps each tracker's next announce: at once when it is
configured or learned, when the agent's addresses change, after a success at the tracker's own
interval (clamped to ``MIN_EVERY``..``MAX_EVERY``), after a failure sooner and sooner apart
(``RETRY_FIRST`` doubling up to ``RETRY_MAX``). Time is an argument.

Which trackers an agent uses: those of its own config; with none configured, those peers told
it of (peer exchange), so configuring one workstation is enough. A configured list always wins
over a learned one.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_from_bytes, urlsplit

from .errors import ProtocolError
from .officekey import OfficeKey

OPEN_OFFICE = hashlib.sha1(b"p2pmodel open office rendezvous v1").digest()
MAX_TRACKERS = 4  # a peer's list, and the learned list, are cut to this
MAX_URL = 512
MAX_ANSWER = 256 * 1024  # bytes of an announce answer read at most
NUMWANT = 200
MIN_EVERY = 60.0
MAX_EVERY = 1800.0
RETRY_FIRST = 5.0
RETRY_MAX = 300.0


class TrackerError(ProtocolError):
    """A tracker's answer could not be used (unreachable, refused, not bencoded)."""


def rendezvous(key: OfficeKey | None) -> bytes:
    """The office's rendezvous info-hash (20 bytes)."""
    if key is None:
        return OPEN_OFFICE
    return key.rendezvous()


def whitelist(key: OfficeKey | None) -> list[str]:
    """The info-hashes (40 hex digits) an office's tracker must allow."""
    return [rendezvous(key).hex()]


def check_url(text: str) -> str | None:
    """Why ``text`` is not a tracker announce URL we use (None: it is)."""
    if not isinstance(text, str) or len(text) > MAX_URL:
        return f"not an http(s) URL of at most {MAX_URL} characters"
    if any(ord(c) < 33 or ord(c) > 126 for c in text):
        return "a URL has no spaces or control characters"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL with a host"
    if parts.username is not None or parts.password is not None:
        return "a tracker URL carries no user name or password"
    if parts.fragment:
        return "a tracker URL has no #fragment"
    if port == 0:
        return "port 0"
    return None


def announce_url(
    url: str,
    info_hash: bytes,
    peer_id: bytes,
    port: int,
    *,
    event: str | None = None,
    numwant: int = NUMWANT,
) -> str:
    """The announce request (HTTP GET) for ``url``: compact answers, nothing transferred."""
    query = [
        f"info_hash={quote_from_bytes(info_hash, safe='')}",
        f"peer_id={quote_from_bytes(peer_id, safe='')}",
        f"port={port}",
        "uploaded=0",
        "downloaded=0",
        "left=0",
        "compact=1",
        f"numwant={numwant}",
    ]
    if event is not None:
        query.append(f"event={event}")
    return url + ("&" if "?" in url else "?") + "&".join(query)


def bdecode(data: bytes) -> Any:
    """A bencoded value (ints, bytes, lists, dicts with bytes keys); ``TrackerError`` if
    ``data`` is not exactly one well-formed value."""
    value, end = _bdecode(data, 0, 0)
    if end != len(data):
        raise TrackerError("bencoded answer has trailing bytes")
    return value


def _bdecode(data: bytes, i: int, depth: int) -> tuple[Any, int]:
    if depth > 32:
        raise TrackerError("bencoded answer nests too deep")
    if i >= len(data):
        raise TrackerError("bencoded answer ends early")
    c = data[i : i + 1]
    if c == b"i":
        end = data.find(b"e", i)
        text = data[i + 1 : end]
        if end < 0 or not text or not text.lstrip(b"-").isdigit():
            raise TrackerError("bad bencoded integer")
        return int(text), end + 1
    if c in (b"l", b"d"):
        i += 1
        items: list[Any] = []
        while data[i : i + 1] != b"e":
            item, i = _bdecode(data, i, depth + 1)
            items.append(item)
        if c == b"l":
            return items, i + 1
        if len(items) % 2:
            raise TrackerError("bencoded dict with a key and no value")
        keys = items[::2]
        if not all(isinstance(k, bytes) for k in keys):
            raise TrackerError("bencoded dict key is not a string")
        return dict(zip(keys, items[1::2], strict=True)), i + 1
    colon = data.find(b":", i)
    size = data[i:colon]
    if colon < 0 or not size.isdigit():
        raise TrackerError("bad bencoded value")
    start = colon + 1
    if start + int(size) > len(data):
        raise TrackerError("bencoded string ends early")
    return data[start : start + int(size)], start + int(size)


@dataclass(frozen=True)
class Announced:
    """What a tracker answered: when to come back and who is there (IP, port)."""

    interval: float
    peers: tuple[tuple[str, int], ...]


def parse_announce(body: bytes) -> Announced:
    """A tracker's announce answer; ``TrackerError`` saying why it is of no use."""
    if len(body) > MAX_ANSWER:
        raise TrackerError(f"answer over {MAX_ANSWER} bytes")
    doc = bdecode(body)
    if not isinstance(doc, dict):
        raise TrackerError("answer is not a bencoded dict")
    failure = doc.get(b"failure reason")
    if failure is not None:
        reason = failure.decode("utf-8", "replace") if isinstance(failure, bytes) else "?"
        raise TrackerError(f"tracker refused: {_one_line(reason)}")
    interval = doc.get(b"interval", int(MAX_EVERY))
    if not isinstance(interval, int) or interval < 0:
        raise TrackerError("answer has a bad interval")
    peers: list[tuple[str, int]] = []
    peers += _compact(doc.get(b"peers", b""), 4)
    peers += _compact(doc.get(b"peers6", b""), 16)
    return Announced(float(interval), tuple(dict.fromkeys(peers))[:NUMWANT])


def _compact(value: Any, size: int) -> list[tuple[str, int]]:
    if isinstance(value, list):  # the non-compact form: dicts with "ip" and "port"
        out = []
        for p in value:
            if not isinstance(p, dict):
                raise TrackerError("a peer is not a dict")
            ip, port = p.get(b"ip"), p.get(b"port")
            if not isinstance(ip, bytes) or not isinstance(port, int):
                raise TrackerError("a peer has no ip and port")
            try:
                addr = ipaddress.ip_address(ip.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                continue  # a host name: not ours to resolve
            if 0 < port < 65536:
                out.append((str(addr), port))
        return out
    if not isinstance(value, bytes) or len(value) % (size + 2):
        raise TrackerError("compact peers of a bad length")
    out = []
    for k in range(0, len(value), size + 2):
        ip = ipaddress.ip_address(value[k : k + size])
        port = int.from_bytes(value[k + size : k + size + 2], "big")
        if port:
            out.append((str(ip), port))
    return out


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line[:200]


def effective(configured: Iterable[str], learned: Iterable[str]) -> tuple[str, ...]:
    """The trackers to use: the configured ones, else those learned from peers."""
    mine = tuple(dict.fromkeys(configured))
    return mine if mine else tuple(dict.fromkeys(learned))[:MAX_TRACKERS]


@dataclass
class _Due:
    at: float
    failures: int = 0
    announced: bool = False  # one announce succeeded since the agent started


class Schedule:
    """When to announce to each tracker (see the module)."""

    def __init__(self) -> None:
        self._urls: dict[str, _Due] = {}

    def set_urls(self, urls: Iterable[str], now: float) -> None:
        """Use these trackers from now on: a new one is due at once, a dropped one is not."""
        new = {u: self._urls.get(u) or _Due(now) for u in dict.fromkeys(urls)}
        self._urls = new

    def urls(self) -> list[str]:
        return list(self._urls)

    def moved(self, now: float) -> None:
        """The agent's addresses changed: announce again at once."""
        for due in self._urls.values():
            due.at = min(due.at, now)
            due.failures = 0

    def due(self, now: float) -> list[str]:
        """The trackers to announce to now; each is then not due again until reported."""
        out = [u for u, d in self._urls.items() if now >= d.at]
        for u in out:
            self._urls[u].at = math.inf
        return out

    def succeeded(self, url: str, now: float, interval: float) -> None:
        due = self._urls.get(url)
        if due is not None:
            due.at = now + min(max(interval, MIN_EVERY), MAX_EVERY)
            due.failures = 0
            due.announced = True

    def failed(self, url: str, now: float) -> float:
        """The announce failed: when it is tried again (returned)."""
        due = self._urls.get(url)
        if due is None:
            return math.inf
        due.at = now + min(RETRY_FIRST * 2**due.failures, RETRY_MAX)
        due.failures += 1
        return due.at

    def next_deadline(self) -> float | None:
        times = [d.at for d in self._urls.values() if d.at != math.inf]
        return min(times, default=None)

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        return [
            {
                "url": u,
                "announced": d.announced,
                "failures": d.failures,
                "next_in": None if d.at == math.inf else round(max(0.0, d.at - now), 1),
            }
            for u, d in self._urls.items()
        ]
