"""The dashboard's bytes-per-second timeline (``p2pmodel.core.timeline``), on fake time."""

from __future__ import annotations

from p2pmodel.core.timeline import Timeline


def test_rates_are_the_bytes_between_samples_over_the_time_between() -> None:
    """Each point is the rate of each source since the previous sample."""
    t = Timeline(bucket=5.0, span=60.0)
    t.record(0.0, {"mirror": 0, "lan": 0})
    t.record(5.0, {"mirror": 500, "lan": 0})
    t.record(10.0, {"mirror": 500, "lan": 2000})
    assert t.series() == [
        {"t": 5.0, "mirror": 100.0, "lan": 0.0},
        {"t": 10.0, "mirror": 0.0, "lan": 400.0},
    ]


def test_old_points_fall_off_and_a_late_sample_averages() -> None:
    """Only the last ``span`` seconds are kept; a sample taken late averages over the gap."""
    t = Timeline(bucket=5.0, span=20.0)
    t.record(0.0, {"mirror": 0})
    for i in range(1, 10):
        t.record(5.0 * i, {"mirror": 100 * i})
    assert [p["t"] for p in t.series()] == [25.0, 30.0, 35.0, 40.0, 45.0]
    t.record(65.0, {"mirror": 900 + 2000})
    assert t.series()[-1] == {"t": 65.0, "mirror": 100.0, "lan": 0.0}
    assert t.next_sample(66.0) == 70.0
