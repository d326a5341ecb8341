"""WebSocket URL routes."""

from django.urls import re_path

from .consumers import ChatConsumer, NotificationConsumer
from .models import ROOM_NAME_PATTERN


def room_route(prefix: str) -> str:
    """The path regex `^<prefix>/<room>/$` with the room-name rule of the model."""
    return rf"^{prefix}/(?P<room>{ROOM_NAME_PATTERN.strip('^$')})/$"


websocket_urlpatterns = [
    re_path(room_route("ws/chat"), ChatConsumer.as_asgi()),
    re_path(r"^ws/notifications/$", NotificationConsumer.as_asgi()),
]
