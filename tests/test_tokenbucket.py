"""The agent-wide rate limit (``p2pmodel.core.tokenbucket``): exact long-run rates, fake time."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from p2pmodel.core.tokenbucket import TokenBucket


def simulate(bucket: TokenBucket, blocks: list[int], start: float = 0.0) -> float:
    """Feed blocks as fast as the bucket allows; returns the time the last one was taken."""
    now = start
    for n in blocks:
        now += bucket.reserve(n, now)
    return now


def test_unlimited_never_waits() -> None:
    """With no rate, every reservation is free."""
    bucket = TokenBucket()
    assert all(bucket.reserve(10**9, t) == 0.0 for t in range(10))


def test_long_run_rate_is_the_configured_rate() -> None:
    """100 MB through a 10 MB/s bucket in 64 KiB blocks takes 10 s (less the first burst)."""
    bucket = TokenBucket(rate=10_000_000)
    took = simulate(bucket, [65536] * (100_000_000 // 65536))
    assert 9.8 <= took <= 10.0


@given(st.lists(st.integers(1, 4 << 20), min_size=50, max_size=300), st.floats(1e5, 1e9))
def test_never_faster_than_the_rate_plus_one_burst(blocks: list[int], rate: float) -> None:
    """Whatever the block sizes, bytes taken by time t never exceed burst + rate * t."""
    bucket = TokenBucket(rate=rate)
    now, taken = 0.0, 0
    for n in blocks:
        taken += n
        now += bucket.reserve(n, now)
        assert taken <= max(rate / 10, 65536) + rate * now + n + 1e-6 * taken


def test_idle_time_earns_at_most_one_burst() -> None:
    """After a long quiet spell only one burst goes without waiting."""
    bucket = TokenBucket(rate=1_000_000, burst=200_000)
    bucket.reserve(0, 0.0)
    assert bucket.reserve(200_000, 100.0) == 0.0
    assert bucket.reserve(100_000, 100.0) == 0.1


def test_a_new_rate_applies_from_now() -> None:
    """Lowering the rate mid-transfer slows what follows; lifting it removes the wait."""
    bucket = TokenBucket(rate=1_000_000)
    simulate(bucket, [100_000] * 20)
    bucket.set_rate(100_000, 2.0)
    assert 9.0 <= simulate(bucket, [100_000] * 10, start=2.0) - 2.0 <= 10.0
    bucket.set_rate(None, 3.0)
    assert bucket.reserve(10**9, 3.0) == 0.0


def test_random_schedule_keeps_the_average() -> None:
    """Blocks of random sizes at random moments average out at the rate."""
    rng = random.Random(0)
    bucket = TokenBucket(rate=5_000_000)
    now, total = 0.0, 0
    for _ in range(5000):
        n = rng.randint(1, 1 << 20)
        total += n
        now += rng.random() * 0.01
        now += bucket.reserve(n, now)
    assert abs(total / now - 5_000_000) / 5_000_000 < 0.02


def test_a_debt_from_before_an_unlimited_spell_is_forgotten() -> None:
    """Limited, unlimited for a while, limited again: the first block after that waits only
    for itself, not for what was owed before the unlimited spell."""
    bucket = TokenBucket(rate=1000.0)
    bucket.reserve(10_000, 0.0)  # deep in debt: ~10 s owed at 1000 B/s
    bucket.set_rate(None, 0.0)
    assert bucket.reserve(10**6, 1.0) == 0.0
    bucket.set_rate(1000.0, 2.0)
    assert bucket.reserve(500, 2.0) == 0.5
