"""Admission control of a web process: past saturation, slow down instead of drop.

A web process counts the messages it acked whose delivery status has not come back
yet. While more than CHAT_BACKLOG_LIMIT wait, its consumers take no new frame (up to
CHAT_BACKLOG_MAX_WAIT seconds each): clients see longer acks, TCP pushes back on them,
and the workers get the CPU to catch up, so the published rate holds at saturation
instead of collapsing. A status that never comes (its sender left, another process
got it) stops counting after CHAT_BACKLOG_TTL seconds.
"""

from __future__ import annotations

import asyncio
import time

from django.conf import settings

from . import metrics


class PublishBacklog:
    """Messages acked by this process and not yet published (or failed/dead)."""

    def __init__(self, *, limit: int, max_wait: float, ttl: float) -> None:
        self.limit = limit
        self.max_wait = max_wait
        self.ttl = ttl
        self.waiting: dict[str, float] = {}  # message_id -> acked at (monotonic)
        self._room = asyncio.Event()

    def track(self, message_id: str) -> None:
        """A message was acked: it counts until its status arrives."""
        now = time.monotonic()
        self.waiting[message_id] = now
        for old, acked_at in list(self.waiting.items()):  # oldest first
            if now - acked_at < self.ttl:
                break
            del self.waiting[old]
        metrics.PUBLISH_BACKLOG.set(len(self.waiting))

    def settle(self, message_id: str) -> None:
        """Its delivery status arrived."""
        if self.waiting.pop(message_id, None) is not None:
            metrics.PUBLISH_BACKLOG.set(len(self.waiting))
        if len(self.waiting) <= self.limit:
            self._room.set()

    async def admit(self) -> None:
        """Return when the backlog is under the limit, or after max_wait seconds."""
        if not self.limit or len(self.waiting) <= self.limit:
            return
        metrics.BACKPRESSURE_WAITS.inc()
        deadline = time.monotonic() + self.max_wait
        while len(self.waiting) > self.limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), remaining)
            except TimeoutError:
                return


_backlog: PublishBacklog | None = None


def publish_backlog() -> PublishBacklog:
    """This process's backlog, configured from settings on first use."""
    global _backlog
    if _backlog is None:
        _backlog = PublishBacklog(
            limit=settings.CHAT_BACKLOG_LIMIT,
            max_wait=settings.CHAT_BACKLOG_MAX_WAIT,
            ttl=settings.CHAT_BACKLOG_TTL,
        )
    return _backlog
