"""The server's half of the heartbeat: a chat socket that sends nothing for
CHAT_IDLE_TIMEOUT seconds is closed with CLOSE_IDLE (docs/protocol.md#heartbeat).

A link that froze (a sleeping laptop, a Wi-Fi change, a NAT or proxy that dropped the
flow without closing it) delivers no frame, and may not deliver a close either: the
socket's owner releases what it holds (presence first) before it closes, so the others
see the person leave at the deadline, not when TCP gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

CLOSE_IDLE = 4408  # no frame for CHAT_IDLE_TIMEOUT seconds: reconnect and resume


class IdleWatchdog:
    """Calls `on_idle` once when `touch()` was not called for `timeout` seconds
    (never with a timeout of 0)."""

    def __init__(self, timeout: float, on_idle: Callable[[], Awaitable[None]]) -> None:
        self.timeout = timeout
        self.on_idle = on_idle
        self.last_frame = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (from now)."""
        self.touch()
        if self.timeout > 0 and self.task is None:
            self.task = asyncio.create_task(self._watch())

    def touch(self) -> None:
        """A frame arrived."""
        self.last_frame = time.monotonic()

    def stop(self) -> None:
        """Stop watching (idempotent; not from within on_idle)."""
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.task = None

    async def _watch(self) -> None:
        while (left := self.last_frame + self.timeout - time.monotonic()) > 0:
            await asyncio.sleep(left)
        self.task = None
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.on_idle()
