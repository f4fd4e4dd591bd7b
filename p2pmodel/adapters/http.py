"""The one module that speaks HTTP (httpx under trio).

It turns HTTP outcomes into ``FetchFailure(kind)`` with the mirror's own words, so decisions stay
in ``mirrors``/``fetchplan``. Bodies are asked with ``Accept-Encoding: identity`` so byte ranges
are ranges of the file, and redirects (hub -> CDN) are followed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from .. import __version__
from ..core.config import unreachable_hint
from ..core.errors import NotFound, SourceError
from ..core.mirrors import Failure, mirror_key, retry_after

USER_AGENT = f"p2pmodel/{__version__}"


class FetchFailure(Exception):
    def __init__(
        self,
        kind: Failure,
        detail: str,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.retry_after = retry_after
        self.code = code  # the Hub's X-Error-Code, if it sent one


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 30.0


def make_client(timeouts: Timeouts = Timeouts(), connections: int = 64) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        follow_redirects=True,
        timeout=httpx.Timeout(timeouts.read, connect=timeouts.connect),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        trust_env=False,
    )


def classify_status(resp: httpx.Response) -> FetchFailure:
    code = resp.status_code
    detail = f"HTTP {code} {resp.reason_phrase}".rstrip()
    if code in (404, 410, 403, 401):
        return FetchFailure(Failure.MISSING, detail, code=resp.headers.get("x-error-code"))
    if code in (429, 503):
        return FetchFailure(
            Failure.BUSY, detail, retry_after(resp.headers.get("retry-after"), time.time())
        )
    if 500 <= code < 600:
        return FetchFailure(
            Failure.SERVER, detail, retry_after(resp.headers.get("retry-after"), time.time())
        )
    return FetchFailure(Failure.PROTOCOL, f"unexpected {detail}")


@asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    try:
        yield
    except httpx.TimeoutException as e:
        raise FetchFailure(Failure.TIMEOUT, f"timed out ({type(e).__name__})") from None
    except httpx.RemoteProtocolError as e:
        raise FetchFailure(Failure.SHORT, f"connection broke: {e}") from None
    except (httpx.ConnectError, httpx.ReadError, httpx.WriteError) as e:
        raise FetchFailure(Failure.CONNECT, f"{type(e).__name__}: {e or 'no answer'}") from None
    except httpx.HTTPError as e:
        raise FetchFailure(Failure.PROTOCOL, f"{type(e).__name__}: {e}") from None


def _content_range_start(value: str | None) -> tuple[int, int | None] | None:
    # "bytes a-b/size" or "bytes a-b/*"
    if not value or not value.startswith("bytes "):
        return None
    try:
        span, _, total = value[6:].partition("/")
        start = int(span.split("-", 1)[0])
        return start, (None if total == "*" else int(total))
    except ValueError:
        return None


@dataclass(frozen=True)
class RangeBody:
    url: str  # where the bytes came from after redirects (a CDN URL, worth reusing)
    chunks: AsyncIterator[bytes]


@asynccontextmanager
async def open_range(
    client: httpx.AsyncClient,
    url: str,
    start: int,
    stop: int,
    size: int,
    extra: dict[str, str] | None = None,
) -> AsyncIterator[RangeBody]:
    """GET ``[start, stop)`` of a ``size``-byte file; yields the body's chunks."""
    headers = {} if (start == 0 and stop == size) else {"Range": f"bytes={start}-{stop - 1}"}
    headers.update(extra or {})
    async with translate_errors():
        resp = await client.send(client.build_request("GET", url, headers=headers), stream=True)
    try:
        if resp.status_code == 206:
            cr = _content_range_start(resp.headers.get("content-range"))
            if cr is None or cr[0] != start or (cr[1] is not None and cr[1] != size):
                raise FetchFailure(
                    Failure.PROTOCOL,
                    f"bad Content-Range {resp.headers.get('content-range')!r} "
                    f"for bytes {start}-{stop - 1} of {size}",
                )
        elif resp.status_code == 200:
            if start != 0:
                raise FetchFailure(Failure.PROTOCOL, "mirror ignores Range requests")
            length = resp.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) != size:
                raise FetchFailure(Failure.PROTOCOL, f"size {length} != expected {size}")
        else:
            raise classify_status(resp)
        length = resp.headers.get("content-length")
        body = resp.aiter_raw()
        if length is not None and length.isdigit():
            body = _coalesced(resp, body, int(length))
        async with translate_errors():
            yield RangeBody(str(resp.url), body)
    finally:
        # Even when cancelled: an unfinished body must close its connection now, or the
        # mirror keeps sending into a socket nobody reads.
        with trio.CancelScope(shield=True):
            await resp.aclose()


