"""ChatConsumer: bad frames, anonymous users, subclassing, KAFKA_ENABLED=False."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chat.models import Message
from chat.realtime.consumers import ChatConsumer
from chatproj.asgi import application

from ..support import WSClient, read_topic, room_ensure

pytestmark = pytest.mark.django_db(transaction=True)

BAD_FRAMES = [
    ("not json at all", "invalid_json"),
    ('{"message": "unterminated', "invalid_json"),
    ("[1, 2, 3]", "invalid_message"),
    ('"just a string"', "invalid_message"),
    ("null", "invalid_message"),
    ("{}", "invalid_message"),
    ('{"receiver_id": null}', "invalid_message"),
    ('{"message": ""}', "empty"),
    ('{"message": "   \\n\\t "}', "empty"),
    (json.dumps({"message": "x" * 4001}), "too_long"),
    ('{"message": 42}', "invalid_message"),
    ('{"message": ["a"]}', "invalid_message"),
    ('{"message": "hi", "receiver_id": "2"}', "invalid_message"),
    ('{"message": "hi", "receiver_id": true}', "invalid_message"),
    ('{"message": "hi", "receiver_id": -1}', "invalid_message"),
    ('{"message": "hi", "receiver_id": 99999999999999999999999}', "invalid_message"),
    ('{"message": "hi", "receiver_id": 987654}', "unknown_receiver"),
    ('{"message": "hi", "type": "chat.delete"}', "invalid_message"),
    ('{"message": "nul \\u0000 inside"}', "invalid_message"),
    ('{"message": "half a pair \\ud800"}', "invalid_message"),
    ('{"message": "hi", "client_id": "\\udfff"}', "invalid_message"),
    (b"\x00\x01binary", "invalid_message"),
]


async def test_bad_frames_get_error_codes_and_connection_keeps_working(
    asgi_server, start_worker, chat_users
):
    """Every bad frame gets its error code; the next good frame still goes through."""
    await database_sync_to_async(start_worker)()
    alice = await WSClient.connect(asgi_server, "errors", chat_users["alice"].cookie)
    await alice.expect("history")
    for i, (frame, code) in enumerate(BAD_FRAMES):
        await alice.send(frame)
        error = await alice.expect("error")
        assert error["code"] == code, (frame, error)
        assert error["detail"]
        await alice.send({"message": f"good {i}", "client_id": f"ok-{i}"})
        ack = await alice.expect("message.ack")
        assert ack["client_id"] == f"ok-{i}"
    # An error frame echoes the client_id when the frame had a usable one.
    await alice.send({"message": "", "client_id": "e-1"})
    assert (await alice.expect("error"))["client_id"] == "e-1"
    await alice.send({"message": "x" * 4000, "client_id": "max"})
    assert (await alice.expect("message.ack"))["client_id"] == "max"
    count = await database_sync_to_async(
        Message.objects.filter(sender_id=chat_users["alice"].id).count
    )()
    assert count == len(BAD_FRAMES) + 1
    await alice.close()


async def test_anonymous_connection_is_refused(asgi_server):
    """Without a login cookie the server closes the socket with code 4401."""
    from websockets.exceptions import ConnectionClosed

    client = await WSClient.connect(asgi_server, "lobby", cookie=None)
    with pytest.raises(ConnectionClosed) as closed:
        await client.connection.recv()
    assert closed.value.rcvd.code == 4401

    bogus = await WSClient.connect(asgi_server, "lobby", cookie="not-a-session")
    with pytest.raises(ConnectionClosed) as closed:
        await bogus.connection.recv()
    assert closed.value.rcvd.code == 4401


async def test_bad_room_name_is_not_routed(asgi_server, chat_users, log_dir):
    """Room names outside 1-64 of [A-Za-z0-9_.-], and unknown paths, get no WebSocket
    (403 at the handshake) and leave no traceback in the server's log."""
    from websockets.exceptions import InvalidStatus

    log = log_dir / "web.log"
    before = log.read_text().count("Traceback")
    for room in ("x" * 65, "bad%20room", "semi;colon"):
        with pytest.raises(InvalidStatus) as refused:
            await WSClient.connect(
                asgi_server, room, chat_users["alice"].cookie, create_room=False
            )
        assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        await WSClient.connect(
            asgi_server, "x", chat_users["alice"].cookie, path="ws/nope"
        )
    assert log.read_text().count("Traceback") == before


