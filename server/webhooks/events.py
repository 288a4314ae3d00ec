"""Webhook event types, and the body of one event (CONTRACT §9): no health information."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from server.app.timeutil import iso

EVENT_TYPES = (
    "notification.delivered",
    "notification.read",
    "notification.acknowledged",
    "notification.escalated",
    "notification.push_failed",
    "notification.expired_unacknowledged",
)

# Timeline event -> webhook event type. ``delivered`` is recorded once per connection; only
# a notification's first is sent (the delivery's id is keyed on the notification for it).
FROM_TIMELINE = {
    "delivered": "notification.delivered",
    "read": "notification.read",
    "acknowledged": "notification.acknowledged",
    "escalated": "notification.escalated",
    "push_failed": "notification.push_failed",
}
ONCE_PER_NOTIFICATION = frozenset({"notification.delivered", "notification.read"})

# Event fields never sent: an acknowledgement's note is free text a person typed, and may
# hold health information; the integrator reads it with GET /v1/notifications/{id}.
WITHHELD_FIELDS = frozenset({"note", "title", "message", "data"})


def event_type(entry: dict) -> str | None:
    """The webhook event type of a stored timeline event, or None if none is sent for it."""
    # Escalation stores ``expired`` only for an ack_required notification that expired
    # unacknowledged (any other expiry is derived when the timeline is read, never stored).
    if entry["event"] == "expired" and entry.get("fields", {}).get("unacknowledged"):
        return "notification.expired_unacknowledged"
    return FROM_TIMELINE.get(entry["event"])


def body(kind: str, doc: dict, entry: dict, now: datetime) -> str:
    """The JSON text sent (and signed) on every attempt of one event."""
    data: dict[str, Any] = {
        "notification_id": doc["_id"],
        "user_id": doc.get("user_id"),
        "type": doc["type"],
        "priority": doc["priority"],
        "at": iso(entry["at"]),
    }
    for name, value in (entry.get("fields") or {}).items():
        if name not in WITHHELD_FIELDS and name not in data:
            data[name] = value
    payload = {"type": kind, "timestamp": iso(now), "data": data}
    return json.dumps(payload, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
