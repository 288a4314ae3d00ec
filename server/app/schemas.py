"""marshmallow schemas: the single definition of every payload the service accepts."""

from __future__ import annotations

import base64
import functools
import itertools
import json
import math
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.hazmat.primitives.asymmetric import ec
from marshmallow import (
    INCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from server.app.errors import ValidationFailed
from server.app.timeutil import iso
from server.feed.timeline import EVENTS as TIMELINE_EVENTS
from server.webhooks.deliveries import STATUSES as DELIVERY_STATUSES
from server.webhooks.events import EVENT_TYPES as WEBHOOK_EVENTS

TYPES = ("appointment", "lab_result", "ai_analysis", "system_alert", "custom")
PRIORITIES = ("low", "normal", "high", "critical")
APPOINTMENT_STATUSES = ("confirmed", "cancelled", "rescheduled", "reminder")
SCOPES = ("notify", "broadcast", "tokens", "read", "admin")
MAX_RECIPIENTS = 1000
MAX_DATA_BYTES = {"custom": 16384, "system_alert": 4096}
MAX_DATA_DEPTH = 8
MAX_ESCALATION_STEPS = 5
MAX_ESCALATION_USERS = 100
MAX_NOTE = 1000
INT64 = 2**63  # BSON's largest integers: a bigger one cannot be stored
# Times a client may give: Python's datetime overflows near years 1 and 9999.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)

ID_CHARS = r"[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}"  # also the routes' path parameter
ID_PATTERN = rf"^{ID_CHARS}$"
ID_RE = re.compile(ID_PATTERN)
ROLE_PATTERN = r"^[a-z][a-z0-9_\-]{0,31}$"
CURSOR_PATTERN = r"^[0-9]{1,18}$"
FEED_PAGE_PATTERN = r"^(?:[cn]\.)?[0-9]{1,18}$"

DEFAULT_TITLES = {
    "lab_result": "Lab results ready",
    "ai_analysis": "AI analysis complete",
    "system_alert": "System alert",
}


def Id(**kw: Any) -> fields.String:
    """A user, notification or object id: a short printable string."""
    return fields.String(validate=validate.Regexp(ID_PATTERN, error="not a valid id"), **kw)


def Role(**kw: Any) -> fields.String:
    """A role name such as ``patient`` or ``staff``."""
    return fields.String(validate=validate.Regexp(ROLE_PATTERN, error="not a valid role"), **kw)


class JsonBool(fields.Boolean):
    """A JSON ``true`` or ``false``, nothing else (not 1, "yes" or "true")."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if type(value) is not bool:
            raise self.make_error("invalid")
        return value


class Strict(Schema):
    """Base schema: unknown fields are an error, never silently kept."""

    class Meta:
        unknown = RAISE


def load(schema: Schema, data: Any, message: str = "the request is not valid") -> dict:
    """Load with a schema; a ValidationFailed (400) with per-field messages if it fails."""
    try:
        return schema.load(data)
    except ValidationError as err:
        messages = err.messages if isinstance(err.messages, dict) else {"_schema": err.messages}
        raise ValidationFailed(message, messages) from None


def check_json_object(value: dict, limit: int | None) -> None:
    """Refuse operator keys, deep nesting and oversized objects in free-form ``data``."""

    def walk(node: Any, depth: int) -> None:
        if depth > MAX_DATA_DEPTH:
            raise ValidationError(f"nested deeper than {MAX_DATA_DEPTH} levels")
        if isinstance(node, dict):
            for key, child in node.items():
                if not isinstance(key, str) or not key or key.startswith("$") or "\x00" in key:
                    raise ValidationError(f"key {key!r} is not allowed")
                walk(child, depth + 1)
        elif isinstance(node, list):
            for child in node:
                walk(child, depth + 1)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValidationError("numbers must be finite")
        elif isinstance(node, int) and not -INT64 <= node < INT64:
            raise ValidationError("integers must fit in 64 bits")

    walk(value, 0)
    if limit is not None and len(json.dumps(value, separators=(",", ":"))) > limit:
        raise ValidationError(f"larger than {limit} bytes")


class AppointmentData(Strict):
    appointment_id = Id(required=True)
    status = fields.String(required=True, validate=validate.OneOf(APPOINTMENT_STATUSES))
    starts_at = fields.AwareDateTime(format="iso")


class LabResultData(Strict):
    lab_result_id = Id(required=True)
    test_name = fields.String(validate=validate.Length(1, 200))


class AiAnalysisData(Strict):
    analysis_id = Id(required=True)
    analysis_type = fields.String(required=True, validate=validate.Length(1, 100))


DATA_SCHEMAS: dict[str, type[Schema]] = {
    "appointment": AppointmentData,
    "lab_result": LabResultData,
    "ai_analysis": AiAnalysisData,
}


@functools.cache
def shared(schema: type[Schema]) -> Schema:
    """One reusable instance of a schema class, for hot paths (a notification request, a
    socket connect): building an instance deep-copies its fields, which costs more than
    the load itself. Schemas here keep no state between loads."""
    return schema()


def load_data(kind: str, data: dict) -> dict:
    """Validate ``data`` for a notification type; returns it JSON-ready."""
    schema = DATA_SCHEMAS.get(kind)
    if schema is None:
        check_json_object(data, MAX_DATA_BYTES.get(kind))
        return data
    loaded = shared(schema).load(data)
    if loaded.get("starts_at") is not None:
        loaded["starts_at"] = iso(loaded["starts_at"].astimezone(UTC))
    return loaded


def default_title(kind: str, data: dict) -> str | None:
    """The contract's default title for a type, or None where a title is required."""
    if kind == "appointment":
        return f"Appointment {data['status']}"
    return DEFAULT_TITLES.get(kind)


class _Content(Strict):
    """Fields shared by notifications and broadcasts."""

    type = fields.String(load_default="custom", validate=validate.OneOf(TYPES))
    priority = fields.String(load_default="normal", validate=validate.OneOf(PRIORITIES))
    title = fields.String(validate=validate.Length(1, 200))
    message = fields.String(load_default="", validate=validate.Length(0, 5000))
    data = fields.Dict(keys=fields.String(), load_default=dict)
    deliver_at = fields.AwareDateTime(
        format="iso", allow_none=True, load_default=None, validate=validate.Range(EARLIEST, LATEST)
    )
    expires_at = fields.AwareDateTime(
        format="iso", allow_none=True, load_default=None, validate=validate.Range(EARLIEST, LATEST)
    )

    @validates_schema(skip_on_field_errors=True)
    def _content(self, item: dict, **_: Any) -> None:
        try:
            item["data"] = load_data(item["type"], item["data"])
        except ValidationError as err:
            raise ValidationError({"data": err.messages}) from None
        if not item.get("title"):
            title = default_title(item["type"], item["data"])
            if title is None:
                raise ValidationError({"title": ["Missing data for required field."]})
            item["title"] = title
        start = item.get("deliver_at")
        end = item.get("expires_at")
        if start and end and end <= start:
            raise ValidationError({"expires_at": ["must be after deliver_at"]})

    @post_load
    def _utc(self, item: dict, **_: Any) -> dict:
        for key in ("deliver_at", "expires_at"):
            if item.get(key) is not None:
                item[key] = item[key].astimezone(UTC)
        return item


class EscalationStep(Strict):
    """One step of an escalation ladder (CONTRACT §8): when, and to whom."""

    after_seconds = fields.Integer(
        required=True, strict=True, validate=validate.Range(1, 366 * 86400)
    )
    to_role = fields.String(
        validate=[
            validate.Regexp(ROLE_PATTERN, error="not a valid role"),
            validate.NoneOf(["all"], error="a role: everyone is not an escalation target"),
        ]
    )
    to_user_ids = fields.List(
        Id(),
        validate=validate.Length(1, MAX_ESCALATION_USERS, error="between 1 and 100 ids"),
    )

    @validates_schema
    def _one_target(self, item: dict, **_: Any) -> None:
        if ("to_role" in item) == ("to_user_ids" in item):
            raise ValidationError("give exactly one of to_role or to_user_ids", "to_role")

    @post_load
    def _unique(self, item: dict, **_: Any) -> dict:
        if "to_user_ids" in item:
            item["to_user_ids"] = list(dict.fromkeys(item["to_user_ids"]))
        return item


class NotificationIn(_Content):
    """``POST /v1/notifications``: one user (``user_id``) or many (``user_ids``)."""

    type = fields.String(required=True, validate=validate.OneOf(TYPES))
    user_id = Id()
    user_ids = fields.List(
        Id(), validate=validate.Length(1, MAX_RECIPIENTS, error="between 1 and 1000 ids")
    )
    ack_required = JsonBool()
    escalation = fields.List(
        fields.Nested(EscalationStep),
        allow_none=True,
        load_default=None,
        validate=validate.Length(1, MAX_ESCALATION_STEPS, error="between 1 and 5 steps"),
    )

    @validates_schema
    def _recipients(self, item: dict, **_: Any) -> None:
        if ("user_id" in item) == ("user_ids" in item):
            raise ValidationError("give exactly one of user_id or user_ids", "user_id")

    @validates_schema(skip_on_field_errors=True)
    def _ladder_order(self, item: dict, **_: Any) -> None:
        steps = item.get("escalation") or []
        for level, (before, step) in enumerate(itertools.pairwise(steps), start=1):
            if step["after_seconds"] <= before["after_seconds"]:
                message = "must be greater than the step before's"
                raise ValidationError({"escalation": {level: {"after_seconds": [message]}}})

    @validates_schema(skip_on_field_errors=True)
    def _acknowledgement(self, item: dict, **_: Any) -> None:
        # A ladder climbs until someone acknowledges: without acknowledgement it has no end.
        if item.get("escalation") and item.get("ack_required") is False:
            raise ValidationError("an escalation ladder needs ack_required", "ack_required")

    @post_load
    def _ack_default(self, item: dict, **_: Any) -> dict:
        if "ack_required" not in item:
            item["ack_required"] = item["priority"] == "critical" or bool(item["escalation"])
        return item


class BroadcastIn(_Content):
    """``POST /v1/broadcasts``: everyone (``all``) or one role."""

    type = fields.String(load_default="system_alert", validate=validate.OneOf(TYPES))
    audience = fields.String(
        required=True,
        validate=validate.Regexp(r"^(all|[a-z][a-z0-9_\-]{0,31})$", error="all or a role"),
    )
    title = fields.String(required=True, validate=validate.Length(1, 200))
    message = fields.String(required=True, validate=validate.Length(1, 5000))


class TestNotificationIn(Strict):
    """``POST /v1/ws/test-notification`` (kept from the earlier system)."""

    user_id = Id(required=True)
    title = fields.String(required=True, validate=validate.Length(1, 200))
    message = fields.String(required=True, validate=validate.Length(1, 5000))


class TokenIn(Strict):
    """``POST /v1/tokens``."""

    user_id = Id(required=True)
    roles = fields.List(Role(), load_default=list, validate=validate.Length(0, 20))
    ttl_seconds = fields.Integer(strict=True, validate=validate.Range(30, 30 * 86400))


class FeedQuery(Strict):
    """Query of ``GET /v1/users/{user_id}/notifications``."""

    unread = fields.Boolean(load_default=False)
    type = fields.String(validate=validate.OneOf(TYPES))
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 200))
    before = fields.String(validate=validate.Regexp(FEED_PAGE_PATTERN, error="not a cursor"))


