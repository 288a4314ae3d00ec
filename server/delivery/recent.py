"""The recent feed in memory: replays and unread counts that need no database read.

The hub dispatches every stored notification, from any node, once and in seq order. What it
dispatched since ``start`` is therefore known here, complete: a reconnect whose cursor is at
or after ``start`` finds everything it missed in this window (personal notifications; the
broadcasts come from the broadcast cache), so its replay reads nothing from MongoDB. Where
the window cannot prove that (a cursor before ``start``, a user whose oldest entries were
trimmed, entries changed since they were sent), the caller falls back to the database.

The window is bounded by ``max_bytes`` (oldest entries go first, moving ``start``) and by
``per_user`` entries per user (more would not be replayed anyway: the replay limit). It
resets (``start`` moves to the hub's seq) when a failed write left documents that must not
be delivered, so a hidden document is never replayed from here.

Unread counts are kept per user once read from MongoDB (``load``): every personal
notification dispatched later adds to a user's unread set, every read event (from any node,
through the bus) removes from it. A break of the event stream forgets them all (a read on
another node could have been missed); so does age (``max_age``).

Most users who connect have no unread notification of their own, and a node cannot tell
them from the rest without a read, unless it keeps a census: the users who *may* have one.
A census reads, once, every user with an unread visible notification stored so far (every
seq up to the hub's, all stored: the sequencer leaves no gaps), and from its start adds
every user the hub dispatches a personal notification to. A user outside it has none, so
their count is the visible broadcasts they have not read, and with none visible needs no
read at all. A user it read none for, but who got notifications since it began (the
morning's patients, the clients of a node that died), has exactly those unread: they are
all in the window (its start and the user's floor at or before the census's seq) and none
changed since (a read or an acknowledgement raises the user's floor), as long as no read
event can have been missed since the census (a break of the event stream ends that until
the next census). Reads and expiry only take notifications away, so the census may say
"may" of a user who has none left (that user is read from MongoDB, as before), never the
other way. It is bounded (``CENSUS_MAX`` users; past that it is off until the next
census) and taken again every ``max_age`` to drop users who have read everything.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from server.app.metrics import METRICS
from server.app.timeutil import as_datetime

# What an entry costs besides its frame: the tuple, the id, the seq and the expiry (bytes).
ENTRY_OVERHEAD = 200
AHEAD_MAX = 10_000  # ids changed before this node dispatched them (remembered, bounded)
UNREAD_USERS_MAX = 200_000
UNREAD_IDS_MAX = 1_000  # a user with more unread ids is not cached (read from MongoDB)
CENSUS_MAX = 200_000  # users who may have unread notifications (about 20 MiB of ids)

_REPLAY_FROM_MEMORY = METRICS.replay_memory.labels("memory")
REPLAY_FROM_DB = METRICS.replay_memory.labels("database")
UNREAD_FROM_MEMORY = METRICS.unread_memory.labels("memory")
UNREAD_FROM_DB = METRICS.unread_memory.labels("database")

NOTHING: frozenset[str] = frozenset()

# (seq, id, frame, visible until as epoch seconds)
Entry = tuple[int, str, bytes, float]


@dataclass(slots=True)
class _Unread:
    """One user's unread state, as read from MongoDB and kept up to date since."""

    audiences: tuple[str, ...]
    personal: dict[str, float]  # own unread ids -> visible until (epoch seconds)
    # Broadcasts this user has read, and own ids read since the load (a read can arrive
    # before its dispatch). Usually none: one shared empty frozenset, not 216 bytes of empty
    # set per connected user, until a read comes.
    read_shared: frozenset[str] | set[str]
    read_own: frozenset[str] | set[str]
    loaded_at: float


@dataclass(slots=True)
class _Loading:
    added: dict[str, float]
    dirty: bool = False


