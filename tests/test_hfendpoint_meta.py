"""The Hub's metadata API through the agent's endpoint, driven by the real ``huggingface_hub``
client (``HfApi``: ``model_info``, ``get_paths_info``, ``list_repo_refs``,
``list_repo_commits``; ``HfFileSystem``) and compared with what the same client reads from
the test mirror itself: warm, then with the mirror stopped. The agent is real (every service)
on the in-memory LAN fakes (no libtorrent, no mDNS: this runs in the host's namespace) and
fetches from the test mirror over loopback with its real HTTP client."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from p2pmodel.core.config import parse_config
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.mirror import Mirror
from p2pmodel.testing.models import Repo, make_model

MiB = 1024 * 1024
TOKEN = "hf_" + "m3ta" * 8
INFO: dict[str, Any] = {
    "author": "acme",
    "pipeline_tag": "text-to-image",
    "library_name": "diffusers",
    "tags": ["diffusers", "safetensors", "text-to-image", "license:apache-2.0"],
    "cardData": {"license": "apache-2.0", "pipeline_tag": "text-to-image", "xetHash": "no"},
    "lastModified": "2025-03-04T05:06:07.000Z",
    "createdAt": "2024-01-02T03:04:05.000Z",
    "downloads": 1234,
    "likes": 56,
    "private": False,
    "disabled": False,
    "config": {"diffusers": {"_class_name": "TinyPipeline"}},
    "transformersInfo": {"auto_model": "AutoModel", "pipeline_tag": "text-to-image"},
    "spaces": [],
    "usedStorage": 9 * MiB,
    "securityRepoStatus": {"scansDone": True},  # not in the whitelist: never passed on
    "someFutureField": {"x": {"status": "live"}},  # nor this
}


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Repo]:
    root = tmp_path_factory.mktemp("metarepos")
    model = make_model(root, "acme/tiny", shards=2, shard_size=MiB)
    data = make_model(root / "d", "acme/data", shards=1, shard_size=MiB, seed=7)
    gated = make_model(root / "g", "acme/gated", shards=1, shard_size=MiB, seed=9)
    data_info = {"author": "acme", "tags": ["task_categories:text"], "cardData": {"a": 1}}
    return {
        "model": dataclasses.replace(model, info=INFO),
        "dataset": Repo(data.repo_id, data.commit, data.files, repo_type="dataset", info=data_info),
        "gated": Repo(gated.repo_id, gated.commit, gated.files, token=TOKEN, info=INFO),
    }


class Office:
    """The test mirror on loopback (stoppable) and an agent whose endpoint fetches from it."""

    def __init__(
        self, nursery: trio.Nursery, tmp: Path, repos: dict[str, Repo], *, lan: bool = True
    ) -> None:
        self.lan = lan
        self.nursery = nursery
        self.tmp = tmp
        self.mirror = Mirror(list(repos.values()))
        self.scope = trio.CancelScope()
        self.agent: Agent | None = None

    async def start(self) -> None:
        async def run_mirror(task_status: trio.TaskStatus[None]) -> None:
            with self.scope:
                await self.mirror.run(task_status=task_status)

        await self.nursery.start(run_mirror)
        raw = {
            "mirror": [{"for": "https://huggingface.co/", "use": [self.mirror.hub_url + "/"]}],
            "hf_token_hosts": [self.mirror.hub_url + "/"],
        }
        home = self.tmp / "home"
        home.mkdir()
        outside = SimLan(MemoryMirror([]), lan_rate=None).outside()
        outside.http = None  # the real client, to the mirror on loopback
        opts = AgentOptions(rpc_port=0, hf_endpoint="127.0.0.1:0", lan=self.lan)
        agent = Agent(home, parse_config(raw, {}), opts, outside)
        self.agent = await self.nursery.start(agent.run)

    def stop_mirror(self) -> None:
        self.scope.cancel()

    @property
    def url(self) -> str:
        assert self.agent is not None and self.agent.hf is not None
        return self.agent.hf.url

    def api(self, url: str | None = None) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=url or self.url)


@pytest.fixture
async def office(
    nursery: trio.Nursery, tmp_path: Path, repos: dict[str, Repo], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Office]:
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    o = Office(nursery, tmp_path, repos)
    await o.start()
    yield o


def call(fn: Any, *args: Any, **kw: Any) -> Any:
    """Run a (blocking) client call in a thread."""
    return trio.to_thread.run_sync(lambda: fn(*args, **kw))


def fields(info: Any) -> dict[str, Any]:
    """What the client parsed of a repository info, as comparable data."""
    out = {
        k: getattr(info, k)
        for k in (
            "id",
            "sha",
            "author",
            "pipeline_tag",
            "library_name",
            "tags",
            "last_modified",
            "created_at",
            "downloads",
            "likes",
            "private",
            "gated",
            "disabled",
            "config",
            "transformers_info",
        )
        if hasattr(info, k)
    }
    out["card_data"] = info.card_data.to_dict() if info.card_data is not None else None
    out["siblings"] = sorted(
        (s.rfilename, s.size, s.blob_id, dict(s.lfs) if s.lfs else None) for s in info.siblings
    )
    return out


def no_xet(value: Any) -> None:
    assert "xetHash" not in json.dumps(value) and "xetEnabled" not in json.dumps(value)


async def raw_info(url: str, repo: Repo, rev: str = "main", query: str = "blobs=true") -> Any:
    plural = "datasets" if repo.repo_type == "dataset" else "models"
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{url}/api/{plural}/{repo.repo_id}/revision/{rev}?{query}")
    assert r.status_code == 200, r.text
    return r.json()


async def test_model_info_says_what_upstream_said_warm_and_offline(office, repos):
    """``model_info`` (and with ``files_metadata=True``) through the endpoint carries the fields
    the mirror gave (pipeline_tag, library_name, tags, cardData, dates, counts, siblings with
    size, blob id and LFS sha256), never ``xetHash`` nor fields off the whitelist; the same
    with the mirror stopped, from the store."""
    repo = repos["model"]
    upstream = await call(office.api(office.mirror.hub_url).model_info, repo.repo_id)
    upstream_meta = await call(
        office.api(office.mirror.hub_url).model_info, repo.repo_id, files_metadata=True
    )
    ours = await call(office.api().model_info, repo.repo_id, files_metadata=True)
    expected = fields(upstream_meta)
    assert expected["card_data"].pop("xetHash") == "no"  # dropped at any depth
    assert fields(ours) == expected
    assert ours.pipeline_tag == "text-to-image" and ours.library_name == "diffusers"
    assert "license:apache-2.0" in ours.tags and ours.card_data.license == "apache-2.0"
    assert ours.transformers_info.auto_model == "AutoModel"
    assert {s.rfilename for s in ours.siblings} == {f.path for f in repo.files}
    assert all(s.lfs is not None for s in ours.siblings if s.rfilename.endswith(".safetensors"))
    plain = await call(office.api().model_info, repo.repo_id)
    assert [s.size for s in plain.siblings] == [None] * len(repo.files)  # as the Hub: names only
    assert plain.pipeline_tag == upstream.pipeline_tag
    raw = await raw_info(office.url, repo)
    no_xet(raw)
    assert "securityRepoStatus" not in raw and "someFutureField" not in raw
    assert raw["sha"] == repo.commit and raw["id"] == repo.repo_id

    office.stop_mirror()
    for rev in (None, "main", repo.commit):
        offline = await call(
            office.api().model_info, repo.repo_id, revision=rev, files_metadata=True
        )
        assert fields(offline) == expected
    no_xet(await raw_info(office.url, repo, repo.commit))
    only = await raw_info(office.url, repo, query="expand=pipeline_tag&expand=tags")
    assert set(only) == {"_id", "id", "pipeline_tag", "tags"}


async def test_dataset_info_warm_and_offline(office, repos):
    """``dataset_info`` gets the dataset's own fields the same way, also offline."""
    repo = repos["dataset"]
    upstream = await call(office.api(office.mirror.hub_url).dataset_info, repo.repo_id)
    ours = await call(office.api().dataset_info, repo.repo_id, files_metadata=True)
    assert (ours.sha, ours.author, ours.tags) == (repo.commit, "acme", upstream.tags)
    assert ours.card_data.to_dict() == {"a": 1}
    assert sum(s.size for s in ours.siblings) == sum(f.size for f in repo.files)
    office.stop_mirror()
    again = await call(office.api().dataset_info, repo.repo_id)
    assert (again.sha, again.tags) == (repo.commit, upstream.tags)


