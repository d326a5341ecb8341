"""chatproj's ASGI application plus consumers that raise on a trigger word:
/ws/crash/<room>/ (ChatConsumer) and /ws/crash-notifications/ (NotificationConsumer).
The room `boom-connect` fails in connect; a frame or a chat.message whose text holds
`boom` fails while it is handled."""

# ruff: noqa: I001 - chatproj.asgi sets Django up before the consumers are imported
from chatproj.asgi import django_asgi_app, websocket_application

from typing import Any

from channels.routing import ProtocolTypeRouter
from django.urls import re_path

from chat.realtime.consumers import ChatConsumer
from chat.realtime.notification_consumer import NotificationConsumer
from chat.realtime.routing import room_route, websocket_urlpatterns


class InternalError(RuntimeError):
    """The bug these consumers have on purpose."""


class CrashingChatConsumer(ChatConsumer):
    """Fails in connect (room boom-connect), on a frame or on an event with `boom`."""

    async def connect(self) -> None:
        """Fail after joining the groups for the room boom-connect."""
        await super().connect()
        if self.scope["url_route"]["kwargs"]["room"] == "boom-connect":
            raise InternalError("connect failed")

    async def receive(self, text_data: Any = None, bytes_data: Any = None) -> None:
        """Fail on a valid frame whose text holds `boom`."""
        if text_data and "boom" in text_data:
            raise InternalError("frame failed")
        await super().receive(text_data=text_data, bytes_data=bytes_data)

    async def chat_message(self, event: dict[str, Any]) -> None:
        """Fail on a broadcast message whose content is `boom-event`."""
        if event["message"]["content"] == "boom-event":
            raise InternalError("event failed")
        await super().chat_message(event)


class CrashingNotificationConsumer(NotificationConsumer):
    """Fails on a frame whose text holds `boom`."""

    async def receive(self, text_data: Any = None, bytes_data: Any = None) -> None:
        """Fail on `boom`."""
        if text_data and "boom" in text_data:
            raise InternalError("frame failed")
        await super().receive(text_data=text_data, bytes_data=bytes_data)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_application(
            [
                re_path(room_route("ws/crash"), CrashingChatConsumer.as_asgi()),
                re_path(
                    r"^ws/crash-notifications/$", CrashingNotificationConsumer.as_asgi()
                ),
                *websocket_urlpatterns,
            ]
        ),
    }
)
