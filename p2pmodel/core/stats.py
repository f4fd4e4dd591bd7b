"""The statistics records the agent's services keep (pure data).

One record per service, updated where the event happens (bytes are counted as they arrive,
not when a get ends). ``status --json`` renders them; so will the dashboard and ``/metrics``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

RECENT = 200
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)


@dataclass
class Histogram:
    """Counts of observations at most each bound (cumulative, as Prometheus wants them)."""

    bounds: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1


@dataclass
class GetStats:
    """``GetService``: gets run and bytes fetched from mirrors, by mirror."""

    started: int = 0
    completed: int = 0
    failed: int = 0
    running: int = 0
    from_mirrors: dict[str, int] = field(default_factory=dict)  # mirror key -> bytes
    from_hubs: dict[str, int] = field(default_factory=dict)  # hub (hf, ms) -> bytes of those
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))
    failures: dict[str, int] = field(default_factory=dict)  # error class -> count
    blob_fetches: int = 0  # single blobs fetched for the HF endpoint's readers
    duration: Histogram = field(default_factory=Histogram)  # seconds of completed gets
    digest_failures: dict[str, int] = field(default_factory=dict)  # where bad bytes were found

    def digest_failure(self, source: str) -> None:
        self.digest_failures[source] = self.digest_failures.get(source, 0) + 1

    def mirror_bytes(self, mirror: str, nbytes: int) -> None:
        self.from_mirrors[mirror] = self.from_mirrors.get(mirror, 0) + nbytes

    def hub_bytes(self, hub: str, nbytes: int) -> None:
        self.from_hubs[hub] = self.from_hubs.get(hub, 0) + nbytes

    @property
    def from_mirrors_total(self) -> int:
        return sum(self.from_mirrors.values())


@dataclass
class LanStats:
    """Bytes and blobs that came from peers (``SwarmService``: whole blobs; ``SharingService``:
    units of blobs being shared out)."""

    from_peers: int = 0
    blobs: int = 0
    units: int = 0
    failures: int = 0
    digest_failures: int = 0  # whole blobs from peers that failed their digest

    def arrived(self, nbytes: int) -> None:
        self.from_peers += nbytes


@dataclass
class LinkStats:
    """``PeerLink``: connections and messages to and from peers."""

    connections_opened: int = 0
    connect_failures: int = 0
    requests: int = 0
    request_failures: int = 0
    messages_sent: int = 0  # through the ordered outboxes
    messages_dropped: int = 0
    messages_received: int = 0  # every message a peer sent us: hellos, requests and answers
    served: int = 0  # requests answered for peers
    refused: int = 0  # connections closed at once: too many from one address, or a bad hello
    handshake_failures: int = 0  # TLS handshakes that failed (no office certificate)
    addresses_refuted: int = 0  # announced or known addresses where another agent answered
    pex_sent: int = 0  # peer-exchange messages: sent, taken, dropped (over the rate bound)
    pex_received: int = 0
    pex_dropped: int = 0


@dataclass
class SharingStats:
    """``SharingService``: units of shared-out blobs, by where they came from."""

    units_from_mirrors: int = 0
    units_from_peers: int = 0
    units_resumed: int = 0
    foreign_claims: int = 0  # claims answered as arbiter of units of blobs we do not share
    infos_announced: int = 0  # units from peers whose announcement carried the torrent
    messages: int = 0  # claims, renewals, releases and announcements, one per peer


@dataclass
class EndpointStats:
    """``HfEndpoint``: requests refused before anything was looked up, and questions upstream
    was not asked again."""

    misdirected: int = 0  # 421: a Host that is not this agent (DNS rebinding)
    cross_site: int = 0  # 403: sent by a page of another site
    bad_requests: int = 0  # 400: a path that can name nothing
    misses_remembered: int = 0  # "not found" answered from the recent answers of upstream
