"""The Hugging Face Hub's contract as the endpoint speaks it (``p2pmodel.core.hfapi``): routes,
git object ids as git computes them, tree pages, ranges, tokens, cache names."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from p2pmodel.core import hfapi
from p2pmodel.core.manifest import FileEntry, Manifest

COMMIT = "a" * 40
SHA = "b" * 64


def manifest(*files: FileEntry) -> Manifest:
    return Manifest("hf://acme/tiny", "hf://acme/tiny", COMMIT, files)


@pytest.mark.parametrize(
    ("method", "path", "query", "want"),
    [
        ("GET", "/api/agent-harnesses", "", hfapi.Route("harnesses")),
        ("GET", "/api/models/acme/tiny", "", hfapi.Route("revision", "model", "acme/tiny")),
        (
            "GET",
            "/api/datasets/acme/data/revision/refs%2Fpr%2F1",
            "",
            hfapi.Route("revision", "dataset", "acme/data", "refs/pr/1"),
        ),
        (
            "GET",
            f"/api/models/acme/tiny/tree/{COMMIT}",
            "recursive=true&expand=false&cursor=2000",
            hfapi.Route("tree", "model", "acme/tiny", COMMIT, "", 2000, True),
        ),
        (
            "HEAD",
            "/acme/tiny/resolve/main/transformer/a%20b.json",
            "",
            hfapi.Route("file", "model", "acme/tiny", "main", "transformer/a b.json"),
        ),
        (
            "GET",
            f"/datasets/acme/data/resolve/{COMMIT}/x.parquet",
            "",
            hfapi.Route("file", "dataset", "acme/data", COMMIT, "x.parquet"),
        ),
        ("GET", "/favicon.ico", "", None),
        ("POST", "/acme/tiny/resolve/main/x", "", None),
    ],
)
def test_route(method: str, path: str, query: str, want: hfapi.Route | None) -> None:
    """Each request the client sends maps to what it asks for; other paths to nothing."""
    assert hfapi.route(method, path, query) == want


@pytest.mark.parametrize(
    "path", ["/api/models/acme/..%2Fetc/revision/main", "/acme/tiny/resolve/..%2F..%2Fx/y"]
)
def test_route_refuses_escapes(path: str) -> None:
    """A repository or revision with '..' is not one."""
    with pytest.raises(hfapi.BadRoute):
        hfapi.route("GET", path)


def test_object_ids_are_the_ones_git_computes(tmp_path: Path) -> None:
    """Blob ids of small files and of LFS pointers, and tree ids of folders, equal what git
    itself computes for the same files."""
    small = b'{"a": 1}\n'
    big_sha, big_size = "c" * 64, 123456789
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "transformer").mkdir()
    (tmp_path / "config.json").write_bytes(small)
    (tmp_path / "transformer" / "config.json").write_bytes(small)
    pointer = hfapi.lfs_pointer(big_sha, big_size)
    (tmp_path / "transformer" / "w.safetensors").write_bytes(pointer)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)

    def rev(spec: str) -> str:
        out = subprocess.run([*git, "rev-parse", spec], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    m = manifest(
        FileEntry("config.json", len(small), "gitsha1:" + hfapi.git_blob_id(small)),
        FileEntry("transformer/config.json", len(small), "gitsha1:" + hfapi.git_blob_id(small)),
        FileEntry("transformer/w.safetensors", big_size, f"sha256:{big_sha}"),
    )
    items = {e["path"]: e for e in hfapi.tree(m)}
    assert items["config.json"]["oid"] == rev("HEAD:config.json")
    assert items["transformer/w.safetensors"]["oid"] == rev("HEAD:transformer/w.safetensors")
    assert items["transformer/w.safetensors"]["lfs"] == {
        "oid": big_sha,
        "size": big_size,
        "pointerSize": len(pointer),
    }
    assert items["transformer"] == {
        "type": "directory",
        "oid": rev("HEAD:transformer"),
        "path": "transformer",
    }


def test_tree_pages_cover_every_entry_once() -> None:
    """Pages follow each other by cursor until the last, which has no next; a folder and a
    non-recursive listing keep to what they name."""
    files = [FileEntry(f"d{i % 3}/f{i}.json", 1, "gitsha1:" + "0" * 40) for i in range(10)]
    m = manifest(*files)
    seen, cursor = [], 0
    while True:
        page, nxt = hfapi.tree_page(m, "", True, cursor, page=4)
        seen += [e["path"] for e in page]
        if nxt is None:
            break
        cursor = nxt
    assert sorted(seen) == sorted([f.path for f in files] + ["d0", "d1", "d2"])
    top, _ = hfapi.tree_page(m, "", False, 0)
    assert [e["path"] for e in top] == ["d0", "d1", "d2"]
    sub, _ = hfapi.tree_page(m, "d1", True, 0)
    assert all(e["path"].startswith("d1/") for e in sub) and len(sub) == 3
    link = hfapi.next_link("http://127.0.0.1:7421", hfapi.Route("tree", "model", "a/b", COMMIT), 4)
    assert link == (
        f"<http://127.0.0.1:7421/api/models/a/b/tree/{COMMIT}"
        '?recursive=false&expand=false&cursor=4>; rel="next"'
    )


def test_file_headers_name_the_blob_as_the_hub_does_and_never_xet() -> None:
    """Small files: the git blob id as ETag; LFS files: the sha256, with the linked headers;
    never an X-Xet header."""
    m = manifest(FileEntry("w.bin", 10, f"sha256:{SHA}"), FileEntry("c", 2, "gitsha1:" + "e" * 40))
    by_path = {f.path: f for f in m.files}
    lfs = dict(hfapi.file_headers(m, by_path["w.bin"]))
    assert lfs["ETag"] == f'"{SHA}"' and lfs["X-Linked-Etag"] == f'"{SHA}"'
    assert lfs["X-Linked-Size"] == "10" and lfs["X-Repo-Commit"] == COMMIT
    small = dict(hfapi.file_headers(m, by_path["c"]))
    assert small["ETag"] == '"' + "e" * 40 + '"' and "X-Linked-Etag" not in small
    assert not any(k.lower().startswith("x-xet") for k in [*lfs, *small])


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (None, None),
        ("bytes=0-", (0, 100)),
        ("bytes=10-19", (10, 20)),
        ("bytes=90-200", (90, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=0-1,5-6", None),
    ],
)
def test_parse_range(value: str | None, want: tuple[int, int] | None) -> None:
    """Ranges as the client sends them; several ranges: the whole file."""
    assert hfapi.parse_range(value, 100) == want


@pytest.mark.parametrize("value", ["bytes=100-", "bytes=50-10", "bytes=-0"])
def test_unsatisfiable_ranges(value: str) -> None:
    with pytest.raises(ValueError):
        hfapi.parse_range(value, 100)


def test_bearer_and_cache_names() -> None:
    """A Bearer header gives its token; cache folders are named as the client names them."""
    assert hfapi.bearer("Bearer hf_abc") == "hf_abc" and hfapi.bearer("Basic x") is None
    assert hfapi.cache_folder("hf://acme/tiny") == "models--acme--tiny"
    assert hfapi.cache_folder("hf://datasets/acme/data") == "datasets--acme--data"
    m = manifest(FileEntry("w.bin", 10, f"sha256:{SHA}"))
    assert hfapi.tree_cache(m)["files"]["w.bin"]["lfs_sha256"] == SHA


@pytest.mark.parametrize(
    "path",
    [
        "/acme/tiny/resolve/main/config.json%00.txt",
        "/acme/tiny/resolve/main/a%0d%0ab",
        "/acme/tiny/resolve/main/a%7f",
        "/acme/tiny/resolve/main/%ff.json",
        "/acme/tiny/resolve/main/\xff.json",  # a raw byte that is not UTF-8
        "/acme/tiny/resolve/main/a%5cb",
        "/acme/tiny/resolve/main/a/%2e%2e/b",
        "/acme/tiny/resolve/main/a//b",
        "/acme/tiny/resolve/main/.",
        "/api/models/acme/tiny/tree/main/a%00b",
        "/api/models/acme/ti%ffny/revision/main",
    ],
)
def test_route_refuses_paths_that_name_nothing(path: str) -> None:
    """A NUL, a control character, bytes that are not UTF-8, a backslash or an empty or '..'
    segment: no repository holds such a file (400, before anything is looked up)."""
    with pytest.raises(hfapi.BadRequest):
        hfapi.route("GET", path)


def test_route_reads_raw_and_quoted_utf8_alike() -> None:
    """A path sent as raw UTF-8 bytes (seen as latin-1) names the same file as its %-escapes."""
    raw = "/acme/tiny/resolve/main/é.json".encode().decode("latin-1")
    assert hfapi.route("GET", raw) == hfapi.route("GET", "/acme/tiny/resolve/main/%C3%A9.json")
    assert hfapi.route("GET", raw).path == "é.json"  # type: ignore[union-attr]


def test_error_headers_are_one_printable_line() -> None:
    """Whatever a message holds (from a request path), the header value is printable ASCII."""
    value = dict(hfapi.error_headers("EntryNotFound", "a\0b\r\nc\x7fé" + "x" * 500))
    assert value["X-Error-Message"].startswith("a b  c ?") and len(value["X-Error-Message"]) == 400


def test_misses_answer_again_for_a_while_per_question() -> None:
    """A "not found" answers the same repository, revision and token for the ttl, then is
    forgotten; other questions are not answered from it; a gated answer is never kept."""
    misses = hfapi.Misses(ttl=30, limit=3)
    route = hfapi.Route("revision", "model", "acme/nope")
    key = hfapi.Misses.key(route, None)
    miss = hfapi.Miss("RepoNotFound", "hf://acme/nope not found")
    misses.add(key, miss, now=100.0)
    assert misses.get(key, now=100.0) == miss and misses.get(key, now=129.9) == miss
    assert misses.get(hfapi.Misses.key(route, "hf_tok"), now=101.0) is None
    other = hfapi.Route("revision", "model", "acme/nope", "v2")
    assert misses.get(hfapi.Misses.key(other, None), now=101.0) is None
    dataset = hfapi.Route("revision", "dataset", "acme/nope")
    assert misses.get(hfapi.Misses.key(dataset, None), now=101.0) is None
    assert misses.get(key, now=130.0) is None and len(misses) == 0
    gated = hfapi.Miss("GatedRepo", "gated")
    misses.add(key, gated, now=200.0)
    assert misses.get(key, now=200.0) is None
    assert "hf_tok" not in repr(hfapi.Misses.key(route, "hf_tok"))  # only a digest is kept


def test_misses_are_bounded() -> None:
    """Ever new names evict the oldest answers; expired ones go first."""
    misses = hfapi.Misses(ttl=30, limit=3)
    miss = hfapi.Miss("RepoNotFound", "x")
    keys = [
        hfapi.Misses.key(hfapi.Route("revision", "model", f"acme/r{i}"), None) for i in range(5)
    ]
    for i, k in enumerate(keys):
        misses.add(k, miss, now=float(i))
    assert len(misses) == 3 and misses.get(keys[0], 5.0) is None and misses.get(keys[4], 5.0)
    misses.add(keys[0], miss, now=40.0)  # every other answer has expired
    assert len(misses) == 1
