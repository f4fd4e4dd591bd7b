"""Half-open interval sets, checked against a plain set of ints (``p2pmodel.core.rangeset``)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmodel.core.rangeset import RangeSet

UNIVERSE = 200

# Half the positions land on multiples of 10, so endpoints often coincide (touching, equal and
# nested ranges); the rest are anywhere in the universe.
_pos = st.one_of(st.integers(0, UNIVERSE // 10).map(lambda x: 10 * x), st.integers(0, UNIVERSE))
_ops = st.lists(st.tuples(st.sampled_from(["add", "subtract"]), _pos, _pos), max_size=25)
_queries = st.lists(st.tuples(_pos, _pos), min_size=1, max_size=10)


def build(ops: list[tuple[str, int, int]]) -> tuple[RangeSet, set[int]]:
    """Apply ``ops`` to a ``RangeSet`` and to the model set of ints."""
    rs, model = RangeSet(), set()
    for op, a, b in ops:
        getattr(rs, op)(a, b)
        if op == "add":
            model |= set(range(a, b))
        else:
            model -= set(range(a, b))
    return rs, model


def model_ranges(model: set[int]) -> list[tuple[int, int]]:
    """The unique sorted, merged list of half-open ranges covering ``model``."""
    out: list[tuple[int, int]] = []
    for x in sorted(model):
        if out and out[-1][1] == x:
            out[-1] = (out[-1][0], x + 1)
        else:
            out.append((x, x + 1))
    return out


def assert_invariants(rs: RangeSet) -> None:
    ranges = rs.to_list()
    for a, b in ranges:
        assert a < b, f"empty range in {rs!r}"
    for (_, b1), (a2, _) in itertools.pairwise(ranges):
        assert b1 < a2, f"overlapping, touching or unsorted ranges in {rs!r}"


@given(ops=_ops)
def test_matches_model_set_and_keeps_invariants(ops: list[tuple[str, int, int]]):
    """After any add/subtract sequence the ranges are exactly the model's, sorted and merged."""
    rs, model = build(ops)
    assert_invariants(rs)
    assert rs.to_list() == model_ranges(model)
    assert list(rs) == rs.to_list()
    assert len(rs) == len(rs.to_list())
    assert bool(rs) == bool(model)


@given(ops=_ops)
def test_membership_and_total(ops: list[tuple[str, int, int]]):
    """``in`` agrees with the model for every position, and ``total`` counts its members."""
    rs, model = build(ops)
    for x in range(-2, UNIVERSE + 3):
        assert (x in rs) == (x in model), x
    assert rs.total() == len(model)


@given(ops=_ops, queries=_queries)
def test_gaps_covers_and_intersection(
    ops: list[tuple[str, int, int]], queries: list[tuple[int, int]]
):
    """``gaps``, ``covers`` and ``intersection_size`` agree with the model for any query range."""
    rs, model = build(ops)
    # Also query exactly at, just outside and just inside each range's edges.
    queries = list(queries)
    for a, b in model_ranges(model):
        queries += [(a, b), (a - 1, b), (a, b + 1), (a + 1, b - 1), (a - 1, a), (b, b + 1)]
    for start, stop in queries:
        window = set(range(start, stop))
        gaps = list(rs.gaps(start, stop))
        assert gaps == model_ranges(window - model)
        assert all(start <= a < b <= stop for a, b in gaps)
        assert rs.covers(start, stop) == (window <= model)
        assert rs.intersection_size(start, stop) == len(window & model)


@given(ops=_ops)
def test_order_of_adds_does_not_matter(ops: list[tuple[str, int, int]]):
    """Adding the same ranges in reverse order gives an equal set (the form is canonical)."""
    adds = [(a, b) for _, a, b in ops]
    assert RangeSet(adds) == RangeSet(reversed(adds))


@given(ops=_ops)
def test_copy_is_independent(ops: list[tuple[str, int, int]]):
    """A copy compares equal and later changes to either side do not affect the other."""
    rs, _ = build(ops)
    twin = rs.copy()
    assert twin == rs
    twin.add(0, UNIVERSE)
    rs.subtract(0, UNIVERSE)
    assert twin.to_list() == [(0, UNIVERSE)]
    assert rs.to_list() == []


