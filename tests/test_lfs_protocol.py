"""Git LFS in pure code (``core.lfs``): the custom transfer protocol's lines, the LFS endpoint
as git-lfs derives it, the batch API's shapes, and where a git credential may go; plus the
batch client (``adapters.lfs``) on a mock transport: a credential goes only to the host it
was asked for, never to a mirror of the origin."""

from __future__ import annotations

import json

import httpx
import pytest

from p2pmodel.adapters.lfs import hrefs
from p2pmodel.core import lfs
from p2pmodel.core.errors import SourceError

OID = "ab" * 32


def test_init_download_terminate_parse_into_typed_events() -> None:
    """The lines git-lfs writes become typed events; standalone downloads have no action."""
    init = '{"event":"init","operation":"download","remote":"origin","concurrent":false}'
    assert lfs.parse_event(init) == lfs.Init("download", "origin", False)
    assert lfs.parse_event(f'{{"event":"download","oid":"{OID}","size":7}}') == lfs.Download(OID, 7)
    assert lfs.parse_event(f'{{"event":"upload","oid":"{OID}","size":7,"path":"/x"}}') == (
        lfs.Upload(OID, 7)
    )
    assert lfs.parse_event(b'{"event":"terminate"}') == lfs.Terminate()


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[]",
        '{"event":"init","operation":"delete"}',
        '{"event":"download","oid":"AB","size":1}',
        f'{{"event":"download","oid":"{OID.upper()}","size":1}}',
        f'{{"event":"download","oid":"{OID}","size":-1}}',
        f'{{"event":"download","oid":"{OID}","size":true}}',
        '{"event":"what"}',
        " " * (lfs.MAX_LINE + 1),
    ],
)
def test_bad_lines_are_protocol_errors(line: str) -> None:
    """Anything else from git-lfs is refused at the edge."""
    with pytest.raises(lfs.LfsProtocolError):
        lfs.parse_event(line)


def test_answers_are_one_json_line_each() -> None:
    """init, progress, complete and error answers have the protocol's field names."""
    assert lfs.render_init() == "{}\n"
    assert json.loads(lfs.render_init("no"))["error"]["message"] == "no"
    assert json.loads(lfs.render_progress(OID, 10, 4)) == {
        "event": "progress",
        "oid": OID,
        "bytesSoFar": 10,
        "bytesSinceLast": 4,
    }
    assert json.loads(lfs.render_complete(OID, "/t/x")) == {
        "event": "complete",
        "oid": OID,
        "path": "/t/x",
    }
    err = json.loads(lfs.render_error(OID, "bad bytes"))
    assert err["event"] == "complete" and err["error"] == {"code": 2, "message": "bad bytes"}
    for line in (lfs.render_progress(OID, 1, 1), lfs.render_complete(OID, "/p")):
        assert line.endswith("\n") and line.count("\n") == 1


def test_the_endpoint_is_derived_as_git_lfs_does() -> None:
    """lfs.url wins, then remote.<name>.lfsurl, then the remote URL + .git/info/lfs; an SSH
    remote has no HTTP endpoint here."""
    assert lfs.endpoint("https://l/x/", "https://r/", "https://o/a/b") == "https://l/x"
    assert lfs.endpoint(None, "https://r/lfs", "https://o/a/b") == "https://r/lfs"
    assert lfs.endpoint(None, None, "https://o/a/b") == "https://o/a/b.git/info/lfs"
    assert lfs.endpoint(None, None, "https://o/a/b.git/") == "https://o/a/b.git/info/lfs"
    assert lfs.endpoint(None, None, "git@host:a/b.git") is None
    assert lfs.endpoint(None, None, None) is None


def test_a_batch_request_and_answer() -> None:
    """The request asks for basic downloads; the answer gives each wanted oid its href and
    headers, or its error; other oids and bad hrefs are not taken."""
    body = json.loads(lfs.batch_request([(OID, 5)]))
    assert body == {
        "operation": "download",
        "transfers": ["basic"],
        "objects": [{"oid": OID, "size": 5}],
    }
    other = "cd" * 32
    answer = {
        "objects": [
            {"oid": OID, "actions": {"download": {"href": "https://c/x", "header": {"A": "b"}}}},
            {"oid": other, "error": {"code": 404, "message": "Not found"}},
            {"oid": "ef" * 32, "actions": {"download": {"href": "https://c/y"}}},
        ]
    }
    got = lfs.parse_batch(answer, {OID, other})
    assert got == {
        OID: lfs.Href("https://c/x", {"A": "b"}),
        other: lfs.ObjectError(404, "Not found"),
    }
    bad = {"objects": [{"oid": OID, "actions": {"download": {"href": "file:///etc/passwd"}}}]}
    assert isinstance(lfs.parse_batch(bad, {OID})[OID], lfs.ObjectError)
    with pytest.raises(lfs.LfsProtocolError):
        lfs.parse_batch({"objects": 3}, {OID})