LOWAT = 64 * 1024


async def _coalesced(
    resp: httpx.Response, chunks: AsyncIterator[bytes], length: int
) -> AsyncIterator[bytes]:
    """The body's chunks, with the socket's ``SO_RCVLOWAT`` raised so that the kernel wakes us
    for 64 KiB at a time (never more than the body still owes, so the end is never waited
    for), reset when the body ends. A mirror link shared by many connections otherwise hands
    each one a packet or two per wake-up, and the Python work per chunk was most of an
    agent's CPU per byte."""
    stream = resp.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is None or sock.type != socket.SOCK_STREAM:
        async for chunk in chunks:
            yield chunk
        return
    left, lowat = length, 1

    def set_lowat(n: int) -> None:
        nonlocal lowat
        if n != lowat:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
            lowat = n

    try:
        set_lowat(max(1, min(LOWAT, left)))
        async for chunk in chunks:
            left -= len(chunk)
            if left < lowat:
                set_lowat(max(1, left))
            yield chunk
    finally:
        set_lowat(1)  # the pool's idle check and the next response read byte by byte


async def get_json(client: httpx.AsyncClient, url: str, extra: dict[str, str] | None = None) -> Any:
    async with translate_errors():
        resp = await client.get(url, headers={"Accept": "application/json", **(extra or {})})
    if resp.status_code != 200:
        raise classify_status(resp)
    try:
        return json.loads(resp.content)
    except ValueError:
        raise FetchFailure(Failure.PROTOCOL, "answer is not JSON") from None


async def probe_size(client: httpx.AsyncClient, url: str) -> int:
    """Size of a remote file: HEAD (``X-Linked-Size`` or ``Content-Length``), else a 1-byte GET."""
    async with translate_errors():
        resp = await client.head(url)
        if resp.status_code == 200:
            for h in ("x-linked-size", "content-length"):
                v = resp.headers.get(h)
                if v and v.isdigit():
                    return int(v)
        elif resp.status_code not in (405, 501):
            raise classify_status(resp)
        resp = await client.get(url, headers={"Range": "bytes=0-0"})
    if resp.status_code == 206:
        cr = _content_range_start(resp.headers.get("content-range"))
        if cr and cr[1] is not None:
            return cr[1]
    if resp.status_code != 200:
        raise classify_status(resp)
    raise FetchFailure(Failure.PROTOCOL, "the server does not say the file's size")


async def first_success(
    candidates: list[str],
    attempt: Any,
    *,
    what: str,
    rounds: int = 3,
    backoff: float = 0.5,
) -> tuple[Any, str]:
    """Try ``attempt(url)`` on each candidate in order, for up to ``rounds`` passes with backoff.

    Returns (result, url). If every candidate answered "missing", raises ``UserError``; otherwise
    ``SourceError`` naming each mirror's last failure, and how to add a mirror when no rule
    covers the URL (``Config.candidates`` says so).
    """
    last: dict[str, FetchFailure] = {}
    for round_ in range(rounds):
        for url in candidates:
            try:
                return await attempt(url), url
            except FetchFailure as f:
                last[url] = f
                if f.kind is Failure.PROTOCOL and round_ == 0:
                    continue
        if all(f.kind is Failure.MISSING for f in last.values()):
            break
        waits = [f.retry_after for f in last.values() if f.retry_after is not None]
        if round_ + 1 < rounds:
            await trio.sleep(min(max(waits, default=backoff * 2**round_), 10.0))
    causes = "; ".join(f"{mirror_key(u)}: {f.detail}" for u, f in last.items())
    if last and all(f.kind is Failure.MISSING for f in last.values()):
        # The most telling answer wins: a mirror that has the repository but not the revision
        # knows more than one that lacks the repository (a partial mirror).
        codes = {f.code for f in last.values() if f.code}
        order = ("GatedRepo", "RevisionNotFound", "EntryNotFound", "RepoNotFound")
        code = next((c for c in order if c in codes), None)
        raise NotFound(f"{what} not found ({causes})", code)
    hint = unreachable_hint(candidates)
    raise SourceError(f"cannot reach {what}: {causes}" + (f" ({hint})" if hint else ""))
