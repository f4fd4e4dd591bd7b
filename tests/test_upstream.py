"""Upstream URLs and HF / ModelScope listings turned into manifests (``p2pmodel.core.upstream``)."""

from __future__ import annotations

from typing import Any

import pytest

from p2pmodel.core.manifest import FileEntry, Manifest, ManifestError
from p2pmodel.core.refs import parse_ref
from p2pmodel.core.upstream import file_url, listing_url, parse_hf_listing, parse_ms_listing

HF = "https://huggingface.co"
MS = "https://www.modelscope.cn"
COMMIT = "75e0b4be04f60ec59a75f475837eced720f823b6"
OTHER_COMMIT = "ac7f9318f633fc4b5778c59367c8128225f1e3de"
LFS_SHA = "ab" * 32
BLOB_ID = "cd" * 20


def hf_listing(*siblings: dict[str, Any], sha: Any = COMMIT) -> dict[str, Any]:
    return {"id": "Qwen/Qwen-Image", "sha": sha, "siblings": list(siblings)}


def hf_plain(path: str, size: int = 10, blob_id: str = BLOB_ID) -> dict[str, Any]:
    return {"rfilename": path, "size": size, "blobId": blob_id}


def hf_lfs(path: str, size: int = 1000, sha256: str = LFS_SHA) -> dict[str, Any]:
    return {
        "rfilename": path,
        "size": size,
        "blobId": BLOB_ID,
        "lfs": {"sha256": sha256, "size": size, "pointerSize": 134},
    }


def ms_listing(*files: dict[str, Any], code: Any = 200) -> dict[str, Any]:
    return {"Code": code, "Data": {"Files": list(files)}, "Message": "success", "Success": True}


def ms_file(path: str, size: int = 10, sha256: str = LFS_SHA, **extra: Any) -> dict[str, Any]:
    return {"Name": path.rsplit("/", 1)[-1], "Path": path, "Type": "blob", "Size": size,
            "Sha256": sha256, **extra}  # fmt: skip


# -- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "url"),
    [
        ("hf://Qwen/Qwen-Image", f"{HF}/api/models/Qwen/Qwen-Image/revision/main?blobs=true"),
        (
            f"hf://Qwen/Qwen-Image@{COMMIT}",
            f"{HF}/api/models/Qwen/Qwen-Image/revision/{COMMIT}?blobs=true",
        ),
        (
            "hf://org/repo@refs/pr/1",
            f"{HF}/api/models/org/repo/revision/refs%2Fpr%2F1?blobs=true",
        ),
        (
            "ms://Qwen/Qwen-Image",
            f"{MS}/api/v1/models/Qwen/Qwen-Image/repo/files?Revision=master&Recursive=true",
        ),
        (
            "ms://Qwen/Qwen-Image@v1.0",
            f"{MS}/api/v1/models/Qwen/Qwen-Image/repo/files?Revision=v1.0&Recursive=true",
        ),
    ],
)
def test_listing_url(ref: str, url: str):
    """Listing URLs use the default branch per source and quote the revision as one segment."""
    assert listing_url(parse_ref(ref), HF, MS) == url


def test_listing_url_uses_the_given_endpoints():
    """The endpoints passed in (e.g. from ``HF_ENDPOINT``) replace the origins."""
    ref = parse_ref("hf://o/r")
    assert listing_url(ref, "http://lan:8080/hf", MS).startswith("http://lan:8080/hf/api/models/")
    ref = parse_ref("ms://o/r")
    assert listing_url(ref, HF, "http://ms.test").startswith("http://ms.test/api/v1/models/")


@pytest.mark.parametrize("ref", ["gpt2:latest", "https://example.com/a.bin"])
def test_listing_url_only_for_repositories(ref: str):
    """Names and plain URLs have no listing."""
    with pytest.raises(ValueError, match="no listing"):
        listing_url(parse_ref(ref), HF, MS)


def _manifest(source: str, commit: str = COMMIT) -> Manifest:
    return Manifest("m", source, commit, (FileEntry("a", 1, "sha256:" + "a" * 64),))


