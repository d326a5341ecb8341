// The conversation page: history, live messages in seq order with date separators,
// grouped by sender, a "New messages" line at the first unread one, own-message
// states, an offline queue resent with the same client_id, gap filling and resume after
// a reconnect, "load older", "jump to latest", presence, the session-expiry notice, a
// heartbeat that gives up a frozen link, and who is typing.
// Message text is drawn by format.js; the words people read come from words.js.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const room = JSON.parse($("room-name").textContent);
  const configuredMax = JSON.parse($("max-length").textContent);
  const maxLength = Number.isInteger(configuredMax) && configuredMax > 0 ? configuredMax : null;
  const me = Number($("me").dataset.userId);
  const myName = $("me").textContent;
  const log = $("log");
  const scroller = $("scroller");
  const errorBox = $("error");
  const connState = $("conn-state");
  const form = $("send");
  const input = $("message");
  const counter = $("counter");
  const olderButton = $("load-older");
  const historyStart = $("history-start");
  const presence = $("presence");
  const sessionNotice = $("session-notice");
  const jumpButton = $("jump-latest");
  const storageKey = "chatproj:" + me + ":" + room + ":";
  // The reader's read mark when the page was made: later messages are new to them.
  const readAtLoad = JSON.parse($("last-read-seq").textContent);
  const GROUP_MS = 5 * 60 * 1000; // one sender's messages this close share one header

  const { STATES, STREAM } = window.ChatWords;
  const RANK = { queued: 0, sending: 1, sent: 2, retrying: 3, skipped: 4, delivered: 4, dead: 5 };
  const FROM_SERVER = { pending: "sent", published: "delivered", failed: "retrying", dead: "dead", skipped: "skipped" };
  const TO_STREAM = { sent: "pending", delivered: "published", retrying: "failed", dead: "dead", skipped: "skipped" };

  const byId = new Map(); // message_id -> <li>
  const seqs = new Set(); // seqs on the page
  const early = new Map(); // message_id -> status frame that came before its message
  const outbox = new Map(); // client_id -> {text, li}: sends not acknowledged yet, in order
  let socket = null;
  let haveHistory = false; // the first history frame arrived: reconnects resume after lastSeq
  let lastSeq = 0; // every seq up to here is on the page (or a complete resume covered it)
  let maxSeq = 0;
  let oldestSeq = null;
  let hasOlder = false;
  let loadingOlder = false;
  let resuming = false;
  let retryDelay = 500;
  let retryTimer = null;
  let ended = false; // the session ended or access was refused: no more reconnects
  let readSent = 0;
  let unreadFrom = null; // the first message unread at load gets the "New messages" line
  let newBelow = false; // messages arrived below while the reader was scrolled up
  let atBottom = true;

  // --- small helpers -----------------------------------------------------------------

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  const characters = (text) => Array.from(text).length; // code points, as the server counts

  function dayKey(date) {
    return date.getFullYear() + "-" + (date.getMonth() + 1) + "-" + date.getDate();
  }

  function dayLabel(date) {
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    if (dayKey(date) === dayKey(today)) return "Today";
    if (dayKey(date) === dayKey(yesterday)) return "Yesterday";
    return date.toLocaleDateString(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
  }

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  }

  function toBottom() {
    scroller.scrollTop = scroller.scrollHeight;
  }

  function showError(text, code) {
    errorBox.textContent = text;
    errorBox.dataset.code = code || "";
    errorBox.hidden = false;
  }

  function hideError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
    delete errorBox.dataset.code;
  }

  function setConn(stateName, text) {
    connState.dataset.state = stateName;
    connState.textContent = text;
  }

  // --- drafts and the offline queue survive a reload of the tab ------------------------

  function save() {
    try {
      sessionStorage.setItem(storageKey + "draft", input.value);
      const pending = Array.from(outbox, ([clientId, entry]) => ({ clientId, text: entry.text }));
      sessionStorage.setItem(storageKey + "outbox", JSON.stringify(pending));
    } catch (err) {
      // storage full or disabled: the page still works, only a reload would lose them
    }
  }

  // --- rendering ------------------------------------------------------------------------

  function setState(li, stateName, detail) {
    const current = li.dataset.state;
    if (current && RANK[stateName] < RANK[current] && stateName !== "queued") return; // never back
    const [word, tip] = STATES[stateName];
    const badge = li.querySelector(".status");
    const stream = TO_STREAM[stateName];
    li.dataset.state = stateName;
    badge.textContent = word;
    badge.title = tip;
    if (stream) {
      li.dataset.stream = stream; // the message stream's state, for operators and tests
      badge.title += " " + STREAM[stream] + (detail ? " (" + detail + ")" : "");
    }
  }

  function timeElement(created) {
    const time = document.createElement("time");
    time.dateTime = created.toISOString();
    time.textContent = created.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
    time.title = created.toLocaleString(undefined, { dateStyle: "full", timeStyle: "medium" });
    return time;
  }

  function element(sender, text, created, mine, senderId) {
    const li = document.createElement("li");
    li.className = "msg" + (mine ? " mine" : "");
    li.dataset.day = dayKey(created);
    li.dataset.senderId = String(senderId);
    const meta = document.createElement("div");
    meta.className = "meta";
    const who = document.createElement("span");
    who.className = "sender";
    who.textContent = sender;
    meta.append(who, " ", timeElement(created));
    const body = document.createElement("div");
    body.className = "content";
    body.dir = "auto"; // with unicode-bidi: isolate (chat.css) RTL text cannot reorder the rest
    li.append(meta);
    if (window.ChatFormat.render(body, text, myName) && !mine) {
      li.classList.add("mentions-me");
      const note = document.createElement("span");
      note.className = "visually-hidden"; // said also when the header is grouped away
      note.textContent = "(mentions you)";
      li.append(note);
    }
    li.append(body);
    if (mine) {
      const badge = document.createElement("span");
      badge.className = "status";
      li.append(badge);
    }
    return li;
  }

  // Put a message <li> in seq order, before the unacknowledged sends at the end.
  function place(li, seq) {
    for (let node = log.lastElementChild; node; node = node.previousElementSibling) {
      if (node.dataset.seq && Number(node.dataset.seq) < seq) {
        node.after(li);
        return;
      }
    }
    log.prepend(li);
  }

  function remember(li, msg) {
    li.dataset.messageId = msg.message_id;
    li.dataset.seq = String(msg.seq);
    li.id = "seq-" + msg.seq;
    byId.set(msg.message_id, li);
    seqs.add(msg.seq);
    maxSeq = Math.max(maxSeq, msg.seq);
    oldestSeq = oldestSeq === null ? msg.seq : Math.min(oldestSeq, msg.seq);
  }

  function applyEarlyStatus(messageId) {
    const frame = early.get(messageId);
    if (frame) {
      early.delete(messageId);
      onStatus(frame);
    }
  }

  // Add server messages (history, live, older pages); duplicates are ignored.
  function addMessages(messages) {
    let added = false;
    for (const msg of messages) {
      if (msg.room && msg.room !== room) continue;
      const known = byId.get(msg.message_id);
      if (known && known.dataset.provisional) {
        // shown from our own ack: take the server's time
        const time = new Date(msg.created_at);
        known.querySelector("time").replaceWith(timeElement(time));
        known.dataset.day = dayKey(time);
        delete known.dataset.provisional;
        added = true;
      }
      if (known || seqs.has(msg.seq)) continue;
      const mine = msg.sender_id === me;
      const li = element(msg.sender, msg.content, new Date(msg.created_at), mine, msg.sender_id);
      remember(li, msg);
      place(li, msg.seq);
      if (mine) {
        setState(li, FROM_SERVER[msg.status] || "sent");
        applyEarlyStatus(msg.message_id);
      }
      added = true;
    }
    if (added) redrawDays();
    return added;
  }

  // The "New messages" line, date separators before the first message of each day,
  // and one header for consecutive messages of one sender.
  function redrawDays() {
    log.querySelectorAll("li.day, li.unread-line").forEach((n) => n.remove());
    const firstUnread = unreadFrom === null ? null : firstUnreadMessage();
    if (firstUnread) {
      const line = document.createElement("li");
      line.className = "unread-line";
      line.setAttribute("role", "separator");
      const label = document.createElement("span");
      label.textContent = "New messages";
      line.append(label);
      firstUnread.before(line);
    }
    let previous = null;
    for (const li of Array.from(log.children)) {
      if (li.dataset.day && li.dataset.day !== previous) {
        previous = li.dataset.day;
        const separator = document.createElement("li");
        separator.className = "day";
        const label = document.createElement("span");
        label.textContent = dayLabel(new Date(li.querySelector("time").dateTime));
        separator.append(label);
        li.before(separator);
      }
    }
    regroup();
  }

  function firstUnreadMessage() {
    for (const li of log.querySelectorAll("li.msg[data-seq]:not(.mine)")) {
      if (Number(li.dataset.seq) > unreadFrom) return li;
    }
    return null;
  }

  function regroup() {
    let previous = null;
    for (const li of Array.from(log.children)) {
      if (!li.classList.contains("msg")) {
        previous = null; // a separator starts a new group
        continue;
      }
      const time = Date.parse(li.querySelector("time").dateTime);
      const grouped = previous !== null && previous.li.dataset.senderId === li.dataset.senderId
        && time >= previous.time && time - previous.time < GROUP_MS;
      li.classList.toggle("grouped", grouped);
      previous = { li, time };
    }
  }

  // --- scrolling: land at the first unread, "jump to latest" ---------------------------

  function scrollToElement(node) {
    scroller.scrollTop += node.getBoundingClientRect().top - scroller.getBoundingClientRect().top - 8;
  }

  function updateJump() {
    atBottom = nearBottom();
    if (atBottom) newBelow = false;
    jumpButton.hidden = atBottom;
    jumpButton.textContent = newBelow ? "New messages below — jump to latest" : "Jump to latest";
  }

  jumpButton.addEventListener("click", () => {
    toBottom();
    updateJump();
    input.focus();
  });
  scroller.addEventListener("scroll", updateJump, { passive: true });
  // The conversation's height changes (a notice above it, the box growing): whoever
  // was reading the latest message still sees it.
  new ResizeObserver(() => {
    if (atBottom) toBottom();
    updateJump();
  }).observe(scroller);

  // The message a link points at (#seq-<n>, e.g. from the mentions page), loading
  // older pages to reach it; false when the page has no such link.
  async function landOnLinked() {
    const wanted = /^#seq-(\d+)$/.exec(location.hash);
    if (!wanted) return false;
    const seq = Number(wanted[1]);
    for (let pages = 0; pages < 10 && !seqs.has(seq) && hasOlder && oldestSeq > seq; pages++) {
      await loadOlder();
    }
    const target = document.getElementById("seq-" + seq);
    if (target) {
      target.classList.add("linked");
      scrollToElement(target);
    }
    updateJump();
    return true;
  }

  window.addEventListener("hashchange", landOnLinked);

  // First history: land on the linked message, else at the "New messages" line (with
  // older pages loaded to reach the first unread one), else at the bottom.
  async function land() {
    if (await landOnLinked()) return;
    if (unreadFrom !== null) {
      for (let pages = 0; pages < 4 && hasOlder && oldestSeq > unreadFrom + 1; pages++) {
        await loadOlder();
      }
      const line = log.querySelector("li.unread-line");
      if (line) {
        scrollToElement(line);
        newBelow = !nearBottom();
      }
    } else {
      toBottom();
    }
    updateJump();
  }

  function updateOlder() {
    olderButton.hidden = !hasOlder;
    olderButton.disabled = loadingOlder;
    olderButton.textContent = loadingOlder ? "Loading older messages…" : "Load older messages";
    historyStart.hidden = hasOlder || !haveHistory || seqs.size === 0;
  }

  function advance() {
    while (seqs.has(lastSeq + 1)) lastSeq += 1;
  }

  // --- read marks ----------------------------------------------------------------------

  // The user has read what this page shows while it is visible.
  function markRead() {
    if (document.hidden || maxSeq <= readSent) return;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    readSent = maxSeq;
    socket.send(JSON.stringify({ type: "read", up_to_seq: maxSeq }));
  }
  document.addEventListener("visibilitychange", markRead);

  // --- frames from the server ----------------------------------------------------------

  function onHistory(frame) {
    const first = !haveHistory;
    const stick = nearBottom() && !first;
    if (first && (frame.messages || []).some((m) => m.seq > readAtLoad && m.sender_id !== me)) {
      unreadFrom = readAtLoad;
    }
    addMessages(frame.messages || []);
    if (frame.after_seq === undefined || frame.after_seq === null) {
      // The latest messages: everything up to the newest is here.
      if (!haveHistory) hasOlder = frame.has_older !== undefined ? !!frame.has_older : oldestSeq !== null && oldestSeq > 1;
      haveHistory = true;
      resuming = false;
      lastSeq = Math.max(lastSeq, maxSeq);
    } else if (frame.complete) {
      resuming = false;
      lastSeq = Math.max(lastSeq, maxSeq);
    }
    advance();
    updateOlder();
    if (first) land();
    else if (stick) toBottom();
    markRead();
  }

  function onLive(msg) {
    if (msg.room && msg.room !== room) return; // other conversations only bump badges
    const stick = nearBottom() || msg.sender_id === me;
    if (!stick && !seqs.has(msg.seq)) newBelow = true;
    addMessages([msg]);
    if (haveHistory && !resuming && msg.seq > lastSeq + 1) {
      resume(); // a live frame was missed: fill the gap
    } else {
      advance();
    }
    if (stick) toBottom();
    updateOlder();
    updateJump();
    markRead();
  }

  function resume() {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    resuming = true;
    socket.send(JSON.stringify({ type: "resume", after_seq: lastSeq }));
  }

  function onAck(frame) {
    const entry = outbox.get(frame.client_id);
    if (!entry) return;
    outbox.delete(frame.client_id);
    save();
    const shown = byId.get(frame.message_id);
    if (shown && shown !== entry.li) {
      entry.li.remove(); // the broadcast (or a resume) already showed it
      setState(shown, "sent");
      redrawDays();
    } else {
      remember(entry.li, frame);
      entry.li.dataset.provisional = "1";
      entry.li.classList.remove("pending");
      entry.li.remove();
      place(entry.li, frame.seq);
      setState(entry.li, "sent");
      advance();
      redrawDays();
    }
    applyEarlyStatus(frame.message_id);
  }

  function onStatus(frame) {
    const li = byId.get(frame.message_id);
    if (!li) {
      early.set(frame.message_id, frame);
      return;
    }
    const stateName = FROM_SERVER[frame.status];
    if (stateName) setState(li, stateName, frame.status === "dead" ? frame.reason : "");
  }

  function onError(frame) {
    const entry = frame.client_id ? outbox.get(frame.client_id) : null;
    if (entry) {
      // Refused: the text goes back into the box, in front of anything typed since.
      outbox.delete(frame.client_id);
      entry.li.remove();
      redrawDays();
      input.value = input.value ? entry.text + "\n" + input.value : entry.text;
      updateCounter();
      save();
      input.focus();
    }
    showError(window.ChatWords.error(frame.code, frame.detail), frame.code);
  }

  function onPresence(frame) {
    const names = (frame.online || []).map((u) => (u.user_id === me ? "you" : u.username));
    presence.textContent = names.length ? "Online: " + names.join(", ") : "";
  }

  // --- heartbeat: a frozen link is noticed, given up and resumed ------------------------
  // A ping every heartbeat_interval; when no frame at all comes back heartbeat_timeout
  // after one, the link is dead even if the socket says OPEN (a sleeping laptop, a
  // Wi-Fi change, a proxy or NAT that dropped it silently): reconnect and resume.

  const liveConfig = JSON.parse($("live-config").textContent);
  const PING_EVERY = liveConfig.heartbeat_interval * 1000;
  const DEAD_AFTER = liveConfig.heartbeat_timeout * 1000;
  let lastPing = 0;
  let pingSentAt = null; // a ping waiting for any frame back
  let heartbeatTimer = null;

  function heartbeatStart(ws) {
    clearInterval(heartbeatTimer);
    lastPing = Date.now();
    pingSentAt = null;
    heartbeatTimer = setInterval(() => heartbeatTick(ws), Math.min(1000, PING_EVERY / 2));
  }

  function heartbeatStop() {
    clearInterval(heartbeatTimer);
    heartbeatTimer = null;
    pingSentAt = null;
  }

  // Any frame from the server proves the link.
  function heard() {
    pingSentAt = null;
  }

  function heartbeatTick(ws) {
    if (socket !== ws || ws.readyState !== WebSocket.OPEN) return;
    const now = Date.now();
    if (pingSentAt !== null) {
      if (now - pingSentAt > DEAD_AFTER) linkDead(ws);
      return;
    }
    if (now - lastPing >= PING_EVERY) {
      lastPing = pingSentAt = now;
      ws.send(JSON.stringify({ type: "ping" }));
    }
  }

  // The server asks for a sign of life after a quiet while: answered from the message
  // event, which the timer throttling of a background tab does not delay.
  function answerPing(ws) {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "pong" }));
  }

  // Drop the socket without waiting for its close handshake, which a frozen link never
  // completes; unacknowledged sends are queued again and resent with their client_id.
  function linkDead(ws) {
    ws.onopen = ws.onclose = ws.onmessage = null;
    try {
      ws.close();
    } catch (err) { /* already closing */ }
    closed(1006);
  }

  // --- who is typing -------------------------------------------------------------------
  // A typing frame at most once per typing_interval while the box has text; others'
  // notices are shown for twice that, or until their message arrives.

  const typingLine = $("typing");
  const TYPING_EVERY = liveConfig.typing_interval * 1000;
  const typists = new Map(); // user_id -> {name, timer}
  let typingSent = 0;

  function typed() {
    const now = Date.now();
    if (!input.value.trim() || now - typingSent < TYPING_EVERY) return;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    typingSent = now;
    socket.send(JSON.stringify({ type: "typing" }));
  }
  input.addEventListener("input", typed);

  function showTypists() {
    const names = Array.from(typists.values(), (t) => t.name);
    if (names.length === 0) typingLine.textContent = "";
    else if (names.length === 1) typingLine.textContent = names[0] + " is typing…";
    else if (names.length === 2) typingLine.textContent = names[0] + " and " + names[1] + " are typing…";
    else typingLine.textContent = names.length + " people are typing…";
  }

  function onTyping(frame) {
    if (frame.room !== room || frame.user_id === me) return;
    const known = typists.get(frame.user_id);
    if (known) clearTimeout(known.timer);
    const timer = setTimeout(() => typingStopped(frame.user_id), 2 * TYPING_EVERY);
    typists.set(frame.user_id, { name: frame.username, timer });
    showTypists();
  }

  function typingStopped(userId) {
    const known = typists.get(userId);
    if (!known) return;
    clearTimeout(known.timer);
    typists.delete(userId);
    showTypists();
  }

  function typingClear() {
    for (const userId of Array.from(typists.keys())) typingStopped(userId);
  }

  // --- the socket ----------------------------------------------------------------------

  function send(entry) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "chat.message", message: entry.text, client_id: entry.clientId }));
      setState(entry.li, "sending");
    } else {
      setState(entry.li, "queued");
    }
  }

  function connect() {
    clearTimeout(retryTimer);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let url = scheme + "://" + location.host + "/ws/chat/" + encodeURIComponent(room) + "/";
    if (haveHistory) {
      url += "?after_seq=" + lastSeq; // resume: every message after the last one shown
      resuming = true;
    }
    setConn("connecting", haveHistory ? "reconnecting…" : "connecting…");
    const ws = new WebSocket(url);
    socket = ws;
    ws.onopen = () => {
      retryDelay = 500;
      setConn("open", "connected");
      heartbeatStart(ws);
      for (const entry of outbox.values()) send(entry); // same client_id: never twice
    };
    ws.onclose = (e) => {
      if (socket === ws) closed(e.code);
    };
    ws.onmessage = (e) => {
      heard();
      const frame = JSON.parse(e.data);
      switch (frame.type) {
        case "history": onHistory(frame); break;
        case "chat.message": typingStopped(frame.sender_id); onLive(frame); break;
        case "typing": onTyping(frame); break;
        case "ping": answerPing(ws); break;
        case "message.ack": onAck(frame); break;
        case "message.status": onStatus(frame); break;
        case "presence": onPresence(frame); break;
        case "error": onError(frame); break;
        default: document.dispatchEvent(new CustomEvent("chat:frame", { detail: frame })); // room_tools.js
      }
    };
  }

  function closed(code) {
    socket = null;
    resuming = false;
    presence.textContent = "";
    heartbeatStop();
    typingClear();
    for (const entry of outbox.values()) setState(entry.li, "queued");
    if (code === 4401) {
      ended = true;
      setConn("ended", "session ended");
      const link = document.createElement("a");
      link.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname + location.search);
      link.textContent = "Log in again";
      sessionNotice.replaceChildren("Your session has ended. ", link, " to come back to this conversation; what you typed is kept.");
      sessionNotice.hidden = false;
      return;
    }
    if (code === 4404) {
      ended = true;
      setConn("forbidden", "no such room");
      sessionNotice.textContent = "There is no room #" + room + ": it must be created first.";
      sessionNotice.hidden = false;
      return;
    }
    if (code === 4403) {
      ended = true;
      setConn("forbidden", "no access");
      sessionNotice.textContent = "You have no access to this conversation: it is private, or you were removed from it.";
      sessionNotice.hidden = false;
      return;
    }
    let delay;
    if (code === 4429) {
      delay = 30000; // the server asked us to back off: no tight reconnect loop
      setConn("limited", "too many connections or messages; trying again in 30 s");
    } else {
      delay = retryDelay + Math.random() * 250;
      retryDelay = Math.min(retryDelay * 2, 8000);
      setConn("offline", "offline, reconnecting…");
    }
    retryTimer = setTimeout(connect, delay);
  }

  window.addEventListener("online", () => {
    if (!ended && !socket) connect();
  });

  // --- load older ----------------------------------------------------------------------

  async function loadOlder() {
    if (loadingOlder || !hasOlder || oldestSeq === null) return;
    loadingOlder = true;
    updateOlder();
    const url = "/chat/" + encodeURIComponent(room) + "/messages/?before_seq=" + oldestSeq + "&limit=50";
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) {
        let detail = "HTTP " + response.status;
        try {
          detail = (await response.json()).detail || detail;
        } catch (err) { /* not JSON */ }
        throw new Error(detail);
      }
      const data = await response.json();
      const fromBottom = scroller.scrollHeight - scroller.scrollTop;
      addMessages(data.messages || []);
      hasOlder = !!data.has_more;
      scroller.scrollTop = scroller.scrollHeight - fromBottom; // keep what the reader sees
    } catch (err) {
      showError("Older messages could not be loaded (" + err.message + "). Try again in a moment.", "load_older");
    } finally {
      loadingOlder = false;
      updateOlder();
    }
  }
  olderButton.addEventListener("click", loadOlder);
  scroller.addEventListener("scroll", () => {
    if (scroller.scrollTop < 40 && hasOlder) loadOlder();
  });

  // --- the message box -----------------------------------------------------------------

  function updateCounter() {
    const n = characters(input.value);
    const over = maxLength !== null && n > maxLength;
    counter.textContent = maxLength === null ? "" : n + " / " + maxLength;
    counter.classList.toggle("over", over);
    counter.classList.toggle("near", !over && maxLength !== null && n > maxLength * 0.9);
    if (over) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
    if (!fieldSizing) input.rows = Math.min(8, Math.max(1, input.value.split("\n").length));
  }
  const fieldSizing = window.CSS && CSS.supports && CSS.supports("field-sizing", "content");

  input.addEventListener("input", () => {
    updateCounter();
    save();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.altKey && !e.ctrlKey && !e.metaKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value;
    if (text === "") return;
    const n = characters(text);
    if (maxLength !== null && n > maxLength) {
      showError(window.ChatWords.error("too_long", "", { length: n, limit: maxLength }), "too_long");
      input.focus();
      return; // the text stays in the box
    }
    hideError();
    const li = element(myName, text, new Date(), true, me);
    li.classList.add("pending");
    const entry = { clientId: uuid(), text, li };
    outbox.set(entry.clientId, entry);
    log.append(li);
    redrawDays();
    send(entry);
    input.value = "";
    updateCounter();
    save();
    toBottom();
    input.focus();
  });

  // --- start ---------------------------------------------------------------------------

  try {
    input.value = sessionStorage.getItem(storageKey + "draft") || "";
    for (const saved of JSON.parse(sessionStorage.getItem(storageKey + "outbox") || "[]")) {
      const li = element(myName, saved.text, new Date(), true, me);
      li.classList.add("pending");
      log.append(li);
      outbox.set(saved.clientId, { clientId: saved.clientId, text: saved.text, li });
      setState(li, "queued");
    }
    redrawDays();
  } catch (err) {
    // nothing saved, or storage disabled
  }
  updateCounter();
  updateOlder();
  connect();
})();