class PresenceQuery(Strict):
    """Query of ``GET /v1/presence``."""

    user_ids = fields.String(
        required=True,
        validate=[
            validate.Length(1, 20000),
            # ids' characters only: this also keeps the URL within Tornado's header limit
            validate.Regexp(r"^[A-Za-z0-9._:@,\-]*$", error="1 to 500 comma-separated ids"),
        ],
    )

    @post_load
    def _split(self, item: dict, **_: Any) -> dict:
        ids = [part for part in item["user_ids"].split(",") if part]
        errors = [i for i in ids if not ID_RE.match(i)]
        if errors or not 1 <= len(ids) <= 500:
            raise ValidationError({"user_ids": ["1 to 500 comma-separated ids"]})
        item["user_ids"] = list(dict.fromkeys(ids))
        return item


class SocketQuery(Strict):
    """Query of the socket URL."""

    token = fields.String(validate=validate.Length(1, 4096))
    since = fields.String(validate=validate.Regexp(CURSOR_PATTERN, error="not a cursor"))
    user_id = Id()


class ApiKeyIn(Strict):
    """A new API key (command line or dashboard)."""

    name = fields.String(required=True, validate=validate.Length(1, 100))
    scopes = fields.List(
        fields.String(validate=validate.OneOf(SCOPES)), required=True, validate=validate.Length(1)
    )
    # Its own REST requests per second (empty: the node's default; 0: no limit).
    rate = fields.Float(allow_nan=False, validate=validate.Range(0, 100_000))


