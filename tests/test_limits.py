"""Bandwidth limits and quiet hours (pure): sizes, rates, schedule windows and their edges."""

from __future__ import annotations

import pytest

from p2pmodel.core.config import parse_config
from p2pmodel.core.errors import UserError
from p2pmodel.core.limits import (
    DAY,
    Limits,
    LimitsError,
    Rates,
    describe_rate,
    parse_limits,
    parse_rate,
    parse_size,
)

MON, TUE, FRI, SAT, SUN = 0, 1, 4, 5, 6
H = 3600


def test_sizes_and_rates_read_decimal_and_binary_units():
    """ "500GB" is 500e9 bytes, "1.5GiB" 1.5 * 2**30, "20MB/s" 20e6 bytes/s, integers are bytes."""
    assert parse_size("500GB", "x") == 500 * 10**9
    assert parse_size("1.5GiB", "x") == 3 * 2**29
    assert parse_size(1234, "x") == 1234
    assert parse_rate("20MB/s", "x") == 20e6
    assert parse_rate(" 512 KiB/s ", "x") == 512 * 1024
    assert parse_rate(1_000_000, "x") == 1e6
    assert parse_rate("unlimited", "x") is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("20Mb/s", "is not a size"),  # bits are refused, not read as bytes
        ("20MB", "is not a rate"),
        ("0MB/s", "more than 0"),
        (0, "more than 0"),
        (True, "must be a size"),
        ("fast", "is not a rate"),
    ],
)
def test_a_bad_rate_says_what_is_wrong(value, message):
    """Each malformed rate is refused with a message naming the key and the problem."""
    with pytest.raises(LimitsError, match=message) as e:
        parse_rate(value, "[limits] mirror_download")
    assert "[limits] mirror_download" in str(e.value)


def quiet_hours() -> Limits:
    return parse_limits(
        {
            "mirror_download": "20MB/s",
            "lan_upload": "100MB/s",
            "schedule": [
                {"hours": "09:00-18:00", "weekdays": "mon-fri", "mirror_download": "5MB/s"},
                {"hours": "22:00-06:00", "lan_upload": "unlimited", "mirror_download": "1MB/s"},
            ],
        }
    )


def test_office_hours_apply_on_weekdays_only():
    """Inside 09:00-18:00 on a weekday the window's rate applies; at 18:00 and on a Saturday
    the base rates do; a rate the window does not set stays the base one."""
    limits = quiet_hours()
    rates, window = limits.rates_at(TUE, 10 * H)
    assert rates == Rates(5e6, 100e6)
    assert window is not None and window.text == "09:00-18:00 mon-fri"
    assert limits.rates_at(TUE, 9 * H - 1) == (Rates(20e6, 100e6), None)
    assert limits.rates_at(TUE, 18 * H)[0] == Rates(20e6, 100e6)
    assert limits.rates_at(SAT, 10 * H)[0] == Rates(20e6, 100e6)


def test_a_window_past_midnight_belongs_to_the_day_it_starts():
    """22:00-06:00 covers the night into the next morning, and a weekday-bound night window
    that opens on Friday still holds early on Saturday but not early on Monday."""
    limits = quiet_hours()
    assert limits.rates_at(SUN, 23 * H)[0] == Rates(1e6, None)
    assert limits.rates_at(MON, 5 * H)[0] == Rates(1e6, None)
    assert limits.rates_at(MON, 6 * H)[0] == Rates(20e6, 100e6)
    friday_night = parse_limits(
        {"schedule": [{"hours": "22:00-06:00", "weekdays": "fri", "lan_upload": "1MB/s"}]}
    )
    assert friday_night.rates_at(FRI, 23 * H)[0].lan_upload == 1e6
    assert friday_night.rates_at(SAT, 5 * H)[0].lan_upload == 1e6
    assert friday_night.rates_at(SAT, 23 * H)[0].lan_upload is None
    assert friday_night.rates_at(MON, 5 * H)[0].lan_upload is None


