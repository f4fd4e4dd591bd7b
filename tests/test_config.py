"""User configuration and git-insteadOf-style mirror rewriting (``p2pmodel.core.config``, read
by ``adapters.home``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pmodel.adapters.home import load_config
from p2pmodel.core.config import (
    DEFAULT_CONNECTIONS,
    HF_ORIGIN,
    MS_ORIGIN,
    Candidates,
    Config,
    FileSpec,
    MirrorRule,
    origin_of,
    parse_files_table,
    rewrite,
    unreachable_hint,
)
from p2pmodel.core.errors import SourceError, UserError
from p2pmodel.core.mirrors import Failure

SHA = "f3a90b39dd2874269e8b05a48a86745df897b848c61f3958efc80a39152bd692"
HF_FILE = "https://huggingface.co/Qwen/Qwen-Image/resolve/main/model_index.json"


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    return load_config(tmp_path, {} if env is None else env)


# -- rewrite -------------------------------------------------------------------------------------


def test_rewrite_without_rules_is_origin_only():
    """A URL with no matching rule is fetched from its origin only."""
    assert rewrite((), HF_FILE) == [HF_FILE]
    rules = (MirrorRule("https://www.modelscope.cn", ("https://ms.mirror",)),)
    assert rewrite(rules, HF_FILE) == [HF_FILE]


def test_rewrite_replaces_the_prefix_with_each_base_in_order():
    """The matched prefix is swapped for every ``use`` base, in configured order."""
    rules = (
        MirrorRule(
            "https://huggingface.co/",
            ("http://lan-cache:8080/hf/", "https://hf-mirror.com/", "https://huggingface.co/"),
        ),
    )
    rest = "Qwen/Qwen-Image/resolve/main/model_index.json"
    assert rewrite(rules, HF_FILE) == [
        f"http://lan-cache:8080/hf/{rest}",
        f"https://hf-mirror.com/{rest}",
        HF_FILE,
    ]


def test_rewrite_longest_prefix_wins_whatever_the_rule_order():
    """Like git insteadOf, the rule with the longest matching prefix wins."""
    short = MirrorRule("https://huggingface.co/", ("https://short.test/",))
    long = MirrorRule("https://huggingface.co/Qwen/", ("https://long.test/q/",))
    expected = ["https://long.test/q/Qwen-Image/resolve/main/model_index.json"]
    assert rewrite((short, long), HF_FILE) == expected
    assert rewrite((long, short), HF_FILE) == expected
    other = "https://huggingface.co/openai/whisper/resolve/main/x"
    assert rewrite((short, long), other) == ["https://short.test/openai/whisper/resolve/main/x"]


def test_rewrite_merges_rules_with_the_same_prefix_without_duplicates():
    """Rules with an equal longest prefix are merged in order, each candidate listed once."""
    rules = (
        MirrorRule("https://huggingface.co/", ("https://a.test/", "https://b.test/")),
        MirrorRule("https://example.com/", ("https://z.test/",)),
        MirrorRule("https://huggingface.co/", ("https://b.test/", "https://c.test/")),
    )
    rest = "Qwen/Qwen-Image/resolve/main/model_index.json"
    assert rewrite(rules, HF_FILE) == [
        f"https://a.test/{rest}",
        f"https://b.test/{rest}",
        f"https://c.test/{rest}",
    ]


def test_rewrite_is_plain_string_prefix_matching():
    """Prefixes match as strings, as git insteadOf does (no URL normalisation)."""
    rules = (MirrorRule("https://huggingface.co", ("https://m.test",)),)
    assert rewrite(rules, "https://huggingface.co/x") == ["https://m.test/x"]
    assert rewrite(rules, "http://huggingface.co/x") == ["http://huggingface.co/x"]
    assert rewrite(rules, "https://huggingface.co") == ["https://m.test"]


def test_config_candidates_uses_its_rules():
    """``Config.candidates`` applies the config's own mirror rules."""
    cfg = Config(mirrors=(MirrorRule("https://huggingface.co/", ("https://m.test/",)),))
    assert cfg.candidates(HF_FILE) == [
        HF_FILE.replace("https://huggingface.co/", "https://m.test/")
    ]
    assert Config().candidates(HF_FILE) == [HF_FILE]


