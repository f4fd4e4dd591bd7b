"""Manifests: path and digest rules, canonical msgpack, strict decoding
(``p2pmodel.core.manifest``)."""

from __future__ import annotations

import hashlib
import random

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmodel.core.errors import ProtocolError
from p2pmodel.core.manifest import (
    MAX_FILE_SIZE,
    MAX_FILES,
    MAX_MANIFEST_BYTES,
    FileEntry,
    Manifest,
    ManifestError,
    check_digest,
    check_path,
)

COMMIT = "75e0b4be04f60ec59a75f475837eced720f823b6"
SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64
GIT_C = "gitsha1:" + "c" * 40


def entry(path: str, size: int = 1, digest: str = SHA_A) -> FileEntry:
    return FileEntry(path, size, digest)


def manifest(*files: FileEntry) -> Manifest:
    return Manifest("qwen-image:v1.0", "hf://Qwen/Qwen-Image", COMMIT, files)


def packed(**fields: object) -> bytes:
    obj: dict[str, object] = {
        "v": 1,
        "name": "n",
        "source": "hf://o/r",
        "commit": COMMIT,
        "files": [["a", 1, SHA_A]],
    }
    obj.update(fields)
    return msgpack.packb(dict(sorted(obj.items())), use_bin_type=True)


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "model.safetensors",
        "transformer/diffusion_pytorch_model-00001-of-00009.safetensors",
        "a/b/c/d.json",
        ".gitattributes",
        "dir/.hidden",
        "..foo",
        "foo..",
        "a/b..c/d",
        "with space/ünïcode 名前.bin",
        "ab:c",
        "dir/a:b",
        "x" * 1024,
    ],
)
def test_check_path_accepts_safe_relative_paths(path: str):
    """Repo-relative POSIX paths, including dotfiles and names containing dots, are accepted."""
    assert check_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "/",
        "..",
        "../x",
        "a/../../x",
        "a/..",
        ".",
        "./a",
        "a/./b",
        "a\\b",
        "..\\x",
        "a//b",
        "a/",
        "a\0b",
        "C:/Windows/x",
        "c:x",
        "Z:\\x",
        "x" * 1025,
    ],
)
def test_check_path_rejects_unsafe_paths(path: str):
    """Absolute, dot, dot-dot, backslash, empty-component, NUL, drive and overlong paths fail."""
    with pytest.raises(ManifestError):
        check_path(path)


def test_manifest_error_is_a_protocol_error():
    """A bad manifest is a source's fault (``ProtocolError``, exit 3), not ours."""
    with pytest.raises(ProtocolError) as info:
        check_path("../x")
    assert info.value.exit_code == 3


@pytest.mark.parametrize("path", ["../x", "/abs", "a\\b"])
def test_file_entry_validates_its_path(path: str):
    """Constructing a ``FileEntry`` with an unsafe path raises ``ManifestError``."""
    with pytest.raises(ManifestError):
        entry(path)


# -- digests and sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("digest", [SHA_A, GIT_C, "sha256:" + "0123456789abcdef" * 4])
def test_check_digest_accepts_both_algorithms(digest: str):
    """``sha256:<64 hex>`` and ``gitsha1:<40 hex>`` are the two accepted digest forms."""
    assert check_digest(digest) == digest


@pytest.mark.parametrize(
    "digest",
    [
        "",
        "a" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "SHA256:" + "a" * 64,
        "sha1:" + "a" * 40,
        "gitsha1:" + "a" * 64,
        "gitsha1:" + "c" * 39,
        "sha256:" + "a" * 40,
        "md5:" + "a" * 32,
        " sha256:" + "a" * 64,
    ],
)
def test_check_digest_rejects_malformed_digests(digest: str):
    """Wrong algorithm, length, case or characters raise ``ManifestError``."""
    with pytest.raises(ManifestError):
        check_digest(digest)
    with pytest.raises(ManifestError):
        entry("a", 1, digest)


