// Types of @clinic-notify/client, written by hand against notify-client.js and checked by
// test/types.test.mjs (every option here is a key of NotifyClient.defaults, and back) and by
// `npm run typecheck` (test/usage.ts compiles against this file).

/** A notification as the service sends it (CONTRACT.md section 2). */
export interface Notification {
  id: string;
  /** null for a broadcast */
  user_id: string | null;
  audience?: string;
  type: "appointment" | "lab_result" | "ai_analysis" | "system_alert" | "custom" | string;
  priority: "low" | "normal" | "high" | "critical";
  title: string;
  message: string;
  data: Record<string, unknown>;
  created_at: string;
  deliver_at: string | null;
  expires_at: string | null;
  delivered_at: string | null;
  read_at: string | null;
  /** its place in the user's feed: a decimal string, larger is newer */
  cursor: string;
  ack_required?: boolean;
  acknowledged_at?: string | null;
  acknowledged_by?: string | null;
  escalation?: unknown;
}

/** Anything with getItem/setItem, e.g. localStorage, sessionStorage, or a Map-backed object. */
export interface CursorStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** A WebSocket constructor: the browser's, or e.g. the `ws` package's in Node. */
export type WebSocketConstructor = new (url: string) => {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
};

export type Transport = "auto" | "websocket" | "sse";

export interface NotifyClientOptions {
  /** the service's base URL, e.g. "https://notify.example.org"; default: the page's origin */
  url?: string;
  /** a connection token (JWT) for the user */
  token?: string;
  /** fetches a fresh token from your backend: first connect, before expiry, after a refusal */
  getToken?: () => string | Promise<string>;
  /** ms to wait for getToken before it counts as failed (an error, then a retry); 10000 */
  getTokenTimeout?: number;
  /** the user; default: the token's `sub` claim */
  userId?: string;
  /** "auto" (socket first, SSE when it cannot open), "websocket" or "sse"; "auto" */
  transport?: Transport;
  /** the WebSocket class, where there is no global one (Node 20: `require("ws")`) */
  WebSocket?: WebSocketConstructor;
  /** where the last cursor is kept; default localStorage; null: memory only */
  storage?: CursorStorage | null;
  /** prefix of the storage key; "notify-client" */
  storageKey?: string;
  /** send a delivery receipt for every notification; true */
  ack?: boolean;
  /** page the REST feed when the replay was cut short; true */
  fillGaps?: boolean;
  /** first reconnect delay, ms; 500 */
  minDelay?: number;
  /** longest reconnect delay, ms; 30000 */
  maxDelay?: number;
  /** ms between ping frames on an open socket; 10000 */
  pingInterval?: number;
  /** ms to wait for any frame after a ping; 10000 */
  pongTimeout?: number;
  /** ms from opening a connection to its welcome; 15000 */
  connectTimeout?: number;
  /** ms of silence on an SSE stream (the service comments every 15 s) before reconnecting; 45000 */
  sseTimeout?: number;
  /** ms before the token's exp to fetch a fresh one and reconnect with it; 15000 */
  refreshMargin?: number;
  /** most notifications kept in `notifications`; 500 */
  keep?: number;
  /** send the token as ?token= instead of in the first frame; false */
  tokenInUrl?: boolean;
}

export type Status = "connecting" | "open" | "closed" | "offline" | "unauthorized";

export interface StatusEvent {
  status: Status;
  /** open: "websocket" or "sse" */
  transport?: "websocket" | "sse";
  /** open: false when more was missed than the service replays and the feed could not fill */
  recovered?: boolean;
  connectionId?: string;
  /** open: this reconnect only swapped in a fresh token */
  refreshed?: boolean;
  /** closed: the close code */
  code?: number | null;
  reason?: string;
  /** closed: ms until the next attempt */
  retryIn?: number;
  offline?: boolean;
}

export interface ErrorEvent {
  /** the contract's error code, or one of the client's: token_unavailable, token_timeout,
   * token_refused, unauthorized, origin_refused, policy_close, gap_not_filled, bad_url */
  code: string;
  message: string;
  fields?: Record<string, unknown>;
  origin?: string;
  cause?: unknown;
}

export interface NotifyClientEvents {
  notification: (notification: Notification, info: { source: "live" | "replay" | "feed" }) => void;
  read: (event: { ids: string[] }) => void;
  acknowledged: (event: { id: string }) => void;
  unread: (event: { count: number }) => void;
  status: (event: StatusEvent) => void;
  error: (event: ErrorEvent) => void;
}

/** A failed REST call: the contract's error code, the HTTP status, per-field messages. */
export interface NotifyRequestError extends Error {
  code: string;
  status: number;
  fields?: Record<string, unknown>;
}

export interface FeedQuery {
  unread?: boolean;
  type?: string;
  limit?: number;
  before?: string;
}

export declare class NotifyClient {
  constructor(options: NotifyClientOptions);
  /** every option and its default (undefined: worked out at run time) */
  static readonly defaults: Readonly<Required<{ [K in keyof NotifyClientOptions]: unknown }>>;
  static readonly version: string;
  static compareCursors(a: string, b: string): number;
  connect(): this;
  close(): void;
  on<K extends keyof NotifyClientEvents>(type: K, listener: NotifyClientEvents[K]): () => void;
  off<K extends keyof NotifyClientEvents>(type: K, listener: NotifyClientEvents[K]): void;
  readonly status: Status;
  readonly transport: "websocket" | "sse" | null;
  readonly unreadCount: number;
  readonly notifications: Notification[];
  readonly cursor: string | null;
  readonly userId: string | null;
  markRead(id: string): Promise<void>;
  markAllRead(): Promise<void>;
  acknowledge(id: string, note?: string): Promise<void>;
  /** Web Push on this device: permission, subscribe with the VAPID key, register; idempotent. */
  enablePush(options?: PushOptions & { device?: string }): Promise<PushSubscriptionInfo>;
  /** Stop Web Push on this device; false when it was not subscribed. */
  disablePush(options?: PushOptions): Promise<boolean>;
  loadFeed(query?: FeedQuery): Promise<{ items: Notification[]; next: string | null }>;
}

export declare function compareCursors(a: string, b: string): number;

export default NotifyClient;

export interface PushOptions {
  /** The service worker's URL on the portal's origin (default: the service's /static/notify-sw.js). */
  serviceWorker?: string;
  /** The worker's scope (default: its folder). */
  scope?: string;
}

/** A registered push subscription as the service shows it (never its keys). */
export interface PushSubscriptionInfo {
  id: string;
  endpoint: string;
  device: string | null;
  created_at: string;
}
