"""Prometheus metrics of the service (prometheus-client), one registry per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    """The service's metrics; ``METRICS`` is the process-wide instance."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.connections = Gauge("notify_connections", "open sockets on this node", registry=r)
        self.users = Gauge("notify_users", "distinct users connected to this node", registry=r)
        self.created = Counter(
            "notify_notifications_created", "notifications stored", ["type"], registry=r
        )
        self.delivered = Counter(
            "notify_frames_delivered", "notification frames written to sockets", registry=r
        )
        self.replayed = Counter(
            "notify_replayed", "notifications replayed on reconnect", registry=r
        )
        self.replay_truncated = Counter(
            "notify_replay_truncated", "reconnects that missed more than the limit", registry=r
        )
        self.duplicates_dropped = Counter(
            "notify_bus_duplicates", "events this node had already dispatched", registry=r
        )
        self.gap_fills = Counter(
            "notify_bus_gap_fills", "events fetched from MongoDB to fill a gap", registry=r
        )
        self.bus_restarts = Counter(
            "notify_bus_restarts", "change stream restarts", ["how"], registry=r
        )
        self.bus_lag = Histogram(
            "notify_bus_lag_seconds",
            "from a notification's creation to its dispatch on this node",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.storage_errors = Counter(
            "notify_storage_errors", "MongoDB operations that failed", registry=r
        )
        self.rate_limited = Counter(
            "notify_rate_limited",
            "requests or frames refused by a rate limit",
            ["kind"],
            registry=r,
        )
        self.delivered_by_type = Counter(
            "notify_notifications_delivered",
            "notification frames handed to sockets at dispatch, by notification type",
            ["type"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "notify_delivery_latency_seconds",
            "from a notification's creation to its frame being written to this node's sockets",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.audit_dropped = Counter(
            "notify_audit_dropped", "audit entries lost (queue full or storage down)", registry=r
        )
        self.slow_readers = Counter(
            "notify_slow_readers_dropped", "sockets closed for a full send buffer", registry=r
        )
        self.fanout_seconds = Histogram(
            "notify_fanout_seconds",
            "one notification's fan-out on this node: framing once, then the send loop",
            buckets=(0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.bus_gaps = Counter(
            "notify_bus_gaps",
            "change stream breaks after which this node caught up from MongoDB",
            ["collection"],
            registry=r,
        )
        self.bus_gap_items = Counter(
            "notify_bus_gap_items",
            "notifications or read events fetched from MongoDB after a stream break",
            ["collection"],
            registry=r,
        )
        self.escalations = Counter(
            "notify_escalations",
            "escalation steps done (sent) or repeated after a crash (repeated: nothing new)",
            ["outcome"],
            registry=r,
        )
        self.acknowledged = Counter(
            "notify_acknowledged",
            "notifications acknowledged, by who acknowledged",
            ["by"],
            registry=r,
        )
        self.cluster_nodes = Gauge(
            "notify_cluster_nodes", "live nodes seen at this node's last heartbeat", registry=r
        )
        self.push_attempts = Counter(
            "notify_push_attempts",
            "requests to push services, by outcome (sent, gone, retry, failed, refused)",
            ["outcome"],
            registry=r,
        )
        self.push_deferred = Counter(
            "notify_push_deferred", "pushes held back until a user's quiet hours end", registry=r
        )
        self.replay_memory = Counter(
            "notify_replay_sources",
            "reconnect replays answered from the recent window (memory) or from MongoDB",
            ["source"],
            registry=r,
        )
        self.unread_memory = Counter(
            "notify_unread_sources",
            "welcome unread counts answered from memory or read from MongoDB",
            ["source"],
            registry=r,
        )
        self.replay_window_bytes = Gauge(
            "notify_replay_window_bytes", "memory held by the recent feed window", registry=r
        )
        self.replay_window_entries = Gauge(
            "notify_replay_window_entries", "notifications held by the recent window", registry=r
        )
        self.unread_census = Gauge(
            "notify_unread_census_users",
            "users who may have unread notifications, as this node counts them (-1: off)",
            registry=r,
        )


METRICS = Metrics()
_CHILDREN: dict[tuple[int, str], Any] = {}


def child(metric: Counter, value: str) -> Any:
    """``metric.labels(value)``, looked up once per value: ``labels`` takes a lock and
    builds a key on every call, and this runs for every notification stored and sent."""
    key = (id(metric), value)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(value)
    return found