class WebhookIn(Strict):
    """``POST /v1/webhooks``: where to send which events (the URL is checked by the service)."""

    url = fields.String(required=True, validate=validate.Length(1, 2048))
    events = fields.List(
        fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)),
        required=True,
        validate=validate.Length(1, 50),
    )
    description = fields.String(
        allow_none=True, load_default=None, validate=validate.Length(0, 500)
    )


class DeliveriesQuery(Strict):
    """Query of ``GET /v1/webhooks/{id}/deliveries``."""

    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES))
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 500))


# Client frames on the socket: one schema per frame type.
class AckIn(Strict):
    """A delivery receipt over REST (the SSE transport's ``ack``): which connection saw it."""

    connection_id = fields.String(
        validate=validate.Regexp(r"^[A-Za-z0-9._:\-]{1,64}$", error="not a connection id"),
        load_default=None,
    )


class AckFrame(Strict):
    type = fields.Constant("ack")
    id = Id(required=True)


class ReadFrame(Strict):
    type = fields.Constant("read")
    id = Id(required=True)


class AcknowledgeIn(Strict):
    """``POST /v1/users/{user_id}/notifications/{id}/acknowledge``: an optional note."""

    note = fields.String(allow_none=True, load_default=None, validate=validate.Length(0, MAX_NOTE))


