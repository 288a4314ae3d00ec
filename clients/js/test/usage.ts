// Compiled by `npm run typecheck` (tsc --noEmit) against index.d.ts: the types a portal sees.
import NotifyClientDefault, { NotifyClient, type Notification, type StatusEvent } from "@clinic-notify/client";

const client: NotifyClient = new NotifyClient({
  url: "https://notify.example.org",
  getToken: async () => "token",
  transport: "auto",
  storage: null,
  getTokenTimeout: 5000,
});
const same: typeof NotifyClient = NotifyClientDefault;
const off: () => void = client.on("notification", (n: Notification, info) => {
  const source: "live" | "replay" | "feed" = info.source;
  console.log(n.title, n.cursor, source, same.version);
});
client.on("status", (e: StatusEvent) => console.log(e.status === "unauthorized", e.retryIn));
client.on("acknowledged", (e) => console.log(e.id.length));
client.connect().markRead("n-1").then(() => client.acknowledge("n-1", "seen"));
off();
// @ts-expect-error: not a transport
new NotifyClient({ token: "t", transport: "carrier-pigeon" });
