"""The fetch plan and mirror board, driven without sockets or clocks."""

from __future__ import annotations

import random

import pytest

from p2pmodel.core.fetchplan import Assignment, BlobState, FetchPlan, Finished, Wait
from p2pmodel.core.mirrors import Failure, MirrorBoard
from p2pmodel.core.rangeset import RangeSet

MiB = 1024 * 1024
A, B, C = "http://a.test", "http://b.test", "http://c.test"


def plan_with(*blobs: tuple[str, int], mirrors=(A,), **kw) -> FetchPlan:
    plan = FetchPlan(MirrorBoard(), **kw)
    for key, size in blobs:
        plan.add_blob(key, size, [f"{m}/{key}" for m in mirrors])
    return plan


def drain(plan: FetchPlan, worker: int, now: float = 0.0) -> Assignment:
    step = plan.assign(worker, now)
    assert isinstance(step, Assignment), step
    plan.progress(worker, step.stop - step.pos)
    plan.release(worker, now + 1)
    return step


def test_assignments_tile_the_blob_without_overlap():
    """Chunks handed out for one blob cover it exactly once and the blob then awaits hashing."""
    plan = plan_with(("x", 10 * MiB), chunk_size=3 * MiB)
    steps = [plan.assign(w, 0.0) for w in range(4)]
    assert all(isinstance(s, Assignment) for s in steps)
    spans = sorted((s.start, s.stop) for s in steps)  # type: ignore[union-attr]
    assert spans == [(0, 3 * MiB), (3 * MiB, 6 * MiB), (6 * MiB, 9 * MiB), (9 * MiB, 10 * MiB)]
    for w, s in enumerate(steps):
        assert isinstance(s, Assignment)
        assert plan.progress(w, s.stop - s.start) is False
        plan.release(w, 1.0)
    assert [b.key for b in plan.to_verify()] == ["x"]
    assert isinstance(plan.assign(9, 2.0), Wait)  # hashing pending: not finished yet
    plan.verified("x")
    assert isinstance(plan.assign(9, 2.0), Finished)


def test_resume_only_assigns_the_gaps():
    """Ranges restored from resume state are never fetched again."""
    plan = FetchPlan(MirrorBoard(), chunk_size=8 * MiB)
    plan.add_blob("x", 10 * MiB, [f"{A}/x"], done=RangeSet([(0, 4 * MiB), (6 * MiB, 10 * MiB)]))
    step = plan.assign(0, 0.0)
    assert isinstance(step, Assignment)
    assert (step.start, step.stop) == (4 * MiB, 6 * MiB)
    half = plan.assign(1, 0.0)  # an idle worker shares the last gap (endgame)
    assert isinstance(half, Assignment)
    assert (half.start, half.stop, step.stop) == (5 * MiB, 6 * MiB, 5 * MiB)
    assert isinstance(plan.assign(2, 0.0), Wait)  # 1 MiB halves are too small to split again


def test_complete_resume_goes_straight_to_verification():
    """A blob whose bytes were all on disk before a crash is only re-hashed."""
    plan = FetchPlan(MirrorBoard())
    plan.add_blob("x", 5, [f"{A}/x"], done=RangeSet([(0, 5)]))
    assert [b.key for b in plan.to_verify()] == ["x"]


def test_several_blobs_progress_at_once_up_to_the_cap():
    """Connections spread over max_active_blobs blobs, per_blob each, before piling onto one."""
    blobs = [(f"b{i}", 4 * MiB) for i in range(6)]
    plan = plan_with(*blobs, per_blob=2, max_active_blobs=3, chunk_size=MiB)
    got = [plan.assign(w, 0.0) for w in range(10)]
    keys = [s.blob for s in got if isinstance(s, Assignment)]
    assert sorted(keys[:6]) == ["b0", "b0", "b1", "b1", "b2", "b2"]
    assert len(keys) == 10  # nobody idles: the cap is lifted once every active blob has its share
    assert set(keys) == {"b0", "b1", "b2"}


