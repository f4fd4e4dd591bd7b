"""The office key (pure): its text form, its fingerprint and what is derived from it.

An office key is 32 random bytes shared by every agent of one office. Its text form is
``p2pk1-`` followed by 56 base32 letters (the 32 bytes and a 3-byte checksum, so a typo is
caught instead of silently making another office). Everything else comes out of it by HKDF
(SHA-256, RFC 5869) with a label per use, so no derived value tells anything about another
or about the key:

- ``fingerprint``: 16 hex digits, published in the mDNS TXT record so that agents of other
  offices on the same LAN are ignored before any connection is made;
- ``ca_seed``: the Ed25519 private key of the office CA. The same key on every agent gives
  byte-identical CA certificates (``adapters.tls``), which sign each agent's own certificate
  for mutual TLS on the peer link and, with ``swarm_tls``, for libtorrent's SSL torrents,
  whose info dicts then carry the CA (so info-hashes stay the same on every agent);
- ``torrent_secret``: the key of the tag every info dict of the office carries by default
  (``core.torrents.keyed``), so that only key holders can compute an info-hash, which is
  what protocol encryption then needs to open a connection;
- ``rendezvous``: the info-hash the office's agents announce on a tracker (``core.tracker``).

The key itself never leaves this object but through ``text`` (for ``p2pmodel key new`` only):
its ``repr`` shows the fingerprint, and errors about a bad key never quote it. A file that
holds it and that others can read gets a warning (``exposed_key_warning``, from its mode).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import shlex

from .errors import UserError

PREFIX = "p2pk1-"
KEY_BYTES = 32
_CHECK = 3
_SALT = b"p2pmodel office key v1"


def hkdf(key: bytes, info: bytes, length: int = 32, salt: bytes = _SALT) -> bytes:
    """HKDF-SHA256 (RFC 5869): ``length`` bytes for the use named by ``info``."""
    prk = hmac.new(salt, key, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _checksum(raw: bytes) -> bytes:
    return hashlib.sha256(b"p2pmodel key checksum" + raw).digest()[:_CHECK]


def format_key(raw: bytes) -> str:
    """The text form of a key made of ``raw`` (32 random bytes)."""
    if len(raw) != KEY_BYTES:
        raise ValueError("an office key is 32 bytes")
    return PREFIX + base64.b32encode(raw + _checksum(raw)).decode().lower()


class OfficeKey:
    """One office's key. Compare, hash and show it by fingerprint only."""

    __slots__ = ("_raw", "fingerprint")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise ValueError("an office key is 32 bytes")
        self._raw = raw
        self.fingerprint = hkdf(raw, b"fingerprint", 8).hex()

    @classmethod
    def parse(cls, text: str, where: str = "the office key") -> OfficeKey:
        """A key from its text form; ``UserError`` naming ``where`` (never the text) if bad."""
        body = text.strip().lower()
        hint = "make one with 'p2pmodel key new'"
        if not body.startswith(PREFIX):
            raise UserError(f"{where} is not a p2pmodel office key ({hint})")
        try:
            data = base64.b32decode(body[len(PREFIX) :].upper())
        except ValueError:
            data = b""
        if len(data) != KEY_BYTES + _CHECK:
            raise UserError(f"{where} is not a p2pmodel office key ({hint})")
        raw, check = data[:KEY_BYTES], data[KEY_BYTES:]
        if not hmac.compare_digest(check, _checksum(raw)):
            raise UserError(f"{where} has a typo: its checksum does not match")
        return cls(raw)

    @property
    def text(self) -> str:
        """The key's text form (only ``key new`` prints it; nothing else should)."""
        return format_key(self._raw)

    def ca_seed(self) -> bytes:
        """The 32-byte Ed25519 private key of the office CA."""
        return hkdf(self._raw, b"ca ed25519", 32)

    def torrent_secret(self) -> bytes:
        """The 32-byte key that tags every info dict of the office (``core.torrents``)."""
        return hkdf(self._raw, b"torrent tag", 32)

    def rendezvous(self) -> bytes:
        """The 20-byte info-hash the office's agents meet under on a tracker."""
        return hkdf(self._raw, b"tracker rendezvous", 20)

    def __repr__(self) -> str:
        return f"OfficeKey({self.fingerprint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OfficeKey) and hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("an office key is not pickled")


def exposed_key_warning(path: str, mode: int) -> str | None:
    """The warning for a file holding the key whose ``mode`` (``st_mode``) lets others than
    its owner read it, or None. The text names the file, never the key."""
    group, other = bool(mode & 0o040), bool(mode & 0o004)
    if not (group or other):
        return None
    who = " and ".join(w for w, can in (("its group", group), ("other users", other)) if can)
    return (
        f"{path} holds the office key and {who} can read it (mode {mode & 0o777:o}): "
        f"chmod 600 {shlex.quote(path)}"
    )
