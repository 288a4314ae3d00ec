"""The base handlers: services as properties, one JSON envelope, one error shape."""

from __future__ import annotations

import json
import logging
from typing import Any

from marshmallow import Schema, ValidationError
from pymongo.errors import PyMongoError
from tornado import web

from server.auth import Principal, looks_like_token
from server.errors import ServiceError, StorageUnavailable, TooLarge, Unauthorized, ValidationFailed
from server.metrics import METRICS
from server.node import Node

log = logging.getLogger("notify.api")

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


class BaseHandler(web.RequestHandler):
    """Gives handlers the node's services; no handler talks to MongoDB itself."""

    @property
    def services(self) -> Node:
        return self.settings["services"]

    @property
    def config(self):
        return self.services.settings


class APIHandler(BaseHandler):
    """JSON in, the contract's envelope out; every error is the same JSON shape."""

    principal: Principal | None = None

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def check_xsrf_cookie(self) -> None:
        """API calls carry a bearer credential, not a cookie: no XSRF token needed."""

    async def prepare(self) -> None:
        if len(self.request.body or b"") > self.config.max_body_bytes:
            raise TooLarge(f"the body is larger than {self.config.max_body_bytes} bytes")

    # ---- credentials -------------------------------------------------------------------

    async def authenticate(self) -> Principal:
        """The caller behind ``Authorization: Bearer``: an API key or a connection token."""
        header = self.request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized("send Authorization: Bearer <API key or token>")
        if looks_like_token(credential):
            self.principal = self.services.tokens.check(credential)
        else:
            self.principal = await self.services.api_keys.check(credential)
        return self.principal

    async def require_scope(self, scope: str) -> Principal:
        """Authenticate and demand an API key with ``scope``."""
        principal = await self.authenticate()
        principal.require_scope(scope)
        return principal

    async def require_user(self, user_id: str) -> tuple[Principal, tuple[str, ...]]:
        """Authenticate as that user's token or a ``read`` key; returns the user's roles."""
        principal = await self.authenticate()
        principal.require_user(user_id)
        roles = principal.roles if principal.kind == "token" else None
        return principal, await self.services.notifications.roles_of(user_id, roles)

    # ---- input -------------------------------------------------------------------------

    def body(self) -> Any:
        """The request body as JSON; a 400 if it is not."""
        try:
            return json.loads(self.request.body or b"")
        except (ValueError, RecursionError):
            raise ValidationFailed("the body is not valid JSON") from None

    def load(self, schema: Schema, data: Any) -> dict:
        """Validate with a schema; a 400 with per-field messages if it fails."""
        if not isinstance(data, dict):
            raise ValidationFailed("expected a JSON object")
        try:
            return schema.load(data)
        except ValidationError as err:
            raise ValidationFailed("the request is not valid", fields=_fields(err)) from None

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
        self.finish(json.dumps({"success": True, "data": data}, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        code, message, fields = STATUS_CODES.get(status_code, "internal_error"), None, {}
        if isinstance(exc, ServiceError):
            self.set_status(exc.status)
            code, message, fields = exc.code, exc.message, exc.fields
            if getattr(exc, "retry_after", None) is not None:
                self.set_header("Retry-After", str(max(1, round(exc.retry_after))))
        elif isinstance(exc, PyMongoError):
            self.set_status(503)
            code, message = "storage_unavailable", "storage is unavailable; try again"
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message if exc.log_message and status_code < 500 else None
        if status_code == 405:
            allowed = [m for m in self.SUPPORTED_METHODS if _implements(self, m)]
            self.set_header("Allow", ", ".join(allowed))
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        error: dict[str, Any] = {"code": code, "message": message or self._reason}
        if fields:
            error["fields"] = fields
        self.finish(json.dumps({"success": False, "error": error}, ensure_ascii=False))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, StorageUnavailable | PyMongoError):
            METRICS.storage_errors.inc()
            log.warning("storage unavailable on %s %s", self.request.method, self.request.path)
        elif not isinstance(value, ServiceError | web.HTTPError):
            super().log_exception(typ, value, tb)


class NotFoundHandler(APIHandler):
    """The catch-all: every unknown path is a JSON 404."""

    async def prepare(self) -> None:
        raise web.HTTPError(404)


def _implements(handler: web.RequestHandler, method: str) -> bool:
    impl = getattr(type(handler), method.lower(), None)
    return impl is not None and impl is not getattr(web.RequestHandler, method.lower(), None)


def _fields(err: ValidationError) -> dict:
    messages = err.messages
    return messages if isinstance(messages, dict) else {"_schema": messages}
