"""Git LFS (pure): the custom transfer protocol, the batch API's shapes, the LFS endpoint.

Theory of operation. git-lfs starts ``p2pmodel git lfs-agent`` as a standalone custom transfer
agent and talks to it in line-delimited JSON on its stdin and stdout: one ``init`` (answered
``{}``, or an error), then ``download`` events (``oid``, ``size``; no ``action`` in standalone
mode) each answered by ``progress`` events and one ``complete`` (the ``path`` of the verified
file, or an ``error``), then ``terminate``. ``parse_event`` turns one line into a typed event
(``LfsProtocolError`` for anything else: git-lfs's bug or garbage); the ``render_*`` functions
give the lines to write. The batch API (``batch_request``/``parse_batch``) is how an object's
download URL is found: ``POST <endpoint>/objects/batch``, each object answered with
``actions.download.href`` (+ ``header``) or an ``error``. ``endpoint`` derives the LFS endpoint
from git's config the way git-lfs does. No IO here: the CLI and ``adapters.lfs`` do that.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ProtocolError

OID_RE = re.compile(r"[0-9a-f]{64}\Z")
MAX_LINE = 1 << 20
MAX_HEADERS = 32
MEDIA_TYPE = "application/vnd.git-lfs+json"


class LfsProtocolError(ProtocolError):
    """A line from git-lfs, or a batch answer, of the wrong shape."""


# -- the custom transfer protocol ---------------------------------------------------------------


@dataclass(frozen=True)
class Init:
    operation: str  # download | upload
    remote: str = ""
    concurrent: bool = False


@dataclass(frozen=True)
class Download:
    oid: str
    size: int


@dataclass(frozen=True)
class Upload:
    oid: str
    size: int


@dataclass(frozen=True)
class Terminate:
    pass


Event = Init | Download | Upload | Terminate


def parse_event(line: str | bytes) -> Event:
    """One line git-lfs wrote, as a typed event."""
    if len(line) > MAX_LINE:
        raise LfsProtocolError("a git-lfs message is too long")
    try:
        d = json.loads(line)
    except ValueError:
        raise LfsProtocolError("a git-lfs message is not JSON") from None
    if not isinstance(d, dict):
        raise LfsProtocolError("a git-lfs message is not an object")
    kind = d.get("event")
    if kind == "init":
        op = d.get("operation")
        if op not in ("download", "upload"):
            raise LfsProtocolError(f"bad init operation {op!r}")
        remote = d.get("remote")
        return Init(op, remote if isinstance(remote, str) else "", bool(d.get("concurrent")))
    if kind in ("download", "upload"):
        oid, size = d.get("oid"), d.get("size")
        if not isinstance(oid, str) or not OID_RE.match(oid):
            raise LfsProtocolError(f"bad oid {oid!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise LfsProtocolError(f"bad size {size!r}")
        return Download(oid, size) if kind == "download" else Upload(oid, size)
    if kind == "terminate":
        return Terminate()
    raise LfsProtocolError(f"bad git-lfs event {kind!r}")


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":")) + "\n"


def render_init(error: str | None = None, code: int = 32) -> str:
    """The answer to ``init``: ``{}``, or the error git-lfs shows the user."""
    return _line({} if error is None else {"error": {"code": code, "message": error}})


def render_progress(oid: str, so_far: int, since_last: int) -> str:
    return _line(
        {"event": "progress", "oid": oid, "bytesSoFar": so_far, "bytesSinceLast": since_last}
    )


def render_complete(oid: str, path: str) -> str:
    return _line({"event": "complete", "oid": oid, "path": path})


def render_error(oid: str, message: str, code: int = 2) -> str:
    return _line({"event": "complete", "oid": oid, "error": {"code": code, "message": message}})


UPLOAD_REFUSED = (
    "p2pmodel fetches LFS objects only; push with git-lfs's own transfer: "
    "git -c lfs.standalonetransferagent= push"
)


# -- the LFS endpoint ---------------------------------------------------------------------------


def endpoint(lfs_url: str | None, remote_lfsurl: str | None, remote_url: str | None) -> str | None:
    """The LFS endpoint as git-lfs finds it: ``lfs.url``, else ``remote.<name>.lfsurl``, else
    the remote's URL + ``.git/info/lfs`` (``/info/lfs`` after a ``.git``). None for a remote
    that is not HTTP(S) (git-lfs asks an SSH remote through ``git-lfs-authenticate``)."""
    for given in (lfs_url, remote_lfsurl):
        if given:
            return given.rstrip("/") if _http(given) else None
    if not remote_url or not _http(remote_url):
        return None
    url = remote_url.rstrip("/")
    return f"{url}/info/lfs" if url.endswith(".git") else f"{url}.git/info/lfs"


def _http(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


# -- the batch API ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Href:
    """Where one object is downloaded from: the URL and the headers that go with it (they may
    carry the LFS server's credentials for that URL: never logged, never sent elsewhere)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ObjectError:
    code: int
    message: str


def batch_url(endpoint_url: str) -> str:
    return endpoint_url.rstrip("/") + "/objects/batch"


def batch_request(objects: list[tuple[str, int]]) -> bytes:
    """The body of a download batch for these (oid, size)."""
    body = {
        "operation": "download",
        "transfers": ["basic"],
        "objects": [{"oid": oid, "size": size} for oid, size in objects],
    }
    return json.dumps(body).encode()


def parse_batch(data: Any, wanted: set[str]) -> dict[str, Href | ObjectError]:
    """The batch answer's ``href`` (or error) for each wanted oid it names; others ignored."""
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise LfsProtocolError("a batch answer must have a list of objects")
    out: dict[str, Href | ObjectError] = {}
    for obj in data["objects"]:
        if not isinstance(obj, dict) or obj.get("oid") not in wanted:
            continue
        oid = obj["oid"]
        err = obj.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            out[oid] = ObjectError(
                code if isinstance(code, int) else 0, str(err.get("message") or "error")[:500]
            )
            continue
        actions = obj.get("actions")
        dl = actions.get("download") if isinstance(actions, dict) else None
        href = dl.get("href") if isinstance(dl, dict) else None
        if not isinstance(href, str) or not _http(href):
            out[oid] = ObjectError(404, "the LFS server offers no download for it")
            continue
        header = dl.get("header") if isinstance(dl, dict) else None
        headers: dict[str, str] = {}
        if isinstance(header, dict):
            if len(header) > MAX_HEADERS:
                raise LfsProtocolError("too many headers for one href")
            for k, v in header.items():
                if isinstance(k, str) and isinstance(v, str) and "\n" not in k + v:
                    headers[k] = v
        out[oid] = Href(href, headers)
    return out


# -- git credentials ----------------------------------------------------------------------------


def credential_query(url: str) -> str:
    """What ``git credential fill`` reads for ``url``: its protocol and host only, so what it
    answers belongs to that host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return f"protocol={parts.scheme}\nhost={host}\n\n"


def parse_credential(text: str) -> tuple[str, str] | None:
    """(username, password) from ``git credential fill``'s answer, if it has both."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    user, password = fields.get("username"), fields.get("password")
    return (user, password) if user and password else None


def same_host(a: str, b: str) -> bool:
    """Do two URLs name the same scheme, host and port (where a credential may go)?"""
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)