def test_one_big_file_gets_every_connection():
    """With a single file, all connections work on it despite the per-blob cap."""
    plan = plan_with(("x", 64 * MiB), per_blob=8, chunk_size=MiB)
    assert all(isinstance(plan.assign(w, 0.0), Assignment) for w in range(16))


def test_failed_connection_returns_its_unfinished_bytes():
    """A connection that breaks mid-range loses nothing it wrote; the rest is re-assigned."""
    plan = plan_with(("x", 4 * MiB), mirrors=(A, B), chunk_size=4 * MiB)
    step = plan.assign(0, 0.0)
    assert isinstance(step, Assignment)
    plan.progress(0, MiB)
    plan.release(0, 1.0, Failure.SHORT, detail="cut")
    assert plan.blobs["x"].done.to_list() == [(0, MiB)]
    again = plan.assign(1, 1.0)
    assert isinstance(again, Assignment)
    assert (again.start, again.stop) == (MiB, 4 * MiB)


def test_endgame_splits_the_slowest_tail():
    """When nothing is unassigned, an idle worker takes the second half of the largest range."""
    plan = plan_with(("x", 8 * MiB), chunk_size=8 * MiB)
    first = plan.assign(0, 0.0)
    assert isinstance(first, Assignment)
    plan.progress(0, 2 * MiB)
    second = plan.assign(1, 0.5)
    assert isinstance(second, Assignment)
    assert (second.start, second.stop) == (5 * MiB, 8 * MiB)
    assert first.stop == 5 * MiB
    assert plan.progress(0, 4 * MiB) is False  # only 3 MiB more were wanted
    assert plan.blobs["x"].done.to_list() == [(0, 5 * MiB)]


def test_busy_mirror_is_left_alone_until_retry_after():
    """A 503 with Retry-After keeps new connections off that mirror until the time passes."""
    plan = plan_with(("x", 4 * MiB), chunk_size=MiB)
    assert isinstance(plan.assign(0, 0.0), Assignment)
    plan.release(0, 0.1, Failure.BUSY, retry_after=5.0)
    step = plan.assign(0, 1.0)
    assert isinstance(step, Wait)
    assert step.until == pytest.approx(5.1)
    assert isinstance(plan.assign(0, 5.2), Assignment)


def test_missing_file_bans_the_mirror_for_that_blob_only():
    """A 404 moves that blob to other mirrors but keeps the mirror for other blobs."""
    plan = plan_with(("x", MiB), ("y", MiB), mirrors=(A, B))
    step = plan.assign(0, 0.0)
    assert isinstance(step, Assignment) and step.mirror == A and step.blob == "x"
    plan.release(0, 0.1, Failure.MISSING, detail="HTTP 404")
    nxt = plan.assign(0, 0.2)
    assert isinstance(nxt, Assignment) and nxt.blob == "x" and nxt.mirror == B
    other = plan.assign(1, 0.2)
    assert isinstance(other, Assignment) and other.blob == "y" and other.mirror == A


def test_blob_fails_when_no_mirror_can_serve_it():
    """When every candidate lacks a blob, it fails and the plan finishes instead of waiting."""
    plan = plan_with(("x", MiB))
    assert isinstance(plan.assign(0, 0.0), Assignment)
    plan.release(0, 0.1, Failure.MISSING, detail="HTTP 404")
    assert isinstance(plan.assign(0, 0.2), Finished)
    assert plan.blobs["x"].state is BlobState.FAILED
    assert plan.finished


def test_dead_after_repeated_failure_rounds():
    """A mirror failing round after round is given up, which fails blobs with no other source."""
    board = MirrorBoard(max_failures=3)
    plan = FetchPlan(board)
    plan.add_blob("x", MiB, [f"{A}/x"])
    now = 0.0
    for _ in range(3):
        step = plan.assign(0, now)
        assert isinstance(step, Assignment), step
        now += 0.01
        plan.release(0, now, Failure.CONNECT, detail="refused")
        now = board.stats(A).backoff_until
    assert board.stats(A).dead
    assert isinstance(plan.assign(0, now), Finished)
    assert plan.blobs["x"].state is BlobState.FAILED


