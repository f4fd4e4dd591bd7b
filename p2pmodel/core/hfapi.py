"""The Hugging Face Hub's HTTP contract as ``huggingface_hub`` 2.4 uses it (pure): routes,
answers and headers of the local ``HF_ENDPOINT`` the agent serves (``services.hfendpoint``),
and the layout of the Hugging Face cache (``adapters.hfcache``).

Theory of operation. ``route`` turns a request path into what it asks for: the repository info
at a revision (``snapshot_download`` asks it for branches and tags only; ``model_info``), a page
of the recursive tree at a commit, the entries of some paths (``paths-info``, a ``POST``), the
refs, the commits up to a revision, or one file (``HEAD`` then ``GET``, possibly with
``Range``). The answers are built from a manifest, which knows each file's size and upstream
digest, and from what upstream said of the repository (``core.hfinfo``: pipeline tag, tags,
card data and the like, refs, commits):

- a small git file's ``oid``/``ETag`` is its git blob id (our ``gitsha1:`` digest);
- an LFS file's ``oid`` is the git blob id of its LFS pointer (a fixed three-line text that
  names the sha256 and size), its ``lfs.oid`` and ``ETag`` the sha256; the client names the
  cached blob after the ETag, so the cache holds the same names as one filled from the Hub;
- a directory's ``oid`` is the git tree id computed from its entries, as git would.

No answer ever carries ``xetHash``, ``X-Xet-*`` or an ``xet-auth`` link (the client would go
around us to Xet storage), and "not in the store yet" is never ``EntryNotFound`` (the client
records a lasting ``.no_exist`` marker for that).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote_to_bytes

from .manifest import FileEntry, Manifest, ManifestError, check_path
from .refs import COMMIT_RE, REPO_RE, REV_RE

RepoType = Literal["model", "dataset"]
PLURAL: dict[str, RepoType] = {"models": "model", "datasets": "dataset"}
DEFAULT_REVISION = "main"
PAGE = 1000  # tree entries per page (what the Hub sends)
LFS_SPEC = "https://git-lfs.github.com/spec/v1"
_BEARER = re.compile(r"\s*Bearer\s+(\S+)\s*\Z", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Route:
    """What one request asks for."""

    kind: Literal["harnesses", "revision", "tree", "file", "paths-info", "refs", "commits"]
    repo_type: RepoType = "model"
    repo: str = ""  # org/name
    revision: str = DEFAULT_REVISION
    path: str = ""  # file: repo-relative path; tree: a folder ("" = the root)
    cursor: int = 0  # tree: where the page starts
    recursive: bool = False
    blobs: bool = False  # revision: the siblings' size, blob id and LFS sha256 (files_metadata)
    expand: tuple[str, ...] = ()  # revision: only these properties
    prs: bool = False  # refs: pull requests too

    @property
    def method(self) -> str:
        """The method the route answers (a ``HEAD`` too, where it is ``GET``)."""
        return "POST" if self.kind == "paths-info" else "GET"

    @property
    def source(self) -> str:
        """The manifest source of the repository (``hf://org/name``, ``hf://datasets/...``)."""
        return f"hf://{self.repo}" if self.repo_type == "model" else f"hf://datasets/{self.repo}"


class BadRoute(Exception):
    """The path names no repository we can serve (answered 404 ``RepoNotFound``)."""


class BadRequest(Exception):
    """The path can name nothing: bytes that are not UTF-8, or a file path no repository can
    hold (a NUL, a control character, a backslash, an empty or '..' segment). Answered 400,
    before anything is looked up."""


def route(method: str, raw_path: str, query: str = "") -> Route | None:
    """The route of a request (``raw_path`` still URL-quoted, its bytes as latin-1, as the
    server received them); None: not part of the API."""
    parts = raw_path.split("/")[1:]
    params = parse_qs(query)
    if parts == ["api", "agent-harnesses"]:
        return Route("harnesses")
    if len(parts) >= 4 and parts[0] == "api" and parts[1] in PLURAL:
        repo_type = PLURAL[parts[1]]
        repo = _repo(parts[2], parts[3])
        rest = parts[4:]
        if not rest or (rest[0] == "revision" and len(rest) == 2):
            rev = _revision(rest[1]) if rest else DEFAULT_REVISION
            expand = tuple(params.get("expand", []) + params.get("expand[]", []))
            return Route(
                "revision", repo_type, repo, rev, blobs=_yes(params, "blobs"), expand=expand
            )
        if rest[0] in ("paths-info", "commits") and len(rest) == 2:
            return Route(rest[0], repo_type, repo, _revision(rest[1]))  # type: ignore[arg-type]
        if rest == ["refs"]:
            return Route("refs", repo_type, repo, prs=_yes(params, "include_prs"))
        if rest[0] == "tree" and len(rest) >= 2:
            folder = "/".join(_unquote(p) for p in rest[2:]).strip("/")
            cursor = params.get("cursor", ["0"])[0]
            recursive = _yes(params, "recursive")
            return Route(
                "tree",
                repo_type,
                repo,
                _revision(rest[1]),
                _file_path(folder) if folder else "",
                int(cursor) if cursor.isascii() and cursor.isdigit() else 0,
                recursive,
            )
        return None
    file_type: RepoType = "model"
    if parts[:1] == ["datasets"]:
        file_type, parts = "dataset", parts[1:]
    if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
        path = _file_path("/".join(_unquote(p) for p in parts[4:]))
        return Route("file", file_type, _repo(parts[0], parts[1]), _revision(parts[3]), path)
    return None


def _yes(params: dict[str, list[str]], name: str) -> bool:
    return params.get(name, ["false"])[0].lower() in ("1", "true")


def _unquote(raw: str) -> str:
    """One path segment: %-escapes and raw bytes alike are UTF-8 (``unquote`` alone would
    read raw bytes as latin-1)."""
    try:
        return unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
    except UnicodeError:
        raise BadRequest("the path is not UTF-8") from None


def _file_path(path: str) -> str:
    if _CONTROL.search(path):
        raise BadRequest("the file path has a control character")
    try:
        return check_path(path)
    except ManifestError:
        raise BadRequest(f"no repository holds a file at {path[:200]!r}") from None


def _repo(org: str, name: str) -> str:
    repo = f"{_unquote(org)}/{_unquote(name)}"
    if not REPO_RE.match(repo) or ".." in repo:
        raise BadRoute(f"{repo!r} is not a repository id")
    return repo


def _revision(raw: str) -> str:
    rev = _unquote(raw)  # a branch like refs/pr/1 arrives quoted as one segment
    if not REV_RE.match(rev) or ".." in rev:
        raise BadRoute(f"{rev!r} is not a revision")
    return rev


def is_commit(revision: str) -> bool:
    return COMMIT_RE.match(revision) is not None


# -- git object ids ---------------------------------------------------------------------------


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The LFS pointer file git stores in place of a large file."""
    return f"version {LFS_SPEC}\noid sha256:{sha256}\nsize {size}\n".encode()


def blob_id(entry: FileEntry) -> str:
    """The file's git blob id (of its LFS pointer, for an LFS file)."""
    algo, _, hexd = entry.digest.partition(":")
    return hexd if algo == "gitsha1" else git_blob_id(lfs_pointer(hexd, entry.size))


def etag(entry: FileEntry) -> str:
    """What the Hub sends as the file's ETag (the client's name for the cached blob)."""
    return entry.digest.partition(":")[2]


def is_lfs(entry: FileEntry) -> bool:
    return entry.digest.startswith("sha256:")


def _tree_id(children: list[tuple[str, str, str]]) -> str:
    """A git tree's id from (mode, name, hex id) of its children, in git's order."""

    def key(c: tuple[str, str, str]) -> bytes:
        mode, name, _ = c
        return name.encode() + (b"/" if mode == "40000" else b"")

    body = b"".join(
        f"{mode} {name}".encode() + b"\0" + bytes.fromhex(oid)
        for mode, name, oid in sorted(children, key=key)
    )
    return hashlib.sha1(b"tree %d\0" % len(body) + body, usedforsecurity=False).hexdigest()


def tree(manifest: Manifest) -> list[dict[str, Any]]:
    """Every file and folder of the repository, as the Hub's recursive tree lists them."""
    files = sorted(manifest.files, key=lambda f: f.path)
    folders: dict[str, list[tuple[str, str, str]]] = {"": []}
    for f in files:
        parts = f.path.split("/")
        for i in range(1, len(parts)):
            folders.setdefault("/".join(parts[:i]), [])
    for f in files:
        parent, _, name = f.path.rpartition("/")
        folders[parent].append(("100644", name, blob_id(f)))
    ids: dict[str, str] = {}
    for folder in sorted(folders, key=lambda p: -p.count("/") if p else 1):
        if folder:
            ids[folder] = _tree_id(folders[folder])
            parent, _, name = folder.rpartition("/")
            folders[parent].append(("40000", name, ids[folder]))
    out: list[dict[str, Any]] = [
        {"type": "directory", "oid": ids[d], "path": d} for d in sorted(ids)
    ]
    for f in files:
        item: dict[str, Any] = {"type": "file", "oid": blob_id(f), "size": f.size, "path": f.path}
        if is_lfs(f):
            pointer = lfs_pointer(etag(f), f.size)
            item["lfs"] = {"oid": etag(f), "size": f.size, "pointerSize": len(pointer)}
        out.append(item)
    out.sort(key=lambda e: e["path"])
    return out


def tree_page(
    manifest: Manifest, folder: str, recursive: bool, cursor: int, page: int = PAGE
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of the tree under ``folder``; the cursor of the next page (None: last)."""
    prefix = f"{folder}/" if folder else ""
    items = [e for e in tree(manifest) if e["path"].startswith(prefix)]
    if not recursive:
        items = [e for e in items if "/" not in e["path"][len(prefix) :]]
    chunk = items[cursor : cursor + page]
    more = cursor + page < len(items)
    return chunk, (cursor + page if more else None)


def next_link(base: str, route: Route, cursor: int) -> str:
    """The ``Link`` header of a tree page: an absolute URL (the client follows it as given)."""
    plural = "models" if route.repo_type == "model" else "datasets"
    folder = f"/{quote(route.path)}" if route.path else ""
    rev = quote(route.revision, safe="")
    recursive = "true" if route.recursive else "false"
    url = (
        f"{base}/api/{plural}/{route.repo}/tree/{rev}{folder}"
        f"?recursive={recursive}&expand=false&cursor={cursor}"
    )
    return f'<{url}>; rel="next"'


def siblings(manifest: Manifest, blobs: bool) -> list[dict[str, Any]]:
    """The files of a repository info answer: names only, or (``blobs``) with size, blob id
    and LFS sha256, from the manifest (made of what upstream listed)."""
    out: list[dict[str, Any]] = []
    for f in sorted(manifest.files, key=lambda f: f.path):
        item: dict[str, Any] = {"rfilename": f.path}
        if blobs:
            item.update(size=f.size, blobId=blob_id(f))
            if is_lfs(f):
                pointer = lfs_pointer(etag(f), f.size)
                item["lfs"] = {"sha256": etag(f), "size": f.size, "pointerSize": len(pointer)}
        out.append(item)
    return out


def repo_info(
    manifest: Manifest, route: Route, said: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The answer to ``/api/{models,datasets}/{repo}[/revision/{rev}]``: what upstream said of
    the repository at that revision (``said``: ``hfinfo.repo_fields``), its id as asked, the
    commit pinned, and the siblings from the manifest; with ``expand``, only those fields."""
    info: dict[str, Any] = {
        "_id": manifest.commit,
        "id": route.repo,
        "modelId": route.repo,
        "private": False,
        "gated": False,
        "disabled": False,
        "tags": [],
    }
    if route.repo_type == "dataset":
        del info["modelId"]
    info.update({k: v for k, v in (said or {}).items() if k not in ("id", "modelId", "sha")})
    info["sha"] = manifest.commit
    info["siblings"] = siblings(manifest, route.blobs)
    if route.expand:
        return {k: v for k, v in info.items() if k in ("_id", "id") or k in route.expand}
    return info


MAX_BODY = 1 << 20  # bytes of a request body (paths-info)
MAX_PATHS = 10_000  # paths one paths-info request may ask for


def paths_request(content_type: str, body: bytes) -> tuple[list[str], bool]:
    """The paths and ``expand`` of a paths-info request: a form (``paths=a&paths=b&expand=
    false``, what ``huggingface_hub`` sends) or JSON ``{"paths": [...], "expand": false}``.
    ``BadRequest`` when it is neither."""
    kind = content_type.partition(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeError:
        raise BadRequest("the request body is not UTF-8") from None
    if kind == "application/json":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise BadRequest("the request body is not JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("the request body is not a JSON object")
        paths, expand = data.get("paths", []), data.get("expand", False)
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise BadRequest("paths must be a list of strings")
        if not isinstance(expand, bool):
            raise BadRequest("expand must be true or false")
    else:
        try:
            form = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text))
        except ValueError:
            raise BadRequest("the request body is not a form") from None
        paths = form.get("paths", [])
        expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
    if len(paths) > MAX_PATHS:
        raise BadRequest(f"at most {MAX_PATHS} paths at once")
    return paths, expand


def paths_info(manifest: Manifest, paths: list[str]) -> list[dict[str, Any]]:
    """The answer to ``paths-info``: the tree entry (file or folder) of each path asked, in
    the order asked; a path the repository does not have is left out, as the Hub does."""
    entries = {e["path"]: e for e in tree(manifest)}
    out, seen = [], set()
    for raw in paths:
        path = raw.strip("/")
        if path in entries and path not in seen:
            seen.add(path)
            out.append(entries[path])
    return out


def file_headers(manifest: Manifest, entry: FileEntry) -> list[tuple[str, str]]:
    """Headers of a file's HEAD and GET answers (the size is the true one: a HEAD saying 0
    would make the client cache an empty file)."""
    tag = f'"{etag(entry)}"'
    headers = [
        ("X-Repo-Commit", manifest.commit),
        ("ETag", tag),
        ("Accept-Ranges", "bytes"),
        ("Content-Type", "application/octet-stream"),
    ]
    if is_lfs(entry):
        headers += [("X-Linked-Etag", tag), ("X-Linked-Size", str(entry.size))]
    return headers


ErrorCode = Literal["RepoNotFound", "RevisionNotFound", "EntryNotFound", "GatedRepo"]
STATUS: dict[str, int] = {
    "RepoNotFound": 404,
    "RevisionNotFound": 404,
    "EntryNotFound": 404,
    "GatedRepo": 401,
}


def error_headers(code: ErrorCode, message: str) -> list[tuple[str, str]]:
    # The message is for people, the code for the client.
    return [("X-Error-Code", code), ("X-Error-Message", header_text(message))]


def header_text(text: str) -> str:
    """Text as a header value: one line of printable ASCII (a NUL or CR/LF from a request path
    would make the server refuse the whole answer), at most 400 characters."""
    return _CONTROL.sub(" ", text.encode("ascii", "replace").decode())[:400]


# -- upstream's recent "not found" answers ------------------------------------------------------

MISS_TTL = 30.0  # seconds a "not found" from upstream answers the same question again
MISS_LIMIT = 1024  # questions remembered (a client asking for ever new names evicts old ones)
MissKey = tuple[str, str, str]  # (manifest source, revision, a digest of the token or "")


@dataclass(frozen=True)
class Miss:
    """What upstream answered: the Hub's error code and its message."""

    code: ErrorCode
    message: str


class Misses:
    """Upstream's recent "not found" answers, so that a client asking again and again for a
    repository or revision that does not exist costs the mirrors one request per ``ttl``, not
    one per request. Per repository, revision and token (another token may see a private
    repository); only ``RepoNotFound`` and ``RevisionNotFound`` (a gated repository's answer
    depends on access being granted, and "cannot check now" on the network). ``now`` is any
    monotonic clock's seconds."""

    def __init__(self, ttl: float = MISS_TTL, limit: int = MISS_LIMIT) -> None:
        self.ttl = ttl
        self.limit = limit
        self._misses: dict[MissKey, tuple[float, Miss]] = {}  # insertion order: oldest first

    @staticmethod
    def key(route: Route, token: str | None) -> MissKey:
        who = hashlib.sha256(token.encode()).hexdigest() if token else ""
        return route.source, route.revision, who

    def get(self, key: MissKey, now: float) -> Miss | None:
        """The answer upstream gave to this question less than ``ttl`` ago, if any."""
        found = self._misses.get(key)
        if found is None:
            return None
        until, miss = found
        if now >= until:
            del self._misses[key]
            return None
        return miss

    def add(self, key: MissKey, miss: Miss, now: float) -> None:
        """Remember upstream's answer (other codes than the two above are not kept)."""
        if miss.code not in ("RepoNotFound", "RevisionNotFound"):
            return
        self._misses.pop(key, None)
        self._misses[key] = (now + self.ttl, miss)
        # One ttl for all: the oldest entry expires first.
        while self._misses and now >= next(iter(self._misses.values()))[0]:
            del self._misses[next(iter(self._misses))]
        while len(self._misses) > self.limit:
            del self._misses[next(iter(self._misses))]

    def __len__(self) -> int:
        return len(self._misses)


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` as a half-open [start, stop); None: the whole file. ``ValueError``
    when the range is not satisfiable (416)."""
    if not value:
        return None
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value, re.IGNORECASE)
    if m is None:
        return None  # a form we do not speak (several ranges): the whole file, as a 200
    first, last = m.groups()
    if not first:
        if not last:
            return None
        n = int(last)
        if n == 0:
            raise ValueError("empty suffix range")
        return max(0, size - n), size
    start = int(first)
    stop = min(size, int(last) + 1) if last else size
    if start >= size or stop <= start:
        raise ValueError(f"bytes {value} of {size}")
    return start, stop


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header."""
    if not authorization:
        return None
    m = _BEARER.match(authorization)
    return m.group(1) if m else None


# -- the Hugging Face cache layout (huggingface_hub's, so HF_HUB_OFFLINE=1 finds the model) ----


def cache_folder(route_source: str) -> str:
    """``models--org--name`` / ``datasets--org--name`` for a manifest source."""
    body = route_source.removeprefix("hf://")
    kind = "models"
    if body.startswith("datasets/"):
        kind, body = "datasets", body.removeprefix("datasets/")
    return f"{kind}--{body.replace('/', '--')}"


def tree_cache(manifest: Manifest) -> dict[str, Any]:
    """``trees/<commit>.json``: how the client knows, offline, that a snapshot is complete."""
    files: dict[str, Any] = {}
    for f in sorted(manifest.files, key=lambda f: f.path):
        info: dict[str, Any] = {"size": f.size, "blob_id": blob_id(f)}
        if is_lfs(f):
            info["lfs_sha256"] = etag(f)
            info["lfs_size"] = f.size
        files[f.path] = info
    return {"format_version": 1, "files": files}


def download_metadata(commit: str, entry: FileEntry, timestamp: float) -> str:
    """``DIR/.cache/huggingface/download/<path>.metadata`` of a ``local_dir`` download."""
    return f"{commit}\n{etag(entry)}\n{timestamp}\n"
