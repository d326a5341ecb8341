"""Live delivery through the channel layer: group names and outgoing events."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from chat.infra.clients import layer_loop
from chat.models import DM_ROOM_PREFIX
from chat.schemas import message_payload, notification_payload
from chat.services import presence

if TYPE_CHECKING:
    from chat.models import Message
    from chat.services.notifications import NotificationOutcome

logger = logging.getLogger(__name__)


def room_group(room_name: str) -> str:
    """Group of everyone connected to a room."""
    return f"chat.room.{room_name}"


def user_group(user_id: int) -> str:
    """Personal group of one user's connections."""
    return f"chat.user.{user_id}"


def notify_user_group(user_id: int) -> str:
    """Group of one user's /ws/notifications/ connections."""
    return f"notify.user.{user_id}"


def notify_room_group(room_name: str) -> str:
    """Group of the /ws/notifications/ connections of a room's members (they count
    its unread messages from its activity)."""
    return f"notify.room.{room_name}"


# The ASGI server's event loop, while a consumer's sync call runs in a thread
# (frame_context sets it around the message insert): group sends are handed to the
# loop instead of awaited through async_to_sync, which parks the thread for a round
# trip through the loop.
server_loop: ContextVar[asyncio.AbstractEventLoop | None] = ContextVar(
    "chat_server_loop", default=None
)


def _group_send(group: str, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    loop = server_loop.get()
    if loop is not None and not loop.is_closed():
        asyncio.run_coroutine_threadsafe(_group_send_logged(layer, group, event), loop)
        return
    async_to_sync(layer.group_send)(group, event)


async def _group_send_logged(layer: Any, group: str, event: dict[str, Any]) -> None:
    try:
        await layer.group_send(group, event)
    except Exception as exc:  # as a failed on-commit broadcast: the history has it
        logger.warning("Live event for %s not sent: %s", group, exc)


def broadcast_message(message: Message) -> None:
    """Deliver a message to its audience: the room's open sockets (a DM conversation's
    are its two users'), or for a DM sent inside a room before DMs had their own
    conversations, the sender's and receiver's sockets."""
    event = {"type": "chat.message", "message": message_payload(message)}
    if message.receiver_id is None or message.room.name.startswith(DM_ROOM_PREFIX):
        _group_send(room_group(message.room.name), event)
    else:
        for user_id in {message.sender_id, message.receiver_id}:
            _group_send(user_group(user_id), event)


def send_events(
    events: Iterable[tuple[str, dict[str, Any]]], *, wait: float | None = None
) -> None:
    """Send (group, event) pairs from sync code on the process's one channel-layer
    connection, in order within a group, the groups side by side: without waiting
    for Redis, or with `wait`, until Redis took them (at most `wait` seconds), so
    that they leave before a short process (`manage.py`) exits. At most once: if Redis
    does not take them, the history and the next connect carry the same facts."""
    by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for group, event in events:
        by_group[group].append(event)
    layer = get_channel_layer()
    if layer is None or not by_group:
        return

    async def send_group(group: str, group_events: list[dict[str, Any]]) -> None:
        for sent, event in enumerate(group_events):
            try:
                await layer.group_send(group, event)
            except Exception as exc:  # a lost live frame must not fail the caller
                logger.warning(
                    "%d live event(s) for %s not sent: %s",
                    len(group_events) - sent,
                    group,
                    exc,
                )
                return

    async def send_all() -> None:
        await asyncio.gather(*(send_group(g, e) for g, e in by_group.items()))

    count = sum(len(e) for e in by_group.values())
    if wait is None:
        layer_loop().start(send_all(), f"{count} live event(s)")
    else:
        layer_loop().run(send_all(), f"{count} live event(s)", wait)


def send_statuses(messages: Iterable[Message]) -> None:
    """Tell each sender the delivery status of their messages: one event per sender."""
    by_sender: dict[int, list[dict[str, str]]] = defaultdict(list)
    for message in messages:
        status = {"message_id": str(message.message_id), "status": message.status}
        if message.status == "dead":  # why it can never be published
            status["reason"] = message.last_error
        by_sender[message.sender_id].append(status)
    send_events(
        (user_group(sender_id), {"type": "message.statuses", "statuses": statuses})
        for sender_id, statuses in by_sender.items()
    )


def push_notifications(outcome: NotificationOutcome[Any]) -> None:
    """Live side of recorded chat events: each room's activity to its members'
    notification connections (they keep their unread counts from it), and each new
    notification to its user, unless the user has that room open (then the message
    reached them live and only the count changes)."""
    events: list[tuple[str, dict[str, Any]]] = [
        (
            notify_room_group(event.room),
            {
                "type": "room.activity",
                "room": event.room,
                "seq": event.seq,
                "sender_id": event.sender_id,
                "receiver_id": event.receiver_id,
            },
        )
        for event in outcome.accepted
    ]
    online: dict[str, set[int]] = {}
    for notification, event, sender in outcome.created:
        if event.room not in online:
            try:
                online[event.room] = presence.online_users(room_name=event.room)
            except Exception as exc:  # without presence, notify (a popup too many)
                logger.warning("Presence of %s unknown: %s", event.room, exc)
                online[event.room] = set()
        if notification.user_id in online[event.room]:
            continue
        payload = notification_payload(
            kind=notification.kind,
            message_id=event.message_id,
            room=event.room,
            seq=event.seq,
            sender_id=event.sender_id,
            sender=sender,
            content=event.content,
            created_at=event.created_at,
        )
        events.append(
            (
                notify_user_group(notification.user_id),
                {"type": "notification.new", "notification": payload},
            )
        )
    send_events(events)
