"""A set of half-open integer intervals ``[start, stop)``, kept sorted and merged.

Used for byte-range bookkeeping: what of a blob is on disk, what a mirror served, what is in
flight. Small and pure; sizes stay small because adjacent ranges merge.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class RangeSet:
    __slots__ = ("_r",)
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._r: list[tuple[int, int]] = []
        for start, stop in ranges:
            self.add(start, stop)

    def add(self, start: int, stop: int) -> None:
        if stop <= start:
            return
        r = self._r
        # First range whose stop >= start (could touch or overlap).
        i = bisect.bisect_left(r, start, key=lambda x: x[1])
        j = i
        while j < len(r) and r[j][0] <= stop:
            start = min(start, r[j][0])
            stop = max(stop, r[j][1])
            j += 1
        r[i:j] = [(start, stop)]

    def subtract(self, start: int, stop: int) -> None:
        if stop <= start:
            return
        out: list[tuple[int, int]] = []
        for a, b in self._r:
            if b <= start or a >= stop:
                out.append((a, b))
                continue
            if a < start:
                out.append((a, start))
            if b > stop:
                out.append((stop, b))
        self._r = out

    def __contains__(self, pos: object) -> bool:
        if not isinstance(pos, int):
            return False
        i = bisect.bisect_right(self._r, pos, key=lambda x: x[0]) - 1
        return i >= 0 and self._r[i][0] <= pos < self._r[i][1]

    def covers(self, start: int, stop: int) -> bool:
        """True when all of ``[start, stop)`` is in the set."""
        if stop <= start:
            return True
        i = bisect.bisect_right(self._r, start, key=lambda x: x[0]) - 1
        return i >= 0 and self._r[i][0] <= start and self._r[i][1] >= stop

    def gaps(self, start: int, stop: int) -> Iterator[tuple[int, int]]:
        """The parts of ``[start, stop)`` that are not in the set, in order."""
        pos = start
        for a, b in self._r:
            if b <= pos:
                continue
            if a >= stop:
                break
            if a > pos:
                yield (pos, min(a, stop))
            pos = max(pos, b)
            if pos >= stop:
                return
        if pos < stop:
            yield (pos, stop)

    def total(self) -> int:
        return sum(b - a for a, b in self._r)

    def intersection_size(self, start: int, stop: int) -> int:
        return sum(max(0, min(b, stop) - max(a, start)) for a, b in self._r)

    def copy(self) -> RangeSet:
        new = RangeSet()
        new._r = list(self._r)
        return new

    def to_list(self) -> list[tuple[int, int]]:
        return list(self._r)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(self._r))

    def __len__(self) -> int:
        return len(self._r)

    def __bool__(self) -> bool:
        return bool(self._r)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self._r == other._r

    def __repr__(self) -> str:
        return f"RangeSet({self._r!r})"