class ChatConsumerWithKafka(ChatConsumer):
    """The original README's subclassing example."""

    events: list[str] = []

    async def connect(self):
        self.events.append("connect")
        await super().connect()

    async def receive(self, text_data=None, bytes_data=None):
        self.events.append("receive")
        await super().receive(text_data=text_data, bytes_data=bytes_data)

    async def disconnect(self, code):
        self.events.append("disconnect")
        await super().disconnect(code)


async def test_subclass_with_super_calls_works(chat_users, start_worker):
    """A ChatConsumer subclass overriding connect/receive/disconnect still chats."""
    from channels.auth import AuthMiddlewareStack
    from channels.routing import URLRouter
    from django.urls import re_path

    await database_sync_to_async(start_worker)()
    await database_sync_to_async(room_ensure)("sub")
    app = AuthMiddlewareStack(
        URLRouter(
            [re_path(r"^ws/chat/(?P<room>[\w.-]+)/$", ChatConsumerWithKafka.as_asgi())]
        )
    )
    communicator = WebsocketCommunicator(
        app,
        "/ws/chat/sub/",
        headers=[(b"cookie", f"sessionid={chat_users['bob'].cookie}".encode())],
    )
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_json_from(5))["type"] == "history"
    await communicator.send_json_to({"message": "from a subclass", "client_id": "s"})
    frames = [await communicator.receive_json_from(10) for _ in range(4)]
    assert {f["type"] for f in frames} == {
        "presence",  # who has the room open, after the history
        "message.ack",
        "chat.message",
        "message.status",
    }
    await communicator.disconnect()
    assert ChatConsumerWithKafka.events == ["connect", "receive", "disconnect"]


async def test_origin_not_allowed_is_rejected(chat_users, in_memory_channel_layer):
    """The AllowedHostsOriginValidator refuses a foreign Origin."""
    communicator = WebsocketCommunicator(
        application,
        "/ws/chat/lobby/",
        headers=[
            (b"origin", b"http://evil.example"),
            (b"cookie", f"sessionid={chat_users['alice'].cookie}".encode()),
        ],
    )
    connected, _ = await communicator.connect()
    assert not connected


async def test_kafka_disabled_messages_flow_and_are_skipped(
    asgi_server, start_worker, kafka_bootstrap, chat_users
):
    """KAFKA_ENABLED=False: users still chat, status is `skipped`, nothing is produced."""
    worker = await database_sync_to_async(start_worker)(KAFKA_ENABLED="False")
    alice = await WSClient.connect(asgi_server, "quiet", chat_users["alice"].cookie)
    bob = await WSClient.connect(asgi_server, "quiet", chat_users["bob"].cookie)
    await alice.expect("history")
    await bob.expect("history")
    await alice.send({"message": "no kafka today"})
    ack = await alice.expect("message.ack")
    assert (await bob.expect("chat.message"))["content"] == "no kafka today"
    status = await alice.expect("message.status")
    assert status["status"] == "skipped"
    message = await database_sync_to_async(Message.objects.get)(
        message_id=ack["message_id"]
    )
    # (that a disabled agent builds no producer: test_agents, in-process)
    assert message.status == "skipped" and message.kafka_offset is None
    records = await database_sync_to_async(read_topic)(
        kafka_bootstrap, worker.topic, expected=1, timeout=3
    )
    assert records == []
    await alice.close()
    await bob.close()