def test_a_credential_query_names_one_host() -> None:
    """``git credential fill`` is asked for the protocol and host (with port) only."""
    assert lfs.credential_query("https://h.example:8443/a/b?x") == (
        "protocol=https\nhost=h.example:8443\n\n"
    )
    assert lfs.parse_credential("protocol=https\nhost=h\nusername=u\npassword=p=q\n") == (
        "u",
        "p=q",
    )
    assert lfs.parse_credential("username=u\n") is None


def _server(seen: list[httpx.Request], needs: str | None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if needs is not None and request.headers.get("authorization") != needs:
            return httpx.Response(401)
        oid = json.loads(request.content)["objects"][0]["oid"]
        href = {"href": f"{request.url.scheme}://{request.url.host}/lfs/{oid}"}
        return httpx.Response(200, json={"objects": [{"oid": oid, "actions": {"download": href}}]})

    return httpx.MockTransport(handle)


def test_the_origins_credential_never_reaches_a_mirror() -> None:
    """The mirror asks for credentials (401): the helper is asked for the mirror's host, and
    the origin's credential it holds is not sent there; the batch then fails over."""
    seen: list[httpx.Request] = []
    asked: list[str] = []
    secrets = {"origin.example": ("me", "origin-secret")}

    def credentials(url: str) -> tuple[str, str] | None:
        asked.append(url)
        return secrets.get(httpx.URL(url).host)

    with httpx.Client(transport=_server(seen, needs="Basic bWU6b3JpZ2luLXNlY3JldA==")) as c:
        got = hrefs(
            ["https://mirror.example/a.git/info/lfs", "https://origin.example/a.git/info/lfs"],
            [(OID, 1)],
            credentials,
            client=c,
        )
    assert got[OID] == lfs.Href(f"https://origin.example/lfs/{OID}", {})
    to_mirror = [r for r in seen if r.url.host == "mirror.example"]
    assert to_mirror and all("authorization" not in r.headers for r in to_mirror)
    assert asked == [
        "https://mirror.example/a.git/info/lfs/objects/batch",
        "https://origin.example/a.git/info/lfs/objects/batch",
    ]
    assert any(r.headers.get("authorization") for r in seen if r.url.host == "origin.example")


def test_no_endpoint_answering_is_a_source_error() -> None:
    """Every candidate refuses: one error naming them (no credential anywhere)."""
    seen: list[httpx.Request] = []
    with httpx.Client(transport=_server(seen, needs="never")) as c, pytest.raises(SourceError):
        hrefs(["https://m.example/lfs"], [(OID, 1)], lambda url: None, client=c)
    assert all("authorization" not in r.headers for r in seen)


def _agent(lines: list[str], home: object, monkeypatch: pytest.MonkeyPatch) -> tuple[int, list]:
    """Run ``p2pmodel git lfs-agent``'s loop on these lines (no git repository, no agent)."""
    import io

    from p2pmodel.cli import git

    monkeypatch.setenv("P2PMODEL_HOME", str(home))
    monkeypatch.setenv("P2PMODEL_LAN", "off")
    out = io.StringIO()
    rc = git.lfs_agent(io.StringIO("".join(line + "\n" for line in lines)), out)
    return rc, [json.loads(line) for line in out.getvalue().splitlines()]


def test_an_upload_is_refused_with_how_to_push(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``init`` for an upload answers an error saying pushes go through plain git-lfs."""
    rc, answers = _agent(
        ['{"event":"init","operation":"upload","remote":"origin"}'], tmp_path, monkeypatch
    )
    assert rc == 0
    assert "lfs.standalonetransferagent= push" in answers[0]["error"]["message"]


def test_an_object_in_the_store_is_handed_over_as_a_link(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object the store has completes with a path to a hard link of the verified blob,
    no network; one it lacks, with no endpoint and no agent, completes with an error."""
    import hashlib
    from pathlib import Path

    from p2pmodel.adapters.store import Store

    home = Path(str(tmp_path)) / "home"
    data = b"weights" * 1000
    oid = hashlib.sha256(data).hexdigest()
    store = Store(home)
    blob = store.blob_path(f"sha256:{oid}")
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    monkeypatch.chdir(str(tmp_path))
    rc, answers = _agent(
        [
            '{"event":"init","operation":"download","remote":"origin"}',
            json.dumps({"event": "download", "oid": oid, "size": len(data)}),
            json.dumps({"event": "download", "oid": OID, "size": 3}),
            '{"event":"terminate"}',
        ],
        home,
        monkeypatch,
    )
    assert rc == 0
    assert answers[0] == {}
    assert answers[1]["event"] == "complete" and answers[1]["oid"] == oid
    assert answers[2]["oid"] == OID and "error" in answers[2]


def test_garbage_from_git_lfs_ends_the_agent(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line that is not the protocol ends the agent with exit 2 and no answer."""
    rc, answers = _agent(["hello"], tmp_path, monkeypatch)
    assert rc == 2 and answers == []
