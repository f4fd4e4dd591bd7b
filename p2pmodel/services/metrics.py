"""``/metrics``: the agent's statistics in Prometheus text format (prometheus_client).

Nothing is counted twice: at each scrape a collector reads the statistics records the services
keep (``core.stats``, the mirror board, the swarm) and renders them; prometheus_client owns the
exposition format and its escaping. Names follow Prometheus conventions: ``p2pmodel_`` prefix,
``_bytes_total``/``_total`` for counters, base units (bytes, seconds).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .agent import Agent

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Snapshot:
    """One scrape's figures, read from the services (and the store size, read in a thread)."""

    def __init__(self, agent: Agent, store_bytes: int) -> None:
        self.agent = agent
        self.store_bytes = store_bytes

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        gets, lan = agent.gets.stats, agent.swarm.stats
        swarm = agent.swarm.statistics()
        by_mirror = CounterMetricFamily(
            "p2pmodel_mirror_bytes", "Bytes fetched from mirrors", labels=["mirror"]
        )
        for mirror, n in sorted(gets.from_mirrors.items()):
            by_mirror.add_metric([mirror], n)
        yield by_mirror
        by_hub = CounterMetricFamily(
            "p2pmodel_hub_bytes", "Bytes fetched from each hub's URLs and mirrors", labels=["hub"]
        )
        for hub, n in sorted(gets.from_hubs.items()):
            by_hub.add_metric([hub], n)
        yield by_hub
        yield CounterMetricFamily(
            "p2pmodel_peer_bytes", "Bytes fetched from LAN peers", value=lan.from_peers
        )
        yield CounterMetricFamily(
            "p2pmodel_uploaded_bytes", "Bytes served to LAN peers", value=swarm.get("uploaded", 0)
        )
        yield CounterMetricFamily(
            "p2pmodel_internet_bytes_saved",
            "Bytes that came from the LAN instead of the internet",
            value=lan.from_peers,
        )
        yield GaugeMetricFamily(
            "p2pmodel_peers_alive", "Peers alive now", value=len(agent.peers.alive_ids())
        )
        leases = 0
        if agent.sharing is not None:
            leases = len(agent.sharing.status(0.0)["leases"])  # type: ignore[arg-type]
        yield GaugeMetricFamily("p2pmodel_leases_held", "Units this agent leases now", value=leases)
        yield GaugeMetricFamily(
            "p2pmodel_blobs_seeded", "Verified blobs seeded", value=swarm.get("seeding", 0)
        )
        yield GaugeMetricFamily(
            "p2pmodel_store_bytes", "Bytes of verified blobs in the store", value=self.store_bytes
        )
        failures = CounterMetricFamily(
            "p2pmodel_digest_failures",
            "Blobs or pieces whose bytes failed their check, by where they were found",
            labels=["source"],
        )
        counts: dict[str, int] = dict(gets.digest_failures)
        counts["peer"] = counts.get("peer", 0) + lan.digest_failures
        counts["pieces"] = counts.get("pieces", 0) + int(swarm.get("hash_failures", 0))
        for source, n in sorted(counts.items()):
            failures.add_metric([source], n)
        yield failures
        errors = CounterMetricFamily(
            "p2pmodel_mirror_errors", "Failed mirror requests, by kind", labels=["mirror", "kind"]
        )
        for m in agent.gets.board.all_stats():
            for kind, n in sorted(m.errors.items()):
                errors.add_metric([m.key, kind], n)
        yield errors
        limit = GaugeMetricFamily(
            "p2pmodel_rate_limit_bytes_per_second",
            "The bandwidth limit in force (absent: unlimited), by direction",
            labels=["direction"],
        )
        rates = agent.gets.limits.rates
        for direction, value in (
            ("mirror_download", rates.mirror_download if rates else None),
            ("lan_upload", rates.lan_upload if rates else None),
        ):
            if value is not None:
                limit.add_metric([direction], value)
        yield limit
        gets_total = CounterMetricFamily("p2pmodel_gets", "Gets, by outcome", labels=["outcome"])
        gets_total.add_metric(["completed"], gets.completed)
        gets_total.add_metric(["failed"], gets.failed)
        yield gets_total
        h = gets.duration
        buckets: list[tuple[str, float]] = [
            (_bound(b), float(n)) for b, n in zip(h.bounds, h.counts, strict=True)
        ]
        buckets.append(("+Inf", float(h.count)))
        yield HistogramMetricFamily(
            "p2pmodel_get_duration_seconds",
            "How long completed gets took",
            buckets=buckets,
            sum_value=h.total,
        )


def _bound(value: float) -> str:
    return f"{value:g}"


def render(agent: Agent, store_bytes: int) -> bytes:
    """The text a scrape gets."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(agent, store_bytes))
    return generate_latest(registry)
