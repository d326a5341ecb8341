// Every page of a signed-in user: unread badges, the tab title's total, and a notice
// for each new DM or @mention, live from /ws/notifications/.
(function () {
  "use strict";
  const counts = {};
  const notice = document.getElementById("notice");
  const baseTitle = document.title;
  let retryDelay = 500;

  function render() {
    let total = 0;
    for (const [room, n] of Object.entries(counts)) {
      total += n;
      document.querySelectorAll('.unread[data-room="' + CSS.escape(room) + '"]').forEach((el) => {
        el.textContent = String(n);
        el.hidden = n === 0;
      });
    }
    document.title = (total ? "(" + total + ") " : "") + baseTitle;
  }

  function announce(n) {
    const link = document.createElement("a");
    link.href = "/chat/" + encodeURIComponent(n.room) + "/";
    link.textContent = n.kind === "dm" ? n.sender + " (direct): " : n.sender + " in #" + n.room + ": ";
    const text = document.createElement("span");
    text.textContent = n.excerpt;
    notice.replaceChildren(link, text);
    notice.hidden = false;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(scheme + "://" + location.host + "/ws/notifications/");
    socket.onopen = () => { retryDelay = 500; };
    socket.onclose = (e) => {
      if (e.code !== 4401) setTimeout(connect, retryDelay = Math.min(retryDelay * 2, 10000));
    };
    socket.onmessage = (e) => {
      const frame = JSON.parse(e.data);
      if (frame.type === "unread") {
        Object.assign(counts, frame.counts);
        render();
        if (frame.notifications && frame.notifications.length) announce(frame.notifications[0]);
      } else if (frame.type === "notification") {
        announce(frame);
      }
    };
  }

  connect();
})();
