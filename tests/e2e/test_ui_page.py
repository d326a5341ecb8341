"""The conversation page made calmer and clearer (issue 22), in a real headless
Chromium: safe links and markdown, grouped messages, mentions and @-autocomplete,
people's words for states and errors, the "New messages" line and "jump to latest",
the notice (dismissable, cleared on read, never over the last message) and the
mentions page, the phone panel's ways out, the unread favicon and desktop
notifications."""

from __future__ import annotations

import re

import pytest
from channels.db import database_sync_to_async
from playwright.async_api import expect

from chat.models import dm_room_name
from chat.services.rooms import membership_join, room_mark_read

from ..support import WSClient, room_ensure
from .browser import ACKED, CONNECTED, message, screenshot, send, store

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True,
         "has_touch": True, "device_scale_factor": 2}  # fmt: skip
DATA_PNG = re.compile(r"^data:image/png;base64,")  # a canvas-drawn icon
ALLOWED_TAGS = {"A", "STRONG", "EM", "CODE", "PRE", "SPAN"}
TAGS_IN_MESSAGES = (
    "Array.from(document.querySelectorAll('#log .content *'), e => e.tagName)"
)

# The browser API boundary: record the desktop notifications a page makes and the
# permission requests, and let the test say whether the tab is hidden.
RECORD_NOTIFICATIONS = """
(() => {
  const Real = window.Notification;
  window.__notified = [];
  window.__asked = 0;
  window.__hidden = false;
  function Recorded(title, options) {
    window.__notified.push({ title, body: (options || {}).body });
    return new Real(title, options);
  }
  Object.defineProperty(Recorded, "permission", { get: () => Real.permission });
  Recorded.requestPermission = (...args) => {
    window.__asked += 1;
    return Real.requestPermission(...args);
  };
  window.Notification = Recorded;
  Object.defineProperty(document, "hidden", { get: () => window.__hidden });
})();
"""


async def join(user_id: int, room: str) -> None:
    """Make the user a member of the room (created if need be; caught up to now)."""
    await database_sync_to_async(room_ensure)(room)
    await database_sync_to_async(membership_join)(user_id=user_id, room_name=room)


async def say(server: str, cookie: str, room: str, *texts: str) -> None:
    """Send messages to a room through a real socket and wait for their acks."""
    client = await WSClient.connect(server, room, cookie)
    await client.expect("history")
    for text in texts:
        await client.send({"message": text, "client_id": text})
        await client.expect("message.ack")
    await client.close()


# Whether an element lies inside the message scroller's visible box.
IN_VIEW = """e => {
  const r = e.getBoundingClientRect();
  const s = document.getElementById('scroller').getBoundingClientRect();
  return r.top >= s.top - 1 && r.bottom <= s.bottom + 1;
}"""


async def fully_visible(page, selector: str) -> bool:
    """Whether the element lies inside the message scroller's visible box."""
    return await page.locator(selector).evaluate(IN_VIEW)


# --- messages: links, markdown, grouping, mentions ---------------------------------------


