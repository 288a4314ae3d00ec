/**
 * @clinic-notify/client: the browser (and Node) client of the clinic notification service.
 *
 * One file, no dependencies; the service serves this very file as /static/notify-client.js.
 * It works as:
 *
 *   <script src="/static/notify-client.js"></script>      // a plain script tag
 *   import { NotifyClient } from "@clinic-notify/client";  // ESM (index.mjs), bundlers
 *   const { NotifyClient } = require("@clinic-notify/client");  // CommonJS
 *   import "/static/notify-client.js";                    // a browser module: globalThis
 *
 * What it does: connects with a token (asking your `getToken` callback for a fresh one
 * before the token expires, and when it is refused); over a WebSocket, or Server-Sent Events
 * when the socket cannot open (a proxy that blocks WebSockets); reconnects with capped
 * exponential backoff and jitter, pausing while the browser is offline; resumes with
 * `since` = the last cursor it saw, kept in storage per user so a reload resumes too; drops
 * duplicates by id; acks every notification; pages the REST feed when the server could not
 * replay everything; notices a dead connection within `pingInterval + pongTimeout`.
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

    var VERSION = "0.2.0";
    var SOCKET_PATH = "/v1/ws/notifications";
    var SSE_PATH = "/v1/sse/notifications";
    var FEED_PAGE = 200; // the service's largest feed page
    var MAX_FEED_PAGES = 50; // at most 10,000 notifications fetched to fill one gap
    var SEEN_IDS = 5000; // ids remembered for dropping duplicates
    var CLOSE_NORMAL = 1000;
    var CLOSE_ABNORMAL = 1006;
    var CLOSE_POLICY = 1008;
    var CLOSE_TRY_LATER = 1013;
    var CLOSE_DEAD = 4000; // our own code: the connection stopped answering
    var TRANSPORTS = ["auto", "websocket", "sse"];

    /**
     * Every option and its default (`undefined`: worked out at run time, see the README).
     * The README's options table and index.d.ts are checked against this object by a test.
     */
    var DEFAULTS = {
      url: undefined, // the page's origin
      token: undefined,
      getToken: undefined,
      getTokenTimeout: 10000,
      userId: undefined, // the token's `sub`
      transport: "auto",
      WebSocket: undefined, // globalThis.WebSocket
      storage: undefined, // localStorage when there is one; null: memory only
      storageKey: "notify-client",
      ack: true,
      fillGaps: true,
      minDelay: 500,
      maxDelay: 30000,
      pingInterval: 10000,
      pongTimeout: 10000,
      connectTimeout: 15000,
      sseTimeout: 45000,
      refreshMargin: 15000,
      keep: 500,
      tokenInUrl: false,
    };

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

    function base64Decode(text) {
      if (typeof atob === "function") {
        return atob(text);
      }
      return Buffer.from(text, "base64").toString("binary"); // Node before 16
    }

    /** The claims of a JWT, unverified (the service verifies; we only read `sub` and `exp`). */
    function tokenClaims(token) {
      try {
        var part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
        while (part.length % 4) {
          part += "=";
        }
        return JSON.parse(base64Decode(part));
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

    function number(value, fallback) {
      return typeof value === "number" && value > 0 && isFinite(value) ? value : fallback;
    }

    function problem(code, message, extra) {
      var err = new Error(message);
      err.code = code;
      Object.keys(extra || {}).forEach(function (k) {
        err[k] = extra[k];
      });
      return err;
    }

    /** The page's origin when it differs from the service's (a portal on another host). */
    function crossOrigin(base) {
      if (typeof location === "undefined" || typeof URL !== "function" || !location.origin) {
        return null;
      }
      try {
        var service = new URL(base).origin;
        return service !== location.origin ? location.origin : null;
      } catch (err) {
        return null;
      }
    }

    /**
     * A live connection to one user's notifications.
     *
     * Events (subscribe with `on`):
     * - `notification` (notification, {source: "live"|"replay"|"feed"}): each new one, once
     * - `read` ({ids}): notifications marked read, on any device of the user
     * - `acknowledged` ({id}): a notification acknowledged, on any device of the user
     * - `unread` ({count}): the unread count changed
     * - `status` ({status, ...detail}): "connecting", "open" (with `transport`, `recovered`),
     *   "closed" (with `code`, `reason`, `retryIn` ms), "offline", or "unauthorized" (the
     *   service refused two tokens in a row: no more retries until `connect()`)
     * - `error` ({code, message, fields?}): a problem worth showing or logging
     */
    class NotifyClient {
      /**
       * @param {Object} options  see DEFAULTS, the README and index.d.ts
       */
      constructor(options) {
        var o = options || {};
        if (!o.token && typeof o.getToken !== "function") {
          throw new TypeError("NotifyClient needs a token or a getToken callback");
        }
        var transport = o.transport === undefined ? DEFAULTS.transport : o.transport;
        if (TRANSPORTS.indexOf(transport) < 0) {
          throw new TypeError('transport must be "auto", "websocket" or "sse"');
        }
        var Socket = o.WebSocket || (typeof WebSocket !== "undefined" ? WebSocket : null);
        if (transport === "websocket" && typeof Socket !== "function") {
          throw new TypeError("no WebSocket here: pass the WebSocket option (e.g. the ws package)");
        }
        var base = String(o.url || (typeof location !== "undefined" ? location.origin : ""));
        if (typeof location !== "undefined" && typeof URL === "function") {
          base = new URL(base, location.href).href; // "/notify" behind a proxy: absolute
        }
        this._base = base.replace(/\/+$/, "");
        this._token = o.token || null;
        this._getToken = typeof o.getToken === "function" ? o.getToken : null;
        this._getTokenTimeout = number(o.getTokenTimeout, DEFAULTS.getTokenTimeout);
        this._userId = o.userId || null;
        this._transport = transport;
        this._WebSocket = typeof Socket === "function" ? Socket : null;
        this._storage = o.storage === undefined ? defaultStorage() : o.storage;
        this._storageKey = o.storageKey || DEFAULTS.storageKey;
        this._ack = o.ack !== false;
        this._fillGaps = o.fillGaps !== false;
        this._minDelay = number(o.minDelay, DEFAULTS.minDelay);
        this._maxDelay = Math.max(number(o.maxDelay, DEFAULTS.maxDelay), this._minDelay);
        this._pingInterval = number(o.pingInterval, DEFAULTS.pingInterval);
        this._pongTimeout = number(o.pongTimeout, DEFAULTS.pongTimeout);
        this._connectTimeout = number(o.connectTimeout, DEFAULTS.connectTimeout);
        this._sseTimeout = number(o.sseTimeout, DEFAULTS.sseTimeout);
        this._refreshMargin = number(o.refreshMargin, DEFAULTS.refreshMargin);
        this._keep = number(o.keep, DEFAULTS.keep);
        this._tokenInUrl = o.tokenInUrl === true;

        this._listeners = {};
        this._stopped = true;
        this._link = null; // the current connection (a WebSocket or an SSE stream)
        this._opening = false;
        this._quiet = false; // reconnecting for a fresh token: no status changes shown
        this._attempt = 0;
        this._failures = 0;
        this._refusals = 0; // tokens refused in a row
        this._timer = null;
        this._refreshTimer = null;
        this._tokenSuspect = false;
        this._tokenPromise = null;
        this._useSse = transport === "sse" || !this._WebSocket;
        this._sseWorked = false;
        this._diagnosed = false;
        this._cursor = null;
        this._seen = new Set();
        this._seenOrder = [];
        this._acknowledged = new Set();
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
       * Start connecting (and keep reconnecting until `close()`); after "unauthorized",
       * start again.
       * @returns {NotifyClient} this client
       */
      connect() {
        if (!this._stopped) {
          return this;
        }
        this._stopped = false;
        this._refusals = 0;
        this._diagnosed = false;
        this._useSse = this._transport === "sse" || !this._WebSocket;
        this._sseWorked = false;
        if (typeof addEventListener === "function") {
          addEventListener("online", this._onOnline);
          addEventListener("offline", this._onOffline);
        }
        this._open();
        return this;
      }

      /** Close the connection for good (no more reconnects). */
      close() {
        this._stop();
        var link = this._link;
        if (link) {
          this._link = null;
          this._teardown(link, CLOSE_NORMAL, "client closed");
        }
        this._setStatus("closed", { code: CLOSE_NORMAL, reason: "client closed" });
      }

      /**
       * Listen to an event.
       * @param {string} type
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

      /** @returns {string} "connecting", "open", "closed", "offline" or "unauthorized" */
      get status() {
        return this._status;
      }

      /** @returns {string|null} "websocket" or "sse" while connected, else null */
      get transport() {
        return this._link && this._link.welcomed ? this._link.kind : null;
      }

      /** @returns {number} how many of the user's notifications are unread */
      get unreadCount() {
        return this._unread;
      }

      /** @returns {Object[]} notifications received so far, oldest first (a copy) */
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
       * Acknowledge a notification (a person's deliberate act, CONTRACT section 8), with an
       * optional note; every device of the user hears of it.
       * @param {string} id
       * @param {string} [note]
       * @returns {Promise<void>}
       */
      async acknowledge(id, note) {
        var frame = { type: "acknowledge", id: id };
        if (note !== undefined && note !== null) {
          frame.note = String(note);
        }
        if (this._sendFrame(frame)) {
          return;
        }
        var path = "/notifications/" + encodeURIComponent(id) + "/acknowledge";
        var stored = await this._userRequest("POST", path, frame.note ? { note: frame.note } : {});
        this._applyAcknowledged(id, stored);
      }

      /**
       * One page of the user's feed over REST: critical first, then newest first.
       * @param {{unread?: boolean, type?: string, limit?: number, before?: string}} [query]
       * @returns {Promise<{items: Object[], next: string|null}>}
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

      /**
       * Web Push on this device (CONTRACT section 6): asks permission, registers the service
       * worker, subscribes with the service's VAPID key and registers the subscription for
       * the user. Idempotent: again on the same device updates the one subscription.
       * @param {{serviceWorker?: string, scope?: string, device?: string}} [options]
       *   serviceWorker: the worker's URL on the portal's origin (default
       *   "/static/notify-sw.js", the service's own copy); device: a label for the user.
       * @returns {Promise<{id: string, endpoint: string, device: string|null, created_at: string}>}
       */
      async enablePush(options) {
        var o = options || {};
        var registration = await this._pushRegistration(o, true);
        var permission = await Notification.requestPermission();
        if (permission !== "granted") {
          throw problem("push_denied", "the user did not allow notifications");
        }
        var key = await this._vapidKey();
        var subscription = await registration.pushManager.getSubscription();
        if (subscription && !sameKey(subscription.options.applicationServerKey, key)) {
          await subscription.unsubscribe(); // made with another deployment's key
          subscription = null;
        }
        if (!subscription) {
          try {
            subscription = await registration.pushManager.subscribe({
              userVisibleOnly: true,
              applicationServerKey: key,
            });
          } catch (err) {
            throw problem("push_unavailable", "the browser could not subscribe: " + err.message);
          }
        }
        var body = subscription.toJSON();
        if (o.device) {
          body.device = String(o.device);
        }
        return this._userRequest("POST", "/push-subscriptions", body);
      }

      /**
       * Stop Web Push on this device: unregisters the subscription from the service and
       * unsubscribes the browser. Resolves false when the device was not subscribed.
       * @param {{serviceWorker?: string, scope?: string}} [options]
       * @returns {Promise<boolean>}
       */
      async disablePush(options) {
        var registration = await this._pushRegistration(options || {}, false);
        var subscription = registration && (await registration.pushManager.getSubscription());
        if (!subscription) {
          return false;
        }
        var listed = await this._userRequest("GET", "/push-subscriptions");
        var mine = (listed.items || []).filter(function (s) {
          return s.endpoint === subscription.endpoint;
        });
        for (var i = 0; i < mine.length; i++) {
          await this._userRequest(
            "DELETE",
            "/push-subscriptions/" + encodeURIComponent(mine[i].id),
          );
        }
        await subscription.unsubscribe();
        return true;
      }

      async _pushRegistration(o, create) {
        if (
          typeof navigator === "undefined" ||
          !navigator.serviceWorker ||
          typeof PushManager === "undefined" ||
          typeof Notification === "undefined"
        ) {
          throw problem("push_unsupported", "this browser has no Web Push");
        }
        var url = o.serviceWorker || this._base + "/static/notify-sw.js";
        var scope = o.scope || undefined;
        if (!create) {
          return navigator.serviceWorker.getRegistration(scope || url);
        }
        return navigator.serviceWorker.register(url, scope ? { scope: scope } : undefined);
      }

      async _vapidKey() {
        var response = await fetch(this._base + "/v1/push/vapid-public-key");
        var answer = response.ok ? await readJson(response) : null;
        if (!answer || !answer.success) {
          throw problem("push_unavailable", "the service did not give its VAPID key");
        }
        return base64UrlBytes(answer.data.public_key);
      }

      // ---- connecting --------------------------------------------------------------------

      /** Open a link (unless one is open or opening); `silent`: no "connecting" status. */
      async _open(silent) {
        this._clearTimer();
        if (this._stopped || this._link || this._opening) {
          return;
        }
        if (!isOnline()) {
          this._quiet = false;
          this._setStatus("offline", { offline: true });
          return; // the "online" event resumes
        }
        this._opening = true;
        if (!this._quiet && !silent) {
          this._setStatus("connecting");
        }
        var token;
        try {
          token = await this._freshToken();
        } catch (err) {
          this._opening = false;
          this._quiet = false;
          if (this._stopped) {
            return;
          }
          this._emitError(err.code || "token_unavailable", err.message, err);
          this._retry(null, "no token");
          return;
        }
        this._opening = false;
        if (this._stopped || this._link) {
          return;
        }
        var link = this._useSse ? this._openSse(token) : this._openSocket(token);
        if (!link) {
          return;
        }
        var self = this;
        link.timer = setTimeout(function () {
          self._drop(link, CLOSE_DEAD, "no welcome in time", false);
        }, this._connectTimeout);
      }

      _newLink(kind) {
        var since = this._cursor;
        return {
          kind: kind,
          since: since,
          upgraded: false,
          welcomed: false,
          replaying: !!since,
          connectionId: null,
        };
      }

      _openSocket(token) {
        var link = this._newLink("websocket");
        var query = [];
        if (this._tokenInUrl) {
          query.push("token=" + encodeURIComponent(token));
        }
        if (link.since) {
          query.push("since=" + link.since);
        }
        var url =
          this._base.replace(/^http/, "ws") +
          SOCKET_PATH +
          (query.length ? "?" + query.join("&") : "");
        var ws;
        try {
          ws = new this._WebSocket(url);
        } catch (err) {
          this._emitError("bad_url", "cannot open a socket to " + this._base, err);
          this._retry(null, "bad url");
          return null;
        }
        var self = this;
        var tokenInUrl = this._tokenInUrl;
        this._link = link;
        link.send = function (text) {
          if (ws.readyState !== 1) {
            return false;
          }
          ws.send(text);
          return true;
        };
        link.close = function (code, reason) {
          try {
            ws.close(code, reason);
          } catch (err) {
            /* already closing */
          }
        };
        link.detach = function () {
          ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        };
        ws.onopen = function () {
          if (self._link === link) {
            link.upgraded = true;
            if (!tokenInUrl) {
              ws.send(JSON.stringify({ type: "auth", token: token }));
            }
          }
        };
        ws.onmessage = function (event) {
          if (self._link === link) {
            self._onFrame(link, event.data);
          }
        };
        ws.onclose = function (event) {
          self._drop(link, event.code, event.reason, true);
        };
        ws.onerror = function (event) {
          // Browsers hide a refused upgrade's status; Node's `ws` package tells it.
          var said = event && (event.message || (event.error && event.error.message));
          var status = /server response: (\d{3})/.exec(String(said || ""));
          if (status) {
            link.httpStatus = Number(status[1]);
          }
        };
        return link;
      }

      _openSse(token) {
        var link = this._newLink("sse");
        var self = this;
        var controller = typeof AbortController === "function" ? new AbortController() : null;
        this._link = link;
        link.send = function () {
          return false; // read, ack and acknowledge go over REST on this transport
        };
        link.close = function () {
          if (controller) {
            controller.abort();
          }
        };
        link.detach = function () {};
        var url = this._base + SSE_PATH + (link.since ? "?since=" + link.since : "");
        // fetch, not EventSource: the token goes in a header (never in a URL a proxy logs),
        // a refusal's status is readable, and Node 18+ has it without a package.
        fetch(url, {
          headers: { Authorization: "Bearer " + token, Accept: "text/event-stream" },
          cache: "no-store",
          signal: controller ? controller.signal : undefined,
        })
          .then(function (response) {
            if (self._link !== link) {
              link.close();
              return null;
            }
            if (!response.ok) {
              link.httpStatus = response.status;
              return readError(response).then(function (error) {
                var later = response.status === 429 || response.status >= 500;
                self._drop(link, later ? CLOSE_TRY_LATER : CLOSE_ABNORMAL, error.message, true);
              });
            }
            link.upgraded = true;
            link.heardAt = Date.now();
            return self._readEvents(link, response.body).then(function () {
              self._drop(link, CLOSE_ABNORMAL, "the stream ended", true);
            });
          })
          .catch(function () {
            link.networkError = true;
            self._drop(link, CLOSE_ABNORMAL, "the stream failed", true);
          });
        return link;
      }

      /** Read an SSE stream: `data:` lines make one frame, a blank line ends it. */
      async _readEvents(link, body) {
        var reader = body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        var data = [];
        for (;;) {
          var chunk = await reader.read();
          if (chunk.done || this._link !== link) {
            if (!chunk.done) {
              reader.cancel().catch(function () {});
            }
            return;
          }
          link.heardAt = Date.now(); // comments too: they are the keep-alive
          buffer += decoder.decode(chunk.value, { stream: true });
          var lines = buffer.split(/\r\n|\r|\n/);
          buffer = lines.pop();
          for (var i = 0; i < lines.length && this._link === link; i++) {
            var line = lines[i];
            if (line === "") {
              if (data.length) {
                this._onFrame(link, data.join("\n"));
              }
              data = [];
            } else if (line.slice(0, 5) === "data:") {
              data.push(line.charAt(5) === " " ? line.slice(6) : line.slice(5));
            } // `event:` repeats the frame's type and `id:` its cursor; comments keep alive
          }
        }
      }

      async _freshToken() {
        var token = this._token;
        var claims = token ? tokenClaims(token) : {};
        var expiring =
          typeof claims.exp === "number" && claims.exp * 1000 - this._refreshMargin < Date.now();
        if (token && !expiring && !this._tokenSuspect) {
          this._learnUser(claims);
          return token;
        }
        if (!this._getToken) {
          if (!token) {
            throw problem("token_unavailable", "no token and no getToken callback");
          }
          return token; // nothing better to try
        }
        if (!this._tokenPromise) {
          // One call at a time: the socket and a REST call may both want a token.
          var self = this;
          this._tokenPromise = this._askToken().then(
            function (fresh) {
              self._tokenPromise = null;
              self._token = fresh;
              self._tokenSuspect = false;
              self._learnUser(tokenClaims(fresh));
              return fresh;
            },
            function (err) {
              self._tokenPromise = null;
              throw err;
            },
          );
        }
        return this._tokenPromise;
      }

      /** getToken, bounded by getTokenTimeout: a backend that hangs is an error and a retry. */
      _askToken() {
        var getToken = this._getToken;
        var limit = this._getTokenTimeout;
        return new Promise(function (resolve, reject) {
          var timer = setTimeout(function () {
            reject(problem("token_timeout", "getToken did not answer within " + limit + " ms"));
          }, limit);
          Promise.resolve()
            .then(getToken)
            .then(
              function (fresh) {
                clearTimeout(timer);
                if (typeof fresh !== "string" || !fresh) {
                  reject(problem("token_unavailable", "getToken did not return a token"));
                } else {
                  resolve(fresh);
                }
              },
              function (err) {
                clearTimeout(timer);
                reject(
                  problem("token_unavailable", "could not get a connection token", {
                    cause: err,
                  }),
                );
              },
            );
        });
      }

      _learnUser(claims) {
        if (!this._userId && typeof claims.sub === "string") {
          this._userId = claims.sub;
          this._cursor = this._loadCursor();
        }
      }

      /** Stop for good: no timers, no listeners, no reconnects. */
      _stop() {
        this._stopped = true;
        this._quiet = false;
        this._clearTimer();
        clearTimeout(this._refreshTimer);
        if (typeof removeEventListener === "function") {
          removeEventListener("online", this._onOnline);
          removeEventListener("offline", this._onOffline);
        }
      }

      /** Release a link's timers and handlers. */
      _release(link) {
        clearTimeout(link.timer);
        clearInterval(link.pingTimer);
        clearTimeout(link.pongTimer);
        clearTimeout(this._refreshTimer);
        link.detach();
      }

      /** Release a link and close it. */
      _teardown(link, code, reason) {
        this._release(link);
        link.close(code === CLOSE_NORMAL ? CLOSE_NORMAL : CLOSE_DEAD, reason);
      }

      /** The link is finished: tidy up, work out why, and unless stopped, reconnect. */
      _drop(link, code, reason, closedByPeer) {
        if (link !== this._link) {
          return;
        }
        this._link = null;
        this._quiet = false;
        if (closedByPeer) {
          this._release(link);
        } else {
          // Don't wait for a closing handshake a dead peer will never answer.
          this._teardown(link, code, reason);
        }
        if (this._stopped) {
          this._setStatus("closed", { code: code, reason: reason });
          return;
        }
        var refused =
          link.httpStatus === 401 ||
          (code === CLOSE_POLICY && !link.welcomed && /token/.test(reason || ""));
        if (refused) {
          this._refusals += 1;
          this._tokenSuspect = true;
          if (this._refusals >= 2) {
            this._unauthorized(reason);
            return;
          }
          this._emit("error", { code: "token_refused", message: reason || "token refused" });
          this._retry(code, reason, this._minDelay / 2);
          return;
        }
        var fallback = this._transport === "auto" && link.kind === "websocket";
        if (link.httpStatus === 403 && !fallback) {
          this._reportOrigin(reason); // SSE's answer, or the socket's where there is no SSE
        } else if (code === CLOSE_POLICY) {
          this._tokenSuspect = true; // e.g. the token expired while connected
          this._emit("error", { code: "policy_close", message: reason || "closed by policy" });
        } else if (!link.upgraded) {
          if (!link.httpStatus) {
            this._diagnose();
          }
          // Browsers hide a refused upgrade's status (401) behind the same close as a network
          // failure, so repeated failures are the cue for a new token: after the 2nd, 4th,
          // 8th... in a row, which spares your token endpoint during an outage.
          this._failures += 1;
          if (this._failures >= 2 && (this._failures & (this._failures - 1)) === 0) {
            this._tokenSuspect = true;
          }
          if (fallback) {
            // The socket cannot open (a proxy that refuses upgrades answers 400, 403, 502...,
            // or nothing): SSE next, at once, still "connecting". A refused Origin or token
            // is refused there too, and readably.
            this._useSse = true;
            var self = this;
            this._timer = setTimeout(function () {
              self._timer = null;
              self._open(true);
            }, 0);
            return;
          }
        }
        if (this._transport === "auto" && link.kind === "sse" && !this._sseWorked) {
          this._useSse = !this._WebSocket; // neither opened: start from the socket again
        }
        this._retry(code, reason);
      }

      _unauthorized(reason) {
        this._stop();
        this._emit("error", {
          code: "unauthorized",
          message:
            "the service refused two tokens in a row (" +
            (reason || "unauthorized") +
            "); call connect() once there is a valid token",
        });
        this._setStatus("unauthorized", { reason: reason });
      }

      /** A cross-origin page whose socket will not open: is it the Origin the service refuses? */
      _diagnose() {
        var pageOrigin = crossOrigin(this._base);
        if (this._diagnosed || !pageOrigin || typeof fetch !== "function") {
          return;
        }
        this._diagnosed = true;
        var self = this;
        var probe = this._base + "/healthz";
        // A CORS read that fails while a no-cors one reaches the service: the service is up
        // and refuses this Origin (the socket's upgrade answered 403 for the same reason).
        fetch(probe, { cache: "no-store" }).then(
          function () {},
          function () {
            return fetch(probe, { mode: "no-cors", cache: "no-store" }).then(function () {
              if (!self._stopped) {
                self._reportOrigin(null, pageOrigin);
              }
            }, function () {});
          },
        );
      }

      _reportOrigin(reason, pageOrigin) {
        var origin = pageOrigin || crossOrigin(this._base) || "this page's Origin";
        this._emit("error", {
          code: "origin_refused",
          message:
            "the service refused " +
            origin +
            (reason ? " (" + reason + ")" : "") +
            ": add it to NOTIFY_ALLOWED_ORIGINS on the service",
          origin: origin,
        });
      }

      _retry(code, reason, delay) {
        if (this._stopped) {
          return;
        }
        if (!isOnline()) {
          this._setStatus("offline", { code: code, reason: reason, offline: true });
          return;
        }
        if (delay === undefined) {
          var ceiling = Math.min(
            this._maxDelay,
            this._minDelay * Math.pow(2, Math.min(this._attempt, 30)),
          );
          this._attempt += 1;
          // "Equal jitter": between half the ceiling and the ceiling, so clients spread out.
          delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
          if (code === CLOSE_TRY_LATER) {
            delay = Math.max(delay, Math.min(5000, this._maxDelay));
          }
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
        if (!this._stopped && !this._link) {
          this._attempt = 0;
          this._open();
        }
      }

      _handleOffline() {
        if (this._stopped) {
          return;
        }
        this._clearTimer();
        var link = this._link;
        if (link) {
          // At once: the socket would otherwise look open until the ping timeout.
          this._link = null;
          this._teardown(link, CLOSE_NORMAL, "offline");
        }
        this._quiet = false;
        this._setStatus("offline", { offline: true });
      }

      _startWatch(link) {
        var self = this;
        if (link.kind === "sse") {
          // The service sends a comment line every 15 s: silence this long is a dead line.
          link.pingTimer = setInterval(function () {
            if (self._link === link && Date.now() - link.heardAt > self._sseTimeout) {
              self._drop(link, CLOSE_DEAD, "no keep-alive in time", false);
            }
          }, Math.min(this._sseTimeout / 3, 5000));
          return;
        }
        link.pingTimer = setInterval(function () {
          if (self._link !== link || link.pongTimer) {
            return; // gone, or the last ping is still waiting for its answer
          }
          var heardBefore = link.heardAt;
          link.send(JSON.stringify({ type: "ping" }));
          link.pongTimer = setTimeout(function () {
            link.pongTimer = null;
            if (self._link === link && link.heardAt === heardBefore) {
              self._drop(link, CLOSE_DEAD, "no answer to ping", false);
            }
          }, self._pongTimeout);
        }, this._pingInterval);
      }

      /** Before the token expires: fetch a fresh one, then reconnect with it, unseen. */
      _scheduleRefresh(link) {
        clearTimeout(this._refreshTimer);
        var exp = tokenClaims(this._token || "").exp;
        if (!this._getToken || typeof exp !== "number") {
          return;
        }
        var left = exp * 1000 - Date.now();
        // The contract has no in-band refresh (a second auth frame is refused), so the
        // client reconnects with `since`: the replay covers the moment between the two.
        var delay = Math.max(left - this._refreshMargin, left / 2, 0);
        var self = this;
        this._refreshTimer = setTimeout(function () {
          if (self._link !== link || self._stopped) {
            return;
          }
          self._tokenSuspect = true;
          self._freshToken().then(
            function () {
              if (self._link !== link || self._stopped) {
                return;
              }
              self._link = null;
              self._teardown(link, CLOSE_NORMAL, "token refresh");
              self._quiet = true;
              self._open();
            },
            function (err) {
              // The old connection stays until the service closes it at the token's expiry.
              self._emitError(err.code || "token_unavailable", err.message, err);
            },
          );
        }, delay);
      }

      _sendFrame(frame) {
        var link = this._link;
        if (!link || !link.welcomed) {
          return false;
        }
        return link.send(JSON.stringify(frame));
      }

      // ---- frames from the server --------------------------------------------------------

      _onFrame(link, raw) {
        link.heardAt = Date.now() + Math.random(); // distinct on every frame
        var frame;
        try {
          frame = JSON.parse(raw);
        } catch (err) {
          return;
        }
        if (!frame || typeof frame.type !== "string") {
          return;
        }
        switch (frame.type) {
          case "welcome":
            this._onWelcome(link, frame);
            break;
          case "notification":
            if (link.holding) {
              link.holding.push({
                n: frame.notification,
                source: link.replaying ? "replay" : "live",
              });
            } else {
              this._accept(frame.notification, link.replaying ? "replay" : "live", link);
            }
            break;
          case "replay_done":
            link.replaying = false;
            if (link.holding) {
              this._fill(link);
            } else if (isCursor(frame.cursor)) {
              this._advance(frame.cursor);
            }
            break;
          case "read":
            this._applyRead(Array.isArray(frame.ids) ? frame.ids : []);
            break;
          case "acknowledged":
            this._applyAcknowledged(frame.id, null);
            break;
          case "unread_count":
            this._setUnread(frame.count);
            break;
          case "close": // SSE only: what a socket's close code and reason say
            this._drop(link, frame.code, frame.reason, false);
            break;
          case "error":
            if (!link.welcomed) {
              // The answer to the auth frame: the token is not even well formed.
              this._drop(link, CLOSE_POLICY, "the token was refused: " + frame.message, false);
              break;
            }
            this._emit("error", { code: frame.code, message: frame.message, fields: frame.fields });
            break;
          default:
            break; // pong, and frames of later versions
        }
      }

      _onWelcome(link, frame) {
        link.welcomed = true;
        clearTimeout(link.timer);
        var refreshed = this._quiet;
        this._quiet = false;
        this._attempt = 0;
        this._failures = 0;
        this._refusals = 0;
        this._tokenSuspect = false;
        if (link.kind === "sse") {
          this._sseWorked = true; // behind this network's proxy, stay on SSE
        }
        this._learnUser({ sub: frame.user_id });
        link.liveFrom = isCursor(frame.cursor) ? frame.cursor : null;
        if (link.since && link.liveFrom && compareCursors(link.liveFrom, link.since) < 0) {
          // Our cursor is beyond this feed's end (a restored database, another deployment):
          // take the service's. What was missed is unknown, so nothing is filled in (that
          // could be a patient's whole history); `recovered: false` tells the page to reload.
          this._rewind(link.liveFrom);
          link.since = null;
        }
        if (!this._cursor && link.liveFrom) {
          this._advance(link.liveFrom); // nothing seen yet: resume from here next time
        }
        if (link.since && frame.recovered === false && this._fillGaps) {
          link.holding = []; // replayed frames wait until the gap before them is filled
        }
        link.connectionId = frame.connection_id;
        this._setUnread(frame.unread_count);
        this._startWatch(link);
        this._scheduleRefresh(link);
        var detail = {
          recovered: frame.recovered !== false,
          connectionId: frame.connection_id,
          transport: link.kind,
        };
        if (refreshed) {
          detail.refreshed = true;
        }
        this._setStatus("open", detail);
      }

      /** Page the REST feed for what lies between `link.since` and the held replay. */
      async _fill(link) {
        var since = link.since;
        var upper = null;
        link.holding.forEach(function (entry) {
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
          link.holding.filter(function (entry) {
            return entry.n && isCursor(entry.n.cursor);
          }),
        );
        link.holding = null;
        all.sort(function (a, b) {
          return compareCursors(a.n.cursor, b.n.cursor);
        });
        var self = this;
        all.forEach(function (entry) {
          self._accept(entry.n, entry.source, link);
        });
      }

      _accept(n, source, link) {
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
          this._receipt(n.id, link);
        }
        var counted =
          link.liveFrom && isCursor(n.cursor) && compareCursors(n.cursor, link.liveFrom) <= 0;
        if (source === "live" && !n.read_at && !counted) {
          this._setUnread(this._unread + 1); // newer than the welcome's count
        }
        this._emit("notification", n, { source: source });
      }

      /** The delivery receipt: a frame on a socket, a REST call on SSE (no client frames). */
      _receipt(id, link) {
        if (link.kind !== "sse") {
          this._sendFrame({ type: "ack", id: id });
          return;
        }
        var path = "/notifications/" + encodeURIComponent(id) + "/ack";
        var body = link.connectionId ? { connection_id: link.connectionId } : {};
        this._userRequest("POST", path, body).catch(function () {
          // a lost receipt only means a push may still go out after the grace period
        });
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

      _applyAcknowledged(id, stored) {
        if (typeof id !== "string") {
          return;
        }
        var at = (stored && stored.acknowledged_at) || new Date().toISOString();
        this._items.forEach(function (n) {
          if (n.id === id) {
            // The frame says only that it happened; the REST answer also says when and who.
            n.acknowledged_at = stored ? at : n.acknowledged_at || at;
            if (stored && stored.acknowledged_by) {
              n.acknowledged_by = stored.acknowledged_by;
            }
          }
        });
        if (this._acknowledged.has(id)) {
          return; // the REST answer and the frame that follows it: one event
        }
        this._acknowledged.add(id);
        if (this._acknowledged.size > SEEN_IDS) {
          this._acknowledged.delete(this._acknowledged.values().next().value);
        }
        this._emit("acknowledged", { id: id });
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
      async _userRequest(method, path, body) {
        for (var tries = 0; ; tries++) {
          var token = await this._freshToken();
          if (!this._userId) {
            throw new Error("the user is not known: give userId or a token with sub");
          }
          var url = this._base + "/v1/users/" + encodeURIComponent(this._userId) + path;
          var init = { method: method, headers: { Authorization: "Bearer " + token } };
          if (body !== undefined) {
            init.headers["Content-Type"] = "application/json";
            init.body = JSON.stringify(body);
          }
          var response = await fetch(url, init);
          if (response.ok) {
            var answer = await readJson(response);
            if (answer && answer.success) {
              return answer.data;
            }
          }
          if (response.status === 401 && tries === 0 && this._getToken) {
            this._tokenSuspect = true;
            continue;
          }
          var error = await readError(response);
          throw problem(error.code, error.message, {
            status: response.status,
            fields: error.fields,
          });
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

    /** The bytes of an unpadded base64url string (a VAPID key). */
    function base64UrlBytes(text) {
      var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
      b64 += "===".slice((b64.length + 3) % 4);
      var raw = atob(b64);
      var out = new Uint8Array(raw.length);
      for (var i = 0; i < raw.length; i++) {
        out[i] = raw.charCodeAt(i);
      }
      return out;
    }

    /** Whether a subscription's applicationServerKey is this key. */
    function sameKey(buffer, key) {
      if (!buffer) {
        return false;
      }
      var have = new Uint8Array(buffer);
      return (
        have.length === key.length &&
        have.every(function (b, i) {
          return b === key[i];
        })
      );
    }

    async function readJson(response) {
      try {
        return await response.json();
      } catch (err) {
        return null;
      }
    }

    /** The contract's error envelope of a failed answer, or one made from its status. */
    async function readError(response) {
      var body = response.bodyUsed ? null : await readJson(response);
      var error = (body && body.error) || {};
      return {
        code: error.code || "http_" + response.status,
        message: error.message || "HTTP " + response.status,
        fields: error.fields,
      };
    }

    NotifyClient.NotifyClient = NotifyClient;
    NotifyClient.default = NotifyClient;
    NotifyClient.compareCursors = compareCursors;
    NotifyClient.defaults = Object.freeze(Object.assign({}, DEFAULTS));
    NotifyClient.version = VERSION;
    return NotifyClient;
  },
);
