"""The base handlers: services as properties, one JSON envelope, one error shape."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pymongo
from marshmallow import Schema
from pymongo.errors import PyMongoError
from tornado import web

from server.app import idempotency, logs, schemas
from server.app.audit import actor_of
from server.app.errors import (
    RETRY_AFTER_UNAVAILABLE,
    Forbidden,
    ServiceError,
    StorageUnavailable,
    TooLarge,
    Unauthorized,
    ValidationFailed,
    envelope,
    retry_after,
)
from server.app.metrics import METRICS
from server.app.node import Node
from server.app.schemas import DuplicateKey, parse_json
from server.auth import origins
from server.auth.credentials import Principal, looks_like_token

log = logging.getLogger("notify.api")
# A route's id parameter (a user id, a notification id): what the schemas accept.
ID = f"({schemas.ID_CHARS})"
# Built once: json.dumps with an argument builds a new encoder on every call.
_to_json = json.JSONEncoder(ensure_ascii=False).encode

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "rate_limited",
    503: "storage_unavailable",
}

# CORS for portals on other Origins. Callers send bearer credentials, never cookies: so no
# Access-Control-Allow-Credentials, and the dashboard (cookies) stays same-origin.
CORS_REQUEST_HEADERS = "Authorization, Content-Type, X-Request-Id, Idempotency-Key, Last-Event-ID"
CORS_EXPOSED_HEADERS = "X-Request-Id, Retry-After, Idempotent-Replayed"  # what clients read
CORS_MAX_AGE = "600"  # short: an Origin the operator removes stops working within minutes


class BaseHandler(web.RequestHandler):
    """Gives handlers the node's services; no handler talks to MongoDB itself."""

    @property
    def services(self) -> Node:
        return self.settings["services"]

    @property
    def config(self):
        return self.services.settings

    _request_id: str | None = None

    @property
    def request_id(self) -> str:
        """This request's id: the caller's X-Request-Id if it is a sane one, else a new one."""
        if self._request_id is None:
            self._request_id = logs.request_id(self.request.headers.get("X-Request-Id"))
        return self._request_id

    def set_default_headers(self) -> None:
        self.set_header("X-Request-Id", self.request_id)

    @property
    def log_path(self) -> str:
        """This request's path as log lines show it (a pseudonym for a user id)."""
        return logs.loggable_path(self.request.path, self.services.log_key)

    def _request_summary(self) -> str:
        # Tornado's own log lines about this request (errors): the path without its query
        # (a token) and with the user id's pseudonym.
        return f"{self.request.method} {self.log_path} ({self.request.remote_ip})"

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, web.HTTPError):
            return super().log_exception(typ, value, tb)
        # Tornado's version adds repr(request), whose URI holds the query and the user id.
        web.app_log.error(
            "Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb)
        )

    async def prepare(self) -> None:
        logs.REQUEST_ID.set(self.request_id)  # every line logged for this request carries it
        # One storage budget for the whole request, so that a hung MongoDB is a 503, not a
        # hung request. Entered here and never left: each request runs in its own task,
        # whose context (where the deadline lives) ends with it.
        pymongo.timeout(self.config.storage_timeout).__enter__()