def test_candidates_say_when_no_rule_covers_the_url():
    """A URL no rule covers gets candidates whose hint says how to add a mirror for its
    origin, in the config file it was read from; a covered URL gets none."""
    hint = (
        "no [[mirror]] rule covers https://huggingface.co/: add one in config.toml to use a mirror"
    )
    assert not Config().covers(HF_FILE)
    assert Config().candidates(HF_FILE).hint == hint
    assert unreachable_hint(Config().candidates(HF_FILE)) == hint
    cfg = Config(mirrors=(MirrorRule("https://huggingface.co/Qwen/", ("https://m.test/",)),))
    assert cfg.covers(HF_FILE) and cfg.candidates(HF_FILE).hint is None
    # A rule for the origin itself (no mirror yet) covers it too: the user chose that.
    cfg = Config(mirrors=(MirrorRule("https://huggingface.co/", ("https://huggingface.co/",)),))
    assert cfg.candidates(HF_FILE) == [HF_FILE] and cfg.candidates(HF_FILE).hint is None
    other = cfg.candidates("https://github.com/o/r/releases/download/v1/w.bin")
    assert other.hint is not None and "covers https://github.com/:" in other.hint
    assert unreachable_hint([HF_FILE]) is None  # a list made elsewhere says nothing


def test_the_hint_names_the_config_file_read(tmp_path: Path):
    """A config read from disk names its own path in the hint."""
    cfg = load(tmp_path, "connections = 4\n")
    assert cfg.candidates(HF_FILE).hint == (
        "no [[mirror]] rule covers https://huggingface.co/: add one in "
        f"{tmp_path / 'config.toml'} to use a mirror"
    )


def test_origin_of():
    """The origin of a URL is its scheme, host and port, as a rule's ``for`` names it."""
    assert origin_of(HF_FILE) == "https://huggingface.co/"
    assert origin_of("http://127.0.0.1:9") == "http://127.0.0.1:9/"
    assert origin_of("https://h.test:8443/a/b?x=/y") == "https://h.test:8443/"
    assert origin_of("https://h.test?x=/y") == "https://h.test/"


async def test_first_success_adds_the_hint_to_unreachable(autojump_clock):
    """Candidates no rule covers that cannot be reached give a ``SourceError`` ending in the
    hint; covered ones (or any other list) give the plain error."""
    from p2pmodel.adapters.http import FetchFailure, first_success

    async def refused(url: str) -> None:
        raise FetchFailure(Failure.CONNECT, "ConnectError: refused")

    with pytest.raises(SourceError) as err:
        await first_success(Config().candidates(HF_FILE), refused, what="hf://Qwen/Qwen-Image")
    assert str(err.value) == (
        "cannot reach hf://Qwen/Qwen-Image: https://huggingface.co: ConnectError: refused "
        "(no [[mirror]] rule covers https://huggingface.co/: add one in config.toml to use a "
        "mirror)"
    )
    covered = Candidates([HF_FILE])
    with pytest.raises(SourceError) as err:
        await first_success(covered, refused, what="hf://Qwen/Qwen-Image")
    assert str(err.value).endswith("ConnectError: refused")


# -- loading -------------------------------------------------------------------------------------


def test_absent_file_gives_defaults(tmp_path: Path):
    """Without ``config.toml`` every setting has its default and the env is still read."""
    cfg = load_config(tmp_path, {})
    assert cfg.mirrors == ()
    assert cfg.models == {}
    assert cfg.files == {}
    assert cfg.peers == ()
    assert cfg.connections == DEFAULT_CONNECTIONS == 16
    assert cfg.hf_origin == HF_ORIGIN
    assert cfg.ms_origin == MS_ORIGIN
    assert cfg.path == str(tmp_path / "config.toml")


