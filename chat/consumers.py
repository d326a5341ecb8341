"""ChatConsumer: the WebSocket endpoint /ws/chat/<room>/ (protocol in DESIGN.md)."""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from . import metrics, selectors, services
from .agents import ChatValidationError, KafkaChatAgent
from .broadcast import room_group, user_group
from .dispatch import await_outbound_first
from .frame_context import handling_frame, message_create_once
from .rate_limit import message_rate_limiter
from .schemas import client_id_of, message_payload, parse_chat_frame

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_INTERNAL_ERROR = 1011


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One browser connection to one room, plus its user's personal group."""

    room_name: str
    user_id: int
    counted = False  # whether this connection is in the connections gauge

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' AsyncConsumer.__call__ (channels 4.x), with a loop that delivers
        what this connection owes before it takes the next frame (chat.dispatch)."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is None:
            raise ImproperlyConfigured("ChatConsumer needs a channel layer.")
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = functools.partial(
            self.channel_layer.receive, self.channel_name
        )
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            await await_outbound_first(receive, self.channel_receive, self.dispatch)

    async def connect(self) -> None:
        """Refuse anonymous users; join the groups, then send the room's history."""
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Accept first so the client sees the close code (a refused handshake is
            # just an HTTP 403 that browsers do not expose).
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user_id = user.pk
        self.room_name = self.scope["url_route"]["kwargs"]["room"]
        # The room exists from its first visitor on, so the agent API can address it.
        await database_sync_to_async(services.room_get_or_create)(name=self.room_name)
        self.groups = [room_group(self.room_name), user_group(self.user_id)]
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        metrics.WEBSOCKET_CONNECTIONS.inc()
        self.counted = True
        history = await database_sync_to_async(_history_payload)(
            room_name=self.room_name, user_id=self.user_id
        )
        await self.send_json(
            {"type": "history", "room": self.room_name, "messages": history}
        )

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        """Handle one client frame (and what subclasses do with it) as one message.

        A ChatValidationError, or a subclass choking on a frame that is itself bad,
        answers with an error frame and the connection stays open. Anything else is
        a bug: logged once, and only this connection closes (1011), leaving its
        groups through the normal disconnect.
        """
        if not self.counted:  # a refused connection's last frames
            return
        with handling_frame(sender_id=self.user_id, admit=self._admit_message):
            try:
                await super().websocket_receive(message)
            except ChatValidationError as exc:
                await self._refuse(exc, message)
            except Exception:
                try:
                    parse_chat_frame(
                        message.get("text", message.get("bytes")),
                        max_length=KafkaChatAgent.get_instance().max_message_length,
                    )
                except ChatValidationError as exc:  # a subclass choked on a bad frame
                    await self._refuse(exc, message)
                    return
                logger.exception("Closing the connection of user %s", self.user_id)
                await self.close(code=CLOSE_INTERNAL_ERROR)

    async def _refuse(
        self, error: ChatValidationError, message: dict[str, Any]
    ) -> None:
        if error.client_id is None:
            error.client_id = client_id_of(message.get("text"))
        logger.debug("Refused a frame of user %s: %s", self.user_id, error)
        await self.send_json(error.as_frame())

    def _admit_message(self) -> None:
        limiter = message_rate_limiter()
        if not limiter.allow(self.user_id):
            logger.warning("Rate limited user %s", self.user_id)
            raise ChatValidationError(
                "rate_limited",
                f"Too many messages: at most {limiter.describe()}; this one was "
                "not sent, try again shortly.",
            )

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        """Validate a frame through the agent, persist it, and ack the sender."""
        agent = KafkaChatAgent.get_instance()
        data = await agent.process_websocket_message(
            text_data=text_data if text_data is not None else bytes_data,
            user_id=self.user_id,
        )
        message, _ = await message_create_once(
            room_name=self.room_name,
            sender=self.scope["user"],
            receiver_id=data["receiver_id"],
            content=data["message"],
        )
        await self.send_json(
            {
                "type": "message.ack",
                "client_id": data["client_id"],
                "message_id": str(message.message_id),
                "seq": message.seq,
            }
        )

    async def disconnect(self, code: int) -> None:
        """Groups are left by Channels itself; only the gauge is ours."""
        if self.counted:
            metrics.WEBSOCKET_CONNECTIONS.dec()
            self.counted = False

    async def chat_message(self, event: dict[str, Any]) -> None:
        """A message for this connection's user (room broadcast or direct)."""
        await self.send_json({"type": "chat.message", **event["message"]})

    async def message_statuses(self, event: dict[str, Any]) -> None:
        """Delivery statuses of messages this user sent: a message.status frame each."""
        for status in event["statuses"]:
            await self.send_json(
                {
                    "type": "message.status",
                    "message_id": status["message_id"],
                    "status": status["status"],
                }
            )


def _history_payload(*, room_name: str, user_id: int) -> list[dict[str, Any]]:
    messages = selectors.room_history(
        room_name=room_name, user_id=user_id, limit=settings.CHAT_HISTORY_SIZE
    )
    return [message_payload(m) for m in messages]
