"""The agent's Hugging Face endpoint: ``HF_ENDPOINT=http://127.0.0.1:7421`` and every script
that uses ``huggingface_hub`` (``from_pretrained``, ``snapshot_download``, ``hf download``)
takes its models through the agent, verified, with no code change (trio, ASGI).

Theory of operation. hypercorn serves this ASGI app in the agent's root nursery (a real
HTTP/1.1 server with keep-alive, so nothing here parses HTTP; ``serve_bounded`` accepts its
connections under a cap: ``adapters.httpserver``, ``transport.serve_admitted``).
``core.hfapi`` routes each request and shapes each answer; this module only looks things up
and streams:

- repository info and the recursive tree come from the manifest ``GetService.resolve`` gives
  (the store first: a branch answers with the commit last pinned for it, so it works with no
  internet; else upstream through the mirrors, once, then pinned); the info carries what
  upstream's listing said of the repository, kept beside the manifest (``core.hfinfo``, the
  store's ``hub_info``), and ``paths-info`` answers from the manifest's tree;
- refs and commits are asked upstream once (after the manifest, so a gated repository's need
  a token upstream took), then kept beside the manifest; with no answer, the branches the
  store pins and the pinned commit;
- ``HEAD``/``GET`` of a file: the blob from the store, or, if it is not there yet, read while
  the agent fetches it (peers, the office's shared fetch, mirrors): bytes go out as they reach
  the disk, but the last ones only once the blob matched its upstream digest. A fetch that
  fails, or bytes that fail the digest, end the response short, so the client never completes
  a wrong file; a client that resumes such a file with ``Range`` gets the whole file again
  (a 200 makes it start over), because the bytes it holds may be the wrong ones.

Who may ask (``core.httpguard``): a request whose ``Host`` is not 127.0.0.1, localhost or the
configured host gets 421 (DNS rebinding), whatever its path; one a page of another site made a
browser send (``Sec-Fetch-Site``, ``Origin``, ``Referer``) gets 403 from everything but the
agent's own read-only pages, so it can neither make the agent fetch nor pin. A path that can
name nothing (a NUL, bytes that are not UTF-8) gets 400. Upstream's "not found" for a
repository or revision is remembered for ``hfapi.MISS_TTL`` (``hfapi.Misses``), and clients
asking the same question at once share one answer.

The user's token (``Authorization: Bearer``) rides only to the hosts the config trusts with it
(``Config.trusts``), never to peers or other mirrors, and is never logged: this module logs no
header, and hypercorn's access log is off.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import trio

from ..adapters import httpserver
from ..adapters.rlimit import current_budget
from ..adapters.transport import serve_admitted
from ..core import hfapi, hfinfo, httpguard
from ..core.errors import LocalError, NotFound, P2PModelError, UserError
from ..core.manifest import Manifest
from ..core.openfiles import Caps
from ..core.refs import Ref, parse_ref
from ..core.stats import EndpointStats
from .get.reader import BlobGone
from .get.service import GetService

log = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
HARNESSES: dict[str, Any] = {"standardEnvVars": [], "harnesses": {}}  # no agent detection
Page = Callable[[], Awaitable[tuple[str, bytes]]]  # -> (content type, body)


class Reply(Exception):
    """Answer the request with this status, headers and JSON body (and stop)."""

    def __init__(
        self, status: int, body: Any = None, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body if body is not None else {}
        self.headers = headers or []


Answer = Manifest | hfapi.Miss | Reply  # what resolving a repository at a revision gave


@dataclass
class _Question:
    """One repository, revision and token being resolved: who asks the same waits for it."""

    done: trio.Event = field(default_factory=trio.Event)
    answer: Answer | None = None


class HfEndpoint:
    def __init__(
        self,
        gets: GetService,
        address: str,
        *,
        page: int = hfapi.PAGE,
        pages: dict[str, Page] | None = None,
        caps: Caps | None = None,
    ) -> None:
        self.gets = gets
        self.caps = caps
        self.address = address
        self.page = page
        self.pages = pages or {}  # the agent's own pages on this server (dashboard, metrics)
        self.url = ""
        self.hosts = httpguard.HostRule(address)
        self.misses = hfapi.Misses()
        self.now: Callable[[], float] = trio.current_time  # the misses' clock (tests fake it)
        self._asking: dict[hfapi.MissKey, _Question] = {}  # questions on their way upstream
        self.stats = EndpointStats()

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        from hypercorn.config import Config as ServerConfig

        cfg = ServerConfig()
        cfg.bind = [self.address]
        cfg.accesslog = None  # an access log line is one place a token could leak to
        server_log = logging.getLogger("p2pmodel.hfendpoint.server")
        server_log.addFilter(_quiet_aborts)
        cfg.errorlog = server_log
        cfg.include_server_header = False
        cfg.keep_alive_timeout = 30
        async with trio.open_nursery() as nursery:
            try:
                # At most as many connections as the open-files limit leaves room for.
                caps = self.caps or current_budget().http
                binds: list[str] = await nursery.start(serve_bounded, self.app, cfg, caps)
            except OSError as e:
                raise LocalError(
                    f"cannot serve the Hugging Face endpoint on {self.address}: {e.strerror}"
                    ' (set hf_endpoint in config.toml, or "off")'
                ) from None
            self.url = binds[0]
            task_status.started(self.url)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        try:
            await self._http(scope, receive, send)
        except Reply as r:
            await _send_json(send, r.status, r.body, r.headers, scope["method"] == "HEAD")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw.decode("latin-1").partition("?")[0]
        query = scope.get("query_string", b"").decode("latin-1")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host")
        if not self.hosts.accepts(host):
            self.stats.misdirected += 1
            message = f"Misdirected Request: this agent answers to {self.hosts.describe()}"
            raise Reply(421, {"error": message})
        own = self.pages.get(raw_path)
        if own is not None and method in ("GET", "HEAD"):
            kind, body = await own()
            length = str(len(body))
            out = [
                ("Content-Type", kind),
                ("Content-Length", length),
                ("Cache-Control", "no-store"),
            ]
            await send(_start(200, out))
            data = b"" if method == "HEAD" else body
            await send({"type": "http.response.body", "body": data, "more_body": False})
            return
        why = httpguard.cross_site(headers, host)
        if why is not None:
            # A web page of another site: it must not make the agent fetch or pin anything.
            self.stats.cross_site += 1
            raise Reply(403, {"error": f"Forbidden: a request from another web site ({why})"})
        try:
            route = hfapi.route(method, raw_path, query)
        except hfapi.BadRequest as e:
            self.stats.bad_requests += 1
            raise Reply(400, {"error": str(e)}, [("X-Error-Message", _ascii(str(e)))]) from None
        except hfapi.BadRoute as e:
            raise Reply(
                404, {"error": str(e)}, hfapi.error_headers("RepoNotFound", str(e))
            ) from None
        if route is None:
            raise Reply(404, {"error": "Not Found"})
        if method not in (("POST",) if route.method == "POST" else ("GET", "HEAD")):
            allow = "POST" if route.method == "POST" else "GET, HEAD"
            raise Reply(405, {"error": "Method not allowed"}, [("Allow", allow)])
        if route.kind == "harnesses":
            raise Reply(200, HARNESSES)
        paths: list[str] = []
        if route.kind == "paths-info":  # the body is read and checked before any lookup
            body = await _body(receive, headers)
            try:
                paths, _ = hfapi.paths_request(headers.get("content-type", ""), body)
            except hfapi.BadRequest as e:
                self.stats.bad_requests += 1
                raise Reply(400, {"error": str(e)}, [("X-Error-Message", _ascii(str(e)))]) from None
        token = hfapi.bearer(headers.get("authorization"))
        manifest = await self._manifest(route, token)
        if route.kind == "revision":
            said = self.gets.store.hub_info(manifest.digest).get("info")
            raise Reply(200, hfapi.repo_info(manifest, route, said))
        if route.kind == "paths-info":
            raise Reply(200, hfapi.paths_info(manifest, paths))
        if route.kind == "refs":
            raise Reply(
                200, hfinfo.refs_answer(await self._refs(route, manifest, token), route.prs)
            )
        if route.kind == "commits":
            raise Reply(200, await self._commits(route, manifest, token))
        if route.kind == "tree":
            items, cursor = hfapi.tree_page(
                manifest, route.path, route.recursive, route.cursor, self.page
            )
            links = []
            if cursor is not None:  # the Host is one of ours (checked above)
                base = f"http://{host or self.address}"
                links.append(("Link", hfapi.next_link(base, route, cursor)))
            raise Reply(200, items, links)
        await self._file(scope, send, route, manifest, headers, token)

    async def _refs(
        self, route: hfapi.Route, manifest: Manifest, token: str | None
    ) -> dict[str, list[dict[str, str]]]:
        """The repository's refs: as upstream answered them (asked once, then kept beside the
        manifest of its default branch); with no answer, the branches the store pins."""
        store = self.gets.store
        kept = hfinfo.refs(store.hub_info(manifest.digest).get("refs"))
        if kept is not None:
            return kept
        url = hfinfo.api_url(self.gets.config.hf_origin, route.repo_type, route.repo, "refs")
        try:
            kept = hfinfo.refs(await self.gets.ask_hub(f"{url}?include_prs=1", token))
        except P2PModelError as e:
            log.info("refs of %s from the store: %s", route.repo, e)
        if kept is not None:
            store.keep_hub_info(manifest.digest, refs=kept)
            return kept
        return hfinfo.pinned_refs(self._pinned_branches(route))

    async def _commits(
        self, route: hfapi.Route, manifest: Manifest, token: str | None
    ) -> list[dict[str, Any]]:
        """The history up to the commit pinned for the revision: as upstream answered it
        (asked once, then kept beside the manifest); with no answer, that one commit."""
        store = self.gets.store
        doc = store.hub_info(manifest.digest)
        kept = hfinfo.commits(doc.get("commits"))
        if kept is not None:
            return kept
        tail = f"commits/{manifest.commit}"
        url = hfinfo.api_url(self.gets.config.hf_origin, route.repo_type, route.repo, tail)
        try:
            kept = hfinfo.commits(await self.gets.ask_hub(url, token))
        except P2PModelError as e:
            log.info("commits of %s from the store: %s", route.repo, e)
        if kept:
            store.keep_hub_info(manifest.digest, commits=kept)
            return kept
        return hfinfo.pinned_commits(manifest.commit, doc.get("info"))

    def _pinned_branches(self, route: hfapi.Route) -> list[tuple[str, str]]:
        """(revision, commit) of each reference to this repository the store pins, but those
        that name a commit."""
        store = self.gets.store
        out = []
        for text, digest in store.refs().items():
            try:
                ref = parse_ref(text)
            except P2PModelError:
                continue
            if f"{ref.kind}://{ref.name}" != route.source or hfapi.is_commit(ref.tag):
                continue
            m = store.load_manifest(digest)
            if m is not None:
                out.append((ref.tag or hfapi.DEFAULT_REVISION, m.commit))
        return out

    async def _manifest(self, route: hfapi.Route, token: str | None) -> Manifest:
        key = hfapi.Misses.key(route, token)
        answer: Answer | None = self.misses.get(key, self.now())
        if answer is not None:
            self.stats.misses_remembered += 1
        while answer is None:
            question = self._asking.get(key)
            if question is None:
                answer = await self._ask(key, route, token)
            else:  # the same question is on its way upstream: its answer is ours too
                await question.done.wait()
                answer = question.answer  # None: its asker left before the answer; ask again
        if isinstance(answer, Manifest):
            return answer
        if isinstance(answer, Reply):
            raise Reply(answer.status, answer.body, answer.headers)
        headers = hfapi.error_headers(answer.code, answer.message)
        raise Reply(hfapi.STATUS[answer.code], {"error": answer.message}, headers)

    async def _ask(self, key: hfapi.MissKey, route: hfapi.Route, token: str | None) -> Answer:
        question = self._asking[key] = _Question()
        try:
            try:
                question.answer = await self._resolve(route, token)
            except Reply as r:
                question.answer = r
        finally:
            del self._asking[key]
            question.done.set()
        if isinstance(question.answer, hfapi.Miss):
            self.misses.add(key, question.answer, self.now())
        return question.answer

    async def _resolve(self, route: hfapi.Route, token: str | None) -> Manifest | hfapi.Miss:
        """The manifest, or what upstream said does not exist."""
        name = route.source.removeprefix("hf://")
        tag = "" if route.revision == hfapi.DEFAULT_REVISION else route.revision
        try:
            return await self.gets.resolve(Ref("hf", name, tag), token)
        except NotFound as e:
            code: hfapi.ErrorCode = "RepoNotFound"
            if e.code in ("RevisionNotFound", "GatedRepo", "RepoNotFound"):
                code = e.code  # type: ignore[assignment]
            return hfapi.Miss(code, str(e))
        except UserError as e:
            raise Reply(400, {"error": str(e)}) from None
        except P2PModelError as e:  # unreachable sources: the client may retry or go offline
            raise _unavailable(e) from None

    async def _file(
        self,
        scope: Scope,
        send: Send,
        route: hfapi.Route,
        manifest: Manifest,
        headers: dict[str, str],
        token: str | None,
    ) -> None:
        entry = next((f for f in manifest.files if f.path == route.path), None)
        if entry is None:
            message = f"{route.path} is not in {route.repo} at {manifest.commit}"
            extra = [("X-Repo-Commit", manifest.commit)]
            extra += hfapi.error_headers("EntryNotFound", message)
            raise Reply(404, {"error": message}, extra)
        base = hfapi.file_headers(manifest, entry)
        if scope["method"] == "HEAD":
            await send(_start(200, [*base, ("Content-Length", str(entry.size))]))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        try:
            span = hfapi.parse_range(headers.get("range"), entry.size)
        except ValueError:
            bounds = [("Content-Range", f"bytes */{entry.size}")]
            raise Reply(416, {"error": "range not satisfiable"}, bounds) from None
        if span is not None and span[0] > 0 and entry.digest in self.gets.tainted:
            span = None  # the client may hold wrong bytes of it: a 200 makes it start over
        start, stop = span if span is not None else (0, entry.size)
        status = 206 if span is not None else 200
        out = [*base, ("Content-Length", str(stop - start))]
        if span is not None:
            out.append(("Content-Range", f"bytes {start}-{stop - 1}/{entry.size}"))
        async with self.gets.reader(manifest, entry, start, stop, token) as reader:
            try:
                chunk = await reader.read()
            except P2PModelError as e:
                # Known before the first byte (no source can provide it): say so, never a 200
                # that sends nothing.
                log.warning("%s: %s", entry.path, e)
                raise _unavailable(e) from None
            await send(_start(status, out))
            try:
                while chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    chunk = await reader.read()
            except (BlobGone, P2PModelError) as e:
                # Raising is how an ASGI app cuts a response short: the client sees a body that
                # ends early, never a complete file.
                log.warning("%s: response cut short: %s", entry.path, e)
                raise
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def serve_bounded(
    app: Any,
    config: Any,
    caps: Caps,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn serving ``app`` on ``config.bind`` with at most ``caps`` connections;
    started with the URLs. ``OSError`` if a bind fails."""
    listeners, urls = httpserver.bind(config)
    serve = httpserver.connection_server(app, config)
    async with trio.open_nursery() as nursery:
        what = "HTTP on " + ", ".join(urls)
        nursery.start_soon(serve_admitted, serve, listeners, caps, what)
        task_status.started(urls)


