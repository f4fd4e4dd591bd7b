"""``p2pmodel get``: from a reference to a ready, verified model directory.

``fast_get`` is the synchronous path for a model that is already complete: it touches only the
store and imports nothing heavy, so a repeated ``get`` answers in milliseconds. ``get`` is the
full path: resolve the manifest, download what is missing, then link the snapshot and the
optional ``--to`` export.

A ``name:tag`` resolves in this order: the local store, the user's config, keyed peers (with
an office key: ``services.names``), then the catalog; a source reference (``hf://``...) through
its upstream listing. A peer's manifest for a config or catalog name is taken only if it pins
what they pin (when the mirrors cannot be reached); a name the office publishes over a catalog
name wins with a warning. ``GetResult.describe`` says where the name and the manifest came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from ..adapters.home import load_catalog, load_config
from ..adapters.store import Store
from ..core.catalog import NameTarget, describe_target, find_name, unknown_name
from ..core.config import Config, FileSpec
from ..core.errors import P2PModelError, SourceError, UserError
from ..core.manifest import FileEntry, Manifest, is_published
from ..core.refs import Ref

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    import httpx

    from ..core.progress import Progress
    from .download import BlobJob, DownloadOptions, Sharer


@dataclass
class GetRequest:
    ref: Ref
    to: Path | None = None
    sha256: str | None = None
    refresh: bool = False
    progress: str = "auto"  # auto | rich | plain | none
    token: str | None = field(default=None, repr=False)  # the user's HF token (never logged)
    hf_cache: Path | None = None  # also lay the model out in this Hugging Face cache


@dataclass
class GetResult:
    path: Path
    manifest: Manifest
    fetched: int = 0  # bytes this run took from mirrors
    warnings: list[str] = field(default_factory=list)
    from_peers: int = 0  # bytes this run took from LAN peers
    name_from: str = "store"  # who said what the reference stands for (see ``get``)
    manifest_from: str = "store"  # store | upstream | office | pinned
    peer: str | None = None  # the keyed peer that gave the manifest

    def describe(self, ref: str) -> dict[str, Any]:
        """Plain data for ``get --json`` (also what the agent sends back to the CLI)."""
        m = self.manifest
        return {
            "ref": ref,
            "path": str(self.path),
            "manifest": m.digest,
            "source": m.source,
            "commit": m.commit,
            "size": m.total_size,
            "fetched": self.fetched,
            "from_peers": self.from_peers,
            "name_from": self.name_from,
            "manifest_from": self.manifest_from,
            "peer": self.peer,
            "files": [{"path": f.path, "size": f.size, "digest": f.digest} for f in m.files],
        }


def _check_sha(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    sha = sha256.lower().removeprefix("sha256:")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise UserError(f"--sha256 wants 64 hex digits, not {sha256!r}")
    return sha


def _expected_by_name(target: NameTarget, manifest: Manifest) -> bool:
    """Does a stored manifest still match what config/catalog say the name stands for?"""
    if target.file is not None:
        return manifest.source == target.file.url and [f.digest for f in manifest.files] == [
            f"sha256:{target.file.sha256}"
        ]
    src = target.source
    assert src is not None
    if manifest.source != f"{src.kind}://{src.name}":
        return False
    return not src.tag or not src.pinned or manifest.commit == src.tag


def _finish(store: Store, req: GetRequest, manifest: Manifest) -> Path:
    """Link the snapshot; place the files under ``--to`` (with what ``snapshot_download``
    reads there) and in the Hugging Face cache (``--hf-cache``). Returns what to print."""
    from ..adapters import hfcache

    path = store.make_snapshot(req.ref, manifest)
    if req.hf_cache is not None:
        revision = req.ref.tag if req.ref.kind == "hf" else manifest.commit
        path = hfcache.export(store, manifest, revision, req.hf_cache)
    if req.to is not None:
        path = store.export(manifest, req.to)
        hfcache.local_dir_metadata(manifest, req.to)
    return path


def fast_get(req: GetRequest, home: Path, config: Config | None = None) -> GetResult | None:
    """The model is already complete in the store: link it and return, with no network IO."""
    if req.refresh:
        return None
    store = Store(home)
    manifest = store.lookup(req.ref.text)
    if manifest is None or store.missing_blobs(manifest):
        return None
    sha = _check_sha(req.sha256)
    if sha and [f.digest for f in manifest.files] != [f"sha256:{sha}"]:
        return None
    if req.ref.kind == "name":
        config = config or load_config(home)
        target = find_name(req.ref, config, load_catalog())
        if target is not None and not _expected_by_name(target, manifest):
            return None  # config/catalog say otherwise (or the office's shadows them: warn)
    return GetResult(_finish(store, req, manifest), manifest)


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

    def share(self, jobs: list[BlobJob], progress: Progress) -> AbstractAsyncContextManager[Sharer]:
        """While inside: peers and this agent split the mirror work for these blobs; the
        download attaches to the yielded sharer."""
        ...


async def get(
    req: GetRequest,
    home: Path,
    *,
    options: DownloadOptions | None = None,
    client: httpx.AsyncClient | None = None,
    lan: LanSource | None = None,
    sharing: Sharing | None = None,
    progress: Progress | None = None,
    config: Config | None = None,
    names: Names | None = None,
) -> GetResult:
    """Resolve, download what is missing (LAN peers first, then mirrors), verify, link.
    Raises ``P2PModelError`` subclasses (possibly in an exception group: ``GetService.get``
    is what front ends call)."""
    import trio

    from ..adapters.http import first_success, make_client, probe_size
    from ..adapters.terminal import make_renderer
    from ..core.progress import Progress
    from .download import BlobJob, DownloadOptions

    config = config or load_config(home)
    store = Store(home)
    opts = options or DownloadOptions(connections=config.connections)
    if lan is not None and opts.on_stored is None:
        opts.on_stored = lan.stored
    sha = _check_sha(req.sha256)
    ref = req.ref
    own_client = client is None
    http = client or make_client(opts.timeouts, connections=opts.connections * 2)
    warnings: list[str] = []
    try:
        manifest: Manifest | None = None if req.refresh else store.lookup(ref.text)
        file_spec: FileSpec | None = None
        source = ref
        name_from = "store" if ref.kind == "name" else "reference"
        manifest_from = "store"
        peer: str | None = None
        target: NameTarget | None = None
        if ref.kind == "name":
            target = find_name(ref, config, load_catalog())
            if manifest is not None and target and not _expected_by_name(target, manifest):
                manifest = None
            if manifest is None:
                if target is None or target.origin == "catalog":
                    # Keyed peers come before the catalog (config names never ask them).
                    found = await names.resolve(ref.text) if names is not None else None
                    if found is not None:
                        manifest, peer = found.manifest, found.peer
                        name_from = manifest_from = "office"
                        if target is not None and not _expected_by_name(target, manifest):
                            warnings.append(
                                f"{ref.text}: the office's (from peer {peer}, "
                                f"{manifest.source}) wins over the catalog's "
                                f"{describe_target(target)}"
                            )
                        target = None
                    elif target is None:
                        raise unknown_name(ref, config, load_catalog(), names is not None)
                if target is not None:
                    name_from = target.origin
                    file_spec = target.file
                    source = target.source or ref
        elif ref.kind == "url":
            file_spec = FileSpec(ref.name, sha or "", None)
        if manifest is not None and sha and [f.digest for f in manifest.files] != [f"sha256:{sha}"]:
            manifest = None

        jobs: list[BlobJob] = []
        if manifest is None and file_spec is not None:
            manifest_from = "pinned"
            urls = config.candidates(file_spec.url)
            size = file_spec.size
            if size is None:
                size, _ = await first_success(
                    urls, lambda u: probe_size(http, u), what=file_spec.url
                )
            path = _url_path(file_spec.url)
            if file_spec.sha256:
                entry = FileEntry(path, size, f"sha256:{file_spec.sha256}")
                manifest = Manifest(ref.text, file_spec.url, "", (entry,))
            else:
                key = "url-" + hashlib.sha256(file_spec.url.encode()).hexdigest()[:40]
                jobs.append(BlobJob(key, None, size, urls, path))
                warnings.append(
                    f"no published digest for {file_spec.url}: stored as fetched "
                    "(pass --sha256 to verify it)"
                )
        elif manifest is None:
            manifest_from = "upstream"
            try:
                manifest, gated = await list_upstream(source, ref.text, config, http, req.token)
            except SourceError:
                # No mirror answers: a keyed peer may hold this very commit.
                found = None
                if names is not None and source.pinned:
                    expected = target or NameTarget(source=source)
                    found = await names.resolve(
                        source.text, lambda m: _expected_by_name(expected, m)
                    )
                if found is None:
                    raise
                manifest, gated, peer, manifest_from = found.manifest, False, found.peer, "office"
            if gated:
                store.mark_gated(manifest.digest)

        if manifest is not None:
            store.save_manifest(manifest)
            store.set_ref(ref.text, manifest.digest)
            missing = store.missing_blobs(manifest)
            jobs += blob_jobs(manifest, config, missing, req.token)

        progress = progress or Progress()
        renderer = make_renderer(progress, req.progress if jobs else "none")
        try:
            results = await fetch_blobs(
                store, jobs, progress, opts, http, lan, sharing, renderer.update
            )
        finally:
            renderer.close()  # the last state, also on failure (what was kept is visible)

        if manifest is None:  # a URL with no published digest: now we know it
            assert file_spec is not None
            job = jobs[0]
            entry = FileEntry(job.label, job.size, results[job.key])
            manifest = Manifest(ref.text, file_spec.url, "", (entry,))
            store.save_manifest(manifest)
            store.set_ref(ref.text, manifest.digest)
        path_out = await trio.to_thread.run_sync(_finish, store, req, manifest)
        return GetResult(
            path_out,
            manifest,
            progress.from_mirrors,
            warnings,
            progress.from_peers,
            name_from,
            manifest_from,
            peer,
        )
    finally:
        if own_client:
            with trio.CancelScope(shield=True):
                await http.aclose()


async def list_upstream(
    source: Ref, name: str, config: Config, http: httpx.AsyncClient, token: str | None
) -> tuple[Manifest, bool]:
    """The manifest of an hf/ms repository from its upstream listing, through the mirrors,
    and whether the repository is gated. The user's token goes only to the hosts the config
    trusts with it."""
    from ..adapters.http import first_success, get_json
    from ..core.upstream import listing_gated, listing_url, parse_hf_listing, parse_ms_listing

    listing = listing_url(source, config.hf_origin, config.ms_origin)
    data, _ = await first_success(
        config.candidates(listing),
        lambda u: get_json(http, u, config.auth_headers(u, token)),
        what=source.text,
    )
    parse = parse_hf_listing if source.kind == "hf" else parse_ms_listing
    return parse(source, name, data), listing_gated(data)


async def resolve_repo(
    ref: Ref,
    home: Path,
    config: Config,
    http: httpx.AsyncClient,
    *,
    token: str | None = None,
    offline: bool = False,
) -> Manifest:
    """The manifest an hf/ms reference stands for: the one pinned in the store (a branch
    resolves to the commit last pinned for it), else from upstream, then pinned. A commit that
    some stored manifest of the repository has is found without asking upstream. ``offline``:
    the store only (``UserError`` if it does not know the reference)."""
    store = Store(home)
    manifest = find_pinned(store, ref)
    if manifest is None:
        if offline:
            raise UserError(f"{ref.text} is not in the store")
        manifest, gated = await list_upstream(ref, ref.text, config, http, token)
        store.save_manifest(manifest)
        if gated:
            store.mark_gated(manifest.digest)
        store.set_ref(ref.text, manifest.digest)
    return manifest


def find_pinned(store: Store, ref: Ref) -> Manifest | None:
    """The manifest the store has for an hf/ms reference: pinned for it, or (for a commit)
    any stored manifest of that repository at that commit."""
    from ..core.refs import COMMIT_RE

    manifest = store.lookup(ref.text)
    if manifest is None and COMMIT_RE.match(ref.tag):
        source = f"{ref.kind}://{ref.name}"
        for digest in set(store.refs().values()):
            m = store.load_manifest(digest)
            if m is not None and m.source == source and m.commit == ref.tag:
                return m
    return manifest


def blob_jobs(
    manifest: Manifest, config: Config, blobs: dict[str, int], token: str | None = None
) -> list[BlobJob]:
    """A job per blob of ``manifest`` in ``blobs`` (digest -> size), with its mirror candidates;
    the token rides only on the candidates of hosts the config trusts with it."""
    from ..core.upstream import file_url
    from .download import BlobJob

    jobs = []
    for digest, size in blobs.items():
        path = next(f.path for f in manifest.files if f.digest == digest)
        if is_published(manifest):  # only the office has it: peers or nothing
            jobs.append(BlobJob(digest, digest, size, [], path))
            continue
        origin = file_url(manifest, path, config.hf_origin, config.ms_origin)
        urls = config.candidates(origin)
        trusted = frozenset(u for u in urls if token and config.trusts(u))
        jobs.append(BlobJob(digest, digest, size, urls, path, token, trusted))
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
    render: Callable[[], None],
) -> dict[str, str]:
    """Blobs some peer holds come over the LAN while the rest come from mirrors at the same
    time (shared out with the office when ``sharing``); a blob the LAN could not deliver goes
    to mirrors afterwards."""
    import trio

    from .download import download

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
                async with sharing.share(batch, progress) as sharer:
                    got = await download(
                        store, batch, progress, opts, render=render, client=http, sharer=sharer
                    )
            else:
                got = await download(store, batch, progress, opts, render=render, client=http)
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
