"""The shipped catalog and name lookup through config then catalog (``p2pmodel.catalog``)."""

from __future__ import annotations

import re

import pytest

from p2pmodel.adapters.home import load_catalog
from p2pmodel.core.catalog import Catalog, NameTarget, lookup_name, parse_catalog
from p2pmodel.core.config import Config, FileSpec
from p2pmodel.core.errors import UserError
from p2pmodel.core.refs import COMMIT_RE, parse_ref

SHA = "f3a90b39dd2874269e8b05a48a86745df897b848c61f3958efc80a39152bd692"
QWEN = "hf://Qwen/Qwen-Image@75e0b4be04f60ec59a75f475837eced720f823b6"


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_catalog()


# -- the shipped catalog -------------------------------------------------------------------------


def test_shipped_catalog_loads_and_is_not_empty(shipped: Catalog):
    """The ``catalog.toml`` inside the package parses into models and files."""
    assert shipped.models
    assert shipped.files


def test_qwen_image_is_in_the_catalog(shipped: Catalog):
    """``qwen-image:v1.0``, the product's headline model, is a shipped name."""
    assert shipped.models["qwen-image:v1.0"] == QWEN


def test_every_model_is_a_pinned_hf_ref(shipped: Catalog):
    """Every catalog model is an ``hf://org/repo@<40-hex commit>`` reference."""
    for key, value in shipped.models.items():
        ref = parse_ref(value)
        assert ref.kind == "hf", key
        assert ref.pinned, key
        assert COMMIT_RE.fullmatch(ref.tag), key
        assert ref.text == value, f"{key}: not written canonically"


def test_every_key_is_a_canonical_name_and_tag(shipped: Catalog):
    """Every catalog key is a ``name:tag`` written the way ``parse_ref`` spells it."""
    for key in [*shipped.models, *shipped.files]:
        ref = parse_ref(key)
        assert ref.kind == "name"
        assert ref.text == key


def test_every_file_is_an_https_url_with_a_sha256(shipped: Catalog):
    """Every catalog file is an https URL pinned by a 64-hex sha256, with an optional size."""
    for key, spec in shipped.files.items():
        assert spec.url.startswith("https://"), key
        assert parse_ref(spec.url).kind == "url", key
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), key
        assert spec.size is None or (type(spec.size) is int and spec.size > 0), key


def test_catalog_names_are_unique_across_models_and_files(shipped: Catalog):
    """No name:tag is both a repository model and a single file."""
    assert not set(shipped.models) & set(shipped.files)


def test_load_catalog_from_text_normalises_keys():
    """A catalog given as text is parsed too, with ``name`` keys meaning ``name:latest``."""
    cat = parse_catalog(
        f'[models]\ngpt2 = "hf://o/r@{"a" * 40}"\n'
        f'[files.tool]\nurl = "https://e.test/t.bin"\nsha256 = "{SHA}"\nsize = 3\n'
    )
    assert cat.models == {"gpt2:latest": f"hf://o/r@{'a' * 40}"}
    assert cat.files == {"tool:latest": FileSpec("https://e.test/t.bin", SHA, 3)}


def test_load_catalog_rejects_bad_files_table():
    """A malformed catalog ``[files]`` entry raises ``UserError`` saying it is the catalog's."""
    with pytest.raises(UserError, match="catalog"):
        parse_catalog('[files."a:1"]\nurl = "https://e.test/a"\nsha256 = "short"\n')


# -- lookup_name ---------------------------------------------------------------------------------


def test_lookup_finds_a_catalog_model(shipped: Catalog):
    """A shipped name resolves to its pinned source reference, from the catalog."""
    target = lookup_name(parse_ref("qwen-image:v1.0"), Config(), shipped)
    assert target == NameTarget(source=parse_ref(QWEN), origin="catalog")


def test_lookup_finds_a_catalog_file(shipped: Catalog):
    """A shipped single-file name resolves to its file spec."""
    key = next(iter(shipped.files))
    target = lookup_name(parse_ref(key), Config(), shipped)
    assert target.source is None
    assert target.file == shipped.files[key]
    assert target.origin == "catalog"


