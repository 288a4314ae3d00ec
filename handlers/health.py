"""Liveness, readiness and metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from handlers.base import APIHandler
from server.app.metrics import METRICS


class HealthHandler(APIHandler):
    async def get(self) -> None:
        """The process is up."""
        self.ok({"status": "ok", "node_id": self.services.node_id})


class ReadyHandler(APIHandler):
    async def get(self) -> None:
        """Storage answers and the bus is following: ready for traffic."""
        await self.services.check_ready()
        self.ok({"status": "ready", "node_id": self.services.node_id})


class MetricsHandler(APIHandler):
    async def get(self) -> None:
        """Prometheus text format (restricted to a ``read`` key unless metrics are public)."""
        if not self.config.metrics_public:
            await self.require_scope("read")
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(METRICS.registry))


default_handlers = [
    (r"/healthz", HealthHandler),
    (r"/readyz", ReadyHandler),
    (r"/metrics", MetricsHandler),
]
