"""The gate between sharing and a download, and a fetch plan following it, without IO."""

from __future__ import annotations

from p2pmodel.core.fetchplan import Assignment, BlobState, FetchPlan, Wait
from p2pmodel.core.gate import Gate
from p2pmodel.core.mirrors import MirrorBoard
from p2pmodel.core.rangeset import RangeSet

MiB = 1024 * 1024
A = "http://a.test"


def shared(size: int = 8 * MiB, **kw) -> tuple[Gate, FetchPlan]:
    """A gate sharing out blob "g" and a plan (with "g" and an unshared "h") following it."""
    gate = Gate()
    gate.gate("g")
    plan = FetchPlan(MirrorBoard(), chunk_size=MiB, **kw)
    plan.add_blob("g", size, [f"{A}/g"])
    plan.add_blob("h", MiB, [f"{A}/h"])
    plan.follow(gate)
    gate.started({k: b.done.copy() for k, b in plan.blobs.items()})
    return gate, plan


def drain(plan: FetchPlan, worker: int) -> Assignment:
    step = plan.assign(worker, 0.0)
    assert isinstance(step, Assignment), step
    plan.progress(worker, step.stop - step.pos)
    plan.release(worker, 1.0)
    return step


def test_a_shared_blob_is_gated_and_only_what_sharing_opens_goes_to_mirrors():
    """Before any worker runs the plan gates what the gate shares out; it then serves only
    the ranges sharing opened, and other blobs as usual."""
    gate, plan = shared()
    assert plan.blobs["g"].allowed == RangeSet() and plan.blobs["h"].allowed is None
    assert gate.held() == {"g"} and gate.gated("g") and not gate.gated("h")
    assert drain(plan, 0).blob == "h"
    assert plan.assign(0, 0.0) == Wait(None)
    gate.open("g", 2 * MiB, 4 * MiB)
    assert plan.assign(0, 0.0) == Wait(None)  # the plan sees it when it follows the gate
    assert plan.follow(gate).touched == {"g"}
    spans = [(s.start, s.stop) for s in (drain(plan, 0), drain(plan, 0))]
    assert spans == [(2 * MiB, 3 * MiB), (3 * MiB, 4 * MiB)]
    assert plan.assign(0, 0.0) == Wait(None)


def test_closing_a_range_stops_workers_inside_at_their_next_write():
    """A range sharing closes again (a peer serves it) stops a worker fetching it at its next
    write; what it wrote stays done."""
    gate, plan = shared()
    gate.open("g", 0, 4 * MiB)
    plan.follow(gate)
    a = plan.assign(0, 0.0)
    assert isinstance(a, Assignment) and (a.start, a.stop) == (0, MiB)
    assert plan.progress(0, 1000)
    gate.close("g", 0, 4 * MiB)
    plan.follow(gate)
    assert not plan.progress(0, 0)
    plan.release(0, 1.0)
    assert plan.blobs["g"].done.to_list() == [(0, 1000)]
    assert drain(plan, 0).blob == "h"
    assert plan.assign(0, 1.0) == Wait(None)


def test_bytes_peers_rewrite_are_not_done_until_they_arrived():
    """Mirror bytes of a range that went to peers are forgotten (libtorrent writes over
    them); the range is done once it arrived, which completes the blob."""
    gate, plan = shared(2 * MiB)
    gate.open("g", 0, 2 * MiB)
    plan.follow(gate)
    drain(plan, 0)
    assert plan.blobs["g"].done.to_list() == [(0, MiB)]
    gate.close("g", MiB, 2 * MiB)
    gate.rewrite("g", 0, MiB)
    got = plan.follow(gate)
    assert got.rewritten == {"g": 0} and not got.arrived
    assert not plan.blobs["g"].done
    gate.arrived("g", 0, 2 * MiB)
    got = plan.follow(gate)
    assert got.arrived == {"g": 2 * MiB}
    assert [b.key for b in plan.to_verify()] == ["g"]
    assert plan.follow(gate).touched == set()  # the news are taken once


def test_news_written_together_are_taken_in_the_order_they_hold():
    """Bytes that arrived and are then to be rewritten are not done; bytes to be rewritten
    that then arrived are."""
    gate, plan = shared(4 * MiB)
    gate.arrived("g", 0, MiB)
    gate.rewrite("g", 0, MiB)
    gate.rewrite("g", 2 * MiB, 3 * MiB)
    gate.arrived("g", 2 * MiB, 3 * MiB)
    plan.follow(gate)
    assert plan.blobs["g"].done.to_list() == [(2 * MiB, 3 * MiB)]


