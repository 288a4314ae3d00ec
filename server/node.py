"""One node of the service: its storage, hub, bus and services, started and stopped together."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pymongo import AsyncMongoClient

from server.audit import Audit
from server.auth import ApiKeys, Tokens
from server.bus import Bus
from server.hub import Hub
from server.notifications import Notifications
from server.sequencer import Sequencer
from server.store import Store, connect
from server.timeutil import utcnow
from settings import Settings

log = logging.getLogger("notify.node")


def token_secret(settings: Settings) -> str:
    """The token secret: the setting, or in development one kept in the data folder."""
    if settings.token_secret:
        return settings.token_secret
    if settings.production:
        raise SystemExit("NOTIFY_TOKEN_SECRET is required when NOTIFY_ENV=production")
    path = Path(settings.data_dir) / "token_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


@dataclass
class Node:
    """Everything one node runs; handlers reach it as ``self.services``."""

    settings: Settings
    client: AsyncMongoClient
    store: Store
    hub: Hub
    sequencer: Sequencer
    bus: Bus
    notifications: Notifications
    tokens: Tokens
    api_keys: ApiKeys
    node_id: str
    audit: Audit
    started_at: datetime = field(default_factory=utcnow)

    @classmethod
    def build(cls, settings: Settings, uri: str, watch: bool = True) -> Node:
        """Wire a node together; call ``start()`` inside the running loop."""
        node_id = settings.node_id or f"{socket.gethostname()}-{settings.port}"
        client = connect(uri, settings.mongodb_timeout_ms)
        store = Store(client, settings.mongodb_db, settings.retention_days)
        hub = Hub(
            lambda after, upto: store.seq_range(after, upto),
            settings.max_connections,
            settings.max_connections_per_user,
            settings.replay_limit,
        )
        bus = Bus(store, hub, node_id, watch=watch)
        sequencer = Sequencer(store, hub.deliver)
        notifications = Notifications(
            store,
            sequencer,
            hub,
            bus.publish_event,
            node_id,
            settings.replay_limit,
            settings.retention_days,
        )
        tokens = Tokens(
            token_secret(settings), settings.token_ttl_seconds, settings.token_max_ttl_seconds
        )
        api_keys = ApiKeys(store, settings.api_key_cache_seconds)
        audit = Audit(store.db, settings.audit_retention_days)
        return cls(
            settings,
            client,
            store,
            hub,
            sequencer,
            bus,
            notifications,
            tokens,
            api_keys,
            node_id,
            audit,
        )

    async def start(self) -> None:
        """Create indexes, find the feed's position, start the writer and the bus."""
        await self.store.create_indexes()
        await self.audit.create_indexes()
        self.hub.seq = await self.store.high_seq()
        self.sequencer.start()
        self.bus.start()

    async def presence(self, user_ids: list[str]) -> dict[str, dict]:
        """Online or not, and with how many sockets, for each user."""
        out = {}
        for user_id in user_ids:
            count = len(self.hub.user_subscriptions(user_id))
            out[user_id] = {"online": count > 0, "connections": count}
        return out

    async def stats(self) -> dict:
        """Connection statistics, in the earlier system's shape plus this node's detail."""
        local = self.hub.stats()
        return {
            "connected_clients": local["connections"],
            "connected_users": local["users"],
            "status": "active",
            "node_id": self.node_id,
            "nodes": [
                {
                    "node_id": self.node_id,
                    "connections": local["connections"],
                    "users": local["users"],
                    "started_at": self.started_at.isoformat(),
                }
            ],
        }

    async def stop(self) -> None:
        """Stop background work and close MongoDB (sockets are closed by the caller)."""
        await self.bus.stop()
        await self.sequencer.stop()
        await self.client.close()
