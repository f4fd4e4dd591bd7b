"""What the Hub said of a repository (``core.hfinfo``), the metadata routes and answers of
``core.hfapi`` that use it, and the store keeping it: plain sync tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmodel.adapters.store import Store
from p2pmodel.core import hfapi, hfinfo
from p2pmodel.core.manifest import FileEntry, Manifest

COMMIT = "a" * 40
SHA = "b" * 64
MANIFEST = Manifest(
    "hf://acme/tiny",
    "hf://acme/tiny",
    COMMIT,
    (
        FileEntry("config.json", 10, "gitsha1:" + "c" * 40),
        FileEntry("unet/model.safetensors", 3000, "sha256:" + SHA),
    ),
)
UPSTREAM: dict[str, Any] = {
    "_id": "65a1b2c3d4e5f6a7b8c9d0e1",
    "id": "acme/tiny",
    "sha": COMMIT,
    "pipeline_tag": "text-generation",
    "library_name": "transformers",
    "tags": ["transformers", "safetensors", 7],
    "cardData": {"license": "mit", "deep": [{"xetHash": "x", "keep": 1}]},
    "lastModified": "2024-02-29T12:00:00.000Z",
    "createdAt": "2024-02-30T12:00:00.000Z",  # no such day: left out
    "gated": "auto",
    "downloads": -1,  # not a count: left out
    "likes": 3,
    "transformersInfo": {"auto_model": "AutoModelForCausalLM", "extra": "x", "processor": None},
    "safetensors": {"parameters": {"BF16": 100, "bad": "x"}, "total": 100},
    "siblings": [{"rfilename": "config.json", "xetHash": "y"}],
    "xetEnabled": True,
    "securityRepoStatus": {"scansDone": True},
}


def test_only_whitelisted_fields_pass_checked():
    """Known fields pass in the shape the client parses; unknown ones, siblings, malformed
    values and ``xetHash`` at any depth are left out."""
    kept = hfinfo.repo_fields(UPSTREAM)
    assert kept == {
        "id": "acme/tiny",
        "sha": COMMIT,
        "pipeline_tag": "text-generation",
        "library_name": "transformers",
        "tags": ["transformers", "safetensors"],
        "cardData": {"license": "mit", "deep": [{"keep": 1}]},
        "lastModified": "2024-02-29T12:00:00.000Z",
        "gated": "auto",
        "likes": 3,
        "transformersInfo": {
            "auto_model": "AutoModelForCausalLM",
            "custom_class": None,
            "pipeline_tag": None,
            "processor": None,
        },
        "safetensors": {"parameters": {"BF16": 100}, "total": 100},
    }
    assert hfinfo.repo_fields(["not", "a", "dict"]) == {}
    assert "transformersInfo" not in hfinfo.repo_fields({"transformersInfo": {"processor": "p"}})


@pytest.mark.parametrize(
    ("date", "ok"),
    [
        ("2024-01-02T03:04:05.000Z", True),
        ("2024-01-02T03:04:05Z", True),
        ("2024-01-02T03:04:05.123456789Z", True),
        ("2023-02-29T00:00:00.000Z", False),
        ("2024-13-01T00:00:00.000Z", False),
        ("2024-01-02 03:04:05", False),
        ("2024-01-02T24:00:00.000Z", False),
        (20240102, False),
    ],
)
def test_dates_are_what_the_client_parses(date, ok):
    """A date passes only in the one form ``huggingface_hub``'s parser takes."""
    from huggingface_hub.utils import parse_datetime

    assert hfinfo.is_date(date) is ok
    if ok:
        parse_datetime(date)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["xetHash", "a", "tags", "lfs"]), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*hfinfo.MODEL_FIELDS, "xetHash"]), json_values))
def test_no_xet_hash_survives_any_answer(data):
    """Whatever upstream sends, what is kept has no ``xetHash`` and encodes as JSON."""
    doc = hfinfo.decode(hfinfo.encode({"info": hfinfo.repo_fields(data)}))
    assert "xetHash" not in json.dumps(doc)