def test_empty_file_gives_defaults(tmp_path: Path):
    """An empty ``config.toml`` is the same as none."""
    cfg = load(tmp_path, "")
    assert cfg.mirrors == () and cfg.models == {} and cfg.connections == 16


def test_full_config(tmp_path: Path):
    """Mirrors, models, files, peers and connections are all read from the file."""
    cfg = load(
        tmp_path,
        f"""
peers = ["10.0.0.5:7400", "build-box:7400"]
connections = 32

[[mirror]]
for = "https://huggingface.co/"
use = ["http://lan-cache:8080/hf/", "https://huggingface.co/"]

[[mirror]]
for = "https://www.modelscope.cn/"
use = "https://ms.mirror.test/"

[models]
"my-model:v1" = "hf://me/my-model@main"
"other" = "ms://org/other"
"single:1" = "https://example.com/a.bin"

[files."spleeter:v1"]
url = "https://github.com/deezer/spleeter/releases/download/v1.4.0/2stems.tar.gz"
sha256 = "{SHA}"
size = 73109797

[files.nosize]
url = "https://example.com/b.bin"
sha256 = "{SHA}"
""",
    )
    assert cfg.mirrors == (
        MirrorRule(
            "https://huggingface.co/", ("http://lan-cache:8080/hf/", "https://huggingface.co/")
        ),
        MirrorRule("https://www.modelscope.cn/", ("https://ms.mirror.test/",)),
    )
    assert cfg.models == {
        "my-model:v1": "hf://me/my-model@main",
        "other:latest": "ms://org/other",
        "single:1": "https://example.com/a.bin",
    }
    assert cfg.files == {
        "spleeter:v1": FileSpec(
            "https://github.com/deezer/spleeter/releases/download/v1.4.0/2stems.tar.gz",
            SHA,
            73109797,
        ),
        "nosize:latest": FileSpec("https://example.com/b.bin", SHA, None),
    }
    assert cfg.peers == ("10.0.0.5:7400", "build-box:7400")
    assert cfg.connections == 32


def test_mirror_use_as_a_string_is_a_one_element_list(tmp_path: Path):
    """``use = "..."`` is shorthand for a list with one base."""
    cfg = load(tmp_path, '[[mirror]]\nfor = "https://huggingface.co/"\nuse = "https://m.test/"\n')
    assert cfg.mirrors == (MirrorRule("https://huggingface.co/", ("https://m.test/",)),)


def test_loaded_rules_rewrite_with_longest_prefix(tmp_path: Path):
    """Rules read from the file rewrite URLs with git-insteadOf semantics."""
    cfg = load(
        tmp_path,
        """
[[mirror]]
for = "https://huggingface.co/"
use = "https://all.test/"

[[mirror]]
for = "https://huggingface.co/Qwen/"
use = ["https://qwen.test/", "https://huggingface.co/Qwen/"]

[[mirror]]
for = "https://huggingface.co/"
use = ["https://all2.test/"]
""",
    )
    rest = "Qwen-Image/resolve/main/model_index.json"
    assert cfg.candidates(HF_FILE) == [f"https://qwen.test/{rest}", HF_FILE]
    assert cfg.candidates("https://huggingface.co/gpt2/x") == [
        "https://all.test/gpt2/x",
        "https://all2.test/gpt2/x",
    ]
    assert cfg.candidates("https://example.com/f") == ["https://example.com/f"]


@pytest.mark.parametrize("connections", [1, 16, 256])
def test_connections_in_range(tmp_path: Path, connections: int):
    """``connections`` from 1 to 256 inclusive is accepted."""
    assert load(tmp_path, f"connections = {connections}").connections == connections


