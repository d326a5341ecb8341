// @-autocomplete in the message box: typing "@" and the start of a name lists the
// room's members (GET /chat/<room>/members.json, asked once) in a listbox under the
// box. Arrow keys move, Enter or Tab picks, Escape closes; a click picks too.
(function () {
  "use strict";
  const input = document.getElementById("message");
  const form = document.getElementById("send");
  const roomElement = document.getElementById("room-name");
  const meElement = document.getElementById("me");
  if (!input || !form || !roomElement) return;
  const room = JSON.parse(roomElement.textContent);
  const myName = meElement ? meElement.textContent : "";
  const MAX_SHOWN = 8;
  // "@" then the start of a name, right before the caret (the server's mention rule).
  const TYPING = /(?:^|[^\p{L}\p{N}_@.+-])@([\p{L}\p{N}_.@+-]{0,150})$/u;

  const list = document.createElement("ul");
  list.id = "mention-options";
  list.setAttribute("role", "listbox");
  list.setAttribute("aria-label", "Members to mention");
  list.hidden = true;
  form.prepend(list);
  input.setAttribute("aria-autocomplete", "list");
  input.setAttribute("aria-controls", list.id);
  input.setAttribute("aria-expanded", "false");

  let members = null; // null: not asked yet
  let asking = null;
  let options = [];
  let active = -1;

  async function loadMembers() {
    if (members !== null) return members;
    if (!asking) {
      asking = fetch("/chat/" + encodeURIComponent(room) + "/members.json", {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      })
        .then((r) => (r.ok ? r.json() : { members: [] }))
        .then((data) => (members = (data.members || []).filter((n) => n !== myName)))
        .catch(() => {
          asking = null; // ask again next time
          return [];
        });
    }
    return asking;
  }

  function close() {
    list.hidden = true;
    list.replaceChildren();
    options = [];
    active = -1;
    input.setAttribute("aria-expanded", "false");
    input.removeAttribute("aria-activedescendant");
  }

  function highlight(index) {
    active = index;
    options.forEach((li, i) => li.setAttribute("aria-selected", String(i === index)));
    if (index >= 0) {
      input.setAttribute("aria-activedescendant", options[index].id);
      options[index].scrollIntoView({ block: "nearest" });
    }
  }

  function typed() {
    const before = input.value.slice(0, input.selectionStart);
    if (input.selectionStart !== input.selectionEnd) return null;
    const m = TYPING.exec(before);
    return m ? m[1] : null;
  }

  async function update() {
    const prefix = typed();
    if (prefix === null) return close();
    const names = await loadMembers();
    if (typed() !== prefix) return; // typed on meanwhile: a newer update runs
    const wanted = prefix.toLowerCase();
    const found = names.filter((n) => n.toLowerCase().startsWith(wanted)).slice(0, MAX_SHOWN);
    if (!found.length) return close();
    options = found.map((name, i) => {
      const li = document.createElement("li");
      li.id = "mention-option-" + i;
      li.setAttribute("role", "option");
      li.textContent = name;
      li.addEventListener("mousedown", (e) => {
        e.preventDefault(); // keep the focus in the box
        pick(name);
      });
      return li;
    });
    list.replaceChildren(...options);
    list.hidden = false;
    input.setAttribute("aria-expanded", "true");
    highlight(0);
  }

  function pick(name) {
    const caret = input.selectionStart;
    const before = input.value.slice(0, caret);
    const start = before.lastIndexOf("@");
    const inserted = "@" + name + " ";
    input.value = before.slice(0, start) + inserted + input.value.slice(caret);
    const at = start + inserted.length;
    input.setSelectionRange(at, at);
    close();
    input.dispatchEvent(new Event("input", { bubbles: true })); // counter and draft
  }

  input.addEventListener("input", update);
  input.addEventListener("click", update);
  input.addEventListener("blur", close);
  // Registered before room.js's (Enter sends): while the list is open these keys are
  // the list's.
  input.addEventListener("keydown", (e) => {
    if (list.hidden || !options.length) return;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      const step = e.key === "ArrowDown" ? 1 : -1;
      highlight((active + step + options.length) % options.length);
    } else if ((e.key === "Enter" || e.key === "Tab") && !e.shiftKey && active >= 0) {
      pick(options[active].textContent);
    } else if (e.key === "Escape") {
      close();
    } else {
      return;
    }
    e.preventDefault();
    e.stopImmediatePropagation();
  });
})();
