// The sidebar: people search (to start a DM). The phone-width panel is panel.js.
(function () {
  "use strict";
  const query = document.getElementById("people-q");
  const results = document.getElementById("people-results");
  const status = document.getElementById("people-status");
  const meElement = document.getElementById("me");
  const myName = meElement ? meElement.textContent : "";
  let timer = null;
  let asked = 0; // only the answer to the latest question is shown

  async function search() {
    const text = query.value.trim();
    const mine = ++asked;
    if (!text) {
      results.replaceChildren();
      status.textContent = "";
      return;
    }
    try {
      const response = await fetch("/api/users/?q=" + encodeURIComponent(text), {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      if (mine !== asked) return;
      if (!response.ok) {
        results.replaceChildren();
        status.textContent = response.status === 401
          ? "Your session has ended: log in again."
          : "The search failed (HTTP " + response.status + ").";
        return;
      }
      const users = ((await response.json()).users || []).filter((u) => u.username !== myName);
      if (mine !== asked) return;
      results.replaceChildren(...users.map((u) => {
        const li = document.createElement("li");
        const link = document.createElement("a");
        link.href = "/dm/" + encodeURIComponent(u.username) + "/";
        link.textContent = u.username;
        link.title = "Direct messages with " + u.username;
        li.append(link);
        return li;
      }));
      status.textContent = users.length
        ? users.length + (users.length === 1 ? " person" : " people") + ": pick one to message"
        : "Nobody matches “" + text + "”.";
    } catch (err) {
      if (mine === asked) status.textContent = "The search failed: no connection.";
    }
  }

  if (query) {
    query.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(search, 200);
    });
    query.addEventListener("keydown", (e) => {
      const first = results.querySelector("a");
      if (e.key === "ArrowDown" && first) {
        e.preventDefault();
        first.focus();
      } else if (e.key === "Enter") {
        e.preventDefault();
        if (first) first.click();
        else search();
      }
    });
    results.addEventListener("keydown", (e) => {
      const links = Array.from(results.querySelectorAll("a"));
      const at = links.indexOf(document.activeElement);
      if (e.key === "ArrowDown" && at >= 0 && at < links.length - 1) {
        e.preventDefault();
        links[at + 1].focus();
      } else if (e.key === "ArrowUp" && at >= 0) {
        e.preventDefault();
        (at === 0 ? query : links[at - 1]).focus();
      }
    });
  }
})();