@pytest.mark.parametrize(
    ("source", "path", "url"),
    [
        ("hf://Qwen/Qwen-Image", "model_index.json",
         f"{HF}/Qwen/Qwen-Image/resolve/{COMMIT}/model_index.json"),
        ("hf://Qwen/Qwen-Image", "transformer/config.json",
         f"{HF}/Qwen/Qwen-Image/resolve/{COMMIT}/transformer/config.json"),
        ("hf://o/r", "dir with space/file name.bin",
         f"{HF}/o/r/resolve/{COMMIT}/dir%20with%20space/file%20name.bin"),
        ("hf://o/r", "ünï/名前.bin",
         f"{HF}/o/r/resolve/{COMMIT}/%C3%BCn%C3%AF/%E5%90%8D%E5%89%8D.bin"),
        ("hf://o/r", "a#b?c%d+e.bin", f"{HF}/o/r/resolve/{COMMIT}/a%23b%3Fc%25d%2Be.bin"),
        ("ms://Qwen/Qwen-Image", "vae/config.json",
         f"{MS}/models/Qwen/Qwen-Image/resolve/{COMMIT}/vae/config.json"),
        ("ms://o/r", "a b.bin", f"{MS}/models/o/r/resolve/{COMMIT}/a%20b.bin"),
    ],
)  # fmt: skip
def test_file_url_quotes_the_path_but_keeps_slashes(source: str, path: str, url: str):
    """File URLs pin the manifest's commit and percent-encode the path except for '/'."""
    assert file_url(_manifest(source), path, HF, MS) == url


def test_file_url_of_a_url_source_is_the_source():
    """A single-file manifest's file URL is its source URL."""
    source = "https://github.com/deezer/spleeter/releases/download/v1.4.0/2stems.tar.gz"
    assert file_url(_manifest(source, ""), "2stems.tar.gz", HF, MS) == source


def test_file_url_uses_the_given_endpoints():
    """File URLs are built on the endpoints passed in."""
    m = _manifest("hf://o/r")
    assert file_url(m, "a", "http://lan/hf", MS) == f"http://lan/hf/o/r/resolve/{COMMIT}/a"


def test_file_url_rejects_unknown_sources():
    """A manifest source of another kind is an error of ours, not a URL."""
    with pytest.raises(ValueError, match="unknown manifest source"):
        file_url(_manifest("s3://bucket/x"), "a", HF, MS)


# -- Hugging Face listings -----------------------------------------------------------------------


def test_hf_listing_lfs_and_plain_files():
    """LFS siblings get ``sha256:`` digests and LFS sizes; others get ``gitsha1:`` blob ids."""
    ref = parse_ref("hf://Qwen/Qwen-Image")
    data = hf_listing(
        hf_plain("model_index.json", 512, "AB" * 20),
        hf_lfs("transformer/model.safetensors", 5_000_000_000, "EF" * 32),
        hf_plain(".gitattributes", 1519),
    )
    m = parse_hf_listing(ref, "qwen-image:v1.0", data)
    assert m.name == "qwen-image:v1.0"
    assert m.source == "hf://Qwen/Qwen-Image"
    assert m.commit == COMMIT
    assert m.files == (
        FileEntry(".gitattributes", 1519, f"gitsha1:{BLOB_ID}"),
        FileEntry("model_index.json", 512, "gitsha1:" + "ab" * 20),
        FileEntry("transformer/model.safetensors", 5_000_000_000, "sha256:" + "ef" * 32),
    )


def test_hf_listing_pins_the_branch_commit():
    """Asking for a branch gives a manifest pinned to the listing's commit."""
    m = parse_hf_listing(parse_ref("hf://o/r@main"), "n", hf_listing(hf_plain("a")))
    assert m.commit == COMMIT
    assert m.source == "hf://o/r"


def test_hf_listing_uses_lfs_size_over_pointer_size():
    """For LFS files the size is the LFS object's size, not the sibling's."""
    sib = hf_lfs("w.bin", 1000)
    sib["size"] = 134
    m = parse_hf_listing(parse_ref("hf://o/r"), "n", hf_listing(sib))
    assert m.files[0].size == 1000


def test_hf_listing_ignores_extra_fields():
    """Unknown top-level and sibling fields are ignored."""
    sib = {**hf_plain("a"), "extra": [1, 2]}
    data = {**hf_listing(sib), "cardData": {"license": "apache-2.0"}, "downloads": 5}
    assert len(parse_hf_listing(parse_ref("hf://o/r"), "n", data).files) == 1


