"""Outgoing events before new client frames: how a saturated web process slows down
instead of falling behind on what it owes its clients.

Channels' own loop (`channels.utils.await_many_dispatch`) takes a client frame and a
channel-layer event in turn. Each chat message a client sends makes several events
(the room's broadcasts, the ack, the status), so past saturation the events a
connection owes pile up without bound while its frames keep being taken: senders see
acks but their statuses and their rooms' messages come seconds late. Here a
connection handles every event that is ready before its next frame, so a busy process
takes new frames only as fast as it delivers, and TCP pushes back on the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]


async def await_outbound_first(
    receive: Receive,
    channel_receive: Receive,
    dispatch: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Dispatch channel-layer events, all that are ready, before each client frame."""
    outbound = asyncio.ensure_future(channel_receive())
    inbound = asyncio.ensure_future(receive())
    try:
        while True:
            await asyncio.wait([outbound, inbound], return_when=asyncio.FIRST_COMPLETED)
            if outbound.done():
                await dispatch(outbound.result())
                outbound = asyncio.ensure_future(channel_receive())
                await asyncio.sleep(0)  # lets it take an event that is already queued
                if outbound.done():
                    continue  # more owed: deliver it before the next frame
            if inbound.done():
                await dispatch(inbound.result())
                inbound = asyncio.ensure_future(receive())
    finally:
        for task in (outbound, inbound):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
