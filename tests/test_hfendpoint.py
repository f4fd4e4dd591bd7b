"""The agent's Hugging Face endpoint, driven by the real ``huggingface_hub`` client
(``snapshot_download``, ``hf_hub_download``, the ``hf`` CLI) over real HTTP on loopback. The
agent is real (every service) on the in-memory LAN fakes, with the test mirror behind it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from p2pmodel.core.config import parse_config
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.mirror import Faults
from p2pmodel.testing.models import Repo, make_model

MiB = 1024 * 1024
TOKEN = "hf_" + "s3cr3t" * 6


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Repo]:
    root = tmp_path_factory.mktemp("hfrepos")
    model = make_model(root, "acme/tiny", shards=2, shard_size=3 * MiB)
    data = make_model(root / "d", "acme/data", shards=1, shard_size=2 * MiB, seed=7)
    gated = make_model(root / "g", "acme/gated", shards=1, shard_size=MiB, seed=9)
    return {
        "model": model,
        "dataset": Repo(data.repo_id, data.commit, data.files, repo_type="dataset"),
        "gated": Repo(gated.repo_id, gated.commit, gated.files, token=TOKEN),
    }


class Endpoint:
    """A running agent with its endpoint, and the mirror it fetches from."""

    def __init__(self, agent: Agent, mirror: MemoryMirror, other: MemoryMirror) -> None:
        self.agent = agent
        self.mirror = mirror
        self.other = other  # a second mirror, listed first, that has nothing and is untrusted

    @property
    def url(self) -> str:
        assert self.agent.hf is not None
        return self.agent.hf.url

    def served(self) -> int:
        by_path = self.mirror.mirror.stats.by_path
        return sum(n for p, n in by_path.items() if not p.startswith("/api/"))


def start_endpoint(
    nursery: trio.Nursery,
    tmp: Path,
    repos: dict[str, Repo],
    faults: Faults | None = None,
    *,
    other_repos: tuple[Repo, ...] = (),
    first: str = "other",
) -> Callable[..., Any]:
    """An agent whose mirror rule lists two mirrors: "other" (untrusted with tokens; empty
    unless ``other_repos``) and the hub (``repos``, with ``faults``), ``first`` first."""

    async def start(page: int | None = None) -> Endpoint:
        mirror = MemoryMirror(list(repos.values()), faults)
        other = MemoryMirror(list(other_repos), name="other")
        office = SimLan(mirror, lan_rate=None)
        outside = office.outside()

        def client() -> httpx.AsyncClient:
            # One client for both mirrors: "other" answers on its own host.
            async def route(request: httpx.Request) -> httpx.Response:
                if other.serves(request.url.host):
                    return await other.handle(request)
                return await mirror.handle(request)

            return httpx.AsyncClient(
                transport=httpx.MockTransport(route),
                follow_redirects=True,
                headers={"Accept-Encoding": "identity"},
            )

        outside.http = client
        use = ["http://other.mirror.test/", "http://hub.mirror.test/"]
        raw = {
            "mirror": [
                {"for": "https://huggingface.co/", "use": use[:: 1 if first == "other" else -1]}
            ],
            "hf_token_hosts": ["http://hub.mirror.test/"],
        }
        config = parse_config(raw, {})
        home = tmp / f"home{len(list(tmp.glob('home*')))}"
        home.mkdir()
        opts = AgentOptions(rpc_port=0, hf_endpoint="127.0.0.1:0")
        agent: Agent = await nursery.start(Agent(home, config, opts, outside).run)
        if page is not None:
            assert agent.hf is not None
            agent.hf.page = page
        return Endpoint(agent, mirror, other)

    return start


@pytest.fixture
async def endpoint(
    nursery: trio.Nursery, tmp_path: Path, repos: dict[str, Repo]
) -> AsyncIterator[Callable[..., Any]]:
    yield start_endpoint(nursery, tmp_path, repos)


def hf_env(cache: Path) -> None:
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HOME"] = str(cache.parent / "hf-home")


async def snapshot(url: str, repo: Repo, cache: Path, **kw: Any) -> Path:
    """``snapshot_download`` in a thread (the client is synchronous)."""
    from huggingface_hub import snapshot_download

    hf_env(cache)
    kind = "dataset" if repo.repo_type == "dataset" else None
    path = await trio.to_thread.run_sync(
        lambda: snapshot_download(repo.repo_id, repo_type=kind, endpoint=url, cache_dir=cache, **kw)
    )
    return Path(path)


def assert_exact(top: Path, repo: Repo) -> None:
    for f in repo.files:
        assert (top / f.path).read_bytes() == f.data_path.read_bytes(), f.path


def size(repo: Repo) -> int:
    return sum(f.size for f in repo.files)


async def test_snapshot_download_cold_then_warm(endpoint, tmp_path: Path, repos):
    """A cold ``snapshot_download`` takes the model from the mirror through the agent, once;
    a second one into another cache takes nothing from the mirror; both are exact and laid
    out as the Hub's (blobs named by ETag, snapshot symlinks, refs/main)."""
    ep = await endpoint()
    repo = repos["model"]
    top = await snapshot(ep.url, repo, tmp_path / "c1")
    assert_exact(top, repo)
    assert ep.served() == size(repo)
    cache = tmp_path / "c1" / "models--acme--tiny"
    assert (cache / "refs" / "main").read_text() == repo.commit
    lfs = next(f for f in repo.files if f.lfs)
    assert (cache / "blobs" / lfs.sha256).read_bytes() == lfs.data_path.read_bytes()
    small = next(f for f in repo.files if not f.lfs)
    assert (cache / "blobs" / small.gitsha1).exists()
    again = await snapshot(ep.url, repo, tmp_path / "c2")
    assert_exact(again, repo)
    assert ep.served() == size(repo)
    # What the endpoint fetched is offered to the office like any stored blob.
    assert all(ep.agent.swarm.seeding(f"sha256:{f.sha256}") for f in repo.files if f.lfs)


