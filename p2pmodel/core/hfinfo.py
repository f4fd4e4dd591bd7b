"""What the Hugging Face Hub said of a repository at a revision (pure): the known-safe fields
of its model (or dataset) info, its refs and its commits, filtered and bounded, so the local
``HF_ENDPOINT`` can answer them as upstream did, also with no internet.

Theory of operation. Upstream's answers are untrusted JSON: every field is passed through a
whitelist (``MODEL_FIELDS``), each with a check of its shape that the client's own parser
(``huggingface_hub``'s ``ModelInfo``, ``DatasetInfo``, ``GitRefs``, ``GitCommitInfo``) can take
without failing: dates as the Hub writes them, commit ids as 40 hex digits, ``transformersInfo``
with only the keys the client's dataclass accepts. A field not in the whitelist is dropped, and
``xetHash`` nowhere survives, at any depth (with it the client would go around the endpoint
to Xet storage). Siblings are not kept: the manifest is made of them, and answers rebuild them
from it (``hfapi.repo_info``). One repository at one revision keeps one document (``info``,
``refs``, ``commits``) of at most ``LIMIT`` bytes of JSON; what does not fit is left out, the
bulkiest first (``encode``). The store keeps the document beside the manifest
(``adapters.store``); this module does no IO.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

LIMIT = 256 * 1024  # bytes of JSON kept per repository and revision
TEXT = 64 * 1024  # characters of one string field (a description, a commit message)
NAME = 1024  # characters of a short string (an id, a tag, a ref name)
DEPTH = 32  # nesting of a free-form JSON field (cardData, config)
COMMITS = 100  # commits kept of a revision's history (the Hub's first page has 50)
DROP = ("widgetData", "model-index", "gguf", "config", "cardData", "safetensors", "tags")
EPOCH = "1970-01-01T00:00:00.000Z"

_HEX40 = re.compile(r"[0-9a-f]{40}\Z")
_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d{1,9})?Z\Z")
_FORBIDDEN = "xetHash"

Check = Callable[[Any], Any]  # a field's value -> the value kept, or _NO


class _Drop:
    """Marks a value that fails its check (the field is left out)."""


_NO: Any = _Drop()


# -- checks of one value ------------------------------------------------------------------------


def _text(limit: int) -> Check:
    return lambda v: v if isinstance(v, str) and len(v) <= limit else _NO


def _flag(v: Any) -> Any:
    return v if isinstance(v, bool) else _NO


def _count(v: Any) -> Any:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else _NO


def _number(v: Any) -> Any:
    ok = (
        isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 1e300
    )  # not NaN, not infinite
    return v if ok else _NO


def _gated(v: Any) -> Any:
    return v if v is False or v in ("auto", "manual") else _NO


def is_date(v: Any) -> bool:
    """A date as the Hub writes it and the client parses it (``2024-01-02T03:04:05.000Z``)."""
    m = _DATE.match(v) if isinstance(v, str) else None
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    return (
        year >= 1
        and 1 <= month <= 12
        and 1 <= day <= days[month - 1]
        and hour < 24
        and minute < 60
        and second < 60
    )


def _date(v: Any) -> Any:
    return v if is_date(v) else _NO


def _names(v: Any) -> Any:
    """A list of short strings (tags, spaces)."""
    if not isinstance(v, list) or len(v) > 10_000:
        return _NO
    return [x for x in v if isinstance(x, str) and len(x) <= NAME]


def _json(v: Any, depth: int = 0) -> Any:
    """A free-form JSON value (cardData, config): plain JSON types only, ``xetHash`` keys
    dropped at every depth, strings bounded."""
    if depth > DEPTH:
        return _NO
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return _number(v)
    if isinstance(v, str):
        return v if len(v) <= TEXT else _NO
    if isinstance(v, list):
        items = (_json(x, depth + 1) for x in v)
        return [x for x in items if x is not _NO]
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if not isinstance(k, str) or k == _FORBIDDEN or len(k) > NAME:
                continue
            kept = _json(x, depth + 1)
            if kept is not _NO:
                out[k] = kept
        return out
    return _NO


def _object(v: Any) -> Any:
    return _json(v) if isinstance(v, dict) else _NO


def _transformers(v: Any) -> Any:
    """``transformersInfo``: the client builds a dataclass of exactly these keys."""
    if not isinstance(v, dict) or not isinstance(v.get("auto_model"), str):
        return _NO
    out: dict[str, Any] = {"auto_model": v["auto_model"][:NAME]}
    for key in ("custom_class", "pipeline_tag", "processor"):
        x = v.get(key)
        if x is None or (isinstance(x, str) and len(x) <= NAME):
            out[key] = x
    return out


def _safetensors(v: Any) -> Any:
    """``safetensors``: parameter counts by dtype and their total."""
    if not isinstance(v, dict) or _count(v.get("total")) is _NO:
        return _NO
    params = v.get("parameters")
    if not isinstance(params, dict) or len(params) > 64:
        return _NO
    counts = {k: n for k, n in params.items() if isinstance(k, str) and _count(n) is not _NO}
    return {"parameters": counts, "total": v["total"]}


MODEL_FIELDS: dict[str, Check] = {
    "id": _text(NAME),
    "modelId": _text(NAME),
    "author": _text(NAME),
    "sha": lambda v: v if isinstance(v, str) and _HEX40.match(v) else _NO,
    "lastModified": _date,
    "createdAt": _date,
    "private": _flag,
    "gated": _gated,
    "disabled": _flag,
    "downloads": _count,
    "downloadsAllTime": _count,
    "likes": _count,
    "trendingScore": _number,
    "usedStorage": _count,
    "library_name": _text(NAME),
    "pipeline_tag": _text(NAME),
    "mask_token": _text(NAME),
    "inference": _text(NAME),
    "tags": _names,
    "spaces": _names,
    "cardData": _object,
    "config": _object,
    "transformersInfo": _transformers,
    "safetensors": _safetensors,
    "widgetData": lambda v: _json(v) if isinstance(v, list) else _NO,
    "model-index": lambda v: _json(v) if isinstance(v, list) else _NO,
    "gguf": _object,
    # datasets
    "paperswithcode_id": _text(NAME),
    "description": _text(TEXT),
    "citation": _text(TEXT),
    "mainSize": _count,
}


def repo_fields(data: Any) -> dict[str, Any]:
    """The known-safe fields of a model (or dataset) info answer; everything else (siblings,
    ``xetHash``, fields we do not know) left out."""
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    for key, check in MODEL_FIELDS.items():
        if key in data:
            kept = check(data[key])
            if kept is not _NO:
                out[key] = kept
    return out


# -- refs and commits -----------------------------------------------------------------------------

REF_KINDS = ("branches", "converts", "tags", "pullRequests")


def _ref(v: Any) -> dict[str, str] | None:
    if not isinstance(v, dict):
        return None
    name, ref, target = v.get("name"), v.get("ref"), v.get("targetCommit")
    if not (isinstance(name, str) and isinstance(ref, str) and isinstance(target, str)):
        return None
    ok = 0 < len(name) <= NAME and ref.startswith("refs/") and len(ref) <= NAME
    return (
        {"name": name, "ref": ref, "targetCommit": target} if ok and _HEX40.match(target) else None
    )


def refs(data: Any) -> dict[str, list[dict[str, str]]] | None:
    """Upstream's ``/refs`` answer, each kind a list of {name, ref, targetCommit}; None when it
    is not that shape."""
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("branches", "converts", "tags")
    ):
        return None
    out: dict[str, list[dict[str, str]]] = {}
    for kind in REF_KINDS:
        items = data.get(kind)
        if isinstance(items, list):
            out[kind] = [r for r in map(_ref, items[:1000]) if r is not None]
    return out


def refs_answer(kept: dict[str, list[dict[str, str]]], prs: bool) -> dict[str, Any]:
    """What the endpoint answers to ``/refs`` (``pullRequests`` only when asked)."""
    out: dict[str, Any] = {k: list(kept.get(k, [])) for k in ("branches", "converts", "tags")}
    if prs:
        out["pullRequests"] = list(kept.get("pullRequests", []))
    return out


def pinned_refs(branches: Iterable[tuple[str, str]]) -> dict[str, list[dict[str, str]]]:
    """Refs with no word from upstream: each (name, commit) the store pins, as a branch (the
    store cannot tell a branch from a tag)."""
    seen: dict[str, str] = {}
    for name, commit in branches:
        if _HEX40.match(commit):
            seen.setdefault(name, commit)
    return {
        "branches": [
            {"name": n, "ref": f"refs/heads/{n}", "targetCommit": c}
            for n, c in sorted(seen.items())
        ],
        "converts": [],
        "tags": [],
        "pullRequests": [],
    }


def _commit(v: Any) -> dict[str, Any] | None:
    if not isinstance(v, dict):
        return None
    cid, title, message, date = v.get("id"), v.get("title"), v.get("message"), v.get("date")
    authors = v.get("authors")
    if not (
        isinstance(cid, str)
        and _HEX40.match(cid)
        and isinstance(title, str)
        and isinstance(message, str)
        and is_date(date)
        and isinstance(authors, list)
    ):
        return None
    people = []
    for a in authors[:100]:
        if isinstance(a, dict) and isinstance(a.get("user"), str) and len(a["user"]) <= NAME:
            person = {"user": a["user"]}
            if isinstance(a.get("avatar"), str) and len(a["avatar"]) <= NAME:
                person["avatar"] = a["avatar"]
            people.append(person)
    return {
        "id": cid,
        "title": title[:NAME],
        "message": message[:TEXT],
        "authors": people,
        "date": date,
    }


def commits(data: Any) -> list[dict[str, Any]] | None:
    """Upstream's ``/commits/{rev}`` answer (its first page, at most ``COMMITS``), each
    {id, title, message, authors[{user[, avatar]}], date}; None when it is not a list."""
    if not isinstance(data, list):
        return None
    return [c for c in map(_commit, data[:COMMITS]) if c is not None]


def pinned_commits(commit: str, info: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The history with no word from upstream: the one commit the store pins, dated as
    upstream dated the revision when it said (else the epoch: the client needs a date)."""
    date = (info or {}).get("lastModified")
    return [
        {
            "id": commit,
            "title": "",
            "message": "",
            "authors": [],
            "date": date if is_date(date) else EPOCH,
        }
    ]