async def test_links_and_markdown_render_safely_and_hostile_text_stays_text(
    asgi_server, chat_users, pages
):
    """http(s) and mailto become links that open apart (noopener noreferrer); bold,
    italics, inline code and code blocks render; javascript: URLs, markdown links to
    them, HTML and nested markers create no other element, run nothing and break no
    CSP rule."""
    texts = [
        "see https://example.org/a?b=1, (https://en.wikipedia.org/wiki/Foo_(bar)) "
        "or mailto:team@example.org.",
        "**bold** and *italics* and _also_ and `x < y` and **bold _in_ it**",
        "```\nfor i in range(3):\n    print('<b>', i)\n```",
        "javascript:alert(1) [x](javascript:window.pwned=1) "
        "<img src=x onerror=\"window.pwned=2\"> <a href='javascript:1'>a</a>",
        "**`<script>window.pwned=3</script>`** ***x*** _**_ `` ``` ftp://x.org",
    ]
    await database_sync_to_async(store)("lobby", chat_users["bob"].id, texts)
    alice = await pages.open(asgi_server, "alice", "/chat/lobby/")
    await alice.wait_for_selector("#seq-5")

    links = alice.locator("#log .content a")
    hrefs = await links.evaluate_all("as => as.map(a => a.href)")
    assert hrefs == [
        "https://example.org/a?b=1",
        "https://en.wikipedia.org/wiki/Foo_(bar)",
        "mailto:team@example.org",
    ]
    for i in range(3):
        assert await links.nth(i).get_attribute("rel") == "noopener noreferrer"
        assert await links.nth(i).get_attribute("target") == "_blank"
    first = alice.locator("#seq-1 .content")
    assert (await first.text_content()) == texts[0]  # the text itself is unchanged

    second = alice.locator("#seq-2 .content")
    assert await second.locator("strong").all_text_contents() == ["bold", "bold in it"]
    assert await second.locator("em").all_text_contents() == ["italics", "also", "in"]
    assert await second.locator("code").all_text_contents() == ["x < y"]
    block = alice.locator("#seq-3 .content pre code")
    assert await block.text_content() == "for i in range(3):\n    print('<b>', i)"

    await screenshot(alice, "formatting")
    tags = set(await alice.evaluate(TAGS_IN_MESSAGES))
    assert tags <= ALLOWED_TAGS, tags
    hostile = alice.locator("#seq-4 .content")
    assert await hostile.text_content() == texts[3]
    assert await hostile.locator("*").count() == 0
    assert (
        await alice.locator("#log .content [onerror], #log img, #log script").count()
        == 0
    )
    assert await alice.evaluate("window.pwned") is None
    assert await alice.locator("#seq-5 .content strong code").text_content() == (
        "<script>window.pwned=3</script>"
    )
    assert (
        await alice.locator("#log a[href^='javascript'], #log a[href^='ftp']").count()
        == 0
    )
    assert pages.csp_violations == []


async def test_one_header_per_sender_group_after_history_older_and_live(
    asgi_server, chat_users, pages
):
    """Consecutive messages of one sender show one sender/time header: in the history,
    across "load older" and for live messages; another sender starts a new group."""
    bob, carol = chat_users["bob"], chat_users["carol"]
    await database_sync_to_async(store)(
        "lobby", bob.id, [f"bob {i:02d}" for i in range(1, 56)]
    )
    await database_sync_to_async(store)("lobby", carol.id, ["carol 1"])
    alice = await pages.open(asgi_server, "alice", "/chat/lobby/")
    await alice.wait_for_selector("#seq-56")
    assert await alice.locator("#seq-7").get_attribute("class") == "msg"  # first shown
    assert "grouped" in (await alice.locator("#seq-8").get_attribute("class"))
    assert await alice.locator("#seq-8 .meta").is_hidden()
    assert "grouped" not in (await alice.locator("#seq-56").get_attribute("class"))

    await alice.get_by_role("button", name="Load older messages").click()
    await alice.wait_for_selector("#seq-1")
    assert "grouped" in (await alice.locator("#seq-7").get_attribute("class"))
    assert await alice.locator("#seq-1 .meta").is_visible()

    await say(asgi_server, carol.cookie, "lobby", "carol 2")
    await say(asgi_server, bob.cookie, "lobby", "bob again")
    await alice.wait_for_selector(message("bob again"))
    await expect(alice.locator(message("carol 2"))).to_have_class("msg grouped")
    await expect(alice.locator(message("bob again"))).to_have_class("msg")
    await send(alice, "mine 1")
    await send(alice, "mine 2")
    await alice.wait_for_selector(message("mine 2") + ACKED)
    await expect(alice.locator(message("mine 2"))).to_have_class("msg mine grouped")


