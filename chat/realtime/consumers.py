"""ChatConsumer (/ws/chat/<room>/): one browser connection to one room
(docs/protocol.md)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings

from chat import selectors
from chat.infra import config, metrics
from chat.models import dm_room_name
from chat.realtime.channels_hooks import run_outbound_first
from chat.realtime.frame_context import handling_frame, message_create_once
from chat.realtime.frames import (
    ChatFrame,
    ReadFrame,
    ResumeFrame,
    TypingFrame,
    parse_frame,
)
from chat.realtime.heartbeat import CLOSE_IDLE, HeartbeatConsumer
from chat.realtime.mentions import unreached_mentions
from chat.realtime.sending import checked_frame
from chat.realtime.socket_guard import (
    CLOSE_FLOODING,
    CLOSE_INTERNAL_ERROR,
    CLOSE_UNAUTHENTICATED,
)
from chat.realtime.typing import typing_announce, typing_frame
from chat.schemas import (
    MAX_DB_ID,
    ChatValidationError,
    message_payload,
)
from chat.security.origins import query_params
from chat.security.rate_limit import message_rate_limiter
from chat.services import presence
from chat.services.broadcast import (
    room_group,
    user_group,
)
from chat.services.rooms import (
    RoomError,
    RoomNotFound,
    dm_other,
    membership_join,
    room_mark_read,
)

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403  # not a member of this private room (or no longer one)
CLOSE_NO_ROOM = 4404  # no room of this name (never created, or a non-canonical dm-)

__all__ = [
    "CLOSE_FLOODING",
    "CLOSE_FORBIDDEN",
    "CLOSE_IDLE",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_NO_ROOM",
    "CLOSE_UNAUTHENTICATED",
    "ChatConsumer",
]


class ChatConsumer(HeartbeatConsumer):
    """One browser connection to one room, plus its user's personal group."""

    room_name: str
    counted = False  # whether this connection is in the connections gauge and presence
    read_mark = 0  # the highest up_to_seq this connection has stored
    # seqs a resume sent that may also come live (committed while it read): skipped
    resumed: set[int]

    async def run(self, scope: Any, receive: Any, send: Any) -> None:
        """The consumer loop that delivers what this connection owes before it
        takes the next frame (chat.realtime.channels_hooks)."""
        await run_outbound_first(self, scope, receive, send)

    async def connect(self) -> None:
        """Refuse anonymous users and users over their connection cap (accepted first,
        so the client sees the close code); join the groups, send the history."""
        if not await self.admit_user():
            return
        self.room_name = self.scope["url_route"]["kwargs"]["room"]
        # Opening a room makes the user a member; a room nobody created, and a
        # private room to a non-member, are refused before the socket joins any group
        # or sees any history.
        try:
            await database_sync_to_async(membership_join)(
                user_id=self.user_id, room_name=self.room_name
            )
        except RoomNotFound:  # never created, or a non-canonical dm- name
            await self.accept()
            await self.close(code=CLOSE_NO_ROOM)
            return
        except RoomError:  # a private room's outsider, or a DM of two other users
            await self.accept()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.groups = [room_group(self.room_name), user_group(self.user_id)]
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        metrics.WEBSOCKET_CONNECTIONS.inc()
        self.counted = True
        self.resumed = set()
        after_seq = _after_seq(self.scope)
        if after_seq is None:
            await self._send_latest()
        else:
            await self._resume(after_seq)
        await sync_to_async(self.refresh, thread_sensitive=False)()  # presence
        await self._announce_presence()
        self.start_keepalive()
        self.start_heartbeat()

    async def _send_latest(self) -> None:
        messages, has_older = await database_sync_to_async(
            selectors.room_messages_before
        )(
            room_name=self.room_name,
            user_id=self.user_id,
            before_seq=None,
            limit=settings.CHAT_HISTORY_SIZE,
        )
        await self.send_json(
            {
                "type": "history",
                "room": self.room_name,
                "messages": [message_payload(m) for m in messages],
                "has_older": has_older,
            }
        )

    async def _resume(self, after_seq: int) -> None:
        """Every visible message after `after_seq`, in pages of CHAT_HISTORY_SIZE, the
        last one `complete`. The socket is in the room's group already, so what
        commits meanwhile comes live too: those seqs are remembered and skipped."""
        page_size = settings.CHAT_HISTORY_SIZE
        while True:
            page = await database_sync_to_async(selectors.room_messages_after)(
                room_name=self.room_name,
                user_id=self.user_id,
                after_seq=after_seq,
                limit=page_size,
            )
            complete = len(page) < page_size
            await self.send_json(
                {
                    "type": "history",
                    "room": self.room_name,
                    "messages": [message_payload(m) for m in page],
                    "after_seq": after_seq,
                    "complete": complete,
                }
            )
            self.resumed.update(m.seq for m in page)
            if complete:
                return
            after_seq = page[-1].seq

    async def _announce_presence(self) -> None:
        """Tell the room's sockets who has it open now (after a change)."""
        try:
            online = await sync_to_async(_online, thread_sensitive=False)(
                room_name=self.room_name
            )
            await self.channel_layer.group_send(
                room_group(self.room_name),
                {"type": "presence.changed", "room": self.room_name, "online": online},
            )
        except Exception as exc:  # presence is a hint; chatting goes on
            logger.warning("Presence of %s not announced: %s", self.room_name, exc)

    async def presence_changed(self, event: dict[str, Any]) -> None:
        """Who has this room open: a `presence` frame."""
        await self.send_json(
            {"type": "presence", "room": event["room"], "online": event["online"]}
        )

    def refresh(self) -> None:
        """Sync, in a thread: this connection still has its room open."""
        super().refresh()
        if self.counted:
            presence.enter(
                room_name=self.room_name,
                user_id=self.user_id,
                connection=self.channel_name,
            )

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        """Handle one client frame (and what subclasses do with it) as one message.

        A ChatValidationError, or a subclass choking on a frame that is itself bad,
        answers with an error frame and the connection stays open. Anything else is
        a bug: GuardedConsumer.dispatch ends only this connection (1011, logged once
        by the server); its groups, presence and gauge are released whatever happens.
        """
        if not self.counted or self.closing:  # a refused or closing connection
            return
        self.frame_arrived()
        if not await self.admit_frame(message):
            return
        with handling_frame(sender_id=self.user_id, admit=self._admit_message):
            try:
                await super().websocket_receive(message)
            except ChatValidationError as exc:
                await self.refuse(exc, message, window=_message_window())
                return
            except Exception:
                try:
                    parse_frame(
                        message.get("text", message.get("bytes")),
                        max_length=config.chat().max_message_length,
                    )
                except ChatValidationError as exc:  # a subclass choked on a bad frame
                    await self.refuse(exc, message)
                    return
                raise
        self.rate_strikes = 0

    async def _admit_message(self) -> None:
        limiter = message_rate_limiter()
        if not await limiter.allow(self.user_id):
            raise ChatValidationError(
                "rate_limited",
                f"You are sending messages too fast (at most {limiter.describe()}): "
                "this one was not sent; wait a moment and try again.",
            )

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        """Parse the frame (one union of frame types) and run its handler."""
        frame = parse_frame(
            text_data if text_data is not None else bytes_data,
            max_length=config.chat().max_message_length,
        )
        with self.heartbeat_busy():
            await getattr(self, self.HANDLERS[frame.type])(frame)

    async def on_message(self, frame: ChatFrame) -> None:
        """Persist the message (once per frame), and ack the sender."""
        frame = await checked_frame(frame)
        # A DM goes to the pair's conversation, from whichever socket; on a DM
        # conversation's socket every message is to the other user.
        receiver_id, room_name = frame.receiver_id, self.room_name
        if receiver_id is not None:
            room_name = dm_room_name(self.user_id, receiver_id)
        else:
            receiver_id = dm_other(self.room_name, self.user_id)
        message, _ = await message_create_once(
            room_name=room_name,
            sender=self.scope["user"],
            receiver_id=receiver_id,
            content=frame.message,
            client_id=frame.client_id,
        )
        ack = {
            "type": "message.ack",
            "client_id": frame.client_id,
            "message_id": str(message.message_id),
            "seq": message.seq,
            "room": message.room.name,
        }
        if message.replayed:
            ack["duplicate"] = True
        await self.send_json(ack)
        unreached = await unreached_mentions(message)
        if unreached is not None:
            await self.send_json(unreached)

    async def on_read(self, frame: ReadFrame) -> None:
        """Move the user's read mark of this room forward."""
        if frame.room not in (None, self.room_name):
            raise ChatValidationError(
                "invalid_message",
                f"This socket reads {self.room_name!r}, not {frame.room!r}.",
            )
        if frame.up_to_seq > self.read_mark:  # a repeat costs nothing
            state = await database_sync_to_async(room_mark_read)(
                user_id=self.user_id,
                room_name=self.room_name,
                up_to_seq=frame.up_to_seq,
            )
            self.read_mark = state.last_read_seq

    async def on_resume(self, frame: ResumeFrame) -> None:
        """Send what the client missed after its last seq."""
        await self._resume(frame.after_seq)

    async def on_typing(self, frame: TypingFrame) -> None:
        """Tell the room's other members that this user is typing (throttled; never
        stored nor published)."""
        await typing_announce(
            self.channel_layer,
            room_name=self.room_name,
            user_id=self.user_id,
            username=self.scope["user"].get_username(),
        )

    # Frame type → the name of its handler (docs/architecture.md: a new frame type).
    HANDLERS: ClassVar[dict[str, str]] = {
        "chat.message": "on_message",
        "read": "on_read",
        "resume": "on_resume",
        "ping": "on_ping",
        "pong": "on_pong",
        "typing": "on_typing",
    }

    async def release_resources(self) -> None:
        """The heartbeat, the connections gauge and presence (groups are left by
        GuardedConsumer)."""
        await super().release_resources()
        if not self.counted:
            return
        self.counted = False
        metrics.WEBSOCKET_CONNECTIONS.dec()
        try:
            await database_sync_to_async(presence.leave, thread_sensitive=False)(
                room_name=self.room_name,
                user_id=self.user_id,
                connection=self.channel_name,
            )
        except Exception as exc:  # the entry expires by itself
            logger.warning("Presence not cleared: %s", exc)
        else:
            await self._announce_presence()

    async def disconnect(self, code: int) -> None:
        """Everything is released before this runs; kept for subclasses' super()."""

    async def chat_message(self, event: dict[str, Any]) -> None:
        """A message for this connection's user (room broadcast or direct), unless a
        resume already sent it."""
        message = event["message"]
        if self.resumed and message["room"] == self.room_name:
            if message["seq"] in self.resumed:
                self.resumed.discard(message["seq"])
                return
            if len(self.resumed) > 10 * settings.CHAT_HISTORY_SIZE:  # never came
                self.resumed = {s for s in self.resumed if s > message["seq"]}
        await self.send_json({"type": "chat.message", **message})

    async def room_access_revoked(self, event: dict[str, Any]) -> None:
        """The user was removed from a private room: close its sockets with 4403."""
        if self.counted and event["room"] == self.room_name:
            logger.info("Closing user %s's socket to %s", self.user_id, self.room_name)
            # Hear nothing more of the room while the close handshake completes, and
            # handle no more frames (websocket_receive skips uncounted connections).
            group = room_group(self.room_name)
            await self.channel_layer.group_discard(group, self.channel_name)
            await self.release_resources()
            await self.close(code=CLOSE_FORBIDDEN)

    async def room_topic(self, event: dict[str, Any]) -> None:
        """The room's topic changed: a `room.topic` frame."""
        await self.send_json(
            {
                "type": "room.topic",
                "room": event["room"],
                "topic": event["topic"],
                "by": event["by"],
            }
        )

    async def typing_notice(self, event: dict[str, Any]) -> None:
        """Someone else in the room is typing: a `typing` frame."""
        if event["user_id"] != self.user_id and event["room"] == self.room_name:
            await self.send_json(typing_frame(event))

    async def message_statuses(self, event: dict[str, Any]) -> None:
        """Delivery statuses of messages this user sent: a message.status frame each."""
        for status in event["statuses"]:
            await self.send_json({"type": "message.status", **status})


def _message_window() -> float:
    item = message_rate_limiter().item
    return item.get_expiry() if item else 0


def _after_seq(scope: dict[str, Any]) -> int | None:
    # ?after_seq=<n> on the socket's URL: a reconnecting client catching up
    # (a bad value is ignored: the socket gets the latest history instead)
    values = query_params(scope).get("after_seq")
    if not values or not values[0].isascii() or not values[0].isdigit():
        return None  # "²" is a digit to str.isdigit() but not to int()
    if len(values[0]) > len(str(MAX_DB_ID)) or int(values[0]) > MAX_DB_ID:
        return None  # (int() refuses strings of more than 4300 digits)
    return int(values[0])


def _online(*, room_name: str) -> list[dict[str, Any]]:
    names = selectors.usernames(user_ids=presence.online_users(room_name=room_name))
    return [
        {"user_id": user_id, "username": name}
        for user_id, name in sorted(names.items(), key=lambda item: item[1])
    ]
