/**
 * The clinic notification service's service worker: shows Web Push messages, opens the
 * portal when one is clicked, and tells open portal pages to sync.
 *
 * Serve this file from the portal's own origin (a service worker must be same-origin with
 * the page that registers it) and register it with the library's enablePush(), or:
 *
 *   navigator.serviceWorker.register("/notify-sw.js?portal=/inbox&icon=/clinic-icon.png")
 *
 * Query parameters of the script URL configure it: `portal` (the page a click opens; the
 * notification id is added as ?notification=<id>; default: the registration's scope),
 * `icon` (the clinic's icon), `body` (the text under the title).
 *
 * A push carries {"id", "type", "priority", "cursor", "title"} and, only where the clinic
 * allows full content, "message": no health information by default, so the body is generic.
 */
/* eslint-env serviceworker */
"use strict";

var params = new URL(self.location.href).searchParams;
var PORTAL = params.get("portal") || self.registration.scope;
var ICON = params.get("icon") || new URL("clinic-icon.png", self.location.href).href;
var BODY = params.get("body") || "Open the patient portal to read it.";
var SYNC = "clinic-notify:sync";
var OPEN = "clinic-notify:open";

self.addEventListener("install", function () {
  self.skipWaiting();
});

self.addEventListener("activate", function (event) {
  event.waitUntil(self.clients.claim());
});

/** The portal URL for one notification. */
function portalUrl(id) {
  var url = new URL(PORTAL, self.location.href);
  if (id) {
    url.searchParams.set("notification", id);
  }
  return url.href;
}

function readPayload(event) {
  try {
    return (event.data && event.data.json()) || {};
  } catch (err) {
    return {}; // not JSON: still show something, as browsers require for every push
  }
}

function windows() {
  return self.clients.matchAll({ type: "window", includeUncontrolled: true });
}

self.addEventListener("push", function (event) {
  var data = readPayload(event);
  var id = typeof data.id === "string" ? data.id : null;
  var title = typeof data.title === "string" && data.title ? data.title : "New notification";
  var options = {
    body: typeof data.message === "string" && data.message ? data.message : BODY,
    icon: ICON,
    badge: ICON,
    // One notification per id: a repeated push (an escalation) replaces, and re-alerts.
    tag: id || undefined,
    renotify: Boolean(id),
    requireInteraction: data.priority === "critical",
    data: { id: id, cursor: data.cursor || null, url: portalUrl(id) },
  };
  event.waitUntil(
    Promise.all([
      self.registration.showNotification(title, options),
      windows().then(function (list) {
        list.forEach(function (client) {
          client.postMessage({ type: SYNC, id: id, cursor: options.data.cursor });
        });
      }),
    ]),
  );
});

self.addEventListener("notificationclick", function (event) {
  var data = event.notification.data || {};
  var url = data.url || portalUrl(data.id);
  event.notification.close();
  event.waitUntil(
    windows().then(function (list) {
      var portal = new URL(PORTAL, self.location.href);
      var open = list.filter(function (client) {
        return new URL(client.url).origin === portal.origin;
      });
      if (open.length) {
        // A portal page is open: bring it forward and let it show the notification.
        var client = open[0];
        client.postMessage({ type: OPEN, id: data.id || null, url: url });
        return client.focus().catch(function () {
          return client;
        });
      }
      return self.clients.openWindow(url);
    }),
  );
});