def test_a_burst_of_failures_counts_as_one_round():
    """Sixteen connections opened together and refused together count one failure, not 16."""
    board = MirrorBoard(max_failures=3)
    plan = FetchPlan(board, chunk_size=MiB)
    plan.add_blob("x", 16 * MiB, [f"{A}/x"])
    for w in range(16):
        assert isinstance(plan.assign(w, 0.0), Assignment)
    for w in range(16):
        plan.release(w, 0.5, Failure.CONNECT)
    assert board.stats(A).consecutive == 1
    assert not board.stats(A).dead


def test_happy_eyeballs_opens_the_next_mirror_after_a_moment():
    """The first connection goes to the first mirror and each other untried mirror gets one
    exploring connection at once; the rest go to the first mirror until it keeps one waiting
    past race_delay, then to the next that answered."""
    board = MirrorBoard(race_delay=0.3)
    plan = FetchPlan(board, chunk_size=MiB)
    plan.add_blob("x", 32 * MiB, [f"{A}/x", f"{B}/x", f"{C}/x"])
    early = [plan.assign(w, 0.05 * w) for w in range(5)]
    assert [s.mirror for s in early if isinstance(s, Assignment)] == [A, B, C, A, A]
    plan.progress(1, 1000)  # B answered, A did not
    late = plan.assign(5, 0.35)
    assert isinstance(late, Assignment) and late.mirror == B


def test_the_fastest_proven_mirror_wins():
    """After rates are measured, new connections go to the faster mirror."""
    board = MirrorBoard()
    board.add([A, B])
    board.started(A, 0.0)
    board.started(B, 0.0)
    board.finished(A, 4 * MiB, 4.0)
    board.finished(B, 4 * MiB, 1.0)
    assert board.choose([A, B], "x", 5.0) == B


def test_every_candidate_is_explored_from_the_start():
    """Before any rate is known, a second candidate gets its exploring connection as soon as
    the first has one, not when the first one's chunk has ended (which used to let the first
    mirror take a second round of chunks on every other connection before the second was
    tried), and only one."""
    board = MirrorBoard()
    board.add([A, B])
    picks = []
    for _ in range(4):
        key = board.choose([A, B], "x", 0.0)
        assert key is not None
        board.started(key, 0.0)
        picks.append(key)
    assert picks == [A, B, A, A]


def test_an_untried_mirror_gets_one_exploring_connection():
    """A mirror never tried gets a single connection even when another is already proven."""
    board = MirrorBoard()
    board.add([A, B])
    board.started(A, 0.0)
    board.finished(A, 4 * MiB, 1.0)
    assert board.choose([A, B], "x", 1.0) == B
    board.started(B, 1.0)
    assert board.choose([A, B], "x", 1.1) == A


def test_an_unmeasured_mirror_gets_a_short_first_chunk_when_there_is_a_choice():
    """With two candidates, connections to a mirror with no measured rate take a 1 MiB first
    chunk (the choice is made again soon); once it has a rate, chunks are full size again."""
    plan = plan_with(("x", 64 * MiB), mirrors=(A, B), per_blob=8)
    first, explore = plan.assign(0, 0.0), plan.assign(1, 0.0)
    assert isinstance(first, Assignment) and isinstance(explore, Assignment)
    assert (first.mirror, explore.mirror) == (A, B)
    assert first.stop - first.start == explore.stop - explore.start == MiB
    plan.progress(1, MiB)
    plan.release(1, 0.2)
    full = plan.assign(1, 0.2)
    assert isinstance(full, Assignment) and full.mirror == B
    assert full.stop - full.start == 4 * MiB  # 64 MiB / (2 * per_blob)


def test_a_single_candidate_keeps_full_size_chunks():
    """A blob with one candidate has no choice to revisit: its first chunks are full size."""
    plan = plan_with(("x", 64 * MiB), per_blob=8)
    step = plan.assign(0, 0.0)
    assert isinstance(step, Assignment) and step.stop - step.start == 4 * MiB


