// What the conversation page says to people: the word for each state of one's own
// message, and a plain sentence for each error code of docs/protocol.md. The message
// stream's (Kafka's) state is for operators: a tooltip and a data attribute only.
(function () {
  "use strict";

  // Own-message states (data-state): [the word shown, the tooltip that explains it].
  const STATES = {
    queued: ["not sent yet", "You are offline: it is sent as soon as the connection is back."],
    sending: ["sending…", "On its way to the server."],
    sent: ["sent", "The others in this conversation have it."],
    retrying: ["sent", "The others in this conversation have it."],
    delivered: ["sent", "The others in this conversation have it."],
    skipped: ["sent", "The others in this conversation have it."],
    dead: ["sent", "The others in this conversation have it."],
  };

  // The message stream's state (data-stream), added to the tooltip for operators.
  const STREAM = {
    pending: "Message stream: waiting to be published.",
    published: "Message stream: published.",
    failed: "Message stream: publishing failed for now; the server keeps retrying.",
    dead: "Message stream: can never be published",
    skipped: "Message stream: off on this server.",
  };

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  // A refused frame's code (and the server's detail) as a sentence for people.
  function error(code, detail, facts) {
    const f = facts || {};
    switch (code) {
      case "too_long":
        return f.length && f.limit
          ? "This message is too long: " + plural(f.length, "character") + " for a limit of " + f.limit + ". Shorten it, then send it."
          : "This message is too long. Shorten it, then send it.";
      case "empty":
        return "This message is empty: write something before sending.";
      case "rate_limited":
        return "You are sending too fast. Wait a few seconds, then send again.";
      case "unknown_receiver":
        return "That person or conversation does not exist.";
      case "forbidden":
        return "You are not a member of this private conversation, so you cannot write here.";
      case "invalid_json":
        return "The page sent something the server could not read. Reload the page and try again.";
      case "invalid_message":
        return detail ? "This message cannot be sent: " + lowerFirst(detail) : "This message cannot be sent.";
      default:
        return detail || "Something went wrong. Try again.";
    }
  }

  function lowerFirst(text) {
    return text.charAt(0).toLowerCase() + text.slice(1);
  }

  window.ChatWords = { STATES, STREAM, error };
})();