class AcknowledgeFrame(AcknowledgeIn):
    type = fields.Constant("acknowledge")
    id = Id(required=True)


class BareFrame(Strict):
    type = fields.String(required=True)


class AuthFrame(Strict):
    type = fields.Constant("auth")
    token = fields.String(required=True, validate=validate.Length(1, 4096))


FRAME_SCHEMAS: dict[str, Schema] = {
    "ack": AckFrame(),
    "read": ReadFrame(),
    "acknowledge": AcknowledgeFrame(),
    "read_all": BareFrame(),
    "ping": BareFrame(),
    "auth": AuthFrame(),
}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class DuplicateKey(ValueError):
    """A JSON object names the same key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    # Python keeps the last of repeated keys, other parsers the first: a proxy or validator
    # in front could then check one value while the service stores another. Refuse both.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise DuplicateKey(f"the key {key[:40]!r} appears twice in one object")
    return obj


# Built once: json.loads with an argument builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, object_pairs_hook=_unique_keys)


def parse_json(raw: str | bytes) -> Any:
    """JSON text to Python; raises ValueError or RecursionError for what cannot be kept.

    The one JSON parser of everything a client sends (bodies, socket frames, form fields):
    a key repeated in an object is a ``DuplicateKey`` (a ValueError).

    Python's parser takes NaN and Infinity, and lone surrogates (``"\\ud800"``, or such
    bytes, which it decodes with ``surrogatepass``), none of which MongoDB or a JSON answer
    can carry: they are refused here rather than fail later as a 500.
    """
    if isinstance(raw, bytes | bytearray):  # as json.loads does
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    elif raw.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
    else:
        text = raw
    value = _DECODER.decode(text)
    if "\\u" in text:  # an escape may make a lone surrogate: check what it became
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    else:  # every string came from the text itself, which must then be valid Unicode
        text.encode("utf-8")  # UnicodeEncodeError: a ValueError
    return value


def frame_object(raw: str | bytes) -> dict:
    """A socket text frame parsed as a JSON object; ValidationError for anything else."""
    if isinstance(raw, bytes):
        raise ValidationError({"_frame": ["binary frames are not accepted"]})
    try:
        frame = parse_json(raw)
    except DuplicateKey as exc:
        raise ValidationError({"_frame": [str(exc)]}) from None
    except (ValueError, RecursionError):
        raise ValidationError({"_frame": ["not JSON"]}) from None
    if not isinstance(frame, dict):
        raise ValidationError({"_frame": ["must be a JSON object"]})
    return frame


def load_frame(raw: str | bytes) -> dict:
    """Parse and validate one client frame; raises ValidationError with field messages."""
    frame = frame_object(raw)
    kind = frame.get("type")
    schema = FRAME_SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ValidationError({"type": [f"must be one of {sorted(FRAME_SCHEMAS)}"]})
    loaded = schema.load(frame)
    loaded["type"] = kind
    return loaded


# ---- Web Push and preferences (CONTRACT §6, §7) -------------------------------------------

HHMM_PATTERN = r"^(?:[01][0-9]|2[0-3]):[0-5][0-9]$"
TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,3}$"


def _b64url_bytes(value: str) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+={0,2}", value):
        raise ValidationError("not base64url")
    text = value.rstrip("=")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise ValidationError("not base64url") from None


def _p256_point(value: str) -> None:
    raw = _b64url_bytes(value)
    if len(raw) != 65 or raw[0] != 4:
        raise ValidationError("not an uncompressed P-256 point (65 bytes, base64url)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise ValidationError("not a point on P-256") from None


def _auth_secret(value: str) -> None:
    if len(_b64url_bytes(value)) != 16:
        raise ValidationError("not a 16-byte secret (base64url)")


class SubscriptionKeys(Strict):
    p256dh = fields.String(required=True, validate=[validate.Length(1, 200), _p256_point])
    auth = fields.String(required=True, validate=[validate.Length(1, 100), _auth_secret])


class SubscriptionIn(Strict):
    """``POST /v1/users/{id}/push-subscriptions``: the browser's PushSubscription.toJSON()."""

    endpoint = fields.String(required=True, validate=validate.Length(1, 2048))
    expirationTime = fields.Integer(  # the browser's name
        allow_none=True, load_default=None, validate=validate.Range(0, 2**53)
    )
    keys = fields.Nested(SubscriptionKeys, required=True)
    device = fields.String(allow_none=True, load_default=None, validate=validate.Length(1, 100))


