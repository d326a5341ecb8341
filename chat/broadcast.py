"""Live delivery through the channel layer: group names and outgoing events."""

from __future__ import annotations

import logging
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


def send_status(message: Message) -> None:
    """Tell the sender the message's delivery status (published, failed, ...)."""
    _group_send(
        user_group(message.sender_id),
        {
            "type": "message.status",
            "message_id": str(message.message_id),
            "status": message.status,
        },
    )
    logger.debug("status %s sent for message_id=%s", message.status, message.message_id)
