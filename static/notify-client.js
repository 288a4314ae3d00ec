/**
 * notify-client.js: the browser client of the clinic notification service.
 *
 * One file, no dependencies. It works two ways:
 *
 *   <script src="/static/notify-client.js"></script>      // a plain script tag
 *   <script>const client = new NotifyClient({...});</script>
 *
 *   import "/static/notify-client.js";                    // inside an ES module
 *   const { NotifyClient } = globalThis;
 *
 * (A file that is valid as a plain script cannot hold `export` statements, so as a module it
 * is imported for its effect: it defines `globalThis.NotifyClient`. Bundlers and CommonJS
 * also get it as `module.exports`, so `import { NotifyClient } from "./notify-client.js"`
 * works through webpack's or Rollup's CommonJS support.)
 *
 * What it does: connects with a token (asking your `getToken` callback for a fresh one when
 * the token expires or is refused); reconnects with capped exponential backoff and jitter,
 * forever, pausing while the browser is offline; resumes with `since` = the last cursor it
 * saw, kept in localStorage per user so a reload resumes too; drops duplicates by id; acks
 * every notification; pages the REST feed when the server could not replay everything; pings
 * so that a dead connection is noticed within `pingInterval + pongTimeout`.
 */
(function (root, factory) {
  "use strict";
  var NotifyClient = factory();
  if (typeof module === "object" && module && module.exports) {
    module.exports = NotifyClient;
  }
  if (root) {
    root.NotifyClient = NotifyClient;
  }
})(
  typeof globalThis !== "undefined" ? globalThis : typeof self !== "undefined" ? self : this,
  function () {
    "use strict";

    var SOCKET_PATH = "/v1/ws/notifications";
    var FEED_PAGE = 200; // the service's largest feed page
    var MAX_FEED_PAGES = 50; // at most 10,000 notifications fetched to fill one gap
    var EXPIRY_SKEW_MS = 15000; // refresh a token this long before its `exp`
    var SEEN_IDS = 5000; // ids remembered for dropping duplicates
    var CLOSE_POLICY = 1008;
    var CLOSE_TRY_LATER = 1013;
    var CLOSE_DEAD = 4000; // our own code: the connection stopped answering

    /**
     * A notification as the service sends it (CONTRACT.md section 2).
     * @typedef {Object} Notification
     * @property {string} id
     * @property {string|null} user_id  null for a broadcast
     * @property {string} type  appointment, lab_result, ai_analysis, system_alert or custom
     * @property {string} priority  low, normal, high or critical
     * @property {string} title
     * @property {string} message
     * @property {Object} data
     * @property {string} created_at
     * @property {string|null} read_at
     * @property {string} cursor  its place in the user's feed; larger is newer
     */

    /**
     * @typedef {Object} NotifyClientOptions
     * @property {string} [url]  the service's base URL, e.g. "https://notify.example.org";
     *   default: the page's own origin
     * @property {string} [token]  a connection token (JWT) for the user
     * @property {function(): (string|Promise<string>)} [getToken]  fetches a fresh token from
     *   your backend; called when there is no token, when it expires, and when the service
     *   refuses it. Strongly recommended: tokens are short-lived.
     * @property {string} [userId]  the user; default: the token's `sub` claim
     * @property {Storage|null} [storage]  where the last cursor is kept; default localStorage;
     *   null keeps it in memory only
     * @property {string} [storageKey="notify-client"]  prefix of the storage key
     * @property {boolean} [ack=true]  send a delivery receipt for every notification
     * @property {boolean} [fillGaps=true]  page the REST feed when the replay was cut short
     * @property {number} [minDelay=500]  first reconnect delay, in ms
     * @property {number} [maxDelay=30000]  longest reconnect delay, in ms
     * @property {number} [pingInterval=10000]  ms between ping frames on an open socket
     * @property {number} [pongTimeout=10000]  ms to wait for any frame after a ping
     * @property {number} [connectTimeout=15000]  ms from opening a socket to its welcome
     * @property {number} [keep=500]  most notifications kept in `notifications`
     * @property {boolean} [tokenInUrl=false]  send the token as `?token=` instead of in the
     *   first frame; the default keeps it out of proxy logs and the browser console, and makes
     *   a refused token a readable close (1008) rather than an unreadable failed upgrade
     */

    /**
     * Compare two cursors (decimal strings without leading zeros, up to 18 digits).
     * @param {string} a
     * @param {string} b
     * @returns {number} negative, zero or positive
     */
    function compareCursors(a, b) {
      if (a.length !== b.length) {
        return a.length - b.length;
      }
      return a < b ? -1 : a > b ? 1 : 0;
    }

    function isCursor(value) {
      return typeof value === "string" && /^[0-9]{1,18}$/.test(value);
    }

    /** The claims of a JWT, unverified (the service verifies; we only read `sub` and `exp`). */
    function tokenClaims(token) {
      try {
        var part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
        while (part.length % 4) {
          part += "=";
        }
        return JSON.parse(atob(part));
      } catch (err) {
        return {};
      }
    }

    function isOnline() {
      return typeof navigator === "undefined" || navigator.onLine !== false;
    }

    function defaultStorage() {
      try {
        return typeof localStorage !== "undefined" ? localStorage : null;
      } catch (err) {
        return null; // storage disabled by the browser's settings
      }
    }

    /**
     * A live connection to one user's notifications.
     *
     * Events (subscribe with `on`):
     * - `notification` (notification, {source: "live"|"replay"|"feed"}): each new one, once
     * - `read` ({ids}): notifications marked read, on any device of the user
     * - `unread` ({count}): the unread count changed
     * - `status` ({status: "connecting"|"open"|"closed", ...detail}): connection state;
     *   "closed" carries `code`, `reason`, `retryIn` (ms) or `offline: true`
     * - `error` ({code, message, fields?}): a problem worth showing or logging; the client
     *   keeps going by itself
     */
    class NotifyClient {
      /**
       * @param {NotifyClientOptions} options
       */
      constructor(options) {
        var o = options || {};
        if (!o.token && typeof o.getToken !== "function") {
          throw new TypeError("NotifyClient needs a token or a getToken callback");
        }
        var base = String(o.url || (typeof location !== "undefined" ? location.origin : ""));
        if (typeof location !== "undefined" && typeof URL === "function") {
          base = new URL(base, location.href).href; // "/notify" behind a proxy: absolute
        }
        this._base = base.replace(/\/+$/, "");
        this._token = o.token || null;
        this._getToken = typeof o.getToken === "function" ? o.getToken : null;
        this._userId = o.userId || null;
        this._storage = o.storage === undefined ? defaultStorage() : o.storage;
        this._storageKey = o.storageKey || "notify-client";
        this._ack = o.ack !== false;
        this._fillGaps = o.fillGaps !== false;
        this._minDelay = o.minDelay || 500;
        this._maxDelay = Math.max(o.maxDelay || 30000, this._minDelay);
        this._pingInterval = o.pingInterval || 10000;
        this._pongTimeout = o.pongTimeout || 10000;
        this._connectTimeout = o.connectTimeout || 15000;
        this._keep = o.keep || 500;
        this._tokenInUrl = o.tokenInUrl === true;

        this._listeners = {};
        this._stopped = true;
        this._ws = null;
        this._opening = false;
        this._attempt = 0;
        this._failures = 0;
        this._timer = null;
        this._tokenSuspect = false;
        this._cursor = null;
        this._seen = new Set();
        this._seenOrder = [];
        this._items = [];
        this._unread = 0;
        this._status = "closed";
        this._onOnline = this._handleOnline.bind(this);
        this._onOffline = this._handleOffline.bind(this);
        if (!this._userId && this._token) {
          this._learnUser(tokenClaims(this._token));
        } else if (this._userId) {
          this._cursor = this._loadCursor();
        }
      }

      // ---- public API --------------------------------------------------------------------

      /**
       * Start connecting (and keep reconnecting until `close()`).
       * @returns {NotifyClient} this client
       */
      connect() {
        if (!this._stopped) {
          return this;
        }
        this._stopped = false;
        if (typeof addEventListener === "function") {
          addEventListener("online", this._onOnline);
          addEventListener("offline", this._onOffline);
        }
        this._open();
        return this;
      }

      /** Close the connection for good (no more reconnects). */
      close() {
        this._stopped = true;
        this._clearTimer();
        if (typeof removeEventListener === "function") {
          removeEventListener("online", this._onOnline);
          removeEventListener("offline", this._onOffline);
        }
        if (this._ws) {
          this._drop(this._ws, 1000, "client closed", false);
        } else {
          this._setStatus("closed", { code: 1000, reason: "client closed" });
        }
      }

      /**
       * Listen to an event.
       * @param {"notification"|"read"|"unread"|"status"|"error"} type
       * @param {Function} listener
       * @returns {function(): void} call it to stop listening
       */
      on(type, listener) {
        (this._listeners[type] = this._listeners[type] || []).push(listener);
        var self = this;
        return function () {
          self.off(type, listener);
        };
      }

      /**
       * Stop listening.
       * @param {string} type
       * @param {Function} listener
       */
      off(type, listener) {
        var list = this._listeners[type] || [];
        var at = list.indexOf(listener);
        if (at >= 0) {
          list.splice(at, 1);
        }
      }

      /** @returns {"connecting"|"open"|"closed"} the connection state */
      get status() {
        return this._status;
      }

      /** @returns {number} how many of the user's notifications are unread */
      get unreadCount() {
        return this._unread;
      }

      /** @returns {Notification[]} notifications received so far, oldest first (a copy) */
      get notifications() {
        return this._items.slice();
      }

      /** @returns {string|null} the last cursor seen: where a reconnect resumes */
      get cursor() {
        return this._cursor;
      }

      /** @returns {string|null} the user this client listens for */
      get userId() {
        return this._userId;
      }

      /**
       * Mark one notification read; every device of the user hears of it.
       * @param {string} id
       * @returns {Promise<void>}
       */
      async markRead(id) {
        if (this._sendFrame({ type: "read", id: id })) {
          return;
        }
        var path = "/notifications/" + encodeURIComponent(id) + "/read";
        await this._userRequest("POST", path);
        this._applyRead([id]);
        await this._refreshUnread();
      }

      /**
       * Mark every notification of the user read.
       * @returns {Promise<void>}
       */
      async markAllRead() {
        if (this._sendFrame({ type: "read_all" })) {
          return;
        }
        await this._userRequest("POST", "/notifications/read-all");
        this._applyRead(
          this._items.map(function (n) {
            return n.id;
          }),
        );
        await this._refreshUnread();
      }

      /**
       * One page of the user's feed over REST: critical first, then newest first.
       * @param {{unread?: boolean, type?: string, limit?: number, before?: string}} [query]
       * @returns {Promise<{items: Notification[], next: string|null}>}
       */
      loadFeed(query) {
        var q = query || {};
        var params = [];
        ["unread", "type", "limit", "before"].forEach(function (name) {
          if (q[name] !== undefined && q[name] !== null) {
            params.push(name + "=" + encodeURIComponent(String(q[name])));
          }
        });
        var path = "/notifications" + (params.length ? "?" + params.join("&") : "");
        return this._userRequest("GET", path);
      }

      // ---- connecting --------------------------------------------------------------------

      async _open() {
        this._clearTimer();
        if (this._stopped || this._ws || this._opening) {
          return;
        }
        if (!isOnline()) {
          this._setStatus("closed", { offline: true });
          return; // the "online" event resumes
        }
        this._opening = true;
        this._setStatus("connecting");
        var token;
        try {
          token = await this._freshToken();
        } catch (err) {
          this._opening = false;
          this._emitError("token_unavailable", "could not get a connection token", err);
          this._retry(null, "no token");
          return;
        }
        this._opening = false;
        if (this._stopped || this._ws) {
          return;
        }
        var since = this._cursor;
        var query = [];
        if (this._tokenInUrl) {
          query.push("token=" + encodeURIComponent(token));
        }
        if (since) {
          query.push("since=" + since);
        }
        var url =
          this._base.replace(/^http/, "ws") +
          SOCKET_PATH +
          (query.length ? "?" + query.join("&") : "");
        var ws;
        try {
          ws = new WebSocket(url);
        } catch (err) {
          this._emitError("bad_url", "cannot open a socket to " + this._base, err);
          this._retry(null, "bad url");
          return;
        }
        this._ws = ws;
        this._conn = { since: since, upgraded: false, welcomed: false, replaying: !!since };
        var self = this;
        this._handshakeTimer = setTimeout(function () {
          self._drop(ws, CLOSE_DEAD, "no welcome in time", false);
        }, this._connectTimeout);
        var tokenInUrl = this._tokenInUrl;
        ws.onopen = function () {
          if (self._ws === ws) {
            self._conn.upgraded = true;
            if (!tokenInUrl) {
              ws.send(JSON.stringify({ type: "auth", token: token }));
            }
          }
        };
        ws.onmessage = function (event) {
          if (self._ws === ws) {
            self._onFrame(ws, event.data);
          }
        };
        ws.onclose = function (event) {
          self._drop(ws, event.code, event.reason, true);
        };
        ws.onerror = function () {
          // A close event follows; a refused upgrade (401, 403) is not readable here.
        };
      }

      async _freshToken() {
        var token = this._token;
        var claims = token ? tokenClaims(token) : {};
        var expiring =
          typeof claims.exp === "number" && claims.exp * 1000 - EXPIRY_SKEW_MS < Date.now();
        if (token && !expiring && !this._tokenSuspect) {
          this._learnUser(claims);
          return token;
        }
        if (!this._getToken) {
          if (!token) {
            throw new Error("no token and no getToken callback");
          }
          return token; // nothing better to try
        }
        var fresh = await this._getToken();
        if (typeof fresh !== "string" || !fresh) {
          throw new Error("getToken did not return a token");
        }
        this._token = fresh;
        this._tokenSuspect = false;
        this._learnUser(tokenClaims(fresh));
        return fresh;
      }

      _learnUser(claims) {
        if (!this._userId && typeof claims.sub === "string") {
          this._userId = claims.sub;
          this._cursor = this._loadCursor();
        }
      }

      /** The socket `ws` is finished: tidy up, and unless closed by us, reconnect. */
      _drop(ws, code, reason, closedByPeer) {
        if (ws !== this._ws) {
          return;
        }
        var conn = this._conn;
        this._ws = null;
        clearTimeout(this._handshakeTimer);
        clearInterval(this._pingTimer);
        clearTimeout(this._pongTimer);
        this._pongTimer = null;
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        if (!closedByPeer) {
          // Don't wait for a closing handshake a dead peer will never answer.
          try {
            ws.close(code === 1000 ? 1000 : CLOSE_DEAD, reason);
          } catch (err) {
            /* already closing */
          }
        }
        if (code === CLOSE_POLICY) {
          this._tokenSuspect = true; // e.g. the token expired while connected
          this._emit("error", { code: "policy_close", message: reason || "closed by policy" });
        } else if (!conn.upgraded) {
          // Browsers hide a refused upgrade's status (401) behind the same close as a network
          // failure, so repeated failures are the cue for a new token: after the 2nd, 4th,
          // 8th... in a row, which spares your token endpoint during an outage.
          this._failures += 1;
          if (this._failures >= 2 && (this._failures & (this._failures - 1)) === 0) {
            this._tokenSuspect = true;
          }
        }
        if (this._stopped) {
          this._setStatus("closed", { code: code, reason: reason });
          return;
        }
        this._retry(code, reason);
      }

      _retry(code, reason) {
        if (this._stopped) {
          return;
        }
        if (!isOnline()) {
          this._setStatus("closed", { code: code, reason: reason, offline: true });
          return;
        }
        var ceiling = Math.min(
          this._maxDelay,
          this._minDelay * Math.pow(2, Math.min(this._attempt, 30)),
        );
        this._attempt += 1;
        // "Equal jitter": between half the ceiling and the ceiling, so clients spread out.
        var delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
        if (code === CLOSE_TRY_LATER) {
          delay = Math.max(delay, Math.min(5000, this._maxDelay));
        }
        this._setStatus("closed", { code: code, reason: reason, retryIn: delay });
        var self = this;
        this._timer = setTimeout(function () {
          self._timer = null;
          self._open();
        }, delay);
      }

      _clearTimer() {
        if (this._timer) {
          clearTimeout(this._timer);
          this._timer = null;
        }
      }

      _handleOnline() {
        if (!this._stopped && !this._ws) {
          this._attempt = 0;
          this._open();
        }
      }

      _handleOffline() {
        if (!this._stopped && !this._ws) {
          this._clearTimer();
          this._setStatus("closed", { offline: true });
        }
      }

      _startPings(ws) {
        var self = this;
        this._pingTimer = setInterval(function () {
          if (self._ws !== ws) {
            return;
          }
          if (self._pongTimer) {
            return; // the last ping is still waiting for its answer
          }
          var heardBefore = self._heardAt;
          self._sendFrame({ type: "ping" });
          self._pongTimer = setTimeout(function () {
            self._pongTimer = null;
            if (self._ws === ws && self._heardAt === heardBefore) {
              self._drop(ws, CLOSE_DEAD, "no answer to ping", false);
            }
          }, self._pongTimeout);
        }, this._pingInterval);
      }

      _sendFrame(frame) {
        var ws = this._ws;
        if (!ws || !this._conn.welcomed || ws.readyState !== 1) {
          return false;
        }
        ws.send(JSON.stringify(frame));
        return true;
      }

      // ---- frames from the server --------------------------------------------------------

      _onFrame(ws, raw) {
        this._heardAt = Date.now() + Math.random(); // distinct on every frame
        var frame;
        try {
          frame = JSON.parse(raw);
        } catch (err) {
          return;
        }
        if (!frame || typeof frame.type !== "string") {
          return;
        }
        var conn = this._conn;
        switch (frame.type) {
          case "welcome":
            this._onWelcome(ws, frame);
            break;
          case "notification":
            if (conn.holding) {
              conn.holding.push({
                n: frame.notification,
                source: conn.replaying ? "replay" : "live",
              });
            } else {
              this._accept(frame.notification, conn.replaying ? "replay" : "live", conn);
            }
            break;
          case "replay_done":
            conn.replaying = false;
            if (conn.holding) {
              this._fill(conn);
            } else if (isCursor(frame.cursor)) {
              this._advance(frame.cursor);
            }
            break;
          case "read":
            this._applyRead(Array.isArray(frame.ids) ? frame.ids : []);
            break;
          case "unread_count":
            this._setUnread(frame.count);
            break;
          case "error":
            this._emit("error", { code: frame.code, message: frame.message, fields: frame.fields });
            break;
          default:
            break; // pong, and frames of later versions
        }
      }

      _onWelcome(ws, frame) {
        var conn = this._conn;
        conn.welcomed = true;
        clearTimeout(this._handshakeTimer);
        this._attempt = 0;
        this._failures = 0;
        this._tokenSuspect = false;
        this._learnUser({ sub: frame.user_id });
        conn.liveFrom = isCursor(frame.cursor) ? frame.cursor : null;
        if (conn.since && conn.liveFrom && compareCursors(conn.liveFrom, conn.since) < 0) {
          // Our cursor is beyond this feed's end (a restored database, another deployment):
          // take the service's. What was missed is unknown, so nothing is filled in (that
          // could be a patient's whole history); `recovered: false` tells the page to reload.
          this._rewind(conn.liveFrom);
          conn.since = null;
        }
        if (!this._cursor && conn.liveFrom) {
          this._advance(conn.liveFrom); // nothing seen yet: resume from here next time
        }
        if (conn.since && frame.recovered === false && this._fillGaps) {
          conn.holding = []; // replayed frames wait until the gap before them is filled
        }
        this._setUnread(frame.unread_count);
        this._startPings(ws);
        this._setStatus("open", {
          recovered: frame.recovered !== false,
          connectionId: frame.connection_id,
        });
      }

      /** Page the REST feed for what lies between `conn.since` and the held replay. */
      async _fill(conn) {
        var since = conn.since;
        var upper = null;
        conn.holding.forEach(function (entry) {
          var c = entry.n && entry.n.cursor;
          if (isCursor(c) && (upper === null || compareCursors(c, upper) < 0)) {
            upper = c;
          }
        });
        var found = [];
        var before = null;
        try {
          for (var page = 0; page < MAX_FEED_PAGES; page++) {
            var answer = await this.loadFeed({ limit: FEED_PAGE, before: before });
            var items = answer.items || [];
            items.forEach(function (n) {
              var inGap =
                isCursor(n.cursor) &&
                compareCursors(n.cursor, since) > 0 &&
                (upper === null || compareCursors(n.cursor, upper) < 0);
              if (inGap) {
                found.push(n);
              }
            });
            var last = items[items.length - 1];
            // Critical items come first, then the rest newest first: stop below `since`.
            var pastGap =
              last && last.priority !== "critical" && compareCursors(last.cursor, since) <= 0;
            if (!answer.next || !last || pastGap) {
              break;
            }
            before = answer.next;
          }
        } catch (err) {
          this._emitError("gap_not_filled", "could not page the feed; some may be missing", err);
        }
        var all = found.map(function (n) {
          return { n: n, source: "feed" };
        });
        all = all.concat(
          conn.holding.filter(function (entry) {
            return entry.n && isCursor(entry.n.cursor);
          }),
        );
        conn.holding = null;
        all.sort(function (a, b) {
          return compareCursors(a.n.cursor, b.n.cursor);
        });
        var self = this;
        all.forEach(function (entry) {
          self._accept(entry.n, entry.source, conn);
        });
      }

      _accept(n, source, conn) {
        if (!n || typeof n.id !== "string") {
          return;
        }
        if (isCursor(n.cursor)) {
          this._advance(n.cursor);
        }
        if (this._seen.has(n.id)) {
          return; // delivery is at-least-once: drop the duplicate
        }
        this._remember(n.id);
        this._insert(n);
        if (this._ack) {
          this._sendFrame({ type: "ack", id: n.id });
        }
        var counted =
          conn.liveFrom && isCursor(n.cursor) && compareCursors(n.cursor, conn.liveFrom) <= 0;
        if (source === "live" && !n.read_at && !counted) {
          this._setUnread(this._unread + 1); // newer than the welcome's count
        }
        this._emit("notification", n, { source: source });
      }

      _insert(n) {
        var items = this._items;
        var at = items.length;
        // Oldest first; almost always an append.
        while (
          at > 0 &&
          isCursor(n.cursor) &&
          isCursor(items[at - 1].cursor) &&
          compareCursors(items[at - 1].cursor, n.cursor) > 0
        ) {
          at -= 1;
        }
        items.splice(at, 0, n);
        if (items.length > this._keep) {
          items.splice(0, items.length - this._keep);
        }
      }

      _remember(id) {
        this._seen.add(id);
        this._seenOrder.push(id);
        if (this._seenOrder.length > SEEN_IDS) {
          this._seen.delete(this._seenOrder.shift());
        }
      }

      _applyRead(ids) {
        var now = new Date().toISOString();
        var wanted = new Set(ids);
        this._items.forEach(function (n) {
          if (wanted.has(n.id) && !n.read_at) {
            n.read_at = now;
          }
        });
        this._emit("read", { ids: ids });
      }

      _setUnread(count) {
        if (typeof count !== "number" || count < 0) {
          return;
        }
        if (count !== this._unread) {
          this._unread = count;
          this._emit("unread", { count: count });
        }
      }

      async _refreshUnread() {
        var answer = await this._userRequest("GET", "/unread-count");
        this._setUnread(answer.count);
      }

      // ---- the cursor in storage ---------------------------------------------------------

      _key() {
        return this._storageKey + ":cursor:" + this._userId;
      }

      _loadCursor() {
        try {
          var value = this._storage ? this._storage.getItem(this._key()) : null;
          return isCursor(value) ? value : null;
        } catch (err) {
          return null;
        }
      }

      _advance(cursor) {
        if (this._cursor && compareCursors(cursor, this._cursor) <= 0) {
          return;
        }
        this._cursor = cursor;
        this._storeCursor(cursor, false);
      }

      /** Take the service's cursor, also when it is lower than ours (ours was beyond its feed). */
      _rewind(cursor) {
        this._cursor = cursor;
        this._storeCursor(cursor, true);
      }

      _storeCursor(cursor, replace) {
        if (!this._storage || !this._userId) {
          return;
        }
        try {
          // Another tab of the same user may have gone further: keep the larger.
          var stored = this._storage.getItem(this._key());
          if (replace || !isCursor(stored) || compareCursors(cursor, stored) > 0) {
            this._storage.setItem(this._key(), cursor);
          }
        } catch (err) {
          /* storage full or disabled: the cursor still lives in memory */
        }
      }

      // ---- REST --------------------------------------------------------------------------

      /** A REST call on the user's own resources with the user's token; one retry on 401. */
      async _userRequest(method, path) {
        for (var tries = 0; ; tries++) {
          var token = await this._freshToken();
          if (!this._userId) {
            throw new Error("the user is not known: give userId or a token with sub");
          }
          var url = this._base + "/v1/users/" + encodeURIComponent(this._userId) + path;
          var response = await fetch(url, {
            method: method,
            headers: { Authorization: "Bearer " + token },
          });
          var body = null;
          try {
            body = await response.json();
          } catch (err) {
            body = null;
          }
          if (response.ok && body && body.success) {
            return body.data;
          }
          if (response.status === 401 && tries === 0 && this._getToken) {
            this._tokenSuspect = true;
            continue;
          }
          var error = (body && body.error) || {};
          var failure = new Error(error.message || "HTTP " + response.status);
          failure.code = error.code || "http_" + response.status;
          failure.status = response.status;
          failure.fields = error.fields;
          throw failure;
        }
      }

      // ---- events ------------------------------------------------------------------------

      _setStatus(status, detail) {
        this._status = status;
        var payload = { status: status };
        Object.keys(detail || {}).forEach(function (k) {
          payload[k] = detail[k];
        });
        this._emit("status", payload);
      }

      _emitError(code, message, cause) {
        this._emit("error", { code: code, message: message, cause: cause });
      }

      _emit(type) {
        var args = Array.prototype.slice.call(arguments, 1);
        (this._listeners[type] || []).slice().forEach(function (listener) {
          try {
            listener.apply(null, args);
          } catch (err) {
            // A listener's bug must not stop delivery; show it where developers look.
            if (typeof console !== "undefined") {
              console.error(err);
            }
          }
        });
      }
    }

    NotifyClient.NotifyClient = NotifyClient;
    NotifyClient.default = NotifyClient;
    NotifyClient.compareCursors = compareCursors;
    return NotifyClient;
  },
);