def test_check_digest_rejects_trailing_newline():
    """A digest followed by a newline is not a digest."""
    with pytest.raises(ManifestError):
        check_digest(SHA_A + "\n")


@pytest.mark.parametrize("size", [-1, -(2**40), True, False, 1.0, "1", None])
def test_file_entry_rejects_bad_sizes(size: object):
    """Sizes must be non-negative ints; negatives, bools, floats, strings and None fail."""
    with pytest.raises(ManifestError):
        FileEntry("a", size, SHA_A)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, 2**40, MAX_FILE_SIZE])
def test_file_entry_accepts_sizes_up_to_the_limit(size: int):
    """Zero and large sizes up to ``MAX_FILE_SIZE`` are valid and survive a round trip."""
    m = manifest(entry("a", size))
    assert Manifest.from_bytes(m.to_bytes()) == m


@pytest.mark.parametrize("size", [MAX_FILE_SIZE + 1, 2**63, 2**64])
def test_size_too_large_is_rejected_up_front(size: int):
    """An absurd size (one msgpack may not even encode) is refused when the entry is built."""
    with pytest.raises(ManifestError, match="bad size"):
        entry("a", size)


# -- whole-manifest rules ------------------------------------------------------------------------


def test_duplicate_paths_are_rejected():
    """Two entries with the same path are an error even when their content differs."""
    with pytest.raises(ManifestError, match="duplicate"):
        manifest(entry("a", 1, SHA_A), entry("a", 2, SHA_B))
    with pytest.raises(ManifestError, match="duplicate"):
        manifest(entry("a"), entry("a"))


@pytest.mark.parametrize(
    ("first", "second", "clash"),
    [
        ("a", "a/b", "a"),
        ("a/b", "a/b/c", "a/b"),
        ("x/y", "x/y/z/w", "x/y"),
    ],
)
def test_a_path_cannot_be_both_file_and_directory(first: str, second: str, clash: str):
    """A file whose path is also a parent directory of another file is rejected."""
    with pytest.raises(ManifestError, match="both a file and a directory") as info:
        manifest(entry(second), entry(first))
    assert repr(clash) in str(info.value)


def test_siblings_and_similar_names_do_not_clash():
    """Paths that merely share a prefix ("ab" vs "a/b", "a.json" vs "a/x") are fine."""
    m = manifest(entry("ab"), entry("a/b"), entry("a.json"), entry("a/x"), entry("a-b/c"))
    assert len(m.files) == 5


def test_files_are_sorted_by_path():
    """The manifest stores its files sorted by path whatever order they were given in."""
    m = manifest(entry("z"), entry("a/b"), entry("m"), entry("a.txt"))
    assert [f.path for f in m.files] == ["a.txt", "a/b", "m", "z"]


def test_too_many_files_are_rejected():
    """More than ``MAX_FILES`` entries is an error."""
    with pytest.raises(ManifestError, match="too many"):
        manifest(*[entry("a")] * (MAX_FILES + 1))


def test_total_size_and_blobs_dedupe_shared_content():
    """Two paths with the same digest are one blob; ``total_size`` still counts both paths."""
    m = manifest(entry("a", 10, SHA_A), entry("copy/a", 10, SHA_A), entry("b", 5, GIT_C))
    assert m.blobs() == {SHA_A: 10, GIT_C: 5}
    assert m.total_size == 25


def test_empty_manifest_is_allowed():
    """A manifest with no files is valid, with no blobs and zero size."""
    m = manifest()
    assert m.blobs() == {}
    assert m.total_size == 0
    assert Manifest.from_bytes(m.to_bytes()) == m


def test_build_equals_direct_construction():
    """``Manifest.build`` accepts any iterable of entries and equals the constructor."""
    files = [entry("b"), entry("a")]
    built = Manifest.build("n", "hf://o/r", COMMIT, iter(files))
    assert built == Manifest("n", "hf://o/r", COMMIT, tuple(files))


