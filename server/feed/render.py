"""Stored documents to the contract's JSON shapes."""

from __future__ import annotations

from datetime import datetime

from server.app.store import FOREVER
from server.app.timeutil import iso


def public(doc: dict, read_at: datetime | None = None) -> dict:
    """A notification or broadcast as the contract shows it (``read_at`` for a broadcast)."""
    expires = doc.get("expires_at")
    out = {
        "id": doc["_id"],
        "user_id": doc.get("user_id"),
        "type": doc["type"],
        "priority": doc["priority"],
        "title": doc["title"],
        "message": doc["message"],
        "data": doc.get("data") or {},
        "created_at": iso(doc["created_at"]),
        "deliver_at": iso(doc.get("deliver_at")),
        "expires_at": iso(expires) if expires and expires != FOREVER else None,
        "delivered_at": iso(doc.get("delivered_at")),
        "read_at": iso(doc.get("read_at") if read_at is None else read_at),
        "cursor": str(doc["seq"]) if doc.get("seq") is not None else None,
        # Stored before acknowledgement existed, a notification reads as not requiring it.
        "ack_required": doc.get("ack_required", False),
        "acknowledged_at": iso(doc.get("acknowledged_at")),
        "acknowledged_by": doc.get("acknowledged_by"),
        "escalation": doc.get("escalation"),
    }
    if doc.get("audience") is not None:
        out["audience"] = doc["audience"]
    return out


def api_key(record: dict) -> dict:
    """An API key record without its hash."""
    return {
        "id": record["_id"],
        "name": record["name"],
        "prefix": record.get("prefix"),
        "scopes": record["scopes"],
        "created_at": iso(record.get("created_at")),
        "revoked_at": iso(record.get("revoked_at")),
        "expires_at": iso(record.get("expires_at")),
        "rotated_from": record.get("rotated_from"),
        "rate": record.get("rate"),
    }
