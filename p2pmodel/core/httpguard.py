"""Which requests the agent's HTTP server answers (pure): the ``Host`` it answers to, and
which requests a web page of another site made the browser send.

Theory of operation. The server listens on loopback (or the address ``hf_endpoint`` names),
but a browser will send to it whatever a page of any site asks, in two ways:

- DNS rebinding: a name the attacker owns (``evil.example``) first resolves to the attacker's
  server, then to 127.0.0.1, and the page, still of origin ``evil.example``, reads our answers
  (the status: home, agent id, peers; file bytes). Its requests carry ``Host: evil.example``,
  so the server answers only to ``127.0.0.1``, ``localhost`` and the configured host, with
  any port (421 Misdirected Request otherwise). When the configured host is 0.0.0.0 (every
  interface) any IPv4 literal is accepted too: no name is involved, so nothing can rebind.
- Cross-site requests: any page can make the browser send a simple GET/HEAD/POST to us, and
  though it cannot read the answer, the request alone would make the agent fetch a model
  upstream and pin it. Browsers mark such requests: ``Sec-Fetch-Site`` is ``cross-site`` or
  ``same-site`` (``same-origin`` for the dashboard's own script, ``none`` for an address the
  user typed), and ``Origin``/``Referer`` name the page's origin. ``huggingface_hub`` sends
  none of the three. A request that carries any of them pointing elsewhere is refused (403)
  by everything that can change state; the agent's own pages (dashboard, status JSON,
  metrics) only read, and the browser keeps their answers from a foreign page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost"})
ANY_INTERFACE = "0.0.0.0"  # listening on every interface
_HOST = re.compile(r"(?P<name>[A-Za-z0-9.-]{1,253})(?::(?P<port>[0-9]{1,5}))?\Z")
SAFE_FETCH_SITES = frozenset({"same-origin", "none"})


class HostRule:
    """The host names one server answers to, from the address it was asked to listen on."""

    def __init__(self, address: str) -> None:
        host = address.rpartition(":")[0].lower() or address.lower()
        self.any_ipv4 = host == ANY_INTERFACE
        self.names = LOOPBACK_NAMES | ({host} if host and not self.any_ipv4 else set())

    def accepts(self, host: str | None) -> bool:
        """Whether a request with this ``Host`` is for us (None: no Host header, which only an
        HTTP/1.0 client sends, and no browser)."""
        if host is None:
            return True
        name = host_name(host)
        if name is None:
            return False
        return name in self.names or (self.any_ipv4 and is_ipv4(name))

    def describe(self) -> str:
        names = ", ".join(sorted(self.names))
        return names + (" or an IPv4 address" if self.any_ipv4 else "")


def host_name(host: str) -> str | None:
    """The name of a ``Host`` value ``name[:port]``, lowercased; None: not a host."""
    m = _HOST.match(host)
    if m is None:
        return None
    port = m.group("port")
    if port is not None and not 0 < int(port) < 65536:
        return None
    return m.group("name").lower()


def is_ipv4(name: str) -> bool:
    """A dotted-quad IPv4 address as a browser writes it (no leading zeros, which some read
    as octal)."""
    parts = name.split(".")
    return len(parts) == 4 and all(
        re.fullmatch(r"0|[1-9][0-9]{0,2}", p) and int(p) < 256 for p in parts
    )


def cross_site(headers: Mapping[str, str], host: str | None) -> str | None:
    """Why a page of another origin made the browser send this request (None: nothing says
    it did). ``headers`` have lowercase names; ``host`` is the request's ``Host``."""
    site = headers.get("sec-fetch-site")
    if site is not None and (value := site.strip().lower()) not in SAFE_FETCH_SITES:
        return f"Sec-Fetch-Site: {value if value in ('cross-site', 'same-site') else 'other'}"
    own = f"http://{host.lower()}" if host is not None else None
    origin = headers.get("origin")
    if origin is not None and origin.strip().lower() != own:
        return "Origin of another site"
    referer = headers.get("referer")
    if referer is not None and _origin(referer) != own:
        return "Referer of another site"
    return None


def _origin(url: str) -> str | None:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}".lower()
