"""The control socket's messages (pure: plain maps in, typed messages out).

Theory of operation. A client (the CLI) sends one request to the running agent and reads its
answers until the last one: ``status`` is answered by one ``StatusAnswer``, ``get`` by
``ProgressReport`` frames and then one ``Done`` or ``Failed``, every other request by one
``Done`` or ``Failed``. Each message is a dataclass with ``to_wire`` (a plain map the framing in
``adapters.control`` packs) and a ``*_from_wire`` that checks every field's type at the edge;
anything else is a ``ControlProtocolError``, which the agent answers with a ``Failed`` (exit
2) and the client reports as a broken agent. Both sides use these, so a field is spelled once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import P2PModelError, ProtocolError

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
MAX_TEXT = 4096


class ControlProtocolError(ProtocolError):
    """A control message of the wrong shape (a client's or an agent's bug, or garbage)."""

    exit_code = 2


def _text(d: dict[str, Any], key: str, *, optional: bool = False) -> Any:
    value = d.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise ControlProtocolError(f"a control request's {key!r} must be a string")
    return value


# -- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    op: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, **{k: v for k, v in vars(self).items()}}


@dataclass(frozen=True)
class StatusAsk(Request):
    op: ClassVar[str] = "status"


@dataclass(frozen=True)
class GetAsk(Request):
    op: ClassVar[str] = "get"
    ref: str
    to: str | None = None
    hf_cache: str | None = None
    sha256: str | None = None
    refresh: bool = False


@dataclass(frozen=True)
class RemoveAsk(Request):
    op: ClassVar[str] = "rm"
    ref: str


@dataclass(frozen=True)
class CollectAsk(Request):
    op: ClassVar[str] = "gc"


@dataclass(frozen=True)
class MirrorsAsk(Request):
    op: ClassVar[str] = "mirrors"


@dataclass(frozen=True)
class PublishAsk(Request):
    op: ClassVar[str] = "publish"
    ref: str
    manifest: str  # the manifest's digest, sha256:<64 hex>
    force: bool = False


@dataclass(frozen=True)
class BlobAsk(Request):
    """One blob by digest (a git-lfs object): answered like ``get``, by progress frames and a
    ``Done`` with the stored blob's ``path``. ``urls`` are where it may be fetched (the LFS
    batch API's hrefs), each with the ``headers`` that go to that URL alone; ``keep_as`` is
    the reference the store keeps it under (the LFS endpoint)."""

    op: ClassVar[str] = "blob"
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    headers: tuple[dict[str, str], ...] = field(default=(), repr=False)
    keep_as: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "digest": self.digest,
            "size": self.size,
            "urls": list(self.urls),
            "headers": [dict(h) for h in self.headers],
            "keep_as": self.keep_as,
        }


MAX_URLS = 16


def _blob_ask(d: dict[str, Any]) -> BlobAsk:
    digest = _text(d, "digest")
    if not _DIGEST.match(digest):
        raise ControlProtocolError("a blob request's digest must be sha256:<64 hex>")
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ControlProtocolError("a blob request's size must be a count")
    urls, headers = d.get("urls") or [], d.get("headers") or []
    if not isinstance(urls, list) or len(urls) > MAX_URLS:
        raise ControlProtocolError("a blob request's urls must be a short list")
    if not isinstance(headers, list) or len(headers) not in (0, len(urls)):
        raise ControlProtocolError("a blob request has one header map per url")
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ControlProtocolError("a blob request's urls must be http(s) URLs")
        if len(url) > MAX_TEXT:
            raise ControlProtocolError("a blob request's url is too long")
    checked = []
    for h in headers:
        if not isinstance(h, dict) or len(h) > 32:
            raise ControlProtocolError("a blob request's headers must be small maps")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in h.items()):
            raise ControlProtocolError("a blob request's headers must be strings")
        checked.append(dict(h))
    keep_as = d.get("keep_as") or ""
    if not isinstance(keep_as, str) or len(keep_as) > MAX_TEXT:
        raise ControlProtocolError("a blob request's keep_as must be a string")
    return BlobAsk(digest, size, tuple(urls), tuple(checked), keep_as)


def request_from_wire(d: dict[str, Any]) -> Request:
    """A client's request map as a typed request; ``ControlProtocolError`` otherwise."""
    op = d.get("op")
    if op == "status":
        return StatusAsk()
    if op == "get":
        return GetAsk(
            _text(d, "ref"),
            _text(d, "to", optional=True),
            _text(d, "hf_cache", optional=True),
            _text(d, "sha256", optional=True),
            bool(d.get("refresh")),
        )
    if op == "rm":
        return RemoveAsk(_text(d, "ref"))
    if op == "gc":
        return CollectAsk()
    if op == "mirrors":
        return MirrorsAsk()
    if op == "publish":
        digest = _text(d, "manifest")
        if not _DIGEST.match(digest):
            raise ControlProtocolError("a publish request's manifest must be sha256:<64 hex>")
        return PublishAsk(_text(d, "ref"), digest, bool(d.get("force")))
    if op == "blob":
        return _blob_ask(d)
    raise ControlProtocolError(f"bad op {op!r}")


