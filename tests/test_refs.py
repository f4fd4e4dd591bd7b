"""Parsing model references as users type them (``p2pmodel.core.refs``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmodel.core.errors import UserError
from p2pmodel.core.refs import COMMIT_RE, Ref, parse_ref

COMMIT = "75e0b4be04f60ec59a75f475837eced720f823b6"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("qwen-image:v1.0", Ref("name", "qwen-image", "v1.0")),
        ("gpt2", Ref("name", "gpt2", "latest")),
        ("flux.1-schnell:latest", Ref("name", "flux.1-schnell", "latest")),
        ("a_b:V2-RC.1", Ref("name", "a_b", "V2-RC.1")),
        ("  gpt2:latest \n", Ref("name", "gpt2", "latest")),
        ("hf://Qwen/Qwen-Image", Ref("hf", "Qwen/Qwen-Image", "")),
        (f"hf://Qwen/Qwen-Image@{COMMIT}", Ref("hf", "Qwen/Qwen-Image", COMMIT)),
        ("hf://org/repo@refs/pr/1", Ref("hf", "org/repo", "refs/pr/1")),
        ("hf://org/repo/", Ref("hf", "org/repo", "")),
        ("hf://datasets/org/data@v2", Ref("hf", "datasets/org/data", "v2")),
        ("ms://Qwen/Qwen-Image", Ref("ms", "Qwen/Qwen-Image", "")),
        ("ms://Qwen/Qwen-Image@v1.0", Ref("ms", "Qwen/Qwen-Image", "v1.0")),
        ("https://example.com/a/b.bin", Ref("url", "https://example.com/a/b.bin")),
        ("http://example.com/f?x=1", Ref("url", "http://example.com/f?x=1")),
    ],
)
def test_parse_ref_accepts_every_form(text: str, expected: Ref):
    """Each supported spelling parses to the expected kind, name and tag."""
    assert parse_ref(text) == expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("gpt2", "gpt2:latest"),
        ("qwen-image:v1.0", "qwen-image:v1.0"),
        ("hf://org/repo", "hf://org/repo"),
        ("hf://org/repo/", "hf://org/repo"),
        ("hf://org/repo@main", "hf://org/repo@main"),
        (f"ms://org/repo@{COMMIT}", f"ms://org/repo@{COMMIT}"),
        ("https://example.com/a.bin", "https://example.com/a.bin"),
    ],
)
def test_text_is_canonical_and_reparses_to_the_same_ref(text: str, canonical: str):
    """``Ref.text`` is the canonical spelling and parsing it gives back an equal ``Ref``."""
    ref = parse_ref(text)
    assert ref.text == canonical
    assert parse_ref(ref.text) == ref


@pytest.mark.parametrize(
    ("text", "pinned"),
    [
        (f"hf://org/repo@{COMMIT}", True),
        (f"ms://org/repo@{COMMIT}", True),
        ("hf://org/repo", False),
        ("hf://org/repo@main", False),
        (f"hf://org/repo@{COMMIT.upper()}", False),
        (f"hf://org/repo@{COMMIT[:39]}", False),
        ("qwen-image:v1.0", False),
        ("https://example.com/a.bin", False),
    ],
)
def test_pinned_only_for_a_full_lowercase_commit(text: str, pinned: bool):
    """Only hf:// and ms:// references at a 40-hex commit count as pinned."""
    assert parse_ref(text).pinned is pinned


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("qwen-image:v1.0", ("qwen-image", "v1.0")),
        ("gpt2", ("gpt2", "latest")),
        ("hf://Qwen/Qwen-Image", ("hf", "Qwen", "Qwen-Image", "main")),
        (f"hf://Qwen/Qwen-Image@{COMMIT}", ("hf", "Qwen", "Qwen-Image", COMMIT)),
        ("ms://org/repo@v2", ("ms", "org", "repo", "v2")),
        ("https://example.com/a/b c.bin", ("url", "example.com_a_b_c.bin")),
        ("https://example.com:8443/x/", ("url", "example.com_8443_x")),
        ("hf://org/repo@refs/pr/1", ("hf", "org", "repo", "refs%2Fpr%2F1")),
        ("https://../_", ("url", "file")),
    ],
)
def test_snapshot_parts(text: str, parts: tuple[str, ...]):
    """Snapshot directories follow kind/org/repo/rev for repos, name/tag for names, a safe
    single component for URLs."""
    assert parse_ref(text).snapshot_parts() == parts


def test_snapshot_parts_of_a_long_url_are_bounded():
    """A very long URL gives one component of at most 200 safe characters."""
    ref = parse_ref("https://example.com/" + "x" * 500)
    kind, component = ref.snapshot_parts()
    assert kind == "url"
    assert len(component) == 200
    assert set(component) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-")


