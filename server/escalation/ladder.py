"""The ladder's plan: each step queued as due work, and the alerts a step sends.

A step's key, ``escalate:<id>:<level>``, is queued once however often it is planned, and an
alert's ``_id`` is derived from the notification, the level and the target, so a step that
runs again after a crash stores no second alert: the sequencer finds it already stored.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from server.escalation.ack import ACK_EXPIRY, ESCALATE
from server.feed.notifications import sent_at

ALERT_TITLE = "Escalation: not acknowledged"

# One planned piece of due work: (kind, key, due_at, payload, ref).
Work = tuple[str, str, datetime, dict, str]


def step_due(doc: dict, after_seconds: int) -> datetime:
    """When a step is due: ``after_seconds`` from the notification's ``created_at`` (from
    its ``deliver_at`` for a scheduled one: nobody can acknowledge what was not sent)."""
    return sent_at(doc) + timedelta(seconds=after_seconds)


def plan(docs: list[dict]) -> list[Work]:
    """The due work a batch of notifications needs: its ladder's steps, and a note at
    ``expires_at`` for one that needs acknowledgement. Nothing for the rest."""
    work: list[Work] = []
    for doc in docs:
        if not doc.get("ack_required"):
            continue
        nid = doc["_id"]
        for level, step in enumerate(doc.get("escalation") or (), start=1):
            due = step_due(doc, step["after_seconds"])
            work.append((ESCALATE, f"escalate:{nid}:{level}", due, {"level": level}, nid))
        if doc.get("expires_at") is not None:
            work.append((ACK_EXPIRY, f"ack-expiry:{nid}", doc["expires_at"], {}, nid))
    return work


def targets(step: dict) -> list[tuple[str, str]]:
    """The step's targets as ``("user", id)`` or ``("role", name)``."""
    if step.get("to_role"):
        return [("role", step["to_role"])]
    return [("user", user_id) for user_id in step.get("to_user_ids") or ()]


def to_field(step: dict) -> dict:
    """The ``to`` of the step's ``escalated`` timeline event."""
    if step.get("to_role"):
        return {"role": step["to_role"]}
    return {"user_ids": list(step.get("to_user_ids") or ())}


def alert_id(notification_id: str, level: int, target: tuple[str, str], due: datetime) -> str:
    """The alert's ``_id``: the same on every attempt of the step, shaped like an ObjectId
    (its first four bytes the due time) so that it sorts by time like every other id."""
    seconds = int(due.timestamp()) & 0xFFFFFFFF
    digest = hashlib.sha256(f"{notification_id}|{level}|{target[0]}:{target[1]}".encode())
    return (seconds.to_bytes(4, "big") + digest.digest()[:8]).hex()


def alert_payload(doc: dict, level: int) -> dict:
    """What the step's target is sent: a critical ``system_alert`` (CONTRACT §8).

    It names the user and the notification, never the notification's title, message or
    data: a role's alert reaches everyone in the role, and those say no more than needed.
    """
    return {
        "type": "system_alert",
        "priority": "critical",
        "title": ALERT_TITLE,
        "message": (
            f"A {doc['priority']} {doc['type'].replace('_', ' ')} notification to "
            f"{doc['user_id']} has not been acknowledged (escalation level {level})."
        ),
        "data": {"escalated_from": doc["_id"], "user_id": doc["user_id"], "level": level},
        "deliver_at": None,
        "expires_at": None,
        "ack_required": True,
        "escalation": None,
    }