@pytest.mark.parametrize(
    ("env", "hf", "ms"),
    [
        ({}, HF_ORIGIN, MS_ORIGIN),
        ({"HF_ENDPOINT": "https://hf-mirror.com"}, "https://hf-mirror.com", MS_ORIGIN),
        ({"HF_ENDPOINT": "https://hf-mirror.com/"}, "https://hf-mirror.com", MS_ORIGIN),
        ({"HF_ENDPOINT": "http://lan:8080/hf//"}, "http://lan:8080/hf", MS_ORIGIN),
        ({"HF_ENDPOINT": ""}, HF_ORIGIN, MS_ORIGIN),
        ({"MODELSCOPE_ENDPOINT": "https://ms.test/"}, HF_ORIGIN, "https://ms.test"),
        (
            {"HF_ENDPOINT": "http://a.test/", "MODELSCOPE_ENDPOINT": "http://b.test"},
            "http://a.test",
            "http://b.test",
        ),
    ],
)
def test_endpoints_from_environment(tmp_path: Path, env: dict[str, str], hf: str, ms: str):
    """``HF_ENDPOINT`` and ``MODELSCOPE_ENDPOINT`` override the origins, trailing '/' stripped."""
    cfg = load_config(tmp_path, env)
    assert (cfg.hf_origin, cfg.ms_origin) == (hf, ms)


def test_env_defaults_to_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """With no ``env`` argument the process environment is read."""
    monkeypatch.setenv("HF_ENDPOINT", "https://from-os.test/")
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    assert load_config(tmp_path).hf_origin == "https://from-os.test"


# -- bad configs ---------------------------------------------------------------------------------

BAD_CONFIGS = {
    "bad-toml": ("connections = ", "bad config"),
    "bad-toml-table": ("[[mirror]\n", "bad config"),
    "unknown-key": ("mirrors = []", "unknown key 'mirrors'"),
    "unknown-key-table": ("[model]\n", "unknown key 'model'"),
    "mirror-not-array": ('mirror = "https://x"', "array of tables"),
    "mirror-entry-not-table": ("mirror = [1]", "mirror #1"),
    "mirror-extra-key": (
        '[[mirror]]\nfor = "https://a/"\nuse = "https://b/"\nweight = 1',
        "mirror #1: only 'for' and 'use'",
    ),
    "mirror-missing-for": ('[[mirror]]\nuse = "https://b/"', "'for' must be"),
    "mirror-for-not-url": ('[[mirror]]\nfor = "huggingface.co"\nuse = "https://b/"', "'for'"),
    "mirror-for-not-str": ('[[mirror]]\nfor = 1\nuse = "https://b/"', "'for'"),
    "mirror-missing-use": ('[[mirror]]\nfor = "https://a/"', "'use' must be"),
    "mirror-empty-use": ('[[mirror]]\nfor = "https://a/"\nuse = []', "'use' must be"),
    "mirror-use-not-str": ('[[mirror]]\nfor = "https://a/"\nuse = [1]', "'use' must be"),
    "mirror-use-not-url": (
        '[[mirror]]\nfor = "https://a/"\nuse = ["https://ok/", "ftp://b/"]',
        "'ftp://b/' is not an http",
    ),
    "second-mirror-bad": (
        '[[mirror]]\nfor = "https://a/"\nuse = "https://b/"\n[[mirror]]\nfor = "x"\nuse = "y"',
        "mirror #2",
    ),
    "models-not-table": ('models = "x"', r"\[models\] must be a table"),
    "model-uppercase-name": ('[models]\n"Qwen:v1" = "hf://a/b"', "bad model name"),
    "model-bad-tag": ('[models]\n"qwen:-v1" = "hf://a/b"', "bad tag"),
    "model-key-is-source": ('[models]\n"hf://a/b" = "hf://a/b"', "keys are name:tag"),
    "model-value-not-str": ('[models]\n"qwen:v1" = 1', "keys are name:tag"),
    "model-value-is-name": ('[models]\n"qwen:v1" = "other:v1"', "must be hf://"),
    "model-value-bad-ref": ('[models]\n"qwen:v1" = "hf://a/../b"', "bad repository"),
    "model-value-unknown-scheme": ('[models]\n"qwen:v1" = "s3://a/b"', "unknown scheme"),
    "files-not-table": ('files = "x"', r"\[files\] must be a table"),
    "file-bad-name": (f'[files."A:1"]\nurl = "https://e.test/a"\nsha256 = "{SHA}"', "bad model"),
    "file-not-table": ('[files]\n"a:1" = "https://e.test/a"', "expected name:tag"),
    "file-missing-url": (f'[files."a:1"]\nsha256 = "{SHA}"', "url must be"),
    "file-url-not-url": (f'[files."a:1"]\nurl = "hf://o/r"\nsha256 = "{SHA}"', "url must be"),
    "file-url-no-path": (f'[files."a:1"]\nurl = "https://e.test/"\nsha256 = "{SHA}"', "bad URL"),
    "file-missing-sha": ('[files."a:1"]\nurl = "https://e.test/a"', "sha256 must be"),
    "file-sha-short": (f'[files."a:1"]\nurl = "https://e.test/a"\nsha256 = "{SHA[:-1]}"', "sha256"),
    "file-sha-upper": (
        f'[files."a:1"]\nurl = "https://e.test/a"\nsha256 = "{SHA.upper()}"',
        "sha256 must be",
    ),
    "file-sha-nonhex": (
        f'[files."a:1"]\nurl = "https://e.test/a"\nsha256 = "{"z" * 64}"',
        "sha256 must be",
    ),
    "file-sha-prefixed": (
        f'[files."a:1"]\nurl = "https://e.test/a"\nsha256 = "sha256:{SHA}"',
        "sha256 must be",
    ),
    "file-size-negative": (
        f'[files."a:1"]\nurl = "https://e.test/a"\nsha256 = "{SHA}"\nsize = -1',
        "size must be",
    ),
    "file-size-str": (
        f'[files."a:1"]\nurl = "https://e.test/a"\nsha256 = "{SHA}"\nsize = "1"',
        "size must be",
    ),
    "peers-not-list": ('peers = "a:1"', "peers must be"),
    "peers-not-str": ("peers = [1]", "peers must be"),
    "connections-zero": ("connections = 0", "connections must be"),
    "connections-negative": ("connections = -4", "connections must be"),
    "connections-too-many": ("connections = 257", "connections must be"),
    "connections-float": ("connections = 16.0", "connections must be"),
    "connections-str": ('connections = "16"', "connections must be"),
}


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_is_a_user_error_naming_the_file(tmp_path: Path, text: str, message: str):
    """Every kind of bad config raises ``UserError`` whose message names the file and the fault."""
    with pytest.raises(UserError, match=message) as info:
        load(tmp_path, text)
    assert str(tmp_path / "config.toml") in str(info.value)
    assert info.value.exit_code == 2


