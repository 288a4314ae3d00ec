"""The bus's change-stream polls: an idle node backs off, and still hears the next event.

The embedded server answers a getMore at once; the bus then pauses, doubling the pause while
nothing comes. A second bus (on its own client, whose commands are counted) follows the
database a real node writes to.
"""

from __future__ import annotations

import asyncio

import pytest
from pymongo import AsyncMongoClient, monitoring

from server.app.store import Store
from server.delivery.bus import Bus
from server.delivery.hub import Hub
from tests.support import WAIT, wait_for

pytestmark = pytest.mark.asyncio

POLL, POLL_MAX = 0.01, 0.16


class GetMores(monitoring.CommandListener):
    """Counts the getMore commands this client sends."""

    def __init__(self):
        self.count = 0

    def started(self, event):
        if event.command_name == "getMore":
            self.count += 1

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


async def test_an_idle_bus_backs_off_and_still_hears_the_next_notification(
    node, api, mongo_uri, settings
):
    getmores = GetMores()
    client = AsyncMongoClient(mongo_uri, tz_aware=True, event_listeners=[getmores])
    store = Store(client, settings.mongodb_db)
    hub = Hub(lambda after, upto: store.seq_range(after, upto), 100, 5, 500)
    bus = Bus(store, hub, "watcher", poll=POLL, poll_max=POLL_MAX)
    bus.start()
    try:
        await asyncio.wait_for(bus.ready.wait(), WAIT)
        await asyncio.sleep(POLL_MAX * 4)  # both streams reach the longest pause
        before = getmores.count
        await asyncio.sleep(1.0)
        idle = getmores.count - before
        # A fixed 0.01 s pause would be 200 getMores a second for the two streams; the
        # longest pause allows about 2 / 0.16 = 12.5. A slow machine only makes it fewer.
        assert idle <= 2 * (1.0 / POLL_MAX + 2), idle

        assert hub.seq == 0
        await api.notify("p-1", "after a quiet spell")  # the first in this test's database
        await wait_for(lambda: hub.seq == 1, what="the bus to hear the insert")
    finally:
        await bus.stop()
        await client.close()