class APIHandler(BaseHandler):
    """JSON in, the contract's envelope out; every error is the same JSON shape."""

    principal: Principal | None = None
    # Routes that read or change a user's notifications name their audit action here.
    audit_action: str = ""
    audit_target: str = ""
    _cors_origin: str | None = ""  # "": not yet worked out

    @property
    def cors_origin(self) -> str | None:
        """The caller's Origin when it is another, allowed one: answers then carry CORS headers."""
        if self._cors_origin == "":
            request = self.request
            self._cors_origin = origins.cross_origin(
                request.headers.get("Origin"), request.host, request.protocol, self.config.origins
            )
        return self._cors_origin

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        # Here, not in each method: send_error() resets the headers to these defaults, and
        # an error the page cannot read (401, 429...) would hide the envelope from it.
        if self.cors_origin:
            self.set_header("Access-Control-Allow-Origin", self.cors_origin)
            self.set_header("Vary", "Origin")
            self.set_header("Access-Control-Expose-Headers", CORS_EXPOSED_HEADERS)

    async def options(self, *args: str) -> None:
        """A CORS preflight, or a plain OPTIONS: the route's methods; no credential needed."""
        origin = self.request.headers.get("Origin")
        same = origin and origins.same_host(origin, self.request.host, self.request.protocol)
        if origin and not self.cors_origin and not same:
            # A 403 rather than a 204 without CORS headers: the browser blocks either way,
            # but the access log and the browser's network panel then say why, as the
            # socket's refusal of the same Origin does.
            raise Forbidden("this Origin is not allowed")
        methods = ", ".join(self.allowed_methods())
        self.set_header("Allow", methods)
        if self.cors_origin:
            self.set_header("Access-Control-Allow-Methods", methods)
            self.set_header("Access-Control-Allow-Headers", CORS_REQUEST_HEADERS)
            self.set_header("Access-Control-Max-Age", CORS_MAX_AGE)
        self.set_status(204)
        self.finish()

    def allowed_methods(self) -> list[str]:
        """The methods this route documents; OPTIONS, answered on every route, is implied."""
        return [m for m in self.SUPPORTED_METHODS if m != "OPTIONS" and _implements(self, m)]

    def check_xsrf_cookie(self) -> None:
        """API calls carry a bearer credential, not a cookie: no XSRF token needed."""

    async def prepare(self) -> None:
        await super().prepare()
        # A request without a credential counts against its address at once (429 past its
        # limit); one with a credential is judged by it (``authenticate``): per credential
        # first, as a clinic shares one address.
        if "Authorization" not in self.request.headers:
            self._count_address()
        if len(self.request.body or b"") > self.config.max_body_bytes:
            raise TooLarge(f"the body is larger than {self.config.max_body_bytes} bytes")

    # ---- credentials -------------------------------------------------------------------

    async def authenticate(self) -> Principal:
        """The caller behind ``Authorization: Bearer``: an API key or a connection token."""
        limits, services = self.services.limits, self.services
        header = self.request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        try:
            if scheme.lower() != "bearer" or not credential:
                raise Unauthorized("send Authorization: Bearer <API key or token>")
            if looks_like_token(credential):
                principal = services.tokens.check(credential)  # a signature: no cost to try
            elif services.api_keys.known_good(credential):
                principal = await services.api_keys.check(credential)
            else:
                # A key this node has not seen valid lately costs a MongoDB lookup: the
                # address lends one request for it (a 429 past its limit, not looked up),
                # given back if the key proves valid.
                self._count_address()
                principal = await services.api_keys.check(credential)
                limits.rest_ip.give(self.request.remote_ip or "")
        except Unauthorized:
            self._count_address()
            raise
        self.principal = principal
        limits.check_credential(principal.kind, f"{principal.kind}:{principal.id}", principal.rate)
        return principal

    _counted = False  # this request already took from its address's bucket

    def _count_address(self) -> None:
        """Count this request against its address, once; RateLimited past the limit."""
        if not self._counted:
            self._counted = True
            self.services.limits.rest_ip.check(self.request.remote_ip or "")

    async def require_scope(self, scope: str) -> Principal:
        """Authenticate and demand an API key with ``scope``."""
        principal = await self.authenticate()
        principal.require_scope(scope)
        return principal

    async def require_user(self, user_id: str, *scopes: str) -> tuple[Principal, tuple[str, ...]]:
        """Authenticate as that user's token or a key with one of ``scopes`` (``read``).

        Returns the user's roles.
        """
        self.audit_target = user_id
        principal = await self.authenticate()
        scopes = scopes or ("read",)
        if principal.kind == "api_key" and len(scopes) > 1:
            # The first scope the key holds, so the refusal (if any) names the first one.
            held = [s for s in scopes if s in principal.scopes or "admin" in principal.scopes]
            scopes = (held or scopes)[:1]
        principal.require_user(user_id, scopes[0])
        roles = principal.roles if principal.kind == "token" else None
        return principal, await self.services.notifications.roles_of(user_id, roles)

    # ---- input -------------------------------------------------------------------------

    def body(self) -> Any:
        """The request body as JSON; a 400 if it is not."""
        try:
            return parse_json(self.request.body or b"")
        except DuplicateKey as exc:
            raise ValidationFailed("the body is not valid JSON", {"_body": [str(exc)]}) from None
        except (ValueError, RecursionError):
            raise ValidationFailed("the body is not valid JSON") from None

    def load(self, schema: Schema, data: Any) -> dict:
        """Validate with a schema; a 400 with per-field messages if it fails."""
        if not isinstance(data, dict):
            raise ValidationFailed("expected a JSON object")
        return schemas.load(schema, data)

    def query(self, schema: Schema) -> dict:
        """Validate the query string with a schema (each argument given once)."""
        args = {}
        for name, values in self.request.query_arguments.items():
            if len(values) != 1:
                raise ValidationFailed("the request is not valid", {name: ["give it once"]})
            args[name] = values[0].decode("utf-8", "replace")
        return self.load(schema, args)

    # ---- output ------------------------------------------------------------------------

    def ok(self, data: Any, status: int = 200) -> None:
        """Write the success envelope."""
        self.set_status(status)
        self.finish(_to_json({"success": True, "data": data}))

    async def once(self, body: Any, status: int, make: Callable[[], Awaitable[Any]]) -> None:
        """Answer with ``make()``'s data, once per ``Idempotency-Key`` (CONTRACT §10).

        Without the header the request simply runs. With it, the first request with that
        key (for this API key) runs and its answer is kept; a retry gets that answer again,
        status and body as they were, and nothing new is stored.
        """
        key = self.request.headers.get(idempotency.HEADER)
        if key is None:
            self.ok(await make(), status)
            return
        store = self.services.idempotency
        route = f"{self.request.method} {self.request.path}"
        held = await store.begin(
            self.principal.id, idempotency.check_key(key), idempotency.fingerprint(route, body)
        )
        if isinstance(held, idempotency.Replay):
            self.set_header("Idempotent-Replayed", "true")
            self.set_status(held.status)
            self.finish(held.body)
            return
        try:
            data = await make()
        except BaseException:
            with contextlib.suppress(Exception):
                await store.abandon(held)
            raise
        text = _to_json({"success": True, "data": data})
        try:
            await store.finish(held, status, text)
        except PyMongoError:  # stored, but not its answer: a retry waits, then runs again
            log.warning("the answer to an Idempotency-Key was not kept")
        self.set_status(status)
        self.finish(text)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        code, message, fields = STATUS_CODES.get(status_code, "internal_error"), None, {}
        if isinstance(exc, ServiceError):
            self.set_status(exc.status)
            code, message, fields = exc.code, exc.message, exc.fields
            if getattr(exc, "retry_after", None) is not None:
                self.set_header("Retry-After", retry_after(exc.retry_after))
        elif isinstance(exc, PyMongoError):
            self.set_status(503)
            code, message = "storage_unavailable", "storage is unavailable; try again"
            self.set_header("Retry-After", retry_after(RETRY_AFTER_UNAVAILABLE))
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message if exc.log_message and status_code < 500 else None
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(_to_json(envelope(code, message or self._reason, fields)))

    def on_finish(self) -> None:
        """Count a request without a valid credential against its address; audit who read or
        changed a user's notifications, and every refusal (403).

        An entry names the caller, the user, the route and the source address: never a
        body, a title or a credential.
        """
        status, principal = self.get_status(), self.principal
        if principal is None:  # no valid credential (a route that never asked for one)
            if not self._counted:
                self.services.limits.rest_ip.take(self.request.remote_ip or "")
            return
        if not (status == 403 or (self.audit_action and status < 400)):
            return
        detail: dict[str, Any] = {
            "method": self.request.method,
            "path": self.request.path,
            "status": status,
            "ip": self.request.remote_ip,
            "request_id": self.request_id,
        }
        if principal.kind == "api_key":
            detail["key_name"] = principal.name
        action = "access.denied" if status == 403 else self.audit_action
        self.services.audit.note(actor_of(principal), action, self.audit_target, **detail)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, StorageUnavailable | PyMongoError):
            METRICS.storage_errors.inc()
            log.warning("storage unavailable on %s %s", self.request.method, self.log_path)
        elif not isinstance(value, ServiceError | web.HTTPError):
            super().log_exception(typ, value, tb)


class NotFoundHandler(APIHandler):
    """The catch-all: every unknown path is a JSON 404."""

    async def prepare(self) -> None:
        await super().prepare()  # an address scanning paths meets its limit too
        raise web.HTTPError(404)


def _implements(handler: web.RequestHandler, method: str) -> bool:
    impl = getattr(type(handler), method.lower(), None)
    return impl is not None and impl is not getattr(web.RequestHandler, method.lower(), None)
