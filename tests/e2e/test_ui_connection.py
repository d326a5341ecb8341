"""A connection that tells the truth, and who is typing, in a real headless Chromium:
a link that freezes behind a proxy (bytes held, nothing closed) is noticed by the
page's heartbeat, shown as reconnecting, and resumed on a fresh path with the queued
message delivered once; the header says who is typing until their message comes."""

from __future__ import annotations

import datetime
import json
import time

import pytest
from channels.db import database_sync_to_async
from playwright.async_api import expect

from chat.models import Message
from chatproj.embedded import free_port

from ..faults import FaultProxy
from .browser import ACKED, CONNECTED, contents, message, send, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BEAT, DEAD_AFTER = 1.0, 2.0  # the page's heartbeat in these tests


async def test_a_frozen_link_is_noticed_shown_as_reconnecting_and_resumed(
    start_web, chat_users, pages
):
    """alice's link freezes (the proxy holds every byte, closes nothing): her page
    leaves "connected" within heartbeat interval + timeout, says reconnecting, comes
    back on a fresh connection, and the message she sent into the frozen link is
    delivered to bob exactly once."""
    base = await database_sync_to_async(start_web)(
        CHAT_HEARTBEAT_INTERVAL=str(BEAT),
        CHAT_HEARTBEAT_TIMEOUT=str(DEAD_AFTER),
        CHAT_IDLE_TIMEOUT="4",
    )
    server = base.removeprefix("http://")
    proxy = FaultProxy(free_port(), int(server.rsplit(":", 1)[1])).start()
    try:
        alice = await pages.open(
            f"127.0.0.1:{proxy.listen_port}", "alice", "/chat/lobby/"
        )
        bob = await pages.open(server, "bob", "/chat/lobby/")
        await bob.wait_for_selector("#presence:has-text('alice')")
        await send(alice, "before the freeze")
        await bob.wait_for_selector(message("before the freeze"))

        proxy.freeze()
        frozen = time.monotonic()
        await send(alice, "sent into a frozen link")
        text = message("sent into a frozen link")
        await alice.wait_for_selector(text + "[data-state=sending]")
        # the page gives the link up by itself (the browser still says OPEN)
        await alice.wait_for_selector(
            "#conn-state:not([data-state=open])",
            timeout=(BEAT + DEAD_AFTER + 3) * 1000,
        )
        noticed = time.monotonic() - frozen
        assert noticed <= BEAT + DEAD_AFTER + 3, noticed  # a second of ticks, and slack
        assert "reconnecting" in await alice.locator("#conn-state").text_content()

        # new connections flow (a fresh path): it resumes and resends the message
        await alice.wait_for_selector(CONNECTED, timeout=15_000)
        await alice.wait_for_selector(text + ACKED)
        await bob.wait_for_selector(text)
        assert (await contents(bob)).count("sent into a frozen link") == 1
        stored = await database_sync_to_async(
            Message.objects.filter(content="sent into a frozen link").count
        )()
        assert stored == 1
    finally:
        proxy.stop()


async def test_the_header_says_who_is_typing_until_their_message_arrives(
    start_web, chat_users, pages
):
    """bob's header shows "alice is typing…" while she types, not hers; it goes
    away by itself after twice CHAT_TYPING_INTERVAL, and at once when her message
    arrives."""
    base = await database_sync_to_async(start_web)(CHAT_TYPING_INTERVAL="2")
    server = base.removeprefix("http://")
    alice = await pages.open(server, "alice", "/chat/lobby/")
    bob = await pages.open(server, "bob", "/chat/lobby/")
    await bob.wait_for_selector("#presence:has-text('alice')")
    typing = bob.locator("#typing")
    await expect(typing).to_be_hidden()

    await alice.fill("#message", "hel")
    await expect(typing).to_have_text("alice is typing…")
    await expect(typing).to_be_visible()
    await expect(alice.locator("#typing")).to_have_text("")
    # no more keystrokes: the notice ends by itself (shown for 2 × 2 s)
    await expect(typing).to_have_text("", timeout=8000)

    await alice.fill("#message", "hello bob")
    await expect(typing).to_have_text("alice is typing…")
    await alice.press("#message", "Enter")
    await bob.wait_for_selector(message("hello bob"))
    await expect(typing).to_have_text("", timeout=1500)  # long before it would expire
    assert any('"typing"' in frame for frame in pages.frames["bob"])
    assert not any('"typing"' in frame for frame in pages.frames["alice"])


async def test_a_page_whose_timers_stand_still_answers_the_server_and_stays(
    start_web, chat_users, pages
):
    """A background tab's timers may run once a minute: with the page's clock paused
    (no heartbeat of its own), it still answers the server's pings from the message
    event, so it is not closed after CHAT_IDLE_TIMEOUT and bob keeps seeing it."""
    idle = 3.0
    base = await database_sync_to_async(start_web)(
        CHAT_HEARTBEAT_INTERVAL="1", CHAT_IDLE_TIMEOUT=str(idle)
    )
    server = base.removeprefix("http://")
    bob = await pages.open(server, "bob", "/chat/lobby/")
    alice = await pages.open(server, "alice", "/chat/lobby/")
    await alice.clock.install()
    await alice.reload()  # room.js's timers now run on the installed clock
    await alice.wait_for_selector(CONNECTED)
    await alice.clock.pause_at(datetime.datetime.now() + datetime.timedelta(hours=1))
    await bob.wait_for_selector("#presence:has-text('alice')")
    seen_by_bob = len(pages.frames["bob"])
    seen_by_alice = len(pages.frames["alice"])

    def server_pings() -> int:
        return sum('"ping"' in f for f in pages.frames["alice"][seen_by_alice:])

    asked_from = time.monotonic()
    await wait_until(lambda: server_pings() >= 4, timeout=idle * 4)
    assert time.monotonic() - asked_from >= idle  # longer than the idle timeout
    assert await alice.locator(CONNECTED).count() == 1
    later = [json.loads(f) for f in pages.frames["bob"][seen_by_bob:]]
    left = [
        f
        for f in later
        if f.get("type") == "presence"
        and "alice" not in {u["username"] for u in f["online"]}
    ]
    assert not left, left
