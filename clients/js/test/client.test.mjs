// @clinic-notify/client in Node 20 against a real node of the service (python run.py).
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { after, before, describe, test } from "node:test";
import WS from "ws";

import { NotifyClient } from "@clinic-notify/client";
import { Service, memoryStorage, record, tokenFor, until } from "./service.mjs";

const require = createRequire(import.meta.url);
const FAST = { minDelay: 50, maxDelay: 400, WebSocket: WS, storage: null };

let service;
before(async () => {
  service = await Service.start();
});
after(async () => {
  await service?.stop();
});

function client(options) {
  const c = new NotifyClient({ url: service.url, ...FAST, ...options });
  const log = record(c);
  return { c, log };
}

const statuses = (log) => log.of("status").map((s) => s.status);

test("ESM import and CommonJS require give the same class", async () => {
  const cjs = require("@clinic-notify/client");
  assert.equal(cjs.NotifyClient, NotifyClient);
  assert.equal(cjs, NotifyClient);
  const esm = await import("@clinic-notify/client");
  assert.equal(esm.default, NotifyClient);
  assert.equal(esm.compareCursors("9", "10") < 0, true);
  assert.throws(() => new NotifyClient({}), /token or a getToken/);
  assert.throws(() => new NotifyClient({ token: "t", transport: "smoke" }), /transport/);
  // Node 20 has no global WebSocket: the socket-only transport needs one given.
  assert.throws(() => new NotifyClient({ token: "t", transport: "websocket" }), /WebSocket option/);
});

test("live over the socket: ack, read, unread count, cursor in the given storage", async () => {
  const storage = memoryStorage();
  const { c, log } = client({ token: tokenFor("js-1"), storage, transport: "websocket" });
  c.connect();
  try {
    await until(() => c.status === "open", 20000, "open");
    assert.equal(c.transport, "websocket");
    const made = await service.notify("js-1", "Lab ready");
    await until(() => c.notifications.length === 1, 20000, "the notification");
    assert.equal(c.notifications[0].id, made.id);
    assert.equal(c.unreadCount, 1);
    assert.equal(storage.getItem("notify-client:cursor:js-1"), made.cursor);
    await until(async () => {
      const feed = await service.call("GET", "/v1/users/js-1/notifications");
      return feed.items[0].delivered_at; // the client acked it
    }, 20000, "the delivery receipt");
    await c.markRead(made.id);
    await until(() => c.unreadCount === 0, 20000, "unread 0");
    assert.deepEqual(log.of("read").at(-1).ids, [made.id]);
    assert.deepEqual(log.of("error"), []);
  } finally {
    c.close();
  }
  assert.equal(c.status, "closed");
});

test("a new client with the same storage resumes with since: the missed, in order, once", async () => {
  const storage = memoryStorage();
  const first = client({ token: tokenFor("js-2"), storage });
  first.c.connect();
  await until(() => first.c.status === "open");
  const seen = await service.notify("js-2", "seen");
  await until(() => first.c.notifications.length === 1);
  first.c.close();
  const missed = [];
  for (let i = 0; i < 3; i++) {
    missed.push(await service.notify("js-2", `missed ${i}`));
  }
  const second = client({ token: tokenFor("js-2"), storage });
  assert.equal(second.c.cursor, seen.cursor);
  second.c.connect();
  try {
    await until(() => second.c.notifications.length === 3, 20000, "the replay");
    assert.deepEqual(second.c.notifications.map((n) => n.id), missed.map((n) => n.id));
    assert.deepEqual(second.log.filter((e) => e.type === "notification").map((e) => e.info.source),
      ["replay", "replay", "replay"]);
  } finally {
    second.c.close();
  }
});

