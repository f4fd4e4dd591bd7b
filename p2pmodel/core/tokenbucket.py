"""A token bucket (pure): how long to wait before using bytes, so traffic keeps to a rate.

The agent has one for all of its mirror traffic (``GetService``); every block a mirror sends is
``reserve``d as it arrives and the worker sleeps the delay it is given before reading on, so TCP
slows the sender down. Tokens may go negative (a block is taken whole and paid for afterwards),
which keeps the long-run rate exact whatever the block sizes. ``rate=None`` is unlimited. Time
is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_BURST = 64 * 1024


@dataclass
class TokenBucket:
    rate: float | None = None  # bytes per second; None: unlimited
    burst: float = 0.0  # the most that may go at once after a quiet spell (0: rate / 10)
    _tokens: float = 0.0
    _last: float | None = None

    def _capacity(self) -> float:
        assert self.rate is not None
        return self.burst or max(self.rate / 10, MIN_BURST)

    def _refill(self, now: float) -> None:
        if self.rate is not None and self._last is not None and now > self._last:
            self._tokens = min(self._capacity(), self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    def reserve(self, nbytes: int, now: float) -> float:
        """Take ``nbytes``; returns the seconds to wait before taking more (0: go on)."""
        if self.rate is None:
            return 0.0
        if self._last is None:
            self._tokens = self._capacity()
        self._refill(now)
        self._tokens -= nbytes
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def set_rate(self, rate: float | None, now: float) -> None:
        """A new rate from ``now`` on (a schedule boundary, a reloaded config)."""
        self._refill(now)
        was_unlimited = self.rate is None
        self.rate = rate if rate is None or rate > 0 else None
        if self.rate is not None:
            # A debt left from before an unlimited spell is not owed (quiet hours that start
            # in the evening must not stall on the last limited block of the morning).
            self._tokens = 0.0 if was_unlimited else min(self._tokens, self._capacity())