def simulate(
    plan: FetchPlan, rates: dict[str, float], *, workers: int = 16, latency: float = 0.02
) -> tuple[float, dict[str, int]]:
    """Drive ``plan`` on a fake clock in 10 ms steps: a connection to mirror ``m`` gets its
    first byte ``latency`` after it started, then ``rates[m]`` bytes/s; digests always match.
    Returns when the plan finished and the bytes each mirror served."""
    dt, now = 0.01, 0.0
    served = dict.fromkeys(rates, 0)
    while not plan.finished:
        assert now < 60, "the plan never finished"
        for blob in plan.to_verify():
            plan.verified(blob.key)
        for w in range(workers):
            a = plan.inflight.get(w)
            if a is None:
                plan.assign(w, now)
                continue
            if now - a.started_at < latency:
                continue
            pos = a.pos
            more = plan.progress(w, min(a.remaining, int(rates[a.mirror] * dt)))
            served[a.mirror] += a.pos - pos
            if not more:
                plan.release(w, now)
        now += dt
    return now, served


def four_shards(*mirrors: str) -> FetchPlan:
    """A 256 MiB model in four shards, with what ``services.download`` makes of 16 connections."""
    plan = FetchPlan(MirrorBoard(), per_blob=8, connections=16)
    for i in range(4):
        plan.add_blob(f"s{i}", 64 * MiB, [f"{m}/s{i}" for m in mirrors])
    return plan


@pytest.mark.parametrize("order", [(A, B), (B, A)])
def test_the_fast_candidate_gets_most_bytes_in_either_order(order):
    """A slow mirror (2 MiB/s per connection) and a fast one (8 MiB/s): whichever is first in
    the configured order, the fast one serves over 90% of the bytes and the get takes less
    than 1.3 times as long as from the fast mirror alone. (Before every candidate was explored
    from the start with a short first chunk, the slow first mirror kept 15 connections for two
    rounds of 4 MiB chunks here: it served 124 of 256 MiB and the get took 2.4 times as long.)"""
    rates = {A: 2 * MiB, B: 8 * MiB}
    alone, _ = simulate(four_shards(B), rates)
    took, served = simulate(four_shards(*order), rates)
    assert served[B] > 0.9 * 256 * MiB
    assert sum(served.values()) == 256 * MiB  # nothing fetched twice
    assert took < 1.3 * alone


def test_mismatch_with_one_contributor_bans_it():
    """The only mirror that served a blob with a wrong digest is banned for it."""
    plan = plan_with(("x", MiB), mirrors=(A, B))
    drain(plan, 0)
    assert plan.mismatch("x") == [A]
    step = plan.assign(0, 2.0)
    assert isinstance(step, Assignment) and step.mirror == B and step.start == 0


def test_mismatch_when_every_mirror_contributed_isolates_the_culprit():
    """If all mirrors served parts of a bad blob, it is refetched one mirror at a time."""
    board = MirrorBoard()
    plan = FetchPlan(board, chunk_size=MiB)
    plan.add_blob("x", 2 * MiB, [f"{A}/x", f"{B}/x"])
    plan.assign(0, 0.0)
    board.stats(A).explored = True
    a1 = plan.inflight[0]
    plan.inflight.pop(0)
    board.stats(A).active = 0
    # Hand-build: A served the first half, B the second.
    plan.blobs["x"].by_mirror = {A: RangeSet([(0, MiB)]), B: RangeSet([(MiB, 2 * MiB)])}
    plan.blobs["x"].done = RangeSet([(0, 2 * MiB)])
    plan.blobs["x"].state = BlobState.VERIFYING
    del a1
    assert plan.mismatch("x") == []
    assert plan.blobs["x"].single_source
    first = plan.assign(0, 1.0)
    second = plan.assign(1, 1.0)
    assert isinstance(first, Assignment) and isinstance(second, Assignment)
    assert first.mirror == second.mirror  # one source at a time
    culprit = first.mirror
    for w, s in ((0, first), (1, second)):
        plan.progress(w, s.stop - s.pos)
        plan.release(w, 2.0)
    assert plan.mismatch("x") == [culprit]
    step = plan.assign(0, 3.0)
    assert isinstance(step, Assignment) and step.mirror != culprit