test("two refused tokens in a row: unauthorized, no more retries until connect()", async () => {
  const bad = () => tokenFor("js-3", 600, "not-the-service-secret-0123456789-xyz");
  let good = false;
  let asked = 0;
  const { c, log } = client({
    getToken: async () => {
      asked += 1;
      return good ? tokenFor("js-3") : bad();
    },
  });
  c.connect();
  await until(() => c.status === "unauthorized", 20000, "unauthorized");
  assert.equal(asked, 2);
  assert.equal(c._timer, null); // nothing scheduled: it waits for connect()
  assert.deepEqual(log.of("error").map((e) => e.code), ["token_refused", "unauthorized"]);
  good = true;
  c.connect();
  try {
    await until(() => c.status === "open", 20000, "open after connect()");
    assert.equal(asked, 3);
  } finally {
    c.close();
  }
});

test("a getToken that hangs is a token_timeout error and a retry", async () => {
  let calls = 0;
  const { c, log } = client({
    getTokenTimeout: 200,
    getToken: () => {
      calls += 1;
      return calls === 1 ? new Promise(() => {}) : tokenFor("js-4");
    },
  });
  c.connect();
  try {
    await until(() => c.status === "open", 20000, "open");
    assert.equal(log.of("error")[0].code, "token_timeout");
    assert.deepEqual(statuses(log).slice(0, 2), ["connecting", "closed"]);
    assert.equal(calls, 2);
  } finally {
    c.close();
  }
});

test("the token is refreshed before it expires without a visible reconnect", async () => {
  const minted = [];
  const { c, log } = client({
    refreshMargin: 2000,
    getToken: () => {
      minted.push(tokenFor("js-5", 4)); // four seconds: refreshed after about two
      return minted.at(-1);
    },
  });
  c.connect();
  try {
    await until(() => c.status === "open");
    await until(() => minted.length >= 2, 20000, "a second token");
    await until(() => log.of("status").some((s) => s.refreshed), 20000, "the refreshed socket");
    assert.deepEqual(statuses(log).slice(0, 3), ["connecting", "open", "open"]);
    const made = await service.notify("js-5", "after the refresh");
    await until(() => c.notifications.some((n) => n.id === made.id), 20000, "delivery");
    assert.deepEqual(log.of("error"), []);
  } finally {
    c.close();
  }
});

test("a refused Origin is reported with a hint", async () => {
  class FromElsewhere extends WS {
    constructor(url) {
      super(url, { origin: "https://portal.elsewhere.example" });
    }
  }
  const { c, log } = client({ token: tokenFor("js-6"), transport: "websocket", WebSocket: FromElsewhere });
  c.connect();
  try {
    await until(() => log.of("error").length > 0, 20000, "an error");
    const [error] = log.of("error");
    assert.equal(error.code, "origin_refused");
    assert.match(error.message, /NOTIFY_ALLOWED_ORIGINS/);
    assert.notEqual(c.status, "open");
  } finally {
    c.close();
  }
});

test("acknowledge sends the contract's frame; the service's acknowledged frame is the event", async () => {
  const { c, log } = client({ token: tokenFor("js-7") });
  c.connect();
  try {
    await until(() => c.status === "open");
    const made = await service.notify("js-7", "Critical", { priority: "critical" });
    await until(() => c.notifications.length === 1);
    await c.acknowledge(made.id, "seen it");
    await until(() => log.of("acknowledged").length || log.of("error").length, 20000, "an answer");
    assert.deepEqual(log.of("error"), []);
    assert.deepEqual(log.of("acknowledged"), [{ id: made.id }]);
    assert.ok(c.notifications[0].acknowledged_at);
    const feed = await service.call("GET", "/v1/users/js-7/notifications");
    assert.equal(feed.items[0].acknowledged_by, "js-7");
  } finally {
    c.close();
  }
});

