"""User configuration (``$P2PMODEL_HOME/config.toml``) and mirror rewrite rules.

Mirrors work like git's ``url.<base>.insteadOf``: a rule names an origin prefix (``for``) and the
candidate bases that may serve URLs under it (``use``); the longest matching prefix wins. Each
candidate is then ranked live by ``mirrors.MirrorBoard``. A URL no rule matches is fetched from
its origin only; its ``Candidates`` carry a hint for the error if that origin cannot be reached
(a newcomer behind a slow or blocked link learns that a ``[[mirror]]`` rule is the way out).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError
from .hubs import SameFiles, SameFilesError, parse_same_files
from .limits import Limits, LimitsError, parse_limits, parse_size
from .officekey import OfficeKey
from .refs import parse_ref
from .tracker import MAX_TRACKERS, check_url

HF_ORIGIN = "https://huggingface.co"
MS_ORIGIN = "https://www.modelscope.cn"
DEFAULT_CONNECTIONS = 16
DEFAULT_HF_ENDPOINT = "127.0.0.1:7421"


@dataclass(frozen=True)
class MirrorRule:
    prefix: str
    use: tuple[str, ...]


@dataclass(frozen=True)
class FileSpec:
    """A single-file model pinned by URL and digest (catalog or config ``[files."n:t"]``)."""

    url: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class Config:
    mirrors: tuple[MirrorRule, ...] = ()
    models: dict[str, str] = field(default_factory=dict)  # "name:tag" -> source ref text
    files: dict[str, FileSpec] = field(default_factory=dict)
    peers: tuple[str, ...] = ()
    trackers: tuple[str, ...] = ()  # announce URLs of the office's tracker(s) (core.tracker)
    interfaces: tuple[str, ...] = ()  # IPv4 addresses the agent listens and announces on
    connections: int = DEFAULT_CONNECTIONS
    hf_origin: str = HF_ORIGIN  # where hf:// lives upstream (HF_ENDPOINT, as the HF tools)
    ms_origin: str = MS_ORIGIN  # where ms:// lives upstream (MODELSCOPE_ENDPOINT)
    limits: Limits = field(default_factory=Limits)  # [limits]: rates, quiet hours
    store_max: int | None = None  # bytes the store may hold (None: no cap)
    path: str | None = None  # where it was read from, for messages
    hf_endpoint: str | None = DEFAULT_HF_ENDPOINT  # host:port the agent serves; None: off
    token_hosts: tuple[str, ...] = (HF_ORIGIN + "/",)  # URL prefixes a user's HF token may go to
    office_key: OfficeKey | None = None  # None: an open office (its repr shows a fingerprint)
    office_key_file: str | None = None  # where the key is to be read from (adapters.home)
    # With a key: blobs move between agents as SSL torrents (TLS 1.3, certificates of the
    # office CA: confidential, ~5x the CPU per byte) instead of torrents tagged with the key
    # and opened over protocol encryption whose payload is plaintext (the default: the LAN's
    # rate; see docs/architecture.md, "The office key"). Every agent of an office sets it alike.
    swarm_tls: bool = False
    same_files: tuple[SameFiles, ...] = ()  # [[same_files]]: repositories holding the same files

    def candidates(self, url: str) -> Candidates:
        """The URLs that may serve ``url``, in configured order (origin last if listed)."""
        hint = None if self.covers(url) else uncovered_hint(url, self.path or "config.toml")
        return Candidates(rewrite(self.mirrors, url), hint)

    def covers(self, url: str) -> bool:
        """Does a ``[[mirror]]`` rule cover ``url``?"""
        return bool(covering_rules(self.mirrors, url))

    def trusts(self, url: str) -> bool:
        """May a request to ``url`` carry the user's Hugging Face token?"""
        return any(url.startswith(prefix) for prefix in self.token_hosts)

    def auth_headers(self, url: str, token: str | None) -> dict[str, str] | None:
        return {"Authorization": f"Bearer {token}"} if token and self.trusts(url) else None


