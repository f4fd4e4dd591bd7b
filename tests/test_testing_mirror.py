"""The fake upstream mirror speaks the HF / ModelScope / release shapes and its faults work."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from p2pmodel.core.hfapi import git_blob_id, lfs_pointer
from p2pmodel.testing.mirror import (
    CORRUPT_OFFSET,
    Faults,
    Mirror,
    RangeNotSatisfiable,
    corrupt_block,
    parse_range,
)
from p2pmodel.testing.models import MIB, Repo, RepoFile, make_model, make_single_file

REPO_ID = "acme/flux"
SHARD = "transformer/diffusion_pytorch_model-00001-of-00002.safetensors"
ASSET_URL = "/acme/tools/releases/download/v1/weights.safetensors"


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return make_model(tmp_path / "data", REPO_ID, shards=2, shard_size=3 * MIB // 2, seed=7)


@pytest.fixture
def asset(tmp_path: Path) -> RepoFile:
    return make_single_file(tmp_path / "assets", "weights.safetensors", 256 * 1024, seed=1)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def start(
    nursery: trio.Nursery, repo: Repo, asset: RepoFile | None = None, faults: Faults | None = None
) -> Mirror:
    mirror = Mirror([repo], {ASSET_URL: asset} if asset else {}, faults=faults)
    await nursery.start(mirror.run)
    return mirror


def file_of(repo: Repo, path: str) -> RepoFile:
    found = repo.file(path)
    assert found is not None
    return found


def resolve_url(mirror: Mirror, path: str, rev: str = "main") -> str:
    return f"{mirror.hub_url}/{REPO_ID}/resolve/{rev}/{path}"


# --- models ------------------------------------------------------------------------------------


def test_make_model_is_deterministic_and_classifies_lfs(tmp_path: Path) -> None:
    """Same arguments give the same commit and digests; weights and big files are LFS."""
    first = make_model(tmp_path / "a", REPO_ID, shards=2, shard_size=2 * MIB, seed=3)
    again = make_model(tmp_path / "b", REPO_ID, shards=2, shard_size=2 * MIB, seed=3)
    other = make_model(tmp_path / "c", REPO_ID, shards=2, shard_size=2 * MIB, seed=4)
    assert first.commit == again.commit != other.commit
    assert [f.sha256 for f in first.files] == [f.sha256 for f in again.files]
    shard = file_of(first, "transformer/diffusion_pytorch_model-00002-of-00002.safetensors")
    content = shard.data_path.read_bytes()
    assert len(content) == shard.size == 2 * MIB
    assert hashlib.sha256(content).hexdigest() == shard.sha256
    assert hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest() == shard.gitsha1
    assert {f.path for f in first.files if f.lfs} == {
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
    }
    assert "model_index.json" in {f.path for f in first.files}
    assert Repo.from_json(first.to_json()) == first


def test_make_model_single_file_and_custom_small_files(tmp_path: Path) -> None:
    """`single_file` gives one unsuffixed weights file and `small_files` replaces the defaults."""
    repo = make_model(
        tmp_path, "a/b", shards=1, shard_size=10, small_files={"x.bin": b"12"}, single_file=True
    )
    assert [(f.path, f.lfs) for f in repo.files] == [
        ("transformer/diffusion_pytorch_model.safetensors", True),
        ("x.bin", True),
    ]


# --- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=90-5000", (90, 99)),
        ("bytes=9-3", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    """Single byte ranges parse to inclusive spans; malformed ones mean the whole file."""
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_parse_range_unsatisfiable(header: str) -> None:
    """Ranges starting past the end, and empty suffixes, are unsatisfiable."""
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_corrupt_block_flips_one_byte_per_mib_wherever_the_block_starts() -> None:
    """Corruption depends on file offsets only, so any block split damages the same bytes."""
    data = bytes(3 * MIB)
    whole = corrupt_block(data, 0, len(data))
    pieces = b"".join(
        corrupt_block(data[i : i + 4096], i, len(data)) for i in range(0, 3 * MIB, 4096)
    )
    assert whole == pieces
    assert [i for i, b in enumerate(whole) if b] == [CORRUPT_OFFSET + k * MIB for k in range(3)]
    assert corrupt_block(b"abc", 0, 3) == b"ab" + bytes([ord("c") ^ 0xFF])


# --- listings ----------------------------------------------------------------------------------


async def test_hf_listing_shape(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """The HF model API lists every file with size, blob id and LFS metadata for LFS files only."""
    mirror = await start(nursery, repo)
    for rev in ("main", repo.commit):
        url = f"{mirror.hub_url}/api/models/{REPO_ID}/revision/{rev}?blobs=true"
        response = await client.get(url)
        assert response.status_code == 200
        info = response.json()
        assert info["id"] == REPO_ID
        assert info["sha"] == repo.commit
        siblings = {s["rfilename"]: s for s in info["siblings"]}
        assert set(siblings) == {f.path for f in repo.files}
        for f in repo.files:
            sibling = siblings[f.path]
            if f.lfs:  # the blob id and size of the LFS pointer, as the Hub says
                pointer = lfs_pointer(f.sha256, f.size)
                assert (sibling["size"], sibling["blobId"]) == (f.size, git_blob_id(pointer))
                lfs = {"sha256": f.sha256, "size": f.size, "pointerSize": len(pointer)}
                assert sibling["lfs"] == lfs
            else:
                assert (sibling["size"], sibling["blobId"]) == (f.size, f.gitsha1)
                assert "lfs" not in sibling


async def test_modelscope_listing_shape(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """The ModelScope file API lists every file as a blob with its sha256 and the commit."""
    mirror = await start(nursery, repo)
    url = f"{mirror.hub_url}/api/v1/models/{REPO_ID}/repo/files?Revision=main&Recursive=true"
    body = (await client.get(url)).json()
    assert body["Code"] == 200
    assert body["Success"] is True
    files = {f["Path"]: f for f in body["Data"]["Files"]}
    assert set(files) == {f.path for f in repo.files}
    shard = file_of(repo, SHARD)
    assert files[SHARD] == {
        "Path": SHARD,
        "Name": SHARD.rsplit("/", 1)[1],
        "Type": "blob",
        "Size": shard.size,
        "Sha256": shard.sha256,
        "Revision": repo.commit,
    }


async def test_unknown_repo_revision_and_file_are_404(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """Unknown repos, revisions and paths answer 404 with the Hub's error bodies."""
    mirror = await start(nursery, repo)
    api = f"{mirror.hub_url}/api/models"
    response = await client.get(f"{api}/acme/nope/revision/main")
    assert (response.status_code, response.json()) == (404, {"error": "Repository not found"})
    response = await client.get(f"{api}/{REPO_ID}/revision/dev")
    assert (response.status_code, response.json()) == (404, {"error": "Invalid rev id: dev"})
    assert (await client.get(resolve_url(mirror, "nope.txt"))).status_code == 404
    assert (await client.get(resolve_url(mirror, "README.md", rev="dev"))).status_code == 404
    assert (await client.get(f"{mirror.cdn_url}/lfs/{'0' * 64}")).status_code == 404
    ms = f"{mirror.hub_url}/api/v1/models/acme/nope/repo/files?Revision=main"
    response = await client.get(ms)
    assert (response.status_code, response.json()["Success"]) == (404, False)


