// Room page: history, live messages, sending messages and DMs, error frames.
(function () {
  "use strict";
  const room = JSON.parse(document.getElementById("room-name").textContent);
  const log = document.getElementById("log");
  const errorBox = document.getElementById("error");
  const state = document.getElementById("conn-state");
  const form = document.getElementById("send");
  const input = document.getElementById("message");
  const receiver = document.getElementById("receiver");
  const seen = new Map(); // message_id -> <li>
  let socket = null;
  let counter = 0;
  let retryDelay = 500;
  let readUpTo = 0; // highest seq shown on this page
  let readSent = 0; // highest seq reported read

  // The user has read what this page shows while it is visible.
  function markRead() {
    if (document.hidden || readUpTo <= readSent) return;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    readSent = readUpTo;
    socket.send(JSON.stringify({ type: "read", up_to_seq: readUpTo }));
  }
  document.addEventListener("visibilitychange", markRead);

  function setStatus(messageId, status) {
    const li = seen.get(messageId);
    if (!li) return;
    const badge = li.querySelector(".status");
    badge.textContent = status;
    badge.className = "status " + status;
  }

  function show(msg) {
    if (seen.has(msg.message_id)) return;
    const li = document.createElement("li");
    li.dataset.messageId = msg.message_id;
    if (msg.receiver_id !== null) li.classList.add("dm");
    const meta = document.createElement("span");
    meta.className = "meta";
    const when = new Date(msg.created_at).toLocaleTimeString();
    meta.textContent = when + " " + msg.sender + (msg.receiver_id !== null ? " (direct)" : "") + ":";
    const body = document.createElement("span");
    body.className = "content";
    body.dir = "auto"; // with unicode-bidi: isolate (chat.css), RTL text cannot reorder the name or status around it
    body.textContent = msg.content;
    const badge = document.createElement("span");
    badge.className = "status";
    li.append(meta, body, badge);
    log.append(li);
    seen.set(msg.message_id, li);
    if (msg.room === room) readUpTo = Math.max(readUpTo, msg.seq);
    if (msg.status && msg.status !== "pending") setStatus(msg.message_id, msg.status);
    log.scrollTop = log.scrollHeight;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(scheme + "://" + location.host + "/ws/chat/" + room + "/");
    socket.onopen = () => { state.textContent = "connected"; retryDelay = 500; };
    socket.onclose = (e) => {
      const final = { 4401: "not logged in", 4403: "not a member of this private room" };
      state.textContent = final[e.code] || "disconnected, reconnecting…";
      if (!final[e.code]) setTimeout(connect, retryDelay = Math.min(retryDelay * 2, 10000));
    };
    socket.onmessage = (e) => {
      const frame = JSON.parse(e.data);
      switch (frame.type) {
        case "history": frame.messages.forEach(show); markRead(); break;
        case "chat.message": show(frame); markRead(); break;
        case "message.status": setStatus(frame.message_id, frame.status); break;
        case "message.ack": break;
        case "error":
          errorBox.textContent = frame.code + ": " + frame.detail;
          errorBox.hidden = false;
          break;
      }
    };
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    errorBox.hidden = true;
    const to = receiver.value ? Number(receiver.value) : null;
    socket.send(JSON.stringify({
      type: "chat.message", message: input.value, receiver_id: to, client_id: "c-" + (++counter),
    }));
    input.value = "";
  });

  connect();
})();