BAD_HF: dict[str, Any] = {
    "not-a-dict": [],
    "none": None,
    "missing-sha": {"siblings": [hf_plain("a")]},
    "sha-not-str": hf_listing(hf_plain("a"), sha=123),
    "sha-branch": hf_listing(hf_plain("a"), sha="main"),
    "sha-short": hf_listing(hf_plain("a"), sha=COMMIT[:12]),
    "sha-upper": hf_listing(hf_plain("a"), sha=COMMIT.upper()),
    "missing-siblings": {"sha": COMMIT},
    "siblings-not-list": {"sha": COMMIT, "siblings": {"a": 1}},
    "empty-siblings": hf_listing(),
    "sibling-not-dict": hf_listing("a"),  # type: ignore[arg-type]
    "missing-rfilename": hf_listing({"size": 1, "blobId": BLOB_ID}),
    "missing-blobid": hf_listing({"rfilename": "a", "size": 1}),
    "blobid-not-str": hf_listing({"rfilename": "a", "size": 1, "blobId": 5}),
    "blobid-bad-hex": hf_listing(hf_plain("a", blob_id="xyz")),
    "missing-size": hf_listing({"rfilename": "a", "blobId": BLOB_ID}),
    "size-float": hf_listing(hf_plain("a", size=1.5)),  # type: ignore[arg-type]
    "size-negative": hf_listing(hf_plain("a", size=-1)),
    "size-bool": hf_listing(hf_plain("a", size=True)),
    "lfs-missing-sha": hf_listing({"rfilename": "a", "blobId": BLOB_ID, "lfs": {"size": 1}}),
    "lfs-missing-size": hf_listing({"rfilename": "a", "lfs": {"sha256": LFS_SHA}}),
    "lfs-bad-sha": hf_listing(hf_lfs("a", sha256="12")),
    "path-dotdot": hf_listing(hf_plain("../evil")),
    "path-absolute": hf_listing(hf_plain("/etc/passwd")),
    "path-backslash": hf_listing(hf_plain("a\\b")),
    "path-empty": hf_listing(hf_plain("")),
    "path-duplicate": hf_listing(hf_plain("a"), hf_lfs("a")),
    "path-file-and-dir": hf_listing(hf_plain("a"), hf_plain("a/b")),
}


@pytest.mark.parametrize("data", BAD_HF.values(), ids=BAD_HF.keys())
def test_bad_hf_listings_raise_manifest_error(data: Any):
    """Any malformed or unsafe HF listing raises ``ManifestError``, never another exception."""
    with pytest.raises(ManifestError):
        parse_hf_listing(parse_ref("hf://o/r"), "n", data)


def test_hf_error_names_the_repository():
    """Listing errors say which repository's listing was wrong."""
    with pytest.raises(ManifestError, match=r"hf://Qwen/Qwen-Image"):
        parse_hf_listing(parse_ref("hf://Qwen/Qwen-Image"), "n", hf_listing(sha="main"))


def test_hf_missing_blob_id_hints_at_blobs_parameter():
    """A plain sibling without ``blobId`` hints that the listing was asked without blobs."""
    with pytest.raises(ManifestError, match=r"blobs=true"):
        parse_hf_listing(parse_ref("hf://o/r"), "n", hf_listing({"rfilename": "a", "size": 1}))


@pytest.mark.parametrize(
    "data",
    [
        hf_listing(hf_plain("a"), sha=COMMIT + "\n"),
        hf_listing(hf_plain("a", blob_id=BLOB_ID + "\n")),
    ],
    ids=["sha", "blobId"],
)
def test_hf_listing_rejects_trailing_newline(data: Any):
    """A commit or blob id followed by a newline is malformed, not carried into URLs and paths."""
    with pytest.raises(ManifestError):
        parse_hf_listing(parse_ref("hf://o/r"), "n", data)


def test_hf_listing_with_absurd_size_is_a_manifest_error():
    """A size too large for msgpack is a malformed listing, not an ``OverflowError`` later on."""
    with pytest.raises(ManifestError):
        parse_hf_listing(parse_ref("hf://o/r"), "n", hf_listing(hf_plain("a", size=2**64)))


# -- ModelScope listings -------------------------------------------------------------------------