async def test_paths_info_and_hf_file_system(office, repos):
    """``get_paths_info`` answers files (size, blob id, LFS sha256) and folders (tree id) as the
    mirror's tree lists them, leaves unknown paths out, and ``HfFileSystem`` ``info(refresh=True)``
    and ``ls(detail=True, expand_info=True)`` work on it, warm and offline."""
    from huggingface_hub import HfFileSystem
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    repo = repos["model"]
    mirror_api = office.api(office.mirror.hub_url)
    tree = await call(
        lambda: {e.path: e for e in mirror_api.list_repo_tree(repo.repo_id, recursive=True)}
    )
    lfs = next(f for f in repo.files if f.lfs)
    small = next(f for f in repo.files if not f.lfs)
    folder = lfs.path.rsplit("/", 1)[0]
    asked = [lfs.path, small.path, folder, "no/such/file", lfs.path]

    async def check() -> None:
        got = await call(office.api().get_paths_info, repo.repo_id, asked)
        assert [e.path for e in got] == [lfs.path, small.path, folder]
        a, b, c = got
        assert isinstance(a, RepoFile) and isinstance(b, RepoFile) and isinstance(c, RepoFolder)
        assert (a.size, a.blob_id, a.lfs.sha256) == (lfs.size, tree[lfs.path].blob_id, lfs.sha256)
        assert a.lfs.pointer_size == tree[lfs.path].lfs.pointer_size and a.xet_hash is None
        assert (b.size, b.blob_id, b.lfs) == (small.size, small.gitsha1, None)
        assert c.tree_id == tree[folder].tree_id
        fs = HfFileSystem(endpoint=office.url, skip_instance_cache=True)
        info = await call(fs.info, f"{repo.repo_id}/{lfs.path}", refresh=True)
        assert (info["type"], info["size"]) == ("file", lfs.size)
        detail = await call(fs.info, f"{repo.repo_id}/{lfs.path}", refresh=True, expand_info=True)
        assert detail["lfs"]["sha256"] == lfs.sha256 and detail["xet_hash"] is None
        listed = await call(fs.ls, f"{repo.repo_id}/{folder}", detail=True, expand_info=True)
        names = {e["name"].rsplit("/", 1)[1]: e for e in listed}
        inside = {f.path.rsplit("/", 1)[1]: f for f in repo.files if f.path.startswith(folder)}
        assert set(names) == set(inside)
        assert all(names[n]["size"] == f.size for n, f in inside.items())

    await check()
    office.stop_mirror()
    await check()


