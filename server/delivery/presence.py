"""Cluster-wide presence: a registry of live nodes, and which users each one has connected.

Every node upserts its record in ``nodes`` each ``heartbeat_seconds`` (connections, users,
started, last heartbeat) and keeps one ``presence`` document per user it has connected
(``node|user``, with the user's socket count there). Socket changes mark the user dirty;
a flush task writes all dirty users in one bulk write a moment later, so a wave of
reconnects costs a few writes, not one per socket.

Readers count a node only while its heartbeat is younger than ``node_timeout_seconds``, so
a node that dies without cleanup stops counting within that bound; live nodes also delete a
dead node's records. Each start (or return after being reaped) of a node is an ``epoch``;
presence documents carry ``owner`` = node|epoch, so a reaper never deletes what a node that
came back has written since. Heartbeats are compared as epoch milliseconds: the embedded
server stores a date written by ``$set`` as text, which a range query cannot compare.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from datetime import datetime

from pymongo import ASCENDING, DeleteOne, IndexModel, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from server.app.metrics import METRICS
from server.app.timeutil import as_datetime, iso, utcnow
from server.delivery.hub import Hub

log = logging.getLogger("notify.presence")

FLUSH_DELAY = 0.2  # seconds: socket changes within this window go out in one bulk write
WRITE_CHUNK = 1000
ORPHAN_SWEEP_SECONDS = 300.0


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (heartbeats are compared across machines)."""
    return int(time.time() * 1000)