def test_to_list_returns_a_copy():
    """Mutating the list ``to_list`` returned does not change the set."""
    rs = RangeSet([(0, 10)])
    rs.to_list().append((20, 30))
    assert rs.to_list() == [(0, 10)]


# -- examples ------------------------------------------------------------------------------------


def test_adjacent_and_overlapping_ranges_merge():
    """Touching or overlapping adds merge into one range; a gap keeps them apart."""
    rs = RangeSet()
    rs.add(0, 10)
    rs.add(10, 20)
    assert rs.to_list() == [(0, 20)]
    rs.add(30, 40)
    rs.add(5, 35)
    assert rs.to_list() == [(0, 40)]
    rs.add(41, 50)
    assert rs.to_list() == [(0, 40), (41, 50)]


def test_add_bridging_many_ranges():
    """One add spanning several ranges swallows them all."""
    rs = RangeSet([(0, 1), (3, 4), (6, 7), (9, 10), (20, 21)])
    rs.add(1, 9)
    assert rs.to_list() == [(0, 10), (20, 21)]


def test_subtract_splits_and_trims():
    """Subtracting the middle splits a range; subtracting an edge trims it."""
    rs = RangeSet([(0, 100)])
    rs.subtract(40, 60)
    assert rs.to_list() == [(0, 40), (60, 100)]
    rs.subtract(0, 10)
    rs.subtract(90, 200)
    assert rs.to_list() == [(10, 40), (60, 90)]
    rs.subtract(0, 1000)
    assert rs.to_list() == []
    assert not rs


@pytest.mark.parametrize(("start", "stop"), [(5, 5), (7, 3)])
def test_empty_or_reversed_ranges_are_no_ops(start: int, stop: int):
    """Adding or subtracting an empty or reversed range changes nothing."""
    rs = RangeSet([(0, 10)])
    rs.add(start, stop)
    rs.subtract(start, stop)
    assert rs.to_list() == [(0, 10)]
    assert RangeSet([(start, stop)]).to_list() == []


def test_queries_on_a_known_set():
    """Gaps, covers and intersection on a hand-made set give the expected answers."""
    rs = RangeSet([(10, 20), (30, 40)])
    assert list(rs.gaps(0, 50)) == [(0, 10), (20, 30), (40, 50)]
    assert list(rs.gaps(15, 35)) == [(20, 30)]
    assert list(rs.gaps(12, 18)) == []
    assert list(rs.gaps(5, 5)) == []
    assert rs.covers(10, 20)
    assert rs.covers(12, 13)
    assert not rs.covers(10, 21)
    assert not rs.covers(15, 35)
    assert rs.covers(25, 25)  # an empty range is always covered
    assert rs.intersection_size(0, 100) == 20
    assert rs.intersection_size(15, 35) == 10
    assert rs.intersection_size(50, 60) == 0
    assert rs.total() == 20
    assert 10 in rs and 19 in rs and 20 not in rs and 9 not in rs


def test_membership_of_non_integers_is_false():
    """Only integers can be members."""
    rs = RangeSet([(0, 10)])
    assert "1" not in rs
    assert 1.5 not in rs
    assert None not in rs


def test_equality_repr_and_unhashable():
    """Sets compare by content, have a readable repr, and are unhashable since mutable."""
    assert RangeSet([(0, 5), (5, 10)]) == RangeSet([(0, 10)])
    assert RangeSet([(0, 5)]) != RangeSet([(0, 6)])
    assert RangeSet() != [(0, 5)]
    assert repr(RangeSet([(1, 2)])) == "RangeSet([(1, 2)])"
    with pytest.raises(TypeError):
        hash(RangeSet())


def test_iteration_is_over_a_snapshot():
    """Changing the set while iterating it does not disturb the iteration."""
    rs = RangeSet([(0, 1), (2, 3), (4, 5)])
    seen = []
    for a, b in rs:
        seen.append((a, b))
        rs.subtract(0, 10)
    assert seen == [(0, 1), (2, 3), (4, 5)]
    assert rs.to_list() == []


def test_large_byte_offsets():
    """Ranges work at multi-gigabyte offsets, as blob sizes need."""
    gib = 1 << 30
    rs = RangeSet([(0, 40 * gib)])
    rs.subtract(10 * gib, 10 * gib + 1)
    assert rs.total() == 40 * gib - 1
    assert list(rs.gaps(0, 40 * gib)) == [(10 * gib, 10 * gib + 1)]
