// Every page of a signed-in user: unread badges (added to the sidebar for a
// conversation it does not list yet), the tab title's total, and a notice for the
// latest DM or @mention, live from /ws/notifications/. The notice has a Dismiss button
// and goes away once its conversation is read; /mentions/ lists them all.
// Other scripts follow along through document events: "chat:unread" (detail: the
// total) and "chat:notification" (detail: a new live notification).
(function () {
  "use strict";
  const counts = {};
  const labels = {}; // room -> who it is with, for DM conversations new to the sidebar
  // Rooms the server does not count for this socket yet (a DM conversation created
  // after it connected): counted here from their notifications until it does.
  const provisional = new Set();
  const notice = document.getElementById("notice");
  const baseTitle = document.title;
  const meElement = document.getElementById("me");
  const dismissedKey = "chatproj:" + (meElement ? meElement.dataset.userId : "") + ":dismissed";
  let retryDelay = 500;

  // A conversation the page was rendered without (a first DM, a new invitation).
  function ensureEntry(room) {
    const list = document.getElementById(room.startsWith("dm-") ? "dms" : "rooms");
    if (!list || list.querySelector('.unread[data-room="' + CSS.escape(room) + '"]')) return;
    const li = document.createElement("li");
    li.dataset.room = room;
    const link = document.createElement("a");
    link.href = "/chat/" + encodeURIComponent(room) + "/";
    link.textContent = labels[room] || room;
    const badge = document.createElement("span");
    badge.className = "unread";
    badge.dataset.room = room;
    badge.title = "unread messages";
    li.append(link, " ", badge);
    const more = list.querySelector("li.more");
    if (more) more.before(li);
    else list.append(li);
  }

  function render() {
    let total = 0;
    for (const [room, n] of Object.entries(counts)) {
      total += n;
      if (n > 0) ensureEntry(room);
      document.querySelectorAll('.unread[data-room="' + CSS.escape(room) + '"]').forEach((el) => {
        el.textContent = String(n);
        el.hidden = n === 0;
      });
    }
    document.title = (total ? "(" + total + ") " : "") + baseTitle;
    document.dispatchEvent(new CustomEvent("chat:unread", { detail: { total } }));
    if (notice.dataset.room && counts[notice.dataset.room] === 0) hideNotice(); // read
  }

  function dismissed() {
    try {
      const ids = JSON.parse(localStorage.getItem(dismissedKey) || "[]");
      return Array.isArray(ids) ? ids : [];
    } catch (err) {
      return []; // unreadable or disabled storage: nothing was dismissed
    }
  }

  function hideNotice() {
    notice.hidden = true;
    notice.replaceChildren();
    delete notice.dataset.room;
    delete notice.dataset.messageId;
  }

  // Dismissed notices stay dismissed on the user's other pages.
  function dismiss() {
    const ids = dismissed().filter((id) => id !== notice.dataset.messageId);
    ids.push(notice.dataset.messageId);
    try {
      localStorage.setItem(dismissedKey, JSON.stringify(ids.slice(-100)));
    } catch (err) {
      // storage disabled: dismissed on this page only
    }
    hideNotice();
  }

  function announce(n) {
    if (n.kind === "dm") {
      labels[n.room] = n.sender;
      const entry = document.querySelector('#dms li[data-room="' + CSS.escape(n.room) + '"] a');
      if (entry && entry.textContent === n.room) entry.textContent = n.sender;
    }
    const link = document.createElement("a");
    link.href = "/chat/" + encodeURIComponent(n.room) + "/";
    link.textContent = n.kind === "dm" ? n.sender + " (direct): " : n.sender + " in #" + n.room + ": ";
    const text = document.createElement("span");
    text.dir = "auto";
    text.textContent = n.excerpt;
    const body = document.createElement("span");
    body.className = "notice-text";
    body.append(link, text);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "dismiss";
    button.textContent = "Dismiss";
    button.setAttribute("aria-label", "Dismiss this notice");
    button.addEventListener("click", dismiss);
    notice.replaceChildren(body, button);
    notice.dataset.room = n.room;
    notice.dataset.messageId = n.message_id;
    notice.hidden = false;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(scheme + "://" + location.host + "/ws/notifications/");
    socket.onopen = () => { retryDelay = 500; };
    socket.onclose = (e) => {
      if (e.code === 4401) {
        // The session ended: say so once (the room page says it too) and stop.
        if (!document.getElementById("session-notice")) {
          const link = document.createElement("a");
          link.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname + location.search);
          link.textContent = "Log in again";
          hideNotice();
          notice.replaceChildren("Your session has ended. ", link, ".");
          notice.hidden = false;
        }
        return;
      }
      const delay = e.code === 4429 ? 30000 : (retryDelay = Math.min(retryDelay * 2, 10000));
      setTimeout(connect, delay);
    };
    socket.onmessage = (e) => {
      const frame = JSON.parse(e.data);
      if (frame.type === "unread") {
        for (const n of frame.notifications || []) if (n.kind === "dm") labels[n.room] = n.sender;
        for (const room of Object.keys(frame.counts)) provisional.delete(room);
        Object.assign(counts, frame.counts);
        render();
        const gone = new Set(dismissed());
        const latest = (frame.notifications || []).find((n) => !gone.has(n.message_id) && counts[n.room] !== 0);
        if (latest) announce(latest);
      } else if (frame.type === "notification") {
        if (!(frame.room in counts) || provisional.has(frame.room)) {
          provisional.add(frame.room);
          counts[frame.room] = (counts[frame.room] || 0) + 1;
          if (frame.kind === "dm") labels[frame.room] = frame.sender;
          render();
        }
        announce(frame);
        document.dispatchEvent(new CustomEvent("chat:notification", { detail: frame }));
      }
    };
  }

  connect();
})();
