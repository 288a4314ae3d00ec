"""One node of the service: its storage, hub, bus and services, started and stopped together."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pymongo
from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure, OperationFailure

from server.app import logs
from server.app.audit import Audit
from server.app.errors import StorageUnavailable
from server.app.idempotency import Idempotency
from server.app.secret_files import local_secret
from server.app.store import Store, connect
from server.app.timeutil import utcnow
from server.app.user_records import UserRecords
from server.auth.credentials import ApiKeys, Tokens
from server.auth.ratelimit import RateLimits
from server.dashboard.service import Dashboard
from server.delivery.bus import Bus
from server.delivery.hub import Hub
from server.delivery.presence import ClusterPresence
from server.delivery.protocol import ConnectionProtocol
from server.escalation.service import Escalation
from server.feed.notifications import Notifications
from server.feed.scheduler import ScheduledStore, Scheduler
from server.feed.sequencer import Sequencer
from server.feed.timeline import Timeline
from server.push.service import PushService
from server.webhooks.service import Webhooks
from settings import Settings

log = logging.getLogger("notify.node")

# Index builds that may fail while nodes start together or MongoDB elects a primary:
# NamespaceExists, ShutdownInProgress, PrimarySteppedDown, IndexBuildAborted,
# NotWritablePrimary, InterruptedAtShutdown, BackgroundOperationInProgressForNamespace.
INDEX_RETRY_CODES = {48, 91, 189, 276, 10107, 11600, 12587}
INDEX_ATTEMPTS = 6


def token_secret(settings: Settings) -> str:
    """The secret that signs connection tokens."""
    return local_secret(settings, settings.token_secret, "token_secret")


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
    scheduler: Scheduler | None = None
    cluster: ClusterPresence | None = None
    dashboard: Dashboard | None = None
    limits: RateLimits | None = None
    protocol: ConnectionProtocol | None = None
    push: PushService | None = None
    escalation: Escalation | None = None
    webhooks: Webhooks | None = None
    idempotency: Idempotency | None = None
    # The key of user-id pseudonyms in log lines; None writes user ids as they are.
    log_key: bytes | None = None
    _census: asyncio.Task | None = None
    users: UserRecords | None = None

    @classmethod
    def build(cls, settings: Settings, uri: str, watch: bool = True) -> Node:
        """Wire a node together; call ``start()`` inside the running loop."""
        # Port 0 (tests) picks a free port later: make such default ids distinct anyway.
        port = settings.port or f"0-{secrets.token_hex(3)}"
        node_id = settings.node_id or f"{socket.gethostname()}-{port}"
        client = connect(uri, settings.mongodb_timeout_ms)
        store = Store(client, settings.mongodb_db, settings.retention_days)
        hub = Hub(
            lambda after, upto: store.seq_range(after, upto),
            settings.max_connections,
            settings.max_connections_per_user,
            settings.replay_limit,
            settings.replay_window_bytes,
        )
        bus = Bus(
            store,
            hub,
            node_id,
            watch=watch,
            poll=settings.bus_poll_seconds,
            poll_max=settings.bus_poll_max_seconds,
            own_notifications=not settings.direct_delivery,
        )
        # Direct delivery hands this node's own writes to its hub at once; without it they
        # reach the hub like other nodes' writes, through the change stream (README scaling).
        sequencer = Sequencer(
            store,
            hub.deliver if settings.direct_delivery else _stream_only,
            write_timeout=settings.storage_timeout,
            withheld=hub.withheld,
            node_id=node_id,
        )
        notifications = Notifications(
            store,
            sequencer,
            hub,
            bus.publish_event,
            node_id,
            settings.replay_limit,
            Timeline(store.db, settings.retention_days),
        )
        tokens = Tokens(
            token_secret(settings), settings.token_ttl_seconds, settings.token_max_ttl_seconds
        )
        api_keys = ApiKeys(store, settings.api_key_cache_seconds)
        audit = Audit(store.db, settings.audit_retention_days)
        scheduler = Scheduler(
            ScheduledStore(store.db),
            sequencer,
            node_id,
            store.retention,
            settings.schedule_lease_seconds,
            settings.schedule_poll_seconds,
            settings.storage_timeout,
        )
        notifications.scheduler = scheduler
        cluster = ClusterPresence(
            store.db, hub, node_id, settings.heartbeat_seconds, settings.node_timeout_seconds
        )
        notifications.critical_ack = timedelta(seconds=settings.critical_ack_seconds)
        limits = RateLimits(settings)
        PushService.subject(settings)  # a missing subject stops the start, not the first push
        push = PushService(settings, store.db, notifications, scheduler)
        notifications.planners.append(push.plan)
        escalation = Escalation(store, notifications, scheduler, bus, push)
        escalation.wire()
        users = UserRecords(store)
        notifications.users = users
        protocol = ConnectionProtocol(
            hub,
            notifications,
            store,
            tokens,
            audit,
            limits,
            settings.storage_timeout,
            users,
            acknowledgements=escalation.acks,
        )
        webhooks = Webhooks(store.db, store, notifications.timeline, scheduler, settings)
        node = cls(
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
            scheduler=scheduler,
            cluster=cluster,
            limits=limits,
            protocol=protocol,
            push=push,
            users=users,
            escalation=escalation,
            webhooks=webhooks,
            idempotency=Idempotency(store.db, settings.idempotency_in_flight_seconds),
            log_key=None if settings.log_user_ids else logs.pseudonym_key(token_secret(settings)),
        )
        return node

    async def start(self) -> None:
        """Create indexes, find the feed's highest seq, start the writer and the bus."""
        await self._create_indexes()
        self.audit.start()
        self.users.start()
        self.hub.seq = await self.store.high_seq()
        self.hub.recent.reset(self.hub.seq)  # complete from here: it sees all that follows
        self.hub.recent.watch_gauges()
        self._census = asyncio.create_task(
            self.notifications.keep_census(self.hub.recent.max_age), name="census"
        )
        self.sequencer.start()
        if self.scheduler is not None:
            await self.scheduler.store.create_indexes()
            if self.push is not None:
                await self.push.start()  # registers its kinds before the queue runs
            self.scheduler.start()
        self.webhooks.start()
        self.bus.start()
        await self.cluster.start(self.started_at)
        self.dashboard = Dashboard(
            self.settings,
            self.store.db,
            self.hub,
            self.notifications,
            self.audit,
            self.limits,
            self.stats,
            self.presence,
            self.escalation.acks,
            push_devices=self.push.subscriptions.counts if self.push is not None else None,
        )
        await self.dashboard.start()

    async def _create_indexes(self) -> None:
        """Every index; retried while MongoDB comes up or elects (identical specs are no-ops)."""
        for attempt in range(INDEX_ATTEMPTS):
            try:
                await self.store.create_indexes()
                await self.audit.create_indexes()
                await self.cluster.create_indexes()
                await self.notifications.timeline.create_indexes()
                await self.webhooks.create_indexes()
                await self.idempotency.create_indexes()
                return
            except (ConnectionFailure, OperationFailure) as exc:
                code = getattr(exc, "code", None)
                transient = isinstance(exc, ConnectionFailure) or code in INDEX_RETRY_CODES
                if not transient or attempt == INDEX_ATTEMPTS - 1:
                    raise
                log.warning("index creation failed (%s %s); retrying", type(exc).__name__, code)
                await asyncio.sleep(0.5 * 2**attempt)

    async def check_ready(self) -> None:
        """Raise StorageUnavailable unless MongoDB answers and no failed write is unhidden."""
        with pymongo.timeout(self.settings.mongodb_timeout_ms / 1000):
            await self.store.ping()
        if not self.sequencer.clean:
            raise StorageUnavailable("a failed write's leftovers are not hidden yet")

    async def presence(self, user_ids: list[str]) -> dict[str, dict]:
        """Online or not, and with how many sockets, for each user, across the cluster."""
        return await self.cluster.presence(user_ids)

    async def stats(self) -> dict:
        """Connection statistics in the earlier system's shape: cluster totals, then per node."""
        return await self.cluster.stats()

    async def stop(self) -> None:
        """Stop background work and close MongoDB (sockets are closed by the caller)."""
        if self.dashboard is not None:
            await self.dashboard.stop()
        await self.cluster.stop()
        if self._census is not None:
            self._census.cancel()
            await asyncio.gather(self._census, return_exceptions=True)
        await self.bus.stop()
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self.webhooks.stop()  # after the queue: it claims no attempt from now on
        if self.push is not None:
            self.push.stop()
        await self.sequencer.stop()
        await self.audit.stop()
        await self.users.stop()
        await self.client.close()


async def _stream_only(docs: list[dict]) -> None:
    """Leave delivery of this node's writes to the change stream (direct_delivery off)."""