def _timezone(value: str) -> None:
    try:
        ZoneInfo(value)
    except (ValueError, OSError, ZoneInfoNotFoundError):
        raise ValidationError("not a known IANA time zone") from None


class QuietHoursIn(Strict):
    start = fields.String(
        required=True, validate=validate.Regexp(HHMM_PATTERN, error="not a time HH:MM")
    )
    end = fields.String(
        required=True, validate=validate.Regexp(HHMM_PATTERN, error="not a time HH:MM")
    )
    timezone = fields.String(
        required=True,
        validate=[
            validate.Length(1, 64),
            validate.Regexp(TIMEZONE_PATTERN, error="not a known IANA time zone"),
            _timezone,
        ],
    )

    @validates_schema(skip_on_field_errors=True)
    def _span(self, item: dict, **_: Any) -> None:
        if item["start"] == item["end"]:
            raise ValidationError({"end": ["must differ from start"]})


def StrictBool(**kw: Any) -> fields.Boolean:
    """true or false, not "yes", 1 or "on" (JSON has booleans)."""
    return fields.Boolean(truthy={True}, falsy={False}, **kw)


class TypePreferenceIn(Strict):
    push = StrictBool(required=True)


class PreferencesIn(Strict):
    """``PUT /v1/users/{id}/preferences``: replaces the user's preferences."""

    push = StrictBool(load_default=True)
    types = fields.Dict(
        keys=fields.String(validate=validate.OneOf(TYPES)),
        values=fields.Nested(TypePreferenceIn),
        load_default=dict,
    )
    quiet_hours = fields.Nested(QuietHoursIn, allow_none=True, load_default=None)


