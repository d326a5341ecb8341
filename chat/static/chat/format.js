// Message text as DOM nodes: links (http, https, mailto only), a small markdown subset
// (**bold**, *italics* or _italics_, `code`, ```code blocks```) and @mentions. Only
// text nodes and the elements a, strong, em, code, pre and span are ever made; user
// text never goes through innerHTML, so no input can inject markup.
(function () {
  "use strict";

  const MAX_DEPTH = 4; // nested emphasis deeper than this stays text
  const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);
  // One alternative per inline form, earliest match wins. The mention rule is the
  // server's (chat/services/notifications.py MENTION), without trailing punctuation.
  const INLINE = new RegExp(
    [
      "(?<code>`[^`\\n]+`)",
      "(?<url>\\b(?:https?:\\/\\/|mailto:)[^\\s<>\"`]+)",
      "(?<bold>\\*\\*(?=\\S)[\\s\\S]*?\\S\\*\\*)",
      "(?<star>(?<![\\w*])\\*(?=[^\\s*])(?:[^*\\n]*?[^\\s*])\\*(?![\\w*]))",
      "(?<under>(?<![\\w_])_(?=[^\\s_])(?:[^_\\n]*?[^\\s_])_(?![\\w_]))",
      "(?<mention>(?<![\\p{L}\\p{N}_@.+-])@[\\p{L}\\p{N}_.@+-]{0,149}[\\p{L}\\p{N}_])",
    ].join("|"),
    "gu",
  );

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A link only for a URL the browser parses with an allowed scheme; else text.
  function link(raw) {
    let text = raw;
    let rest = "";
    // Sentence punctuation after a URL is not part of it; nor is an unmatched ")".
    const tail = /[.,;:!?'"\]]+$|\)$/u;
    for (let m = tail.exec(text); m; m = tail.exec(text)) {
      if (m[0].startsWith(")") && (text.match(/\(/g) || []).length >= (text.match(/\)/g) || []).length) break;
      rest = m[0] + rest;
      text = text.slice(0, m.index);
    }
    let url = null;
    try {
      url = new URL(text);
    } catch (err) {
      return [document.createTextNode(raw)];
    }
    if (!SAFE_SCHEMES.has(url.protocol)) return [document.createTextNode(raw)];
    const a = el("a", "", text);
    a.href = url.href;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    return rest ? [a, document.createTextNode(rest)] : [a];
  }

  function inline(text, out, ctx, depth) {
    let at = 0;
    const matches = Array.from(text.matchAll(INLINE));
    for (const m of matches) {
      if (m.index < at) continue;
      if (m.index > at) out.append(text.slice(at, m.index));
      const g = m.groups;
      const whole = m[0];
      if (g.code) {
        out.append(el("code", "", whole.slice(1, -1)));
      } else if (g.url) {
        out.append(...link(whole));
      } else if ((g.bold || g.star || g.under) && depth < MAX_DEPTH) {
        const cut = g.bold ? 2 : 1;
        const node = el(g.bold ? "strong" : "em");
        inline(whole.slice(cut, -cut), node, ctx, depth + 1);
        out.append(node);
      } else if (g.mention) {
        const span = el("span", "mention", whole);
        const name = whole.slice(1);
        if (ctx.me && name === ctx.me) {
          span.classList.add("me");
          span.title = "mentions you";
          ctx.mentionsMe = true;
        }
        out.append(span);
      } else {
        out.append(whole);
      }
      at = m.index + whole.length;
    }
    if (at < text.length) out.append(text.slice(at));
  }

  // Render `text` into `target` (its children are replaced). Returns whether the
  // text @mentions `me`.
  function render(target, text, me) {
    const ctx = { me, mentionsMe: false };
    const out = document.createDocumentFragment();
    const parts = text.split(/```/u);
    // An unmatched ``` (an even number of parts) stays text.
    const blocks = parts.length % 2 === 1 ? parts : [...parts.slice(0, -2), parts.slice(-2).join("```")];
    blocks.forEach((part, i) => {
      if (i % 2 === 1) {
        const pre = el("pre");
        pre.append(el("code", "", part.replace(/^[^\S\n]*\n/u, "").replace(/\n$/u, "")));
        out.append(pre);
      } else if (part) {
        inline(part, out, ctx, 0);
      }
    });
    target.replaceChildren(out);
    return ctx.mentionsMe;
  }

  window.ChatFormat = { render };
})();
