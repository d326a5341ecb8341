"""The one place that copies Channels internals (channels 4.x, AsyncConsumer):
`run_outbound_first` is its `__call__` with another receive loop, and
`dispatch_without_connection_check` is its `dispatch` without the database
connection check before every handler. CHANNELS_SOURCES pins the sha256 of the
installed Channels' source of those two methods: a test fails when an upgrade
changes them, so the copies are reviewed.

Outgoing events before new client frames: how a saturated web process slows down
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
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import AsyncConsumer, get_handler_name
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured

# sha256 of inspect.getsource(AsyncConsumer.<method>) of the Channels these copy.
CHANNELS_SOURCES = {
    "__call__": "e52238720872dbc3f854519bc971aa7eb41553e63c8729081549ce42465ee419",
    "dispatch": "39f34e7d4fb0f6552de4ade665b943fe78137379702af6b58c79a14c49a75520",
}

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


async def run_outbound_first(
    consumer: AsyncConsumer, scope: Any, receive: Receive, send: Any
) -> None:
    """AsyncConsumer.__call__ for an async consumer with a channel layer, whose loop
    delivers what the connection owes before it takes the next frame."""
    consumer.scope = scope
    consumer.channel_layer = get_channel_layer(consumer.channel_layer_alias)
    if consumer.channel_layer is None:
        raise ImproperlyConfigured(f"{type(consumer).__name__} needs a channel layer.")
    consumer.channel_name = await consumer.channel_layer.new_channel()
    consumer.channel_receive = functools.partial(
        consumer.channel_layer.receive, consumer.channel_name
    )
    consumer.base_send = send
    with contextlib.suppress(StopConsumer):
        await await_outbound_first(receive, consumer.channel_receive, consumer.dispatch)


async def dispatch_without_connection_check(
    consumer: AsyncConsumer, message: dict[str, Any]
) -> None:
    """AsyncConsumer.dispatch without `aclose_old_connections` before every handler
    (a hop to the process's one shared ORM thread per frame and event): the
    consumer's ORM calls check their own connections (chat.infra.db)."""
    handler = getattr(consumer, get_handler_name(message), None)
    if handler is None:
        raise ValueError(f"No handler for message type {message['type']}")
    await handler(message)
