"""A fake upstream mirror: a real HTTP/1.1 server (trio + h11) for tests, the demo and benchmarks.

Theory of operation: a `Mirror` listens on two loopback ports. The *hub* port speaks the shapes
p2pmodel reads upstream: the Hugging Face model API and `resolve` URLs, the ModelScope file list
and `resolve` URLs, and plain "release asset" URLs. Like huggingface.co, the hub answers a
`resolve` of an LFS file with a 302 to the *cdn* port, which serves blobs by sha256. The hub port
also carries control endpoints (`/_stats`, `/_stats/reset`, `/_faults`) so a test or a shell
script can read byte counters and make a running mirror misbehave.

Each request is decided by the sync method `Mirror.decide`, which turns (port, method, target,
Range header, body) into a `Reply` using only the repos, the current `Faults` and a seeded
`random.Random`: no IO, so the routing and fault logic stay easy to follow. The async side reads
requests with h11, sleeps for `first_byte_delay`, writes the reply, and streams file bodies from
disk in 1 MiB blocks through the per-connection and per-mirror `Pacer`s, counting body bytes
only once the socket has taken them. Connections are kept alive across requests; a truncated
body or the `down` fault ends the connection without finishing the message.

Faults are read on every request, so mutating `mirror.faults` (or POSTing to `/_faults`) takes
effect at once. Control endpoints ignore faults, so a mirror made `down` can be brought back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

import h11
import trio

from p2pmodel.testing.models import Repo, RepoFile, file_from_disk

Port = Literal["hub", "cdn"]

# File bodies are read in 1 MiB blocks: each read is a thread hop, and at 64 KiB those hops
# capped one connection near 220 MB/s; at 1 MiB it reaches ~1.2 GB/s on loopback.
BLOCK = 1 << 20
RECEIVE_SIZE = 64 * 1024
CORRUPT_PERIOD = 1 << 20
CORRUPT_OFFSET = 12345
MAX_REQUEST_BODY = 1 << 20
CONTROL_PATHS = frozenset({"/_stats", "/_stats/reset", "/_faults"})

_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII | re.IGNORECASE)
_BOOL_FAULTS = frozenset({"corrupt", "fail_api", "down"})
_FLOAT_FAULTS = frozenset({"fail_rate", "retry_after", "truncate_rate", "first_byte_delay"})
_INT_FAULTS = frozenset({"status_on_fail", "seed"})
_RATE_FAULTS = frozenset({"per_conn_rate", "total_rate"})


@dataclass
class Faults:
    """Ways the mirror misbehaves; all off by default. Applied to file requests unless noted."""

    corrupt: bool = False  # flip the byte at each offset % 1 MiB == 12345 of file bodies
    fail_rate: float = 0.0  # chance a request answers `status_on_fail` with Retry-After
    fail_api: bool = False  # let `fail_rate` hit API listings too
    status_on_fail: int = 503
    retry_after: float = 0.0
    truncate_rate: float = 0.0  # chance a file body stops short and the connection closes
    per_conn_rate: int | None = None  # bytes/s per TCP connection
    total_rate: int | None = None  # bytes/s shared by every connection (a slow office link)
    first_byte_delay: float = 0.0  # seconds before answering a file request
    down: bool = False  # close every connection without answering (control paths excepted)
    missing: set[str] = field(default_factory=set)  # repo-relative paths that answer 404
    seed: int = 0

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply decoded JSON changes; ValueError names the bad field (the caller's fault)."""
        checked = {key: _check_fault(key, value) for key, value in changes.items()}
        for key, value in checked.items():
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["missing"] = sorted(self.missing)
        return data


def _check_fault(key: str, value: Any) -> Any:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if key in _BOOL_FAULTS and isinstance(value, bool):
        return value
    if key in _FLOAT_FAULTS and is_number and value >= 0:
        return float(value)
    if key in _INT_FAULTS and is_number and value == int(value):
        return int(value)
    if key in _RATE_FAULTS and (value is None or (is_number and value > 0)):
        return None if value is None else int(value)
    if key == "missing" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return set(value)
    raise ValueError(f"bad fault {key}={value!r}")