# -- the kept document ------------------------------------------------------------------------


def document(data: Any) -> dict[str, Any]:
    """A kept document (``info``, ``refs``, ``commits``) checked again field by field: what
    is on disk passes the same whitelist as what came from upstream."""
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(data.get("info"), dict):
        out["info"] = repo_fields(data["info"])
    kept_refs = refs(data.get("refs"))
    if kept_refs is not None:
        out["refs"] = kept_refs
    kept_commits = commits(data.get("commits"))
    if kept_commits is not None:
        out["commits"] = kept_commits
    return out


def encode(doc: dict[str, Any], limit: int = LIMIT) -> bytes:
    """The document as JSON of at most ``limit`` bytes: what does not fit is left out, the
    bulkiest fields first, then the history, then everything but the ids."""
    doc = document(doc)
    data = _dumps(doc)
    info = doc.get("info", {})
    for key in DROP:
        if len(data) <= limit:
            return data
        info.pop(key, None)
        data = _dumps(doc)
    for part in ("commits", "refs"):
        if len(data) <= limit:
            return data
        doc.pop(part, None)
        data = _dumps(doc)
    if len(data) > limit:
        doc = {"info": {k: v for k, v in info.items() if k in ("id", "sha")}}
        data = _dumps(doc)
    return data


def decode(data: bytes, limit: int = LIMIT) -> dict[str, Any]:
    """A kept document read back (empty when too big or not JSON)."""
    if len(data) > limit:
        return {}
    try:
        return document(json.loads(data))
    except (ValueError, RecursionError):
        return {}


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def api_url(origin: str, repo_type: str, repo: str, tail: str) -> str:
    """The Hub's API URL of one repository (``tail``: ``refs``, ``commits/<rev>``)."""
    plural = "models" if repo_type == "model" else "datasets"
    return f"{origin}/api/{plural}/{quote(repo, safe='/')}/{tail}"
