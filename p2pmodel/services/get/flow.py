"""Carrying out one get: the ``core.resolve`` decision, then fetching what is missing (LAN
peers first, then mirrors, shared with the office), then the snapshot and exports.

``fast_get`` is the synchronous path for a model that is already complete: it touches only the
store and imports nothing heavy, so a repeated ``get`` answers in milliseconds. ``run_get`` is
the rest, run by ``GetService`` for every front end; it reads ``Progress`` as it goes and
renders nothing (front ends do).

A peer's manifest for a config or catalog name is taken only if it pins what they pin (when
the mirrors cannot be reached); a name the office publishes over a catalog name wins with a
warning. ``GetResult.describe`` says where the name and the manifest came from.

With ``[[same_files]]`` (``core.hubs``) the get also lists the same repository on the other
hub, at the same time as its own listing; a blob whose sha256 that listing also gives gains the
other hub's file URL (and its mirrors) as candidates, ranked with the rest by the agent's
``MirrorBoard``. Only the own hub's listing makes the manifest; the other one failing costs
nothing but those extra sources.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

from ...adapters.home import load_catalog, load_config
from ...adapters.store import Store
from ...core.catalog import describe_target, unknown_name
from ...core.config import Config
from ...core.errors import NotFound, P2PModelError, SourceError
from ...core.hubs import hub_of, other_repos, shared_paths
from ...core.manifest import FileEntry, Manifest, is_published
from ...core.refs import Ref
from ...core.resolve import (
    AskOffice,
    Decision,
    FetchFile,
    ListUpstream,
    UseStored,
    matches_target,
    resolve,
)
from .request import GetRequest, GetResult

log = logging.getLogger(__name__)
OTHER_HUB_WAIT = 10.0  # seconds the other hubs' listings may hold a get up (they add sources)

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    import httpx

    from ...core.gate import Gate
    from ...core.progress import Progress
    from ..download import BlobJob, DownloadOptions


def decide(req: GetRequest, store: Store, config: Config, *, keyed: bool = False) -> Decision:
    """The one ``core.resolve`` decision of this get, from what this machine knows."""
    stored = None if req.refresh else store.lookup(req.ref.text)
    return resolve(req.ref, config, load_catalog(), stored, sha256=req.sha256, keyed=keyed)


def finish(store: Store, req: GetRequest, manifest: Manifest) -> Path:
    """Link the snapshot; place the files under ``--to`` (with what ``snapshot_download``
    reads there) and in the Hugging Face cache (``--hf-cache``). Returns what to print."""
    from ...adapters import hfcache

    path = store.make_snapshot(req.ref, manifest)
    if req.hf_cache is not None:
        revision = req.ref.tag if req.ref.kind == "hf" else manifest.commit
        path = hfcache.export(store, manifest, revision, req.hf_cache)
    if req.to is not None:
        path = store.export(manifest, req.to)
        hfcache.local_dir_metadata(manifest, req.to)
    return path


def fast_get(req: GetRequest, home: Path) -> tuple[Decision, GetResult | None]:
    """The decision of this get, and, when it is a model already complete in the store, the
    result (linked, no network IO). Raises ``UserError`` for an unknown name (no key)."""
    store = Store(home)
    config = load_config(home)
    decision = decide(req, store, config, keyed=config.office_key is not None)
    if not isinstance(decision, UseStored) or store.missing_blobs(decision.manifest):
        return decision, None
    result = GetResult(finish(store, req, decision.manifest), decision.manifest)
    result.name_from = decision.name_from
    return decision, result


def _url_path(url: str) -> str:
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    return name if name and name not in (".", "..") and "\\" not in name else "download"


class LanSource(Protocol):
    """What the office agent offers ``get``: blobs from LAN peers, and seeding what arrives
    (``services.swarm.SwarmService``)."""

    async def locate(self, digests: list[str]) -> set[str]:
        """The digests some live peer holds complete (asked now, bounded in time)."""
        ...

    async def fetch(self, job: BlobJob, progress: Progress) -> bool:
        """Fetch one blob from peers into the store (verified). False: use mirrors."""
        ...

    def stored(self, digest: str, size: int) -> None:
        """A blob was verified into the store: seed it."""
        ...


class OfficeAnswer(Protocol):
    @property
    def manifest(self) -> Manifest: ...

    @property
    def peer(self) -> str: ...


class Names(Protocol):
    """Names from the office's keyed peers (``services.names.NameService``)."""

    async def resolve(
        self, text: str, accept: Callable[[Manifest], bool] = ...
    ) -> OfficeAnswer | None: ...


