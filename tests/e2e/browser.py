"""What the browser tests share: Debian's Chromium, logged-in pages that record what
they saw, and small page helpers. The fixtures that use them are in conftest.py."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async

from chat.models import Message, Room
from chat.services.rooms import room_get_or_create

from ..support import ROOT, room_ensure, wait_for

# README's pictures are rewritten with UPDATE_SCREENSHOTS=1 (make screenshots);
# ordinary runs keep theirs under test-artifacts/, so a test run changes no tracked file.
SCREENSHOTS = (
    ROOT / "docs" / "screenshots"
    if os.environ.get("UPDATE_SCREENSHOTS")
    else ROOT / "test-artifacts" / "screenshots"
)
CONNECTED = "#conn-state[data-state=open]"
ACKED = ":is([data-state=sent], [data-state=delivered])"  # stored (maybe published)
DESKTOP = {"width": 1280, "height": 800}


def chromium_path() -> str | None:
    """Debian's Chromium, which the tests drive (no browser download)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Pages:
    """Browser pages of the test, with what they saw: CSP violations and every
    WebSocket frame each page received."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.csp_violations: list[str] = []
        self.frames: dict[str, list[str]] = {}

    async def open(
        self,
        server: str,
        username: str,
        path: str,
        password: str | None = None,
        create_room: bool = True,
        **ctx,
    ) -> Any:
        """Log in through the form and open `path`; return the page once connected.
        A `/chat/<room>/` path's room is created first unless create_room is False."""
        if create_room and path.startswith("/chat/"):
            await database_sync_to_async(room_ensure)(path.split("/")[2])
        context = await self.browser.new_context(**{"viewport": DESKTOP, **ctx})
        page = await context.new_page()
        seen = self.frames.setdefault(username, [])
        page.on(
            "console",
            lambda m: (
                "Content Security Policy" in m.text
                and self.csp_violations.append(m.text)
            ),
        )
        page.on(
            "websocket",
            lambda ws: ws.on("framereceived", lambda f: seen.append(str(f))),
        )
        await page.goto(f"http://{server}/accounts/login/?next={path}")
        await page.fill("#id_username", username)
        await page.fill("#id_password", password or "pw-" + username)
        await page.click("form.stacked button[type=submit]")
        await page.wait_for_url(f"**{path}")
        if path.startswith("/chat/"):
            await page.wait_for_selector(CONNECTED)
        return page


def message(text: str) -> str:
    """Selector of the message whose content is exactly `text` (the text of its links,
    mentions and formatting included: :text-is would not see across them)."""
    pattern = json.dumps(r"^\s*" + re.escape(text) + r"\s*$", ensure_ascii=False)
    return f"#log li.msg:has(.content:text-matches({pattern}))"


async def contents(page: Any) -> list[str]:
    """The messages the page shows, top to bottom."""
    return await page.locator("#log li.msg .content").all_text_contents()


async def send(page: Any, text: str) -> None:
    """Type a message and press Enter."""
    await page.fill("#message", text)
    await page.press("#message", "Enter")


async def screenshot(page: Any, name: str) -> None:
    """Save a picture of the product for README."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def store(room: str, sender_id: int, texts: list[str]) -> list[int]:
    """Messages stored straight in the database, as if sent while nobody watched: no
    broadcast reaches any page (the seqs they take are returned)."""
    room_obj = room_get_or_create(name=room)
    seqs = []
    for content in texts:
        seq = Room.objects.get(pk=room_obj.pk).next_seq
        Room.objects.filter(pk=room_obj.pk).update(next_seq=seq + 1)
        Message.objects.create(
            room=room_obj, seq=seq, sender_id=sender_id, content=content
        )
        seqs.append(seq)
    return seqs


async def wait_until(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    """wait_for on a worker thread (conditions that use the ORM)."""
    return await database_sync_to_async(wait_for)(condition, timeout, 0.1)
