"""Live delivery through the channel layer: group names and outgoing events."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from .schemas import message_payload

if TYPE_CHECKING:
    from .models import Message

logger = logging.getLogger(__name__)


def room_group(room_name: str) -> str:
    """Group of everyone connected to a room."""
    return f"chat.room.{room_name}"


def user_group(user_id: int) -> str:
    """Personal group of one user's connections."""
    return f"chat.user.{user_id}"


def _group_send(group: str, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    async_to_sync(layer.group_send)(group, event)


def broadcast_message(message: Message) -> None:
    """Deliver a message to its audience: the room, or sender and receiver."""
    event = {"type": "chat.message", "message": message_payload(message)}
    if message.receiver_id is None:
        _group_send(room_group(message.room.name), event)
    else:
        for user_id in {message.sender_id, message.receiver_id}:
            _group_send(user_group(user_id), event)


class _LayerLoop:
    """An event loop in a daemon thread, so sync code (a Celery worker) keeps one
    channel-layer connection for the process instead of a new loop and connection
    per call (what async_to_sync does outside an ASGI server)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        threading.Thread(
            target=self.loop.run_forever, name="channel-layer", daemon=True
        ).start()

    def run(self, coroutine: Coroutine[Any, Any, None], timeout: float) -> None:
        """Run a coroutine on the loop and wait for it, at most `timeout` seconds."""
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


_layer_loop: _LayerLoop | None = None
_layer_loop_lock = threading.Lock()


def _process_layer_loop() -> _LayerLoop:
    global _layer_loop
    with _layer_loop_lock:
        if _layer_loop is None or _layer_loop.pid != os.getpid():
            _layer_loop = _LayerLoop()  # a forked child starts its own
        return _layer_loop


STATUS_SEND_TIMEOUT = 5.0


def send_statuses(messages: Iterable[Message]) -> None:
    """Tell each sender the delivery status of their messages: one event per sender.

    At most once: if Redis does not take them, the statuses are in the history.
    """
    by_sender: dict[int, list[dict[str, str]]] = defaultdict(list)
    for message in messages:
        by_sender[message.sender_id].append(
            {"message_id": str(message.message_id), "status": message.status}
        )
    layer = get_channel_layer()
    if layer is None or not by_sender:
        return

    async def send_all() -> None:
        for sender_id, statuses in by_sender.items():
            await layer.group_send(
                user_group(sender_id),
                {"type": "message.statuses", "statuses": statuses},
            )

    try:
        _process_layer_loop().run(send_all(), STATUS_SEND_TIMEOUT)
    except Exception as exc:  # a lost status frame must not fail the publication
        logger.warning("Status frames not sent: %s", exc)
