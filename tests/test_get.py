"""``get`` end to end against real HTTP mirrors on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from p2pmodel.adapters.home import load_config
from p2pmodel.adapters.http import Timeouts
from p2pmodel.adapters.store import Store
from p2pmodel.core.errors import IntegrityError, SourceError, UserError
from p2pmodel.core.mirrors import MirrorBoard
from p2pmodel.core.refs import parse_ref
from p2pmodel.services.download import DownloadOptions
from p2pmodel.services.get import GetRequest, GetResult
from p2pmodel.services.get.flow import fast_get
from p2pmodel.services.get.service import GetService
from p2pmodel.testing.mirror import Faults
from p2pmodel.testing.models import Repo, make_single_file

from .conftest import MiB, write_config


def fast_options(**kw) -> DownloadOptions:
    board = MirrorBoard(race_delay=0.2, max_failures=kw.pop("max_failures", 8), max_backoff=0.5)
    return DownloadOptions(
        connections=kw.pop("connections", 8),
        timeouts=Timeouts(connect=2.0, read=3.0),
        chunk_size=kw.pop("chunk_size", MiB),
        board=board,
        **kw,
    )


def assert_exact(root: Path, repo: Repo) -> None:
    for f in repo.files:
        assert (root / f.path).read_bytes() == f.data_path.read_bytes(), f.path


async def get(req: GetRequest, home: Path, options: DownloadOptions) -> GetResult:
    """One get as ``--no-lan`` runs it: the one runner, with these download settings."""
    async with GetService(Store(home), load_config(home), download=options).open() as gets:
        return await gets.get(req)


def request(text: str, **kw) -> GetRequest:
    return GetRequest(parse_ref(text), **kw)


async def test_get_from_one_mirror_gives_exact_files(home, small_repo, start_mirror):
    """A plain get lays out a snapshot with every file byte-identical to upstream."""
    mirror = await start_mirror([small_repo])
    write_config(home, [mirror.hub_url])
    with trio.fail_after(30):
        result = await get(request("hf://acme/tiny"), home, options=fast_options())
    assert_exact(result.path, small_repo)
    assert result.manifest.commit == small_repo.commit
    assert result.fetched == sum(f.size for f in small_repo.files)
    listing = mirror.stats.by_path["/api/models/acme/tiny/revision/main"]
    assert mirror.stats.bytes_served - listing == result.fetched


async def test_second_get_is_served_by_the_store_without_network(home, small_repo, start_mirror):
    """Once complete, the same ref is answered from the store even with no mirror left."""
    mirror = await start_mirror([small_repo])
    write_config(home, [mirror.hub_url])
    with trio.fail_after(30):
        await get(request("hf://acme/tiny"), home, options=fast_options())
    mirror.faults.down = True
    served = mirror.stats.bytes_served
    result = fast_get(request("hf://acme/tiny", to=home.parent / "out"), home)[1]
    assert result is not None
    assert_exact(home.parent / "out", small_repo)
    assert mirror.stats.bytes_served == served


async def test_tampering_and_flaky_mirrors_still_yield_exact_files(home, small_repo, start_mirror):
    """A fast mirror that corrupts bytes plus a slow, flaky one end in exact files."""
    bad = await start_mirror([small_repo], faults=Faults(corrupt=True))
    flaky = await start_mirror(
        [small_repo],
        faults=Faults(fail_rate=0.2, truncate_rate=0.2, per_conn_rate=4 * MiB, seed=3),
    )
    write_config(home, [bad.hub_url, flaky.hub_url])
    with trio.fail_after(60):
        result = await get(request("hf://acme/tiny"), home, options=fast_options(max_failures=50))
    assert_exact(result.path, small_repo)


async def test_interrupted_get_resumes_without_refetching(home, tmp_path, start_mirror):
    """Cancelling a get at 40% and running it again fetches little more than the model once."""
    from p2pmodel.testing.models import make_model

    repo = make_model(tmp_path / "r", "acme/big", shards=4, shard_size=6 * MiB)
    mirror = await start_mirror([repo], faults=Faults(per_conn_rate=3 * MiB))
    write_config(home, [mirror.hub_url])
    total = sum(f.size for f in repo.files)
    opts = fast_options(connections=2, chunk_size=4 * MiB, save_interval=0.1)
    with trio.move_on_after(30) as scope:
        async with trio.open_nursery() as n:
            n.start_soon(lambda: get(request("hf://acme/big"), home, options=opts))
            while mirror.stats.bytes_served < total * 0.4:  # noqa: ASYNC110 (bounded poll)
                await trio.sleep(0.02)
            n.cancel_scope.cancel()
    assert not scope.cancelled_caught
    # Let the mirror notice the closed connections while it is still throttled: unthrottled,
    # its count-before-send would book a whole 1 MiB block per dead connection.
    with trio.fail_after(10):
        while mirror.stats.open_connections:  # noqa: ASYNC110 (bounded poll of its state)
            await trio.sleep(0.02)
    mirror.faults.per_conn_rate = None
    with trio.fail_after(30):
        result = await get(request("hf://acme/big"), home, options=fast_options(connections=4))
    assert_exact(result.path, repo)
    assert mirror.stats.bytes_served <= total * 1.1, (mirror.stats.bytes_served, total)


async def test_every_mirror_down_is_a_source_error_naming_them(home, small_repo, start_mirror):
    """When no mirror answers, the error names each mirror and its failure."""
    a = await start_mirror([small_repo], faults=Faults(down=True))
    b = await start_mirror([small_repo], faults=Faults(down=True))
    write_config(home, [a.hub_url, b.hub_url])
    with trio.fail_after(30), pytest.raises(SourceError) as err:
        await get(request("hf://acme/tiny"), home, options=fast_options())
    assert a.hub_url.split("//")[1] in str(err.value)
    assert b.hub_url.split("//")[1] in str(err.value)


async def test_mirrors_all_down_mid_download_fail_with_data_kept(home, small_repo, start_mirror):
    """If mirrors die after the listing, get fails with a SourceError and keeps what it has."""
    mirror = await start_mirror([small_repo])
    write_config(home, [mirror.hub_url])
    mirror.faults.missing = {f.path for f in small_repo.files if f.lfs}
    with trio.fail_after(30), pytest.raises(SourceError, match="404"):
        await get(request("hf://acme/tiny"), home, options=fast_options(max_failures=2))
    store = Store(home)
    small = [f for f in small_repo.files if not f.lfs]
    assert all(store.has_blob(f"gitsha1:{f.gitsha1}", f.size) for f in small)


async def test_corruption_everywhere_is_an_integrity_error(home, small_repo, start_mirror):
    """When every mirror serves wrong bytes, get stops with a digest-mismatch error."""
    a = await start_mirror([small_repo], faults=Faults(corrupt=True))
    b = await start_mirror([small_repo], faults=Faults(corrupt=True))
    write_config(home, [a.hub_url, b.hub_url])
    with trio.fail_after(30), pytest.raises(IntegrityError, match="mismatch"):
        await get(request("hf://acme/tiny"), home, options=fast_options())
    assert not any(Store(home).snapshots.rglob("*.safetensors"))


async def test_unknown_repository_is_a_user_error(home, small_repo, start_mirror):
    """A repository the mirrors do not know is reported as not found, not as a network error."""
    mirror = await start_mirror([small_repo])
    write_config(home, [mirror.hub_url])
    with trio.fail_after(30), pytest.raises(UserError, match="not found"):
        await get(request("hf://acme/nope"), home, options=fast_options())


async def test_modelscope_ref(home, small_repo, start_mirror):
    """ms:// references list through the ModelScope API and give exact files."""
    mirror = await start_mirror([small_repo])
    write_config(home, [mirror.hub_url], origin="https://www.modelscope.cn/")
    with trio.fail_after(30):
        result = await get(request("ms://acme/tiny"), home, options=fast_options())
    assert_exact(result.path, small_repo)


