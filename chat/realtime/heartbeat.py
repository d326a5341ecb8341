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
from collections.abc import Awaitable, Callable, Iterator

logger = logging.getLogger(__name__)

CLOSE_IDLE = 4408  # no frame for CHAT_IDLE_TIMEOUT seconds: reconnect and resume


class IdleWatchdog:
    """Calls `on_idle` once when no frame arrived for `timeout` seconds (never with a
    timeout of 0). A frame still being handled is not silence: a slow database must
    not close the socket of a client that is waiting for it."""

    def __init__(self, timeout: float, on_idle: Callable[[], Awaitable[None]]) -> None:
        self.timeout = timeout
        self.on_idle = on_idle
        self.last_frame = time.monotonic()
        self.in_flight = 0  # frames being handled now
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (from now)."""
        self.touch()
        if self.timeout > 0 and self.task is None:
            self.task = asyncio.create_task(self._watch())

    def touch(self) -> None:
        """A frame arrived."""
        self.last_frame = time.monotonic()

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """A frame arrived and is being handled: the clock restarts when it is done."""
        self.touch()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self.touch()

    def stop(self) -> None:
        """Stop watching (idempotent; not from within on_idle)."""
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.task = None

    async def _watch(self) -> None:
        while (
            left := self.last_frame + self.timeout - time.monotonic()
        ) > 0 or self.in_flight:
            await asyncio.sleep(left if left > 0 else 1.0)
        self.task = None
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.on_idle()
