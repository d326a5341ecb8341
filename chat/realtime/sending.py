"""Sending a chat message from async code: a parsed frame's checks, and the
message an API caller asks for (the agent API's `send_chat_message`).

Both store through the frame's one message (chat.realtime.frame_context), so a
consumer and an agent call for the same frame make one message.
"""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async

from chat import selectors
from chat.models import dm_room_name
from chat.realtime.frame_context import message_create_once
from chat.realtime.frames import ChatFrame, parse_chat_frame
from chat.schemas import ChatValidationError, message_payload
from chat.services.rooms import membership_join


async def checked_frame(frame: ChatFrame) -> ChatFrame:
    """The frame, once its receiver is known to exist (ChatValidationError
    `unknown_receiver` if not)."""
    if frame.receiver_id is not None and not await database_sync_to_async(
        selectors.user_exists
    )(user_id=frame.receiver_id):
        raise ChatValidationError(
            "unknown_receiver",
            f"There is no user with id {frame.receiver_id}.",
            frame.client_id,
        )
    return frame


async def frame_data(
    *, text_data: Any, user_id: int, max_length: int
) -> dict[str, Any]:
    """A chat frame, parsed and checked, as the agent API returns it: `{"type",
    "message", "receiver_id", "client_id", "sender_id"}`."""
    frame = await checked_frame(parse_chat_frame(text_data, max_length=max_length))
    return {
        "type": frame.type,
        "message": frame.message,
        "receiver_id": frame.receiver_id,
        "client_id": frame.client_id,
        "sender_id": user_id,
    }


async def send_chat_message(
    *, sender_id: int, receiver_id: int | str, content: str, max_length: int
) -> dict[str, Any]:
    """Persist, broadcast and (via a worker) publish one message; return its payload.

    `receiver_id` is a user id (int: a direct message, in the pair's conversation
    `dm-<low>-<high>`) or a room name (str: a message to that existing room, which
    the sender joins; a private room refuses a non-member). Bad input raises
    ChatValidationError, never TypeError.
    """
    sender = (
        await database_sync_to_async(selectors.user_get)(user_id=sender_id)
        if _is_id(sender_id)
        else None
    )
    if sender is None:
        raise ChatValidationError(
            "unknown_sender", f"There is no user with id {sender_id!r}."
        )
    if isinstance(receiver_id, str):
        room, direct_to = receiver_id, None
        if not await database_sync_to_async(selectors.room_exists)(name=room):
            raise ChatValidationError(
                "unknown_receiver", f"There is no room named {room!r}."
            )
    elif _is_id(receiver_id):
        room, direct_to = dm_room_name(sender_id, receiver_id), receiver_id
    else:
        raise ChatValidationError(
            "invalid_message",
            "receiver_id must be a user id (int, a direct message) or a room "
            f"name (str, a room message), not {type(receiver_id).__name__}.",
        )
    data = await frame_data(
        text_data=json.dumps({"message": content, "receiver_id": direct_to}),
        user_id=sender_id,
        max_length=max_length,
    )
    if direct_to is None:
        await database_sync_to_async(membership_join)(user_id=sender_id, room_name=room)
    message, _ = await message_create_once(
        room_name=room,
        sender=sender,
        receiver_id=data["receiver_id"],
        content=data["message"],
    )
    return message_payload(message)


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
