"""NotificationConsumer (/ws/notifications/): a user's unread counts and
notifications, live (docs/protocol.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from chat import selectors
from chat.models import Room
from chat.realtime.frames import (
    parse_read_frame,
)
from chat.realtime.socket_guard import (
    GuardedConsumer,
)
from chat.schemas import (
    ChatValidationError,
    notification_payload_of,
)
from chat.services.broadcast import (
    notify_room_group,
    notify_user_group,
)
from chat.services.rooms import (
    room_mark_read,
)

logger = logging.getLogger(__name__)


@dataclass
class _RoomCount:
    last_read_seq: int
    latest_seq: int  # the last seq this connection has accounted for
    unread: int


class NotificationConsumer(GuardedConsumer):
    """/ws/notifications/: a user's unread counts and notifications, live.

    On connect: `{"type": "unread", "counts": {room: n}, "notifications": [...]}` (every
    room the user belongs to, and the latest unread notifications). Then
    `{"type": "notification", ...}` for each new DM or @mention (not for a room the
    user has open), and `{"type": "unread", "counts": {room: n}}` with the rooms whose
    count changed. Counts are kept here from each room's activity (one event per
    message for all of its members, nothing stored per member) and reset from the
    database whenever the user reads a room.
    """

    user_id: int
    rooms: dict[str, _RoomCount]
    connected = False

    async def connect(self) -> None:
        """Refuse anonymous users and users over their connection cap; follow the
        user's rooms; send the snapshot."""
        if not await self.admit_user():
            return
        self.rooms = {}
        names = await database_sync_to_async(_room_names)(user_id=self.user_id)
        # Follow first, then read: activity that arrives meanwhile waits in the
        # channel and is skipped if the snapshot already counted it (by seq).
        self.groups = [notify_user_group(self.user_id)]
        self.groups += [notify_room_group(name) for name in names]
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        self.connected = True
        states, notifications = await database_sync_to_async(_notification_snapshot)(
            user_id=self.user_id
        )
        self._apply(states)
        await self.send_json(
            {
                "type": "unread",
                "counts": {name: room.unread for name, room in self.rooms.items()},
                "notifications": notifications,
            }
        )
        self.start_keepalive()

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        """One client frame, within CHAT_FRAME_RATE."""
        if not self.connected or self.closing:
            return
        if await self.admit_frame(message):
            await super().websocket_receive(message)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        """`{"type": "read", "room": ..., "up_to_seq": n}` marks a room read; anything
        else gets an error frame (the connection stays open)."""
        if not self.connected:
            return
        try:
            frame = parse_read_frame(
                text_data if text_data is not None else bytes_data, room_required=True
            )
            assert frame.room is not None
            try:
                await database_sync_to_async(room_mark_read)(
                    user_id=self.user_id,
                    room_name=frame.room,
                    up_to_seq=frame.up_to_seq,
                )
            except Room.DoesNotExist:
                raise ChatValidationError(
                    "invalid_message", f"There is no room named {frame.room!r}."
                ) from None
        except ChatValidationError as exc:
            await self.refuse(exc, {"text": text_data})
            return
        self.rate_strikes = 0

    async def room_activity(self, event: dict[str, Any]) -> None:
        """A message reached the stream in one of the user's rooms: count it."""
        room = self.rooms.get(event["room"])
        if room is None or event["seq"] <= room.latest_seq:
            return  # not followed, or already counted (snapshot, replay)
        room.latest_seq = event["seq"]
        for_me = event["receiver_id"] in (None, self.user_id)
        if (
            for_me
            and event["sender_id"] != self.user_id
            and event["seq"] > room.last_read_seq
        ):
            room.unread += 1
            await self.send_json(
                {"type": "unread", "counts": {event["room"]: room.unread}}
            )

    async def unread_changed(self, event: dict[str, Any]) -> None:
        """The user read a room (on any connection): take the database's counts."""
        changed = self._apply(selectors.RoomReadState(**s) for s in event["states"])
        await self.send_json({"type": "unread", "counts": changed})

    async def membership_joined(self, event: dict[str, Any]) -> None:
        """The user joined a room elsewhere: follow it too."""
        name = event["room"]
        if name in self.rooms:
            return
        await self.channel_layer.group_add(notify_room_group(name), self.channel_name)
        self.groups.append(notify_room_group(name))
        states = await database_sync_to_async(selectors.read_states)(
            user_id=self.user_id, room_name=name
        )
        changed = self._apply(states)
        await self.send_json({"type": "unread", "counts": changed})

    async def membership_left(self, event: dict[str, Any]) -> None:
        """The user was removed from a room: stop following it."""
        name = event["room"]
        if self.rooms.pop(name, None) is None:
            return
        group = notify_room_group(name)
        await self.channel_layer.group_discard(group, self.channel_name)
        if group in self.groups:
            self.groups.remove(group)
        await self.send_json({"type": "unread", "counts": {name: 0}})

    async def notification_new(self, event: dict[str, Any]) -> None:
        """A new DM or @mention for this user."""
        await self.send_json({"type": "notification", **event["notification"]})

    def _apply(self, states: Any) -> dict[str, int]:
        changed = {}
        for state in states:
            known = self.rooms.get(state.room)
            self.rooms[state.room] = _RoomCount(
                last_read_seq=state.last_read_seq,
                latest_seq=max(state.latest_seq, known.latest_seq if known else 0),
                unread=state.unread,
            )
            changed[state.room] = state.unread
        return changed


def _room_names(*, user_id: int) -> list[str]:
    return list(selectors.rooms_of_user(user_id=user_id).values_list("name", flat=True))


def _notification_snapshot(
    *, user_id: int
) -> tuple[list[selectors.RoomReadState], list[dict[str, Any]]]:
    states = selectors.read_states(user_id=user_id)
    notifications = selectors.notifications_unread(
        user_id=user_id, limit=settings.NOTIFICATIONS_ON_CONNECT
    )
    payloads = [
        notification_payload_of(notification, message)
        for notification, message in selectors.notifications_with_messages(
            notifications
        )
    ]
    return states, payloads