def test_ms_listing_skips_trees_and_pins_a_single_commit():
    """Directory entries are skipped and one shared 40-hex ``Revision`` becomes the commit."""
    data = ms_listing(
        {"Name": "vae", "Path": "vae", "Type": "tree", "Size": 0, "Revision": COMMIT},
        ms_file("vae/config.json", 600, "CD" * 32, Revision=COMMIT),
        ms_file("model_index.json", 500, Revision=COMMIT),
    )
    m = parse_ms_listing(parse_ref("ms://Qwen/Qwen-Image"), "qwen", data)
    assert m.source == "ms://Qwen/Qwen-Image"
    assert m.commit == COMMIT
    assert m.files == (
        FileEntry("model_index.json", 500, f"sha256:{LFS_SHA}"),
        FileEntry("vae/config.json", 600, "sha256:" + "cd" * 32),
    )


@pytest.mark.parametrize(
    ("ref", "revisions", "commit"),
    [
        ("ms://o/r", [None, None], "master"),
        ("ms://o/r@v1.0", [None, None], "v1.0"),
        ("ms://o/r@v1.0", [COMMIT, COMMIT], COMMIT),
        ("ms://o/r", [COMMIT, None], COMMIT),
        ("ms://o/r", [COMMIT, OTHER_COMMIT], "master"),
        ("ms://o/r@dev", [COMMIT, OTHER_COMMIT], "dev"),
        ("ms://o/r", ["master", "master"], "master"),
        ("ms://o/r@v2", ["v2", "v2"], "v2"),
        ("ms://o/r", [COMMIT.upper(), None], "master"),
        ("ms://o/r", [12345, None], "master"),
    ],
)
def test_ms_listing_commit(ref: str, revisions: list[Any], commit: str):
    """Only exactly one distinct 40-hex ``Revision`` is pinned; else the requested revision
    (default ``master``) is kept."""
    files = [
        ms_file(f"f{i}", **({} if rev is None else {"Revision": rev}))
        for i, rev in enumerate(revisions)
    ]
    assert parse_ms_listing(parse_ref(ref), "n", ms_listing(*files)).commit == commit


@pytest.mark.parametrize("code", [None, 200])
def test_ms_listing_code_200_or_absent_is_fine(code: Any):
    """A listing with ``Code`` 200, or without ``Code``, is accepted."""
    data = ms_listing(ms_file("a"), code=code)
    if code is None:
        del data["Code"]
    assert len(parse_ms_listing(parse_ref("ms://o/r"), "n", data).files) == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"Code": 10010205, "Message": "model not found", "Data": None}, "model not found"),
        ({"Code": 401, "Data": {"Files": []}}, "401"),
    ],
)
def test_ms_listing_error_code_is_an_error(data: Any, message: str):
    """A ``Code`` other than 200 raises ``ManifestError`` carrying ModelScope's message."""
    with pytest.raises(ManifestError, match=message):
        parse_ms_listing(parse_ref("ms://o/r"), "n", data)


BAD_MS: dict[str, Any] = {
    "not-a-dict": [],
    "missing-data": {"Code": 200},
    "data-not-dict": {"Code": 200, "Data": []},
    "missing-files": {"Code": 200, "Data": {}},
    "files-not-list": {"Code": 200, "Data": {"Files": {}}},
    "no-files": ms_listing(),
    "only-trees": ms_listing({"Path": "a", "Type": "tree"}),
    "missing-path": ms_listing({"Type": "blob", "Size": 1, "Sha256": LFS_SHA}),
    "missing-size": ms_listing({"Path": "a", "Type": "blob", "Sha256": LFS_SHA}),
    "missing-sha": ms_listing({"Path": "a", "Type": "blob", "Size": 1}),
    "sha-empty": ms_listing(ms_file("a", sha256="")),
    "sha-short": ms_listing(ms_file("a", sha256="ab" * 20)),
    "size-negative": ms_listing(ms_file("a", size=-1)),
    "path-dotdot": ms_listing(ms_file("../a")),
    "path-absolute": ms_listing(ms_file("/a")),
    "path-duplicate": ms_listing(ms_file("a"), ms_file("a")),
}


@pytest.mark.parametrize("data", BAD_MS.values(), ids=BAD_MS.keys())
def test_bad_ms_listings_raise_manifest_error(data: Any):
    """Any malformed or unsafe ModelScope listing raises ``ManifestError``."""
    with pytest.raises(ManifestError):
        parse_ms_listing(parse_ref("ms://o/r"), "n", data)
