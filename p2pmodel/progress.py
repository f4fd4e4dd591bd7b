"""What a download has done so far, and how it is shown.

``Progress`` is plain data the downloader updates; renderers read it on their own schedule:
a rich live display on a terminal, plain lines (one every few seconds and one per finished
file) when stderr is not a TTY, or nothing.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any


@dataclass
class FileProgress:
    label: str
    size: int
    have: int = 0
    source: str = ""
    state: str = "waiting"  # waiting | fetching | verifying | done | failed | present


@dataclass
class Progress:
    files: dict[str, FileProgress] = field(default_factory=dict)
    from_mirrors: int = 0
    from_peers: int = 0
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=50))

    def add(self, key: str, label: str, size: int, have: int = 0, state: str = "waiting") -> None:
        self.files[key] = FileProgress(label, size, have, state=state)

    def advance(self, key: str, nbytes: int, source: str, *, lan: bool = False) -> None:
        f = self.files[key]
        f.have += nbytes
        f.source = source
        f.state = "fetching"
        if lan:
            self.from_peers += nbytes
        else:
            self.from_mirrors += nbytes

    def set_state(self, key: str, state: str, have: int | None = None) -> None:
        f = self.files[key]
        f.state = state
        if have is not None:
            f.have = have

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files.values())

    @property
    def have(self) -> int:
        return sum(f.have for f in self.files.values())

    def rate(self, now: float | None = None) -> float:
        """Recent bytes/s from mirrors and peers (over the last few seconds of samples)."""
        now = time.monotonic() if now is None else now
        total = self.from_mirrors + self.from_peers
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[0][0] > 5.0:
            self._samples.popleft()
        t0, b0 = self._samples[0]
        return (total - b0) / (now - t0) if now > t0 else 0.0


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def eta(remaining: int, rate: float) -> str:
    if rate <= 0:
        return "--:--"
    s = int(remaining / rate)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class PlainRenderer:
    """Lines for logs and pipes: a summary every ``interval`` seconds and one line per file."""

    def __init__(self, progress: Progress, stream: IO[str] | None = None, interval: float = 5.0):
        self.p = progress
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0
        self._reported: set[str] = set()

    def update(self, final: bool = False) -> None:
        now = time.monotonic()
        for key, f in self.p.files.items():
            if f.state in ("done", "failed") and key not in self._reported:
                self._reported.add(key)
                print(f"{f.state}: {f.label} ({human(f.size)})", file=self.stream, flush=True)
        if final or now - self._last >= self.interval:
            self._last = now
            rate = self.p.rate(now)
            print(
                f"progress: {human(self.p.have)} / {human(self.p.total)} "
                f"at {human(rate)}/s, ETA {eta(self.p.total - self.p.have, rate)}",
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

        rate = self.p.rate()
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