# -- canonical encoding --------------------------------------------------------------------------


def test_file_order_does_not_change_bytes_or_digest():
    """The same files in a different order encode to the same bytes and manifest digest."""
    files = [entry("b", 2, SHA_B), entry("a/x", 1, SHA_A), entry("c", 3, GIT_C)]
    one, two = manifest(*files), manifest(*reversed(files))
    assert one == two
    assert one.to_bytes() == two.to_bytes()
    assert one.digest == two.digest


def test_digest_is_sha256_of_the_encoding_and_changes_with_content():
    """``digest`` is ``sha256:`` of ``to_bytes()``, and any field change gives another digest."""
    m = manifest(entry("a"))
    assert m.digest == "sha256:" + hashlib.sha256(m.to_bytes()).hexdigest()
    others = [
        manifest(entry("a", 2)),
        manifest(entry("b")),
        manifest(entry("a", 1, SHA_B)),
        Manifest("other", m.source, m.commit, m.files),
        Manifest(m.name, "hf://x/y", m.commit, m.files),
        Manifest(m.name, m.source, "b" * 40, m.files),
    ]
    assert len({m.digest, *(o.digest for o in others)}) == 7


def test_encoding_is_sorted_keys_and_no_floats():
    """The encoding is a map with sorted keys and file entries as [path, size, digest]."""
    m = manifest(entry("b", 2, SHA_B), entry("a", 1, SHA_A))
    obj = msgpack.unpackb(m.to_bytes(), raw=False, object_pairs_hook=list)
    assert [k for k, _ in obj] == ["commit", "files", "name", "source", "v"]
    assert dict(obj)["files"] == [["a", 1, SHA_A], ["b", 2, SHA_B]]
    assert dict(obj)["v"] == 1


# Directory components never contain "." and file names always end in ".bin", so generated paths
# are valid and never clash as file-vs-directory.
_component = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\\\0.:"),
    min_size=1,
    max_size=8,
)
_paths = st.builds(
    lambda dirs, name: "/".join([*dirs, name + ".bin"]),
    st.lists(_component, max_size=2),
    st.text(alphabet="abc é", max_size=4),
)
_digests = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
    st.binary(min_size=20, max_size=20).map(lambda b: "gitsha1:" + b.hex()),
)


@given(
    entries=st.dictionaries(_paths, st.tuples(st.integers(0, MAX_FILE_SIZE), _digests), max_size=8),
    seed=st.integers(0, 2**32),
)
def test_round_trip_and_order_independence(entries: dict[str, tuple[int, str]], seed: int):
    """Any valid manifest decodes back to itself, and shuffling files leaves the bytes alone."""
    sizes: dict[str, int] = {}  # one content has one size
    files = [FileEntry(p, sizes.setdefault(d, s), d) for p, (s, d) in entries.items()]
    m = manifest(*files)
    random.Random(seed).shuffle(files)
    assert manifest(*files).to_bytes() == m.to_bytes()
    again = Manifest.from_bytes(m.to_bytes())
    assert again == m
    assert again.to_bytes() == m.to_bytes()
    assert again.digest == m.digest


# -- strict decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"not msgpack at all",
        b"\x91",
        packed() + b"\x00",
        msgpack.packb({1: 2}),
        msgpack.packb({"v": 1, "name": b"bytes"}, use_bin_type=True),
        msgpack.packb([1, "n", "s", "c", []]),
        msgpack.packb("a string"),
        msgpack.packb(None),
    ],
    ids=[
        "empty",
        "reserved-byte",
        "text",
        "truncated",
        "trailing-data",
        "int-key",
        "bin-value",
        "array",
        "string",
        "nil",
    ],
)
def test_from_bytes_rejects_garbage(data: bytes):
    """Undecodable or non-map input raises ``ManifestError``, never a msgpack exception."""
    with pytest.raises(ManifestError):
        Manifest.from_bytes(data)


