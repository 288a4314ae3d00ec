// Types of @clinic-notify/react, written by hand against index.mjs.
import type {
  ErrorEvent,
  Notification,
  NotifyClient,
  NotifyClientOptions,
  Status,
} from "@clinic-notify/client";

export interface UseNotificationsOptions extends NotifyClientOptions {
  /** how many past notifications to load over REST on mount (0: none); 50 */
  historySize?: number;
  /** another client class to use (default: the package's) */
  NotifyClient?: typeof NotifyClient;
}

export interface NotificationsState {
  /** newest first, each id once: live, replayed and the first page of the feed */
  notifications: Notification[];
  unreadCount: number;
  /** status === "open" */
  connected: boolean;
  status: Status;
  /** "websocket" or "sse" while connected, else null */
  transport: "websocket" | "sse" | null;
  /** the last error event, for a discreet notice; the client recovers by itself */
  error: ErrorEvent | { code: string; message: string } | null;
  markRead(id: string): Promise<void> | null;
  markAllRead(): Promise<void> | null;
  acknowledge(id: string, note?: string): Promise<void> | null;
}

export declare function useNotifications(options: UseNotificationsOptions): NotificationsState;

/** The earlier system's hook, by its name. */
export declare function useWebSocketNotifications(
  userId: string,
  options: UseNotificationsOptions,
): NotificationsState;
