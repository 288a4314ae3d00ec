"""Every operation of the service's REST API, written once for the sync and async clients.

Each method builds a ``Call``; ``NotifyClient`` sends it with ``httpx.Client`` and
``AsyncNotifyClient`` with ``httpx.AsyncClient``; both read the answer with ``read_answer``.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar, Union
from urllib.parse import quote

from clinic_notify.errors import NotifyError

T = TypeVar("T")
Recipients = Union[str, Iterable[str]]
When = Union[datetime, str, None]
RETRY_STATUSES = frozenset({429, 503})
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Call:
    """One REST call: method, path, JSON body, query, and which field of ``data`` to return.

    A write carries an ``Idempotency-Key`` (CONTRACT section 10), made once per call and sent
    again on each of its retries, so a retry after a lost answer stores nothing twice.
    """

    method: str
    path: str
    body: dict[str, Any] | None = None
    query: dict[str, Any] = field(default_factory=dict)
    pick: str | None = None
    idempotency_key: str = field(default_factory=lambda: uuid.uuid4().hex)

    def params(self) -> dict[str, str]:
        """The query string's values, without the unset ones."""
        return {k: _query_value(v) for k, v in self.query.items() if v is not None}

    def headers(self) -> dict[str, str]:
        """Headers of this call beyond the client's own."""
        return {"Idempotency-Key": self.idempotency_key} if self.method in WRITES else {}

    def content(self) -> bytes | None:
        """The request body, if the method carries one."""
        if self.body is not None:
            return json.dumps(self.body).encode()
        return b"" if self.method in ("POST", "PUT", "PATCH") else None


def read_answer(call: Call, status: int, body: bytes, retry_after: str | None = None) -> Any:
    """The ``data`` of a success envelope, or a NotifyError for anything else."""
    try:
        envelope = json.loads(body or b"null")
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict):
        raise NotifyError(f"http_{status}", f"{call.method} {call.path}: not JSON", status)
    if 200 <= status < 300 and envelope.get("success") is True:
        data = envelope.get("data")
        return data[call.pick] if call.pick else data
    error = envelope.get("error") if isinstance(envelope.get("error"), dict) else {}
    raise NotifyError(
        str(error.get("code") or f"http_{status}"),
        str(error.get("message") or f"{call.method} {call.path} answered {status}"),
        status,
        error.get("fields") if isinstance(error.get("fields"), dict) else None,
        parse_retry_after(retry_after),
    )


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def retry_delay(error: NotifyError, attempt: int, retries: int, max_wait: float) -> float | None:
    """Seconds to wait before retrying after ``error``, or None when it is not retried.

    429 and 503 are retried, waiting what ``Retry-After`` says (up to ``max_wait``), and so
    is no answer at all; each with capped, jittered exponential backoff otherwise.
    """
    if attempt >= retries:
        return None
    if error.status not in RETRY_STATUSES and error.code != "unreachable":
        return None
    if error.retry_after is not None:
        return min(error.retry_after, max_wait)
    ceiling = min(max_wait, 0.5 * 2**attempt)
    return ceiling / 2 + random.random() * ceiling / 2