# ---- Answers: the shapes the service sends, described for the OpenAPI document ------------


class Out(Schema):
    """Base of answer schemas: clients must accept fields added later (``INCLUDE``)."""

    class Meta:
        unknown = INCLUDE


class NotificationOut(Out):
    """A notification or broadcast as the API and the socket show it."""

    id = fields.String(required=True)
    user_id = fields.String(
        required=True, allow_none=True, metadata={"description": "null for a broadcast"}
    )
    audience = fields.String(metadata={"description": "broadcasts only: all or a role"})
    type = fields.String(required=True, validate=validate.OneOf(TYPES))
    priority = fields.String(required=True, validate=validate.OneOf(PRIORITIES))
    title = fields.String(required=True)
    message = fields.String(required=True)
    data = fields.Dict(keys=fields.String(), required=True)
    created_at = fields.DateTime(required=True)
    deliver_at = fields.DateTime(required=True, allow_none=True)
    expires_at = fields.DateTime(required=True, allow_none=True)
    delivered_at = fields.DateTime(required=True, allow_none=True)
    read_at = fields.DateTime(required=True, allow_none=True)
    cursor = fields.String(required=True, allow_none=True, validate=validate.Regexp(CURSOR_PATTERN))
    ack_required = fields.Boolean(
        required=True, metadata={"description": "a person must acknowledge it (CONTRACT §8)"}
    )
    acknowledged_at = fields.DateTime(required=True, allow_none=True)
    acknowledged_by = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "the user id, key:<key name> or staff:<username>"},
    )
    escalation = fields.List(
        fields.Nested(EscalationStep),
        required=True,
        allow_none=True,
        metadata={"description": "the escalation ladder, or null"},
    )


class TimelineEventOut(Out):
    """One event of a notification's timeline; events add their own fields (CONTRACT §8)."""

    at = fields.DateTime(required=True)
    event = fields.String(required=True, validate=validate.OneOf(TIMELINE_EVENTS))


class NotificationDetailOut(Out):
    """A notification with its timeline, oldest event first."""

    notification = fields.Nested(NotificationOut, required=True)
    timeline = fields.List(fields.Nested(TimelineEventOut), required=True)


class FeedPageOut(Out):
    """A page of a user's feed; ``next`` is the ``before`` of the next page."""

    items = fields.List(fields.Nested(NotificationOut), required=True)
    next = fields.String(
        required=True, allow_none=True, validate=validate.Regexp(FEED_PAGE_PATTERN)
    )


class TokenOut(Out):
    """A minted connection token."""

    token = fields.String(required=True)
    expires_at = fields.DateTime(required=True)


class CountOut(Out):
    """How many (unread, or marked read)."""

    count = fields.Integer(required=True, validate=validate.Range(min=0))


class PresenceOut(Out):
    """One user's presence."""

    online = fields.Boolean(required=True)
    connections = fields.Integer(required=True, validate=validate.Range(min=0))


