// The dashboard's test client: mint a short-lived token for a user (server side, audited),
// open the real notification socket with it, show every frame, send ack / read / acknowledge / ping.
"use strict";

(function () {
  const { el, localizeTimes } = window.NotifyDashboard;

  document.addEventListener("DOMContentLoaded", () => {
    const connectForm = document.querySelector("[data-client-connect]");
    const closeButton = document.querySelector("[data-client-close]");
    const status = document.querySelector("[data-client-status]");
    const errorBox = document.querySelector("[data-client-error]");
    const frames = document.querySelector("[data-frames]");
    const received = document.querySelector("[data-received]");
    const idInput = document.querySelector("#tc-id");
    const sendButtons = document.querySelectorAll("[data-send]");
    const xsrf = document.querySelector("meta[name=xsrf-token]").content;
    let socket = null;

    const setStatus = (text, cls) => {
      status.textContent = text;
      status.classList.remove("is-live", "is-down");
      if (cls) status.classList.add(cls);
    };

    const setOpen = (open) => {
      for (const b of sendButtons) b.disabled = !open;
      closeButton.disabled = !open && !socket;
      connectForm.querySelector("[data-client-open]").disabled = open;
    };

    const showError = (text) => {
      errorBox.textContent = text || "";
      errorBox.hidden = !text;
    };

    const log = (direction, payload) => {
      const item = el("li", { class: direction });
      item.appendChild(el("span", { class: "dir" }, direction === "in" ? "⇣ in" : direction === "out" ? "⇡ out" : "•"));
      item.appendChild(document.createTextNode(typeof payload === "string" ? payload : JSON.stringify(payload)));
      if (direction === "note") item.classList.add("note");
      frames.prepend(item);
    };

    const send = (frame) => {
      if (!socket || socket.readyState !== WebSocket.OPEN) return;
      const text = JSON.stringify(frame);
      socket.send(text);
      // The auth frame's token is not shown on screen.
      log("out", frame.type === "auth" ? { type: "auth", token: "…" } : frame);
    };

    const addReceived = (n) => {
      const empty = received.querySelector("tr.empty");
      if (empty) empty.remove();
      const tr = el("tr", { "data-received-id": n.id });
      const title = el("td");
      title.appendChild(el("strong", {}, n.title));
      if (n.message) title.appendChild(el("div", { class: "muted" }, n.message));
      tr.appendChild(title);
      const prio = el("td");
      prio.appendChild(el("span", { class: `badge badge-${n.priority}` }, n.priority));
      tr.appendChild(prio);
      const actions = el("td", { class: "row-actions" });
      const ack = el("button", { type: "button", class: "button small" }, "Ack");
      ack.addEventListener("click", () => send({ type: "ack", id: n.id }));
      const read = el("button", { type: "button", class: "button small" }, "Read");
      read.addEventListener("click", () => send({ type: "read", id: n.id }));
      const acknowledge = el("button", { type: "button", class: "button small" }, "Acknowledge");
      acknowledge.addEventListener("click", () => send({ type: "acknowledge", id: n.id }));
      actions.append(ack, " ", read, " ", acknowledge);
      tr.appendChild(actions);
      received.prepend(tr);
      idInput.value = n.id;
    };

    const open = async (userId, roles) => {
      showError("");
      setStatus("Getting a token…");
      const body = new URLSearchParams({ user_id: userId, roles });
      let answer;
      try {
        const response = await fetch("/dashboard/test-client/token", {
          method: "POST",
          headers: { "X-XSRFToken": xsrf, "Content-Type": "application/x-www-form-urlencoded" },
          body,
          credentials: "same-origin",
        });
        answer = await response.json();
        if (!response.ok) {
          const fields = answer.fields || {};
          const first = Object.entries(fields).map(([k, v]) => `${k}: ${[].concat(v).join(", ")}`);
          throw new Error(first.join("; ") || answer.error || `error ${response.status}`);
        }
      } catch (err) {
        setStatus("Not connected");
        showError(err.message || String(err));
        return;
      }
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      // The token goes in the first frame, not the URL, so it never lands in a log line.
      socket = new WebSocket(`${scheme}//${location.host}/v1/ws/notifications`);
      setStatus(`Connecting as ${answer.user_id}…`);
      socket.addEventListener("open", () => {
        send({ type: "auth", token: answer.token });
        setOpen(true);
      });
      socket.addEventListener("message", (event) => {
        let frame;
        try { frame = JSON.parse(event.data); } catch (e) { log("in", event.data); return; }
        log("in", frame);
        if (frame.type === "welcome") setStatus(`Connected as ${frame.user_id}`, "is-live");
        if (frame.type === "notification") addReceived(frame.notification);
      });
      socket.addEventListener("close", (event) => {
        log("note", `closed: ${event.code}${event.reason ? " " + event.reason : ""}`);
        setStatus("Not connected", event.code === 1000 ? null : "is-down");
        socket = null;
        setOpen(false);
      });
    };

    connectForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const userId = connectForm.querySelector("#tc-user").value.trim();
      const roles = connectForm.querySelector("#tc-roles").value.trim();
      if (!userId) {
        showError("Enter a user id.");
        return;
      }
      if (socket) socket.close(1000);
      open(userId, roles);
    });
    closeButton.addEventListener("click", () => { if (socket) socket.close(1000); });
    document.querySelector("[data-client-clear]").addEventListener("click", () => frames.replaceChildren());
    for (const button of sendButtons) {
      button.addEventListener("click", () => {
        const kind = button.dataset.send;
        if (kind === "ack" || kind === "read" || kind === "acknowledge") {
          const id = idInput.value.trim();
          if (!id) { showError("Enter a notification id, or use the buttons beside a notification."); return; }
          send({ type: kind, id });
        } else {
          send({ type: kind });
        }
      });
    }
    localizeTimes(document);
  });
})();
