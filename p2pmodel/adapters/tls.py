"""The office's certificates and TLS contexts, made from the office key (``cryptography``).

Theory of operation. Every agent derives the same office CA from the key: an Ed25519 key from
``OfficeKey.ca_seed`` and a self-signed certificate with a fixed subject, serial number and
validity (Ed25519 signatures are deterministic), so the CA's PEM is byte-identical on every
agent of the office and on none outside it. At start each agent makes a fresh Ed25519 key and
a certificate for it signed by the office CA, with its agent id as common name; that key
never leaves the process and lives only as long as it does. Only the CA can sign such a
certificate, and only key holders can derive the CA's private key.

The same pair serves both places that need it:

- the peer link (``services.link``): TLS 1.3 with certificates required on both sides, each
  verified against the office CA (``client_context``/``server_context``); the peer's agent id
  is the common name of its verified certificate (``peer_agent``). Each side sends its own
  certificate only, never the CA: a server's goes out before the client proved anything, and
  the CA's PEM is what makes keyed info-hashes unguessable;
- libtorrent's SSL torrents (``adapters.swarm``), in an office that chose them
  (``swarm_tls``): the CA's PEM goes into the torrent's info dict, and the agent's certificate
  and key are handed to each torrent. Its DNS names include ``*``, which libtorrent reads as
  "valid for every torrent this CA signs for". By default the swarm keys its torrents with
  the key's torrent secret instead, and uses no certificate.

Certificates need no clock: validity runs from 2000 to 9999, so clock skew between office
machines never breaks a handshake. Python's ``ssl`` loads a certificate chain only from a
file: the agent's key goes through an in-memory file (``memfd``), never onto a disk.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from ..core.officekey import OfficeKey

_FOREVER = (
    datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC),
    datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC),
)
CA_SERIAL = 1

# RFC 7919 ffdhe2048: libtorrent wants DH parameters with a certificate (empty ones raise a
# harmless error alert); TLS 1.3 with Ed25519 never uses them.
FFDHE2048 = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def office_ca(key: OfficeKey) -> tuple[Ed25519PrivateKey, x509.Certificate]:
    """The office CA: the same key and certificate on every agent holding ``key``."""
    ca_key = Ed25519PrivateKey.from_private_bytes(key.ca_seed())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"p2pmodel office {key.fingerprint}")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(CA_SERIAL)
        .not_valid_before(_FOREVER[0])
        .not_valid_after(_FOREVER[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, None)
    )
    return ca_key, cert


def agent_certificate(
    ca_key: Ed25519PrivateKey, ca: x509.Certificate, agent: str
) -> tuple[bytes, bytes]:
    """A fresh key and a certificate for ``agent`` signed by the office CA (both PEM)."""
    key = Ed25519PrivateKey.generate()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_FOREVER[0])
        .not_valid_after(_FOREVER[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(agent), x509.DNSName("*")]), critical=False
        )
        .sign(ca_key, None)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return _pem(cert), key_pem


@contextlib.contextmanager
def _secret_file(data: bytes) -> Iterator[str]:
    """A path whose content is ``data``, for as long as the block runs: an in-memory file
    where Linux has one, else a private temporary file."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("p2pmodel-tls", 0)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="p2pmodel-tls-") as tmp:  # pragma: no cover
        path = os.path.join(tmp, "pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path


@dataclass
class OfficeTls:
    """One agent's TLS material: the office CA (PEM) and its own certificate and key, and
    whether the swarm runs SSL torrents with them (``swarm_tls``)."""

    key: OfficeKey
    agent: str
    swarm_tls: bool = False
    ca_pem: bytes = field(init=False, repr=False)
    cert_pem: bytes = field(init=False, repr=False)
    key_pem: bytes = field(init=False, repr=False)
    dh_params: bytes = field(init=False, repr=False, default=FFDHE2048)

    def __post_init__(self) -> None:
        ca_key, ca = office_ca(self.key)
        self.ca_pem = _pem(ca)
        self.cert_pem, self.key_pem = agent_certificate(ca_key, ca, self.agent)

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint

    def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        ctx = ssl.create_default_context(purpose, cadata=self.ca_pem.decode())
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False  # peers are named by agent id, checked after the hello
        ctx.verify_mode = ssl.CERT_REQUIRED  # on the server side too: mutual authentication
        # The chain sent is the agent's certificate alone: with no chain given, OpenSSL
        # completes one from the trust store and sends the office CA too, before the other
        # side proved anything, and the CA's PEM is what keys every torrent's info-hash.
        # Python's ssl cannot set SSL_MODE_NO_AUTO_CHAIN, and a chain of no certificate is
        # no chain: so the chain is the certificate once more (peers ignore the repeat).
        with _secret_file(self.cert_pem + self.cert_pem + self.key_pem) as path:
            ctx.load_cert_chain(path)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return self._context(ssl.Purpose.SERVER_AUTH)

    def server_context(self) -> ssl.SSLContext:
        return self._context(ssl.Purpose.CLIENT_AUTH)


def peer_agent(peercert: dict[str, Any] | None) -> str | None:
    """The agent id (common name) of a verified peer certificate (``getpeercert()``)."""
    for rdn in (peercert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName" and isinstance(value, str):
                return value
    return None