async def test_hf_hub_download_one_file_and_a_dataset(endpoint, tmp_path: Path, repos):
    """``hf_hub_download`` of one model file, and ``snapshot_download`` of a dataset."""
    from huggingface_hub import hf_hub_download

    ep = await endpoint()
    repo = repos["model"]
    want = next(f for f in repo.files if f.lfs)
    hf_env(tmp_path / "c")
    got = await trio.to_thread.run_sync(
        lambda: hf_hub_download(repo.repo_id, want.path, endpoint=ep.url, cache_dir=tmp_path / "c")
    )
    assert Path(got).read_bytes() == want.data_path.read_bytes()
    assert ep.served() == want.size
    data = repos["dataset"]
    top = await snapshot(ep.url, data, tmp_path / "d")
    assert_exact(top, data)
    assert (tmp_path / "d" / "datasets--acme--data" / "refs" / "main").exists()


async def test_many_pages_of_tree(endpoint, tmp_path: Path, repos):
    """A tree longer than one page is followed through its absolute ``Link`` URLs."""
    from huggingface_hub import HfApi

    ep = await endpoint(page=2)
    repo = repos["model"]
    hf_env(tmp_path / "c")
    api = HfApi(endpoint=ep.url)
    files = await trio.to_thread.run_sync(
        lambda: [
            f.path
            for f in api.list_repo_tree(repo.repo_id, recursive=True, revision=repo.commit)
            if hasattr(f, "size")
        ]
    )
    assert sorted(files) == sorted(f.path for f in repo.files)
    async with httpx.AsyncClient() as http:
        r = await http.get(
            f"{ep.url}/api/models/{repo.repo_id}/tree/{repo.commit}?recursive=true&expand=false"
        )
    assert r.headers["link"].startswith(f"<{ep.url}/api/models/")
    top = await snapshot(ep.url, repo, tmp_path / "c")
    assert_exact(top, repo)


