"""Bandwidth limits and quiet hours (pure): the ``[limits]`` table, and what it allows when.

Theory of operation. ``Limits`` holds the base rates (``mirror_download``: all of an agent's
mirror traffic; ``lan_upload``: what it serves to peers) and a schedule of windows
(``[[limits.schedule]]``: ``hours`` in local time, optional ``weekdays``, and the rates that
apply inside). ``rates_at(weekday, second)`` answers with the rates in force at a local moment:
for each rate, the first listed window that contains the moment and sets it wins, else the
base. A window whose hours wrap past midnight (``22:00-06:00``) belongs to the weekday it
starts on. ``next_change(second)`` says how long until any window may open or close, so the
agent sleeps until then; a boundary that changes nothing is harmless. The local weekday and
second of the day are arguments (the agent reads the clock), so every rule is tested with
plain numbers. ``None`` is unlimited throughout.

Sizes and rates are written like ``"20MB/s"`` and ``"500GB"``: decimal units (kB, MB, GB, TB)
and binary ones (KiB, MiB, GiB, TiB), or a plain integer of bytes. Bits are not accepted, so
``Mb`` is an error rather than a silent factor of eight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DAY = 86400
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
UNITS = {
    "": 1,
    "B": 1,
    "kB": 10**3,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
RATE_KEYS = ("mirror_download", "lan_upload")
_AMOUNT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*\Z")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?\Z")


class LimitsError(ValueError):
    """A size, rate or schedule that cannot be read; the message says what is wrong."""


def parse_size(value: object, what: str) -> int:
    """Bytes from ``"500GB"``, ``"1.5TiB"`` or an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise LimitsError(f"{what} must be more than 0")
        return value
    if not isinstance(value, str):
        raise LimitsError(f'{what} must be a size like "500GB" or an integer of bytes')
    m = _AMOUNT.match(value)
    if m is None or m.group(2) not in UNITS:
        raise LimitsError(
            f"{what}: {value!r} is not a size (a number and one of "
            f'{", ".join(u for u in UNITS if u)}, e.g. "500GB")'
        )
    n = int(float(m.group(1)) * UNITS[m.group(2)])
    if n <= 0:
        raise LimitsError(f"{what} must be more than 0")
    return n


