"""The control socket's messages (``core.control``): every request and answer survives the
wire as itself, and anything else is refused at the edge with a one-line error (exit 2)."""

from __future__ import annotations

import pytest

from p2pmodel.core.control import (
    BlobAsk,
    CollectAsk,
    ControlProtocolError,
    Done,
    Failed,
    GetAsk,
    MirrorsAsk,
    ProgressReport,
    PublishAsk,
    RemoveAsk,
    StatusAnswer,
    StatusAsk,
    answer_from_wire,
    request_from_wire,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "req",
    [
        StatusAsk(),
        GetAsk("hf://acme/tiny"),
        GetAsk("qwen-image:v1.0", "/tmp/out", "/tmp/cache", "0" * 64, True),
        RemoveAsk("hf://acme/tiny"),
        CollectAsk(),
        MirrorsAsk(),
        PublishAsk("team:v1", DIGEST, True),
        BlobAsk(DIGEST, 5),
        BlobAsk(DIGEST, 5, ("https://m/lfs/x",), ({"Authorization": "RemoteAuth t"},), "e"),
    ],
)
def test_every_request_survives_the_wire(req: object) -> None:
    """A request read back from its wire map is the request sent."""
    assert request_from_wire(req.to_wire()) == req  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "answer",
    [
        ProgressReport(5, 7, (("k", "a.bin", 10, 3, "mirror", "fetching"),)),
        Done({"path": "/x", "ref": "hf://a/b"}, ("a warning",)),
        Failed("hf://acme/nope not found", 2),
        StatusAnswer({"agent": "abc", "peers": []}),
    ],
)
def test_every_answer_survives_the_wire(answer: object) -> None:
    """An answer read back from its wire map is the answer sent."""
    assert answer_from_wire(answer.to_wire()) == answer  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "wire",
    [
        {"op": "nope"},
        {"op": "get"},
        {"op": "get", "ref": 5},
        {"op": "get", "ref": "hf://a/b", "to": ["x"]},
        {"op": "rm", "ref": ""},
        {"op": "publish", "ref": "team:v1", "manifest": "nocolon"},
        {"op": "publish", "ref": "team:v1", "manifest": "sha256:" + "zz" * 32},
        {"op": "get", "ref": "x" * 5000},
        {"op": "blob", "digest": "gitsha1:" + "a" * 40, "size": 1},
        {"op": "blob", "digest": DIGEST, "size": -1},
        {"op": "blob", "digest": DIGEST, "size": True},
        {"op": "blob", "digest": DIGEST, "size": 1, "urls": ["file:///etc/passwd"]},
        {"op": "blob", "digest": DIGEST, "size": 1, "urls": ["http://m/"] * 17},
        {"op": "blob", "digest": DIGEST, "size": 1, "urls": ["http://m/"], "headers": [{}, {}]},
        {"op": "blob", "digest": DIGEST, "size": 1, "urls": ["http://m/"], "headers": [{"a": 1}]},
    ],
)
def test_bad_requests_are_refused_as_the_clients_fault(wire: dict[str, object]) -> None:
    """A request of the wrong shape is a ControlProtocolError (exit 2), never a crash."""
    with pytest.raises(ControlProtocolError) as e:
        request_from_wire(wire)
    assert e.value.exit_code == 2


@pytest.mark.parametrize(
    "wire",
    [
        {"event": "what"},
        {"event": "progress", "files": "x"},
        {"event": "progress", "files": [["k", "a", -1, 0, "m", "s"]]},
        {"event": "progress", "from_mirrors": "many"},
        {"event": "result", "warnings": [1]},
    ],
)
def test_bad_answers_are_refused(wire: dict[str, object]) -> None:
    """An agent's answer of the wrong shape is refused at the edge."""
    with pytest.raises(ControlProtocolError):
        answer_from_wire(wire)


def test_an_error_code_out_of_range_is_a_plain_failure() -> None:
    """An error answer keeps its message; a code that is no exit code becomes 1."""
    assert answer_from_wire({"event": "error", "message": "m", "code": 999}) == Failed("m", 1)


async def _ask(data: bytes, *, eof: bool = True) -> list[dict[str, object]]:
    """Bytes into the control server's handler (on memory streams); the maps it answers."""
    from pathlib import Path

    import trio
    import trio.testing

    from p2pmodel.adapters.control import unpack
    from p2pmodel.core.wire import FrameDecoder
    from p2pmodel.services.control import ControlServer

    async def publish(req: object) -> dict[str, object]:
        raise AssertionError("a bad request must not reach the op")

    server = ControlServer(Path("/nonexistent"), None, dict, {"publish": publish})  # type: ignore[arg-type]
    client, served = trio.testing.memory_stream_pair()
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, served)
        await client.send_all(data)
        if eof:
            await client.send_eof()
        while chunk := await client.receive_some(65536):
            got.extend(chunk)
    return [unpack(f) for f in FrameDecoder().feed(bytes(got))]


async def test_a_publish_request_without_a_digest_is_a_users_error() -> None:
    """``publish`` naming no ``sha256:`` manifest is refused with exit 2 (was 70, a bug)."""
    from p2pmodel.adapters.control import pack

    answers = await _ask(pack({"op": "publish", "ref": "team:v1", "manifest": "nocolon"}))
    assert answers == [{"event": "error", "message": answers[0]["message"], "code": 2}], answers
    assert "sha256" in str(answers[0]["message"])


async def test_a_partial_request_is_dropped_after_ten_seconds(
    autojump_clock: object,
) -> None:
    """A client that sends half a frame and waits is hung up on after 10 s (fake clock)."""
    import trio

    t0 = trio.current_time()
    assert await _ask(b"\x00\x00\x00\x10abc", eof=False) == []
    assert 10.0 <= trio.current_time() - t0 < 11.0
