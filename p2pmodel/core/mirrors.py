"""Live ranking of mirrors: which one should the next connection use?

Theory of operation. Every candidate URL belongs to a mirror, keyed by ``scheme://host:port``.
The board keeps, per mirror, a throughput estimate per connection (EWMA of finished transfers),
its active connections, consecutive failures with a backoff deadline (``Retry-After`` wins), and
per-blob bans (the mirror lacks the file, or served bytes that failed the digest).

Choosing follows happy eyeballs: untried mirrors are tried in the configured order, and
connections pile on the first one until it is unusable or has kept a connection waiting for its
first byte longer than ``race_delay``; then on the next. Every other untried mirror gets a single
exploring connection from the start (once the first one has its first connection), so that the
rates which decide where the rest go are measured in the first round: a rate is learnt only when
a connection ends, and a fast mirror that is second in the order would otherwise be tried only
after the slow first one had taken a second round of chunks on every connection (the fetch plan
keeps these first connections short). Once mirrors have delivered bytes, new connections go to
the one with the best measured rate (the winner is kept), and an untried mirror that appears
later (another blob's candidate) gets its exploring connection then. An exploring connection
that failed before a rate was measured does not count (the mirror is explored again after its
backoff), and a new get explores every mirror still unmeasured. A mirror that fails
``max_failures`` times in a row without a success in between is dead for this run. Time is
always an argument.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import urlsplit


def mirror_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Failure(Enum):
    """What went wrong with one request, as the IO adapter classifies it."""

    BUSY = "busy"  # 429 / 503: the mirror asks us to come back later
    SERVER = "server"  # other 5xx
    TIMEOUT = "timeout"
    CONNECT = "connect"  # refused, reset, DNS
    SHORT = "short"  # body ended early
    PROTOCOL = "protocol"  # malformed answer, ignored Range, wrong length
    MISSING = "missing"  # 404/410/403: this mirror does not have this file


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks us to wait (seconds, or an HTTP date compared
    with ``now``, the wall clock in seconds since the epoch); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - now)


TRANSIENT = {Failure.BUSY, Failure.SERVER, Failure.TIMEOUT, Failure.CONNECT, Failure.SHORT}


@dataclass
class MirrorStats:
    key: str
    prior: int  # position in the configured order
    rate: float | None = None  # bytes/s per connection, EWMA
    active: int = 0
    waiting_since: float | None = None  # oldest connection still waiting for a first byte
    delivered: int = 0
    failures: int = 0
    consecutive: int = 0
    backoff_until: float = 0.0
    last_error: str = ""
    explored: bool = False
    dead: bool = False
    last_counted_failure: float = float("-inf")
    bans: dict[str, str] = field(default_factory=dict)  # blob -> reason
    errors: dict[str, int] = field(default_factory=dict)  # failure kind -> count, ever


class MirrorBoard:
    def __init__(
        self,
        *,
        race_delay: float = 0.3,
        max_failures: int = 8,
        base_backoff: float = 0.1,
        max_backoff: float = 30.0,
        per_mirror_cap: int = 64,
        ewma: float = 0.3,
    ) -> None:
        self.race_delay = race_delay
        self.max_failures = max_failures
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.per_mirror_cap = per_mirror_cap
        self.ewma = ewma
        self._m: dict[str, MirrorStats] = {}

    # -- registration and reading --------------------------------------------------------------

    def add(self, keys: Iterable[str]) -> None:
        for key in keys:
            if key not in self._m:
                self._m[key] = MirrorStats(key, prior=len(self._m))

    def stats(self, key: str) -> MirrorStats:
        return self._m[key]

    def all_stats(self) -> list[MirrorStats]:
        return list(self._m.values())

    def snapshot(self, now: float) -> dict[str, dict[str, object]]:
        """Plain data per mirror for ``p2pmodel mirrors``: measured rate (per connection),
        bytes delivered, errors, and its state now."""
        out: dict[str, dict[str, object]] = {}
        for m in self._m.values():
            if m.dead:
                state = "given up"
            elif m.backoff_until > now:
                state = "backing off"
            elif m.rate is None and not m.delivered:
                state = "untried" if not m.failures else "failing"
            else:
                state = "ok"
            out[m.key] = {
                "state": state,
                "rate": m.rate,
                "delivered": m.delivered,
                "active": m.active,
                "errors": m.failures,
                "last_error": m.last_error,
                "backoff_for": max(0.0, m.backoff_until - now),
                "banned_for": sorted(m.bans),
            }
        return out

    def revive(self, now: float) -> None:
        """A new get starts (the board is the agent's, kept across gets): mirrors given up on
        get another chance, and bans for missing files are lifted (a mirror catches up);
        mirrors never measured are explored again. Rates and bans for bad bytes stay."""
        for m in self._m.values():
            if m.rate is None:
                m.explored = False
            if m.dead:
                m.dead = False
                m.consecutive = 0
                m.backoff_until = min(m.backoff_until, now)
            m.bans = {b: why for b, why in m.bans.items() if "mismatch" in why}

    def usable_for(self, key: str, blob: str) -> bool:
        m = self._m[key]
        return not m.dead and blob not in m.bans

    def bad_bytes(self, keys: Sequence[str], blob: str) -> str | None:
        """Why none of these candidates is asked for this blob again: each one the board knows
        served it with a wrong digest before (a ban that outlives gets). None if any is
        unknown or usable."""
        if not keys or any(k not in self._m or self.usable_for(k, blob) for k in keys):
            return None
        reasons = [self._m[k].bans.get(blob, "") for k in keys]
        if not all("mismatch" in r for r in reasons):
            return None
        return "; ".join(f"{k}: {r}" for k, r in zip(keys, reasons, strict=True))

    def hopeless(self, keys: Sequence[str], blob: str) -> bool:
        """True when no candidate can ever serve this blob again in this run."""
        return not any(self.usable_for(k, blob) for k in keys)

    def next_change(self, keys: Sequence[str], blob: str, now: float) -> float | None:
        """When a candidate leaves backoff or a race timer fires next (None: nothing pending)."""
        times = []
        for k in keys:
            m = self._m[k]
            if not self.usable_for(k, blob):
                continue
            if m.backoff_until > now:
                times.append(m.backoff_until)
            if m.waiting_since is not None:
                times.append(m.waiting_since + self.race_delay)
        future = [t for t in times if t > now]
        return min(future) if future else None

    # -- choosing ------------------------------------------------------------------------------

    def choose(self, keys: Sequence[str], blob: str, now: float) -> str | None:
        """The mirror for a new connection for ``blob`` among ``keys``, or None to wait."""
        ready = [
            self._m[k]
            for k in keys
            if self.usable_for(k, blob)
            and self._m[k].backoff_until <= now
            and self._m[k].active < self.per_mirror_cap
        ]
        if not ready:
            return None
        proven = [m for m in ready if m.rate is not None]
        untried = sorted((m for m in ready if m.rate is None), key=lambda m: m.prior)
        if proven:
            best = max(proven, key=lambda m: (m.rate or 0.0, -m.prior))
            for m in untried:
                if not m.explored and m.active == 0:
                    m.explored = True
                    return m.key
            return best.key
        # No rates yet. Once the race has begun (a connection is open), every untried mirror
        # gets its one exploring connection at once, not after the first chunks ended.
        if any(m.active for m in untried):
            for m in untried:
                if not m.explored and m.active == 0:
                    m.explored = True
                    return m.key
        # Happy eyeballs among untried mirrors, in configured order.
        for m in untried:
            if m.waiting_since is None or m.active == 0:
                return m.key
            if now - m.waiting_since < self.race_delay:
                return m.key  # still within its moment: pile on the current favourite
        return untried[0].key if untried else None

    # -- outcomes ------------------------------------------------------------------------------

    def started(self, key: str, now: float) -> None:
        m = self._m[key]
        m.active += 1
        if m.waiting_since is None and m.rate is None:
            m.waiting_since = now

    def first_byte(self, key: str) -> None:
        m = self._m[key]
        m.waiting_since = None
        m.consecutive = 0

    def finished(self, key: str, nbytes: int, seconds: float) -> None:
        """A connection ended normally after ``nbytes`` in ``seconds``."""
        m = self._m[key]
        m.active = max(0, m.active - 1)
        self._sample(m, nbytes, seconds)

    def failed(
        self,
        key: str,
        kind: Failure,
        now: float,
        *,
        blob: str | None = None,
        nbytes: int = 0,
        seconds: float = 0.0,
        retry_after: float | None = None,
        started_at: float | None = None,
        detail: str = "",
    ) -> None:
        """A connection ended in ``kind``. Connections opened together that fail together count
        as one failure round: only a request started after the last counted failure counts."""
        m = self._m[key]
        m.active = max(0, m.active - 1)
        if m.active == 0:
            m.waiting_since = None
        m.failures += 1
        if m.rate is None:
            m.explored = False  # the exploring connection measured nothing: explore again
        m.errors[kind.value] = m.errors.get(kind.value, 0) + 1
        m.last_error = detail or kind.value
        self._sample(m, nbytes, seconds)
        if kind is Failure.MISSING or (kind is Failure.PROTOCOL and blob is not None):
            if blob is not None:
                m.bans[blob] = m.last_error
            return
        if started_at is None or started_at >= m.last_counted_failure:
            m.consecutive += 1
            m.last_counted_failure = now
        if m.consecutive >= self.max_failures:
            m.dead = True
        delay = min(self.max_backoff, self.base_backoff * 2 ** (m.consecutive - 1))
        if retry_after is not None:
            delay = min(max(retry_after, 0.0), 300.0)
        m.backoff_until = max(m.backoff_until, now + delay)

    def ban(self, key: str, blob: str, reason: str) -> None:
        self._m[key].bans[blob] = reason

    def _sample(self, m: MirrorStats, nbytes: int, seconds: float) -> None:
        if nbytes <= 0:
            return
        m.delivered += nbytes
        m.consecutive = 0
        if seconds <= 0 or nbytes < 64 * 1024:
            return
        sample = nbytes / seconds
        m.rate = sample if m.rate is None else (1 - self.ewma) * m.rate + self.ewma * sample
