"""A connection delivers what it owes before it takes the next client frame."""

from __future__ import annotations

import asyncio
import contextlib

from chat.dispatch import await_outbound_first


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