def test_lookup_missing_tag_means_latest(shipped: Catalog):
    """``gpt2`` looks up ``gpt2:latest``."""
    target = lookup_name(parse_ref("gpt2"), Config(), shipped)
    assert target.source is not None
    assert target.source.name == "openai-community/gpt2"


def test_config_model_overrides_the_catalog(shipped: Catalog):
    """A config ``[models]`` entry wins over the catalog's entry of the same name."""
    config = Config(models={"qwen-image:v1.0": "ms://Qwen/Qwen-Image"})
    target = lookup_name(parse_ref("qwen-image:v1.0"), config, shipped)
    assert target == NameTarget(source=parse_ref("ms://Qwen/Qwen-Image"), origin="config")


def test_config_file_overrides_a_catalog_model(shipped: Catalog):
    """A config ``[files]`` entry wins over a catalog model of the same name."""
    spec = FileSpec("https://e.test/q.bin", SHA, 1)
    config = Config(files={"qwen-image:v1.0": spec})
    target = lookup_name(parse_ref("qwen-image:v1.0"), config, shipped)
    assert target == NameTarget(file=spec, origin="config")


def test_config_adds_names_to_the_catalog(shipped: Catalog):
    """Config names that the catalog lacks are found, and catalog names still work beside them."""
    config = Config(models={"mine:v1": "hf://me/mine"})
    assert lookup_name(parse_ref("mine:v1"), config, shipped).origin == "config"
    assert lookup_name(parse_ref("qwen-image:v1.0"), config, shipped).origin == "catalog"


def test_config_name_resolving_to_a_url(shipped: Catalog):
    """A config model whose value is a plain URL resolves to a ``url`` reference."""
    config = Config(models={"mine:v1": "https://e.test/m.bin"})
    target = lookup_name(parse_ref("mine:v1"), config, shipped)
    assert target.source == parse_ref("https://e.test/m.bin")


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [
        ("qwen-imag:v1.0", "qwen-image:v1.0"),
        ("qwen-image:v2.0", "qwen-image:v1.0"),
        ("qwen-image", "qwen-image:v1.0"),
        ("qwen-image-edt:v1.0", "qwen-image-edit:v1.0"),
        ("whisper-large-v3:v3", "whisper-large-v3:latest"),
    ],
)
def test_unknown_name_suggests_close_names(shipped: Catalog, typed: str, suggested: str):
    """An unknown name is a ``UserError`` that suggests close or same-name entries."""
    with pytest.raises(UserError, match="did you mean") as info:
        lookup_name(parse_ref(typed), Config(), shipped)
    message = str(info.value)
    assert suggested in message
    assert repr(parse_ref(typed).text) in message


def test_other_tags_of_the_same_name_are_suggested_first():
    """When the name exists with other tags, exactly those tags are suggested."""
    cat = Catalog(models={"m:v1": "hf://o/r", "m:v2": "hf://o/r", "mm:v1": "hf://o/r"})
    with pytest.raises(UserError) as info:
        lookup_name(parse_ref("m:v3"), Config(), cat)
    assert str(info.value).endswith("did you mean m:v1, m:v2?")


def test_config_names_are_suggested_too(shipped: Catalog):
    """Suggestions include names from the user's config."""
    config = Config(models={"my-special-model:v1": "hf://me/x"})
    with pytest.raises(UserError, match="my-special-model:v1"):
        lookup_name(parse_ref("my-special-modl:v1"), config, shipped)


def test_unknown_name_with_nothing_close_points_to_the_catalog(shipped: Catalog):
    """With no close match the error points the user at ``p2pmodel ls --catalog``."""
    with pytest.raises(UserError, match=r"ls --catalog") as info:
        lookup_name(parse_ref("zzzzzzzz:q"), Config(), shipped)
    assert "did you mean" not in str(info.value)
    assert info.value.exit_code == 2


def test_unknown_name_in_an_empty_catalog():
    """Lookup in an empty catalog and config fails cleanly with the catalog hint."""
    with pytest.raises(UserError, match="unknown model 'x:latest'"):
        lookup_name(parse_ref("x"), Config(), Catalog())