def test_sharing_sees_units_covered_by_resumed_mirror_and_lan_bytes():
    """Coverage, as sharing reads it: bytes on disk at the start, ranges workers finished,
    bytes that arrived; not the bytes peers are writing over."""
    gate = Gate()
    gate.gate("g")
    assert gate.held() is None
    gate.started({"g": RangeSet([(0, MiB)]), "h": RangeSet()})
    assert gate.held() == {"g"}
    assert gate.covered("g", 0, MiB) and not gate.covered("g", 0, 2 * MiB)
    gate.mirror_wrote("g", MiB, 2 * MiB)
    assert gate.covered("g", 0, 2 * MiB)
    gate.rewrite("g", 2 * MiB, 3 * MiB)
    gate.mirror_wrote("g", 2 * MiB, 3 * MiB)  # a worker inside the range writing late
    assert not gate.covered("g", 2 * MiB, 3 * MiB)
    gate.arrived("g", 2 * MiB, 3 * MiB)
    assert gate.covered("g", 0, 3 * MiB)
    assert not gate.covered("h", 0, 0)  # not shared out here


def test_a_digest_failure_lets_the_blob_go_whole_and_sharing_sees_it():
    """The plan's mismatch of a shared blob ungates it; the download writes the failure,
    after which the gate keeps nothing the office did for that blob."""
    gate, plan = shared(2 * MiB)
    gate.open("g", 0, MiB)
    gate.hashed("g", 0, MiB, MiB, b"x" * 20)
    plan.follow(gate)
    drain(plan, 0)
    gate.mirror_wrote("g", 0, MiB)
    gate.arrived("g", MiB, 2 * MiB)
    plan.follow(gate)
    assert plan.mismatch("g") == [] and plan.blobs["g"].allowed is None
    gate.digest_failed("g")
    assert gate.failed("g") and not gate.gated("g") and gate.open_ranges("g") is None
    assert not gate.covered("g", 0, MiB) and gate.piece_hashes("g", MiB) == []
    gate.arrived("g", 0, MiB)  # a peer fetch that was under way
    assert plan.follow(gate).touched == set()
    assert plan.blobs["g"].allowed is None and not plan.blobs["g"].done
    assert isinstance(plan.assign(0, 0.0), Assignment)


def test_a_blob_let_go_is_served_whole_by_mirrors():
    """Sharing that gives a blob up opens all of it to the mirrors."""
    gate, plan = shared(2 * MiB)
    gate.let_go("g")
    assert plan.follow(gate).touched == {"g"}
    assert plan.blobs["g"].allowed is None
    assert {drain(plan, w).blob for w in range(3)} == {"g", "h"}
    assert plan.blobs["g"].state is BlobState.VERIFYING


def test_piece_hashes_are_given_for_the_piece_size_asked():
    """Units hashed in pieces of another size than the blob torrent's are not its pieces."""
    gate = Gate()
    gate.gate("g")
    gate.hashed("g", 2 * MiB, 4 * MiB, MiB, b"b" * 40)
    gate.hashed("g", 0, 2 * MiB, MiB, b"a" * 40)
    gate.hashed("g", 4 * MiB, 6 * MiB, 256 * 1024, b"c" * 160)
    assert gate.piece_hashes("g", MiB) == [(0, 2 * MiB, b"a" * 40), (2 * MiB, 4 * MiB, b"b" * 40)]
    assert gate.piece_hashes("x", MiB) == []


def test_each_side_is_woken_by_what_the_other_wrote_only():
    """Sharing's writes wake the download, the download's wake sharing; nobody else."""
    woken: list[str] = []
    gate = Gate()
    gate.wake_sharing_with(lambda: woken.append("sharing"))
    gate.wake_download_with(lambda: woken.append("download"))
    gate.gate("g")
    gate.open("g", 0, MiB)
    gate.close("g", 0, MiB)
    gate.rewrite("g", 0, MiB)
    gate.arrived("g", 0, MiB)
    gate.hashed("g", 0, MiB, MiB, b"a" * 20)
    assert woken == ["download"] * 6
    woken.clear()
    gate.started({"g": RangeSet()})
    gate.mirror_wrote("g", 0, MiB)  # read on sharing's next look, woken by:
    gate.mirror_done("g")
    gate.digest_failed("g")
    assert woken == ["sharing"] * 3
    woken.clear()
    gate.take_lan("g")
    gate.mirror_done("x")  # not shared out: nothing to tell
    assert woken == []
