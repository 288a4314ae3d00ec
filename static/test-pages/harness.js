// Test harness for notify-client.js: renders what the client reports so that browser tests
// can read it from the page, and records every event in `window.events`.
(function () {
  "use strict";
  window.events = [];
  window.tokenRequests = 0;

  function text(id, value) {
    document.getElementById(id).textContent = String(value);
  }

  window.startClient = function (options) {
    var opts = Object.assign({}, options);
    if (opts.useGetToken !== false && typeof window.fetchToken === "function") {
      opts.getToken = function () {
        window.tokenRequests += 1;
        return window.fetchToken();
      };
    }
    delete opts.useGetToken;
    var client = new window.NotifyClient(opts);
    var list = document.getElementById("list");
    client.on("notification", function (n, info) {
      var li = document.createElement("li");
      li.dataset.id = n.id;
      li.dataset.cursor = n.cursor;
      li.dataset.source = info.source;
      li.dataset.read = n.read_at ? "yes" : "no";
      li.textContent = n.title;
      list.appendChild(li);
      window.events.push({ type: "notification", id: n.id, source: info.source });
    });
    client.on("read", function (e) {
      e.ids.forEach(function (id) {
        var li = list.querySelector('li[data-id="' + id + '"]');
        if (li) {
          li.dataset.read = "yes";
        }
      });
      window.events.push({ type: "read", ids: e.ids });
    });
    client.on("unread", function (e) {
      text("unread", e.count);
      window.events.push({ type: "unread", count: e.count });
    });
    client.on("status", function (e) {
      text("status", e.status);
      window.events.push(Object.assign({ type: "status", at: Date.now() }, e));
    });
    client.on("error", function (e) {
      window.events.push({ type: "error", code: e.code, message: e.message });
    });
    window.client = client;
    client.connect();
    return client.cursor;
  };

  // What the page shows, in order: the test's view of "every one exactly once, in order".
  window.shown = function () {
    return Array.prototype.map.call(document.querySelectorAll("#list li"), function (li) {
      return {
        id: li.dataset.id,
        cursor: li.dataset.cursor,
        title: li.textContent,
        read: li.dataset.read,
      };
    });
  };
})();