def test_the_first_listed_window_wins_where_two_overlap():
    """Overlapping windows: for each rate, the first window that contains the moment and
    sets it decides."""
    limits = parse_limits(
        {
            "schedule": [
                {"hours": "12:00-13:00", "mirror_download": "1MB/s"},
                {"hours": "09:00-18:00", "mirror_download": "5MB/s", "lan_upload": "9MB/s"},
            ]
        }
    )
    assert limits.rates_at(MON, 12.5 * H)[0] == Rates(1e6, 9e6)
    assert limits.rates_at(MON, 14 * H)[0] == Rates(5e6, 9e6)


def test_next_change_is_the_nearest_edge_of_any_window():
    """The agent sleeps until the nearest window edge (seconds included), wrapping to the
    next day, and forever with no schedule."""
    limits = quiet_hours()
    assert limits.next_change(8 * H) == 1 * H
    assert limits.next_change(9 * H) == 9 * H  # at an edge: the next one (18:00)
    assert limits.next_change(23 * H) == 7 * H  # 06:00 tomorrow
    seconds = parse_limits({"schedule": [{"hours": "10:00:30-24:00", "lan_upload": "1MB/s"}]})
    assert seconds.next_change(10 * H) == 30
    assert seconds.next_change(12 * H) == DAY - 12 * H  # 24:00 is midnight
    assert Limits().next_change(0) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"mirror": "1MB/s"}, "unknown key 'mirror'"),
        ({"schedule": {"hours": "09:00-18:00"}}, "array of tables"),
        ({"schedule": [{"hours": "9-18", "lan_upload": "1MB/s"}]}, "time of day"),
        ({"schedule": [{"hours": "09:00-25:00", "lan_upload": "1MB/s"}]}, "00:00 to 24:00"),
        ({"schedule": [{"hours": "09:00-09:00", "lan_upload": "1MB/s"}]}, "same time"),
        ({"schedule": [{"hours": "09:00-18:00"}]}, "sets no rate"),
        ({"schedule": [{"hours": "09:00-18:00", "weekdays": "mo-fr", "lan_upload": "1MB/s"}]},
         "weekdays"),
        ({"schedule": [{"hours": "09:00-18:00", "days": "mon", "lan_upload": "1MB/s"}]},
         "unknown key 'days'"),
    ],
)  # fmt: skip
def test_a_bad_schedule_says_which_entry_is_wrong(raw, message):
    """Each malformed [limits] table is refused with a clear message."""
    with pytest.raises(LimitsError, match=message):
        parse_limits(raw)


def test_weekday_ranges_wrap_around_the_week():
    """ "fri-mon" is Friday to Monday; "sat, sun" lists days."""
    limits = parse_limits(
        {"schedule": [{"hours": "00:00-24:00", "weekdays": "fri-mon", "lan_upload": "1MB/s"}]}
    )
    assert {d for d in range(7) if limits.rates_at(d, 0)[0].lan_upload} == {0, 4, 5, 6}
    weekend = parse_limits(
        {"schedule": [{"hours": "00:00-24:00", "weekdays": "sat, sun", "lan_upload": "1MB/s"}]}
    )
    assert {d for d in range(7) if weekend.rates_at(d, 0)[0].lan_upload} == {5, 6}


def test_config_reads_limits_and_the_store_cap():
    """config.toml's [limits] and store_max reach the Config; a bad one is a config error."""
    config = parse_config(
        {"store_max": "500GB", "limits": {"mirror_download": "20MB/s"}}, {}, "c.toml"
    )
    assert config.store_max == 500 * 10**9
    assert config.limits.base.mirror_download == 20e6
    assert parse_config({}, {}).store_max is None
    with pytest.raises(UserError, match=r"bad config c.toml: store_max: '5 parsecs'"):
        parse_config({"store_max": "5 parsecs"}, {}, "c.toml")
    with pytest.raises(UserError, match=r"bad config c.toml: \[limits\] lan_upload"):
        parse_config({"limits": {"lan_upload": "lots"}}, {}, "c.toml")


def test_rates_are_described_for_people():
    """Status shows rates in decimal units, and unlimited as such."""
    assert describe_rate(None) == "unlimited"
    assert describe_rate(20e6) == "20.0 MB/s"
    assert describe_rate(512) == "512 B/s"
