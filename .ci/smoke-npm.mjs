// Smoke test of the npm tarballs, run from an empty folder where only they (with react,
// react-dom and ws) are installed: both entry points resolve, the client receives a
// notification from the running service, and the React hook renders.
// Env: NOTIFY_URL, NOTIFY_API_KEY.
import { createRequire } from "node:module";
import { createElement } from "react";
import { renderToString } from "react-dom/server";
import WebSocket from "ws";

import { NotifyClient } from "@clinic-notify/client";
import { useNotifications } from "@clinic-notify/react";

const require = createRequire(import.meta.url);
const url = process.env.NOTIFY_URL;
const key = process.env.NOTIFY_API_KEY;
const fail = (why) => {
  console.error(`npm smoke: ${why}`);
  process.exit(1);
};
if (require("@clinic-notify/client").NotifyClient !== NotifyClient) fail("require and import differ");

async function call(path, body) {
  const response = await fetch(url + path, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) fail(`${path}: ${response.status} ${await response.text()}`);
  return (await response.json()).data;
}

const { token } = await call("/v1/tokens", { user_id: "smoke-npm", roles: ["patient"] });
for (const transport of (process.env.SMOKE_TRANSPORTS || "websocket,sse").split(",")) {
  const client = new NotifyClient({ url, token, WebSocket, transport, storage: null });
  const received = new Promise((resolve) => client.on("notification", resolve));
  const opened = new Promise((resolve) => client.on("status", (e) => e.status === "open" && resolve()));
  client.connect();
  const timer = setTimeout(() => fail(`${transport}: nothing within 20 s (${client.status})`), 20000);
  await opened;
  const made = await call("/v1/notifications", {
    user_id: "smoke-npm", type: "custom", title: `over ${transport}`, message: "m",
  });
  const got = await received;
  clearTimeout(timer);
  client.close();
  if (got.id !== made.id) fail(`${transport}: got ${got.id}, sent ${made.id}`);
}

function Badge() {
  const { unreadCount, connected } = useNotifications({ url, token, historySize: 0 });
  return createElement("span", null, `${unreadCount} ${connected}`);
}
if (renderToString(createElement(Badge)) !== "<span>0 false</span>") fail("the hook did not render");
console.log(`npm smoke: both tarballs install, import, receive (${process.env.SMOKE_TRANSPORTS || "websocket,sse"}), render`);