async def test_refs_and_commits_as_upstream_said_then_offline(office, repos):
    """``list_repo_refs`` and ``list_repo_commits`` answer what the mirror answered; once
    asked, the same with the mirror stopped."""
    repo = repos["model"]
    mirror_api = office.api(office.mirror.hub_url)
    upstream_refs = await call(mirror_api.list_repo_refs, repo.repo_id, include_pull_requests=True)
    upstream_commits = await call(mirror_api.list_repo_commits, repo.repo_id)
    assert len(upstream_commits) == 2  # the mirror says as much as the Hub would
    refs = await call(office.api().list_repo_refs, repo.repo_id, include_pull_requests=True)
    commits = await call(office.api().list_repo_commits, repo.repo_id)
    assert refs == upstream_refs
    assert commits == upstream_commits
    office.stop_mirror()
    assert await call(office.api().list_repo_refs, repo.repo_id) == dataclasses.replace(
        upstream_refs, pull_requests=None
    )
    assert await call(office.api().list_repo_commits, repo.repo_id) == upstream_commits
    assert await call(office.api().list_repo_commits, repo.repo_id, revision=repo.commit) == (
        upstream_commits
    )


async def test_offline_refs_and_commits_never_asked_come_from_the_pinned_revision(office, repos):
    """A repository in the store whose refs and commits were never asked: with the mirror
    stopped, one branch and one commit at the pinned sha, dated as upstream dated it."""
    from huggingface_hub import HfFileSystem

    repo = repos["model"]
    await call(office.api().model_info, repo.repo_id)  # pinned now
    office.stop_mirror()
    refs = await call(office.api().list_repo_refs, repo.repo_id)
    assert [(b.name, b.ref, b.target_commit) for b in refs.branches] == [
        ("main", "refs/heads/main", repo.commit)
    ]
    assert refs.tags == [] and refs.converts == []
    (commit,) = await call(office.api().list_repo_commits, repo.repo_id)
    assert commit.commit_id == repo.commit
    assert commit.created_at.isoformat() == "2025-03-04T05:06:07+00:00"
    fs = HfFileSystem(endpoint=office.url, skip_instance_cache=True)
    root = await call(fs.info, repo.repo_id, expand_info=True)
    assert root["last_commit"].oid == repo.commit


