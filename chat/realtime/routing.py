"""WebSocket URL routes."""

from typing import Any

from django.urls import re_path

from chat.models import ROOM_NAME_PATTERN
from chat.realtime.consumers import ChatConsumer
from chat.realtime.notification_consumer import NotificationConsumer


def room_route(prefix: str) -> str:
    """The path regex `^<prefix>/<room>/$` with the room-name rule of the model."""
    return rf"^{prefix}/(?P<room>{ROOM_NAME_PATTERN.strip('^$')})/$"


async def refuse_unknown_path(scope: Any, receive: Any, send: Any) -> None:
    """Any other WebSocket path (a bad room name, a typo): refused at the handshake
    (HTTP 403), quietly; without this route Channels raises, and the server logs a
    traceback for every such attempt."""
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.close"})


websocket_urlpatterns = [
    re_path(room_route("ws/chat"), ChatConsumer.as_asgi()),
    re_path(r"^ws/notifications/$", NotificationConsumer.as_asgi()),
    re_path(r"", refuse_unknown_path),  # type: ignore[arg-type]  # an ASGI app
]
