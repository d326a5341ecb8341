"""Pure logic of the heartbeat and typing notices (no servers): the frames, the idle
watchdog, the typing throttle, and the settings that refuse timings that cannot
work."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from chat.realtime.frames import PingFrame, TypingFrame, parse_frame
from chat.realtime.heartbeat import IdleWatchdog
from chat.realtime.typing import TypingThrottle
from chat.schemas import ChatValidationError

from ..support import ROOT


def test_ping_and_typing_frames_parse_and_ignore_unknown_fields():
    """`ping` and `typing` are frame types of the union; extra fields are ignored."""
    assert parse_frame('{"type": "ping", "at": 5}', max_length=10) == PingFrame(
        type="ping"
    )
    assert parse_frame('{"type": "typing", "message": 3}', max_length=10) == (
        TypingFrame(type="typing")
    )
    with pytest.raises(ChatValidationError) as exc:
        parse_frame('{"type": "typed"}', max_length=10)
    assert exc.value.code == "invalid_message"
    assert "ping, pong, typing" in exc.value.detail


async def test_the_watchdog_fires_once_after_silence_and_not_while_touched():
    """on_idle runs once `timeout` after the last touch; touches put it off; a
    timeout of 0 never starts it."""
    fired: list[float] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def on_idle() -> None:
        fired.append(loop.time())
        done.set()

    watchdog = IdleWatchdog(0.3, on_idle)
    started = loop.time()
    watchdog.start()
    for _ in range(4):  # 0.4 s of touches every 0.1 s: longer than the timeout
        await asyncio.sleep(0.1)
        watchdog.touch()
    last_touch = loop.time()
    await asyncio.wait_for(done.wait(), 5)
    assert fired[0] - last_touch >= 0.29
    assert fired[0] - started >= 0.69
    assert watchdog.task is None
    watchdog.stop()  # idempotent after firing

    never = IdleWatchdog(0, on_idle)
    never.start()
    assert never.task is None

    stopped = IdleWatchdog(0.05, on_idle)
    stopped.start()
    task = stopped.task
    assert task is not None
    stopped.stop()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and len(fired) == 1


async def test_the_typing_throttle_lets_one_notice_through_per_user_and_room():
    """The first notice of a user in a room goes; the next within the interval is
    dropped; other users and rooms have their own allowance."""
    throttle = TypingThrottle(3)
    assert await throttle.allow(room_name="lobby", user_id=1)
    assert not await throttle.allow(room_name="lobby", user_id=1)
    assert await throttle.allow(room_name="lobby", user_id=2)
    assert await throttle.allow(room_name="random", user_id=1)
    assert TypingThrottle(0.2).item.get_expiry() == 1  # limits counts whole seconds


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"CHAT_IDLE_TIMEOUT": "10"}, "at least three heartbeats"),
        ({"CHAT_IDLE_TIMEOUT": "-1"}, "CHAT_IDLE_TIMEOUT"),
        ({"CHAT_HEARTBEAT_INTERVAL": "0"}, "must be positive"),
        ({"CHAT_TYPING_INTERVAL": "-2"}, "must be positive"),
    ],
)
def test_timings_that_cannot_work_fail_at_start_up(env, complaint):
    """An idle timeout shorter than three heartbeats (healthy pages would be closed)
    or a timing that is not positive stops the process at start-up."""
    result = subprocess.run(
        [sys.executable, "-c", "import chatproj.settings"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and complaint in result.stderr


async def test_a_frame_being_handled_is_not_silence():
    """While a frame is handled (a slow database) the watchdog waits, however long;
    the clock restarts when the handling ends."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    fired: list[float] = []

    async def on_idle() -> None:
        fired.append(loop.time())
        done.set()

    watchdog = IdleWatchdog(0.2, on_idle)
    watchdog.start()
    with watchdog.handling():
        await asyncio.sleep(0.6)  # a slow frame: three timeouts long
        assert not fired
    handled = loop.time()
    await asyncio.wait_for(done.wait(), 5)
    assert fired[0] - handled >= 0.19


async def test_the_watchdog_asks_once_per_silence_after_a_third_of_the_timeout():
    """on_quiet runs after timeout / 3 of silence, once per silence: a frame that
    answers it starts a new one; an unanswered one is followed by on_idle."""
    loop = asyncio.get_running_loop()
    asked: list[float] = []
    idle = asyncio.Event()
    answer = True
    watchdog: IdleWatchdog

    async def on_quiet() -> None:
        asked.append(loop.time())
        if answer:
            watchdog.touch()

    async def on_idle() -> None:
        idle.set()

    watchdog = IdleWatchdog(0.6, on_idle, on_quiet)
    started = loop.time()
    watchdog.start()
    while len(asked) < 3:  # answered: asked again after each new silence
        await asyncio.sleep(0.05)
        assert loop.time() - started < 5
    assert not idle.is_set()
    assert asked[0] - started >= 0.19
    answer = False
    await asyncio.wait_for(idle.wait(), 5)
    assert len(asked) == 4  # the unanswered one, then the close
