"""``GetService``: runs gets for every front end and keeps what they share (trio).

Theory of operation. A front end (the CLI in its own process, the control socket of ``serve``,
the Hugging Face endpoint; next the dashboard) hands a ``GetRequest`` and a ``Progress`` to
``get`` and reads the progress while it runs (it renders it; the service never does). The
service takes the get's one decision (``core.resolve``, unless the front end took it) and runs
the flow (``flow.run_get``) with what the agent keeps across gets: one HTTP client (its connection
pool), one ``MirrorBoard`` (mirror ranks, backoffs and bans for bad bytes survive from one get
to the next; mirrors given up on get another chance when a get starts), one ``TokenBucket``
for all mirror traffic (unlimited by default; ``[limits]`` set its rate through ``limits``,
a ``LimitsService``), and the get statistics, where mirror bytes are counted as they arrive.
Whatever goes wrong leaves ``get`` as the one error that says whose fault it was
(``core.errors.first_cause``), never as an exception group, so every front end reports it the
same way.

For the HF endpoint it also resolves repositories (``resolve``: the store first, then
upstream; a gated repository's files go only to a token upstream accepted) and lets a client
``read`` one blob while it arrives. Every running download of the agent is known by blob
(``started``/``ended``), so a reader follows whichever download fetches the blob; if none does,
one fetch starts for it (many readers, one fetch), and it goes on while a reader or a get still
wants it: a minute after the last reader left, an unfinished one is given up. A reader gets
bytes as they reach the disk without a gap, but never the file's last ``HOLD`` bytes before the
blob matched its upstream digest; if the bytes it already had failed the digest, its read
raises, so the client's connection is cut short and no wrong file ever completes.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from ...adapters.http import make_client
from ...adapters.store import Store
from ...core.catalog import NameTarget
from ...core.config import Config
from ...core.errors import NotFound, P2PModelError, SourceError, first_cause
from ...core.limits import Rates
from ...core.manifest import FileEntry, Manifest
from ...core.mirrors import MirrorBoard, mirror_key
from ...core.progress import Progress
from ...core.refs import Ref
from ...core.resolve import Decision, matches_target
from ...core.stats import GetStats
from ...core.tokenbucket import TokenBucket
from ..download import BlobJob, Download, DownloadOptions
from ..limits import LimitsService
from .flow import (
    LanSource,
    Names,
    Sharing,
    Sources,
    blob_jobs,
    decide,
    fetch_blobs,
    find_pinned,
    list_upstream,
    run_get,
)
from .reader import BlobReader, Fetch
from .request import GetRequest, GetResult

log = logging.getLogger(__name__)
HttpFactory = Callable[[], httpx.AsyncClient]
GRACE = 60.0  # seconds an unfinished fetch nobody reads any more is kept


class GetService:
    def __init__(
        self,
        store: Store,
        config: Config,
        *,
        lan: LanSource | None = None,
        sharing: Sharing | None = None,
        http: HttpFactory | None = None,
        names: Names | None = None,
        download: DownloadOptions | None = None,
    ) -> None:
        """``download``: the download settings to start from (tests tune timeouts and the
        mirror board's pace here); the service's own board, bucket and hooks go in."""
        self.config = config
        self.store = store
        self.lan = lan
        self.sharing = sharing
        self.names = names
        self._download = download or DownloadOptions()
        self._connections = download.connections if download is not None else None
        self.board = self._download.board or MirrorBoard()
        self.bucket = TokenBucket()
        self.limits = LimitsService(config.limits)
        self.limits.watch(self._set_mirror_rate)
        self.stats = GetStats()
        self.running: dict[int, tuple[str, Progress]] = {}  # what runs now: (label, progress)
        self.downloads: dict[str, Download] = {}  # blob -> the download fetching it now
        # Awaited with the ref when a get ended (the store's cap, trimming memory); a line
        # one returns is a warning for the get's user.
        self.after_get: list[Callable[[str], Awaitable[str | None]]] = []
        self._reading: collections.Counter[str] = collections.Counter()  # blob -> open readers
        self._make_http = http
        self._http: httpx.AsyncClient | None = None
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._fetches: dict[str, Fetch] = {}
        self._accepted: dict[str, set[str]] = {}  # gated manifest -> sha256 of tokens taken
        self._downloads_changed = trio.Event()
        self._served: dict[str, int] = {}  # blob -> the attempt a reader last had bytes of
        self.tainted: set[str] = set()  # blobs a client may hold wrong bytes of (see read)
        self.on_rotten: list[Callable[[str], object]] = []  # told first (the agent: unseed)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[GetService]:
        """The service ready for gets (its HTTP client open) while inside; an error in the
        block leaves it as it was raised, never wrapped in an exception group."""
        connections = 2 * max(self.config.connections, 16)
        timeouts = self._download.timeouts
        client = self._make_http() if self._make_http else make_client(timeouts, connections)
        failure: BaseException | None = None
        async with client, trio.open_nursery() as nursery:
            self._http = client
            self._nursery = nursery
            try:
                yield self
            except BaseException as e:  # re-raised as it is once the nursery closed
                failure = e
            finally:
                nursery.cancel_scope.cancel()
                self._http = None
                self._nursery = None
        if failure is not None:
            raise failure

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.open():
            task_status.started()
            await trio.sleep_forever()

    def _options(self, connections: int | None = None) -> DownloadOptions:
        return dataclasses.replace(
            self._download,
            connections=connections or self._connections or self.config.connections,
            board=self.board,
            bucket=self.bucket,
            on_mirror_bytes=self.stats.mirror_bytes,
            on_hub_bytes=self.stats.hub_bytes,
            # Every blob stored is seeded at once (and its unit torrents follow it into the
            # store), also those fetched for the HF endpoint's readers.
            on_stored=self.lan.stored if self.lan is not None else None,
            watch=self,
        )

    # -- gets ----------------------------------------------------------------------------------

    async def get(
        self,
        req: GetRequest,
        progress: Progress | None = None,
        *,
        connections: int | None = None,
        decision: Decision | None = None,
    ) -> GetResult:
        """Run one get: the front end's ``decision`` (``flow.decide``; taken here when it has
        none), then the flow; then the store's cap (``after_get``, awaited: the cap holds when
        the get returns, whoever ran it). Raises the ``P2PModelError`` that says what went
        wrong (or an interrupt), never an exception group."""
        assert self._http is not None, "the get service is not open"
        progress = progress or Progress()
        key = next(self._ids)
        self.running[key] = (req.ref.text, progress)
        self.stats.started += 1
        self.stats.running += 1
        t0 = trio.current_time()
        self.limits.apply()  # an agent follows the schedule; a lone get starts with what holds now
        self.board.revive(t0)
        config = self.config  # a reload meanwhile applies to the next get
        sources = Sources(
            self.store,
            config,
            self._http,
            self._options(connections),
            self.lan,
            self.sharing,
            self.names,
        )
        try:
            if decision is None:
                decision = decide(req, self.store, config, keyed=self.names is not None)
            result = await run_get(req, decision, sources, progress)
        except BaseException as e:
            cause = first_cause(e)
            if isinstance(cause, Exception):
                self.stats.failed += 1
                kind = type(cause).__name__ if isinstance(cause, P2PModelError) else "Bug"
                self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1
                await self._after(req)  # what a failed get left (partials) counts too
            if cause is e:
                raise
            raise cause from None
        finally:
            self.stats.running -= 1
            del self.running[key]
        self.stats.completed += 1
        self.stats.durations.append(trio.current_time() - t0)
        self.stats.duration.observe(trio.current_time() - t0)
        result.warnings += await self._after(req)
        return result

    async def _after(self, req: GetRequest) -> list[str]:
        warnings = []
        for after in self.after_get:
            if (warning := await after(req.ref.text)) is not None:
                warnings.append(warning)
        return warnings

    def _set_mirror_rate(self, rates: Rates) -> None:
        self.bucket.set_rate(rates.mirror_download, trio.current_time())

    def reload(self, config: Config) -> None:
        """A reloaded config: gets that start from now on use its mirrors; its limits apply at
        once, to running gets too."""
        self.config = config
        self.limits.set_limits(config.limits)

    def in_use(self) -> tuple[set[str], set[str]]:
        """The refs running gets fetch, and the blobs this agent's gets, downloads and HF
        endpoint readers are working on (never evicted)."""
        refs = {label for label, _ in self.running.values()}
        blobs = {key for _, progress in self.running.values() for key in progress.files}
        blobs |= self.downloads.keys() | self._fetches.keys()
        blobs |= {d for d, n in self._reading.items() if n > 0}
        return refs, blobs

    def transfers(self) -> list[dict[str, Any]]:
        """Files of running gets still in flight (for ``status``)."""
        return [
            {
                "label": f.label,
                "size": f.size,
                "have": f.have,
                "state": f.state,
                "source": f.source,
                "hubs": dict(f.hubs),
            }
            for _, progress in self.running.values()
            for f in progress.files.values()
            if f.state not in ("done", "present")
        ]

    # -- the agent's downloads, by blob (DownloadWatch) ---------------------------------------

    def started(self, download: Download) -> None:
        for key in download.plan.blobs:
            self.downloads[key] = download
        self._changed()

    def ended(self, download: Download) -> None:
        for key in [k for k, d in self.downloads.items() if d is download]:
            del self.downloads[key]
        self._changed()

    def discarded(self, key: str, attempt: int) -> None:
        self.stats.digest_failure("download")
        if self._served.get(key) == attempt:
            # A reader had bytes of it: a client resuming with a Range may hold wrong bytes.
            self.tainted.add(key)

    def rotten(self, digest: str) -> None:
        """A stored blob failed its check (read for a client, or by the scrub): it is
        dropped from seeding and from the store, and fetched again when next wanted."""
        log.error("stored blob %s failed its check: removed (it is fetched again)", digest)
        self.stats.digest_failure("store")
        self.tainted.add(digest)  # a client resuming it may hold its bad bytes
        for fn in self.on_rotten:
            fn(digest)
        self.store.remove_blob(digest)

    def _changed(self) -> None:
        self._downloads_changed.set()
        self._downloads_changed = trio.Event()

    # -- one blob by digest (git-lfs objects) -------------------------------------------------

    async def fetch_blob(
        self,
        digest: str,
        size: int,
        urls: list[str],
        headers: dict[str, dict[str, str]] | None = None,
        progress: Progress | None = None,
        *,
        keep_as: str = "",
    ) -> Path:
        """The stored path of one blob, fetched if missing like a get's (peers that hold it,
        the office's shared fetch, then ``urls`` through the mirror rules, verified). Each URL's
        ``headers`` go to that URL alone, never to a mirror it is rewritten to, nor to peers.
        ``keep_as``: the reference the store keeps it under (else a collection would delete
        a blob no model names)."""
        assert self._http is not None, "the get service is not open"
        progress = progress or Progress()
        if not self.store.has_blob(digest, size):
            job = _blob_job(digest, size, urls, headers or {}, self.config)
            self.board.revive(trio.current_time())
            bad = self.board.bad_bytes(list(dict.fromkeys(map(mirror_key, job.urls))), digest)
            if not job.urls or bad is not None:
                held = await self.lan.locate([digest]) if self.lan is not None else set()
                if digest not in held and bad is not None:
                    # Asked again (git-lfs retries an object): those mirrors are not asked
                    # again in this agent's life, and waiting for a peer would wait forever.
                    raise SourceError(f"every mirror served wrong bytes for {digest}: {bad}")
                if digest not in held:
                    raise SourceError(
                        f"no source for {digest}: no download URL was given and no peer holds it"
                    )
            key = next(self._ids)
            self.running[key] = (keep_as or digest, progress)
            self.stats.blob_fetches += 1
            try:
                await fetch_blobs(
                    self.store, [job], progress, self._options(), self._http, self.lan, self.sharing
                )
            except BaseException as e:
                cause = first_cause(e)
                if cause is e:
                    raise
                raise cause from None
            finally:
                del self.running[key]
        else:
            progress.add(digest, digest, size, have=size, state="present")
        if keep_as:
            self._keep(keep_as, digest, size)
        return self.store.blob_path(digest)

    def _keep(self, ref: str, digest: str, size: int) -> None:
        """Name the blob in the manifest ``ref`` holds (one per LFS endpoint, growing), so the
        store keeps it like a model's. Sync: no other task of the agent interleaves."""
        old = self.store.lookup(ref)
        files = list(old.files) if old is not None else []
        if any(f.digest == digest for f in files):
            self.store.touch(ref)  # used now: the last to be evicted
            return
        files.append(FileEntry(f"lfs/{digest.split(':', 1)[1]}", size, digest))
        manifest = Manifest(ref, ref, "", tuple(files))
        self.store.save_manifest(manifest)
        self.store.set_ref(ref, manifest.digest)

    # -- repositories for the HF endpoint ------------------------------------------------------

    async def resolve(self, ref: Ref, token: str | None) -> Manifest:
        """The manifest of an hf reference: pinned in the store (a branch: the commit last
        pinned for it), else from upstream, then pinned. ``NotFound`` (with the Hub's error
        code) when upstream says so; a gated repository needs a token upstream accepted."""
        assert self._http is not None, "the get service is not open"
        manifest = find_pinned(self.store, ref)
        if manifest is None:
            try:
                manifest, gated = await list_upstream(
                    ref, ref.text, self.config, self._http, token, self.store
                )
            except SourceError:
                # No mirror answers: with an office key, what a keyed peer pinned for this
                # reference is believed (a commit must be that commit), as for `get`.
                manifest = await self._from_office(ref)
                if manifest is None:
                    raise
                gated = False
            self.store.save_manifest(manifest)
            if gated:
                self.store.mark_gated(manifest.digest)
                self._accept(manifest, token)
            self.store.set_ref(ref.text, manifest.digest)
            return manifest
        if manifest.digest in self.store.gated() and not self._took(manifest, token):
            # Pinned here by someone with access: this token must show it has access too.
            pinned = Ref(ref.kind, ref.name, manifest.commit)
            try:
                await list_upstream(pinned, ref.text, self.config, self._http, token)
            except SourceError:
                raise NotFound(
                    f"{ref.text} is gated and its access cannot be checked now", "GatedRepo"
                ) from None
            self._accept(manifest, token)
        return manifest

    async def ask_hub(self, url: str, token: str | None) -> Any:
        """One JSON answer of the Hub's API (``url`` on the origin) through the mirrors, one
        round (the caller has the store to fall back on). The token only to the hosts the
        config trusts with it. Raises ``P2PModelError`` (``SourceError``: no mirror answers)."""
        from ...adapters.http import first_success, get_json

        assert self._http is not None, "the get service is not open"
        http, config = self._http, self.config
        data, _ = await first_success(
            config.candidates(url),
            lambda u: get_json(http, u, config.auth_headers(u, token)),
            what=url,
            rounds=1,
        )
        return data

    async def _from_office(self, ref: Ref) -> Manifest | None:
        if self.names is None:
            return None
        target = NameTarget(source=ref)
        found = await self.names.resolve(ref.text, lambda m: matches_target(target, m))
        return found.manifest if found is not None else None

    def _accept(self, manifest: Manifest, token: str | None) -> None:
        if token:
            digest = hashlib.sha256(token.encode()).hexdigest()
            self._accepted.setdefault(manifest.digest, set()).add(digest)

    def _took(self, manifest: Manifest, token: str | None) -> bool:
        digest = hashlib.sha256(token.encode()).hexdigest() if token else ""
        return digest in self._accepted.get(manifest.digest, set())

    # -- reading a blob while it arrives -------------------------------------------------------

    @asynccontextmanager
    async def reader(
        self, manifest: Manifest, entry: FileEntry, start: int, stop: int, token: str | None
    ) -> AsyncIterator[BlobReader]:
        """Read ``[start, stop)`` of one file of ``manifest``; its blob is fetched (once) if
        nothing in this agent has it or is fetching it."""
        fetch = None
        if not self.store.has_blob(entry.digest, entry.size):
            fetch = self._fetches.get(entry.digest)
            if fetch is None and entry.digest not in self.downloads:
                fetch = self._start_fetch(manifest, entry, token)
        reader = BlobReader(self, entry, start, stop, fetch)
        if fetch is not None:
            fetch.readers += 1
        self._reading[entry.digest] += 1
        try:
            yield reader
        finally:
            self._reading[entry.digest] -= 1
            reader.close()
            if fetch is not None:
                fetch.readers -= 1
                if fetch.readers == 0 and not fetch.done.is_set() and self._nursery is not None:
                    self._nursery.start_soon(self._give_up_later, fetch)

    def _start_fetch(self, manifest: Manifest, entry: FileEntry, token: str | None) -> Fetch:
        assert self._nursery is not None, "the get service is not open"
        fetch = self._fetches[entry.digest] = Fetch(entry.digest)
        self._nursery.start_soon(self._run_fetch, fetch, manifest, entry, token)
        return fetch

    async def _run_fetch(
        self, fetch: Fetch, manifest: Manifest, entry: FileEntry, token: str | None
    ) -> None:
        assert self._http is not None
        progress = Progress()
        key = next(self._ids)
        self.running[key] = (f"{manifest.source}/{entry.path}", progress)
        self.stats.blob_fetches += 1
        self.board.revive(trio.current_time())
        try:
            with fetch.scope:
                jobs = blob_jobs(manifest, self.config, {entry.digest: entry.size}, token)
                # No whole-blob LAN fetch (its bytes cannot be read as they arrive): peers that
                # hold the blob serve it unit by unit through sharing, like any unit.
                await fetch_blobs(
                    self.store, jobs, progress, self._options(), self._http, None, self.sharing
                )
        except Exception as e:
            fetch.error = first_cause(e)
            log.warning("fetching %s for the HF endpoint failed: %s", entry.path, fetch.error)
        finally:
            del self.running[key]
            self._fetches.pop(fetch.digest, None)
            fetch.done.set()
            self._changed()

    async def _give_up_later(self, fetch: Fetch) -> None:
        await trio.sleep(GRACE)
        if fetch.readers == 0:
            fetch.scope.cancel()


class _HrefJob(BlobJob):
    """A blob job whose candidates carry their own headers (an LFS href's), to that URL only."""

    def __init__(self, *args: Any, href_headers: dict[str, dict[str, str]], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.href_headers = href_headers

    def headers(self, url: str) -> dict[str, str] | None:
        return self.href_headers.get(url) or None


def _blob_job(
    digest: str, size: int, urls: list[str], headers: dict[str, dict[str, str]], config: Config
) -> BlobJob:
    """The job for one blob: each URL and what the mirror rules rewrite it to; the URL's own
    headers go with the URL itself only."""
    candidates: list[str] = []
    for url in urls:
        for c in config.candidates(url):
            if c not in candidates:
                candidates.append(c)
    kept = {u: dict(h) for u, h in headers.items() if u in candidates and h}
    label = digest.split(":", 1)[1][:12]
    return _HrefJob(digest, digest, size, candidates, label, href_headers=kept)
