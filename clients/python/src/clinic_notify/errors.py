"""The one exception of the client: a refusal or failure, with the contract's error code."""

from __future__ import annotations

import json
from typing import Any


class NotifyError(Exception):
    """A call failed.

    ``code`` is the contract's error code (``validation_error``, ``unauthorized``,
    ``forbidden``, ``not_found``, ``conflict``, ``rate_limited``, ``storage_unavailable``...),
    or ``unreachable`` when no HTTP answer came; ``status`` the HTTP status (None when
    unreachable); ``fields`` the per-field messages of a ``validation_error``;
    ``retry_after`` the seconds the service asked to wait, if it did.
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        fields: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.fields = fields or {}
        self.retry_after = retry_after

    @property
    def refused(self) -> bool:
        """True for answers that retrying the same request cannot change (4xx but 429)."""
        return self.status is not None and 400 <= self.status < 500 and self.status != 429

    def __str__(self) -> str:
        text = f"{self.status or '-'} {self.code}: {self.message}"
        return f"{text} {json.dumps(self.fields)}" if self.fields else text
