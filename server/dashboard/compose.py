"""The dashboard's compose form: turned into the API's own payload, validated by the API's
own schemas (NotificationIn, BroadcastIn), stored and delivered by the same services, and
answered with what happened: stored, delivered live to N devices of M users, K offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError

from server.app import schemas
from server.app.errors import ValidationFailed
from server.app.timeutil import iso, utcnow

if TYPE_CHECKING:
    from server.dashboard.service import Dashboard

SEPARATORS = re.compile(r"[\s,;]+")
LOCAL_TIME_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M")


@dataclass
class Outcome:
    """What a send did, for the page after it."""

    kind: str  # "notification" or "broadcast"
    ids: list[str]
    title: str
    scheduled_for: str | None = None
    audience: str | None = None
    recipients: int = 0
    devices: int = 0
    users: int = 0
    offline: int | None = None  # None: not known (a role nobody with it was seen yet)
    notes: list[str] = field(default_factory=list)


def to_payload(form: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, list[str]]]:
    """The API payload a compose form stands for: (kind, payload, errors of the form's own)."""
    errors: dict[str, list[str]] = {}
    payload: dict[str, Any] = {"message": form["message"]}
    for name in ("type", "priority", "title"):
        if form[name].strip():
            payload[name] = form[name].strip()
    payload["data"] = _data(form["data"], errors)
    for name in ("deliver_at", "expires_at"):
        when = _local_time(form[name], form["tz_offset"], name, errors)
        if when is not None:
            payload[name] = when
    target = form["target"]
    if target == "user":
        payload["user_id"] = form["user_id"].strip()
        if not payload["user_id"]:
            errors["user_id"] = ["enter the user's id"]
        return "notification", payload, errors
    if target == "users":
        ids = [i for i in SEPARATORS.split(form["user_ids"]) if i]
        payload["user_ids"] = list(dict.fromkeys(ids))
        if not ids:
            errors["user_ids"] = ["enter one or more user ids"]
        return "notification", payload, errors
    payload["audience"] = "all" if target == "all" else form["role"].strip()
    if not payload["audience"]:
        errors["role"] = ["enter a role, such as patient"]
    return "broadcast", payload, errors


def _data(text: str, errors: dict[str, list[str]]) -> dict:
    if not text.strip():
        return {}
    try:
        value = schemas.parse_json(text)
    except schemas.DuplicateKey as exc:
        errors["data"] = [str(exc)]
        return {}
    except (ValueError, RecursionError):
        errors["data"] = ["not valid JSON"]
        return {}
    if not isinstance(value, dict):
        errors["data"] = ['a JSON object, like {"appointment_id": "a-77"}']
        return {}
    return value


def _local_time(text: str, offset: int, name: str, errors: dict[str, list[str]]) -> str | None:
    """A browser's datetime-local value (its own time zone) as ISO 8601 UTC."""
    text = text.strip()
    if not text:
        return None
    for fmt in LOCAL_TIME_FORMATS:
        try:
            local = datetime.strptime(text, fmt)
        except ValueError:
            continue
        # getTimezoneOffset() is UTC minus local time, in minutes.
        return iso((local + timedelta(minutes=offset)).replace(tzinfo=UTC))
    errors[name] = ["a date and time like 2026-12-02T09:30"]
    return None


def form_errors(messages: Any, kind: str) -> dict[str, list[str]]:
    """The API schema's messages, keyed by the compose form's field names."""
    if not isinstance(messages, dict):
        return {"_schema": _flat(messages)}
    out: dict[str, list[str]] = {}
    for key, value in messages.items():
        name = {"audience": "role", "_schema": "_schema"}.get(key, key)
        if key == "user_ids" and isinstance(value, dict):
            out[name] = [
                f"entry {int(i) + 1}: {m}" for i, msgs in value.items() for m in _flat(msgs)
            ]
        else:
            out.setdefault(name, []).extend(_flat(value))
    return out


def _flat(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        return [m for k, v in value.items() for m in _flat(v, f"{prefix}{k}: ")]
    if isinstance(value, list):
        return [m for v in value for m in _flat(v, prefix)]
    return [f"{prefix}{value}"]


def validate(form: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The validated API request a compose form stands for; ValidationFailed beside fields."""
    kind, payload, errors = to_payload(form)
    schema = schemas.NotificationIn() if kind == "notification" else schemas.BroadcastIn()
    try:
        request = schema.load(payload)
    except ValidationError as err:
        errors = {**form_errors(err.messages, kind), **errors}
        request = None
    if errors or request is None:
        raise ValidationFailed("the notification is not valid", errors)
    return kind, request


async def send(dashboard: Dashboard, form: dict[str, Any], actor: str) -> Outcome:
    """Validate, store and deliver what the compose form says; returns the outcome."""
    kind, request = validate(form)
    scheduled = request.get("deliver_at") is not None and request["deliver_at"] > utcnow()
    if kind == "notification":
        stored = await dashboard.notifications.create(request)
        recipients = [d["user_id"] for d in stored]
        outcome = Outcome(kind, [d["id"] for d in stored], stored[0]["title"])
        outcome.recipients = len(recipients)
        if not scheduled:
            presence = await dashboard.presence(recipients)
            online = [p for p in presence.values() if p["online"]]
            outcome.users = len(online)
            outcome.devices = sum(p["connections"] for p in online)
            outcome.offline = len(recipients) - len(online)
        target = recipients[0] if len(recipients) == 1 else f"{len(recipients)} users"
    else:
        stored = [await dashboard.notifications.broadcast(request)]
        outcome = Outcome(kind, [stored[0]["id"]], stored[0]["title"])
        outcome.audience = target = request["audience"]
        if not scheduled:
            await _broadcast_reach(dashboard, stored[0], outcome)
    if scheduled:
        outcome.scheduled_for = iso(request["deliver_at"])
    await dashboard.audit.record(
        actor,
        f"{kind}.send",
        target,
        ids=outcome.ids[:20],
        count=len(outcome.ids),
        type=request["type"],
        priority=request["priority"],
        scheduled=outcome.scheduled_for,
    )
    return outcome


async def _broadcast_reach(dashboard: Dashboard, doc: dict, outcome: Outcome) -> None:
    """Who a broadcast reached live, and the users seen before with its audience who are
    not online now (they see it in their feed when they connect)."""
    devices, online = dashboard.hub.reach(doc)
    users = len(online)
    known = await dashboard.store.known_users(doc["audience"]) | online
    stats = await dashboard.stats()
    if doc["audience"] == "all":  # the cluster's totals are exactly everyone's sockets
        devices = max(devices, stats["connected_clients"])
        users = max(users, stats["connected_users"])
    elif len(stats.get("nodes", ())) > 1:
        outcome.notes.append("the live figures count this node's sockets only")
    outcome.devices, outcome.users = devices, users
    outcome.recipients = max(len(known), users)
    outcome.offline = max(0, outcome.recipients - users)
