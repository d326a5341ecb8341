"""Mentions that reached no one: the sender of a room message that @mentions users
who are not members of the room hears so (`mention.unreached`), with whether they may
add them (docs/protocol.md)."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from chat import selectors
from chat.models import DM_ROOM_PREFIX, Message, Room, RoomMembership
from chat.services.notifications import mentioned_usernames


def _unreached(*, message: Message) -> dict[str, Any] | None:
    names = mentioned_usernames(message.content)
    if not names:
        return None  # no query for a message without @mentions
    outside = selectors.usernames_outside_room(
        room_name=message.room.name, usernames=names
    )
    if not outside:
        return None
    room = Room.objects.get(pk=message.room_id)  # the writer's copy has only its name
    if room.is_private:
        may_add = selectors.room_may_manage(user=message.sender, room=room)
    else:
        may_add = RoomMembership.objects.filter(
            user_id=message.sender_id, room=room
        ).exists()
    return {
        "type": "mention.unreached",
        "room": room.name,
        "message_id": str(message.message_id),
        "usernames": outside,
        "may_add": may_add,
    }


async def unreached_mentions(message: Message) -> dict[str, Any] | None:
    """The `mention.unreached` frame for the sender of this new room message, or
    None when everyone it @mentions is a member (or it is a DM, or a resend)."""
    if (
        message.replayed
        or message.receiver_id is not None
        or message.room.name.startswith(DM_ROOM_PREFIX)
    ):
        return None
    return await database_sync_to_async(_unreached)(message=message)
