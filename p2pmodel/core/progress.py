"""What a get has done so far (pure): plain data the download updates and front ends read
(the terminal renderers in ``adapters.terminal``, the control socket's progress frames)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class FileProgress:
    label: str
    size: int
    have: int = 0
    source: str = ""
    state: str = "waiting"  # waiting | fetching | verifying | done | failed | present
    hubs: dict[str, int] = field(default_factory=dict)  # hub (hf, ms) -> bytes its URLs gave


@dataclass
class Progress:
    files: dict[str, FileProgress] = field(default_factory=dict)
    from_mirrors: int = 0
    from_peers: int = 0
    from_hubs: dict[str, int] = field(default_factory=dict)  # hub -> bytes (part of mirrors')
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=50))

    def add(self, key: str, label: str, size: int, have: int = 0, state: str = "waiting") -> None:
        self.files[key] = FileProgress(label, size, have, state=state)

    def advance(
        self, key: str, nbytes: int, source: str, *, lan: bool = False, hub: str = ""
    ) -> None:
        """``nbytes`` more of a file arrived from ``source`` (a mirror, or a peer when
        ``lan``); ``hub``: the hub whose file URL (or a mirror of it) gave them."""
        f = self.files[key]
        f.have += nbytes
        f.source = source
        f.state = "fetching"
        if lan:
            self.from_peers += nbytes
        else:
            self.from_mirrors += nbytes
        if hub:
            f.hubs[hub] = f.hubs.get(hub, 0) + nbytes
            self.from_hubs[hub] = self.from_hubs.get(hub, 0) + nbytes

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

    def rate(self, now: float) -> float:
        """Recent bytes/s from mirrors and peers (over the last few seconds of samples)."""
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
