// Clinic Notify dashboard: live figures, the connection list, the chart and form helpers.
// Plain JavaScript, no build step. All user text goes into the page through textContent.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const page = document.body.dataset.page;

  // ---- small helpers --------------------------------------------------------------------

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function localTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  function timeCell(iso) {
    const td = el("td");
    if (!iso) {
      td.appendChild(el("span", { class: "muted" }, "—"));
    } else {
      td.appendChild(el("time", { datetime: iso, title: iso }, localTime(iso)));
    }
    return td;
  }

  // Times rendered by the server in UTC are shown in the browser's own time zone.
  function localizeTimes(root) {
    for (const t of root.querySelectorAll("time[datetime]")) {
      t.title = t.getAttribute("datetime");
      t.textContent = localTime(t.getAttribute("datetime"));
    }
  }

  window.NotifyDashboard = { el, localTime, localizeTimes };

  document.addEventListener("DOMContentLoaded", () => {
    localizeTimes(document);
    for (const form of document.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    }
    if (page === "compose") setUpCompose();
    if (page === "overview" || page === "connections") openLive();
  });

  // ---- compose --------------------------------------------------------------------------

  function setUpCompose() {
    const form = document.querySelector("form[data-compose]");
    if (!form) return;
    const tz = form.querySelector("[data-tz-offset]");
    const stampOffset = () => {
      // The offset of the moment chosen (daylight saving may differ from today's).
      const when = form.querySelector("#f-deliver_at").value || form.querySelector("#f-expires_at").value;
      const d = when ? new Date(when) : new Date();
      tz.value = String(isNaN(d) ? new Date().getTimezoneOffset() : d.getTimezoneOffset());
    };
    stampOffset();
    form.addEventListener("submit", stampOffset);

    const show = () => {
      const target = (form.querySelector("input[name=target]:checked") || {}).value || "user";
      for (const block of form.querySelectorAll("[data-when-target]")) {
        block.hidden = block.dataset.whenTarget !== target;
      }
    };
    for (const radio of form.querySelectorAll("input[name=target]")) {
      radio.addEventListener("change", show);
    }
    show();

    const examples = {
      appointment: '{"appointment_id": "a-77", "status": "confirmed", "starts_at": "2026-12-02T09:30:00Z"}',
      lab_result: '{"lab_result_id": "l-12", "test_name": "Blood panel"}',
      ai_analysis: '{"analysis_id": "x-9", "analysis_type": "ecg"}',
      system_alert: '{"component": "portal"}',
      custom: '{"any": "object"}',
    };
    const type = form.querySelector("#f-type");
    const data = form.querySelector("#f-data");
    const hint = () => { data.placeholder = examples[type.value] || ""; };
    type.addEventListener("change", hint);
    hint();
  }

  // ---- the staff socket -----------------------------------------------------------------

  function openLive() {
    const status = document.querySelector("[data-live-status]");
    const filterInput = document.querySelector("[data-connections-filter] input[name=user]");
    let socket = null;
    let delay = 500;

    const setStatus = (text, cls) => {
      if (!status) return;
      status.textContent = text;
      status.classList.remove("is-live", "is-down");
      if (cls) status.classList.add(cls);
    };

    const sendFilter = () => {
      if (socket && socket.readyState === WebSocket.OPEN && filterInput) {
        socket.send(JSON.stringify({ type: "filter", user: filterInput.value.trim() }));
      }
    };

    const connect = () => {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      socket = new WebSocket(`${scheme}//${location.host}/dashboard/ws`);
      socket.addEventListener("open", () => {
        delay = 500;
        setStatus("Live", "is-live");
        sendFilter();
      });
      socket.addEventListener("message", (event) => {
        let msg;
        try { msg = JSON.parse(event.data); } catch (e) { return; }
        if (msg.type === "overview") showOverview(msg);
        if (msg.type === "connections") showConnections(msg);
      });
      socket.addEventListener("close", (event) => {
        if (event.code === 1008) {
          setStatus("Session ended: log in again", "is-down");
          return;
        }
        setStatus("Reconnecting…", "is-down");
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, 15000);
      });
    };

    if (filterInput) {
      const form = filterInput.form;
      let timer = null;
      filterInput.addEventListener("input", () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          const url = new URL(location.href);
          if (filterInput.value.trim()) url.searchParams.set("user", filterInput.value.trim());
          else url.searchParams.delete("user");
          history.replaceState(null, "", url);
          sendFilter();
        }, 200);
      });
      form.addEventListener("submit", (event) => {
        if (socket && socket.readyState === WebSocket.OPEN) {
          event.preventDefault();
          sendFilter();
        }
      });
    }

    const initial = document.getElementById("overview-data");
    if (initial) {
      try { drawChart(JSON.parse(initial.textContent).chart); } catch (e) { /* keep the page */ }
    }
    connect();
  }

  // ---- overview -------------------------------------------------------------------------

  let lastChart = null;

  function showOverview(msg) {
    for (const node of document.querySelectorAll("[data-figure]")) {
      const name = node.dataset.figure;
      let value = msg[name];
      if (name === "nodes") value = (msg.nodes || []).length;
      if (name === "critical_count") value = (msg.critical || []).length;
      if (value === undefined) continue;
      if (node.textContent !== String(value)) {
        node.textContent = String(value);
        node.classList.add("bump");
        setTimeout(() => node.classList.remove("bump"), 600);
      }
    }
    const critical = document.querySelector("[data-critical]");
    if (critical && msg.critical && !sameRows(critical, msg.critical)) {
      // Rows already shown are kept as they are: a note being typed survives the update.
      const shown = new Map();
      critical.querySelectorAll("tr[data-notification]").forEach((tr) => shown.set(tr.dataset.notification, tr));
      const rows = msg.critical.map((item) => {
        if (shown.has(item.id)) return shown.get(item.id);
        const tr = el("tr", { "data-notification": item.id });
        tr.appendChild(timeCell(item.deliver_at || item.created_at));
        const who = el("td");
        who.appendChild(el("a", { href: "/dashboard/history?user=" + encodeURIComponent(item.user_id) }, item.user_id));
        tr.appendChild(who);
        const title = el("td");
        title.appendChild(el("a", { href: "/dashboard/history/" + encodeURIComponent(item.id) }, item.title));
        tr.appendChild(title);
        tr.appendChild(ackCell(item.id));
        return tr;
      });
      if (!rows.length) {
        const tr = el("tr", { class: "empty" });
        tr.appendChild(el("td", { colspan: "4" }, "None. Every notification that needs it was acknowledged."));
        rows.push(tr);
      }
      critical.replaceChildren(...rows);
    }
    if (msg.chart) drawChart(msg.chart);
  }

  function sameRows(body, items) {
    const ids = Array.from(body.querySelectorAll("tr[data-notification]"), (tr) => tr.dataset.notification);
    return ids.length === items.length && items.every((item, i) => item.id === ids[i]);
  }

  function ackCell(id) {
    // The same form the page renders: a POST with the XSRF token and an optional note.
    const td = el("td");
    const form = el("form", {
      method: "post",
      action: "/dashboard/notifications/" + encodeURIComponent(id) + "/acknowledge",
      class: "inline ack-form",
    });
    const meta = document.querySelector('meta[name="xsrf-token"]');
    form.appendChild(el("input", { type: "hidden", name: "_xsrf", value: meta ? meta.content : "" }));
    form.appendChild(el("input", {
      type: "text", name: "note", maxlength: "1000",
      placeholder: "Note, e.g. reached by phone", "aria-label": "Note",
    }));
    form.appendChild(el("button", { class: "button", type: "submit" }, "Acknowledge"));
    td.appendChild(form);
    return td;
  }

  function drawChart(points) {
    const box = document.querySelector("[data-chart]");
    if (!box || !points) return;
    lastChart = points;
    const width = Math.max(box.clientWidth, 320);
    const height = Math.max(box.clientHeight, 180);
    const pad = { left: 44, right: 44, top: 12, bottom: 26 };
    const w = width - pad.left - pad.right;
    const h = height - pad.top - pad.bottom;
    const n = points.length;
    const step = w / n;
    const maxConn = Math.max(1, ...points.map((p) => p.connections || 0));
    const maxRate = Math.max(1, ...points.map((p) => Math.max(
      p.delivered || 0, p.sent || 0, p.pushed || 0, p.push_failed || 0)));
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height });

    for (let i = 0; i <= 4; i++) {
      const y = pad.top + (h * i) / 4;
      root.appendChild(svg("line", { x1: pad.left, x2: pad.left + w, y1: y, y2: y, class: "grid" }));
    }
    const label = (x, y, text, anchor) => {
      const t = svg("text", { x, y, class: "axis", "text-anchor": anchor });
      t.textContent = text;
      root.appendChild(t);
    };
    label(pad.left - 6, pad.top + 10, String(maxConn), "end");
    label(pad.left - 6, pad.top + h, "0", "end");
    label(pad.left + w + 6, pad.top + 10, String(maxRate), "start");
    label(pad.left + w + 6, pad.top + h, "0", "start");
    label(pad.left, height - 6, "60 min ago", "start");
    label(pad.left + w / 2, height - 6, "30 min ago", "middle");
    label(pad.left + w, height - 6, "now", "end");

    // Deliveries, sends, pushes and push failures per minute: thin bars against the right scale.
    const bars = ["delivered", "sent", "pushed", "push_failed"];
    const barW = Math.max(1, step / bars.length - 0.5);
    points.forEach((p, i) => {
      const x = pad.left + i * step;
      for (const [key, dx] of bars.map((k, j) => [k, j * barW])) {
        const v = p[key];
        if (!v) continue;
        const bh = (h * v) / maxRate;
        root.appendChild(svg("rect", {
          x: x + dx, y: pad.top + h - bh, width: barW, height: bh, class: `bar-${key}`,
        }));
      }
    });

    // Open connections: a line (with a soft area) against the left scale.
    const coords = [];
    points.forEach((p, i) => {
      if (p.connections === null || p.connections === undefined) return;
      coords.push([pad.left + i * step + step / 2, pad.top + h - (h * p.connections) / maxConn]);
    });
    if (coords.length) {
      const line = coords.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
      const first = coords[0][0];
      const last = coords[coords.length - 1][0];
      root.appendChild(svg("path", {
        d: `${line} L${last.toFixed(1)},${pad.top + h} L${first.toFixed(1)},${pad.top + h} Z`,
        class: "area-connections",
      }));
      root.appendChild(svg("path", { d: line, class: "line-connections" }));
      const [lx, ly] = coords[coords.length - 1];
      root.appendChild(svg("circle", { cx: lx, cy: ly, r: 3, class: "dot-connections" }));
    }
    box.replaceChildren(root);
  }

  window.addEventListener("resize", () => { if (lastChart) drawChart(lastChart); });

  // ---- connections ----------------------------------------------------------------------

  function showConnections(msg) {
    const body = document.querySelector("[data-connections]");
    if (!body) return;
    const known = new Set([...body.querySelectorAll("tr[data-connection]")].map((tr) => tr.dataset.connection));
    const rows = msg.items.map((c) => {
      const tr = el("tr", { "data-connection": c.id });
      if (!known.has(c.id)) tr.classList.add("is-new");
      tr.appendChild(el("td", { class: "mono" }, c.user_id));
      const roles = el("td");
      for (const r of c.roles) {
        roles.appendChild(el("span", { class: "badge" }, r));
        roles.appendChild(document.createTextNode(" "));
      }
      tr.appendChild(roles);
      tr.appendChild(el("td", { class: "ua", title: c.user_agent }, c.user_agent));
      tr.appendChild(el("td", {}, c.transport));
      tr.appendChild(el("td", { class: "mono" }, c.ip));
      tr.appendChild(timeCell(c.since));
      tr.appendChild(timeCell(c.last_active));
      return tr;
    });
    if (!rows.length) {
      const tr = el("tr", { class: "empty" });
      const text = msg.filter ? `No connections of users starting with “${msg.filter}”.` : "No connections.";
      tr.appendChild(el("td", { colspan: "7" }, text));
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    const count = document.querySelector("[data-connections-count]");
    if (count) count.textContent = `${msg.matching} of ${msg.total} connection(s)`;
  }
})();