async def test_release_url_goes_through_rewrite_rule(home, tmp_path, start_mirror):
    """A GitHub release URL is rewritten to a mirror and checked against --sha256."""
    asset = make_single_file(tmp_path / "assets", "w.safetensors", 3 * MiB + 7, seed=5)
    url_path = "/acme/tools/releases/download/v1/w.safetensors"
    mirror = await start_mirror(singles={url_path: asset})
    write_config(home, [mirror.hub_url], origin="https://github.com/")
    ref = f"https://github.com{url_path}"
    with trio.fail_after(30):
        result = await get(request(ref, sha256=asset.sha256), home, options=fast_options())
    assert (result.path / "w.safetensors").read_bytes() == asset.data_path.read_bytes()
    with trio.fail_after(30), pytest.raises(IntegrityError):
        await get(request(ref, sha256="0" * 64), home, options=fast_options())


async def test_release_url_without_digest_is_stored_with_a_warning(home, tmp_path, start_mirror):
    """A URL with no known digest is fetched, hashed and stored, with a warning."""
    asset = make_single_file(tmp_path / "assets", "m.bin", MiB, seed=6)
    mirror = await start_mirror(singles={"/f/m.bin": asset})
    with trio.fail_after(30):
        result = await get(request(f"{mirror.hub_url}/f/m.bin"), home, options=fast_options())
    assert result.warnings
    assert result.manifest.files[0].digest == f"sha256:{asset.sha256}"
    assert (result.path / "m.bin").read_bytes() == asset.data_path.read_bytes()


