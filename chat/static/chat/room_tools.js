// The room page's room frames (room.js passes on the frames it does not handle as a
// "chat:frame" event): the topic, changed live, and the notice that a mention
// reached no one, with a button that adds (invites) those people.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const room = JSON.parse($("room-name").textContent);

  function onTopic(frame) {
    const shown = $("room-topic");
    shown.textContent = frame.topic;
    shown.hidden = !frame.topic;
    const field = document.querySelector("#topic-edit input[name=topic]");
    if (field && document.activeElement !== field) field.value = frame.topic;
    const summary = document.querySelector("#topic-edit summary");
    if (summary) summary.textContent = frame.topic ? "Edit topic" : "Add a topic";
  }

  // A POST form to /chat/<room>/members/ for one user, with the page's CSRF token.
  function addForm(username) {
    const form = document.createElement("form");
    form.method = "post";
    form.action = "/chat/" + encodeURIComponent(room) + "/members/";
    form.className = "inline";
    const token = document.querySelector("input[name=csrfmiddlewaretoken]");
    for (const [name, value] of [["csrfmiddlewaretoken", token ? token.value : ""], ["username", username]]) {
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      input.value = value;
      form.append(input);
    }
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Invite " + username;
    form.append(button);
    return form;
  }

  function onUnreached(frame) {
    const names = frame.usernames || [];
    if (frame.room !== room || !names.length) return;
    const notice = $("mention-notice");
    const who = names.length === 1 ? names[0] + " is" : names.join(", ") + " are";
    const parts = [who + " not in this room and " + (names.length === 1 ? "was" : "were") + " not notified."];
    if (frame.may_add) {
      parts.push(" Invite?");
      for (const name of names) parts.push(addForm(name));
    } else {
      parts.push(" Only the room's owner can invite people here.");
    }
    const close = document.createElement("button");
    close.type = "button";
    close.className = "quiet";
    close.textContent = "Dismiss";
    close.addEventListener("click", () => { notice.hidden = true; });
    parts.push(close);
    notice.replaceChildren(...parts);
    notice.hidden = false;
  }

  document.addEventListener("chat:frame", (e) => {
    const frame = e.detail;
    if (frame.type === "room.topic" && frame.room === room) onTopic(frame);
    else if (frame.type === "mention.unreached") onUnreached(frame);
  });
})();
