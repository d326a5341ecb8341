"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproj.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter

from chat.realtime.routing import websocket_urlpatterns
from chat.security.origins import SiteOriginValidator
from chat.security.server_log import install_redaction
from chat.security.tickets import TicketAuthMiddleware
from chatproj.process_tuning import freeze_start_up_objects, shorter_gil_turns


def websocket_application(urlpatterns: list[Any]) -> Any:
    """WebSocket routes behind the strict origin check (chat.security.origins), then
    session authentication, or a ticket's (chat.security.tickets) when the URL carries
    one."""
    return SiteOriginValidator(
        AuthMiddlewareStack(TicketAuthMiddleware(URLRouter(urlpatterns)))
    )


install_redaction()  # no ticket in the ASGI server's log lines

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_application(websocket_urlpatterns),
    }
)

shorter_gil_turns()
freeze_start_up_objects()  # last: everything the process needs is imported
