"""chatproj's ASGI application with the README example routed at /ws/chat/<room>/
(and the send-after variant at /ws/chat-after/<room>/)."""

# ruff: noqa: I001 - chatproj.asgi sets Django up before the consumers are imported
from chatproj.asgi import django_asgi_app, websocket_application

from channels.routing import ProtocolTypeRouter
from django.urls import re_path

from chat.realtime.routing import room_route

from .consumers import ChatConsumerWithKafka
from .send_after import SendAfterSuperConsumer

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_application(
            [
                re_path(room_route("ws/chat"), ChatConsumerWithKafka.as_asgi()),
                re_path(room_route("ws/chat-after"), SendAfterSuperConsumer.as_asgi()),
            ]
        ),
    }
)
