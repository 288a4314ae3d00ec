"""Per-user push preferences and quiet hours (CONTRACT §7).

Quiet hours are wall-clock times in the user's IANA time zone, so "22:00 to 07:00" stays
right across daylight-saving changes; a span whose start is after its end runs past
midnight. Critical notifications ignore all of it (the service decides that, not this).
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from pymongo.asynchronous.database import AsyncDatabase

DEFAULTS = {"push": True, "types": {}, "quiet_hours": None}


def parse_hhmm(text: str) -> time:
    """``HH:MM`` (validated by the schema) as a time."""
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def quiet_until(quiet: dict | None, now: datetime) -> datetime | None:
    """When the quiet hours around ``now`` end (UTC), or None if ``now`` is not in them."""
    if not quiet:
        return None
    zone = ZoneInfo(quiet["timezone"])
    local = now.astimezone(zone)
    start, end = parse_hhmm(quiet["start"]), parse_hhmm(quiet["end"])
    clock = local.time().replace(second=0, microsecond=0)
    # A span whose start is after its end runs past midnight.
    inside = start <= clock < end if start < end else clock >= start or clock < end
    if not inside:
        return None
    day = local.date()
    ends = datetime.combine(day, end, tzinfo=zone)
    if ends <= local:
        ends = datetime.combine(day + timedelta(days=1), end, tzinfo=zone)
    return ends.astimezone(now.tzinfo)


def wants_push(prefs: dict, kind: str) -> bool:
    """Whether a user lets notifications of this type be pushed (outside quiet hours)."""
    if not prefs.get("push", True):
        return False
    return bool(prefs.get("types", {}).get(kind, {}).get("push", True))


class Preferences:
    """The ``push_preferences`` collection: one document per user who changed anything."""

    def __init__(self, db: AsyncDatabase):
        self.collection = db.push_preferences

    async def get(self, user_id: str) -> dict:
        """A user's preferences (the defaults if never set)."""
        found = await self.collection.find_one({"_id": user_id})
        return _shape(found)

    async def put(self, user_id: str, prefs: dict) -> dict:
        """Replace a user's preferences with validated ones."""
        doc = {**DEFAULTS, **prefs}
        await self.collection.replace_one({"_id": user_id}, {"_id": user_id, **doc}, upsert=True)
        return _shape(doc)

    async def for_users(self, user_ids: list[str]) -> dict[str, dict]:
        """Preferences of several users (absent users have the defaults)."""
        found = {
            d["_id"]: _shape(d)
            async for d in self.collection.find({"_id": {"$in": list(set(user_ids))}})
        }
        return {u: found.get(u) or _shape(None) for u in user_ids}


def _shape(doc: dict | None) -> dict:
    doc = doc or {}
    return {
        "push": doc.get("push", True),
        "types": doc.get("types") or {},
        "quiet_hours": doc.get("quiet_hours"),
    }