def test_the_document_is_bounded_bulkiest_first():
    """Over the bound, cardData and config go first; then the history; the ids stay."""
    big = {"info": {"id": "a/b", "sha": COMMIT, "pipeline_tag": "x", "cardData": {}}}
    big["info"]["cardData"] = {f"k{i}": "v" * 1000 for i in range(400)}
    big["commits"] = hfinfo.pinned_commits(COMMIT, None)
    data = hfinfo.encode(big)
    assert len(data) <= hfinfo.LIMIT
    doc = hfinfo.decode(data)
    assert doc["info"] == {"id": "a/b", "sha": COMMIT, "pipeline_tag": "x"}
    assert doc["commits"][0]["id"] == COMMIT
    tiny = hfinfo.encode(big, limit=70)
    assert hfinfo.decode(tiny, limit=70) == {"info": {"id": "a/b", "sha": COMMIT}}
    assert hfinfo.decode(b"x" * (hfinfo.LIMIT + 1)) == {}
    assert hfinfo.decode(b"{not json") == {}
    assert hfinfo.decode(b"[" * 100_000) == {}


def test_refs_and_commits_shapes():
    """Refs and commits pass entry by entry in the client's shape; others are dropped, and a
    wrong overall shape is None (no answer)."""
    good = {"name": "main", "ref": "refs/heads/main", "targetCommit": COMMIT}
    refs = hfinfo.refs(
        {
            "branches": [good, {"name": "x", "ref": "heads/x", "targetCommit": COMMIT}],
            "converts": [],
            "tags": [],
        }
    )
    assert refs == {"branches": [good], "converts": [], "tags": []}
    assert hfinfo.refs({"branches": []}) is None
    assert hfinfo.refs_answer(refs, prs=True)["pullRequests"] == []
    assert "pullRequests" not in hfinfo.refs_answer(refs, prs=False)
    commit = {
        "id": COMMIT,
        "title": "t",
        "message": "m",
        "authors": [{"user": "u", "avatar": "a", "xetHash": "x"}, {"nope": 1}],
        "date": "2024-01-02T03:04:05.000Z",
        "formatted": {"title": "<b>t</b>"},
    }
    kept = hfinfo.commits([commit, {**commit, "id": "short"}, "junk"])
    assert kept == [
        {
            **{k: commit[k] for k in ("id", "title", "message", "date")},
            "authors": [{"user": "u", "avatar": "a"}],
        }
    ]
    assert hfinfo.commits({"not": "a list"}) is None
    pinned = hfinfo.pinned_refs([("main", COMMIT), ("dev", "b" * 40), ("main", "c" * 40)])
    assert [(b["name"], b["targetCommit"]) for b in pinned["branches"]] == [
        ("dev", "b" * 40),
        ("main", COMMIT),
    ]
    (one,) = hfinfo.pinned_commits(COMMIT, {"lastModified": "2024-01-02T03:04:05.000Z"})
    assert (one["id"], one["date"]) == (COMMIT, "2024-01-02T03:04:05.000Z")
    assert hfinfo.pinned_commits(COMMIT, None)[0]["date"] == hfinfo.EPOCH


def test_routes_of_the_metadata_api():
    """model_info's query (blobs, expand), paths-info (POST), refs and commits are routed."""
    r = hfapi.route("GET", "/api/models/acme/tiny/revision/main", "blobs=True&expand=tags")
    assert (r.kind, r.blobs, r.expand, r.method) == ("revision", True, ("tags",), "GET")
    r = hfapi.route("GET", "/api/models/acme/tiny", "expand[]=a&expand[]=b")
    assert (r.kind, r.revision, r.expand) == ("revision", "main", ("a", "b"))
    r = hfapi.route("POST", "/api/datasets/acme/d/paths-info/refs%2Fpr%2F1")
    assert (r.kind, r.repo_type, r.revision, r.method) == (
        "paths-info",
        "dataset",
        "refs/pr/1",
        "POST",
    )
    r = hfapi.route("GET", "/api/models/acme/tiny/refs", "include_prs=1")
    assert (r.kind, r.prs) == ("refs", True)
    r = hfapi.route("GET", "/api/models/acme/tiny/commits/main")
    assert (r.kind, r.revision) == ("commits", "main")
    assert hfapi.route("GET", "/api/models/acme/tiny/refs/extra") is None
    with pytest.raises(hfapi.BadRoute):
        hfapi.route("GET", "/api/models/acme/tiny/commits/..")