@pytest.mark.parametrize("text", ["https://../_", "https://./_"])
def test_snapshot_parts_of_a_url_never_dot_or_dotdot(text: str):
    """A URL's snapshot component is never '.' or '..', so it stays under snapshots/url/."""
    parts = parse_ref(text).snapshot_parts()
    assert all(p not in ("", ".", "..") for p in parts)


@pytest.mark.parametrize(
    "text", ["hf://org/repo@v1/fix", "ms://org/repo@a/.", "hf://org/repo@a//b"]
)
def test_snapshot_parts_are_single_path_components(text: str):
    """Every snapshot part is one path component, so no ref's snapshot lies inside another's."""
    parts = parse_ref(text).snapshot_parts()
    assert all("/" not in p and p not in ("", ".", "..") for p in parts)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("s3://bucket/key", "unknown scheme 's3'"),
        ("HF://org/repo", "unknown scheme"),
        ("ftp://example.com/a", "unknown scheme"),
        ("hf://org", "bad repository"),
        ("hf://org/repo/extra", "bad repository"),
        ("hf://org/a..b", "bad repository"),
        ("hf://../repo", "bad repository"),
        ("hf://org/..", "bad repository"),
        ("hf://", "bad repository"),
        ("hf://org/re po", "bad repository"),
        ("ms://org/repo@../x", "bad revision"),
        ("hf://org/repo@main..x", "bad revision"),
        ("hf://org/repo@-x", "bad revision"),
        ("hf://org/repo@a@b", "bad revision"),
        ("Qwen-Image:v1.0", "bad model name"),
        ("qwen image", "bad model name"),
        (":v1", "bad model name"),
        ("-x:v1", "bad model name"),
        ("x" * 129, "bad model name"),
        ("name:", "bad tag"),
        ("name:-v1", "bad tag"),
        ("name:v1:v2", "bad tag"),
        ("name:v 1", "bad tag"),
        ("name:" + "t" * 129, "bad tag"),
        ("https://example.com", "bad URL"),
        ("https://example.com/", "bad URL"),
        ("https://example.com///", "bad URL"),
        ("https:///path/only", "bad URL"),
        ("https://", "bad URL"),
    ],
)
def test_bad_references_raise_user_error(text: str, message: str):
    """Malformed references raise ``UserError`` with a message saying what is wrong."""
    with pytest.raises(UserError, match=message) as info:
        parse_ref(text)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("text", ["abc\n:v1", "hf://org/repo\n@main", "ms://org/repo\n@v1"])
def test_newline_inside_a_reference_is_rejected(text: str):
    """A newline inside a name or repository is rejected, not carried into paths and URLs."""
    with pytest.raises(UserError):
        parse_ref(text)


def test_commit_re_rejects_trailing_newline():
    """``COMMIT_RE`` matches exactly 40 hex digits and nothing after them."""
    assert not COMMIT_RE.match(COMMIT + "\n")


def test_user_error_quotes_the_offending_text():
    """The error message includes what the user typed, so they can spot the mistake."""
    with pytest.raises(UserError) as info:
        parse_ref("hf://org/a..b")
    assert "'hf://org/a..b'" in str(info.value)


_names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,127}", fullmatch=True)
_tags = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True)


@given(name=_names, tag=_tags)
def test_any_valid_name_and_tag_round_trip(name: str, tag: str):
    """Every name and tag the regexes allow parses and survives ``text`` round trips."""
    ref = parse_ref(f"{name}:{tag}")
    assert ref == Ref("name", name, tag)
    assert parse_ref(ref.text) == ref
    assert ref.snapshot_parts() == (name, tag)


_revs = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,30}", fullmatch=True).filter(
    lambda r: ".." not in r
)


@given(one=_revs, two=_revs)
def test_distinct_revisions_get_distinct_single_component_snapshots(one: str, two: str):
    """Each revision maps to one safe path component, and different revisions never share it."""
    a = parse_ref(f"hf://org/repo@{one}").snapshot_parts()
    b = parse_ref(f"hf://org/repo@{two}").snapshot_parts()
    for parts in (a, b):
        assert all("/" not in p and p not in ("", ".", "..") for p in parts)
    assert (a == b) == (one == two)


def test_a_dataset_reference_knows_its_type_and_repository():
    """``hf://datasets/org/name`` is a dataset: its repo id drops the prefix, its snapshot
    lives apart from a model of the same name, and its listing is the datasets API."""
    from p2pmodel.core.upstream import listing_url

    ref = parse_ref("hf://datasets/org/data")
    assert (ref.repo_type, ref.repo, ref.text) == ("dataset", "org/data", "hf://datasets/org/data")
    assert ref.snapshot_parts() == ("hf-datasets", "org", "data", "main")
    assert parse_ref("hf://org/data").snapshot_parts() == ("hf", "org", "data", "main")
    url = listing_url(ref, "https://hub.test", "https://ms.test")
    assert url == "https://hub.test/api/datasets/org/data/revision/main?blobs=true"