class RecentFeed:
    """This node's window of recently dispatched personal notifications, and unread counts."""

    def __init__(self, max_bytes: int, per_user: int, max_age: float = 600.0):
        self.max_bytes = max_bytes
        self.per_user = per_user
        self.max_age = max_age
        self.start: int | None = None  # nothing is proven until the hub sets it
        self.bytes = 0
        self._by_user: dict[str, deque[Entry]] = {}
        self._order: deque[tuple[str, Entry]] = deque()
        # A user's entries at or below this seq are not all here (trimmed or changed).
        self._floor: dict[str, int] = {}
        self._ahead: dict[str, str] = {}  # id -> user: changed before dispatched here
        self._unread: dict[str, _Unread] = {}
        self._loading: dict[str, _Loading] = {}
        # The census: users who may have had unread personal notifications when it read
        # (``_had``; None: not known, no census yet or past its bound), users dispatched to
        # since it began (``_since``) and its seq (None once a read event may have been
        # missed). ``_counting``: users dispatched to while the next census reads.
        self._had: set[str] | None = None
        self._since: set[str] = set()
        self._census_seq: int | None = None
        self._counting: set[str] | None = None
        self._counting_seq = 0

    # ---- what the hub and the bus tell it ------------------------------------------------

    def reset(self, seq: int) -> None:
        """Forget everything; complete again from ``seq`` on (start, or a failed write)."""
        self.start = seq
        self._by_user.clear()
        self._order.clear()
        self._floor.clear()
        self._unread.clear()
        for loading in self._loading.values():
            loading.dirty = True
        self.bytes = 0

    def record(self, doc: dict, frame: bytes) -> None:
        """A personal notification the hub dispatched (in seq order, never hidden)."""
        user_id, doc_id, seq = doc["user_id"], doc["_id"], doc["seq"]
        visible_until = as_datetime(doc.get("visible_until"))
        until = visible_until.timestamp() if visible_until is not None else float("inf")
        changed = self._ahead.pop(doc_id, None) is not None
        self._counted(user_id)
        if changed:  # read (or otherwise changed) before it reached this node
            self._floor[user_id] = seq
        else:
            self._count_unread(user_id, doc_id, until)
        entries = self._by_user.get(user_id)
        if entries is None:
            entries = self._by_user[user_id] = deque()
        entry = (seq, doc_id, frame, until)
        entries.append(entry)
        self._order.append((user_id, entry))
        self.bytes += len(frame) + ENTRY_OVERHEAD
        if len(entries) > self.per_user:
            self._floor[user_id] = entries.popleft()[0]
        while self.bytes > self.max_bytes and self._order:
            self._evict()

    def _counted(self, user_id: str) -> None:
        """A personal notification was dispatched to this user: they may have it unread."""
        if self._had is not None and user_id not in self._since:
            self._since.add(user_id)
            if len(self._had) + len(self._since) > CENSUS_MAX:
                self._had = None
        if self._counting is not None:
            self._counting.add(user_id)

    def begin_census(self, seq: int) -> None:
        """A census read starts at the hub's ``seq``: what is dispatched from now on is
        counted in it."""
        self._counting, self._counting_seq = set(), seq

    def end_census(self, users: set[str] | None) -> None:
        """The census read ``users`` (None: it failed, or there were too many)."""
        counting, self._counting = self._counting, None
        if users is None or counting is None or len(users) + len(counting) > CENSUS_MAX:
            self._had = None
            return
        self._had, self._since, self._census_seq = users, counting, self._counting_seq

    def _count_unread(self, user_id: str, doc_id: str, until: float) -> None:
        loading = self._loading.get(user_id)
        if loading is not None:
            loading.added[doc_id] = until
        state = self._unread.get(user_id)
        if state is not None and doc_id not in state.read_own:
            state.personal[doc_id] = until
            if len(state.personal) > UNREAD_IDS_MAX:
                del self._unread[user_id]

    def _evict(self) -> None:
        user_id, entry = self._order.popleft()
        self.bytes -= len(entry[2]) + ENTRY_OVERHEAD
        self.start = max(self.start or 0, entry[0])
        entries = self._by_user.get(user_id)
        if entries and entries[0] is entry:
            entries.popleft()
        if not entries:
            self._by_user.pop(user_id, None)
        floor = self._floor.get(user_id)
        if floor is not None and floor <= self.start:
            del self._floor[user_id]

    def changed(self, user_id: str, ids: Iterable[str], read: bool) -> None:
        """Notifications of a user changed after they were sent (read, acknowledged).

        Their frames here are stale: a replay from a cursor before the newest of them goes
        to MongoDB. A read also leaves the user's unread counts.
        """
        ids = set(ids)
        entries = self._by_user.get(user_id, ())
        seen = {entry[1]: entry[0] for entry in entries if entry[1] in ids}
        if seen:
            self._floor[user_id] = max(self._floor.get(user_id, 0), *seen.values())
        for doc_id in ids - seen.keys():
            if len(self._ahead) >= AHEAD_MAX:
                del self._ahead[next(iter(self._ahead))]
            self._ahead[doc_id] = user_id
        if not read:
            return
        loading = self._loading.get(user_id)
        if loading is not None:
            loading.dirty = True
        state = self._unread.get(user_id)
        if state is not None:
            unseen = {doc_id for doc_id in ids if state.personal.pop(doc_id, None) is None}
            if unseen:  # not (yet) among the unread here; or broadcasts: either way, read
                state.read_own = state.read_own | unseen
            state.read_shared = state.read_shared | ids

    def forget_unread(self) -> None:
        """The event stream broke: reads on other nodes may have been missed."""
        self._unread.clear()
        self._census_seq = None  # the window's entries may be read: until the next census
        for loading in self._loading.values():
            loading.dirty = True

    # ---- what a connecting socket asks ---------------------------------------------------

    def replay(self, user_id: str, since: int, now: float) -> list[tuple[int, bytes]] | None:
        """The user's personal notifications after ``since`` (visible, oldest first), or
        None when this window cannot prove it holds all of them."""
        if self.start is None or since < self.start or since < self._floor.get(user_id, 0):
            REPLAY_FROM_DB.inc()
            return None
        _REPLAY_FROM_MEMORY.inc()
        found = []
        for seq, _, frame, until in reversed(self._by_user.get(user_id, ())):
            if seq <= since:
                break
            if until > now:
                found.append((seq, frame))
        found.reverse()
        return found

    def unread(self, user_id: str, audiences: tuple[str, ...], shared: list[dict], now: float):
        """The user's unread count from memory, or None if it must be read from MongoDB."""
        state = self._unread.get(user_id)
        if (
            state is None
            or state.audiences != audiences
            or time.monotonic() - state.loaded_at > self.max_age
        ):
            return self._unread_by_census(user_id, audiences, shared, now)
        own = sum(1 for until in state.personal.values() if until > now)
        read = state.read_shared
        return own + sum(1 for d in shared if d["_id"] not in read)

    def _unread_by_census(
        self, user_id: str, audiences: tuple[str, ...], shared: list[dict], now: float
    ):
        """The count of a user the census read nothing for, with no broadcast visible (which
        broadcasts a user has read is not known here); else None."""
        if self._had is None or user_id in self._had or shared or user_id in self._loading:
            return None
        personal: dict[str, float] = {}
        if user_id in self._since:  # all of them here and unchanged, or read MongoDB
            seq = self._census_seq
            if seq is None or self.start is None or self.start > seq:
                return None
            if self._floor.get(user_id, 0) > seq:
                return None
            personal = {e[1]: e[3] for e in self._by_user.get(user_id, ()) if e[0] > seq}
        self._keep(user_id, _Unread(audiences, personal, NOTHING, NOTHING, time.monotonic()))
        return sum(1 for until in personal.values() if until > now)

    def _keep(self, user_id: str, state: _Unread) -> None:
        if len(self._unread) >= UNREAD_USERS_MAX:
            del self._unread[next(iter(self._unread))]
        self._unread[user_id] = state

    def begin_load(self, user_id: str) -> None:
        """A read of the user's unread state from MongoDB starts now."""
        self._loading[user_id] = _Loading({})

    def end_load(
        self,
        user_id: str,
        audiences: tuple[str, ...],
        personal: dict[str, float] | None,
        read_shared: set[str],
    ) -> None:
        """Keep what was read, with what was dispatched meanwhile; not if a read raced it.

        ``personal`` None: the read failed, nothing is kept.
        """
        loading = self._loading.pop(user_id, None)
        if personal is None or loading is None or loading.dirty or self.start is None:
            return
        personal.update(loading.added)
        if len(personal) > UNREAD_IDS_MAX:
            return
        read_shared = frozenset(read_shared) if read_shared else NOTHING
        self._keep(user_id, _Unread(audiences, personal, read_shared, NOTHING, time.monotonic()))

    # ---- reporting -----------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Entries, users and bytes held (the window's bound is ``max_bytes``)."""
        return {
            "entries": len(self._order),
            "users": len(self._by_user),
            "bytes": self.bytes,
            "unread_users": len(self._unread),
            "census_users": self.census_users,
            "start": self.start or 0,
        }

    def watch_gauges(self) -> None:
        """Report this window's size in ``/metrics`` (read when scraped)."""
        METRICS.replay_window_bytes.set_function(lambda: self.bytes)
        METRICS.replay_window_entries.set_function(lambda: len(self._order))
        METRICS.unread_census.set_function(lambda: self.census_users)

    @property
    def census_users(self) -> int:
        """Users the census says may have unread notifications (-1: no census)."""
        return -1 if self._had is None else len(self._had) + len(self._since)