# --- files -------------------------------------------------------------------------------------


async def test_small_file_is_served_directly(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """A non-LFS file is served by the hub with its git blob id as ETag and the commit."""
    mirror = await start(nursery, repo)
    readme = file_of(repo, "README.md")
    response = await client.get(resolve_url(mirror, "README.md"))
    assert response.status_code == 200
    assert response.content == readme.data_path.read_bytes()
    assert response.headers["ETag"] == f'"{readme.gitsha1}"'
    assert response.headers["X-Repo-Commit"] == repo.commit
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Length"] == str(readme.size)


async def test_lfs_file_redirects_to_cdn_with_linked_headers(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """An LFS file answers 302 to the cdn port with X-Linked-Etag/Size, for GET and HEAD."""
    mirror = await start(nursery, repo)
    shard = file_of(repo, SHARD)
    for method in ("GET", "HEAD"):
        response = await client.request(method, resolve_url(mirror, SHARD))
        assert response.status_code == 302
        assert response.headers["Location"] == f"{mirror.cdn_url}/lfs/{shard.sha256}"
        assert response.headers["X-Linked-Etag"] == f'"{shard.sha256}"'
        assert response.headers["ETag"] == f'"{shard.sha256}"'
        assert response.headers["X-Linked-Size"] == str(shard.size)
        assert response.headers["X-Repo-Commit"] == repo.commit
        assert response.content == b""


async def test_following_the_redirect_gives_exact_bytes(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """Following the LFS redirect (by branch or commit) yields the file's exact bytes."""
    mirror = await start(nursery, repo)
    shard = file_of(repo, SHARD)
    for rev in ("main", repo.commit):
        response = await client.get(resolve_url(mirror, SHARD, rev), follow_redirects=True)
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == shard.sha256


async def test_modelscope_resolve_and_release_asset_are_served_directly(
    nursery: trio.Nursery, repo: Repo, asset: RepoFile, client: httpx.AsyncClient
) -> None:
    """ModelScope resolve URLs and release-asset URLs serve the bytes without redirecting."""
    mirror = await start(nursery, repo, asset)
    shard = file_of(repo, SHARD)
    response = await client.get(f"{mirror.hub_url}/models/{REPO_ID}/resolve/master/{SHARD}")
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == shard.sha256
    response = await client.get(mirror.hub_url + ASSET_URL)
    assert response.status_code == 200
    assert response.content == asset.data_path.read_bytes()


async def test_head_has_get_headers_and_no_body(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """HEAD answers with the GET headers, including the full Content-Length, and no body."""
    mirror = await start(nursery, repo)
    shard = file_of(repo, SHARD)
    response = await client.head(f"{mirror.cdn_url}/lfs/{shard.sha256}")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(shard.size)
    assert response.content == b""
    assert mirror.stats.bytes_served == 0


async def test_ranges(nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient) -> None:
    """Single ranges answer 206 with Content-Range, suffix ranges work, past-the-end is 416."""
    mirror = await start(nursery, repo)
    shard = file_of(repo, SHARD)
    content = shard.data_path.read_bytes()
    size = shard.size
    url = f"{mirror.cdn_url}/lfs/{shard.sha256}"
    cases = {
        "bytes=10-19": (10, 19),
        f"bytes={size - 5}-": (size - 5, size - 1),
        "bytes=-7": (size - 7, size - 1),
        f"bytes={size - 3}-{size + 100}": (size - 3, size - 1),
    }
    for header, (first, last) in cases.items():
        response = await client.get(url, headers={"Range": header})
        assert response.status_code == 206
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert response.content == content[first : last + 1]
    response = await client.get(url, headers={"Range": f"bytes={size}-"})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{size}"
    response = await client.get(resolve_url(mirror, "README.md"), headers={"Range": "bytes=2-4"})
    assert (response.status_code, response.content) == (
        206,
        file_of(repo, "README.md").data_path.read_bytes()[2:5],
    )


async def test_keep_alive_serves_many_requests_per_connection(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """Sequential requests from one client reuse a single TCP connection per port."""
    mirror = await start(nursery, repo)
    for _ in range(5):
        response = await client.get(resolve_url(mirror, "README.md"))
        assert response.status_code == 200
    await client.get(resolve_url(mirror, SHARD), follow_redirects=True)
    assert mirror.stats.requests == 7
    assert mirror.stats.connections == 2  # one to the hub, one to the cdn


async def test_byte_counters_count_bodies_sent(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """`bytes_served` sums body bytes on both ports, /_stats reports it, reset zeroes it."""
    mirror = await start(nursery, repo)
    shard = file_of(repo, SHARD)
    listing = await client.get(f"{mirror.hub_url}/api/models/{REPO_ID}/revision/main")
    readme = await client.get(resolve_url(mirror, "README.md"))
    weights = await client.get(resolve_url(mirror, SHARD), follow_redirects=True)
    expected = len(listing.content) + len(readme.content) + len(weights.content)
    assert mirror.stats.bytes_served == expected
    stats = (await client.get(f"{mirror.hub_url}/_stats")).json()
    assert stats["bytes_served"] == expected
    assert stats["requests"] == 4
    assert stats["by_path"][f"/lfs/{shard.sha256}"] == shard.size
    assert stats["by_path"][f"/{REPO_ID}/resolve/main/{SHARD}"] == 0
    assert stats["by_client"] == {"127.0.0.1": expected}
    await client.post(f"{mirror.hub_url}/_stats/reset")
    assert (mirror.stats.bytes_served, mirror.stats.requests, mirror.stats.by_path) == (0, 0, {})
    assert mirror.stats.by_client == {}


async def test_byte_counters_by_client_address(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """`by_client` splits body bytes by the client's IP; control replies are not counted."""
    mirror = await start(nursery, repo)
    shard = file_of(repo, SHARD)
    url = f"{mirror.cdn_url}/lfs/{shard.sha256}"
    first = await client.get(url, headers={"Range": "bytes=0-999"})
    async with httpx.AsyncClient(
        timeout=10, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    ) as other:
        second = await other.get(url)
    await client.get(f"{mirror.hub_url}/_stats")
    assert (len(first.content), len(second.content)) == (1000, shard.size)
    assert mirror.stats.by_client == {"127.0.0.1": 1000, "127.0.0.2": shard.size}
    assert mirror.stats.bytes_served == 1000 + shard.size


# --- faults ------------------------------------------------------------------------------------


async def test_corrupt_fault_damages_every_full_download(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """With `corrupt`, the byte at offset 12345 of each MiB is flipped, and small files too."""
    mirror = await start(nursery, repo, faults=Faults(corrupt=True))
    shard = file_of(repo, SHARD)
    good = shard.data_path.read_bytes()
    bad = (await client.get(resolve_url(mirror, SHARD), follow_redirects=True)).content
    assert len(bad) == len(good)
    assert [i for i in range(len(good)) if good[i] != bad[i]] == [
        CORRUPT_OFFSET,
        MIB + CORRUPT_OFFSET,
    ]
    readme = await client.get(resolve_url(mirror, "README.md"))
    assert readme.content != file_of(repo, "README.md").data_path.read_bytes()


async def test_fail_rate_answers_retry_after(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """`fail_rate=1` makes file requests fail with Retry-After; listings only with `fail_api`."""
    faults = Faults(fail_rate=1.0)
    mirror = await start(nursery, repo, faults=faults)
    shard = file_of(repo, SHARD)
    for url in (resolve_url(mirror, SHARD), f"{mirror.cdn_url}/lfs/{shard.sha256}"):
        response = await client.get(url)
        assert (response.status_code, response.headers["Retry-After"]) == (503, "0")
    listing = f"{mirror.hub_url}/api/models/{REPO_ID}/revision/main"
    assert (await client.get(listing)).status_code == 200
    faults.fail_api, faults.status_on_fail, faults.retry_after = True, 429, 1.5
    response = await client.get(listing)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "1.5")


async def test_truncate_fault_cuts_the_body_and_closes(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """`truncate_rate=1` announces the full length, sends less, then closes the connection."""
    mirror = await start(nursery, repo, faults=Faults(truncate_rate=1.0))
    shard = file_of(repo, SHARD)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(f"{mirror.cdn_url}/lfs/{shard.sha256}")
    assert mirror.stats.bytes_served < shard.size


async def test_down_fault_hangs_up_and_can_be_lifted(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """A `down` mirror closes connections unanswered; POST /_faults brings it back."""
    mirror = await start(nursery, repo, faults=Faults(down=True))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(resolve_url(mirror, "README.md"))
    response = await client.post(f"{mirror.hub_url}/_faults", json={"down": False})
    assert response.json()["down"] is False
    assert (await client.get(resolve_url(mirror, "README.md"))).status_code == 200


async def test_faults_endpoint_updates_and_rejects_bad_fields(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """POST /_faults changes a running mirror's faults and refuses unknown or mistyped fields."""
    mirror = await start(nursery, repo)
    url = f"{mirror.hub_url}/_faults"
    response = await client.post(url, json={"missing": ["README.md"], "per_conn_rate": 5000})
    assert response.status_code == 200
    assert mirror.faults.missing == {"README.md"}
    assert mirror.faults.per_conn_rate == 5000
    assert (await client.get(resolve_url(mirror, "README.md"))).status_code == 404
    for bad in ({"nope": 1}, {"fail_rate": "x"}, {"total_rate": 0}, [1]):
        assert (await client.post(url, json=bad)).status_code == 400
    assert mirror.faults.per_conn_rate == 5000


async def test_per_conn_rate_limits_a_download(
    nursery: trio.Nursery, repo: Repo, asset: RepoFile, client: httpx.AsyncClient
) -> None:
    """256 KiB at 1 MiB/s per connection takes at least 0.2 s."""
    mirror = await start(nursery, repo, asset, Faults(per_conn_rate=MIB))
    started = trio.current_time()
    response = await client.get(mirror.hub_url + ASSET_URL)
    assert response.content == asset.data_path.read_bytes()
    assert trio.current_time() - started >= 0.2


async def test_total_rate_is_shared_by_connections(
    nursery: trio.Nursery, repo: Repo, asset: RepoFile, client: httpx.AsyncClient
) -> None:
    """Two parallel 256 KiB downloads at 2 MiB/s total take at least 0.2 s."""
    mirror = await start(nursery, repo, asset, Faults(total_rate=2 * MIB))
    sizes: list[int] = []

    async def fetch() -> None:
        sizes.append(len((await client.get(mirror.hub_url + ASSET_URL)).content))

    started = trio.current_time()
    async with trio.open_nursery() as downloads:
        downloads.start_soon(fetch)
        downloads.start_soon(fetch)
    assert sizes == [asset.size, asset.size]
    assert mirror.stats.connections == 2
    assert trio.current_time() - started >= 0.2


async def test_first_byte_delay_holds_file_requests(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """`first_byte_delay` makes file requests wait at least that long before answering."""
    mirror = await start(nursery, repo, faults=Faults(first_byte_delay=0.3))
    started = trio.current_time()
    await client.get(resolve_url(mirror, "README.md"))
    assert trio.current_time() - started >= 0.3


async def test_garbage_request_gets_400(nursery: trio.Nursery, repo: Repo) -> None:
    """A request that is not HTTP gets a 400 and the connection is closed."""
    mirror = await start(nursery, repo)
    port = int(mirror.hub_url.rsplit(":", 1)[1])
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")


# --- command line ------------------------------------------------------------------------------


async def test_cli_writes_ready_file_and_serves(
    tmp_path: Path, repo: Repo, asset: RepoFile, client: httpx.AsyncClient
) -> None:
    """The CLI mirror writes its URLs to the ready file, serves, and exits 0 on SIGTERM."""
    repo_json = tmp_path / "repo.json"
    repo_json.write_text(repo.to_json())
    ready = trio.Path(tmp_path / "ready.json")
    command = [
        sys.executable, "-m", "p2pmodel.testing.mirror", "--repo-json", str(repo_json),
        "--single", f"{ASSET_URL}={asset.data_path}", "--host", "127.0.0.1",
        "--port", "0", "--cdn-port", "0", "--ready-file", str(ready),
    ]  # fmt: skip
    async with trio.open_nursery() as nursery:
        start_process = partial(trio.run_process, command, check=False, stdout=subprocess.PIPE)
        process: trio.Process = await nursery.start(start_process)
        assert process.stdout is not None
        printed = b""
        with trio.fail_after(15):
            # The mirror prints its URLs once the ready file is in place.
            while not printed.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, "the mirror exited before it was ready"
                printed += chunk
        urls = json.loads(await ready.read_text())
        assert urls == json.loads(printed)
        shard = file_of(repo, SHARD)
        hub = urls["hub_url"]
        weights = await client.get(f"{hub}/{REPO_ID}/resolve/main/{SHARD}", follow_redirects=True)
        assert hashlib.sha256(weights.content).hexdigest() == shard.sha256
        assert (await client.get(hub + ASSET_URL)).content == asset.data_path.read_bytes()
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await process.wait()
    assert process.returncode == 0
    assert not await ready.exists()


def test_the_real_client_downloads_straight_from_the_test_mirror(tmp_path: Path) -> None:
    """The test mirror speaks enough of the Hub (info, tree, resolve with CDN redirects) for
    ``snapshot_download`` to fetch from it directly: the baseline of scripts/bench-hf."""
    import os

    from huggingface_hub import snapshot_download

    from p2pmodel.testing.mirror import spawn

    repo = make_model(tmp_path / "r", "acme/direct", shards=2, shard_size=MIB)
    (tmp_path / "repo.json").write_text(repo.to_json())
    proc, urls = spawn(tmp_path / "repo.json", tmp_path)
    try:
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
        top = Path(
            snapshot_download(repo.repo_id, endpoint=urls["hub_url"], cache_dir=tmp_path / "c")
        )
        for f in repo.files:
            assert (top / f.path).read_bytes() == f.data_path.read_bytes()
    finally:
        proc.terminate()
        proc.wait(10)


async def test_lfs_batch_api_answers_hrefs_and_counts_bytes(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient
) -> None:
    """The batch API gives each LFS file of the repository an href on the cdn whose bytes are
    the object; an unknown oid gets a 404 error; the batch's and the object's bytes are
    counted per path."""
    mirror = await start(nursery, repo)
    shard = file_of(repo, SHARD)
    batch = f"{mirror.hub_url}/{REPO_ID}.git/info/lfs/objects/batch"
    body = {
        "operation": "download",
        "transfers": ["basic"],
        "objects": [{"oid": shard.sha256, "size": shard.size}, {"oid": "0" * 64, "size": 1}],
    }
    response = await client.post(batch, json=body)
    assert response.status_code == 200
    found, missing = response.json()["objects"]
    assert missing["error"]["code"] == 404
    href = found["actions"]["download"]["href"]
    data = (await client.get(href)).content
    assert hashlib.sha256(data).hexdigest() == shard.sha256
    by_path = mirror.stats.by_path
    assert by_path[f"/lfs/{shard.sha256}"] == shard.size
    assert by_path[f"/{REPO_ID}.git/info/lfs/objects/batch"] == len(response.content)
    nope = await client.post(f"{mirror.hub_url}/acme/nope.git/info/lfs/objects/batch", json=body)
    assert nope.status_code == 404


async def test_bare_repositories_are_served_as_static_files(
    nursery: trio.Nursery, repo: Repo, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """With a git root, files of its bare repositories are served (git's dumb HTTP); a path
    out of the root is not."""
    root = tmp_path / "git"
    (root / "acme" / "r.git" / "info").mkdir(parents=True)
    (root / "acme" / "r.git" / "info" / "refs").write_text("abc\trefs/heads/main\n")
    (tmp_path / "secret.git").mkdir()
    (tmp_path / "secret.git" / "x").write_text("no")
    mirror = Mirror([repo], git_root=root)
    await nursery.start(mirror.run)
    got = await client.get(f"{mirror.hub_url}/acme/r.git/info/refs")
    assert got.status_code == 200 and got.text.startswith("abc")
    out = await client.get(f"{mirror.hub_url}/%2E%2E/secret.git/x")
    assert out.status_code == 404
