"""Idempotent writes (CONTRACT §10): the first answer to an ``Idempotency-Key``, kept a day.

One record per API key and idempotency key, under a unique index: the insert that wins it
runs the request, and every later request with that key (on any node) finds the record:
its answer once finished (replayed as it was), a 409 while it runs, a 422 for another body.
A request that fails leaves no record, so its retry runs again. A first request that never
finished (its node died) holds the key for ``in_flight_seconds``; then a retry takes it over.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.app.errors import ServiceError, ValidationFailed
from server.app.timeutil import millis, utcnow

KEPT = timedelta(hours=24)
HEADER = "Idempotency-Key"
KEY_RE = re.compile(r"^[\x20-\x7e]{1,255}$")
IN_FLIGHT, DONE = "in_flight", "done"


class IdempotencyMismatch(ServiceError):
    status, code = 422, "idempotency_mismatch"


class IdempotencyInFlight(ServiceError):
    status, code = 409, "idempotency_in_flight"


@dataclass(frozen=True)
class Claim:
    """This request holds the key: it runs, then ``finish`` stores its answer."""

    record_id: str
    token: str


@dataclass(frozen=True)
class Replay:
    """The key's first answer, to send again as it was."""

    status: int
    body: str


def check_key(value: str) -> str:
    """The header's value if it is 1 to 255 printable ASCII characters; else a 400."""
    if not KEY_RE.match(value):
        raise ValidationFailed(
            "the request is not valid", {HEADER: ["1 to 255 printable ASCII characters"]}
        )
    return value


def fingerprint(route: str, body: Any) -> str:
    """A digest of the request: its route and its body's JSON value (key order aside)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{route}\n{text}".encode()).hexdigest()


class Idempotency:
    """The ``idempotency`` collection."""

    def __init__(self, db: AsyncDatabase, in_flight_seconds: float):
        self.collection = db.idempotency
        self.in_flight_ms = int(in_flight_seconds * 1000)

    async def create_indexes(self) -> None:
        """One record per API key and idempotency key; gone a day later."""
        await self.collection.create_indexes(
            [
                IndexModel([("key_id", ASCENDING), ("key", ASCENDING)], unique=True, name="key"),
                IndexModel("expires_at", expireAfterSeconds=0, name="expires_at"),
            ]
        )

    async def begin(self, key_id: str, key: str, digest: str) -> Claim | Replay:
        """Hold the key for this request, or the first answer; 409 or 422 as the contract says."""
        for _ in range(3):  # a record that expired or was abandoned meanwhile: try again
            now = utcnow()
            claim = Claim(str(ObjectId()), str(ObjectId()))
            record = {
                "_id": claim.record_id,
                "key_id": key_id,
                "key": key,
                "fingerprint": digest,
                "state": IN_FLIGHT,
                "token": claim.token,
                "started_ms": millis(now),
                "expires_ms": millis(now + KEPT),
                "expires_at": now + KEPT,
            }
            try:
                await self.collection.insert_one(record)
                return claim
            except DuplicateKeyError:
                pass
            found = await self.collection.find_one({"key_id": key_id, "key": key})
            if found is None:
                continue
            now_ms = millis(utcnow())
            if found["expires_ms"] <= now_ms:  # the TTL monitor has not come by yet
                await self.collection.delete_one({"_id": found["_id"], "token": found["token"]})
                continue
            if found["fingerprint"] != digest:
                raise IdempotencyMismatch("this Idempotency-Key was used with another request body")
            if found["state"] == DONE:
                return Replay(found["status"], found["body"])
            if found["started_ms"] + self.in_flight_ms <= now_ms:
                taken = await self._take_over(found, now_ms)
                if taken is not None:
                    return taken
            raise IdempotencyInFlight("a request with this Idempotency-Key is still running")
        raise IdempotencyInFlight("a request with this Idempotency-Key is still running")

    async def _take_over(self, found: dict, now_ms: int) -> Claim | None:
        """Take the key of a first request that never finished (its node died, most likely)."""
        token = str(ObjectId())
        result = await self.collection.update_one(
            {"_id": found["_id"], "token": found["token"], "state": IN_FLIGHT},
            {"$set": {"token": token, "started_ms": now_ms}},
        )
        return Claim(found["_id"], token) if result.modified_count == 1 else None

    async def finish(self, claim: Claim, status: int, body: str) -> None:
        """Keep the answer for the key's later requests (unless another took the key over)."""
        await self.collection.update_one(
            {"_id": claim.record_id, "token": claim.token},
            {"$set": {"state": DONE, "status": status, "body": body}},
        )

    async def abandon(self, claim: Claim) -> None:
        """Free the key of a request that failed: a retry runs it again."""
        await self.collection.delete_one(
            {"_id": claim.record_id, "token": claim.token, "state": IN_FLIGHT}
        )
