// An example component: the unread count, the list, and read actions.
//
// `fetchNotifyToken` calls YOUR backend (the portal's server, which knows who is logged in);
// that backend asks the notification service for a token (POST /v1/tokens with its API key)
// or signs one with the shared secret. Never put an API key or the secret in the browser.
import { useNotifications } from "@clinic-notify/react";

async function fetchNotifyToken() {
  const response = await fetch("/portal/api/notify-token", {
    method: "POST",
    credentials: "same-origin",
  });
  if (!response.ok) {
    throw new Error("could not get a notification token: " + response.status);
  }
  return (await response.json()).token;
}

export function NotificationBell({ notifyUrl }) {
  const { notifications, unreadCount, status, markRead, markAllRead } = useNotifications({
    url: notifyUrl,
    getToken: fetchNotifyToken,
  });

  return (
    <section className="notifications">
      <header>
        <span aria-live="polite">{unreadCount} unread</span>
        {status !== "open" && (
          <small>{status === "connecting" ? " connecting…" : " offline, retrying"}</small>
        )}
        <button type="button" onClick={markAllRead} disabled={unreadCount === 0}>
          Mark all read
        </button>
      </header>
      <ul>
        {notifications.map((n) => (
          <li key={n.id} className={n.read_at ? "read" : "unread"}>
            <strong>{n.title}</strong> {n.message}{" "}
            <time dateTime={n.created_at}>{new Date(n.created_at).toLocaleString()}</time>
            {!n.read_at && (
              <button type="button" onClick={() => markRead(n.id)}>
                Mark read
              </button>
            )}
          </li>
        ))}
      </ul>
    </section>
  );
}