def test_mismatch_from_every_mirror_fails_the_blob():
    """When each mirror alone gave wrong bytes, the blob fails rather than looping."""
    plan = plan_with(("x", MiB), mirrors=(A,))
    drain(plan, 0)
    plan.mismatch("x")
    assert plan.blobs["x"].state is BlobState.FAILED
    assert plan.finished


@pytest.mark.parametrize("seed", range(8))
def test_simulated_download_with_faults_completes_exactly(seed):
    """Random failures, short bodies and a corrupt mirror still end with every blob verified
    from honest bytes, and with no failure each byte is fetched exactly once."""
    rng = random.Random(seed)
    faulty = seed % 2 == 1
    board = MirrorBoard(race_delay=0.3, max_failures=50)
    plan = FetchPlan(board, per_blob=4, max_active_blobs=2)
    sizes = {f"b{i}": rng.randrange(1, 12 * MiB) for i in range(5)}
    for key, size in sizes.items():
        plan.add_blob(key, size, [f"{m}/{key}" for m in (A, B, C)])
    corrupt = C if faulty else None
    fetched = 0
    bad_bytes: dict[str, RangeSet] = {k: RangeSet() for k in sizes}
    now = 0.0
    for _ in range(20_000):
        if plan.finished:
            break
        now += 0.05
        for blob in plan.to_verify():
            if bad_bytes[blob.key].intersection_size(0, blob.size):
                plan.mismatch(blob.key)
                bad_bytes[blob.key] = RangeSet()
            else:
                plan.verified(blob.key)
        for w in range(6):
            if w in plan.inflight:
                a = plan.inflight[w]
                roll = rng.random()
                if faulty and roll < 0.1:
                    n = rng.randrange(0, a.remaining + 1)
                    start = a.pos
                    plan.progress(w, n)
                    fetched += plan.inflight[w].pos - start
                    plan.release(w, now, Failure.SHORT, detail="cut")
                    continue
                n = min(a.remaining, rng.randrange(64 * 1024, 2 * MiB))
                start = a.pos
                more = plan.progress(w, n)
                fetched += plan.inflight[w].pos - start
                if a.mirror == corrupt:
                    bad_bytes[a.blob].add(start, a.pos)
                if not more:
                    plan.release(w, now)
            else:
                plan.assign(w, now)
    assert plan.finished
    assert all(b.state is BlobState.DONE for b in plan.blobs.values())
    if not faulty:
        assert fetched == sum(sizes.values())


def test_mismatch_of_resumed_bytes_blames_nobody_the_first_time():
    """Bytes restored from an earlier run may be a disk's fault: refetch once, ban nobody."""
    plan = FetchPlan(MirrorBoard())
    plan.add_blob(
        "x", MiB, [f"{A}/x"], done=RangeSet([(0, MiB)]), by_mirror={A: RangeSet([(0, MiB)])}
    )
    assert plan.mismatch("x") == []
    step = plan.assign(0, 0.0)
    assert isinstance(step, Assignment) and step.mirror == A and (step.start, step.stop) == (0, MiB)
    plan.progress(0, MiB)
    plan.release(0, 1.0)
    assert plan.mismatch("x") == [A]
    assert plan.blobs["x"].state is BlobState.FAILED


# -- the office gate ---------------------------------------------------------------------------


def gated_plan(size: int = 8 * MiB, **kw) -> FetchPlan:
    plan = FetchPlan(MirrorBoard(), chunk_size=MiB, **kw)
    plan.add_blob("g", size, [f"{A}/g"], allowed=RangeSet())
    return plan