async def test_mentions_of_me_are_highlighted_and_names_autocomplete(
    asgi_server, chat_users, pages
):
    """A message that @mentions alice is marked for her (class and words for screen
    readers), other mentions are only styled; typing "@" lists the room's members in
    a listbox that arrows, Enter, Tab and Escape drive, and picking sends nothing."""
    for name in ("bob", "carol"):
        await join(chat_users[name].id, "lobby")
    await database_sync_to_async(store)(
        "lobby", chat_users["bob"].id, ["@alice can you look?", "ask @carol."]
    )
    alice = await pages.open(asgi_server, "alice", "/chat/lobby/")
    await alice.wait_for_selector("#seq-2")
    mine = alice.locator("#seq-1")
    assert "mentions-me" in (await mine.get_attribute("class"))
    assert await mine.locator(".mention.me").text_content() == "@alice"
    assert "(mentions you)" in (await mine.text_content())
    other = alice.locator("#seq-2")
    assert "mentions-me" not in (await other.get_attribute("class"))
    assert await other.locator(".mention").text_content() == "@carol"
    assert await other.locator(".mention.me").count() == 0

    box = alice.locator("#message")
    await box.press_sequentially("hi @")
    options = alice.get_by_role("listbox", name="Members to mention")
    await expect(options.get_by_role("option")).to_have_text(["bob", "carol"])
    assert await box.get_attribute("aria-expanded") == "true"
    await expect(options.get_by_role("option", name="bob")).to_have_attribute(
        "aria-selected", "true"
    )
    await box.press("ArrowDown")
    await expect(options.get_by_role("option", name="carol")).to_have_attribute(
        "aria-selected", "true"
    )
    await box.press("Enter")
    assert await box.input_value() == "hi @carol "
    await expect(options).to_be_hidden()
    assert await alice.locator("#log li.msg").count() == 2  # Enter picked, not sent

    await box.press_sequentially("and @B")
    await expect(options.get_by_role("option")).to_have_text(["bob"])
    await box.press("Escape")
    await expect(options).to_be_hidden()
    assert await box.input_value() == "hi @carol and @B"
    await box.press("Backspace")
    await box.press_sequentially("b")
    await expect(options.get_by_role("option")).to_have_text(["bob"])
    await box.press("Tab")
    assert await box.input_value() == "hi @carol and @bob "
    await box.press("Enter")
    await alice.wait_for_selector(message("hi @carol and @bob") + ACKED)
    assert pages.csp_violations == []


# --- words people use ---------------------------------------------------------------------


async def test_states_and_errors_read_as_plain_words(
    asgi_server, start_worker, start_web, chat_users, pages
):
    """A published message says "sent" (the stream's state is in the tooltip and
    data-stream); a too-long message and the rate limit are plain sentences without
    the error code, and the refused text comes back into the box."""
    await database_sync_to_async(start_worker)()
    alice = await pages.open(asgi_server, "alice", "/chat/lobby/")
    await send(alice, "hello")
    mine = alice.locator(message("hello"))
    await expect(mine).to_have_attribute("data-stream", "published", timeout=20_000)
    assert await mine.locator(".status").text_content() == "sent"
    tip = await mine.locator(".status").get_attribute("title") or ""
    assert "The others in this conversation have it." in tip and "published" in tip

    await alice.fill("#message", "x" * 4001)
    await alice.press("#message", "Enter")
    error = alice.locator("#error")
    await expect(error).to_have_text(
        "This message is too long: 4001 characters for a limit of 4000."
        " Shorten it, then send it."
    )

    limited = await database_sync_to_async(start_web)(CHAT_RATE_LIMIT="2/minute")
    page = await pages.open(limited.split("//", 1)[1], "alice", "/chat/lobby/")
    for text in ("one", "two"):
        await send(page, text)
        await page.wait_for_selector(message(text) + ACKED)
    await send(page, "three")
    await expect(page.locator("#error")).to_have_text(
        "You are sending too fast. Wait a few seconds, then send again."
    )
    assert await page.locator("#error").get_attribute("data-code") == "rate_limited"
    assert await page.input_value("#message") == "three"
    assert await page.locator(message("three")).count() == 0


# --- where the reader left off --------------------------------------------------------------