async def test_two_clients_at_once_cause_one_fetch(endpoint, tmp_path: Path, repos):
    """Two ``snapshot_download``s of the same cold model at once: the mirror serves it once."""
    ep = await endpoint()
    repo = repos["model"]
    tops: list[Path] = []
    async with trio.open_nursery() as nursery:
        for i in range(2):

            async def one(i: int = i) -> None:
                tops.append(await snapshot(ep.url, repo, tmp_path / f"c{i}"))

            nursery.start_soon(one)
    for top in tops:
        assert_exact(top, repo)
    assert ep.served() == size(repo)


async def test_gated_repo_needs_a_good_token_which_goes_nowhere_else(
    endpoint, tmp_path: Path, repos, caplog
):
    """A gated repository: a bad token gets ``GatedRepoError``, the good one the files; the
    token reaches only the trusted mirror (not the untrusted one listed first, not its CDN)
    and no log line."""
    from huggingface_hub.errors import GatedRepoError

    ep = await endpoint()
    repo = repos["gated"]
    with pytest.raises(GatedRepoError):
        await snapshot(ep.url, repo, tmp_path / "bad", token="hf_wrong")
    top = await snapshot(ep.url, repo, tmp_path / "good", token=TOKEN)
    assert_exact(top, repo)
    with pytest.raises(GatedRepoError):  # pinned now, but this token still has no access
        await snapshot(ep.url, repo, tmp_path / "bad2", token="hf_wrong")
    assert ep.mirror.mirror.stats.authorized.get("hub", 0) > 0
    assert ep.mirror.mirror.stats.authorized.get("cdn", 0) == 0
    assert ep.other.mirror.stats.authorized == {}
    assert TOKEN not in caplog.text


async def test_bad_bytes_never_complete_in_the_client_cache(nursery, tmp_path: Path, repos):
    """The only mirror corrupts what it sends: the client fails, and no file in its cache
    holds the full size with wrong bytes."""
    import httpx2  # the client's HTTP library
    from huggingface_hub.errors import HfHubHTTPError

    ep = await start_endpoint(nursery, tmp_path, repos, Faults(corrupt=True))()
    repo = repos["model"]
    with pytest.raises((OSError, HfHubHTTPError, httpx2.HTTPError)):
        await snapshot(ep.url, repo, tmp_path / "c")
    blobs = tmp_path / "c" / "models--acme--tiny" / "blobs"
    for f in repo.files:
        for name in (f.sha256, f.gitsha1):
            path = blobs / name
            if path.exists():
                assert hashlib.sha256(path.read_bytes()).hexdigest() == f.sha256, f.path


async def test_a_client_that_resumes_after_bad_bytes_starts_over(nursery, tmp_path: Path):
    """The first mirror sends bad bytes of a 24 MiB file, slowly: the client has had 20 MiB of
    them when the digest fails and its connection is cut. It resumes with a Range, gets a 200
    instead (the bytes it holds are wrong) and ends with the right file, from the good mirror."""
    repo = make_model(tmp_path / "r", "acme/big", shards=1, shard_size=24 * MiB, small_files={})
    bad = Faults(corrupt=True, per_conn_rate=4 * MiB)
    start = start_endpoint(
        nursery, tmp_path, {"model": repo}, bad, other_repos=(repo,), first="hub"
    )
    ep = await start()
    top = await snapshot(ep.url, repo, tmp_path / "c")
    assert_exact(top, repo)
    big = next(f for f in repo.files if f.lfs)
    assert f"sha256:{big.sha256}" in ep.agent.gets.tainted


