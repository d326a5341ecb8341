"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproj.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator

from chat.routing import websocket_urlpatterns


def websocket_application(urlpatterns: list[Any]) -> Any:
    """WebSocket routes behind the origin check and session authentication."""
    return AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(urlpatterns)))


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_application(websocket_urlpatterns),
    }
)
