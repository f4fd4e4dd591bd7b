"""Peer RPC framing and messages: typed at the edge, bounded, strict."""

from __future__ import annotations

import random
import struct

import msgpack
import pytest

from p2pmodel.core.wire import (
    MAX_FRAME,
    Ack,
    Claim,
    FrameDecoder,
    Have,
    HaveQuery,
    Hello,
    Metadata,
    MetadataQuery,
    OfficeQuery,
    OfficeState,
    PeerProtocolError,
    Ping,
    Release,
    Resolved,
    ResolveQuery,
    UnitDone,
    UnitInfo,
    UnitQuery,
    decode,
    encode,
)

D1 = "sha256:" + "1" * 64
D2 = "gitsha1:" + "2" * 40

SAMPLES = [
    Hello(agent="ab12cd34", proto=1, torrent_port=6881, rpc_port=7420),
    HaveQuery(digests=(D1, D2)),
    Have(complete=(D1,), partial=(D2,)),
    MetadataQuery(digest=D1),
    Metadata(digest=D1, info=b"d6:lengthi1ee"),
    ResolveQuery(ref="qwen-image:v1.0"),
    Resolved(ref="qwen-image:v1.0", manifest=b"\x85"),
    Ping(),
    Claim(digest=D1, index=3, start=3 * 2**26, stop=4 * 2**26, ttl_ms=10_000),
    Release(digest=D1, index=3),
    UnitDone(digest=D2, index=0, start=0, stop=5),
    Ack(),
    UnitQuery(digest=D1, index=2),
    UnitInfo(digest=D1, index=2, info=b"d6:lengthi1ee"),
    OfficeQuery(digests=(D1,)),
    OfficeState(claims=((D1, 1, 10, 20, 5000),), done=((D2, 0, 0, 5, 0),), complete=(D2,)),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.kind)
def test_every_message_round_trips(msg):
    """Each message kind encodes to one frame and decodes to an equal message and request id."""
    frames = FrameDecoder().feed(encode(msg, 7))
    assert len(frames) == 1
    assert decode(frames[0]) == (msg, 7)


def test_frames_survive_arbitrary_splitting():
    """However the byte stream is cut, the decoder yields the same frames in order."""
    stream = b"".join(encode(m, i) for i, m in enumerate(SAMPLES))
    rng = random.Random(0)
    for _ in range(50):
        dec, got, pos = FrameDecoder(), [], 0
        while pos < len(stream):
            step = rng.randint(1, 40)
            got += dec.feed(stream[pos : pos + step])
            pos += step
        assert [decode(f) for f in got] == [(m, i) for i, m in enumerate(SAMPLES)]
        assert dec.pending == 0


def test_oversized_frame_is_refused_before_buffering():
    """A length header over the limit is a protocol error at once, not a memory sink."""
    with pytest.raises(PeerProtocolError, match="over the limit"):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME + 1))


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        msgpack.packb({"a": 1}),
        msgpack.packb(["nope", 1, {}]),
        msgpack.packb(["ping", -1, {}]),
        msgpack.packb(["ping", 1, []]),
        msgpack.packb(["ping", 1, {"extra": 1}]),
        msgpack.packb(["meta?", 1, {}]),
        msgpack.packb(["meta?", 1, {"digest": "sha256:xyz"}]),
        msgpack.packb(["meta?", 1, {"digest": D1 + "\n"}]),
        msgpack.packb(["have?", 1, {"digests": D1}]),
        msgpack.packb(["hello", 1, {"agent": "AB", "proto": 1, "torrent_port": 1, "rpc_port": 1}]),
        msgpack.packb(
            ["hello", 1, {"agent": "ab12cd34", "proto": True, "torrent_port": 1, "rpc_port": 1}]
        ),
        msgpack.packb(
            ["hello", 1, {"agent": "ab12cd34", "proto": 1, "torrent_port": 70000, "rpc_port": 1}]
        ),
        msgpack.packb(["meta", 1, {"digest": D1, "info": "text, not bytes"}]),
        msgpack.packb(
            ["claim", 1, {"digest": D1, "index": -1, "start": 0, "stop": 1, "ttl_ms": 1}]
        ),
        msgpack.packb(["release", 1, {"digest": D1, "index": 1.5}]),
        msgpack.packb(["office", 1, {"claims": [[D1, 0, 5, 5, 0]], "done": [], "complete": []}]),
        msgpack.packb(["office", 1, {"claims": [[D1, 0, 1]], "done": [], "complete": []}]),
        msgpack.packb(["office", 1, {"claims": [["x", 0, 0, 1, 0]], "done": [], "complete": []}]),
    ],
)
def test_malformed_payloads_are_the_peers_fault(payload):
    """Anything off-shape is a PeerProtocolError (drop the peer), never another exception."""
    with pytest.raises(PeerProtocolError):
        decode(payload)