class Sharing(Protocol):
    """The office's sharing of mirror work (``services.sharing.SharingService``)."""

    def share(self, jobs: list[BlobJob], progress: Progress) -> AbstractAsyncContextManager[Gate]:
        """While inside: peers and this agent split the mirror work for these blobs; the
        download is handed the yielded gate."""
        ...


@dataclass
class Sources:
    """What the runner (``GetService``) hands the flow: the store, the config of this get,
    the agent's HTTP client and download options, and its LAN side (None: the LAN is off)."""

    store: Store
    config: Config
    http: httpx.AsyncClient
    options: DownloadOptions
    lan: LanSource | None = None
    sharing: Sharing | None = None
    names: Names | None = None


@dataclass
class _Resolved:
    manifest: Manifest | None  # None: a URL with no published digest (known once fetched)
    name_from: str
    manifest_from: str = "store"
    peer: str | None = None
    url: str = ""  # the URL fetched with no digest
    jobs: list[BlobJob] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    also: list[Manifest] = field(default_factory=list)  # other hubs' listings ([[same_files]])


async def _carry_out(decision: Decision, req: GetRequest, src: Sources) -> _Resolved:
    """The manifest the decision leads to (asking the office, upstream or the file's size)."""
    if isinstance(decision, UseStored):
        return _Resolved(decision.manifest, decision.name_from)
    if isinstance(decision, AskOffice):
        found = await src.names.resolve(decision.text) if src.names is not None else None
        if found is not None:
            out = _Resolved(found.manifest, "office", "office", found.peer)
            target = decision.shadows
            if target is not None and not matches_target(target, found.manifest):
                out.warnings.append(
                    f"{decision.text}: the office's (from peer {found.peer}, "
                    f"{found.manifest.source}) wins over the catalog's {describe_target(target)}"
                )
            return out
        if decision.otherwise is None:
            raise unknown_name(req.ref, src.config, load_catalog(), True)
        return await _carry_out(decision.otherwise, req, src)
    if isinstance(decision, FetchFile):
        return await _pinned_file(decision, req, src)
    return await _from_upstream(decision, req, src)


async def _pinned_file(decision: FetchFile, req: GetRequest, src: Sources) -> _Resolved:
    from ...adapters.http import first_success, probe_size
    from ..download import BlobJob

    spec = decision.spec
    urls = src.config.candidates(spec.url)
    size = spec.size
    if size is None:
        size, _ = await first_success(urls, lambda u: probe_size(src.http, u), what=spec.url)
    path = _url_path(spec.url)
    if spec.sha256:
        entry = FileEntry(path, size, f"sha256:{spec.sha256}")
        return _Resolved(
            Manifest(req.ref.text, spec.url, "", (entry,)), decision.name_from, "pinned"
        )
    key = "url-" + hashlib.sha256(spec.url.encode()).hexdigest()[:40]
    out = _Resolved(None, decision.name_from, "pinned", url=spec.url)
    out.jobs.append(BlobJob(key, None, size, urls, path))
    out.warnings.append(
        f"no published digest for {spec.url}: stored as fetched (pass --sha256 to verify it)"
    )
    return out


async def _from_upstream(decision: ListUpstream, req: GetRequest, src: Sources) -> _Resolved:
    source = decision.source
    try:
        manifest, gated = await list_upstream(
            source, req.ref.text, src.config, src.http, req.token, src.store
        )
    except SourceError:
        # No mirror answers: a keyed peer may hold this very commit.
        expected = decision.office_fallback
        found = None
        if src.names is not None and expected is not None and source.pinned:
            found = await src.names.resolve(source.text, lambda m: matches_target(expected, m))
        if found is None:
            raise
        return _Resolved(found.manifest, decision.name_from, "office", found.peer)
    if gated:
        src.store.mark_gated(manifest.digest)
    return _Resolved(manifest, decision.name_from, "upstream")


