"""Domain errors: each carries the contract's error code and HTTP status."""

from __future__ import annotations

from math import ceil
from typing import Any


class ServiceError(Exception):
    """An error that becomes the contract's error envelope."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, fields: dict[str, Any] | None = None, **extra: Any):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.extra = extra


class ValidationFailed(ServiceError):
    status, code = 400, "validation_error"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class TooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class RateLimited(ServiceError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


# What a 503 tells the caller to wait: storage that went away (a MongoDB election takes a
# few seconds) or a node over capacity is rarely back sooner, and clients that all retry at
# once would only make it worse.
RETRY_AFTER_UNAVAILABLE = 5


class StorageUnavailable(ServiceError):
    status, code = 503, "storage_unavailable"
    retry_after = RETRY_AFTER_UNAVAILABLE


class OverCapacity(ServiceError):
    status, code = 503, "over_capacity"
    retry_after = RETRY_AFTER_UNAVAILABLE


def envelope(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contract's failure envelope (fields only when there are some)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"success": False, "error": error}


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up (never sooner than allowed), >= 1."""
    return str(max(1, ceil(seconds)))
