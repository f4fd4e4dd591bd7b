"""Mirror ranking state that outlives one get, and Retry-After (``p2pmodel.core.mirrors``)."""

from __future__ import annotations

from p2pmodel.core.mirrors import Failure, MirrorBoard, retry_after

A, B = "http://a.test", "http://b.test"


def test_retry_after_in_seconds_or_as_a_date() -> None:
    """Seconds are taken as they are; an HTTP date is measured from the given wall clock."""
    assert retry_after("7", 0.0) == 7.0
    assert retry_after("Thu, 01 Jan 1970 00:00:30 GMT", 10.0) == 20.0
    assert retry_after("Thu, 01 Jan 1970 00:00:30 GMT", 100.0) == 0.0
    assert retry_after(None, 0.0) is None and retry_after("soon", 0.0) is None


def test_revive_gives_dead_mirrors_another_chance_and_keeps_what_was_learned() -> None:
    """A new get on the agent's board: dead mirrors and bans for missing files are lifted,
    rates and bans for bad bytes stay."""
    board = MirrorBoard(max_failures=2)
    board.add([A, B])
    board.started(A, 0.0)
    board.finished(A, 10_000_000, 1.0)
    for t in (1.0, 2.0):
        board.started(B, t)
        board.failed(B, Failure.CONNECT, t, started_at=t)
    board.ban(A, "blob1", "digest mismatch (got sha256:...)")
    board.started(A, 3.0)
    board.failed(A, Failure.MISSING, 3.0, blob="blob2")
    assert board.stats(B).dead and board.hopeless([B], "x")
    board.revive(10.0)
    assert not board.stats(B).dead and board.choose([B], "x", 10.0) == B
    assert board.stats(A).rate is not None
    assert "blob1" in board.stats(A).bans and "blob2" not in board.stats(A).bans


def test_an_exploring_connection_that_measured_nothing_does_not_count() -> None:
    """A candidate whose exploring connection failed gets another once its backoff is over,
    and one whose rate is still unknown when a get ends is explored again in the next get."""
    board = MirrorBoard()
    board.add([A, B])
    assert board.choose([A, B], "x", 0.0) == A
    board.started(A, 0.0)
    assert board.choose([A, B], "x", 0.0) == B
    board.started(B, 0.0)
    board.failed(B, Failure.CONNECT, 0.1, started_at=0.0)
    assert board.choose([A, B], "x", 0.15) == A  # B backs off (0.1 s)
    assert board.choose([A, B], "x", 1.0) == B  # and is explored again
    board.started(B, 1.0)
    board.finished(A, 10_000_000, 1.0)
    board.finished(B, 1000, 0.5)  # too little to measure
    board.revive(2.0)
    board.started(A, 2.0)
    assert board.choose([A, B], "y", 2.0) == B


def test_bad_bytes_says_why_only_when_every_known_candidate_served_wrong_bytes() -> None:
    """A blob asked again after every mirror served it with a wrong digest: the board says so
    (the get fails at once instead of waiting for a peer that may never come); a candidate it
    does not know, or one usable for the blob, or a ban for a missing file, is a chance."""
    board = MirrorBoard()
    board.add([A, B])
    board.ban(A, "blob1", "digest mismatch (got sha256:aa...)")
    assert board.bad_bytes([A], "blob1") == f"{A}: digest mismatch (got sha256:aa...)"
    assert board.bad_bytes([A, B], "blob1") is None  # B may still serve it
    assert board.bad_bytes([A, "http://new.test"], "blob1") is None
    board.ban(B, "blob1", "missing")
    assert board.bad_bytes([A, B], "blob1") is None
    board.ban(B, "blob1", "digest mismatch (got sha256:bb...)")
    assert board.bad_bytes([A, B], "blob1") is not None
    assert board.bad_bytes([], "blob1") is None and board.bad_bytes([A], "blob2") is None
