"""Outbound webhooks (CONTRACT §9): from a timeline event to signed, retried deliveries.

The path of one event: the timeline tells ``on_event`` of every stored event; when an
endpoint wants its type, the notification is read once, the body is built once, and each
endpoint gets a delivery (stored under an id derived from the event, so the same event is
never stored twice) and an entry in the due-work queue (kind ``webhook``, key = the delivery
id). The node that claims the entry sends the attempt in a task of its own and hands the
entry back to the queue with a lease: the queue's loop never waits for an endpoint, and if
the node dies mid-send, another node sends the attempt again when the lease runs out, with
the same ``webhook-id``. After the attempt, the entry is deleted (success, or the last retry
failed) or due again after the next delay of ``NOTIFY_WEBHOOK_RETRY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from server.app.errors import Conflict, NotFound, ValidationFailed
from server.app.outbound import url_problem
from server.app.store import Store
from server.app.timeutil import millis, utcnow
from server.feed.scheduler import Scheduler
from server.feed.timeline import Timeline
from server.webhooks import deliveries as delivery_shapes
from server.webhooks import endpoints as endpoint_shapes
from server.webhooks.deliveries import FAILED, PENDING, SUCCEEDED, Deliveries, delivery_id
from server.webhooks.endpoints import Endpoints
from server.webhooks.events import ONCE_PER_NOTIFICATION, body, event_type
from server.webhooks.metrics import ATTEMPTS, DELIVERIES, EVENTS
from server.webhooks.sender import Outcome, Sender
from settings import Settings

log = logging.getLogger("notify.webhooks")

KIND = "webhook"
BUSY_RETRY = timedelta(seconds=1)  # an endpoint with every slot taken: look again soon
EVENT_WORKERS = 4  # events turned into deliveries at once, off the request that made them
EVENT_BACKLOG = 10_000  # events waiting for a worker; past it, the recording request waits
DRAIN_SECONDS = 5.0  # at shutdown, how long the waiting events may take to be stored


class Webhooks:
    """One node's webhooks: endpoints, deliveries, the timeline listener and the sender."""

    def __init__(
        self,
        db: AsyncDatabase,
        store: Store,
        timeline: Timeline,
        scheduler: Scheduler,
        settings: Settings,
    ):
        self.store = store
        self.timeline = timeline
        self.scheduler = scheduler
        self.allow_private = settings.outbound_allow_private
        self.endpoints = Endpoints(db, settings.webhook_cache_seconds)
        self.deliveries = Deliveries(db, settings.webhook_retention_days)
        self.sender = Sender(
            settings.outbound_allow_private,
            settings.webhook_timeout_seconds,
            settings.webhook_concurrency,
        )
        self.retries = settings.webhook_retries
        # How long a claimed attempt is this node's: the request's timeout plus the lease.
        lease = settings.schedule_lease_seconds + settings.webhook_timeout_seconds
        self.lease_ms = int(lease * 1000)
        self._sending: dict[asyncio.Task, dict] = {}
        self._events: asyncio.Queue[tuple[dict, str, list[dict]]] = asyncio.Queue(EVENT_BACKLOG)
        self._workers: list[asyncio.Task] = []
        timeline.listeners.append(self.on_event)
        scheduler.register(KIND, self._claimed)

    def start(self) -> None:
        """Start the workers that turn events into deliveries."""
        self._workers = [
            asyncio.create_task(self._work(), name=f"webhook-events-{n}")
            for n in range(EVENT_WORKERS)
        ]

    async def create_indexes(self) -> None:
        """The endpoints' and deliveries' indexes."""
        await self.endpoints.create_indexes()
        await self.deliveries.create_indexes()

    async def stop(self) -> None:
        """Stop sending; attempts cut short are handed back for any node to send at once."""
        if self.on_event in self.timeline.listeners:
            self.timeline.listeners.remove(self.on_event)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._events.join(), DRAIN_SECONDS)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        sending, self._sending = self._sending, {}
        for task in sending:
            task.cancel()
        await asyncio.gather(*sending, return_exceptions=True)
        now = utcnow()
        for entry in sending.values():
            with contextlib.suppress(PyMongoError):
                await self.scheduler.settle(entry, now)
        self.sender.close()

    # ---- the API -----------------------------------------------------------------------

    async def register(self, url: str, events: list[str], description: str | None) -> dict:
        """A new endpoint, its secret shown this once; 400 for a URL that may not be called."""
        problem = url_problem(url, self.allow_private)
        if problem is not None:
            raise ValidationFailed("the request is not valid", {"url": [problem]})
        record = await self.endpoints.create(url, events, description)
        log.info("webhook %s registered for %s", record["_id"], ",".join(record["events"]))
        return endpoint_shapes.public(record, secret=True)

    async def list(self) -> list[dict]:
        """Every endpoint, without secrets."""
        return [endpoint_shapes.public(r) for r in await self.endpoints.list()]

    async def remove(self, endpoint_id: str) -> None:
        """Delete an endpoint and its deliveries; 404 if unknown."""
        if not await self.endpoints.delete(endpoint_id):
            raise NotFound("no such webhook")
        await self.deliveries.forget_endpoint(endpoint_id)
        log.info("webhook %s deleted", endpoint_id)

    async def deliveries_of(self, endpoint_id: str, status: str | None, limit: int) -> list[dict]:
        """An endpoint's deliveries, newest first; 404 if the endpoint is unknown."""
        if await self.endpoints.get(endpoint_id) is None:
            raise NotFound("no such webhook")
        found = await self.deliveries.list(endpoint_id, status, limit)
        return [delivery_shapes.public(d) for d in found]

    async def retry(self, endpoint_id: str, did: str) -> dict:
        """Queue one more attempt of a failed delivery now, with the same ``webhook-id``."""
        delivery = await self.deliveries.get(did)
        if delivery is None or delivery["endpoint_id"] != endpoint_id:
            raise NotFound("no such delivery of this webhook")
        if delivery["status"] != FAILED:
            raise Conflict("only a failed delivery is retried")
        # Keyed on the delivery: a second click while the first attempt waits adds nothing.
        payload = {"delivery_id": did, "manual": True}
        ref = delivery["notification_id"]
        await self.scheduler.enqueue(KIND, did, utcnow(), payload, ref=ref)
        return delivery_shapes.public(delivery)

    # ---- events ------------------------------------------------------------------------

    async def on_event(self, entry: dict) -> None:
        """A stored timeline event: queued for the workers when an endpoint wants its type.

        Called on the path of the request that recorded the event, so it only looks in the
        cached endpoint list; the reads and writes happen in ``_work``, off that path.
        """
        kind = event_type(entry)
        if kind is None:
            return
        wanting = await self.endpoints.wanting(kind)
        if wanting:
            await self._events.put((entry, kind, wanting))

    async def _work(self) -> None:
        while True:
            entry, kind, wanting = await self._events.get()
            try:
                await self._store_event(entry, kind, wanting)
            except Exception as exc:  # one event's failure must not stop the worker
                log.warning("webhook event %s not stored: %s", kind, type(exc).__name__)
            finally:
                self._events.task_done()

    async def _store_event(self, entry: dict, kind: str, wanting: list[dict]) -> None:
        """Read the notification once, build the body once, a delivery per endpoint."""
        nid = entry["notification_id"]
        doc = await self.store.get(nid)
        if doc is None:
            return
        text = body(kind, doc, entry, utcnow())
        about = f"{nid}|{kind}" if kind in ONCE_PER_NOTIFICATION else str(entry["_id"])
        for endpoint in wanting:
            did = delivery_id(about, endpoint["_id"])
            if await self.deliveries.add(did, endpoint["_id"], kind, nid, text) is None:
                continue  # this event was handed over before (another connection's receipt)
            EVENTS.labels(kind).inc()
            await self.scheduler.enqueue(KIND, did, utcnow(), {"delivery_id": did}, ref=nid)

    # ---- sending -----------------------------------------------------------------------

    async def _claimed(self, entries: list[dict]) -> dict[str, int]:
        """The queue's handler: send each in a task; the entries stay leased meanwhile."""
        lease_end = millis(utcnow()) + self.lease_ms
        for entry in entries:
            task = asyncio.create_task(self._attempt(entry), name="webhook-attempt")
            self._sending[task] = entry
            task.add_done_callback(lambda t: self._sending.pop(t, None))
        return {entry["_id"]: lease_end for entry in entries}

    async def _attempt(self, entry: dict) -> None:
        """One attempt of one delivery, then its outcome recorded and the entry settled."""
        payload = entry.get("payload") or {}
        manual = bool(payload.get("manual"))
        try:
            delivery = await self.deliveries.get(payload.get("delivery_id", entry["_id"]))
            endpoint = None
            if delivery is not None:
                endpoint = await self.endpoints.sending(delivery["endpoint_id"])
            wanted = FAILED if manual else PENDING
            if endpoint is None or delivery["status"] != wanted:
                await self.scheduler.settle(entry, None)  # deleted, or already settled
                return
            slot = self.sender.slots(endpoint["_id"])
            try:
                await asyncio.wait_for(slot.acquire(), self.lease_ms / 2000)
            except TimeoutError:  # every slot busy this long: not an attempt, look later
                await self.scheduler.settle(entry, utcnow() + BUSY_RETRY)
                return
            try:
                outcome = await self.sender.send(endpoint, delivery["webhook_id"], delivery["body"])
            finally:
                slot.release()
            ATTEMPTS.labels(outcome.kind).inc()
            await self._after(entry, delivery, outcome, manual)
        except PyMongoError as exc:  # the lease runs out and the attempt is made again
            log.warning("webhook attempt not recorded: %s", type(exc).__name__)
        except Exception:
            log.exception("webhook attempt failed")

    async def _after(self, entry: dict, delivery: dict, outcome: Outcome, manual: bool) -> None:
        """Record an attempt's outcome: succeeded, failed for good, or due again later."""
        did, attempt = delivery["_id"], delivery["attempts"] + 1
        if outcome.ok:
            await self.deliveries.attempted(did, SUCCEEDED, outcome.status, None)
            DELIVERIES.labels("succeeded").inc()
            await self.scheduler.settle(entry, None)
        elif manual or attempt > len(self.retries):
            # The entry goes first: a retry asked for as soon as the delivery shows failed
            # must find its key free.
            await self.scheduler.settle(entry, None)
            await self.deliveries.attempted(did, FAILED, outcome.status, None)
            if not manual:
                DELIVERIES.labels("failed").inc()
                await self.timeline.record(
                    delivery["notification_id"],
                    "webhook_failed",
                    key=f"{delivery['notification_id']}:webhook_failed:{did}",
                    webhook=delivery["endpoint_id"],
                    delivery_id=did,
                    type=delivery["type"],
                    last_status=outcome.status,
                )
        else:
            next_at = utcnow() + timedelta(seconds=self.retries[attempt - 1])
            await self.deliveries.attempted(did, PENDING, outcome.status, next_at)
            await self.scheduler.settle(entry, next_at)
