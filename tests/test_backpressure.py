"""Admission control of a web process (pure logic: no servers)."""

from __future__ import annotations

import asyncio
import time

from chat.backpressure import PublishBacklog


async def test_admit_waits_while_the_backlog_is_over_the_limit():
    """Over the limit, a frame waits until a status brings the backlog back down."""
    backlog = PublishBacklog(limit=2, max_wait=10, ttl=60)
    for message_id in ("a", "b", "c"):
        backlog.track(message_id)
    waiting = asyncio.ensure_future(backlog.admit())
    await asyncio.sleep(0)  # let it start waiting
    assert not waiting.done()
    backlog.settle("unknown")  # a status of another process's message changes nothing
    await asyncio.sleep(0)
    assert not waiting.done()
    backlog.settle("a")
    await asyncio.wait_for(waiting, 1)
    assert set(backlog.waiting) == {"b", "c"}


async def test_admit_gives_up_after_max_wait_and_limit_zero_is_off():
    """A frame never waits longer than max_wait; limit 0 never waits."""
    backlog = PublishBacklog(limit=1, max_wait=0.2, ttl=60)
    backlog.track("a")
    backlog.track("b")
    started = time.monotonic()
    await backlog.admit()
    assert 0.2 <= time.monotonic() - started < 2
    off = PublishBacklog(limit=0, max_wait=10, ttl=60)
    for n in range(5):
        off.track(str(n))
    await asyncio.wait_for(off.admit(), 1)


def test_statuses_that_never_come_stop_counting_after_ttl(monkeypatch):
    """Entries older than ttl are dropped when new ones arrive."""
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    backlog = PublishBacklog(limit=10, max_wait=1, ttl=30)
    backlog.track("old")
    clock[0] += 31
    backlog.track("new")
    assert list(backlog.waiting) == ["new"]