def _quiet_aborts(record: logging.LogRecord) -> bool:
    """hypercorn logs an app's exception with its traceback; a response cut short on purpose
    is logged once, as one line, by ``_file``."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, BlobGone | P2PModelError)


async def _body(receive: Receive, headers: dict[str, str]) -> bytes:
    """A request's body, at most ``hfapi.MAX_BODY`` bytes (413 beyond)."""
    too_big = Reply(413, {"error": f"the request body is over {hfapi.MAX_BODY} bytes"})
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > hfapi.MAX_BODY:
        raise too_big
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left
            raise Reply(400, {"error": "the request body ended early"})
        body += message.get("body", b"")
        if len(body) > hfapi.MAX_BODY:
            raise too_big
        if not message.get("more_body", False):
            return bytes(body)


def _start(status: int, headers: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
    }


async def _send_json(
    send: Send, status: int, body: Any, headers: list[tuple[str, str]], head: bool
) -> None:
    data = json.dumps(body).encode()
    out = [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers]
    await send(_start(status, out))
    await send({"type": "http.response.body", "body": b"" if head else data, "more_body": False})


def _unavailable(e: P2PModelError) -> Reply:
    """A 502 that carries the cause (``X-Error-Message``): no source can answer now."""
    return Reply(502, {"error": str(e)}, [("X-Error-Message", _ascii(str(e)))])


def _ascii(text: str) -> str:
    return hfapi.header_text(text)
