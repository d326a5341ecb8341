// Phone width: the Conversations sidebar is a panel over the conversation, opened by
// the header's button. Its Close button, a tap outside it (the backdrop), Escape and
// the browser's Back close it; opening it adds one history entry, so Back closes the
// panel instead of leaving the page.
(function () {
  "use strict";
  const sidebar = document.getElementById("sidebar");
  const toggle = document.getElementById("sidebar-toggle");
  const query = document.getElementById("people-q");
  if (!sidebar || !toggle) return;

  const close = document.createElement("button");
  close.type = "button";
  close.id = "sidebar-close";
  close.textContent = "Close";
  close.setAttribute("aria-label", "Close conversations");
  close.setAttribute("aria-controls", "sidebar");
  sidebar.prepend(close);
  const backdrop = document.createElement("div");
  backdrop.id = "sidebar-backdrop";
  sidebar.after(backdrop);

  const isOpen = () => document.body.classList.contains("sidebar-open");
  const ours = (state) => !!(state && state.chatPanel);

  function setOpen(open) {
    document.body.classList.toggle("sidebar-open", open);
    toggle.setAttribute("aria-expanded", String(open));
    if (open) {
      const current = sidebar.querySelector("[aria-current=page]") || sidebar.querySelector("a, input");
      if (current) current.focus();
    }
  }

  function open() {
    if (isOpen()) return;
    setOpen(true);
    if (!ours(history.state)) history.pushState({ chatPanel: true }, "");
  }

  function shut() {
    if (!isOpen()) return;
    setOpen(false);
    toggle.focus();
    if (ours(history.state)) history.back(); // drop the entry open() added
  }

  toggle.addEventListener("click", () => (isOpen() ? shut() : open()));
  close.addEventListener("click", shut);
  backdrop.addEventListener("click", shut);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && isOpen()) shut();
  });
  window.addEventListener("popstate", (e) => {
    if (isOpen() && !ours(e.state)) {
      setOpen(false);
      toggle.focus();
    }
  });
  // Following a link to the page's own anchors (e.g. #people-q) opens the panel.
  document.querySelectorAll('a[href="#people-q"]').forEach((a) =>
    a.addEventListener("click", () => {
      if (getComputedStyle(toggle).display !== "none") open();
      if (query) query.focus();
    }));
})();
