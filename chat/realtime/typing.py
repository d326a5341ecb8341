"""Typing notices: ephemeral, never stored, never published.

A `typing` frame becomes one `typing.notice` event for the room's group, at most once
per CHAT_TYPING_INTERVAL seconds per user and room (counted by `limits` in this
process's memory: a notice is a hint, not worth a Redis round trip); the ones in
between are dropped without an answer, so a client that sends one per keystroke costs
only its frame-rate allowance (CHAT_FRAME_RATE).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from django.conf import settings
from limits import RateLimitItemPerSecond
from limits.aio import strategies
from limits.aio.storage import MemoryStorage

from chat.services.broadcast import room_group


class TypingThrottle:
    """One notice per user and room per `interval` seconds."""

    def __init__(self, interval: float) -> None:
        # limits counts whole seconds: round the interval up, never below one
        self.item = RateLimitItemPerSecond(1, max(1, round(interval + 0.49)))
        self.limiter = strategies.MovingWindowRateLimiter(MemoryStorage())

    async def allow(self, *, room_name: str, user_id: int) -> bool:
        """Whether this notice goes out (False: one went out within the interval)."""
        return await self.limiter.hit(self.item, "typing", room_name, str(user_id))


_throttles: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TypingThrottle] = (
    weakref.WeakKeyDictionary()
)


def typing_throttle() -> TypingThrottle:
    """This event loop's throttle (its memory storage's expiry is per loop)."""
    loop = asyncio.get_running_loop()
    throttle = _throttles.get(loop)
    if throttle is None:
        throttle = _throttles[loop] = TypingThrottle(settings.CHAT_TYPING_INTERVAL)
    return throttle


async def typing_announce(
    layer: Any, *, room_name: str, user_id: int, username: str
) -> bool:
    """Tell the room's sockets that the user is typing, unless the throttle drops it;
    whether it was sent."""
    if not await typing_throttle().allow(room_name=room_name, user_id=user_id):
        return False
    await layer.group_send(
        room_group(room_name),
        {
            "type": "typing.notice",
            "room": room_name,
            "user_id": user_id,
            "username": username,
        },
    )
    return True


def typing_frame(event: dict[str, Any]) -> dict[str, Any]:
    """The `typing` frame a socket sends for a `typing.notice` event."""
    return {
        "type": "typing",
        "room": event["room"],
        "user_id": event["user_id"],
        "username": event["username"],
    }