describe("SSE", () => {
  test("transport sse: live, read over REST, resume with since after a close", async () => {
    const storage = memoryStorage();
    const { c, log } = client({ token: tokenFor("js-8"), transport: "sse", storage, WebSocket: undefined });
    c.connect();
    try {
      await until(() => c.status === "open", 20000, "open");
      assert.equal(c.transport, "sse");
      const made = await service.notify("js-8", "over SSE");
      await until(() => c.notifications.length === 1, 20000, "the notification");
      assert.equal(c.notifications[0].id, made.id);
      await until(async () => {
        const detail = await service.call("GET", `/v1/notifications/${made.id}`);
        return detail.timeline.some((e) => e.event === "delivered" && e.connection_id);
      }, 20000, "the delivery receipt over REST, with this stream's connection id");
      await c.markRead(made.id); // REST on this transport
      await until(() => c.unreadCount === 0, 20000, "unread 0");
      c.close();
      const missed = await service.notify("js-8", "while away");
      c.connect();
      await until(() => c.notifications.length === 2, 20000, "the replay");
      assert.equal(c.notifications[1].id, missed.id);
      assert.deepEqual(log.filter((e) => e.type === "notification").map((e) => e.info.source), ["live", "replay"]);
      assert.deepEqual(log.of("error"), []);
    } finally {
      c.close();
    }
  });

  test("auto: a socket that cannot open falls back to SSE at once", async () => {
    class Blocked extends WS {
      constructor(url) {
        super(url.replace("/v1/ws/notifications", "/v1/no-socket-here")); // the upgrade is refused
      }
    }
    const { c, log } = client({ token: tokenFor("js-9"), WebSocket: Blocked });
    c.connect();
    try {
      await until(() => c.status === "open", 20000, "open");
      assert.equal(c.transport, "sse");
      assert.deepEqual(statuses(log), ["connecting", "open"]); // no "closed" in between
      const made = await service.notify("js-9", "fallback");
      await until(() => c.notifications.some((n) => n.id === made.id), 20000, "delivery");
    } finally {
      c.close();
    }
  });

  test("the stream's close event: an expired token without getToken ends unauthorized", async () => {
    const { c, log } = client({ token: tokenFor("js-11", 2), transport: "sse" });
    c.connect();
    await until(() => c.status === "open", 20000, "open");
    await until(() => c.status === "unauthorized", 20000, "unauthorized");
    const [closed] = log.of("status").filter((s) => s.code === 1008);
    assert.match(closed.reason, /token expired/); // the close event's code and reason
    assert.deepEqual(log.of("error").map((e) => e.code), ["policy_close", "token_refused", "unauthorized"]);
  });

  test("acknowledge over REST on SSE: one acknowledged event, the item stamped", async () => {
    const { c, log } = client({ token: tokenFor("js-12"), transport: "sse", WebSocket: undefined });
    c.connect();
    try {
      await until(() => c.status === "open", 20000, "open");
      const made = await service.notify("js-12", "Critical", { priority: "critical" });
      await until(() => c.notifications.length === 1, 20000, "the notification");
      await c.acknowledge(made.id, "seen at the desk");
      await until(() => c.notifications[0].acknowledged_at, 20000, "acknowledged_at");
      assert.equal(c.notifications[0].acknowledged_by, "js-12");
      const feed = await service.call("GET", "/v1/users/js-12/notifications");
      assert.ok(feed.items[0].acknowledged_at);
      assert.deepEqual(log.of("acknowledged"), [{ id: made.id }]); // the answer and the frame: once
      await assert.rejects(c.acknowledge("no-such-id"), (err) => err.code === "not_found" && err.status === 404);
    } finally {
      c.close();
    }
  });

  test("a refused token on SSE counts toward unauthorized", async () => {
    let asked = 0;
    const { c } = client({
      transport: "sse",
      getToken: () => {
        asked += 1;
        return tokenFor("js-10", 600, "not-the-service-secret-0123456789-xyz");
      },
    });
    c.connect();
    await until(() => c.status === "unauthorized", 20000, "unauthorized");
    assert.equal(asked, 2);
  });
});