async def test_shared_blob_is_fetched_once(home, tmp_path, start_mirror):
    """Two models sharing a file store and fetch it only once."""
    from p2pmodel.testing.models import make_model

    a = make_model(tmp_path / "r", "acme/one", shards=2, shard_size=MiB, seed=1)
    b = make_model(tmp_path / "r", "acme/two", shards=2, shard_size=MiB, seed=1)
    mirror = await start_mirror([a, b])
    write_config(home, [mirror.hub_url])
    with trio.fail_after(30):
        await get(request("hf://acme/one"), home, options=fast_options())
        before = mirror.stats.bytes_served
        await get(request("hf://acme/two"), home, options=fast_options())
    shared = {f.sha256 for f in a.files} & {f.sha256 for f in b.files}
    assert shared
    new_bytes = sum(f.size for f in b.files if f.sha256 not in shared)
    listing = mirror.stats.by_path["/api/models/acme/two/revision/main"]
    assert mirror.stats.bytes_served - before - listing == new_bytes


async def test_export_to_directory_hardlinks(home, small_repo, start_mirror, tmp_path):
    """--to places the files at their repo paths as hardlinks of the store's blobs."""
    mirror = await start_mirror([small_repo])
    write_config(home, [mirror.hub_url])
    out = tmp_path / "model"
    with trio.fail_after(30):
        result = await get(request("hf://acme/tiny", to=out), home, options=fast_options())
    assert result.path == out
    assert_exact(out, small_repo)
    f = next(f for f in result.manifest.files if f.size > MiB)
    assert os.stat(out / f.path).st_ino == Store(home).blob_path(f.digest).stat().st_ino


