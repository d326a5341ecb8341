"""A connection delivers what it owes before it takes the next client frame."""

from __future__ import annotations

import asyncio
import contextlib

from chat.realtime.channels_hooks import await_outbound_first

from ..support import wait_for


async def test_ready_events_go_out_before_the_next_frame():
    """With frames and events both waiting, every ready event is dispatched first."""
    frames: asyncio.Queue[dict] = asyncio.Queue()
    events: asyncio.Queue[dict] = asyncio.Queue()
    for n in range(3):
        frames.put_nowait({"type": "frame", "n": n})
    for n in range(5):
        events.put_nowait({"type": "event", "n": n})
    handled: list[tuple[str, int]] = []
    done = asyncio.Event()

    async def dispatch(message: dict) -> None:
        handled.append((message["type"], message["n"]))
        if message["type"] == "frame":
            # each frame makes two more events, as a chat message makes broadcasts
            events.put_nowait({"type": "event", "n": 100 + message["n"]})
            events.put_nowait({"type": "event", "n": 200 + message["n"]})
        if len(handled) == 3 + 5 + 6:
            done.set()

    loop = asyncio.ensure_future(await_outbound_first(frames.get, events.get, dispatch))
    await asyncio.wait_for(done.wait(), 5)
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop
    kinds = [kind for kind, _ in handled]
    # a frame may come first (both ready at once), but never two frames in a row
    # while events wait, and every frame's events precede the next frame
    first_frame = kinds.index("frame")
    assert kinds[first_frame + 1 : first_frame + 3] != ["frame", "frame"]
    for position, (kind, n) in enumerate(handled):
        if kind == "frame" and n > 0:
            earlier = handled[:position]
            assert ("event", 100 + n - 1) in earlier and (
                "event",
                200 + n - 1,
            ) in earlier
    assert [n for kind, n in handled if kind == "event"][:5] == [0, 1, 2, 3, 4]


async def test_a_consumer_threads_group_sends_go_to_its_loop(
    in_memory_channel_layer, caplog, monkeypatch
):
    """From the thread of a consumer's sync call, a group send is handed to the
    server's loop (the thread is not parked for it); one that fails is logged."""
    from channels.layers import get_channel_layer

    from chat.services import broadcast

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    loop = asyncio.get_running_loop()
    threads: list[bool] = []

    def in_thread() -> None:
        token = broadcast.server_loop.set(loop)
        try:
            broadcast._group_send("g", {"type": "x.y", "n": 1})
            threads.append(True)
        finally:
            broadcast.server_loop.reset(token)

    await asyncio.to_thread(in_thread)
    assert threads and (await asyncio.wait_for(layer.receive(channel), 5))["n"] == 1

    async def refuse(group: str, event: dict) -> None:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(layer, "group_send", refuse)
    await asyncio.to_thread(in_thread)
    for _ in range(100):  # the handed-over send runs on this loop
        if "Live event for g not sent" in caplog.text:
            break
        await asyncio.sleep(0.01)
    assert "redis is down" in caplog.text


def test_sync_code_sends_live_events_without_waiting_in_order_per_group(
    in_memory_channel_layer, monkeypatch, caplog
):
    """broadcast.send_events (a worker's statuses) returns before the channel layer
    took its events; groups go side by side, each group's events in order; a send
    that fails is logged, not raised."""
    import threading

    from channels.layers import get_channel_layer

    from chat.services import broadcast

    layer = get_channel_layer()
    gate = threading.Event()
    sent: list[tuple[str, int]] = []

    async def group_send(group: str, event: dict) -> None:
        if group == "slow":
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)
        if group == "broken":
            raise ConnectionError("redis is down")
        sent.append((group, event["n"]))

    monkeypatch.setattr(layer, "group_send", group_send)

    broadcast.send_events(
        (group, {"type": "x.y", "n": n})
        for group, n in [
            ("slow", 1),
            ("fast", 1),
            ("slow", 2),
            ("fast", 2),
            ("broken", 1),
        ]
    )
    # returned while "slow" is held; "fast" went on without it
    wait_for(lambda: ("fast", 2) in sent)
    assert [s for s in sent if s[0] == "fast"] == [("fast", 1), ("fast", 2)]
    assert not any(group == "slow" for group, _ in sent)
    gate.set()
    wait_for(lambda: ("slow", 2) in sent)
    assert [s for s in sent if s[0] == "slow"] == [("slow", 1), ("slow", 2)]
    wait_for(
        lambda: "1 live event(s) for broken not sent: redis is down" in caplog.text
    )


def test_the_copied_channels_methods_are_those_of_the_installed_channels():
    """chat.realtime.channels_hooks copies AsyncConsumer.__call__ and .dispatch: when
    an upgrade of Channels changes either, this fails until the copies are reviewed
    and CHANNELS_SOURCES is updated."""
    import hashlib
    import inspect

    from channels.consumer import AsyncConsumer

    from chat.realtime.channels_hooks import CHANNELS_SOURCES

    installed = {
        name: hashlib.sha256(
            inspect.getsource(getattr(AsyncConsumer, name)).encode()
        ).hexdigest()
        for name in CHANNELS_SOURCES
    }
    assert installed == CHANNELS_SOURCES


def test_the_repository_copies_channels_internals_in_one_module():
    """No other module of chat/ reimplements Channels' consumer loop or dispatch."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "chat"
    copies = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "channel_layer.receive" in path.read_text()
        or "get_handler_name" in path.read_text()
    ]
    assert copies == ["realtime/channels_hooks.py"]