async def test_new_messages_line_at_the_first_unread_and_jump_to_latest(
    asgi_server, chat_users, pages
):
    """bob read #lobby up to message 5 and 40 more came: his page lands on a "New
    messages" line before message 6 with "New messages below — jump to latest";
    jumping shows the last one. Scrolled up, a live message brings the button back."""
    alice, bob = chat_users["alice"], chat_users["bob"]
    await join(bob.id, "lobby")
    await database_sync_to_async(store)(
        "lobby", alice.id, [f"read {i}" for i in range(1, 6)]
    )
    await database_sync_to_async(room_mark_read)(
        user_id=bob.id, room_name="lobby", up_to_seq=5
    )
    await database_sync_to_async(store)(
        "lobby", alice.id, [f"unread {i:02d}" for i in range(1, 41)]
    )
    page = await pages.open(asgi_server, "bob", "/chat/lobby/")
    await page.wait_for_selector("#seq-45")
    line = page.locator("#log li.unread-line")
    await expect(line).to_have_text("New messages")
    assert await line.evaluate("e => e.nextElementSibling.id") == "seq-6"
    assert await fully_visible(page, "#log li.unread-line")
    assert await fully_visible(page, "#seq-6")
    assert not await fully_visible(page, "#seq-45")
    jump = page.locator("#jump-latest")
    await expect(jump).to_have_text("New messages below — jump to latest")
    await screenshot(page, "new-messages")

    await jump.click()
    await expect(jump).to_be_hidden()
    assert await fully_visible(page, "#seq-45")

    await page.locator("#scroller").evaluate("s => { s.scrollTop = 0; }")
    await expect(jump).to_have_text("Jump to latest")
    await say(asgi_server, alice.cookie, "lobby", "while you scrolled")
    await expect(jump).to_have_text("New messages below — jump to latest")
    await jump.click()
    assert await fully_visible(page, message("while you scrolled"))
    assert await page.locator("#log li.unread-line").count() == 1  # it stays put


# --- the notice and the mentions page ------------------------------------------------------


async def test_notice_never_hides_the_last_message_is_dismissable_and_clears_on_read(
    asgi_server, start_worker, start_agent, chat_users, pages
):
    """bob reads the bottom of #lobby when alice's DM arrives: the notice shows above
    the conversation and the last message stays in view. Dismissed, it stays away
    after a reload; the next one goes away when bob reads the DM elsewhere. The
    mentions page lists both, and its link opens the DM at that message."""
    worker = await database_sync_to_async(start_worker)()
    await database_sync_to_async(start_agent)(topic=worker.topic)
    alice, bob = chat_users["alice"], chat_users["bob"]
    await database_sync_to_async(store)(
        "lobby", alice.id, [f"line {i}" for i in range(1, 31)]
    )
    page = await pages.open(asgi_server, "bob", "/chat/lobby/")
    await page.wait_for_selector("#seq-30")
    assert await fully_visible(page, "#seq-30")

    dm = dm_room_name(alice.id, bob.id)
    await say(asgi_server, alice.cookie, dm, "first secret")
    notice = page.locator("#notice")
    await expect(notice).to_contain_text("first secret", timeout=30_000)
    boxes = await page.evaluate(
        """() => [document.getElementById('notice'), document.getElementById('seq-30')]
                 .map(e => e.getBoundingClientRect().toJSON())"""
    )
    assert boxes[0]["bottom"] <= boxes[1]["top"]  # no overlap
    await screenshot(page, "notice")
    await page.wait_for_function(
        f"() => ({IN_VIEW})(document.getElementById('seq-30'))"
    )

    await notice.get_by_role("button", name="Dismiss this notice").click()
    await expect(notice).to_be_hidden()
    await page.reload()
    await page.wait_for_selector(CONNECTED)
    await page.wait_for_selector("#seq-30")
    await expect(page.locator("#dms .unread")).to_have_text("1")  # snapshot came
    await expect(notice).to_be_hidden()

    await say(asgi_server, alice.cookie, dm, "second secret")
    await expect(notice).to_contain_text("second secret", timeout=30_000)
    elsewhere = await WSClient.connect(asgi_server, dm, bob.cookie)
    await elsewhere.expect("history")
    await elsewhere.send({"type": "read", "up_to_seq": 2})
    await expect(notice).to_be_hidden()
    await elsewhere.close()

    await page.get_by_role("link", name="Mentions").click()
    await page.wait_for_url("**/mentions/")
    entries = page.locator("#mentions li")
    await expect(entries).to_have_count(2)
    await expect(entries.first).to_contain_text("second secret")
    await entries.nth(1).get_by_role("link").click()
    await page.wait_for_url(f"**/chat/{dm}/#seq-1")
    await expect(page.locator("#seq-1")).to_have_class("msg linked")
    assert pages.csp_violations == []


