// @clinic-notify/react with react-test-renderer (React 18) in Node against a real node of the
// service (python run.py): history and live, newest first, read, acknowledge's presence,
// the earlier system's hook, one connection per mounted hook and none after unmount.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createElement } from "react";
import TestRenderer from "react-test-renderer";
import WS from "ws";

import { useNotifications, useWebSocketNotifications } from "@clinic-notify/react";
import { Service, tokenFor, until } from "../../js/test/service.mjs";

const { act, create } = TestRenderer;
let service;
before(async () => {
  service = await Service.start();
});
after(async () => {
  await service?.stop();
});

/** Mount a component calling `hook`; `state.current` is what it returned last. */
function mount(hook) {
  const state = { current: null };
  function Probe() {
    state.current = hook();
    return createElement("ul", null, state.current.notifications.map((n) =>
      createElement("li", { key: n.id }, n.title)));
  }
  let root;
  act(() => {
    root = create(createElement(Probe));
  });
  return { state, root };
}

const stats = () => service.call("GET", "/v1/ws/stats");

test("useNotifications: history then live, newest first, markRead, one connection", async () => {
  const before = await service.notify("r-1", "Appointment confirmed");
  const options = { url: service.url, token: tokenFor("r-1"), WebSocket: WS, storage: null };
  const { state, root } = mount(() => useNotifications(options));
  try {
    await until(() => state.current.connected, 20000, "connected");
    assert.equal(state.current.transport, "websocket");
    await until(() => state.current.notifications.length === 1, 20000, "history");
    const live = await service.notify("r-1", "Lab results ready");
    await until(() => state.current.notifications.length === 2, 20000, "live");
    assert.deepEqual(state.current.notifications.map((n) => n.id), [live.id, before.id]);
    assert.deepEqual(root.root.findAllByType("li").map((li) => li.children[0]),
      ["Lab results ready", "Appointment confirmed"]);
    await until(() => state.current.unreadCount === 2, 20000, "unread 2");
    await act(() => state.current.markRead(live.id));
    await until(() => state.current.unreadCount === 1, 20000, "unread 1");
    await until(() => state.current.notifications[0].read_at, 20000, "read_at");
    assert.equal(typeof state.current.acknowledge, "function");
    assert.equal((await stats()).connected_clients, 1);
  } finally {
    act(() => root.unmount());
  }
  await until(async () => (await stats()).connected_clients === 0, 20000, "closed on unmount");
});

test("useWebSocketNotifications(userId, options): the earlier system's name", async () => {
  const options = { url: service.url, getToken: () => tokenFor("r-2"), WebSocket: WS, storage: null, historySize: 0 };
  const { state, root } = mount(() => useWebSocketNotifications("r-2", options));
  try {
    await until(() => state.current.connected, 20000, "connected");
    const made = await service.notify("r-2", "Reminder");
    await until(() => state.current.notifications.some((n) => n.id === made.id), 20000, "live");
    assert.equal(state.current.status, "open");
  } finally {
    act(() => root.unmount());
  }
});