async def test_errors_carry_the_hub_codes_the_client_understands(endpoint, tmp_path: Path, repos):
    """An unknown repository, revision or file gives the client's own error classes; a file
    missing from the repository (and only that) is marked ``.no_exist`` by the client."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    ep = await endpoint()
    repo = repos["model"]
    hf_env(tmp_path / "c")

    def dl(repo_id: str, name: str, revision: str | None = None) -> str:
        return hf_hub_download(
            repo_id, name, revision=revision, endpoint=ep.url, cache_dir=tmp_path / "c"
        )

    with pytest.raises(RepositoryNotFoundError):
        await trio.to_thread.run_sync(lambda: dl("acme/nope", "config.json"))
    with pytest.raises(RevisionNotFoundError):
        await trio.to_thread.run_sync(lambda: dl(repo.repo_id, "model_index.json", "v9"))
    with pytest.raises(EntryNotFoundError):
        await trio.to_thread.run_sync(lambda: dl(repo.repo_id, "no/such.json"))
    no_exist = tmp_path / "c" / "models--acme--tiny" / ".no_exist" / repo.commit
    assert [p.name for p in no_exist.rglob("*") if p.is_file()] == ["such.json"]


async def test_plain_http_answers(endpoint, repos):
    """``/api/agent-harnesses`` answers at once; file answers carry the true size and no Xet
    header; a Range gets a 206; a range past the end a 416."""
    ep = await endpoint()
    repo = repos["model"]
    lfs = next(f for f in repo.files if f.lfs)
    url = f"{ep.url}/{repo.repo_id}/resolve/main/{lfs.path}"
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{ep.url}/api/agent-harnesses")
        assert r.status_code == 200 and r.json() == {"standardEnvVars": [], "harnesses": {}}
        head = await http.head(url)
        assert head.status_code == 200
        assert head.headers["content-length"] == str(lfs.size)
        assert head.headers["x-linked-size"] == str(lfs.size)
        assert not [k for k in head.headers if k.lower().startswith("x-xet")]
        part = await http.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.content == lfs.data_path.read_bytes()[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{lfs.size}"
        bad = await http.get(url, headers={"Range": f"bytes={lfs.size}-"})
        assert bad.status_code == 416


async def test_with_no_internet_a_pinned_repo_answers_from_the_store(
    endpoint, tmp_path: Path, repos
):
    """Once a model is in the store, the mirrors can be gone: the branch resolves to the
    commit pinned for it and every file comes from the store."""
    ep = await endpoint()
    repo = repos["model"]
    await snapshot(ep.url, repo, tmp_path / "c1")
    ep.mirror.faults.down = True
    top = await snapshot(ep.url, repo, tmp_path / "c2")
    assert_exact(top, repo)


async def test_status_names_the_endpoint(endpoint):
    """``status`` says where the endpoint listens."""
    ep = await endpoint()
    assert ep.agent.status()["hf_endpoint"] == ep.url
    assert ep.url.startswith("http://127.0.0.1:")


async def test_offline_the_endpoint_takes_names_from_keyed_peers(nursery, tmp_path: Path, repos):
    """With an office key, a workstation whose mirrors are unreachable answers
    ``snapshot_download`` of a repository a keyed neighbour holds: the manifest that
    neighbour pinned, the files from it over the LAN, exact."""
    from p2pmodel.core.officekey import format_key

    from .test_sim_names import offline

    repo = repos["model"]
    office = SimLan(MemoryMirror([repo]), lan_rate=None)
    use = [office.mirror.hub_url + "/"]
    raw = {"mirror": [{"for": "https://huggingface.co/", "use": use}]}
    raw["office_key"] = format_key(bytes(range(32)))
    agents = []
    for name, connected in (("a", True), ("b", False)):
        (tmp_path / name).mkdir()
        outside = office.outside()
        if not connected:
            outside.http = offline
        opts = AgentOptions(rpc_port=0, hf_endpoint="127.0.0.1:0", wait_for_peers=0.5)
        config = parse_config(raw, {})
        agents.append(await nursery.start(Agent(tmp_path / name, config, opts, outside).run))
    a, b = agents
    verified = trio.Event()

    def check() -> None:  # whenever b's set of live or verified peers changes
        if any(p.verified for p in b.peers.alive()):
            verified.set()

    b.peers.watch(check)
    check()
    with trio.fail_after(30):
        await verified.wait()
    from p2pmodel.core.refs import parse_ref
    from p2pmodel.services.get import GetRequest

    await a.gets.get(GetRequest(parse_ref(f"hf://{repo.repo_id}")))
    assert b.hf is not None
    top = await snapshot(b.hf.url, repo, tmp_path / "cache")
    assert_exact(top, repo)
    assert b.swarm.stats.from_peers == size(repo)
