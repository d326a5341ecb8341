"""The chat as people use it, in a real headless Chromium (Debian's, driven by
Playwright): conversations, message states, safe and right-to-left text, typed text
that survives, catch-up across a server restart, the offline queue, older history,
sign-up, phone width and keyboard. Screenshots go to docs/screenshots/
(`make screenshots`)."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys

import pytest
from channels.db import database_sync_to_async
from playwright.async_api import expect

from chat.models import Message
from chat.services.rooms import membership_join

from ..support import ROOT, WSClient, room_ensure
from .browser import (
    ACKED,
    CONNECTED,
    DESKTOP,
    contents,
    message,
    screenshot,
    send,
    store,
)

pytestmark = pytest.mark.django_db(transaction=True)

# --- conversations ---------------------------------------------------------------------


async def test_room_and_dm_between_two_browsers_and_a_third_sees_no_dm(
    asgi_server, start_worker, start_agent, chat_users, pages
):
    """alice and bob chat in #lobby (alice's message reaches "delivered") and in their
    DM, started from the people search; bob's sidebar gets the DM with an unread
    badge and the tab title counts it; carol, in #lobby all along, receives no frame
    of the DM nor its notification, and is refused its page."""
    worker = await database_sync_to_async(start_worker)()
    await database_sync_to_async(start_agent)(topic=worker.topic)
    alice_u = chat_users["alice"]
    await database_sync_to_async(room_ensure)("random")
    await database_sync_to_async(membership_join)(
        user_id=chat_users["bob"].id, room_name="random"
    )
    alice = await pages.open(asgi_server, "alice", "/chat/lobby/")
    bob = await pages.open(asgi_server, "bob", "/chat/lobby/")
    carol = await pages.open(asgi_server, "carol", "/chat/lobby/")
    await alice.wait_for_selector("#presence:has-text('bob')")

    await send(alice, "hello bob, from a browser")
    await bob.wait_for_selector(message("hello bob, from a browser"))
    mine = alice.locator(message("hello bob, from a browser"))
    await alice.wait_for_selector(
        message("hello bob, from a browser") + "[data-state=delivered]"
    )
    assert await mine.locator(".status").text_content() == "sent"  # people's word
    assert "published" in (await mine.locator(".status").get_attribute("title"))
    full_time = await mine.locator("time").get_attribute("title") or ""
    assert str(datetime.date.today().year) in full_time  # the full date on hover
    await carol.wait_for_selector(message("hello bob, from a browser"))
    await send(bob, "hi alice, good to see you")
    await alice.wait_for_selector(message("hi alice, good to see you"))
    await screenshot(alice, "room")

    # alice starts the DM from the people search, by keyboard
    await alice.fill("#people-q", "bo")
    await alice.wait_for_selector("#people-results a:text-is('bob')")
    await alice.press("#people-q", "Enter")
    await alice.wait_for_url("**/chat/dm-*/")
    dm_path = alice.url.split(asgi_server, 1)[1]
    await alice.wait_for_selector(CONNECTED)
    assert await alice.locator("#room-title").text_content() == (
        "Direct messages with bob"
    )
    await send(alice, "a secret for bob")
    await alice.wait_for_selector(message("a secret for bob") + ACKED)

    # bob, still in #lobby: the DM appears in his sidebar with a badge, and a notice
    badge = bob.locator('#dms .unread[data-room^="dm-"]')
    await badge.wait_for()
    await expect(bob).to_have_title("(1) #lobby · chatproj")
    assert await badge.text_content() == "1"
    await bob.wait_for_selector("#notice:has-text('a secret for bob')")
    # and a room he is in gets news too: the sidebar shows both badges
    random = await WSClient.connect(asgi_server, "random", alice_u.cookie)
    await random.expect("history")
    for text in ("anyone in random?", "lunch at noon"):
        await random.send({"message": text, "client_id": text})
        await random.expect("message.ack")
    await random.close()
    await bob.wait_for_selector('#rooms .unread[data-room="random"]:text-is("2")')
    await expect(bob).to_have_title("(3) #lobby · chatproj")
    await screenshot(bob, "sidebar-unread")
    assert not await bob.locator(message("a secret for bob")).count()

    await bob.click("#dms a")
    await bob.wait_for_url(f"**{dm_path}")
    await bob.wait_for_selector(CONNECTED)
    await bob.wait_for_selector(message("a secret for bob"))
    await send(bob, "got it, thanks")
    await alice.wait_for_selector(message("got it, thanks"))
    await badge.wait_for(state="hidden")  # read: the DM page's own badge is 0
    await expect(bob).to_have_title("(2) alice · chatproj")  # random: still 2
    await screenshot(alice, "dm")

    # carol: a mention reaches her, so the agent has handled the DM before it
    await alice.goto(f"http://{asgi_server}/chat/lobby/")
    await alice.wait_for_selector(CONNECTED)
    await send(alice, "@carol are you there?")
    await carol.wait_for_selector(message("@carol are you there?"))
    seen_by_carol = "\n".join(pages.frames["carol"])
    assert "a secret for bob" not in seen_by_carol and "got it" not in seen_by_carol
    assert "dm-" not in seen_by_carol
    assert not await carol.locator('#dms li, .unread[data-room^="dm-"]').count()
    assert "secret" not in (await carol.locator("#notice").text_content() or "")
    refused = await carol.goto(f"http://{asgi_server}{dm_path}")
    assert refused is not None and refused.status == 403
    assert pages.csp_violations == []


# --- content ---------------------------------------------------------------------------


async def test_script_arabic_and_long_text_show_as_text(asgi_server, chat_users, pages):
    """A <script> message is shown as text and runs nowhere; an Arabic message (and
    the box while typing it) lays out right-to-left; a long unbroken word wraps."""
    alice = await pages.open(asgi_server, "alice", "/chat/lobby/")
    bob = await pages.open(asgi_server, "bob", "/chat/lobby/")
    evil = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
    await send(alice, evil)
    for page in (alice, bob):
        await page.wait_for_selector(message(evil))
        assert await page.evaluate("window.pwned") is None
        assert await page.locator("#log img, #log script").count() == 0

    arabic = "مرحبا بالعالم! كيف حالك؟"
    await alice.fill("#message", arabic)
    box = alice.locator("#message")
    assert await box.evaluate("e => getComputedStyle(e).direction") == "rtl"
    await alice.press("#message", "Enter")
    for page in (alice, bob):
        content = page.locator(message(arabic) + " .content")
        await content.wait_for()
        assert await content.evaluate("e => getComputedStyle(e).direction") == "rtl"
        sender = page.locator(message(arabic) + " .sender")
        assert await sender.evaluate("e => getComputedStyle(e).direction") == "ltr"
    await send(alice, "hello, still left to right")
    content = bob.locator(message("hello, still left to right") + " .content")
    await content.wait_for()
    assert await content.evaluate("e => getComputedStyle(e).direction") == "ltr"

    word = "w" * 600
    await send(alice, word)
    await bob.wait_for_selector(message(word))
    assert await bob.evaluate(
        "document.documentElement.scrollWidth <= innerWidth"
        " && document.getElementById('scroller').scrollWidth"
        " <= document.getElementById('scroller').clientWidth"
    )
    assert pages.csp_violations == []


async def test_typed_text_survives_errors_and_shift_enter_adds_a_line(
    asgi_server, chat_users, pages
):
    """A 5,000-character paste is not cut, the counter follows the server's limit, and
    Enter keeps it in the box with the error; a message the server refuses comes back
    into the box; Shift+Enter adds a line; the box is reachable from the skip link."""
    alice = await pages.open(asgi_server, "alice", "/chat/lobby/")
    limit = 4000  # CHAT_MAX_MESSAGE_LENGTH's default, served by the page
    assert await alice.locator("#message").get_attribute("maxlength") is None
    long_text = "x" * 5000
    await alice.fill("#message", long_text)
    assert await alice.locator("#counter").text_content() == f"5000 / {limit}"
    assert "over" in (await alice.locator("#counter").get_attribute("class"))
    await alice.press("#message", "Enter")
    await alice.wait_for_selector("#error[data-code=too_long]")
    assert await alice.input_value("#message") == long_text
    assert await alice.locator("#log li.msg").count() == 0

    invisible = "\u200b\u200b"  # only zero-width spaces: the server says `empty`
    await alice.fill("#message", invisible)
    await alice.press("#message", "Enter")
    await alice.wait_for_selector("#error:has-text('empty')")
    assert await alice.input_value("#message") == invisible
    assert await alice.locator("#log li.msg").count() == 0

    # keyboard only: the skip link leads to the box; Shift+Enter, then Enter
    await alice.fill("#message", "")
    await alice.focus(".skip-link")  # the first stop of the page's tab order
    assert await alice.locator(".skip-link").is_visible()
    await alice.keyboard.press("Enter")
    assert await alice.evaluate("document.activeElement.id") == "message"
    await alice.keyboard.type("first line")
    await alice.keyboard.press("Shift+Enter")
    await alice.keyboard.type("second line")
    await alice.keyboard.press("Enter")
    last = alice.locator("#log li.msg .content").last
    await expect(last).to_have_text("first line second line")  # spaces normalized
    assert await last.evaluate("e => e.textContent") == "first line\nsecond line"
    assert (await last.bounding_box() or {}).get("height", 0) > 30  # two lines
    await alice.keyboard.press("Tab")
    assert await alice.evaluate("document.activeElement.textContent") == "Send"
    assert await alice.input_value("#message") == ""
    assert await alice.locator("#error").is_hidden()
    # every control has an accessible name
    assert await alice.get_by_role("textbox", name="Message to #lobby").count() == 1
    assert await alice.get_by_role("button", name="Send").count() == 1
    assert await alice.get_by_role("searchbox", name="Find people to message").count()
    assert await alice.get_by_role("navigation", name="Conversations").count() == 1


# --- catch-up --------------------------------------------------------------------------


async def test_server_restart_while_60_messages_arrive_shows_each_once_in_order(
    asgi_server, restartable_web, process_env, chat_users, pages
):
    """alice's page is on a web server that stops while bob sends 60 messages (more
    than the history size) through another; the demo-user set-up of `make run` runs
    twice meanwhile. Restarted on the same port, the page reconnects with its last
    seq and shows every message exactly once, in order, and alice is still logged in."""
    web = await database_sync_to_async(restartable_web)()
    alice = await pages.open(web.address, "alice", "/chat/lobby/")
    bob = await WSClient.connect(asgi_server, "lobby", chat_users["bob"].cookie)
    await bob.expect("history")

    async def say(text: str) -> None:
        await bob.send({"message": text, "client_id": text})
        await bob.expect(lambda f: f.get("type") == "message.ack")

    before = [f"before {i}" for i in range(1, 4)]
    for text in before:
        await say(text)
    await alice.wait_for_selector(message(before[-1]))

    await database_sync_to_async(web.stop)()
    await alice.wait_for_selector("#conn-state[data-state=offline]")
    meanwhile = [f"meanwhile {i:02d}" for i in range(1, 61)]
    for text in meanwhile:
        await say(text)
    for _ in range(2):  # what `make run` does on each start
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "manage.py", "create_demo_users"],
            env=process_env, cwd=ROOT, capture_output=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    await database_sync_to_async(web.start)()

    await alice.wait_for_selector(CONNECTED, timeout=30_000)
    await alice.wait_for_selector(message(meanwhile[-1]))
    assert await contents(alice) == before + meanwhile
    await say("live again")
    await alice.wait_for_selector(message("live again"))
    assert await contents(alice) == [*before, *meanwhile, "live again"]
    await bob.close()

    # still logged in: the reload shows the room, not the login form
    await alice.reload()
    await alice.wait_for_selector(CONNECTED)
    assert "/accounts/login/" not in alice.url
    await alice.wait_for_selector(message("live again"))


async def test_a_send_while_offline_is_delivered_once_after_the_reconnect(
    restartable_web, start_worker, chat_users, pages
):
    """With the server down the message waits as "queued" (not lost, not an error);
    after the restart it is sent with its client_id and delivered, once."""
    await database_sync_to_async(start_worker)()
    web = await database_sync_to_async(restartable_web)()
    alice = await pages.open(web.address, "alice", "/chat/lobby/")
    await database_sync_to_async(web.stop)()
    await alice.wait_for_selector("#conn-state[data-state=offline]")

    await send(alice, "written on the train")
    queued = message("written on the train")
    await alice.wait_for_selector(queued + "[data-state=queued]")
    assert await alice.locator("#error").is_hidden()
    await database_sync_to_async(web.start)()
    await alice.wait_for_selector(queued + "[data-state=delivered]", timeout=30_000)
    assert await alice.locator(queued).count() == 1
    stored = await database_sync_to_async(
        lambda: list(
            Message.objects.filter(content="written on the train").values_list(
                "status", flat=True
            )
        )
    )()
    assert stored == ["published"]
    await alice.reload()
    await alice.wait_for_selector(CONNECTED)
    await alice.wait_for_selector(queued + "[data-state=delivered]")
    assert await alice.locator(queued).count() == 1


async def test_load_older_and_a_missed_live_message_is_filled_in(
    asgi_server, chat_users, pages
):
    """70 messages: the page shows the latest 50 and "Load older" fetches the first
    20 in front of them. A message the page never got live (stored without a
    broadcast) is fetched when the next live one shows the seq gap."""
    bob_id = chat_users["bob"].id
    earlier = [f"message {i:02d}" for i in range(1, 71)]
    await database_sync_to_async(store)("lobby", bob_id, earlier)
    alice = await pages.open(asgi_server, "alice", "/chat/lobby/")
    await alice.wait_for_selector(message("message 70"))
    assert await contents(alice) == earlier[20:]
    assert await alice.locator("#history-start").is_hidden()

    await alice.get_by_role("button", name="Load older messages").click()
    await alice.wait_for_selector(message("message 01"))
    assert await contents(alice) == earlier
    await alice.wait_for_selector("#load-older", state="hidden")
    assert await alice.locator("#history-start").is_visible()
    assert await alice.locator("#log li.day").count() == 1  # all of today

    await database_sync_to_async(store)("lobby", bob_id, ["never broadcast"])
    bob = await WSClient.connect(asgi_server, "lobby", chat_users["bob"].cookie)
    await bob.expect("history")
    await bob.send({"message": "after the gap", "client_id": "g1"})
    await bob.expect("message.ack")
    await bob.close()
    await alice.wait_for_selector(message("never broadcast"))
    assert (await contents(alice))[-2:] == ["never broadcast", "after the gap"]


# --- accounts --------------------------------------------------------------------------


async def test_sign_up_chat_and_come_back_after_the_session_ends(
    asgi_server, chat_users, browser
):
    """From the login page's link: a new account, logged in and back on the room.
    When the session ends (a logout elsewhere) the page says so and links to the
    login, which returns to the room with the draft still in the box."""
    page = await (await browser.new_context(viewport=DESKTOP)).new_page()
    await page.goto(f"http://{asgi_server}/accounts/login/?next=/chat/lobby/")
    assert await page.locator("#demo-hint").count() == 1  # tests run with DEBUG on
    await page.click("#signup-link")
    await page.wait_for_url("**/accounts/signup/**")
    await page.fill("#id_username", "dana")
    await page.fill("#id_password1", "a long pass phrase 42")
    await page.fill("#id_password2", "a long pass phrase 42")
    await page.click("#signup button[type=submit]")
    await page.wait_for_url("**/chat/lobby/")
    await page.wait_for_selector(CONNECTED)
    assert await page.locator("#me").text_content() == "dana"
    await send(page, "hello, I am new")
    await page.wait_for_selector(message("hello, I am new") + ACKED)

    # logging out in another tab ends the session: the page says so, keeps the
    # draft, and its link leads back here after logging in again
    await page.fill("#message", "half-written")
    other = await page.context.new_page()
    await other.goto(f"http://{asgi_server}/")
    await other.get_by_role("button", name="Log out").click()
    await page.wait_for_selector("#conn-state[data-state=ended]")
    notice = page.locator("#session-notice")
    await expect(notice).to_contain_text("Your session has ended")
    await notice.get_by_role("link", name="Log in again").click()
    await page.wait_for_url(
        lambda url: "/accounts/login/?next=%2Fchat%2Flobby%2F" in url
    )
    await page.fill("#id_username", "dana")
    await page.fill("#id_password", "a long pass phrase 42")
    await page.click("form.stacked button[type=submit]")
    await page.wait_for_url("**/chat/lobby/")
    await page.wait_for_selector(CONNECTED)
    assert await page.input_value("#message") == "half-written"


# --- phone ---------------------------------------------------------------------------------


async def test_phone_width_keeps_the_box_at_the_bottom(asgi_server, chat_users, pages):
    """At 390×844 the page does not scroll sideways, the message box stays pinned to
    the bottom however many messages there are, and the sidebar opens as a panel
    from the header and closes with Escape."""
    await database_sync_to_async(store)(
        "lobby", chat_users["bob"].id, [f"phone message {i}" for i in range(1, 31)]
    )
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True,
             "has_touch": True, "device_scale_factor": 2}  # fmt: skip
    page = await pages.open(asgi_server, "alice", "/chat/lobby/", **phone)
    await page.wait_for_selector(message("phone message 30"))
    await send(page, "typed on a phone, with a word too long for it: " + "ب" * 80)
    await page.wait_for_selector("#log li.mine" + ACKED)
    box = await page.locator("#send").bounding_box()
    assert box is not None and 844 - 4 <= box["y"] + box["height"] <= 844
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    assert await page.locator("#sidebar").is_hidden()
    last = await page.locator("#log li.msg").last.bounding_box()
    assert last is not None and last["y"] + last["height"] <= box["y"] + 1
    await screenshot(page, "phone")

    await page.get_by_role("button", name="Conversations").click()
    assert await page.locator("#sidebar").is_visible()
    toggle = page.locator("#sidebar-toggle")
    assert await toggle.get_attribute("aria-expanded") == "true"
    await page.keyboard.press("Escape")
    assert await page.locator("#sidebar").is_hidden()
    assert await page.evaluate("document.activeElement.id") == "sidebar-toggle"
    assert pages.csp_violations == []