def test_a_gated_blob_gets_no_mirror_work_until_a_range_is_allowed():
    plan = gated_plan()
    assert plan.assign(0, 0.0) == Wait(None)
    plan.allow("g", 2 * MiB, 4 * MiB)
    spans = [drain(plan, 0) for _ in range(2)]
    assert [(s.start, s.stop) for s in spans] == [(2 * MiB, 3 * MiB), (3 * MiB, 4 * MiB)]
    assert plan.assign(0, 0.0) == Wait(None)
    assert plan.covered("g", 2 * MiB, 4 * MiB) and not plan.covered("g", 0, 4 * MiB)


def test_disallow_stops_workers_inside_the_range_and_keeps_what_they_wrote():
    plan = gated_plan()
    plan.allow("g", 0, 4 * MiB)
    a = plan.assign(0, 0.0)
    assert isinstance(a, Assignment) and (a.start, a.stop) == (0, MiB)
    assert plan.progress(0, 1000)
    plan.disallow("g", 0, 4 * MiB)
    assert not plan.progress(0, 0)  # the worker stops at its next write
    plan.release(0, 1.0)
    assert plan.blobs["g"].done.to_list() == [(0, 1000)]
    assert plan.assign(0, 1.0) == Wait(None)


def test_bytes_marked_done_from_peers_complete_a_gated_blob():
    plan = gated_plan(4 * MiB)
    plan.allow("g", 0, 2 * MiB)
    drain(plan, 0)
    drain(plan, 0)
    assert plan.blobs["g"].state is BlobState.FETCHING
    plan.mark_done("g", 2 * MiB, 4 * MiB)
    assert [b.key for b in plan.to_verify()] == ["g"]


def test_gated_blobs_with_nothing_allowed_do_not_block_other_blobs():
    """max_active_blobs counts only blobs that have mirror work."""
    plan = FetchPlan(MirrorBoard(), chunk_size=MiB, max_active_blobs=1)
    plan.add_blob("g", 4 * MiB, [f"{A}/g"], allowed=RangeSet())
    plan.add_blob("h", 4 * MiB, [f"{A}/h"])
    step = plan.assign(0, 0.0)
    assert isinstance(step, Assignment) and step.blob == "h"


def test_a_mismatch_of_a_shared_blob_ungates_it_and_blames_no_mirror():
    plan = gated_plan(2 * MiB)
    plan.allow("g", 0, MiB)
    drain(plan, 0)
    plan.mark_done("g", MiB, 2 * MiB)
    assert plan.mismatch("g") == []
    assert plan.blobs["g"].allowed is None
    assert isinstance(plan.assign(0, 0.0), Assignment)


def test_an_opened_unit_is_cut_for_every_connection_so_nothing_is_split_later():
    """Endgame splits close a response early (mirror bytes in flight are wasted): a shared
    blob's unit is cut in connection-sized chunks up front instead."""
    plan = FetchPlan(MirrorBoard(), per_blob=8, connections=16)
    plan.add_blob("g", 64 * MiB, [f"{A}/g"], allowed=RangeSet())
    plan.allow("g", 16 * MiB, 32 * MiB)
    steps = [plan.assign(w, 0.0) for w in range(17)]
    spans = [(s.start, s.stop) for s in steps if isinstance(s, Assignment)]
    assert len(spans) == 16 and all(b - a == MiB for a, b in spans)
    assert steps[16] == Wait(None)  # no split of a 1 MiB range


def test_unit_chunks_are_cut_from_what_is_left_open_not_from_all_ever_opened():
    plan = FetchPlan(MirrorBoard(), per_blob=8, connections=16)
    plan.add_blob("g", 64 * MiB, [f"{A}/g"], allowed=RangeSet())
    plan.allow("g", 0, 16 * MiB)
    plan.mark_done("g", 0, 16 * MiB)
    plan.allow("g", 16 * MiB, 32 * MiB)
    step = plan.assign(0, 0.0)
    assert isinstance(step, Assignment) and step.stop - step.start == MiB
