"""Web pages over HTTP, and the room page driven in a real headless Chromium."""

from __future__ import annotations

import os
import shutil

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from chat.models import Message, dm_room_name

from .support import ROOT

pytestmark = pytest.mark.django_db(transaction=True)
ARTIFACTS = ROOT / "test-artifacts"


def test_pages_need_login_and_validate_room_names(chat_users, in_memory_channel_layer):
    """Anonymous users go to the login page; bad room names never reach a room."""
    anonymous = Client()
    assert anonymous.get("/").url.startswith("/accounts/login/")
    assert anonymous.get("/chat/lobby/").status_code == 302
    client = Client()
    # Through the login form: axes needs the request (client.login has none).
    client.post("/accounts/login/", {"username": "alice", "password": "pw-alice"})
    assert client.get("/chat/lobby/").status_code == 200
    assert client.get("/chat/" + "x" * 65 + "/").status_code == 404
    assert client.get("/?room=lobby").url == "/chat/lobby/"
    page = client.get("/?room=no spaces please").content.decode()
    assert "A room name is 1-64 letters" in page
    room = client.get("/chat/lobby/").content.decode()
    assert "bob (direct)" in room and "alice (direct)" not in room


def chromium_path() -> str | None:
    """Debian's Chromium, which the test drives (no browser download)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
async def browser():
    """A headless Chromium (required in CI, skipped elsewhere when absent)."""
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        instance = await p.chromium.launch(
            executable_path=path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        yield instance
        await instance.close()


# Console messages of the pages about the Content-Security-Policy (none expected).
CSP_VIOLATIONS: list[str] = []


async def open_room(browser, server: str, username: str, room: str):
    """Log in through the form and open a room; return the page once connected."""
    page = await (await browser.new_context()).new_page()
    page.on(
        "console",
        lambda message: (
            "Content Security Policy" in message.text
            and CSP_VIOLATIONS.append(message.text)
        ),
    )
    login = await page.goto(f"http://{server}/accounts/login/?next=/chat/{room}/")
    assert "script-src 'self'" in await login.header_value("content-security-policy")
    await page.fill("#id_username", username)
    await page.fill("#id_password", "pw-" + username)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"**/chat/{room}/")
    await page.wait_for_selector("#conn-state:has-text('connected')")
    return page


async def test_room_page_chats_in_a_real_browser(
    asgi_server, start_worker, chat_users, browser
):
    """Two browsers: a room message and a DM arrive, statuses show, errors are shown."""
    await database_sync_to_async(start_worker)()
    alice = await open_room(browser, asgi_server, "alice", "lobby")
    bob = await open_room(browser, asgi_server, "bob", "lobby")
    carol = await open_room(browser, asgi_server, "carol", "lobby")

    await alice.fill("#message", "hello bob, from a browser")
    await alice.press("#message", "Enter")
    await bob.wait_for_selector("#log li:has-text('hello bob, from a browser')")
    await alice.wait_for_selector(
        "#log li:has-text('hello bob') .status:has-text('published')"
    )

    # A DM goes to the pair's own conversation, which has its own page.
    conversation = dm_room_name(chat_users["alice"].id, chat_users["bob"].id)
    bob_dm = await open_room(browser, asgi_server, "bob", conversation)
    await alice.select_option("#receiver", label="bob (direct)")
    await alice.fill("#message", "a secret for bob")
    await alice.click("#send button")
    await bob_dm.wait_for_selector("#log li:has-text('a secret for bob')")

    await alice.fill("#message", "   ")
    await alice.click("#send button")
    await alice.wait_for_selector("#error:has-text('empty: The message is empty')")

    await carol.wait_for_selector("#log li:has-text('hello bob, from a browser')")
    assert CSP_VIOLATIONS == []  # the pages run under the CSP unharmed
    assert await carol.locator("#log li:has-text('a secret for bob')").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    await alice.screenshot(path=str(ARTIFACTS / "room-alice.png"))
    await bob.screenshot(path=str(ARTIFACTS / "room-bob.png"))

    assert await bob.locator("#log li:has-text('a secret for bob')").count() == 0
    # History after a reload shows each message in its own conversation.
    await bob_dm.reload()
    await bob_dm.wait_for_selector("#log li:has-text('a secret for bob')")
    await bob.reload()
    await bob.wait_for_selector("#log li:has-text('hello bob, from a browser')")
    assert await bob.locator("#log li").count() == 1
    count = await database_sync_to_async(
        Message.objects.filter(status="published").count
    )()
    assert count == 2
