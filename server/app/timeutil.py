"""UTC time helpers: every stored time is an aware UTC datetime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bson.tz_util import utc

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


def utcnow() -> datetime:
    """Now, in UTC, to the millisecond (what BSON keeps)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def millis(when: datetime) -> int:
    """Epoch milliseconds of an aware datetime (exact: integer arithmetic)."""
    return (when - EPOCH) // MILLISECOND


def as_datetime(value: datetime | str | None) -> datetime | None:
    """A stored time as an aware UTC datetime.

    The embedded server keeps a datetime written by ``$set`` on an existing document as the
    text ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC); a real MongoDB keeps a date. Both read back
    the same through here. Fields that queries compare by range are kept as numbers instead.
    """
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def iso(value: datetime | str | None) -> str | None:
    """ISO 8601 with a Z, or None."""
    if type(value) is datetime and (value.tzinfo is UTC or value.tzinfo is utc):
        # What MongoDB hands back: no conversion needed (a frame or a page has dozens).
        return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
    value = as_datetime(value)
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    text = value.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