class Operations(Generic[T]):
    """Every operation of the REST API; subclasses send the ``Call``."""

    def _send(self, call: Call) -> T:
        raise NotImplementedError

    # ---- notifications (scope notify) --------------------------------------------------

    def send(
        self,
        user_id: Recipients,
        type: str,  # the API's name
        data: dict[str, Any] | None = None,
        *,
        title: str | None = None,
        message: str | None = None,
        priority: str | None = None,
        deliver_at: When = None,
        expires_at: When = None,
        **fields: Any,
    ) -> T:
        """Any notification: ``type`` and its ``data`` (CONTRACT section 2), to one user or a
        list (one each). ``fields``: further contract fields, e.g. ``ack_required``."""
        body: dict[str, Any] = {"type": type, "data": data or {}}
        if isinstance(user_id, str):
            body["user_id"] = user_id
        else:
            body["user_ids"] = list(user_id)
        body.update(
            _clean(
                {
                    "title": title,
                    "message": message,
                    "priority": priority,
                    "deliver_at": _when(deliver_at),
                    "expires_at": _when(expires_at),
                    **fields,
                }
            )
        )
        return self._send(Call("POST", "/v1/notifications", body))

    def send_appointment_notification(
        self,
        user_id: Recipients,
        appointment_id: str,
        status: str,
        message: str | None = None,
        starts_at: When = None,
        deliver_at: When = None,
        **options: Any,
    ) -> T:
        """An ``appointment`` notification (status: confirmed, cancelled, rescheduled, reminder).

        ``options``: ``title``, ``priority``, ``expires_at``. A list of user ids sends one each.
        """
        data = _clean({"appointment_id": appointment_id, "status": status})
        data.update(_clean({"starts_at": _when(starts_at)}))
        return self._notify(user_id, "appointment", data, message, deliver_at, options)

    def send_lab_result_notification(
        self,
        user_id: Recipients,
        lab_result_id: str,
        test_name: str | None = None,
        message: str | None = None,
        deliver_at: When = None,
        **options: Any,
    ) -> T:
        """A ``lab_result`` notification."""
        data = _clean({"lab_result_id": lab_result_id, "test_name": test_name})
        return self._notify(user_id, "lab_result", data, message, deliver_at, options)

    def send_ai_analysis_notification(
        self,
        user_id: Recipients,
        analysis_id: str,
        analysis_type: str,
        message: str | None = None,
        deliver_at: When = None,
        **options: Any,
    ) -> T:
        """An ``ai_analysis`` notification."""
        data = {"analysis_id": analysis_id, "analysis_type": analysis_type}
        return self._notify(user_id, "ai_analysis", data, message, deliver_at, options)

    def send_system_alert(
        self,
        user_id: Recipients,
        message: str,
        data: dict[str, Any] | None = None,
        deliver_at: When = None,
        **options: Any,
    ) -> T:
        """A ``system_alert`` notification to users (for everyone, see ``broadcast``)."""
        return self._notify(user_id, "system_alert", data or {}, message, deliver_at, options)

    def send_custom(
        self,
        user_id: Recipients,
        title: str,
        message: str | None = None,
        data: dict[str, Any] | None = None,
        deliver_at: When = None,
        **options: Any,
    ) -> T:
        """A ``custom`` notification: a title, and any JSON object up to 16 KiB as data."""
        options = {**options, "title": title}
        return self._notify(user_id, "custom", data or {}, message, deliver_at, options)

    def cancel(self, notification_id: str) -> T:
        """Cancel a scheduled notification not yet sent (a 409 NotifyError once sent)."""
        return self._send(Call("DELETE", f"/v1/notifications/{_seg(notification_id)}"))

    def send_test_notification(self, user_id: str, title: str, message: str) -> T:
        """``POST /v1/ws/test-notification`` (the earlier system's endpoint)."""
        body = {"user_id": user_id, "title": title, "message": message}
        return self._send(Call("POST", "/v1/ws/test-notification", body))

    def _notify(
        self,
        user_id: Recipients,
        kind: str,
        data: dict[str, Any],
        message: str | None,
        deliver_at: When,
        options: dict[str, Any],
    ) -> T:
        unknown = set(options) - {"title", "priority", "expires_at", "ack_required", "escalation"}
        if unknown:
            raise TypeError(f"unexpected options: {', '.join(sorted(unknown))}")
        return self.send(user_id, kind, data, message=message, deliver_at=deliver_at, **options)

    # ---- broadcasts and tokens ---------------------------------------------------------

    def broadcast(
        self,
        audience: str,
        title: str,
        message: str,
        priority: str | None = None,
        expires_at: When = None,
        **options: Any,
    ) -> T:
        """A broadcast to everyone (``all``) or a role; ``options``: type, data, deliver_at."""
        unknown = set(options) - {"type", "data", "deliver_at"}
        if unknown:
            raise TypeError(f"unexpected options: {', '.join(sorted(unknown))}")
        body = {"audience": audience, "title": title, "message": message}
        body.update(
            _clean(
                {
                    "priority": priority,
                    "expires_at": _when(expires_at),
                    "type": options.get("type"),
                    "data": options.get("data"),
                    "deliver_at": _when(options.get("deliver_at")),
                }
            )
        )
        return self._send(Call("POST", "/v1/broadcasts", body))

    def mint_token(
        self, user_id: str, roles: Iterable[str] | None = None, ttl_seconds: int | None = None
    ) -> T:
        """A connection token for a user's browser: ``{"token", "expires_at"}``."""
        body = _clean({"user_id": user_id, "ttl_seconds": ttl_seconds})
        if roles is not None:
            body["roles"] = list(roles)
        return self._send(Call("POST", "/v1/tokens", body))

    # ---- reading (scope read, or the user's own token) ---------------------------------

    def feed(
        self,
        user_id: str,
        unread: bool | None = None,
        type: str | None = None,  # the API's name
        limit: int | None = None,
        before: str | None = None,
    ) -> T:
        """A page of a user's feed: ``{"items", "next"}``; pass ``next`` as ``before``."""
        query = {"unread": unread, "type": type, "limit": limit, "before": before}
        return self._send(Call("GET", f"/v1/users/{_seg(user_id)}/notifications", query=query))

    def unread_count(self, user_id: str) -> T:
        """How many notifications the user has not read (an int)."""
        return self._send(Call("GET", f"/v1/users/{_seg(user_id)}/unread-count", pick="count"))

    def mark_read(self, user_id: str, notification_id: str) -> T:
        """Mark one notification read; returns it."""
        path = f"/v1/users/{_seg(user_id)}/notifications/{_seg(notification_id)}/read"
        return self._send(Call("POST", path))

    def mark_all_read(self, user_id: str) -> T:
        """Mark all of a user's notifications read; returns how many were marked."""
        path = f"/v1/users/{_seg(user_id)}/notifications/read-all"
        return self._send(Call("POST", path, pick="count"))

    def acknowledge(self, user_id: str, notification_id: str, note: str | None = None) -> T:
        """Acknowledge a notification on the user's behalf (CONTRACT section 8)."""
        path = f"/v1/users/{_seg(user_id)}/notifications/{_seg(notification_id)}/acknowledge"
        return self._send(Call("POST", path, _clean({"note": note})))

    def presence(self, user_ids: Iterable[str]) -> T:
        """``{user_id: {"online", "connections"}}`` for each user."""
        query = {"user_ids": ",".join(user_ids)}
        return self._send(Call("GET", "/v1/presence", query=query))

    def stats(self) -> T:
        """Connection statistics."""
        return self._send(Call("GET", "/v1/ws/stats"))


def _when(value: When) -> str | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("give an aware datetime (with a timezone), e.g. datetime.now(UTC)")
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return value


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _seg(value: str) -> str:
    return quote(value, safe="")


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