def test_undecodable_config_is_a_user_error(tmp_path: Path):
    """A config file that is not UTF-8 gives a ``UserError`` naming the file."""
    (tmp_path / "config.toml").write_bytes(b"connections = 4 # \xff\xfe\n")
    with pytest.raises(UserError) as info:
        load_config(tmp_path, {})
    assert str(tmp_path / "config.toml") in str(info.value)


def test_unreadable_config_is_a_user_error(tmp_path: Path):
    """A ``config.toml`` that cannot be read (here a directory) gives a ``UserError``."""
    (tmp_path / "config.toml").mkdir()
    with pytest.raises(UserError, match="cannot read config") as info:
        load_config(tmp_path, {})
    assert str(tmp_path / "config.toml") in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "connections = true",
        f'[files."a:1"]\nurl = "https://e.test/a"\nsha256 = "{SHA}"\nsize = true',
    ],
    ids=["connections", "file-size"],
)
def test_booleans_are_not_integers(tmp_path: Path, text: str):
    """``true`` where an integer is expected is a bad config, not the number 1."""
    with pytest.raises(UserError):
        load(tmp_path, text)


def test_unknown_key_in_a_files_entry_is_rejected(tmp_path: Path):
    """A misspelt key in a ``[files."n:t"]`` entry (``szie``) is reported, as in ``[[mirror]]``."""
    with pytest.raises(UserError, match="szie"):
        load(tmp_path, f'[files."a:1"]\nurl = "https://e.test/a"\nsha256 = "{SHA}"\nszie = 5')