async def run_get(
    req: GetRequest, decision: Decision, src: Sources, progress: Progress
) -> GetResult:
    """Carry out the decision, download what is missing (LAN peers first, then mirrors),
    verify, link. Raises ``P2PModelError`` subclasses (possibly in an exception group:
    ``GetService.get`` is what front ends call)."""
    import trio

    store = src.store
    got = await _with_other_hubs(decision, req, src)
    jobs = list(got.jobs)
    manifest = got.manifest
    if manifest is not None:
        store.save_manifest(manifest)
        store.set_ref(req.ref.text, manifest.digest)
        missing = store.missing_blobs(manifest)
        jobs += blob_jobs(manifest, src.config, missing, req.token, got.also)
    results = await fetch_blobs(store, jobs, progress, src.options, src.http, src.lan, src.sharing)
    if manifest is None:  # a URL with no published digest: now we know it
        job = jobs[0]
        entry = FileEntry(job.label, job.size, results[job.key])
        manifest = Manifest(req.ref.text, got.url, "", (entry,))
        store.save_manifest(manifest)
        store.set_ref(req.ref.text, manifest.digest)
    path = await trio.to_thread.run_sync(finish, store, req, manifest)
    return GetResult(
        path,
        manifest,
        progress.from_mirrors,
        got.warnings,
        progress.from_peers,
        got.name_from,
        got.manifest_from,
        got.peer,
        hubs=dict(progress.from_hubs),
        file_hubs={k: dict(f.hubs) for k, f in progress.files.items() if f.hubs},
        same_files=[m.source for m in got.also],
    )


async def _with_other_hubs(decision: Decision, req: GetRequest, src: Sources) -> _Resolved:
    """The decision carried out and, with ``[[same_files]]``, the listings of the same
    repository on the other hubs: at once with the own listing when there is one, else after
    (only when blobs with a sha256 are missing)."""
    import trio

    rules = src.config.same_files
    early = decision.source if isinstance(decision, ListUpstream) and rules else None
    listed: dict[str, Manifest] = {}
    warnings: list[str] = []
    async with trio.open_nursery() as nursery:
        if early is not None:
            source = f"{early.kind}://{early.name}"
            nursery.start_soon(_list_other_hubs, source, src, req.token, listed, warnings)
        got = await _carry_out(decision, req, src)
    manifest = got.manifest
    if manifest is None or not hub_of(manifest.source):
        return got
    if early is None and rules:
        missing = src.store.missing_blobs(manifest)
        if any(d.startswith("sha256:") for d in missing):
            await _list_other_hubs(manifest.source, src, req.token, listed, warnings)
    order = [r.text for r in other_repos(rules, manifest.source)]
    got.also = [listed[t] for t in order if t in listed]
    got.warnings += warnings
    return got


async def _list_other_hubs(
    source: str,
    src: Sources,
    token: str | None,
    listed: dict[str, Manifest],
    warnings: list[str],
) -> None:
    """List the repositories ``[[same_files]]`` says hold the files of ``source`` into
    ``listed``. A failure is no error: it only means no extra sources from there."""
    import trio

    async def one(ref: Ref) -> None:
        try:
            listed[ref.text], _ = await list_upstream(
                ref, ref.text, src.config, src.http, token, rounds=1
            )
        except NotFound:
            log.info("%s: not on the other hub (%s): no extra sources", source, ref.text)
        except P2PModelError as e:
            warnings.append(f"{ref.text} (same files as {source}) gave no extra sources: {e}")

    with trio.move_on_after(OTHER_HUB_WAIT) as waited:
        async with trio.open_nursery() as nursery:
            for ref in other_repos(src.config.same_files, source):
                nursery.start_soon(one, ref)
    if waited.cancelled_caught:
        warnings.append(f"the other hubs did not list {source} in {OTHER_HUB_WAIT:g} s")


async def list_upstream(
    source: Ref,
    name: str,
    config: Config,
    http: httpx.AsyncClient,
    token: str | None,
    store: Store | None = None,
    *,
    rounds: int = 3,
) -> tuple[Manifest, bool]:
    """The manifest of an hf/ms repository from its upstream listing, through the mirrors,
    and whether the repository is gated. The user's token goes only to the hosts the config
    trusts with it. ``store``: keep what the Hub said of the repository beside the manifest."""
    from ...adapters.http import first_success, get_json
    from ...core.upstream import listing_gated, listing_url, parse_hf_listing, parse_ms_listing

    listing = listing_url(source, config.hf_origin, config.ms_origin)
    data, _ = await first_success(
        config.candidates(listing),
        lambda u: get_json(http, u, config.auth_headers(u, token)),
        what=source.text,
        rounds=rounds,
    )
    parse = parse_hf_listing if source.kind == "hf" else parse_ms_listing
    manifest = parse(source, name, data)
    if store is not None and source.kind == "hf":
        from ...core.hfinfo import repo_fields

        store.keep_hub_info(manifest.digest, info=repo_fields(data))
    return manifest, listing_gated(data)


