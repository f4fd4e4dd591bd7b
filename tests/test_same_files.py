"""``[[same_files]]``: the same bytes from whichever hub has them (``core.hubs``, the get flow),
end to end against two real HTTP mirrors on loopback, one per hub."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio

from p2pmodel.adapters.home import load_config
from p2pmodel.core.config import parse_config
from p2pmodel.core.errors import UserError
from p2pmodel.core.hubs import SameFiles, other_repos, parse_same_files, shared_paths
from p2pmodel.core.manifest import FileEntry, Manifest
from p2pmodel.services.get.flow import blob_jobs
from p2pmodel.testing.mirror import Faults, Mirror
from p2pmodel.testing.models import Repo, make_model, make_single_file

from .conftest import MiB
from .test_get import assert_exact, fast_options, get, request

SHA = ["sha256:" + c * 64 for c in "abcdef"]

# -- the rules (pure) ----------------------------------------------------------------------------


def test_an_org_prefix_names_the_same_repository_on_the_other_hub():
    """``hf://Qwen/x`` maps to ``ms://Qwen/x`` and back; the longest prefix wins; a
    repository no rule names has no other hub."""
    rules = parse_same_files(
        [
            {"repos": ["hf://Qwen/", "ms://Qwen/"]},
            {"repos": ["hf://Qwen/Qwen-Image", "ms://Alibaba/QwenImage"]},
        ]
    )
    assert [r.text for r in other_repos(rules, "hf://Qwen/Qwen3-8B")] == ["ms://Qwen/Qwen3-8B"]
    assert [r.text for r in other_repos(rules, "ms://Qwen/Qwen3-8B")] == ["hf://Qwen/Qwen3-8B"]
    assert [r.text for r in other_repos(rules, "hf://Qwen/Qwen-Image")] == [
        "ms://Alibaba/QwenImage"
    ]
    # A whole-repository rule names that repository only, not one whose name starts with it.
    assert [r.text for r in other_repos(rules, "hf://Qwen/Qwen-Image2")] == [
        "ms://Qwen/Qwen-Image2"
    ]
    assert other_repos(rules, "hf://QwenX/a") == []
    assert other_repos(rules, "hf://datasets/Qwen/a") == []
    assert other_repos((), "hf://Qwen/a") == []


def test_only_a_sha256_both_listings_give_for_the_same_size_is_shared():
    """A blob the other listing gives with the same sha256 and size is shared (under the other
    hub's path); another digest, another size or a git object id never is."""
    mine = Manifest(
        "m",
        "hf://o/r",
        "0" * 40,
        (
            FileEntry("a.safetensors", 10, SHA[0]),
            FileEntry("b.safetensors", 10, SHA[1]),
            FileEntry("c.safetensors", 10, SHA[2]),
            FileEntry("config.json", 5, "gitsha1:" + "1" * 40),
        ),
    )
    theirs = Manifest(
        "t",
        "ms://o/r",
        "master",
        (
            FileEntry("weights/a.safetensors", 10, SHA[0]),
            FileEntry("b.safetensors", 10, SHA[3]),  # another sha256 at the same path
            FileEntry("c.safetensors", 11, SHA[2]),  # another size
            FileEntry("config.json", 5, SHA[4]),
        ),
    )
    assert shared_paths(mine, theirs) == {SHA[0]: "weights/a.safetensors"}


BAD_RULES = {
    "not-a-list": ('same_files = "hf://a/"', "array of tables"),
    "no-repos": ("[[same_files]]\nrepo = []", "exactly 'repos'"),
    "extra-key": ('[[same_files]]\nrepos = ["hf://a/", "ms://a/"]\nx = 1', "exactly 'repos'"),
    "not-strings": ("[[same_files]]\nrepos = [1, 2]", "list of strings"),
    "one-prefix": ('[[same_files]]\nrepos = ["hf://a/"]', "at least two"),
    "twice-the-same": ('[[same_files]]\nrepos = ["hf://a/", "hf://a/"]', "at least two"),
    "bad-scheme": ('[[same_files]]\nrepos = ["hf://a/", "s3://a/"]', "'s3://a/' is not"),
    "no-slash": ('[[same_files]]\nrepos = ["hf://a", "ms://a"]', "'hf://a' is not"),
    "revision": ('[[same_files]]\nrepos = ["hf://a/b@v1", "ms://a/b"]', "no revision"),
    "datasets": ('[[same_files]]\nrepos = ["hf://datasets/", "ms://a/"]', "only model"),
    "mixed": ('[[same_files]]\nrepos = ["hf://a/", "ms://a/b"]', "give one kind"),
    "in-two-groups": (
        '[[same_files]]\nrepos = ["hf://a/", "ms://a/"]\n'
        '[[same_files]]\nrepos = ["hf://a/", "ms://b/"]',
        r"same_files #2: 'hf://a/' is also in same_files #1",
    ),
}


@pytest.mark.parametrize(("text", "message"), BAD_RULES.values(), ids=BAD_RULES.keys())
def test_a_bad_same_files_table_is_one_line_naming_the_file(tmp_path: Path, text, message):
    """Each bad ``[[same_files]]`` is a ``UserError`` (exit 2) naming the file and the fault."""
    (tmp_path / "config.toml").write_text(text + "\n")
    with pytest.raises(UserError, match=message) as info:
        load_config(tmp_path)
    assert str(tmp_path / "config.toml") in str(info.value)
    assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_the_other_hubs_candidates_follow_the_own_ones_for_shared_blobs_only():
    """A shared blob's job lists its own hub's candidates first, then the other hub's (through
    its mirror rules), each tagged with its hub; a blob the other hub lacks has only its own."""
    config = parse_config(
        {
            "mirror": [
                {"for": "https://huggingface.co/", "use": ["http://hf.test/"]},
                {
                    "for": "https://www.modelscope.cn/",
                    "use": ["http://ms.test/", "http://hf.test/"],
                },
            ],
            "same_files": [{"repos": ["hf://o/", "ms://o/"]}],
        },
        {},
    )
    assert config.same_files == (SameFiles(("hf://o/", "ms://o/")),)
    mine = Manifest(
        "m", "hf://o/r", "1" * 40, (FileEntry("a", 1, SHA[0]), FileEntry("b", 1, SHA[1]))
    )
    theirs = Manifest("t", "ms://o/r", "2" * 40, (FileEntry("x/a", 1, SHA[0]),))
    a, b = blob_jobs(mine, config, {SHA[0]: 1, SHA[1]: 1}, None, [theirs])
    # hf.test is already a candidate of the blob's own hub: not added twice.
    assert a.urls == [
        f"http://hf.test/o/r/resolve/{'1' * 40}/a",
        f"http://ms.test/models/o/r/resolve/{'2' * 40}/x/a",
    ]
    assert [a.hubs[u] for u in a.urls] == ["hf", "ms"]
    assert b.urls == [f"http://hf.test/o/r/resolve/{'1' * 40}/b"]


# -- end to end: two mirrors, one per hub -------------------------------------------------------


def hubs_config(home: Path, hf: Mirror, ms: Mirror, same: bool = True) -> None:
    text = (
        f'[[mirror]]\nfor = "https://huggingface.co/"\nuse = ["{hf.hub_url}/"]\n'
        f'[[mirror]]\nfor = "https://www.modelscope.cn/"\nuse = ["{ms.hub_url}/"]\n'
    )
    if same:
        text += '[[same_files]]\nrepos = ["hf://acme/", "ms://acme/"]\n'
    (home / "config.toml").write_text(text)


def served(mirror: Mirror, path: str) -> int:
    """Body bytes the mirror sent for one repository file (any route: resolve, CDN)."""
    total = sum(n for p, n in mirror.stats.by_path.items() if p.endswith("/" + path))
    repo_file = next((f for r in mirror._repos.values() for f in r.files if f.path == path), None)
    if repo_file is not None and repo_file.lfs:
        total += mirror.stats.by_path.get(f"/lfs/{repo_file.sha256}", 0)
    return total


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """4 shards of 4 MiB and small git files (which Hugging Face lists with no sha256)."""
    return make_model(tmp_path_factory.mktemp("repos"), "acme/model", shards=4, shard_size=4 * MiB)


def shards(repo: Repo) -> list[str]:
    return [f.path for f in repo.files if f.lfs]


def smalls(repo: Repo) -> list[str]:
    return [f.path for f in repo.files if not f.lfs]


async def test_shards_from_the_fast_hub_and_git_files_from_their_own(home, repo, start_mirror):
    """A slow Hugging Face mirror and a fast ModelScope one: the shards come (mostly) from
    ModelScope, the git-only small files from Hugging Face alone, the files exact, and the
    result says which hub gave what."""
    hf = await start_mirror([repo], faults=Faults(per_conn_rate=MiB))
    ms = await start_mirror([repo])
    hubs_config(home, hf, ms)
    with trio.fail_after(60):
        result = await get(
            request("hf://acme/model"), home, fast_options(connections=4, chunk_size=MiB // 4)
        )
    assert_exact(result.path, repo)
    assert result.manifest.source == "hf://acme/model"  # the manifest is the own hub's
    weights = sum(f.size for f in repo.files if f.lfs)
    small = sum(f.size for f in repo.files if not f.lfs)
    for path in smalls(repo):
        assert served(ms, path) == 0, path
    assert sum(served(hf, p) for p in smalls(repo)) == small
    from_ms = sum(served(ms, p) for p in shards(repo))
    assert from_ms >= 0.75 * weights, (from_ms, weights)
    assert from_ms + sum(served(hf, p) for p in shards(repo)) >= weights
    # What the get says: bytes per hub (as written, so never more than the mirrors sent).
    assert set(result.hubs) == {"hf", "ms"} and sum(result.hubs.values()) == result.fetched
    assert 0.75 * weights <= result.hubs["ms"] <= from_ms
    described = result.describe("hf://acme/model")
    assert described["hubs"] == result.hubs and described["same_files"] == ["ms://acme/model"]
    per_file = {f["path"]: f["hubs"] for f in described["files"]}
    sizes = {f.path: f.size for f in repo.files}
    assert all(per_file[p] == {"hf": sizes[p]} for p in smalls(repo))
    assert sum(per_file[p].get("ms", 0) for p in shards(repo)) == result.hubs["ms"]


async def test_a_file_the_other_hub_lists_with_another_sha256_comes_from_its_own_hub_only(
    home, repo, start_mirror, tmp_path
):
    """ModelScope lists one shard with another sha256 (other bytes): that shard comes from
    Hugging Face only, though ModelScope is the faster; the others still come from it."""
    odd = shards(repo)[1]
    size = next(f.size for f in repo.files if f.path == odd)
    other = dataclasses.replace(make_single_file(tmp_path, "odd", size, seed=9), path=odd)
    ms_repo = dataclasses.replace(
        repo, files=tuple(other if f.path == odd else f for f in repo.files)
    )
    hf = await start_mirror([repo], faults=Faults(per_conn_rate=MiB))
    ms = await start_mirror([ms_repo])
    hubs_config(home, hf, ms)
    with trio.fail_after(60):
        result = await get(
            request("hf://acme/model"), home, fast_options(connections=4, chunk_size=MiB // 4)
        )
    assert_exact(result.path, repo)
    assert served(ms, odd) == 0
    assert served(hf, odd) >= size
    assert sum(served(ms, p) for p in shards(repo)) > 0  # the others did come from ModelScope
    odd_digest = next(f.digest for f in result.manifest.files if f.path == odd)
    assert result.file_hubs[odd_digest] == {"hf": size}


async def test_the_other_hub_down_or_without_the_repo_costs_nothing(home, repo, start_mirror):
    """The other hub down: the get succeeds from its own hub, with a warning; the other hub
    without the repository: no warning at all."""
    hf = await start_mirror([repo])
    ms = await start_mirror([repo], faults=Faults(down=True))
    hubs_config(home, hf, ms)
    with trio.fail_after(60):
        result = await get(request("hf://acme/model"), home, fast_options())
    assert_exact(result.path, repo)
    assert result.hubs == {"hf": result.fetched}
    assert any("ms://acme/model" in w for w in result.warnings), result.warnings
    assert result.same_files == []

    home2 = home.parent / "home2"
    home2.mkdir()
    empty = await start_mirror([])
    hubs_config(home2, hf, empty)
    with trio.fail_after(60):
        result = await get(request("hf://acme/model"), home2, fast_options())
    assert_exact(result.path, repo)
    assert result.warnings == [] and result.hubs == {"hf": result.fetched}


async def test_a_modelscope_ref_takes_shards_from_hugging_face(home, repo, start_mirror):
    """The other way round: for ``ms://`` the shards (LFS files, with a sha256 on Hugging Face)
    come mostly from a fast Hugging Face mirror, the small files from ModelScope alone."""
    hf = await start_mirror([repo])
    ms = await start_mirror([repo], faults=Faults(per_conn_rate=MiB))
    hubs_config(home, hf, ms)
    with trio.fail_after(60):
        result = await get(
            request("ms://acme/model"), home, fast_options(connections=4, chunk_size=MiB // 4)
        )
    assert_exact(result.path, repo)
    assert result.manifest.source == "ms://acme/model"
    for path in smalls(repo):
        assert served(hf, path) == 0, path
    weights = sum(f.size for f in repo.files if f.lfs)
    assert sum(served(hf, p) for p in shards(repo)) >= 0.75 * weights


async def test_without_same_files_the_other_hub_is_never_asked(home, repo, start_mirror):
    """No ``[[same_files]]`` rule: the other hub's mirror sees no request at all."""
    hf = await start_mirror([repo])
    ms = await start_mirror([repo])
    hubs_config(home, hf, ms, same=False)
    with trio.fail_after(60):
        result = await get(request("hf://acme/model"), home, fast_options())
    assert_exact(result.path, repo)
    assert ms.stats.requests == 0 and result.same_files == []
