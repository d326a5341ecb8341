"""The server's half of the heartbeat (docs/protocol.md#heartbeat): a chat socket
that sent nothing for a third of CHAT_IDLE_TIMEOUT is asked for a sign of life (a
`ping` frame, which pages answer at once, even in a background tab whose timers the
browser throttles), and one that sent nothing for CHAT_IDLE_TIMEOUT is closed with
CLOSE_IDLE.

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
from contextlib import AbstractContextManager

from django.conf import settings

from chat.realtime.frames import PingFrame, PongFrame
from chat.realtime.socket_guard import GuardedConsumer

logger = logging.getLogger(__name__)

CLOSE_IDLE = 4408  # no frame for CHAT_IDLE_TIMEOUT seconds: reconnect and resume
PROBE_SEND_TIMEOUT = 5.0  # a probe into a link whose buffers are full is given up


class IdleWatchdog:
    """Calls `on_quiet` once per silence of `timeout` / 3 seconds, and `on_idle` once
    when no frame arrived for `timeout` seconds (never with a timeout of 0). A frame
    still being handled is not silence: a slow database must not close the socket
    of a client that is waiting for it."""

    def __init__(
        self,
        timeout: float,
        on_idle: Callable[[], Awaitable[None]],
        on_quiet: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.timeout = timeout
        self.on_idle = on_idle
        self.on_quiet = on_quiet
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
        quiet_after = self.timeout / 3
        probed: float | None = None  # the last_frame a probe was sent after
        while True:
            silent = time.monotonic() - self.last_frame
            if self.in_flight:
                wait = 1.0
            elif silent >= self.timeout:
                break
            elif silent < quiet_after:
                wait = quiet_after - silent
            elif probed != self.last_frame and self.on_quiet is not None:
                probed = self.last_frame
                await self._probe(self.on_quiet)
                continue
            else:
                wait = self.timeout - silent
            await asyncio.sleep(wait)
        self.task = None
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.on_idle()

    @staticmethod
    async def _probe(on_quiet: Callable[[], Awaitable[None]]) -> None:
        try:
            await asyncio.wait_for(on_quiet(), PROBE_SEND_TIMEOUT)
        except Exception as exc:  # the deadline still holds
            logger.debug("Heartbeat probe not sent: %r", exc)


class HeartbeatConsumer(GuardedConsumer):
    """A socket with the server's half of the heartbeat: `ping` answered with `pong`,
    a quiet client asked, a silent one closed (CHAT_IDLE_TIMEOUT)."""

    watchdog: IdleWatchdog | None = None

    def start_heartbeat(self) -> None:
        """Watch the client's silence from now (once the socket is accepted)."""
        self.watchdog = IdleWatchdog(
            settings.CHAT_IDLE_TIMEOUT, self._close_idle, self._ask_for_life
        )
        self.watchdog.start()

    def frame_arrived(self) -> None:
        """Any frame, even one refused, is a sign of life."""
        if self.watchdog is not None:
            self.watchdog.touch()

    def heartbeat_busy(self) -> AbstractContextManager[None]:
        """Around a frame's handling: however long it takes, it is not silence."""
        if self.watchdog is None:
            return contextlib.nullcontext()
        return self.watchdog.handling()

    async def on_ping(self, frame: PingFrame) -> None:
        """The client's heartbeat: answer at once (its deadline runs)."""
        await self.send_json({"type": "pong"})

    async def on_pong(self, frame: PongFrame) -> None:
        """The answer to the server's `ping`: a sign of life, nothing to do."""

    async def _ask_for_life(self) -> None:
        await self.send_json({"type": "ping"})

    async def _close_idle(self) -> None:
        """No frame for CHAT_IDLE_TIMEOUT seconds: the link is gone or frozen. What
        the socket holds (presence) is released now, as a frozen link may not deliver
        the close, then it is closed with 4408."""
        logger.info(
            "Closing a socket of %s: no frame for %g s",
            self._who(),
            settings.CHAT_IDLE_TIMEOUT,
        )
        await self.release_resources()
        await self.close_with(CLOSE_IDLE)

    async def release_resources(self) -> None:
        """Stop watching (subclasses release theirs after calling this)."""
        if self.watchdog is not None:
            self.watchdog.stop()
