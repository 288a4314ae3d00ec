"""The webhook counters, in the service's one registry (``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter

from server.app.metrics import METRICS

ATTEMPTS = Counter(
    "notify_webhook_attempts",
    "webhook requests sent, by outcome (success, http_error, timeout, network_error, blocked)",
    ["outcome"],
    registry=METRICS.registry,
)
DELIVERIES = Counter(
    "notify_webhook_deliveries",
    "webhook deliveries finished, by outcome (succeeded, failed: after the last retry)",
    ["outcome"],
    registry=METRICS.registry,
)
EVENTS = Counter(
    "notify_webhook_events",
    "webhook deliveries created, by event type",
    ["type"],
    registry=METRICS.registry,
)