class ClusterPresence:
    """This node's heartbeat and presence records, and the cluster-wide views built on them."""

    def __init__(self, db: AsyncDatabase, hub: Hub, node_id: str, heartbeat: float, timeout: float):
        if not 0 < heartbeat < timeout:
            raise ValueError("node_timeout_seconds must be longer than heartbeat_seconds")
        self.nodes = db.nodes
        self.docs = db.presence
        self.hub = hub
        self.node_id = node_id
        self.heartbeat = heartbeat
        self.timeout_ms = int(timeout * 1000)
        self.epoch = ""
        self.started_at = utcnow()
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._swept = time.monotonic()
        self._beat_at = self.started_at
        hub.listeners.append(self.changed)

    @property
    def owner(self) -> str:
        """The key of this node's current presence documents."""
        return f"{self.node_id}|{self.epoch}"

    async def create_indexes(self) -> None:
        """Indexes of the presence documents (the node registry is a handful of documents)."""
        await self.docs.create_indexes(
            [
                IndexModel([("user_id", ASCENDING)], name="user"),
                IndexModel([("owner", ASCENDING)], name="owner"),
                IndexModel([("node_id", ASCENDING)], name="node"),
            ]
        )

    async def start(self, started_at: datetime) -> None:
        """Drop what an earlier run under this node id left, register, start heartbeating."""
        self.started_at = started_at
        await self.docs.delete_many({"node_id": self.node_id})
        await self._register(first=True)
        self._tasks = [
            asyncio.create_task(self._beat_forever(), name="heartbeat"),
            asyncio.create_task(self._flush_forever(), name="presence-flush"),
        ]

    async def stop(self) -> None:
        """Stop heartbeating and remove this node's records (a clean shutdown)."""
        # The driver can swallow a cancellation that lands mid-operation, and the loop then
        # waits on its event for good: cancel again until every task has ended.
        while any(not task.done() for task in self._tasks):
            for task in self._tasks:
                task.cancel()
            await asyncio.wait(self._tasks, timeout=0.5)
        self._tasks = []
        try:
            await self.nodes.delete_one({"_id": self.node_id, "epoch": self.epoch})
            await self.docs.delete_many({"node_id": self.node_id})
        except PyMongoError:
            log.warning("could not remove this node's presence records; they expire")

    def changed(self, user_id: str) -> None:
        """The hub's listener: a user's socket count on this node changed."""
        self._dirty.add(user_id)
        self._wake.set()

    # ---- writing -------------------------------------------------------------------------

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self.beat()
            except PyMongoError as exc:
                METRICS.storage_errors.inc()
                log.warning("heartbeat failed: %s", type(exc).__name__)

    async def beat(self) -> None:
        """One heartbeat: refresh this node's record, then clear out dead nodes."""
        local = self.hub.stats()
        result = await self.nodes.update_one(
            {"_id": self.node_id, "epoch": self.epoch},
            {"$set": {**self._vitals(local)}},
        )
        if result.matched_count == 0:
            await self._register(first=False)
        await self._reap()

    async def _register(self, first: bool) -> None:
        """Claim this node's record under a new epoch, and write its presence afresh."""
        previous = await self.nodes.find_one({"_id": self.node_id}, {"epoch": 1, "heartbeat_ms": 1})
        if previous is not None and not first:
            alive = previous.get("heartbeat_ms", 0) > now_ms() - self.timeout_ms
            if alive:
                log.error(
                    "node id %s is used by another live node; give each its own", self.node_id
                )
        elif not first:
            log.warning("this node's record was removed as stale (a long pause?); re-registering")
        async with self._write_lock:
            old_owner, self.epoch = self.owner, secrets.token_hex(4)
            doc = {  # _id repeated: the embedded server's upsert would not take it from the filter
                "_id": self.node_id,
                "started_at": self.started_at,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                **self._vitals(self.hub.stats()),
            }
            await self.nodes.replace_one({"_id": self.node_id}, doc, upsert=True)
            if not first:
                await self.docs.delete_many({"owner": old_owner})
            self._dirty.update(self.hub.by_user)
        self._wake.set()

    def _vitals(self, local: dict) -> dict:
        self._beat_at = utcnow()
        return {
            "epoch": self.epoch,
            "heartbeat_ms": now_ms(),
            "heartbeat_at": self._beat_at,
            "connections": local["connections"],
            "users": local["users"],
        }

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(FLUSH_DELAY)
            self._wake.clear()
            try:
                await self.flush()
            except PyMongoError as exc:
                METRICS.storage_errors.inc()
                log.warning("presence write failed: %s; retrying", type(exc).__name__)
                await asyncio.sleep(min(self.heartbeat, 1.0))
                self._wake.set()

    async def flush(self) -> None:
        """Write the socket counts of the users whose sockets changed."""
        async with self._write_lock:
            users, self._dirty = self._dirty, set()
            try:
                ops = [self._op(u) for u in users]
                for start in range(0, len(ops), WRITE_CHUNK):
                    await self.docs.bulk_write(ops[start : start + WRITE_CHUNK], ordered=False)
            except PyMongoError:
                self._dirty |= users
                raise

    def _op(self, user_id: str) -> UpdateOne | DeleteOne:
        key = {"_id": f"{self.node_id}|{user_id}"}
        count = len(self.hub.user_subscriptions(user_id))
        if count == 0:
            return DeleteOne(key)
        fields = {"user_id": user_id, "node_id": self.node_id, "owner": self.owner}
        return UpdateOne(key, {"$set": {**fields, "connections": count}}, upsert=True)

    async def _reap(self) -> None:
        """Delete the records of nodes whose heartbeat stopped (another node may do it too)."""
        cutoff = now_ms() - self.timeout_ms
        docs = await self.nodes.find({}, {"epoch": 1, "heartbeat_ms": 1}).to_list()
        live = 0
        for doc in docs:
            if doc["_id"] == self.node_id or doc.get("heartbeat_ms", 0) >= cutoff:
                live += 1
                continue
            gone = await self.nodes.delete_one(
                {"_id": doc["_id"], "epoch": doc.get("epoch"), "heartbeat_ms": {"$lt": cutoff}}
            )
            if gone.deleted_count:
                await self.docs.delete_many({"owner": f"{doc['_id']}|{doc.get('epoch')}"})
                log.warning("node %s stopped heartbeating; removed its presence", doc["_id"])
        METRICS.cluster_nodes.set(live)
        if time.monotonic() - self._swept > ORPHAN_SWEEP_SECONDS:
            self._swept = time.monotonic()
            await self._sweep_orphans()

    async def _sweep_orphans(self) -> None:
        """Delete presence documents whose node record is gone (a reaper that died midway)."""
        owners = {f"{d['_id']}|{d.get('epoch')}" for d in await self.nodes.find({}).to_list()}
        orphans = [o for o in await self.docs.distinct("owner") if o not in owners]
        if orphans:
            await self.docs.delete_many({"owner": {"$in": orphans}})

    # ---- reading -------------------------------------------------------------------------

    async def live_nodes(self) -> list[dict]:
        """Records of the nodes whose heartbeat is recent (this node's own always)."""
        cutoff = now_ms() - self.timeout_ms
        found = await self.nodes.find({}).to_list()
        live = [d for d in found if d["_id"] != self.node_id and d.get("heartbeat_ms", 0) >= cutoff]
        me = {"_id": self.node_id, "epoch": self.epoch, "started_at": self.started_at}
        return sorted([{**me, "heartbeat_at": self._beat_at}, *live], key=lambda d: d["_id"])

    async def presence(self, user_ids: list[str]) -> dict[str, dict]:
        """Online or not, and with how many sockets across the cluster, for each user."""
        counts = {u: len(self.hub.user_subscriptions(u)) for u in user_ids}
        others = {_owner(d) for d in await self.live_nodes()} - {self.owner}
        if others:  # this node's own counts are the live ones above
            query = {"user_id": {"$in": user_ids}}
            found = self.docs.find(query, {"user_id": 1, "owner": 1, "connections": 1})
            for doc in await found.to_list():
                if doc.get("owner") in others and doc.get("user_id") in counts:
                    counts[doc["user_id"]] += int(doc.get("connections", 0))
        return {u: {"online": n > 0, "connections": n} for u, n in counts.items()}

    async def stats(self) -> dict:
        """Totals for the cluster (the seed's keys) and one entry per live node."""
        nodes = await self.live_nodes()
        local = self.hub.stats()
        users = local["users"]
        if len(nodes) > 1:
            owners = [_owner(d) for d in nodes if d["_id"] != self.node_id]
            per_node = await self._per_owner(owners)
            for doc in nodes:
                if doc["_id"] != self.node_id:
                    doc.update(per_node.get(_owner(doc), {"connections": 0, "users": 0}))
            if any(d["users"] for d in per_node.values()):
                users = await self._distinct_users([*owners, self.owner])
        for doc in nodes:
            if doc["_id"] == self.node_id:
                doc.update(local)
        return {
            "connected_clients": sum(d["connections"] for d in nodes),
            "connected_users": users,
            "status": "active",
            "node_id": self.node_id,
            "node_count": len(nodes),
            "nodes": [_node_view(d) for d in nodes],
        }

    async def _per_owner(self, owners: list[str]) -> dict[str, dict]:
        """Sockets and users of each of these nodes, from their presence documents."""
        pipeline = [
            {"$match": {"owner": {"$in": owners}}},
            {
                "$group": {
                    "_id": "$owner",
                    "connections": {"$sum": "$connections"},
                    "users": {"$sum": 1},
                }
            },
        ]
        found = await (await self.docs.aggregate(pipeline)).to_list()
        return {d["_id"]: {"connections": d["connections"], "users": d["users"]} for d in found}

    async def _distinct_users(self, owners: list[str]) -> int:
        """Users with a socket on any of these nodes, each counted once."""
        pipeline = [
            {"$match": {"owner": {"$in": owners}}},
            {"$group": {"_id": "$user_id"}},
            {"$count": "n"},
        ]
        found = await (await self.docs.aggregate(pipeline)).to_list()
        return int(found[0]["n"]) if found else 0


def _owner(doc: dict) -> str:
    return f"{doc['_id']}|{doc.get('epoch')}"


def _node_view(doc: dict) -> dict:
    return {
        "node_id": doc["_id"],
        "connections": int(doc.get("connections", 0)),
        "users": int(doc.get("users", 0)),
        "started_at": iso(as_datetime(doc.get("started_at"))),
        "last_heartbeat_at": iso(as_datetime(doc.get("heartbeat_at"))),
    }
