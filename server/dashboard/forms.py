"""The staff dashboard's forms and its socket's frames, validated like every payload."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import (
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from server.app.schemas import (
    MAX_NOTE,
    PRIORITIES,
    ROLE_PATTERN,
    TYPES,
    Id,
    Strict,
    frame_object,
)

STAFF_ROLES = ("admin", "staff")
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{1,31}$"
PASSWORD_MIN, PASSWORD_MAX = 10, 256
OBJECT_ID_PATTERN = r"^[0-9a-f]{24}$"
AUDIT_PAGE_PATTERN = r"^[0-9]{1,15}\.[0-9a-f]{24}$"  # audit.page_key: <at_ms>.<_id>
LOCAL_PATH_PATTERN = r"^/dashboard(?:[/?][A-Za-z0-9/_.~%&=+,:@?\-]*)?$"
COMPOSE_TARGETS = ("user", "users", "role", "all")
HISTORY_STATUSES = ("read", "unread", "delivered", "undelivered", "scheduled")


def Username(**kw: Any) -> fields.String:
    """A staff username: 2 to 32 letters, digits, dots, dashes, underscores (kept lower case)."""
    error = "2 to 32 of a-z, 0-9, dot, dash, underscore, starting with a letter or digit"
    return fields.String(validate=validate.Regexp(USERNAME_PATTERN, error=error), **kw)


def Password(**kw: Any) -> fields.String:
    """A new staff password."""
    error = f"between {PASSWORD_MIN} and {PASSWORD_MAX} characters"
    return fields.String(validate=validate.Length(PASSWORD_MIN, PASSWORD_MAX, error=error), **kw)


class LoginIn(Strict):
    """The dashboard's login form."""

    username = fields.String(required=True, validate=validate.Length(1, 64))
    password = fields.String(required=True, validate=validate.Length(1, PASSWORD_MAX))
    next = fields.String(
        load_default="/dashboard",
        validate=validate.Regexp(LOCAL_PATH_PATTERN, error="not a dashboard page"),
    )


class StaffIn(Strict):
    """A new staff account (dashboard form or ``run.py create-staff``)."""

    username = Username(required=True)
    password = Password(required=True)
    role = fields.String(required=True, validate=validate.OneOf(STAFF_ROLES))

    @post_load
    def _lower(self, item: dict, **_: Any) -> dict:
        item["username"] = item["username"].lower()
        return item


class StaffChangeIn(Strict):
    """An admin's change to a staff account."""

    action = fields.String(required=True, validate=validate.OneOf(("role", "disable", "enable")))
    role = fields.String(validate=validate.OneOf(STAFF_ROLES))

    @validates_schema
    def _role_given(self, item: dict, **_: Any) -> None:
        if item.get("action") == "role" and "role" not in item:
            raise ValidationError({"role": ["choose a role"]})


class PasswordChangeIn(Strict):
    """A staff member's change of their own password."""

    current = fields.String(required=True, validate=validate.Length(1, PASSWORD_MAX))
    new = Password(required=True)
    confirm = fields.String(required=True, validate=validate.Length(1, PASSWORD_MAX))

    @validates_schema(skip_on_field_errors=True)
    def _confirmed(self, item: dict, **_: Any) -> None:
        if item["new"] != item["confirm"]:
            raise ValidationError({"confirm": ["does not match the new password"]})


class ComposeForm(Strict):
    """The compose form as typed; ``server.dashboard.compose`` turns it into a NotificationIn or
    BroadcastIn payload, which the API's own schemas then validate."""

    target = fields.String(required=True, validate=validate.OneOf(COMPOSE_TARGETS))
    user_id = fields.String(load_default="", validate=validate.Length(0, 200))
    user_ids = fields.String(load_default="", validate=validate.Length(0, 200_000))
    role = fields.String(load_default="", validate=validate.Length(0, 100))
    type = fields.String(load_default="", validate=validate.Length(0, 50))
    priority = fields.String(load_default="", validate=validate.Length(0, 50))
    title = fields.String(load_default="", validate=validate.Length(0, 1000))
    message = fields.String(load_default="", validate=validate.Length(0, 20_000))
    data = fields.String(load_default="", validate=validate.Length(0, 40_000))
    deliver_at = fields.String(load_default="", validate=validate.Length(0, 40))
    expires_at = fields.String(load_default="", validate=validate.Length(0, 40))
    # The browser's offset from UTC in minutes, as JavaScript's getTimezoneOffset() gives it.
    tz_offset = fields.Integer(load_default=0, validate=validate.Range(-900, 900))


class HistoryQuery(Strict):
    """Filters and paging of the dashboard's notification history."""

    user = Id()
    type = fields.String(validate=validate.OneOf(TYPES))
    priority = fields.String(validate=validate.OneOf(PRIORITIES))
    status = fields.String(validate=validate.OneOf(HISTORY_STATUSES))
    kind = fields.String(validate=validate.OneOf(("personal", "broadcast")))
    since = fields.Date()
    until = fields.Date()
    before = fields.String(validate=validate.Regexp(OBJECT_ID_PATTERN, error="not a page"))

    @validates_schema(skip_on_field_errors=True)
    def _dates(self, item: dict, **_: Any) -> None:
        if item.get("since") and item.get("until") and item["until"] < item["since"]:
            raise ValidationError({"until": ["must not be before the start date"]})


class AuditQuery(Strict):
    """Filters and paging of the audit page (and its CSV export)."""

    actor = fields.String(validate=validate.Length(1, 200))
    action = fields.String(validate=validate.Regexp(r"^[a-z0-9_.\-]{1,64}$", error="not an action"))
    before = fields.String(validate=validate.Regexp(AUDIT_PAGE_PATTERN, error="not a page"))


class ConnectionsQuery(Strict):
    """The live connection list's filter: user ids starting with ``user``."""

    user = fields.String(validate=validate.Length(1, 128))


class AcknowledgeForm(Strict):
    """A staff member's acknowledgement on a user's behalf: an optional note."""

    note = fields.String(load_default=None, validate=validate.Length(0, MAX_NOTE))
    next = fields.String(
        load_default="/dashboard",
        validate=validate.Regexp(LOCAL_PATH_PATTERN, error="not a dashboard page"),
    )


class TestTokenIn(Strict):
    """The test client page's request for a short-lived connection token."""

    user_id = Id(required=True)
    roles = fields.String(load_default="patient", validate=validate.Length(0, 400))

    @post_load
    def _split(self, item: dict, **_: Any) -> dict:
        roles = [r.strip() for r in item["roles"].split(",") if r.strip()]
        if len(roles) > 20 or not all(re.match(ROLE_PATTERN, r) for r in roles):
            raise ValidationError({"roles": ["up to 20 comma-separated roles like patient"]})
        item["roles"] = list(dict.fromkeys(roles))
        return item


class DashboardFilterFrame(Strict):
    """The staff socket's one client frame: which users the connection list shows."""

    type = fields.Constant("filter")
    user = fields.String(load_default="", validate=validate.Length(0, 128))


def load_dashboard_frame(raw: str | bytes) -> dict:
    """Parse and validate a frame from the staff socket."""
    frame = frame_object(raw)
    if frame.get("type") != "filter":
        raise ValidationError({"type": ["must be filter"]})
    return DashboardFilterFrame().load(frame)
