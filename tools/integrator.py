"""The service's REST API as plain Python calls, for the backends that send notifications.

Copy this one file into another codebase: the synchronous client needs only the standard
library, the asynchronous one Tornado. Both are written once, in ``_Operations``: each call
builds a ``Call``; ``NotifyApi`` sends it with urllib and ``AsyncNotifyApi`` with Tornado's
``AsyncHTTPClient``; both read the answer with ``read_answer``. Every failure is a
``NotifyError`` carrying the contract's error ``code``, the HTTP ``status`` and the per-field
messages.

    api = NotifyApi("http://127.0.0.1:7556", api_key)
    api.send_appointment_notification("p-1001", "a-77", "confirmed", starts_at=when)

    api = AsyncNotifyApi("http://127.0.0.1:7556", api_key)
    await api.send_lab_result_notification("p-1001", "lab-5", test_name="HbA1c")
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

__all__ = ["AsyncNotifyApi", "Call", "NotifyApi", "NotifyError"]

T = TypeVar("T")
Recipients = str | Iterable[str]
When = datetime | str | None


class NotifyError(Exception):
    """A call failed: ``code`` (the contract's, or ``unreachable``), ``status``, ``fields``."""

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

    def __str__(self) -> str:
        text = f"{self.status or '-'} {self.code}: {self.message}"
        return f"{text} {json.dumps(self.fields)}" if self.fields else text


@dataclass(frozen=True)
class Call:
    """One REST call: method, path, JSON body, query, and which field of ``data`` to return."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    query: dict[str, Any] = field(default_factory=dict)
    pick: str | None = None

    def url(self, base_url: str) -> str:
        """The full URL of this call."""
        query = {k: _query_value(v) for k, v in self.query.items() if v is not None}
        return base_url + self.path + ("?" + urlencode(query) if query else "")

    def payload(self) -> bytes | None:
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
        float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


class _Operations(Generic[T]):
    """Every operation of the REST API, written once; subclasses send the ``Call``."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 10.0):
        if not api_key:
            raise ValueError("an API key is required")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}({self.base_url!r})"

    def _send(self, call: Call) -> T:
        raise NotImplementedError

    # ---- notifications (scope notify) --------------------------------------------------

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
        unknown = set(options) - {"title", "priority", "expires_at"}
        if unknown:
            raise TypeError(f"unexpected options: {', '.join(sorted(unknown))}")
        body: dict[str, Any] = {"type": kind, "data": data}
        if isinstance(user_id, str):
            body["user_id"] = user_id
        else:
            body["user_ids"] = list(user_id)
        body.update(
            _clean(
                {
                    "message": message,
                    "title": options.get("title"),
                    "priority": options.get("priority"),
                    "deliver_at": _when(deliver_at),
                    "expires_at": _when(options.get("expires_at")),
                }
            )
        )
        return self._send(Call("POST", "/v1/notifications", body))

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

    # ---- reading (scope read) ----------------------------------------------------------

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

    def presence(self, user_ids: Iterable[str]) -> T:
        """``{user_id: {"online", "connections"}}`` for each user."""
        query = {"user_ids": ",".join(user_ids)}
        return self._send(Call("GET", "/v1/presence", query=query))

    def stats(self) -> T:
        """Connection statistics."""
        return self._send(Call("GET", "/v1/ws/stats"))


class NotifyApi(_Operations[Any]):
    """The REST API over urllib: each method returns the answer's ``data``."""

    def _send(self, call: Call) -> Any:
        request = urllib.request.Request(  # noqa: S310 - base_url is the integrator's setting
            call.url(self.base_url), data=call.payload(), headers=self._headers, method=call.method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return read_answer(call, response.status, response.read())
        except urllib.error.HTTPError as answer:
            with answer:
                body = answer.read()
            return read_answer(call, answer.code, body, answer.headers.get("Retry-After"))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotifyError("unreachable", f"{self.base_url}: {reason}") from None


class AsyncNotifyApi(_Operations[Awaitable[Any]]):
    """The REST API over Tornado's AsyncHTTPClient: each method is awaited for ``data``."""

    async def _send(self, call: Call) -> Any:
        from tornado.httpclient import AsyncHTTPClient, HTTPRequest

        request = HTTPRequest(
            call.url(self.base_url),
            method=call.method,
            headers=self._headers,
            body=call.payload(),
            request_timeout=self.timeout,
            connect_timeout=self.timeout,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except OSError as exc:
            raise NotifyError("unreachable", f"{self.base_url}: {exc}") from None
        if response.code == 599:  # Tornado's code for "no HTTP answer at all"
            raise NotifyError("unreachable", f"{self.base_url}: {response.error}")
        return read_answer(call, response.code, response.body, response.headers.get("Retry-After"))


def _when(value: When) -> str | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("give an aware datetime (with a timezone), e.g. datetime.now(UTC)")
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _seg(value: str) -> str:
    return quote(value, safe="")


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