async def test_cdn_redirect_is_reused_across_ranges(home, small_repo, start_mirror):
    """Ranges of one file go straight to the CDN after the hub's first redirect."""
    mirror = await start_mirror([small_repo])
    write_config(home, [mirror.hub_url])
    with trio.fail_after(30):
        await get(request("hf://acme/tiny"), home, options=fast_options(connections=2))
    chunks = sum(-(-f.size // MiB) for f in small_repo.files if f.lfs)
    small = sum(1 for f in small_repo.files if not f.lfs)
    lfs_files = sum(1 for f in small_repo.files if f.lfs)
    # listing + small files + one CDN request per chunk + at most one hub redirect per
    # connection and file (without reuse it would be a redirect per chunk).
    assert mirror.stats.requests <= 1 + small + chunks + 2 * lfs_files


async def test_a_mirror_slow_to_answer_loses_the_race(home, small_repo, start_mirror):
    """When the first mirror keeps connections waiting, the next one is started and wins."""
    slow = await start_mirror([small_repo], faults=Faults(first_byte_delay=5.0))
    fast = await start_mirror([small_repo])
    write_config(home, [slow.hub_url, fast.hub_url])
    with trio.fail_after(30):
        result = await get(request("hf://acme/tiny"), home, options=fast_options())
    assert_exact(result.path, small_repo)
    assert fast.stats.bytes_served > 0.9 * sum(f.size for f in small_repo.files)


async def test_two_gets_of_one_model_at_once_fetch_it_once(home, small_repo, start_mirror):
    """Concurrent gets sharing a home never write one partial file twice: the second waits
    for the first's blobs and then uses them."""
    mirror = await start_mirror([small_repo], faults=Faults(per_conn_rate=8 * MiB))
    write_config(home, [mirror.hub_url])
    results = []

    async def one() -> None:
        results.append(await get(request("hf://acme/tiny"), home, options=fast_options()))

    # The listing is resolved once before: what is measured here is the blob fetching.
    listing_bytes = mirror.stats.by_path.get("/api/models/acme/tiny/revision/main", 0)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
    for r in results:
        assert_exact(r.path, small_repo)
    total = sum(f.size for f in small_repo.files)
    listings = mirror.stats.by_path["/api/models/acme/tiny/revision/main"] - listing_bytes
    assert mirror.stats.bytes_served - listings <= total


async def test_mirror_dying_mid_get_is_a_source_error(home, small_repo, start_mirror):
    """When the mirror (and the CDN its redirects point to) dies mid-download, every worker
    fails at once and get ends with a SourceError, not an internal error."""
    mirror = await start_mirror([small_repo], faults=Faults(per_conn_rate=2 * MiB))
    write_config(home, [mirror.hub_url])
    total = sum(f.size for f in small_repo.files)

    async def kill_it() -> None:
        while mirror.stats.bytes_served < total * 0.3:  # noqa: ASYNC110 (bounded by fail_after)
            await trio.sleep(0.02)
        mirror.faults.down = True

    caught: list[Exception] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_it)
            try:
                await get(request("hf://acme/tiny"), home, options=fast_options(max_failures=2))
            except Exception as e:
                caught.append(e)
            nursery.cancel_scope.cancel()
    assert [type(e) for e in caught] == [SourceError], caught


async def test_a_blob_asked_again_after_wrong_bytes_everywhere_fails_at_once(
    home, small_repo, start_mirror
):
    """git-lfs asks the agent again for an object every mirror served with a wrong digest:
    the second ask fails at once, naming the ban, and asks the mirror for nothing (before, a
    lone agent waited for a peer to bring the blob, for ever)."""
    mirror = await start_mirror([small_repo], faults=Faults(corrupt=True))
    write_config(home, [mirror.hub_url])
    f = max(small_repo.files, key=lambda f: f.size)
    url = f"https://huggingface.co/acme/tiny/resolve/{small_repo.commit}/{f.path}"
    digest = f"sha256:{f.sha256}"
    async with GetService(Store(home), load_config(home), download=fast_options()).open() as gets:
        with trio.fail_after(30), pytest.raises((IntegrityError, SourceError)):
            await gets.fetch_blob(digest, f.size, [url])
        served = mirror.stats.bytes_served
        with trio.fail_after(5), pytest.raises(SourceError, match="wrong bytes"):
            await gets.fetch_blob(digest, f.size, [url])
        assert mirror.stats.bytes_served == served
    assert not Store(home).has_blob(digest, f.size)