def find_pinned(store: Store, ref: Ref) -> Manifest | None:
    """The manifest the store has for an hf/ms reference: pinned for it, or (for a commit)
    any stored manifest of that repository at that commit."""
    from ...core.refs import COMMIT_RE

    manifest = store.lookup(ref.text)
    if manifest is None and COMMIT_RE.match(ref.tag):
        source = f"{ref.kind}://{ref.name}"
        for digest in set(store.refs().values()):
            m = store.load_manifest(digest)
            if m is not None and m.source == source and m.commit == ref.tag:
                return m
    return manifest


def blob_jobs(
    manifest: Manifest,
    config: Config,
    blobs: dict[str, int],
    token: str | None = None,
    also: Sequence[Manifest] = (),
) -> list[BlobJob]:
    """A job per blob of ``manifest`` in ``blobs`` (digest -> size), with its mirror candidates;
    the token rides only on the candidates of hosts the config trusts with it. ``also``: other
    hubs' listings of the same files; a blob one of them gives with the same sha256 gains that
    hub's candidates after its own (a mirror host already among them is not added twice)."""
    from ...core.mirrors import mirror_key
    from ...core.upstream import file_url
    from ..download import BlobJob

    shared = [(other, shared_paths(manifest, other)) for other in also]
    jobs = []
    for digest, size in blobs.items():
        path = next(f.path for f in manifest.files if f.digest == digest)
        if is_published(manifest):  # only the office has it: peers or nothing
            jobs.append(BlobJob(digest, digest, size, [], path))
            continue
        origin = file_url(manifest, path, config.hf_origin, config.ms_origin)
        urls = config.candidates(origin)
        hub = hub_of(manifest.source)
        hubs = dict.fromkeys(urls, hub) if hub else {}
        hosts = {mirror_key(u) for u in urls}
        for other, paths in shared:
            if digest not in paths:
                continue  # not listed there, or with another sha256: never from that hub
            there = file_url(other, paths[digest], config.hf_origin, config.ms_origin)
            for url in config.candidates(there):
                if mirror_key(url) not in hosts:
                    hosts.add(mirror_key(url))
                    urls.append(url)
                    hubs[url] = hub_of(other.source)
        trusted = frozenset(u for u in urls if token and config.trusts(u))
        jobs.append(BlobJob(digest, digest, size, urls, path, token, trusted, hubs))
    return jobs


def _no_source(jobs: list[BlobJob]) -> None:
    """Blobs only the office has (a published model) that no live peer could deliver."""
    lost = [j for j in jobs if not j.urls]
    if lost:
        names = ", ".join(j.label for j in lost[:3]) + (" ..." if len(lost) > 3 else "")
        raise SourceError(
            f"no peer that holds {names} answers (a model published in the office has no "
            "mirror: start the agent of a workstation that has it)"
        )


async def fetch_blobs(
    store: Store,
    jobs: list[BlobJob],
    progress: Progress,
    opts: DownloadOptions,
    http: httpx.AsyncClient,
    lan: LanSource | None,
    sharing: Sharing | None,
) -> dict[str, str]:
    """Blobs some peer holds come over the LAN while the rest come from mirrors at the same
    time (shared out with the office when ``sharing``); a blob the LAN could not deliver goes
    to mirrors afterwards."""
    import trio

    from ..download import download

    held = await lan.locate([j.key for j in jobs if j.digest]) if lan and jobs else set()
    lan_jobs = [j for j in jobs if j.key in held]
    _no_source([j for j in jobs if j.key not in held])
    results: dict[str, str] = {}
    retry: list[BlobJob] = []
    error: list[BaseException] = []

    async def from_lan(job: BlobJob, limit: trio.Semaphore) -> None:
        assert lan is not None
        async with limit:
            if await lan.fetch(job, progress):
                results[job.key] = job.key
            else:
                retry.append(job)

    async def from_mirrors(batch: list[BlobJob], shared: bool = False) -> None:
        try:
            if shared and sharing is not None and batch:
                # Nobody holds these whole: split the mirror work with the office.
                async with sharing.share(batch, progress) as gate:
                    got = await download(store, batch, progress, opts, client=http, gate=gate)
            else:
                got = await download(store, batch, progress, opts, client=http)
            results.update(got)
        except P2PModelError as e:
            error.append(e)

    async with trio.open_nursery() as nursery:
        limit = trio.Semaphore(4)
        for job in lan_jobs:
            nursery.start_soon(from_lan, job, limit)
        nursery.start_soon(from_mirrors, [j for j in jobs if j.key not in held], True)
    if retry and not error:
        _no_source(retry)
        await from_mirrors(retry)
    if error:
        raise error[0]
    return results
