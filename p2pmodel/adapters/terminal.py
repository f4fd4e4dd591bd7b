"""How a get's ``Progress`` is shown: a rich live display on a terminal, plain lines (one every
few seconds while bytes come in, and one per finished file) when stderr is not a TTY, or
nothing."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from ..core.progress import Progress, eta, human


class PlainRenderer:
    """Lines for logs and pipes: one per finished file, and a summary at most every
    ``interval`` seconds, only when it says something the last one did not (bytes or files
    moved on, as printed) and never while there is nothing to fetch. A get that waits (a mirror
    that does not answer, the retries before its error) prints nothing; its error says why.
    Time comes from ``clock``, or ``now`` when the caller passes it (tests)."""

    def __init__(
        self,
        progress: Progress,
        stream: IO[str] | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.p = progress
        self.stream = stream or sys.stderr
        self.interval = interval
        self.clock = clock
        self._last = -math.inf  # when the last summary was printed
        self._said: tuple[str, str, int] | None = None  # what it said
        self._reported: set[str] = set()

    def update(self, final: bool = False, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for key, f in self.p.files.items():
            if f.state in ("done", "failed") and key not in self._reported:
                self._reported.add(key)
                print(f"{f.state}: {f.label} ({human(f.size)})", file=self.stream, flush=True)
        total = self.p.total
        if total == 0 or not (final or now - self._last >= self.interval):
            return
        have = self.p.have
        said = (human(have), human(total), len(self._reported))
        if said == self._said:
            return
        self._last, self._said = now, said
        rate = self.p.rate(now)
        print(
            f"progress: {said[0]} / {said[1]} at {human(rate)}/s, ETA {eta(total - have, rate)}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        self.update(final=True)


class RichRenderer:
    """A live display: overall bar, then a line per file in flight (bytes, rate, ETA, source)."""

    def __init__(self, progress: Progress) -> None:
        from rich.console import Console
        from rich.live import Live

        self.p = progress
        self.console = Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=8, transient=False)
        self.live.start()

    def _table(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        rate = self.p.rate(time.monotonic())
        t = Table.grid(padding=(0, 1))
        t.add_row(
            "[bold]total[/]",
            ProgressBar(total=max(self.p.total, 1), completed=self.p.have, width=30),
            f"{human(self.p.have)}/{human(self.p.total)}",
            f"{human(rate)}/s",
            f"ETA {eta(self.p.total - self.p.have, rate)}",
            "",
        )
        shown = [f for f in self.p.files.values() if f.state in ("fetching", "verifying")]
        for f in shown[:12]:
            t.add_row(
                f.label if len(f.label) <= 48 else "…" + f.label[-47:],
                ProgressBar(total=max(f.size, 1), completed=f.have, width=30),
                f"{human(f.have)}/{human(f.size)}",
                f.state,
                "",
                f.source,
            )
        if len(shown) > 12:
            t.add_row(f"... and {len(shown) - 12} more", "", "", "", "", "")
        return t

    def update(self, final: bool = False) -> None:
        self.live.update(self._table(), refresh=final)

    def close(self) -> None:
        self.update(final=True)
        self.live.stop()


class NullRenderer:
    def update(self, final: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


def make_renderer(progress: Progress, mode: str) -> PlainRenderer | RichRenderer | NullRenderer:
    """``mode``: "auto" (rich on a TTY, else plain), "rich", "plain" or "none"."""
    if mode == "auto":
        mode = "rich" if sys.stderr.isatty() else "plain"
    if mode == "rich":
        return RichRenderer(progress)
    if mode == "plain":
        return PlainRenderer(progress)
    return NullRenderer()
