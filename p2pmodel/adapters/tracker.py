"""A BitTorrent tracker over HTTP (httpx under trio): one announce, the answer's bytes.

No redirects (a tracker that sends us elsewhere is misconfigured, and the rendezvous hash
should not travel further), no proxy from the environment, a short timeout, and at most
``core.tracker.MAX_ANSWER`` bytes read. Every failure is a ``TrackerError`` with one line.
"""

from __future__ import annotations

import httpx

from .. import __version__
from ..core.tracker import MAX_ANSWER, TrackerError

TIMEOUT = 10.0


class TrackerHttp:
    """Announces through one HTTP client (``aclose`` it when done)."""

    def __init__(self, timeout: float = TIMEOUT) -> None:
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": f"p2pmodel/{__version__}", "Accept-Encoding": "identity"},
            trust_env=False,
        )

    async def get(self, url: str) -> bytes:
        """GET ``url`` (an announce request): its body if 200, else ``TrackerError``."""
        try:
            async with self._client.stream("GET", url) as r:
                if r.status_code != 200:
                    raise TrackerError(f"HTTP {r.status_code}")
                body = b""
                async for chunk in r.aiter_raw():
                    body += chunk
                    if len(body) > MAX_ANSWER:
                        raise TrackerError(f"answer over {MAX_ANSWER} bytes")
                return body
        except httpx.HTTPError as e:
            raise TrackerError(f"{type(e).__name__}: {e}".rstrip(": ")) from None

    async def aclose(self) -> None:
        await self._client.aclose()