def parse_rate(value: object, what: str) -> float | None:
    """Bytes per second from ``"20MB/s"`` or an integer; ``"unlimited"`` is None."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "unlimited":
            return None
        if not text.endswith("/s"):
            raise LimitsError(f'{what}: {value!r} is not a rate (e.g. "20MB/s" or "unlimited")')
        value = text[:-2]
    return float(parse_size(value, what))


def _clock(text: str, what: str, *, end: bool) -> int:
    m = _CLOCK.match(text.strip())
    if m is None:
        raise LimitsError(f"{what}: {text!r} is not a time of day (HH:MM)")
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    seconds = h * 3600 + mi * 60 + s
    if mi > 59 or s > 59 or seconds > DAY or (seconds == DAY and not end):
        raise LimitsError(f"{what}: {text!r} is not a time of day (00:00 to 24:00)")
    return seconds


def _weekdays(text: str, what: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first not in WEEKDAYS or (last and last not in WEEKDAYS):
            raise LimitsError(
                f'{what}: {text!r} is not a list of weekdays (like "mon-fri" or "sat,sun")'
            )
        a = WEEKDAYS.index(first)
        b = WEEKDAYS.index(last) if last else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))  # "fri-mon" wraps
    return frozenset(days)


@dataclass(frozen=True)
class Rates:
    """Bytes per second; None is unlimited."""

    mirror_download: float | None = None
    lan_upload: float | None = None


@dataclass(frozen=True)
class Window:
    """One ``[[limits.schedule]]`` entry: from ``start`` to ``stop`` (seconds of the local day;
    ``stop < start`` wraps past midnight) on ``weekdays`` (0 = Monday), these rates apply."""

    start: int
    stop: int
    weekdays: frozenset[int]
    rates: tuple[tuple[str, float | None], ...]  # the rates it sets, by RATE_KEYS name
    text: str

    def contains(self, weekday: int, second: float) -> bool:
        if self.start < self.stop:
            return weekday in self.weekdays and self.start <= second < self.stop
        # Past midnight: the night belongs to the weekday the window opened on.
        return (weekday in self.weekdays and second >= self.start) or (
            (weekday - 1) % 7 in self.weekdays and second < self.stop
        )


@dataclass(frozen=True)
class Limits:
    base: Rates = Rates()
    schedule: tuple[Window, ...] = ()

    def rates_at(self, weekday: int, second: float) -> tuple[Rates, Window | None]:
        """The rates in force at this local moment, and the window that set any of them."""
        chosen: dict[str, float | None] = {}
        first: Window | None = None
        for w in self.schedule:
            if not w.contains(weekday, second):
                continue
            for key, rate in w.rates:
                if key not in chosen:
                    chosen[key] = rate
                    first = first or w
        base = self.base
        return (
            Rates(
                chosen.get("mirror_download", base.mirror_download),
                chosen.get("lan_upload", base.lan_upload),
            ),
            first,
        )

    def next_change(self, second: float) -> float | None:
        """Seconds from this local moment until a window may open or close (None: never)."""
        gaps = [
            (edge - second) % DAY or DAY for w in self.schedule for edge in (w.start, w.stop % DAY)
        ]
        return min(gaps, default=None)


def parse_limits(raw: object) -> Limits:
    """A ``Limits`` from the parsed ``[limits]`` table; ``LimitsError`` says what is wrong."""
    if not isinstance(raw, dict):
        raise LimitsError("[limits] must be a table")
    extra = sorted(set(raw) - {*RATE_KEYS, "schedule"})
    if extra:
        raise LimitsError(
            f"[limits]: unknown key {extra[0]!r} (known: {', '.join(RATE_KEYS)}, schedule)"
        )
    base = Rates(*(parse_rate(raw[k], f"[limits] {k}") if k in raw else None for k in RATE_KEYS))
    entries = raw.get("schedule", [])
    if not isinstance(entries, list):
        raise LimitsError("[[limits.schedule]] must be an array of tables")
    windows = []
    for i, entry in enumerate(entries):
        what = f"[[limits.schedule]] #{i + 1}"
        if not isinstance(entry, dict):
            raise LimitsError(f"{what} must be a table")
        extra = sorted(set(entry) - {*RATE_KEYS, "hours", "weekdays"})
        if extra:
            raise LimitsError(
                f"{what}: unknown key {extra[0]!r} (known: hours, weekdays, {', '.join(RATE_KEYS)})"
            )
        hours = entry.get("hours")
        if not isinstance(hours, str) or hours.count("-") != 1:
            raise LimitsError(f'{what}: hours must be a local time range like "09:00-18:00"')
        a, b = hours.split("-")
        start = _clock(a, f"{what} hours", end=False)
        stop = _clock(b, f"{what} hours", end=True)
        if start == stop:
            raise LimitsError(f"{what}: hours {hours!r} start and end at the same time")
        days_text = entry.get("weekdays", "mon-sun")
        if not isinstance(days_text, str):
            raise LimitsError(f'{what}: weekdays must be a string like "mon-fri"')
        rates = tuple((k, parse_rate(entry[k], f"{what} {k}")) for k in RATE_KEYS if k in entry)
        if not rates:
            raise LimitsError(f"{what} sets no rate ({' or '.join(RATE_KEYS)})")
        text = hours if "weekdays" not in entry else f"{hours} {days_text}"
        windows.append(Window(start, stop, _weekdays(days_text, what), rates, text))
    return Limits(base, tuple(windows))


def describe_rate(rate: float | None) -> str:
    """``"20.0 MB/s"`` or ``"unlimited"`` (for status and logs)."""
    if rate is None:
        return "unlimited"
    n, unit = float(rate), "B"
    for bigger in ("kB", "MB", "GB"):
        if n < 1000:
            break
        n, unit = n / 1000, bigger
    return f"{n:.0f} {unit}/s" if unit == "B" else f"{n:.1f} {unit}/s"
