/**
 * @clinic-notify/react: React hooks over @clinic-notify/client.
 *
 *   const { notifications, unreadCount, connected, markRead, markAllRead, acknowledge } =
 *     useNotifications({ url: "https://notify.example.org", getToken: fetchNotifyToken });
 *
 *   const { notifications, connected } = useWebSocketNotifications(userId, { getToken });
 *
 * One hook call opens one connection per (url, userId, transport), closes it on unmount
 * (React 18's StrictMode double mount leaves exactly one), and re-renders on every
 * notification, read, acknowledgement, unread count and status change. It also loads the
 * first page of the user's feed over REST, so the list is not empty after a reload.
 * `notifications` is newest first, without duplicates.
 */
import { NotifyClient as PackagedClient } from "@clinic-notify/client";
import { useCallback, useEffect, useRef, useState } from "react";

/**
 * @param {Object} options  NotifyClient options (url, token, getToken, userId, ...), plus
 *   `historySize` (default 50; 0: none) and `NotifyClient` (another class to use)
 */
export function useNotifications(options) {
  const { url, userId, token, getToken, transport } = options;
  const historySize = options.historySize === undefined ? 50 : options.historySize;
  // The latest callback, without reconnecting each time the parent re-renders.
  const getTokenRef = useRef(getToken);
  getTokenRef.current = getToken;
  const clientRef = useRef(null);
  const [live, setLive] = useState([]);
  const [history, setHistory] = useState([]);
  const [unreadCount, setUnreadCount] = useState(0);
  const [status, setStatus] = useState("closed");
  const [connectedVia, setConnectedVia] = useState(null);
  const [error, setError] = useState(null);
  // A new token only matters when there is no getToken callback to ask for one.
  const tokenKey = getToken ? null : token;

  useEffect(() => {
    const Client = options.NotifyClient || PackagedClient;
    const { historySize: _size, NotifyClient: _class, ...clientOptions } = options;
    const client = new Client({
      ...clientOptions,
      getToken: getToken ? () => getTokenRef.current() : undefined,
    });
    clientRef.current = client;
    let active = true;
    const stamp = (field, ids, at) => (items) =>
      items.map((n) => (ids.has(n.id) && !n[field] ? { ...n, [field]: at } : n));
    const offs = [
      client.on("notification", () => setLive(client.notifications)),
      client.on("unread", (e) => setUnreadCount(e.count)),
      client.on("status", (e) => {
        setStatus(e.status);
        setConnectedVia(e.status === "open" ? e.transport : null);
      }),
      client.on("error", (e) => setError(e)),
      client.on("read", (e) => {
        setLive(client.notifications);
        setHistory(stamp("read_at", new Set(e.ids), new Date().toISOString()));
      }),
      client.on("acknowledged", (e) => {
        setLive(client.notifications);
        setHistory(stamp("acknowledged_at", new Set([e.id]), new Date().toISOString()));
      }),
    ];
    client.connect();
    if (historySize > 0) {
      client
        .loadFeed({ limit: historySize })
        .then((page) => active && setHistory(page.items))
        .catch(
          (err) => active && setError({ code: err.code || "feed_failed", message: err.message }),
        );
    }
    return () => {
      active = false;
      offs.forEach((off) => off());
      client.close();
      clientRef.current = null;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [url, userId, tokenKey, transport, historySize]);

  const markRead = useCallback((id) => clientRef.current && clientRef.current.markRead(id), []);
  const markAllRead = useCallback(() => clientRef.current && clientRef.current.markAllRead(), []);
  const acknowledge = useCallback(
    (id, note) => clientRef.current && clientRef.current.acknowledge(id, note),
    [],
  );

  return {
    notifications: merge(live, history),
    unreadCount,
    connected: status === "open",
    status,
    transport: connectedVia,
    error,
    markRead,
    markAllRead,
    acknowledge,
  };
}

/**
 * The earlier system's hook, by its name: `useWebSocketNotifications(userId, options)`.
 * @param {string} userId
 * @param {Object} options  as for useNotifications (a token or getToken is required)
 */
export function useWebSocketNotifications(userId, options) {
  return useNotifications({ ...options, userId });
}

/** Live and loaded notifications together: newest first, each id once (live wins). */
function merge(live, history) {
  const byId = new Map();
  live.forEach((n) => byId.set(n.id, n));
  history.forEach((n) => {
    if (!byId.has(n.id)) {
      byId.set(n.id, n);
    }
  });
  return Array.from(byId.values()).sort((a, b) => PackagedClient.compareCursors(b.cursor || "0", a.cursor || "0"));
}