@pytest.mark.parametrize("version", [0, 2, -1, "1", None])
def test_from_bytes_rejects_other_versions(version: object):
    """Only format version 1 is accepted."""
    with pytest.raises(ManifestError, match="version-1"):
        Manifest.from_bytes(packed(v=version))


def test_from_bytes_rejects_missing_version():
    """A map without ``v`` is not a manifest."""
    obj = msgpack.unpackb(packed())
    del obj["v"]
    with pytest.raises(ManifestError):
        Manifest.from_bytes(msgpack.packb(obj))


@pytest.mark.parametrize("version", [True, 1.0])
def test_from_bytes_rejects_version_of_wrong_type(version: object):
    """The version must be the integer 1, not a bool or float that compares equal to it."""
    with pytest.raises(ManifestError):
        Manifest.from_bytes(packed(v=version))


@pytest.mark.parametrize(
    "fields",
    [
        {"name": 1},
        {"source": None},
        {"commit": ["x"]},
        {"files": "a"},
        {"files": {"a": 1}},
        {"files": [["a", 1]]},
        {"files": [["a", 1, SHA_A, "extra"]]},
        {"files": ["a"]},
        {"files": [[1, 1, SHA_A]]},
        {"files": [["a", "1", SHA_A]]},
        {"files": [["a", 1.0, SHA_A]]},
        {"files": [["a", True, SHA_A]]},
        {"files": [["a", 1, 5]]},
        {"files": [["a", -1, SHA_A]]},
        {"files": [["../a", 1, SHA_A]]},
        {"files": [["a", 1, "sha256:xyz"]]},
        {"files": [["a", 1, SHA_A], ["a", 2, SHA_B]]},
        {"files": [["a", 1, SHA_A], ["a/b", 2, SHA_B]]},
    ],
)
def test_from_bytes_rejects_wrong_types_and_bad_entries(fields: dict[str, object]):
    """Wrong field types and invalid file entries raise ``ManifestError``."""
    with pytest.raises(ManifestError):
        Manifest.from_bytes(packed(**fields))


@pytest.mark.parametrize("missing", ["name", "source", "commit", "files"])
def test_from_bytes_rejects_missing_fields(missing: str):
    """Every field is required."""
    obj = msgpack.unpackb(packed())
    del obj[missing]
    with pytest.raises(ManifestError):
        Manifest.from_bytes(msgpack.packb(obj))


def test_from_bytes_rejects_oversized_input():
    """Input larger than ``MAX_MANIFEST_BYTES`` is refused before decoding."""
    with pytest.raises(ManifestError, match="too large"):
        Manifest.from_bytes(b"\x00" * (MAX_MANIFEST_BYTES + 1))


def test_from_bytes_rejects_too_many_entries():
    """A files array longer than ``MAX_FILES`` is refused by the decoder."""
    data = packed(files=[["a", 1, SHA_A]] * (MAX_FILES + 1))
    assert len(data) < MAX_MANIFEST_BYTES
    with pytest.raises(ManifestError):
        Manifest.from_bytes(data)


def test_from_bytes_normalises_unsorted_files():
    """A decodable manifest with unsorted files decodes to the canonical, sorted manifest."""
    m = Manifest.from_bytes(packed(files=[["b", 2, SHA_B], ["a", 1, SHA_A]]))
    assert [f.path for f in m.files] == ["a", "b"]
    assert m.to_bytes() == packed(files=[["a", 1, SHA_A], ["b", 2, SHA_B]])


def test_one_digest_with_two_sizes_is_rejected():
    """A listing that gives the same content two sizes is refused rather than blamed on mirrors."""
    digest = "sha256:" + "a" * 64
    with pytest.raises(ManifestError, match="two sizes"):
        Manifest(
            "m:t", "hf://o/r", "c" * 40, (FileEntry("a", 1, digest), FileEntry("b", 2, digest))
        )
