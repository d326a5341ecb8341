// Desktop notifications for DMs and @mentions while the tab is hidden. Permission is
// asked only when the user clicks "Turn on desktop notifications" in the header.
(function () {
  "use strict";
  if (!("Notification" in window)) return;
  const header = document.querySelector("header.site");
  const button = document.createElement("button");
  button.type = "button";
  button.id = "desktop-notify";
  button.textContent = "Turn on desktop notifications";
  button.title = "Get a desktop notification for direct messages and mentions while this tab is in the background";
  button.hidden = Notification.permission !== "default";
  if (header) header.querySelector("form, .account-links")?.before(button);

  button.addEventListener("click", async () => {
    try {
      await Notification.requestPermission();
    } finally {
      button.hidden = Notification.permission !== "default";
    }
  });

  document.addEventListener("chat:notification", (e) => {
    const n = e.detail;
    if (!document.hidden || Notification.permission !== "granted") return;
    const title = n.kind === "dm" ? n.sender + " (direct message)" : n.sender + " mentioned you in #" + n.room;
    let shown;
    try {
      shown = new Notification(title, { body: n.excerpt, tag: n.message_id });
    } catch (err) {
      return; // e.g. mobile browsers allow them from a service worker only
    }
    shown.onclick = () => {
      window.focus();
      location.assign("/chat/" + encodeURIComponent(n.room) + "/#seq-" + n.seq);
    };
  });
})();