class Candidates(list[str]):
    """The URLs that may serve one URL, best first, and ``hint``: what an error that none of
    them could be reached should add (how to add a mirror), or None when a rule covers it."""

    def __init__(self, urls: Iterable[str] = (), hint: str | None = None) -> None:
        super().__init__(urls)
        self.hint = hint


def unreachable_hint(urls: Iterable[str]) -> str | None:
    """The hint of candidates made by ``Config.candidates`` (None for any other list)."""
    return urls.hint if isinstance(urls, Candidates) else None


def uncovered_hint(url: str, config_path: str = "config.toml") -> str:
    """What to tell a user whose fetch of ``url`` failed with no mirror rule covering it."""
    return f"no [[mirror]] rule covers {origin_of(url)}: add one in {config_path} to use a mirror"


def origin_of(url: str) -> str:
    """``scheme://host[:port]/`` of a URL: what a rule's ``for`` would name."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    return f"{scheme}://{rest.split('/', 1)[0].split('?', 1)[0].split('#', 1)[0]}/"


def covering_rules(rules: tuple[MirrorRule, ...], url: str) -> list[MirrorRule]:
    """The rules whose prefix is the longest that matches ``url`` (several when equal)."""
    best: list[MirrorRule] = []
    for rule in rules:
        if url.startswith(rule.prefix):
            if not best or len(rule.prefix) > len(best[0].prefix):
                best = [rule]
            elif len(rule.prefix) == len(best[0].prefix):
                best.append(rule)
    return best


def rewrite(rules: tuple[MirrorRule, ...], url: str) -> list[str]:
    best = covering_rules(rules, url)
    if not best:
        return [url]
    rest = url[len(best[0].prefix) :]
    out: list[str] = []
    for rule in best:
        for base in rule.use:
            candidate = base + rest
            if candidate not in out:
                out.append(candidate)
    return out


class _Bad(Exception):
    pass


def parse_config(raw: dict[str, Any], env: Mapping[str, str], path: str = "config.toml") -> Config:
    """A ``Config`` from parsed TOML data and an environment map; ``UserError`` if bad."""
    try:
        return _parse(raw, env, path)
    except _Bad as e:
        raise UserError(f"bad config {path}: {e}") from None


def _parse(raw: dict[str, Any], env: Mapping[str, str], path: str) -> Config:
    known = {
        "mirror",
        "models",
        "files",
        "peers",
        "trackers",
        "interfaces",
        "connections",
        "hf_endpoint",
        "hf_token_hosts",
        "office_key",
        "office_key_file",
        "swarm_tls",
    }
    known |= {"limits", "store_max", "same_files"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _Bad(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    rules = []
    mirror_list = raw.get("mirror", [])
    if not isinstance(mirror_list, list):
        raise _Bad("[[mirror]] must be an array of tables")
    for i, m in enumerate(mirror_list):
        if not isinstance(m, dict) or set(m) - {"for", "use"}:
            raise _Bad(f"mirror #{i + 1}: only 'for' and 'use' are allowed")
        prefix, use = m.get("for"), m.get("use")
        if isinstance(use, str):
            use = [use]
        if not isinstance(prefix, str) or not prefix.startswith(("http://", "https://")):
            raise _Bad(f"mirror #{i + 1}: 'for' must be an http(s) URL prefix")
        if not (isinstance(use, list) and use and all(isinstance(u, str) for u in use)):
            raise _Bad(f"mirror #{i + 1}: 'use' must be a non-empty list of URL prefixes")
        for u in use:
            if not u.startswith(("http://", "https://")):
                raise _Bad(f"mirror #{i + 1}: {u!r} is not an http(s) URL prefix")
        rules.append(MirrorRule(prefix, tuple(use)))
    models = raw.get("models", {})
    if not isinstance(models, dict):
        raise _Bad("[models] must be a table")
    canonical: set[str] = set()
    for key, value in models.items():
        ref = _parse_ref_or_bad(key, "model name")
        if ref.text in canonical:
            raise _Bad(f"[models] {key!r}: {ref.text!r} is listed twice")
        canonical.add(ref.text)
        if ref.kind != "name" or not isinstance(value, str):
            raise _Bad(f"[models] {key!r}: keys are name:tag, values reference strings")
        if _parse_ref_or_bad(value, f"[models] {key!r}").kind == "name":
            raise _Bad(f"[models] {key!r}: value must be hf://, ms:// or https://")
    files = _parse_files(raw.get("files", {}), "[files]")
    peers = raw.get("peers", [])
    if not (isinstance(peers, list) and all(isinstance(p, str) for p in peers)):
        raise _Bad("peers must be a list of 'host:port' strings")
    for peer in peers:
        host, _, port = peer.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _Bad(f"peer {peer!r} is not 'host:port'")
    trackers = raw.get("trackers", [])
    if not (isinstance(trackers, list) and all(isinstance(t, str) for t in trackers)):
        raise _Bad("trackers must be a list of announce URLs ('http://host:6969/announce')")
    if len(trackers) > MAX_TRACKERS:
        raise _Bad(f"trackers: at most {MAX_TRACKERS}")
    for t in trackers:
        if (why := check_url(t)) is not None:
            raise _Bad(f"tracker {t!r}: {why}")
    interfaces = raw.get("interfaces", [])
    if not (isinstance(interfaces, list) and all(isinstance(i, str) for i in interfaces)):
        raise _Bad("interfaces must be a list of IPv4 addresses")
    for ip in interfaces:
        parts = ip.split(".")
        if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
            raise _Bad(f"interface {ip!r} is not an IPv4 address")
    conns = raw.get("connections", DEFAULT_CONNECTIONS)
    if not isinstance(conns, int) or isinstance(conns, bool) or not 1 <= conns <= 256:
        raise _Bad("connections must be an integer from 1 to 256")
    serve = _parse_hf_endpoint(raw.get("hf_endpoint", DEFAULT_HF_ENDPOINT))
    hf_origin = (env.get("HF_ENDPOINT") or HF_ORIGIN).rstrip("/")
    if serve is not None and _is_local_endpoint(hf_origin, serve):
        # A shell that points the HF tools at this agent (HF_ENDPOINT=http://127.0.0.1:7421)
        # must not make the agent ask itself: upstream stays the Hub.
        hf_origin = HF_ORIGIN
    hosts = raw.get("hf_token_hosts", [hf_origin + "/"])
    if not (isinstance(hosts, list) and all(isinstance(h, str) for h in hosts)):
        raise _Bad("hf_token_hosts must be a list of URL prefixes")
    for h in hosts:
        if not h.startswith(("https://", "http://")) or h.count("/") < 3:
            raise _Bad(f"hf_token_hosts: {h!r} is not a URL prefix like 'https://huggingface.co/'")
    office_key, office_key_file = _parse_office_key(raw, env)
    swarm_tls = raw.get("swarm_tls", False)
    if not isinstance(swarm_tls, bool):
        raise _Bad("swarm_tls must be true or false")
    try:
        limits = parse_limits(raw.get("limits", {}))
        store_max = parse_size(raw["store_max"], "store_max") if "store_max" in raw else None
        same_files = parse_same_files(raw.get("same_files", []))
    except (LimitsError, SameFilesError) as e:
        raise _Bad(str(e)) from None
    return Config(
        mirrors=tuple(rules),
        models={parse_ref(k).text: v for k, v in models.items()},
        files=files,
        peers=tuple(peers),
        trackers=tuple(dict.fromkeys(trackers)),
        interfaces=tuple(interfaces),
        connections=conns,
        hf_origin=hf_origin,
        ms_origin=(env.get("MODELSCOPE_ENDPOINT") or MS_ORIGIN).rstrip("/"),
        hf_endpoint=serve,
        token_hosts=tuple(hosts),
        limits=limits,
        store_max=store_max,
        path=path,
        office_key=office_key,
        office_key_file=office_key_file,
        swarm_tls=swarm_tls,
        same_files=same_files,
    )


def _parse_office_key(
    raw: dict[str, Any], env: Mapping[str, str]
) -> tuple[OfficeKey | None, str | None]:
    """The office key: ``P2PMODEL_OFFICE_KEY``, else ``office_key``, else the file named by
    ``office_key_file`` (read by ``adapters.home.load_config``). Errors never quote a key."""
    text, path = raw.get("office_key"), raw.get("office_key_file")
    if text is not None and path is not None:
        raise _Bad("give office_key or office_key_file, not both")
    if text is not None and not isinstance(text, str):
        raise _Bad("office_key must be a string (make one with 'p2pmodel key new')")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise _Bad("office_key_file must be the path of a file holding the key")
    from_env = env.get("P2PMODEL_OFFICE_KEY", "").strip()
    if from_env:
        return OfficeKey.parse(from_env, "P2PMODEL_OFFICE_KEY"), None
    if text is not None:
        try:
            return OfficeKey.parse(text, "office_key"), None
        except UserError as e:
            raise _Bad(str(e)) from None
    return None, path


def _parse_hf_endpoint(value: Any) -> str | None:
    """``hf_endpoint``: "host:port" the agent serves the Hugging Face API on, or "off"."""
    if value == "off":
        return None
    if not isinstance(value, str):
        raise _Bad('hf_endpoint must be "host:port" or "off"')
    host, _, port = value.rpartition(":")
    parts = host.split(".")
    if not (len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)):
        raise _Bad(f"hf_endpoint {value!r}: the host must be an IPv4 address (127.0.0.1)")
    if not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port (status says)
        raise _Bad(f"hf_endpoint {value!r}: bad port")
    return value


def _is_local_endpoint(url: str, serve: str) -> bool:
    host, _, port = serve.rpartition(":")
    hosts = {host, "localhost", "127.0.0.1"} if host.startswith("127.") else {host}
    return any(url.rstrip("/") == f"http://{h}:{port}" for h in hosts)


def parse_files_table(raw: Any, where: str) -> dict[str, FileSpec]:
    """Parse a ``[files."name:tag"]`` table (shared by config and the shipped catalog)."""
    try:
        return _parse_files(raw, where)
    except _Bad as e:
        raise UserError(str(e)) from None


def _parse_files(raw: Any, where: str) -> dict[str, FileSpec]:
    if not isinstance(raw, dict):
        raise _Bad(f"{where} must be a table")
    out = {}
    for key, spec in raw.items():
        ref = _parse_ref_or_bad(key, f"{where} name")
        if ref.kind != "name" or not isinstance(spec, dict):
            raise _Bad(f"{where} {key!r}: expected name:tag = {{url, sha256[, size]}}")
        extra = sorted(set(spec) - {"url", "sha256", "size"})
        if extra:
            raise _Bad(f"{where} {key!r}: unknown key {extra[0]!r} (known: url, sha256, size)")
        url, sha, size = spec.get("url"), spec.get("sha256"), spec.get("size")
        if not isinstance(url, str) or _parse_ref_or_bad(url, f"{where} {key!r}").kind != "url":
            raise _Bad(f"{where} {key!r}: url must be an https URL")
        if (
            not isinstance(sha, str)
            or len(sha) != 64
            or not all(c in "0123456789abcdef" for c in sha)
        ):
            raise _Bad(f"{where} {key!r}: sha256 must be 64 lowercase hex digits")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise _Bad(f"{where} {key!r}: size must be a non-negative integer")
        out[ref.text] = FileSpec(url, sha, size)
    return out


def _parse_ref_or_bad(text: str, what: str) -> Any:
    try:
        return parse_ref(text)
    except UserError as e:
        raise _Bad(f"{what}: {e}") from None