async def test_a_gated_repository_metadata_needs_its_token(office, repos, caplog):
    """A gated repository's info, refs, commits and paths answer only a token upstream
    accepts; the token reaches the mirror and no log line."""
    from huggingface_hub.errors import GatedRepoError

    repo = repos["gated"]
    api = office.api()
    with pytest.raises(GatedRepoError):
        await call(api.model_info, repo.repo_id, token="hf_wrong")
    info = await call(api.model_info, repo.repo_id, token=TOKEN)
    assert (info.sha, info.gated, info.pipeline_tag) == (repo.commit, "manual", "text-to-image")
    for ask in (api.list_repo_refs, api.list_repo_commits):
        with pytest.raises(GatedRepoError):
            await call(ask, repo.repo_id, token="hf_wrong")
        assert await call(ask, repo.repo_id, token=TOKEN)
    with pytest.raises(GatedRepoError):
        await call(api.get_paths_info, repo.repo_id, [repo.files[0].path], token="hf_wrong")
    assert office.mirror.stats.authorized.get("hub", 0) > 0
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("kind", "body", "status"),
    [
        ("application/json", b"[1, 2]", 400),
        ("application/json", b'{"paths": [1]}', 400),
        ("application/json", b'{"paths": "a", "expand": "yes"}', 400),
        ("application/json", b"{nope", 400),
        ("application/x-www-form-urlencoded", b"\xff\xfe", 400),
        ("application/json", b"[" * 100_000 + b"]" * 100_000, 400),
        ("application/json", b'{"paths": ["' + b"a" * (2 * MiB) + b'"]}', 413),
    ],
    ids=["array", "not-strings", "expand", "not-json", "not-utf8", "deep", "too-big"],
)
async def test_bad_paths_info_bodies_are_a_clear_4xx(office, repos, kind, body, status, caplog):
    """A paths-info body that is not a form or JSON of strings, or too big, gets a 4xx with
    one line, and no traceback in the log."""
    repo = repos["model"]
    url = f"{office.url}/api/models/{repo.repo_id}/paths-info/main"
    async with httpx.AsyncClient() as http:
        r = await http.post(url, content=body, headers={"Content-Type": kind})
        assert r.status_code == status, r.text
        assert "error" in r.json()
        get = await http.get(url)
        assert get.status_code == 405 and get.headers["allow"] == "POST"
        ok = await http.post(url, json={"paths": [repo.files[0].path]})
        assert ok.status_code == 200 and [e["path"] for e in ok.json()] == [repo.files[0].path]
    assert "Traceback" not in caplog.text


async def test_an_agent_with_the_lan_off_serves_the_endpoint(nursery, tmp_path, repos, monkeypatch):
    """No peers, no swarm: the endpoint (and its dashboard's plot sampling) still runs."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    o = Office(nursery, tmp_path, repos, lan=False)
    await o.start()
    repo = next(iter(repos.values()))
    info = await call(o.api().model_info, repo.repo_id)
    assert info.sha == repo.commit
    async with httpx.AsyncClient() as client:
        page = await client.get(o.url + "/api/p2pmodel/status")
    assert page.status_code == 200 and page.json()["peers"] == []
