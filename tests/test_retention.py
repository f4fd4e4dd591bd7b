"""Which models the store evicts and which blobs it deletes (pure, no files)."""

from __future__ import annotations

from p2pmodel.core.retention import Model, Shared, plan, shared

GB = 10**9


def m(ref: str, blobs: str, last_use: float, pinned: bool = False) -> Model:
    return Model(ref, frozenset(blobs), last_use, pinned)


SIZES = {"a": 4 * GB, "b": 3 * GB, "c": 2 * GB, "s": 1 * GB, "x": 5 * GB}


def test_under_the_cap_nothing_goes_but_garbage():
    """Below the cap no model is evicted; a blob no model references is deleted."""
    p = plan([m("old", "as", 1), m("new", "bs", 2)], SIZES, cap=100 * GB)
    assert p.evict == ()
    assert p.delete == ("c", "x")
    assert p.freed == 7 * GB and not p.over_cap


def test_a_cap_smaller_than_two_models_evicts_the_older_unpinned_one():
    """Over the cap the least recently used model goes, and its blobs with it, except one the
    newer model shares."""
    sizes = {k: SIZES[k] for k in "abs"}
    p = plan([m("old", "as", 1), m("new", "bs", 2)], sizes, cap=6 * GB)
    assert p.evict == ("old",)
    assert p.delete == ("a",)
    assert p.size_after == 4 * GB and not p.over_cap


def test_a_pinned_model_is_kept_even_when_oldest():
    """A pinned model is never evicted: the next oldest goes instead."""
    sizes = {k: SIZES[k] for k in "abc"}
    models = [m("pinned", "a", 1, pinned=True), m("mid", "b", 2), m("new", "c", 3)]
    p = plan(models, sizes, cap=7 * GB)
    assert p.evict == ("mid",)
    assert p.delete == ("b",)


def test_blobs_in_use_stay_and_a_running_gets_model_is_not_evicted():
    """A blob a running get or a peer's fetch uses is not deleted even when its model goes,
    and the model a running get fetches is not evicted at all."""
    sizes = {k: SIZES[k] for k in "abcx"}
    models = [m("old", "ax", 1), m("getting", "b", 0), m("new", "c", 3)]
    p = plan(models, sizes, cap=1 * GB, busy_refs={"getting"}, busy_blobs={"x"})
    assert "getting" not in p.evict
    assert "old" in p.evict and "x" not in p.delete and "b" not in p.delete
    assert p.kept_busy == ("x",)
    assert p.over_cap  # pinned/busy data alone is over the cap: said, not hidden


def test_a_model_whose_eviction_frees_nothing_is_kept():
    """An old model whose blobs all belong to a kept model too is not evicted for the cap:
    its eviction would free no space."""
    sizes = {k: SIZES[k] for k in "abs"}
    models = [m("alias", "s", 1), m("other", "a", 2), m("model", "bs", 3)]
    p = plan(models, sizes, cap=5 * GB)
    assert p.evict == ("other",)
    assert p.delete == ("a",)


def test_two_old_models_sharing_a_big_blob_both_go_when_needed():
    """A blob two evicted models shared is freed once both are gone."""
    sizes = {"x": 5 * GB, "a": 1, "b": 1, "c": 1 * GB}
    models = [m("one", "xa", 1), m("two", "xb", 2), m("new", "c", 3)]
    p = plan(models, sizes, cap=2 * GB)
    assert p.evict == ("one", "two")
    assert p.delete == ("a", "b", "x")


def test_rm_drops_the_ref_but_not_what_another_model_shares():
    """Removing a model deletes its own blobs only; the rest stays for the other model."""
    sizes = {k: SIZES[k] for k in "abs"}
    p = plan([m("one", "as", 1), m("two", "bs", 2)], sizes, drop=["one", "missing"])
    assert p.evict == ("one",)
    assert p.delete == ("a",)


def test_partial_downloads_count_against_the_cap():
    """Bytes of partial files count as store size, so the cap evicts to make room for them."""
    sizes = {k: SIZES[k] for k in "ab"}
    models = [m("old", "a", 1), m("new", "b", 2)]
    assert plan(models, sizes, cap=8 * GB).evict == ()
    assert plan(models, sizes, cap=8 * GB, extra=2 * GB).evict == ("old",)


def test_ls_names_the_blobs_two_models_share():
    """Each model lists the others it shares blobs with, with their count and size."""
    out = shared([m("one", "as", 1), m("two", "bs", 2), m("three", "c", 3)], SIZES)
    assert out["one"] == [Shared("two", 1, 1 * GB)]
    assert out["two"] == [Shared("one", 1, 1 * GB)]
    assert out["three"] == []
