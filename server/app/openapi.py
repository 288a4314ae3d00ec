"""The OpenAPI 3 document of the REST API, built by apispec from the marshmallow schemas.

The table below names each route's method, path, credential, body, query and answer; every
payload's shape comes from ``server.app.schemas``. Error answers follow from what a route takes:
a credential (401, 403, 503), a body (400, 413), a query (400), a path id (404), plus any
route-specific ones (409).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields, validate

from server.app import schemas

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1.0.0"
SECURITY = [{"bearer": []}]

# Path parameters: the same id field the bodies use (the routes' regexes match it).
UserPath = Schema.from_dict({"user_id": schemas.Id(required=True)}, name="UserPath")
NotificationPath = Schema.from_dict(
    {"notification_id": schemas.Id(required=True)}, name="NotificationPath"
)
SubscriptionPath = Schema.from_dict(
    {
        "user_id": schemas.Id(required=True),
        "subscription_id": fields.String(
            required=True, validate=validate.Regexp(r"^[0-9a-f]{1,64}$")
        ),
    },
    name="SubscriptionPath",
)
WebhookPath = Schema.from_dict({"webhook_id": schemas.Id(required=True)}, name="WebhookPath")
DeliveryPath = Schema.from_dict(
    {"webhook_id": schemas.Id(required=True), "delivery_id": schemas.Id(required=True)},
    name="DeliveryPath",
)
UserNotificationPath = Schema.from_dict(
    {"user_id": schemas.Id(required=True), "notification_id": schemas.Id(required=True)},
    name="UserNotificationPath",
)

ERRORS = {
    400: ("ValidationError", "The body or query is not valid; `error.fields` says where."),
    401: ("Unauthorized", "No credential, or an unknown, revoked or expired one."),
    403: ("Forbidden", "The API key lacks the scope, or the token is another user's."),
    404: ("NotFound", "No such notification (for this user), or no such path."),
    409: (
        "Conflict",
        "The notification was already sent or is a broadcast (acknowledge), the delivery is "
        "not failed, or a request with this Idempotency-Key is still running "
        "(`idempotency_in_flight`).",
    ),
    413: ("PayloadTooLarge", "The body is larger than the service accepts."),
    422: (
        "IdempotencyMismatch",
        "This Idempotency-Key was used with another body (`idempotency_mismatch`).",
    ),
    429: ("RateLimited", "Too many requests; retry after `Retry-After` seconds."),
    503: ("StorageUnavailable", "Storage is unreachable or slow; retry."),
}


IDEMPOTENCY_KEY = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": False,
    "description": "1 to 255 printable ASCII characters, scoped to the API key. Within 24 "
    "hours the same key with the same body (the same JSON value) returns the first answer "
    "(same status, body and ids; header `Idempotent-Replayed: true`) and stores nothing new, "
    "on any node; another body is 422 `idempotency_mismatch`; while the first request runs, "
    "409 `idempotency_in_flight`.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
}


@dataclass(frozen=True)
class Route:
    """One operation of the REST API."""

    method: str
    path: str
    summary: str
    answer: Any  # ``data``: a schema class or a JSON Schema of them; None: not enveloped
    status: int = 200
    media: str = "application/json"
    scope: str | None = None  # the API key scope; None: no credential
    own_user: bool = False  # the user's own connection token also reaches it
    body: type[Schema] | None = None
    query: type[Schema] | None = None
    params: type[Schema] | None = None
    extra: tuple[int, ...] = ()
    tag: str = "notifications"
    idempotent: bool = False  # takes an Idempotency-Key header (CONTRACT §10)

    def errors(self) -> list[int]:
        """The error statuses this route can answer."""
        codes = {429, *self.extra}
        if self.idempotent:
            codes |= {409, 422}
        if self.scope:
            codes |= {401, 403, 503}  # an API key is looked up in MongoDB
        if self.body:
            codes |= {400, 413}
        if self.query:
            codes.add(400)
        if self.params:
            codes.add(404)
        return sorted(codes)


def _many(schema: Any) -> dict:
    return {"type": "array", "items": schema}


ROUTES = (
    Route(
        "post", "/v1/tokens", "Mint a connection token for a user", schemas.TokenOut, 201,
        scope="tokens", body=schemas.TokenIn, tag="tokens",
    ),
    Route(
        "post", "/v1/notifications",
        "Store and deliver a notification (user_id), or one per user (user_ids: an array back)",
        {"oneOf": [schemas.NotificationOut, _many(schemas.NotificationOut)]}, 201,
        scope="notify", body=schemas.NotificationIn, idempotent=True,
    ),
    Route(
        "get", "/v1/notifications/{notification_id}",
        "A notification with its timeline: what happened to it, oldest first",
        schemas.NotificationDetailOut, scope="read", params=NotificationPath,
    ),
    Route(
        "delete", "/v1/notifications/{notification_id}",
        "Cancel a scheduled notification not yet sent", schemas.NotificationOut,
        scope="notify", params=NotificationPath, extra=(409,),
    ),
    Route(
        "post", "/v1/broadcasts", "Store and deliver a broadcast to everyone or a role",
        schemas.NotificationOut, 201, scope="broadcast", body=schemas.BroadcastIn,
        idempotent=True,
    ),
    Route(
        "post", "/v1/webhooks",
        "Register a webhook endpoint; its signing secret is in this answer only",
        schemas.WebhookOut, 201, scope="admin", body=schemas.WebhookIn, idempotent=True,
        tag="webhooks",
    ),
    Route(
        "get", "/v1/webhooks", "Every webhook endpoint, without secrets",
        schemas.WebhookListOut, scope="admin", tag="webhooks",
    ),
    Route(
        "delete", "/v1/webhooks/{webhook_id}", "Delete a webhook endpoint and its deliveries",
        schemas.DeletedOut, scope="admin", params=WebhookPath, tag="webhooks",
    ),
    Route(
        "get", "/v1/webhooks/{webhook_id}/deliveries",
        "An endpoint's deliveries, newest first (`status=failed` for the failed ones)",
        schemas.DeliveryListOut, scope="admin", params=WebhookPath,
        query=schemas.DeliveriesQuery, tag="webhooks",
    ),
    Route(
        "post", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
        "One more attempt of a failed delivery, now, with the same webhook-id",
        schemas.DeliveryOut, 202, scope="admin", params=DeliveryPath, extra=(409,),
        tag="webhooks",
    ),
    Route(
        "get", "/v1/users/{user_id}/notifications",
        "A user's feed: critical first, then newest first, paged with `before`",
        schemas.FeedPageOut, scope="read", own_user=True, query=schemas.FeedQuery,
        params=UserPath,
    ),
    Route(
        "get", "/v1/users/{user_id}/unread-count", "How many notifications a user has not read",
        schemas.CountOut, scope="read", own_user=True, params=UserPath,
    ),
    Route(
        "post", "/v1/users/{user_id}/notifications/{notification_id}/read",
        "Mark one notification read (every device of the user hears of it)",
        schemas.NotificationOut, scope="read", own_user=True, params=UserNotificationPath,
    ),
    Route(
        "post", "/v1/users/{user_id}/notifications/{notification_id}/acknowledge",
        "Acknowledge a notification (a person's act; stops its escalation); idempotent",
        schemas.NotificationOut, scope="read", own_user=True, body=schemas.AcknowledgeIn,
        params=UserNotificationPath, extra=(409,),
    ),
    Route(
        "post", "/v1/users/{user_id}/notifications/{notification_id}/ack",
        "A delivery receipt, as the socket's ack frame: for transports without client frames "
        "(SSE); recorded once per connection_id in the timeline",
        schemas.NotificationOut, scope="read", own_user=True, body=schemas.AckIn,
        params=UserNotificationPath,
    ),
    Route(
        "post", "/v1/users/{user_id}/notifications/read-all",
        "Mark all of a user's notifications read; answers how many were marked",
        schemas.CountOut, scope="read", own_user=True, params=UserPath,
    ),
    Route(
        "get", "/v1/presence", "Whether users are online, and with how many sockets",
        {"type": "object", "additionalProperties": "PresenceOut"}, scope="read",
        query=schemas.PresenceQuery, tag="connections",
    ),
    Route(
        "get", "/v1/ws/stats", "Connection statistics", schemas.StatsOut, scope="read",
        tag="connections",
    ),
    Route(
        "post", "/v1/ws/test-notification", "Send a custom test notification to a user",
        schemas.NotificationOut, 201, scope="notify", body=schemas.TestNotificationIn,
    ),
    Route(
        "get", "/v1/push/vapid-public-key",
        "The VAPID public key browsers subscribe with (pushManager.subscribe)",
        schemas.VapidKeyOut, tag="push",
    ),
    Route(
        "post", "/v1/users/{user_id}/push-subscriptions",
        "Subscribe a device to Web Push: 201 when new, 200 when the endpoint is known",
        schemas.SubscriptionOut, 201, scope="notify", own_user=True,
        body=schemas.SubscriptionIn, params=UserPath, extra=(200, 409), tag="push",
    ),
    Route(
        "get", "/v1/users/{user_id}/push-subscriptions",
        "A user's subscribed devices (keys are never shown)",
        schemas.SubscriptionListOut, scope="read", own_user=True, params=UserPath, tag="push",
    ),
    Route(
        "delete", "/v1/users/{user_id}/push-subscriptions/{subscription_id}",
        "Unsubscribe a device", {"type": "object"}, scope="notify", own_user=True,
        params=SubscriptionPath, tag="push",
    ),
    Route(
        "get", "/v1/users/{user_id}/preferences",
        "A user's push preferences and quiet hours (read or notify scope)",
        schemas.PreferencesOut, scope="read", own_user=True, params=UserPath, tag="push",
    ),
    Route(
        "put", "/v1/users/{user_id}/preferences",
        "Replace a user's push preferences and quiet hours (read or notify scope)",
        schemas.PreferencesOut, scope="read", own_user=True, body=schemas.PreferencesIn,
        params=UserPath, tag="push",
    ),
    Route(
        "get", "/v1/openapi.json", "This document (not wrapped in the envelope)", None,
        tag="service",
    ),
    Route("get", "/healthz", "Liveness", schemas.HealthOut, tag="service"),
    Route(
        "get", "/readyz", "Readiness: storage answers", schemas.HealthOut, extra=(503,),
        tag="service",
    ),
    Route(
        "get", "/metrics",
        "Prometheus text format; when metrics are not public, a `read` key is needed",
        None, media="text/plain", extra=(401, 403, 503), tag="service",
    ),
)  # fmt: skip


def build_spec() -> APISpec:
    """The API as an apispec object, every schema converted by the marshmallow plugin."""
    spec = APISpec(
        title="Clinic notification service",
        version=API_VERSION,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={
            "description": "REST API for integrators. Every JSON answer except this document "
            'is an envelope: `{"success": true, "data": ...}` or `{"success": false, '
            '"error": {"code", "message", "fields"?}}`. Live delivery is the WebSocket '
            "`GET /v1/ws/notifications`, and its Server-Sent Events fallback "
            "`GET /v1/sse/notifications` (neither described here)."
        },
    )
    spec.components.security_scheme(
        "bearer",
        {"type": "http", "scheme": "bearer", "description": "an API key, or a connection token"},
    )
    spec.components.schema("ErrorEnvelope", schema=schemas.ErrorEnvelope)
    # A rule marshmallow checks in code (validates_schema), stated for client generators.
    exactly_one = {"oneOf": [{"required": ["user_id"]}, {"required": ["user_ids"]}]}
    spec.components.schema("NotificationIn", exactly_one, schema=schemas.NotificationIn)
    spec.components.schema("PresenceOut", schema=schemas.PresenceOut)
    for status, (name, text) in ERRORS.items():
        response: dict[str, Any] = {
            "description": text,
            "content": {"application/json": {"schema": "ErrorEnvelope"}},
        }
        if status == 429:
            response["headers"] = {
                "Retry-After": {"description": "seconds", "schema": {"type": "integer"}}
            }
        spec.components.response(name, response)
    for route in ROUTES:
        spec.path(path=route.path, operations={route.method: _operation(spec, route)})
    return spec


def _operation(spec: APISpec, route: Route) -> dict:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": _operation_id(route),
        "tags": [route.tag],
        "responses": {str(route.status): _success(spec, route)},
    }
    for code in route.errors():
        if code < 300:  # another success, e.g. 200 for a subscription that was known
            operation["responses"][str(code)] = {**_success(spec, route), "description": "OK"}
        else:
            operation["responses"][str(code)] = ERRORS[code][0]
    if route.scope:
        who = f"an API key with the `{route.scope}` scope (or `admin`)"
        if route.own_user:
            who += ", or the user's own connection token"
        operation["description"] = f"Credential: {who}."
        operation["security"] = SECURITY
    else:
        operation["security"] = []
    parameters: list[dict] = []
    if route.params:
        parameters.append({"in": "path", "schema": route.params})
    if route.query:
        parameters.append({"in": "query", "schema": route.query})
    if route.idempotent:
        parameters.append(IDEMPOTENCY_KEY)
    if parameters:
        operation["parameters"] = parameters
    if route.body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": route.body}},
        }
    return operation


def _success(spec: APISpec, route: Route) -> dict:
    description = {201: "Created", 202: "Accepted"}.get(route.status, "OK")
    if route.answer is None:  # Prometheus text, or this document itself
        schema = {"type": "string" if route.media.startswith("text/") else "object"}
        return {"description": description, "content": {route.media: {"schema": schema}}}
    data = route.answer
    if isinstance(data, dict) and isinstance(data.get("additionalProperties"), str):
        # a map of user id to a schema: apispec resolves names in properties, not here
        ref = spec.components.get_ref("schema", data["additionalProperties"])
        data = {**data, "additionalProperties": ref}
    envelope = {
        "type": "object",
        "required": ["success", "data"],
        "properties": {"success": {"type": "boolean", "enum": [True]}, "data": data},
    }
    return {"description": description, "content": {route.media: {"schema": envelope}}}


def _operation_id(route: Route) -> str:
    words = re.split(r"[^A-Za-z0-9]+", route.path.removeprefix("/v1/"))
    return route.method + "".join(w.title() for w in words if w)


@functools.cache
def document() -> bytes:
    """The OpenAPI document as UTF-8 JSON (built once: it never changes while running)."""
    return json.dumps(build_spec().to_dict(), default=_json_default, indent=1).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):  # range bounds of date-time fields
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")
