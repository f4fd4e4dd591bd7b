"""Bytes per second over the last hour, by source (pure): what the dashboard plots.

The agent samples its running totals (``record(now, totals)``) at the end of each bucket; the
timeline keeps the rate of each source per bucket for ``span`` seconds, dropping older ones.
A sample that comes late (the loop was busy) spreads over the buckets it covers, so the area
under the plot is the bytes that came. Time is an argument.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Timeline:
    bucket: float = 5.0
    span: float = 3600.0
    sources: tuple[str, ...] = ("mirror", "lan")
    _last: tuple[float, dict[str, int]] | None = None
    _points: deque[tuple[float, dict[str, float]]] = field(default_factory=deque)

    def record(self, now: float, totals: dict[str, int]) -> None:
        """The running byte totals per source at ``now``."""
        if self._last is not None:
            then, before = self._last
            elapsed = now - then
            if elapsed <= 0:
                return
            rates = {s: max(0, totals.get(s, 0) - before.get(s, 0)) / elapsed for s in self.sources}
            self._points.append((now, rates))
        self._last = (now, dict(totals))
        while self._points and self._points[0][0] < now - self.span:
            self._points.popleft()

    def next_sample(self, now: float) -> float:
        """When to sample next: the end of the current bucket."""
        return (now // self.bucket + 1) * self.bucket

    def series(self) -> list[dict[str, float]]:
        """Points ``{"t": time, source: bytes/s, ...}``, oldest first."""
        return [{"t": t, **rates} for t, rates in self._points]