@dataclass
class Stats:
    """What the mirror sent: body bytes (both ports), requests and connections.

    `by_client` splits the body bytes by the client's IP address (who got how much)."""

    bytes_served: int = 0
    requests: int = 0
    connections: int = 0
    open_connections: int = 0  # being served now (a gauge: reset leaves it)
    by_path: dict[str, int] = field(default_factory=dict)
    by_client: dict[str, int] = field(default_factory=dict)
    authorized: dict[str, int] = field(default_factory=dict)  # port -> requests with a token

    def count(self, path: str, nbytes: int, client: str | None = None) -> None:
        self.bytes_served += nbytes
        self.by_path[path] = self.by_path.get(path, 0) + nbytes
        if client is not None and nbytes:
            self.by_client[client] = self.by_client.get(client, 0) + nbytes

    def reset(self) -> None:
        self.bytes_served = self.requests = self.connections = 0
        self.by_path.clear()
        self.by_client.clear()
        self.authorized.clear()


@dataclass
class Reply:
    """What to answer one request with: headers plus either `body` or a span of `file`."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    file: RepoFile | None = None
    start: int = 0
    length: int = 0
    cut_at: int | None = None  # truncate fault: body bytes to send before closing
    delay: float = 0.0
    hang_up: bool = False  # down fault: close without answering
    counted: bool = True  # control endpoints stay out of the statistics


class RangeNotSatisfiable(Exception):
    """The Range header asks for bytes the file does not have (answer 416)."""


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte span of a single `bytes=` range, or None for all.

    Malformed or multi-range headers are ignored (whole file), as RFC 9110 allows.
    """
    match = None if value is None else _RANGE.fullmatch(value.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first:
        start = int(first)
        if last and int(last) < start:
            return None
        if start >= size:
            raise RangeNotSatisfiable
        return start, min(int(last) if last else size - 1, size - 1)
    if not last:
        return None
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise RangeNotSatisfiable
    return max(0, size - suffix), size - 1


def corrupt_block(chunk: bytes, offset: int, size: int) -> bytes:
    """Flip the bytes of `chunk` (at file `offset`) that the corrupt fault damages.

    Offset 12345 of every MiB, or the last byte of files too small to have one, so that every
    full download of every non-empty file has a wrong digest.
    """
    phase = CORRUPT_OFFSET if size > CORRUPT_OFFSET else size - 1
    first = offset - offset % CORRUPT_PERIOD + phase
    if first < offset:
        first += CORRUPT_PERIOD
    if first >= offset + len(chunk):
        return chunk
    damaged = bytearray(chunk)
    for pos in range(first - offset, len(damaged), CORRUPT_PERIOD):
        damaged[pos] ^= 0xFF
    return bytes(damaged)


class Pacer:
    """Spaces sends so they average at most `rate` bytes/s; one per connection, one shared."""

    def __init__(self) -> None:
        self._free_at = 0.0

    async def wait(self, nbytes: int, rate: int | None) -> None:
        if rate is None:
            await trio.lowlevel.checkpoint()
            return
        # Reserve the slot before sleeping so concurrent senders on a shared pacer queue up
        # behind each other; an idle spell earns no burst credit.
        self._free_at = max(self._free_at, trio.current_time()) + nbytes / rate
        await trio.sleep_until(self._free_at)


def _json_reply(status: int, payload: object, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    body = json.dumps(payload).encode()
    return Reply(status, [("Content-Type", "application/json"), *headers], body=body)


def _object_id(key: str) -> str:
    """A repository's ``_id`` on the Hub (a 24-hex database id)."""
    return hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:24]


def _hf_error(message: str, code: str) -> Reply:
    return _json_reply(404, {"error": message}, [("X-Error-Code", code)])


def _ms_error(message: str) -> Reply:
    return _json_reply(404, {"Code": 404, "Message": message, "Success": False})


class Mirror:
    """A Hugging Face / ModelScope / release-asset mirror with faults and byte counters."""

    def __init__(
        self,
        repos: Sequence[Repo] = (),
        singles: Mapping[str, RepoFile] | None = None,
        *,
        host: str = "127.0.0.1",
        hub_port: int = 0,
        cdn_port: int = 0,
        faults: Faults | None = None,
        git_root: Path | None = None,
    ) -> None:
        """``git_root``: a directory of bare git repositories (``org/name.git``, after
        ``git update-server-info``) served on the hub port as git's "dumb" HTTP protocol."""
        self.git_root = git_root.resolve() if git_root is not None else None
        self.host = host
        self.faults = faults if faults is not None else Faults()
        self.stats = Stats()
        self._repos = {repo.key: repo for repo in repos}
        if len(self._repos) != len(repos):
            raise ValueError("duplicate repo ids")
        self._files = {repo.key: {f.path: f for f in repo.files} for repo in repos}
        self._blobs = {f.sha256: f for repo in repos for f in repo.files if f.lfs}
        self._singles = dict(singles or {})
        self._ports = {"hub": hub_port, "cdn": cdn_port}
        self._urls: dict[str, str] = {}
        self._rng = random.Random(self.faults.seed)
        self._rng_seed = self.faults.seed
        self._auth: str | None = None  # the Authorization header of the request being decided
        self._total_pacer = Pacer()

    @property
    def hub_url(self) -> str:
        return self._url("hub")

    @property
    def cdn_url(self) -> str:
        return self._url("cdn")

    def _url(self, port: Port) -> str:
        if port not in self._urls:
            raise RuntimeError("the mirror is not listening yet")
        return self._urls[port]

    async def run(self, *, task_status: trio.TaskStatus[Mirror] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on the hub and cdn ports and serve until cancelled."""
        listeners: dict[Port, list[trio.SocketListener]] = {}
        try:
            for port in ("hub", "cdn"):
                listeners[port] = await trio.open_tcp_listeners(self._ports[port], host=self.host)
        except BaseException:
            for opened in listeners.values():
                for listener in opened:
                    await trio.aclose_forcefully(listener)
            raise
        for port, opened in listeners.items():
            number = opened[0].socket.getsockname()[1]
            host = f"[{self.host}]" if ":" in self.host else self.host
            self._urls[port] = f"http://{host}:{number}"
        async with trio.open_nursery() as nursery:
            for port, opened in listeners.items():
                handler = partial(self._serve_connection, port)
                await nursery.start(trio.serve_listeners, handler, opened)
            task_status.started(self)

    # --- decisions (sync, no IO) -------------------------------------------------------------

    def decide(
        self,
        port: Port,
        method: str,
        target: str,
        range_header: str | None,
        body: bytes,
        authorization: str | None = None,
    ) -> Reply:
        """Choose the reply to one request, drawing fault dice from the seeded generator."""
        path, _, query = target.partition("?")
        if port == "hub" and path in CONTROL_PATHS:
            reply = self._control(method, path, body)
            reply.counted = False
            return reply
        faults = self.faults
        if faults.down:
            return Reply(0, [], hang_up=True)
        if faults.seed != self._rng_seed:
            self._rng, self._rng_seed = random.Random(faults.seed), faults.seed
        self.stats.requests += 1
        self.stats.count(path, 0)
        if authorization is not None:
            self.stats.authorized[port] = self.stats.authorized.get(port, 0) + 1
        self._auth = authorization
        if port == "hub" and method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
            return self._lfs_batch(path, body)
        if method not in ("GET", "HEAD"):
            return _json_reply(405, {"error": "Method not allowed"}, [("Allow", "GET, HEAD")])
        is_file = port == "cdn" or not path.startswith("/api/")
        if (is_file or faults.fail_api) and self._roll(faults.fail_rate):
            reply = _json_reply(
                faults.status_on_fail,
                {"error": "Injected failure"},
                [("Retry-After", f"{faults.retry_after:g}")],
            )
        else:
            reply = self._route(port, path, query, range_header)
        if is_file:
            reply.delay = faults.first_byte_delay
        truncatable = reply.file is not None and reply.length > 0 and method == "GET"
        if truncatable and self._roll(faults.truncate_rate):
            reply.cut_at = int(self._rng.random() * reply.length)
        return reply

    def _roll(self, probability: float) -> bool:
        # Draw only when the fault is on, so turning on one fault does not reshuffle another.
        return probability > 0 and self._rng.random() < probability

    def _lfs_batch(self, path: str, body: bytes) -> Reply:
        """Git LFS's batch API for a served repository: an href on the cdn port for each LFS
        file it has, a 404 error for any other object."""
        key = unquote(path).removeprefix("/").removesuffix(".git/info/lfs/objects/batch")
        files = self._files.get(key)
        if files is None:
            return _json_reply(404, {"message": "Repository not found"})
        try:
            request = json.loads(body)
            objects = request["objects"]
            assert request.get("operation") == "download" and isinstance(objects, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            return _json_reply(422, {"message": "bad batch request"})
        by_oid = {f.sha256: f for f in files.values() if f.lfs}
        answered = []
        for obj in objects:
            oid = obj.get("oid") if isinstance(obj, dict) else None
            f = by_oid.get(oid) if isinstance(oid, str) else None
            if f is None or f.path in self.faults.missing:
                answered.append({"oid": oid, "error": {"code": 404, "message": "Not found"}})
                continue
            href = {"href": f"{self.cdn_url}/lfs/{f.sha256}", "expires_in": 3600}
            answered.append(
                {"oid": oid, "size": f.size, "authenticated": True, "actions": {"download": href}}
            )
        reply = _json_reply(200, {"transfer": "basic", "objects": answered})
        reply.headers[0] = ("Content-Type", "application/vnd.git-lfs+json")
        return reply

    def _git_file(self, path: str) -> Reply | None:
        """A file of a served bare repository (git's dumb HTTP protocol), if it is one."""
        if self.git_root is None or ".git/" not in path:
            return None
        target = (self.git_root / unquote(path).lstrip("/")).resolve()
        if not target.is_relative_to(self.git_root) or not target.is_file():
            return Reply(404, [])
        return Reply(200, [("Content-Type", "application/octet-stream")], body=target.read_bytes())

    def _route(self, port: Port, path: str, query: str, range_header: str | None) -> Reply:
        if port == "hub" and (git := self._git_file(path)) is not None:
            return git
        parts = [unquote(part) for part in path.split("/")[1:]]
        if port == "cdn":
            blob = self._blobs.get(parts[1]) if len(parts) == 2 and parts[0] == "lfs" else None
            if blob is None or blob.path in self.faults.missing:
                return _hf_error("Entry not found", "EntryNotFound")
            return self._file_reply(blob, range_header, [("ETag", f'"{blob.sha256}"')])
        single = self._singles.get(unquote(path))
        if single is not None:
            if single.path in self.faults.missing or unquote(path) in self.faults.missing:
                return Reply(404, [])
            return self._file_reply(single, range_header, [("ETag", f'"{single.sha256}"')])
        match parts:
            case ["api", "models", org, name]:
                return self._hf_info(f"{org}/{name}", "main")
            case ["api", "models", org, name, "revision", rev]:
                return self._hf_info(f"{org}/{name}", rev)
            case ["api", "datasets", org, name]:
                return self._hf_info(f"datasets/{org}/{name}", "main")
            case ["api", "datasets", org, name, "revision", rev]:
                return self._hf_info(f"datasets/{org}/{name}", rev)
            case ["api", ("models" | "datasets") as plural, org, name, "refs"]:
                key = f"{org}/{name}" if plural == "models" else f"datasets/{org}/{name}"
                return self._hf_refs(key, query)
            case ["api", ("models" | "datasets") as plural, org, name, "commits", rev]:
                key = f"{org}/{name}" if plural == "models" else f"datasets/{org}/{name}"
                return self._hf_commits(key, rev)
            case ["api", ("models" | "datasets") as plural, org, name, "tree", rev]:
                key = f"{org}/{name}" if plural == "models" else f"datasets/{org}/{name}"
                return self._hf_tree(key, rev)
            case ["datasets", org, name, "resolve", rev, *rest] if rest:
                key, path = f"datasets/{org}/{name}", "/".join(rest)
                return self._resolve(key, rev, path, range_header, True)
            case ["api", "v1", "models", org, name, "repo", "files"]:
                revision = parse_qs(query).get("Revision", ["master"])[0]
                return self._ms_files(f"{org}/{name}", revision)
            case ["models", org, name, "resolve", rev, *rest] if rest:
                return self._resolve(f"{org}/{name}", rev, "/".join(rest), range_header, False)
            case [org, name, "resolve", rev, *rest] if rest:
                return self._resolve(f"{org}/{name}", rev, "/".join(rest), range_header, True)
        return _hf_error("Not found", "EntryNotFound")

    def _commit(self, repo_id: str, rev: str, modelscope: bool) -> tuple[Repo | None, str | None]:
        repo = self._repos.get(repo_id)
        if repo is None:
            return None, None
        # ModelScope names its default branch "master"; let it stand for the repo's branch.
        if modelscope and rev == "master":
            rev = repo.branch
        return repo, repo.resolve(rev)

    def _gated(self, repo: Repo) -> Reply | None:
        """A gated repository answers only the request that carries its token."""
        if repo.token is None or self._auth == f"Bearer {repo.token}":
            return None
        reply = _hf_error(f"Access to {repo.repo_id} is restricted", "GatedRepo")
        reply.status = 401
        return reply

    def _hf_info(self, repo_id: str, rev: str) -> Reply:
        """Model info at a revision as the Hub gives it with ``?blobs=true``: the repository's
        own fields (``Repo.info``), and per file its size, git blob id (of the LFS pointer, for
        an LFS file) and LFS details, with the ``xetHash`` of Xet-backed files."""
        from p2pmodel.core import hfapi

        repo, commit = self._commit(repo_id, rev, modelscope=False)
        if repo is None:
            return _hf_error("Repository not found", "RepoNotFound")
        if gated := self._gated(repo):
            return gated
        if commit is None:
            return _hf_error(f"Invalid rev id: {rev}", "RevisionNotFound")
        siblings: list[dict[str, Any]] = []
        for f in repo.files:
            sibling: dict[str, Any] = {"rfilename": f.path, "size": f.size, "blobId": f.gitsha1}
            if f.lfs:
                pointer = hfapi.lfs_pointer(f.sha256, f.size)
                sibling["blobId"] = hfapi.git_blob_id(pointer)
                sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(pointer)}
                sibling["xetHash"] = hashlib.sha256(f"xet {f.sha256}".encode()).hexdigest()
            siblings.append(sibling)
        info: dict[str, Any] = {"_id": _object_id(repo.key), "id": repo.repo_id}
        info |= {"xetEnabled": True, **(repo.info or {})}
        info |= {"sha": commit, "siblings": siblings}
        info["gated"] = "manual" if repo.token is not None else False
        return _json_reply(200, info)

    def _hf_refs(self, key: str, query: str) -> Reply:
        """``/api/{models,datasets}/{repo}/refs``: the repository's one branch."""
        repo = self._repos.get(key)
        if repo is None:
            return _hf_error("Repository not found", "RepoNotFound")
        if gated := self._gated(repo):
            return gated
        branch = {"name": repo.branch, "ref": f"refs/heads/{repo.branch}"}
        refs: dict[str, Any] = {
            "branches": [{**branch, "targetCommit": repo.commit}],
            "converts": [],
            "tags": [],
        }
        if parse_qs(query).get("include_prs", ["0"])[0] in ("1", "true"):
            refs["pullRequests"] = []
        return _json_reply(200, refs)

    def _hf_commits(self, key: str, rev: str) -> Reply:
        """``/api/{models,datasets}/{repo}/commits/{rev}``: the history up to the commit, last
        first: the upload, then the Hub's initial commit."""
        repo, commit = self._commit(key, rev, modelscope=False)
        if repo is None:
            return _hf_error("Repository not found", "RepoNotFound")
        if gated := self._gated(repo):
            return gated
        if commit is None:
            return _hf_error(f"Invalid rev id: {rev}", "RevisionNotFound")
        info = repo.info or {}
        org = repo.repo_id.split("/")[0]
        first = hashlib.sha1(f"initial {repo.key}".encode(), usedforsecurity=False).hexdigest()
        return _json_reply(
            200,
            [
                {
                    "id": commit,
                    "title": f"Upload {repo.repo_id}",
                    "message": "Weights and configuration.",
                    "authors": [{"user": org, "avatar": f"https://avatars.test/{org}.png"}],
                    "date": info.get("lastModified", "2024-05-06T07:08:09.000Z"),
                },
                {
                    "id": first,
                    "title": "initial commit",
                    "message": "",
                    "authors": [{"user": "system"}],
                    "date": info.get("createdAt", "2024-01-02T03:04:05.000Z"),
                },
            ],
        )

    def _hf_tree(self, key: str, rev: str) -> Reply:
        """The recursive tree at a commit, in one page (what ``snapshot_download`` lists)."""
        from p2pmodel.core import hfapi
        from p2pmodel.core.manifest import FileEntry, Manifest

        repo, commit = self._commit(key, rev, modelscope=False)
        if repo is None:
            return _hf_error("Repository not found", "RepoNotFound")
        if gated := self._gated(repo):
            return gated
        if commit is None:
            return _hf_error(f"Invalid rev id: {rev}", "RevisionNotFound")
        entries = tuple(
            FileEntry(f.path, f.size, f"sha256:{f.sha256}" if f.lfs else f"gitsha1:{f.gitsha1}")
            for f in repo.files
        )
        return _json_reply(200, hfapi.tree(Manifest(key, f"hf://{key}", commit, entries)))

    def _ms_files(self, repo_id: str, rev: str) -> Reply:
        repo, commit = self._commit(repo_id, rev, modelscope=True)
        if repo is None:
            return _ms_error(f"Model {repo_id} not found")
        if commit is None:
            return _ms_error(f"Revision {rev} not found")
        listed = [
            {
                "Path": f.path,
                "Name": f.path.rsplit("/", 1)[-1],
                "Type": "blob",
                "Size": f.size,
                "Sha256": f.sha256,
                "Revision": commit,
            }
            for f in repo.files
        ]
        return _json_reply(200, {"Code": 200, "Data": {"Files": listed}, "Success": True})

    def _resolve(
        self, repo_id: str, rev: str, path: str, range_header: str | None, redirect_lfs: bool
    ) -> Reply:
        repo, commit = self._commit(repo_id, rev, modelscope=not redirect_lfs)
        if repo is None:
            return _hf_error("Repository not found", "RepoNotFound")
        if gated := self._gated(repo):
            return gated
        if commit is None:
            return _hf_error(f"Invalid rev id: {rev}", "RevisionNotFound")
        file = self._files[repo_id].get(path)
        if file is None or path in self.faults.missing:
            return _hf_error("Entry not found", "EntryNotFound")
        headers = [("X-Repo-Commit", commit)]
        if redirect_lfs and file.lfs:
            etag = f'"{file.sha256}"'
            headers += [
                ("Location", f"{self.cdn_url}/lfs/{file.sha256}"),
                ("X-Linked-Etag", etag),
                ("X-Linked-Size", str(file.size)),
                ("ETag", etag),
            ]
            return Reply(302, headers)
        return self._file_reply(file, range_header, [*headers, ("ETag", f'"{file.gitsha1}"')])

    def _file_reply(
        self, file: RepoFile, range_header: str | None, headers: list[tuple[str, str]]
    ) -> Reply:
        headers = [
            *headers,
            ("Accept-Ranges", "bytes"),
            ("Content-Type", "application/octet-stream"),
        ]
        try:
            span = parse_range(range_header, file.size)
        except RangeNotSatisfiable:
            return Reply(416, [*headers, ("Content-Range", f"bytes */{file.size}")])
        if span is None:
            return Reply(200, headers, file=file, start=0, length=file.size)
        start, end = span
        headers.append(("Content-Range", f"bytes {start}-{end}/{file.size}"))
        return Reply(206, headers, file=file, start=start, length=end - start + 1)

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        if path == "/_stats" and method == "GET":
            return _json_reply(200, asdict(self.stats))
        if path == "/_stats/reset" and method == "POST":
            self.stats.reset()
            return _json_reply(200, asdict(self.stats))
        if path == "/_faults" and method == "GET":
            return _json_reply(200, self.faults.to_dict())
        if path == "/_faults" and method == "POST":
            try:
                changes = json.loads(body)
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                self.faults.update(changes)
            except ValueError as exc:
                return _json_reply(400, {"error": str(exc)})
            # A fault update restarts the dice, so a script gets the same run every time.
            self._rng, self._rng_seed = random.Random(self.faults.seed), self.faults.seed
            return _json_reply(200, self.faults.to_dict())
        return _json_reply(405, {"error": "Method not allowed"})

    # --- IO ----------------------------------------------------------------------------------

    async def _serve_connection(self, port: Port, stream: trio.SocketStream) -> None:
        self.stats.connections += 1
        self.stats.open_connections += 1
        conn = h11.Connection(h11.SERVER)
        pacer = Pacer()
        client = _peer_host(stream)
        async with stream:
            try:
                while await self._serve_request(port, stream, conn, pacer, client):
                    conn.start_next_cycle()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client hung up mid-exchange: its choice, nothing left to answer
            finally:
                self.stats.open_connections -= 1

    async def _serve_request(
        self,
        port: Port,
        stream: trio.SocketStream,
        conn: h11.Connection,
        pacer: Pacer,
        client: str | None = None,
    ) -> bool:
        """Answer one request; True when the connection can carry another."""
        try:
            received = await _read_request(stream, conn)
        except h11.RemoteProtocolError as exc:
            # The client broke HTTP: tell it so if h11 still lets us answer, then hang up.
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                reply = _json_reply(exc.error_status_hint, {"error": str(exc)})
                reply.headers.append(("Connection", "close"))
                await self._send_reply(
                    stream, conn, reply, path="", head=False, pacer=pacer, client=client
                )
            return False
        if received is None:
            return False
        request, body = received
        method = request.method.decode("ascii")
        target = request.target.decode("latin-1")
        headers = {name: value.decode("latin-1") for name, value in request.headers}
        range_header, auth = headers.get(b"range"), headers.get(b"authorization")
        reply = self.decide(port, method, target, range_header, body, auth)
        if reply.hang_up:
            return False
        if reply.delay:
            await trio.sleep(reply.delay)
        path = target.partition("?")[0]
        finished = await self._send_reply(
            stream, conn, reply, path=path, head=method == "HEAD", pacer=pacer, client=client
        )
        return finished and conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _send_reply(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        reply: Reply,
        *,
        path: str,
        head: bool,
        pacer: Pacer,
        client: str | None = None,
    ) -> bool:
        """Write `reply`; False when a truncate fault cut the body short."""
        length = reply.length if reply.file is not None else len(reply.body)
        headers = [*reply.headers, ("Content-Length", str(length))]
        await _send(stream, conn, h11.Response(status_code=reply.status, headers=headers))
        if not head and reply.file is not None:
            if not await self._send_file(stream, conn, reply, path, pacer, client):
                return False
        elif not head and reply.body:
            await _send(stream, conn, h11.Data(data=reply.body))
            if reply.counted:
                self.stats.count(path, len(reply.body), client)
        await _send(stream, conn, h11.EndOfMessage())
        return True

    async def _send_file(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        reply: Reply,
        path: str,
        pacer: Pacer,
        client: str | None = None,
    ) -> bool:
        assert reply.file is not None
        size = reply.file.size
        offset = reply.start
        stop = reply.start + (reply.length if reply.cut_at is None else reply.cut_at)
        async with await trio.open_file(reply.file.data_path, "rb") as f:
            await f.seek(offset)
            while offset < stop:
                faults = self.faults
                chunk = await f.read(min(block_size(faults), stop - offset))
                if not chunk:
                    raise RuntimeError(f"{reply.file.data_path} is shorter than its recorded size")
                if faults.corrupt:
                    chunk = corrupt_block(chunk, offset, size)
                await pacer.wait(len(chunk), faults.per_conn_rate)
                await self._total_pacer.wait(len(chunk), faults.total_rate)
                # Counted once the kernel took it: what left this process. A block cut mid-send
                # is not counted (at most one block per broken connection).
                await _send(stream, conn, h11.Data(data=chunk))
                self.stats.count(path, len(chunk), client)
                offset += len(chunk)
        return reply.cut_at is None


def _peer_host(stream: trio.SocketStream) -> str | None:
    """The client's IP address (the key of `Stats.by_client`), or None if the socket has none."""
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return None
    return str(peer[0]) if isinstance(peer, tuple) else None


def block_size(faults: Faults) -> int:
    # Under a rate limit, send ~20 blocks a second so pacing stays smooth at low rates.
    rates = [r for r in (faults.per_conn_rate, faults.total_rate) if r is not None]
    return min([BLOCK, *(max(1024, r // 20) for r in rates)])


async def _send(stream: trio.SocketStream, conn: h11.Connection, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _read_request(
    stream: trio.SocketStream, conn: h11.Connection
) -> tuple[h11.Request, bytes] | None:
    """The next request and its body, or None when the client closed an idle connection."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_REQUEST_BODY:
                raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None
        else:
            # PAUSED cannot happen: a cycle is only restarted once both sides are DONE.
            raise RuntimeError(f"unexpected h11 event {event!r}")


# --- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run a mirror until SIGTERM/SIGINT; see `--help`."""
    parser = argparse.ArgumentParser(
        prog="python -m p2pmodel.testing.mirror", description="Fake upstream model mirror."
    )
    parser.add_argument("--repo-json", action="append", default=[], type=Path, metavar="FILE")
    parser.add_argument("--single", action="append", default=[], metavar="URLPATH=DATAFILE")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="hub port (0: any free port)")
    parser.add_argument("--cdn-port", type=int, default=0, help="cdn port (0: any free port)")
    parser.add_argument("--per-conn-rate", type=int, metavar="BYTES_PER_S")
    parser.add_argument("--total-rate", type=int, metavar="BYTES_PER_S")
    parser.add_argument("--corrupt", action="store_true")
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--fail-api", action="store_true")
    parser.add_argument("--truncate-rate", type=float, default=0.0)
    parser.add_argument("--first-byte-delay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, help="JSON {hub_url, cdn_url} once listening")
    parser.add_argument("--git-root", type=Path, help="serve bare git repositories from here")
    args = parser.parse_args(argv)

    repos = [Repo.from_json(path.read_text()) for path in args.repo_json]
    singles: dict[str, RepoFile] = {}
    for spec in args.single:
        url_path, sep, data_file = spec.partition("=")
        if not sep or not url_path.startswith("/"):
            parser.error(f"--single wants URLPATH=DATAFILE with URLPATH starting with /: {spec}")
        singles[url_path] = file_from_disk(url_path.rsplit("/", 1)[-1], Path(data_file))
    faults = Faults(
        corrupt=args.corrupt,
        fail_rate=args.fail_rate,
        fail_api=args.fail_api,
        truncate_rate=args.truncate_rate,
        per_conn_rate=args.per_conn_rate,
        total_rate=args.total_rate,
        first_byte_delay=args.first_byte_delay,
        seed=args.seed,
    )
    mirror = Mirror(
        repos,
        singles,
        host=args.host,
        hub_port=args.port,
        cdn_port=args.cdn_port,
        faults=faults,
        git_root=args.git_root,
    )
    trio.run(_serve_until_signalled, mirror, args.ready_file)
    return 0


async def _serve_until_signalled(mirror: Mirror, ready_file: Path | None) -> None:
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(mirror.run)
                urls = json.dumps({"hub_url": mirror.hub_url, "cdn_url": mirror.cdn_url})
                if ready_file is not None:
                    await trio.to_thread.run_sync(_write_atomically, ready_file, urls)
                # Printed after the ready file is in place, so a reader of stdout can rely on it.
                print(urls, flush=True)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
    finally:
        # A ready file outliving the mirror would send the next script to a dead port.
        if ready_file is not None:
            with trio.CancelScope(shield=True):
                await trio.Path(ready_file).unlink(missing_ok=True)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main())


def spawn(
    repo_json: Path | Sequence[Path],
    workdir: Path,
    *flags: str,
    name: str = "mirror",
    host: str = "127.0.0.1",
    ports: tuple[int, int] = (0, 0),
    start: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
    timeout: float = 30.0,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """Start this mirror as a process (for scripts and tests) and wait until it listens.

    ``ports`` are the hub and CDN ports (0: any free one). ``start`` runs the argv (default
    ``subprocess.Popen``; in a virtual office, ``functools.partial(office.popen, host)``).
    Returns the process and its ready-file JSON (``hub_url``, ``cdn_url``); raises
    ``RuntimeError`` if it exits or does not start within ``timeout`` seconds."""
    ready = workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    repos = [repo_json] if isinstance(repo_json, Path) else list(repo_json)
    argv = [
        sys.executable, "-m", "p2pmodel.testing.mirror",
        *(arg for path in repos for arg in ("--repo-json", str(path))),
        "--host", host, "--port", str(ports[0]), "--cdn-port", str(ports[1]),
        "--ready-file", str(ready), *flags,
    ]  # fmt: skip
    popen.setdefault("stdout", subprocess.DEVNULL)
    proc = start(argv, **popen)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"mirror {name} did not start (exit {proc.returncode})")
        time.sleep(0.05)
    urls: dict[str, str] = json.loads(ready.read_text())
    return proc, urls