# -- answers -----------------------------------------------------------------------------------

FileRow = tuple[str, str, int, int, str, str]  # key, label, size, have, source, state


@dataclass(frozen=True)
class Answer:
    event: ClassVar[str] = ""
    last: ClassVar[bool] = True  # the client stops reading after it

    def to_wire(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class ProgressReport(Answer):
    event: ClassVar[str] = "progress"
    last: ClassVar[bool] = False
    from_mirrors: int = 0
    from_peers: int = 0
    files: tuple[FileRow, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "from_mirrors": self.from_mirrors,
            "from_peers": self.from_peers,
            "files": [list(f) for f in self.files],
        }


@dataclass(frozen=True)
class Done(Answer):
    """A request's result: for ``get`` the result ``get --json`` prints, plus ``warnings``."""

    event: ClassVar[str] = "result"
    data: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {**self.data, "event": self.event, "warnings": list(self.warnings)}


@dataclass(frozen=True)
class Failed(Answer):
    """The one line and exit code the CLI prints, as if it had run the request itself."""

    event: ClassVar[str] = "error"
    message: str = ""
    code: int = 1

    def to_wire(self) -> dict[str, Any]:
        return {"event": self.event, "message": self.message, "code": self.code}


@dataclass(frozen=True)
class StatusAnswer(Answer):
    event: ClassVar[str] = "status"
    data: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {**self.data, "event": self.event}


def _row(x: Any) -> FileRow:
    if not isinstance(x, list | tuple) or len(x) != 6:
        raise ControlProtocolError("a progress row must have 6 fields")
    key, label, size, have, source, state = x
    if not all(isinstance(v, str) for v in (key, label, source, state)):
        raise ControlProtocolError("a progress row's names must be strings")
    if not all(isinstance(v, int) and v >= 0 for v in (size, have)):
        raise ControlProtocolError("a progress row's sizes must be counts")
    return (key, label, size, have, source, state)


def _count(d: dict[str, Any], key: str) -> int:
    value = d.get(key) or 0
    if not isinstance(value, int) or value < 0:
        raise ControlProtocolError(f"{key!r} must be a count")
    return value


def answer_from_wire(d: dict[str, Any]) -> Answer:
    """An agent's answer map as a typed answer; ``ControlProtocolError`` otherwise."""
    event = d.get("event")
    rest = {k: v for k, v in d.items() if k not in ("event", "warnings")}
    if event == "progress":
        files = d.get("files") or []
        if not isinstance(files, list):
            raise ControlProtocolError("progress files must be a list")
        return ProgressReport(
            _count(d, "from_mirrors"), _count(d, "from_peers"), tuple(_row(f) for f in files)
        )
    if event == "result":
        warnings = d.get("warnings") or []
        if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
            raise ControlProtocolError("warnings must be strings")
        return Done(rest, tuple(warnings))
    if event == "error":
        code = d.get("code") or 1
        if not isinstance(code, int) or not 1 <= code <= 255:
            code = 1
        return Failed(str(d.get("message") or "the agent failed"), code)
    if event == "status":
        return StatusAnswer(rest)
    raise ControlProtocolError(f"bad control answer {event!r}")


def failed(error: P2PModelError) -> Failed:
    """The ``Failed`` answer for an error: its one line and exit code."""
    return Failed(str(error), error.exit_code)
