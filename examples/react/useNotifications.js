/**
 * useNotifications: a React hook over static/notify-client.js.
 *
 *   const { notifications, unreadCount, status, markRead, markAllRead } =
 *     useNotifications({ url: "https://notify.example.org", getToken: fetchNotifyToken });
 *
 * Include the library once (a plain <script src=".../static/notify-client.js"> in your page,
 * or `import "./notify-client.js"` in your bundle): it defines `globalThis.NotifyClient`.
 * Or pass the class as the `NotifyClient` option.
 *
 * The hook opens one connection per (url, userId), closes it on unmount, and re-renders on
 * every notification, read change, unread count change and status change. It also loads the
 * first page of the user's feed over REST, so the list is not empty after a reload.
 * `notifications` is newest first, without duplicates.
 */
import { useCallback, useEffect, useRef, useState } from "react";

/**
 * @param {Object} options  NotifyClient options (url, token, getToken, userId, ...), plus:
 * @param {number} [options.historySize=50]  how many past notifications to load (0: none)
 * @param {Function} [options.NotifyClient]  the class, if not on globalThis
 * @returns {{notifications: Object[], unreadCount: number, status: string,
 *   markRead: function(string): Promise<void>, markAllRead: function(): Promise<void>,
 *   error: Object|null}}
 */
export function useNotifications(options) {
  const { url, userId, token, getToken } = options;
  const historySize = options.historySize === undefined ? 50 : options.historySize;
  // The latest callback, without reconnecting each time the parent re-renders.
  const getTokenRef = useRef(getToken);
  getTokenRef.current = getToken;
  const clientRef = useRef(null);
  const [live, setLive] = useState([]);
  const [history, setHistory] = useState([]);
  const [unreadCount, setUnreadCount] = useState(0);
  const [status, setStatus] = useState("closed");
  const [error, setError] = useState(null);
  // A new token only matters when there is no getToken callback to ask for one.
  const tokenKey = getToken ? null : token;

  useEffect(() => {
    const NotifyClient = options.NotifyClient || globalThis.NotifyClient;
    if (!NotifyClient) {
      throw new Error("useNotifications: include static/notify-client.js first");
    }
    const client = new NotifyClient({
      ...options,
      getToken: getToken ? () => getTokenRef.current() : undefined,
    });
    clientRef.current = client;
    let active = true;
    const offs = [
      client.on("notification", () => setLive(client.notifications)),
      client.on("unread", (e) => setUnreadCount(e.count)),
      client.on("status", (e) => setStatus(e.status)),
      client.on("error", (e) => setError(e)),
      client.on("read", (e) => {
        const now = new Date().toISOString();
        const ids = new Set(e.ids);
        setLive(client.notifications);
        setHistory((items) =>
          items.map((n) => (ids.has(n.id) && !n.read_at ? { ...n, read_at: now } : n)),
        );
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
  }, [url, userId, tokenKey, historySize]);

  const markRead = useCallback((id) => clientRef.current && clientRef.current.markRead(id), []);
  const markAllRead = useCallback(() => clientRef.current && clientRef.current.markAllRead(), []);

  return { notifications: merge(live, history), unreadCount, status, markRead, markAllRead, error };
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
  return Array.from(byId.values()).sort((a, b) => newer(b.cursor, a.cursor));
}

function newer(a, b) {
  // Cursors are decimal strings: longer is larger, then compare as text.
  const x = a || "0";
  const y = b || "0";
  return x.length !== y.length ? x.length - y.length : x < y ? -1 : x > y ? 1 : 0;
}