def test_parse_files_table_raises_user_error_with_context():
    """The shared ``[files]`` parser raises ``UserError`` prefixed with where the table is."""
    with pytest.raises(UserError, match=r"^catalog \[files\] 'a:1': sha256"):
        parse_files_table({"a:1": {"url": "https://e.test/a", "sha256": "nope"}}, "catalog [files]")
    assert parse_files_table({"a": {"url": "https://e.test/a", "sha256": SHA}}, "x") == {
        "a:latest": FileSpec("https://e.test/a", SHA)
    }


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[models]\n"a" = "hf://o/r"\n"a:latest" = "hf://o/s"\n', "listed twice"),
        ('peers = ["10.0.0.5"]\n', "host:port"),
        ('peers = ["10.0.0.5:99999"]\n', "host:port"),
    ],
)
def test_ambiguous_models_and_bad_peers_are_rejected(tmp_path, text, needle):
    """A name given twice (a and a:latest) and peers that are not host:port are config errors."""
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(UserError, match=needle):
        load_config(tmp_path, env={})


def test_interfaces_are_ipv4_addresses(tmp_path):
    """`interfaces` lists the addresses the agent uses; anything else is a config error."""
    (tmp_path / "config.toml").write_text('interfaces = ["10.0.0.5", "192.168.1.2"]\n')
    assert load_config(tmp_path, env={}).interfaces == ("10.0.0.5", "192.168.1.2")
    (tmp_path / "config.toml").write_text('interfaces = ["eth0"]\n')
    with pytest.raises(UserError, match="IPv4"):
        load_config(tmp_path, env={})


def test_hf_endpoint_defaults_to_loopback_and_can_be_off(tmp_path: Path):
    """The agent's Hugging Face endpoint: 127.0.0.1:7421 unless set; "off" turns it off; a
    bad value is one clear line."""
    assert load(tmp_path, "").hf_endpoint == "127.0.0.1:7421"
    assert load(tmp_path, 'hf_endpoint = "off"\n').hf_endpoint is None
    assert load(tmp_path, 'hf_endpoint = "10.0.0.7:8000"\n').hf_endpoint == "10.0.0.7:8000"
    for bad in ('"localhost:7421"', '"127.0.0.1"', "7421", '"127.0.0.1:99999"'):
        with pytest.raises(UserError, match="hf_endpoint"):
            load(tmp_path, f"hf_endpoint = {bad}\n")


def test_an_hf_endpoint_pointing_at_this_agent_is_not_the_upstream(tmp_path: Path):
    """A shell that sends the HF tools to the agent (HF_ENDPOINT=http://127.0.0.1:7421) must
    not make the agent fetch from itself: upstream stays the Hub."""
    for value in ("http://127.0.0.1:7421", "http://localhost:7421/"):
        assert load(tmp_path, "", {"HF_ENDPOINT": value}).hf_origin == HF_ORIGIN
    assert load(tmp_path, "", {"HF_ENDPOINT": "http://olah.lan:8090"}).hf_origin == (
        "http://olah.lan:8090"
    )


def test_token_hosts_default_to_the_origin(tmp_path: Path):
    """The user's HF token may go to the origin only, unless the config lists more."""
    cfg = load(tmp_path, "")
    assert cfg.trusts("https://huggingface.co/api/models/a/b")
    assert not cfg.trusts("https://hf-mirror.com/api/models/a/b")
    assert cfg.auth_headers("https://hf-mirror.com/x", "hf_t") is None
    cfg = load(tmp_path, 'hf_token_hosts = ["https://hf-mirror.com/"]\n')
    assert cfg.auth_headers("https://hf-mirror.com/x", "hf_t") == {"Authorization": "Bearer hf_t"}
    assert not cfg.trusts("https://huggingface.co/x")
    with pytest.raises(UserError, match="hf_token_hosts"):
        load(tmp_path, 'hf_token_hosts = ["hf-mirror.com"]\n')