def test_repo_info_from_what_upstream_said():
    """The answer keeps upstream's fields but the id asked and the commit pinned; siblings
    carry sizes, blob ids and LFS sha256 only with ``blobs``; ``expand`` narrows it."""
    said = hfinfo.repo_fields({**UPSTREAM, "sha": "d" * 40, "id": "other/name"})
    route = hfapi.Route("revision", repo="acme/tiny", blobs=True)
    info = hfapi.repo_info(MANIFEST, route, said)
    assert (info["id"], info["sha"], info["pipeline_tag"]) == (
        "acme/tiny",
        COMMIT,
        "text-generation",
    )
    lfs = info["siblings"][1]
    pointer = hfapi.lfs_pointer(SHA, 3000)
    assert lfs == {
        "rfilename": "unet/model.safetensors",
        "size": 3000,
        "blobId": hfapi.git_blob_id(pointer),
        "lfs": {"sha256": SHA, "size": 3000, "pointerSize": len(pointer)},
    }
    assert info["siblings"][0] == {"rfilename": "config.json", "size": 10, "blobId": "c" * 40}
    plain = hfapi.repo_info(MANIFEST, hfapi.Route("revision", repo="acme/tiny"), said)
    assert plain["siblings"] == [
        {"rfilename": "config.json"},
        {"rfilename": "unet/model.safetensors"},
    ]
    narrow = hfapi.Route("revision", repo="acme/tiny", expand=("pipeline_tag", "nope"))
    assert hfapi.repo_info(MANIFEST, narrow, said) == {
        "_id": COMMIT,
        "id": "acme/tiny",
        "pipeline_tag": "text-generation",
    }
    bare = hfapi.repo_info(MANIFEST, hfapi.Route("revision", "dataset", "acme/d"))
    assert "modelId" not in bare and bare["tags"] == [] and bare["gated"] is False


def test_paths_info_requests_and_answers():
    """Form and JSON bodies; files and folders as the tree lists them, in the order asked,
    unknown and repeated paths left out."""
    form = b"paths=unet%2Fmodel.safetensors&paths=unet&expand=True"
    assert hfapi.paths_request("application/x-www-form-urlencoded", form) == (
        ["unet/model.safetensors", "unet"],
        True,
    )
    assert hfapi.paths_request("application/json; charset=utf-8", b'{"paths": "a"}') == (
        ["a"],
        False,
    )
    assert hfapi.paths_request("", b"") == ([], False)
    for kind, body in [("application/json", b'{"paths": [null]}'), ("", b"%zz&&="), ("", b"\xff")]:
        with pytest.raises(hfapi.BadRequest):
            hfapi.paths_request(kind, body)
    with pytest.raises(hfapi.BadRequest):
        hfapi.paths_request("application/json", json.dumps({"paths": ["a"] * 10_001}).encode())
    got = hfapi.paths_info(
        MANIFEST, ["unet/model.safetensors", "/unet/", "x", "config.json", "unet"]
    )
    tree = {e["path"]: e for e in hfapi.tree(MANIFEST)}
    assert got == [tree["unet/model.safetensors"], tree["unet"], tree["config.json"]]
    assert got[1]["type"] == "directory" and "xetHash" not in json.dumps(got)


def test_the_store_keeps_it_beside_the_manifest(tmp_path: Path):
    """Kept parts merge, pass the whitelist again when read, and go with their manifest."""
    store = Store(tmp_path)
    digest = store.save_manifest(MANIFEST)
    assert store.hub_info(digest) == {}
    store.keep_hub_info(digest, info=hfinfo.repo_fields(UPSTREAM))
    store.keep_hub_info(digest, commits=hfinfo.pinned_commits(COMMIT, None))
    doc = store.hub_info(digest)
    assert doc["info"]["pipeline_tag"] == "text-generation" and doc["commits"][0]["id"] == COMMIT
    path = store.hub_info_dir / f"{digest.split(':')[1]}.json"
    path.write_text(json.dumps({"info": {"id": "a/b", "xetHash": "x", "evil": 1}}))
    assert store.hub_info(digest) == {"info": {"id": "a/b"}}
    assert not [p for p in store.hub_info_dir.iterdir() if p.name.endswith(".tmp")]
    os.utime(path, (0, 0))
    os.utime(store.manifests / path.name.replace(".json", ".msgpack"), (0, 0))
    store.collect()  # no ref names the manifest: both go
    assert not path.exists() and store.load_manifest(digest) is None