class NodeStatsOut(Out):
    """One node's share of the connections."""

    node_id = fields.String(required=True)
    connections = fields.Integer(required=True, validate=validate.Range(min=0))
    users = fields.Integer(required=True, validate=validate.Range(min=0))
    started_at = fields.DateTime()
    last_heartbeat_at = fields.DateTime()


class StatsOut(Out):
    """Connection statistics (the earlier system's fields first)."""

    connected_clients = fields.Integer(required=True, validate=validate.Range(min=0))
    connected_users = fields.Integer(required=True, validate=validate.Range(min=0))
    status = fields.String(required=True, validate=validate.OneOf(["active"]))
    node_id = fields.String(metadata={"description": "the node that answered"})
    node_count = fields.Integer(validate=validate.Range(min=1))
    nodes = fields.List(
        fields.Nested(NodeStatsOut), metadata={"description": "live nodes of the cluster"}
    )


class HealthOut(Out):
    """Liveness or readiness."""

    status = fields.String(required=True)
    node_id = fields.String()


class ErrorOut(Out):
    """What went wrong: a stable code, a sentence, and per-field messages for a 400."""

    code = fields.String(required=True)
    message = fields.String(required=True)
    # "fields" would shadow Schema.fields: the attribute has another name
    field_messages = fields.Dict(keys=fields.String(), data_key="fields")


class ErrorEnvelope(Schema):
    """The failure envelope of every error answer."""

    success = fields.Boolean(required=True, validate=validate.Equal(False))
    error = fields.Nested(ErrorOut, required=True)


class SubscriptionOut(Out):
    """A push subscription as the API shows it (its keys never)."""

    id = fields.String(required=True)
    endpoint = fields.String(required=True)
    device = fields.String(required=True, allow_none=True)
    created_at = fields.DateTime(required=True)


class SubscriptionListOut(Out):
    """A user's push subscriptions."""

    items = fields.List(fields.Nested(SubscriptionOut), required=True)


class VapidKeyOut(Out):
    """The service's VAPID public key, for ``pushManager.subscribe``."""

    public_key = fields.String(required=True)


class QuietHoursOut(Out):
    start = fields.String(required=True)
    end = fields.String(required=True)
    timezone = fields.String(required=True)


class PreferencesOut(Out):
    """A user's push preferences."""

    push = fields.Boolean(required=True)
    types = fields.Dict(keys=fields.String(), required=True)
    quiet_hours = fields.Nested(QuietHoursOut, required=True, allow_none=True)


class WebhookOut(Out):
    """A webhook endpoint; ``secret`` only in the answer that created it."""

    id = fields.String(required=True)
    url = fields.String(required=True)
    events = fields.List(fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)), required=True)
    description = fields.String(required=True, allow_none=True)
    created_at = fields.DateTime(required=True)
    secret = fields.String(
        validate=validate.Regexp(r"^whsec_[A-Za-z0-9+/=]{32,}$"),
        metadata={"description": "whsec_ and base64: shown once, when created"},
    )


class WebhookListOut(Out):
    """Every webhook endpoint, without secrets."""

    items = fields.List(fields.Nested(WebhookOut), required=True)


class DeliveryOut(Out):
    """One event sent to one endpoint, with its attempts so far."""

    id = fields.String(required=True)
    webhook_id = fields.String(
        required=True, metadata={"description": "the webhook-id header, the same on every retry"}
    )
    type = fields.String(required=True, validate=validate.OneOf(WEBHOOK_EVENTS))
    notification_id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(DELIVERY_STATUSES))
    attempts = fields.Integer(required=True, validate=validate.Range(min=0))
    last_status = fields.Integer(required=True, allow_none=True)
    next_attempt_at = fields.DateTime(required=True, allow_none=True)
    created_at = fields.DateTime()


class DeliveryListOut(Out):
    """An endpoint's deliveries, newest first."""

    items = fields.List(fields.Nested(DeliveryOut), required=True)


class DeletedOut(Out):
    """What was deleted."""

    id = fields.String(required=True)