# --- phone width ------------------------------------------------------------------------------


async def test_phone_panel_closes_with_its_button_a_tap_outside_and_back(
    asgi_server, chat_users, pages
):
    """At 390×844 the Conversations panel closes with its visible Close button, a tap
    outside it, and the browser's Back (which stays on the conversation)."""
    page = await pages.open(asgi_server, "alice", "/chat/lobby/", **PHONE)
    sidebar = page.locator("#sidebar")
    toggle = page.get_by_role("button", name="Conversations", exact=True)

    await toggle.click()
    await expect(sidebar).to_be_visible()
    close = page.get_by_role("button", name="Close conversations")
    await expect(close).to_be_visible()
    await close.click()
    await expect(sidebar).to_be_hidden()
    assert await toggle.get_attribute("aria-expanded") == "false"

    await toggle.click()
    await expect(sidebar).to_be_visible()
    await page.mouse.click(380, 500)  # right of the panel: the backdrop
    await expect(sidebar).to_be_hidden()

    await toggle.click()
    await expect(sidebar).to_be_visible()
    await page.go_back()
    await expect(sidebar).to_be_hidden()
    assert page.url.endswith("/chat/lobby/")
    assert await page.locator(CONNECTED).count() == 1  # the same page, still open
    await page.keyboard.press("Escape")  # Escape still closes it, too
    await toggle.click()
    await page.keyboard.press("Escape")
    await expect(sidebar).to_be_hidden()
    assert pages.csp_violations == []


# --- the tab's icon and desktop notifications ----------------------------------------------


async def test_favicon_counts_unread_and_desktop_notifications_when_hidden(
    asgi_server, start_worker, start_agent, chat_users, pages
):
    """The tab icon gets the unread count; with the permission granted, a DM and a
    mention make desktop notifications while the tab is hidden, and none while it is
    shown. Without it, permission is asked only from the header's button."""
    worker = await database_sync_to_async(start_worker)()
    await database_sync_to_async(start_agent)(topic=worker.topic)
    alice, bob = chat_users["alice"], chat_users["bob"]
    await join(bob.id, "random")
    page = await pages.open(
        asgi_server, "bob", "/chat/lobby/", permissions=["notifications"]
    )
    await page.context.add_init_script(RECORD_NOTIFICATIONS)
    await page.reload()
    await page.wait_for_selector(CONNECTED)
    icon = page.locator("link#favicon")
    assert (await icon.get_attribute("href") or "").endswith("/favicon.ico")
    await expect(page.locator("#desktop-notify")).to_be_hidden()  # granted already

    await say(asgi_server, alice.cookie, "random", "news in random")
    await expect(page).to_have_title("(1) #lobby · chatproj")
    await expect(icon).to_have_attribute("href", DATA_PNG)
    drawn = await icon.get_attribute("href")

    await page.evaluate("window.__hidden = true")
    dm = dm_room_name(alice.id, bob.id)
    await say(asgi_server, alice.cookie, dm, "psst, a DM")
    await say(asgi_server, alice.cookie, "random", "@bob look at this")
    await page.wait_for_function("() => window.__notified.length >= 2", timeout=30_000)
    notified = await page.evaluate("window.__notified")
    assert notified == [
        {"title": "alice (direct message)", "body": "psst, a DM"},
        {"title": "alice mentioned you in #random", "body": "@bob look at this"},
    ]
    assert await icon.get_attribute("href") != drawn  # 3 now, redrawn

    await page.evaluate("window.__hidden = false")
    await say(asgi_server, alice.cookie, dm, "seen on screen")
    await expect(page.locator("#notice")).to_contain_text(
        "seen on screen", timeout=30_000
    )
    assert len(await page.evaluate("window.__notified")) == 2

    asking = await pages.open(asgi_server, "carol", "/")
    await asking.context.add_init_script(RECORD_NOTIFICATIONS)
    await asking.reload()
    button = asking.get_by_role("button", name="Turn on desktop notifications")
    await expect(button).to_be_visible()
    assert await asking.evaluate("window.__asked") == 0  # never without a click
    await button.click()
    await asking.wait_for_function("() => window.__asked === 1")
    assert pages.csp_violations == []
