"""ChatConsumer and NotificationConsumer in-process, with no server at all: channels'
WebsocketCommunicator drives the real routing (chat.realtime.routing) on channels'
InMemoryChannelLayer, against the test database.

The consumers keep per-user connection counts and room presence in Redis, and a
stored message asks Celery (whose broker is Redis) to publish it to Kafka, after its
commit. Those three stores are replaced below by in-memory stand-ins of the same
functions (`redis_stand_ins`), the message rate limit counts in memory (a setting),
and a tripwire fails a test whose code builds a Kafka producer. conftest's
`server_free_guard` fails any test here that still connects to Redis.

The server tier covers the same protocol over a real socket (test_consumers,
test_socket_guard).
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import kafka
import pytest
from celery import Celery
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser

from chat.models import Message, Room, RoomMembership
from chat.realtime.routing import websocket_urlpatterns
from chat.security import connection_limits
from chat.services import presence, publish_queue

from ..support import room_ensure

pytestmark = pytest.mark.django_db(transaction=True)

CLOSE_UNAUTHENTICATED = 4401  # docs/protocol.md, "Close codes"
FRAME_TIMEOUT = 10.0  # the most a test waits for a frame it expects (a deadline)


# --- Stand-ins for Redis and the broker -----------------------------------------------


@dataclass
class RedisStandIns:
    """What the consumers would have written to Redis, and the publications asked for."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # user id -> that user's open sockets (connection_limits)
    connections: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    # room name -> {(user id, socket)} (presence)
    present: dict[str, set[tuple[int, str]]] = field(
        default_factory=lambda: defaultdict(set)
    )
    # {room id: message id} of each commit's publish request (publish_queue)
    publishes: list[dict[int, str]] = field(default_factory=list)
    broker_calls: list[str] = field(default_factory=list)

    def open_sockets(self) -> dict[int, set[str]]:
        with self.lock:
            return {user: set(s) for user, s in self.connections.items() if s}

    def online(self, room: str) -> set[int]:
        with self.lock:
            return {user for user, _ in self.present[room]}


@pytest.fixture(autouse=True)
def redis_stand_ins(
    monkeypatch: pytest.MonkeyPatch, settings: Any, in_memory_channel_layer: None
) -> Iterator[RedisStandIns]:
    """Pure-logic isolation: the consumer calls these module functions unconditionally
    (connect, keepalive, close; the writer's on-commit enqueue) and each one talks to
    Redis; here each keeps the same facts in memory instead. Nothing else changes."""
    fake = RedisStandIns()

    # chat.security.connection_limits (a Redis sorted set per user)
    def connection_open(*, user_id: int, connection: str) -> int:
        with fake.lock:
            fake.connections[user_id].add(connection)
            return len(fake.connections[user_id])

    def connection_refresh(*, user_id: int, connection: str) -> None:
        pass  # nothing expires here

    def connection_close(*, user_id: int, connection: str) -> None:
        with fake.lock:
            fake.connections[user_id].discard(connection)

    monkeypatch.setattr(connection_limits, "connection_open", connection_open)
    monkeypatch.setattr(connection_limits, "connection_refresh", connection_refresh)
    monkeypatch.setattr(connection_limits, "connection_close", connection_close)

    # chat.services.presence (a Redis sorted set per room)
    def enter(*, room_name: str, user_id: int, connection: str) -> None:
        with fake.lock:
            fake.present[room_name].add((user_id, connection))

    def leave(*, room_name: str, user_id: int, connection: str) -> None:
        with fake.lock:
            fake.present[room_name].discard((user_id, connection))

    monkeypatch.setattr(presence, "enter", enter)
    monkeypatch.setattr(presence, "leave", leave)
    monkeypatch.setattr(
        presence, "online_users", lambda *, room_name: fake.online(room_name)
    )

    # chat.services.publish_queue: the Redis mark and the Celery task (broker: Redis)
    def enqueue_publishes(marks: dict[int, str], *, force: bool = False) -> list[int]:
        with fake.lock:
            fake.publishes.append(dict(marks))
        return list(marks)

    monkeypatch.setattr(publish_queue, "enqueue_publishes", enqueue_publishes)

    # Tripwires, on the libraries themselves (wherever the product builds them):
    # nothing on a socket's path may build a Kafka client or send a Celery task.
    def no_broker(what: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            fake.broker_calls.append(what)
            raise AssertionError(f"a server-free consumer test used {what}")

        return refuse

    monkeypatch.setattr(kafka.KafkaProducer, "__init__", no_broker("KafkaProducer"))
    monkeypatch.setattr(kafka.KafkaConsumer, "__init__", no_broker("KafkaConsumer"))
    monkeypatch.setattr(Celery, "send_task", no_broker("Celery.send_task"))

    # The message rate limit counts in this process (a setting, not a stand-in);
    # generous limits so that the frames of a test are never refused for rate.
    settings.CHAT_RATE_LIMIT_STORAGE = "async+memory://"
    settings.CHAT_RATE_LIMIT = "1000/second"
    settings.CHAT_FRAME_RATE = "1000/second"
    yield fake
    # (also when the code that met the tripwire swallowed its error)
    assert fake.broker_calls == []


# --- Users and sockets ------------------------------------------------------------------


@pytest.fixture
def users(transactional_db: None) -> dict[str, Any]:
    """alice and bob (User objects, as channels' AuthMiddleware puts in the scope)."""
    model = get_user_model()
    return {
        name: model.objects.create_user(username=name, password=f"pw-{name}")
        for name in ("alice", "bob")
    }


def socket(path: str, user: Any) -> WebsocketCommunicator:
    """A communicator on the product's WebSocket routes, as `user` (what the session
    middleware would have put in scope["user"])."""
    router = URLRouter(websocket_urlpatterns)

    async def app(scope: Any, receive: Any, send: Any) -> Any:
        return await router({**scope, "user": user}, receive, send)

    return WebsocketCommunicator(app, path)


async def connected(path: str, user: Any) -> WebsocketCommunicator:
    communicator = socket(path, user)
    accepted, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert accepted, f"{path} refused {user}"
    return communicator


class Frames:
    """Frames of one socket read against a deadline. `presence` frames (who has the
    room open, sent whenever someone comes or goes) are kept aside; any other frame
    that is not the one expected fails the test."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.presence: list[dict[str, Any]] = []

    async def expect(
        self, *kinds: str, timeout: float = FRAME_TIMEOUT
    ) -> list[dict[str, Any]]:
        """The next frames, one of each kind given, in whatever order they come."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wanted = list(kinds)
        got: list[dict[str, Any]] = []
        while wanted:
            remaining = deadline - loop.time()
            assert remaining > 0, f"still waiting for {wanted}; got {got}"
            frame = await self.communicator.receive_json_from(timeout=remaining)
            if frame["type"] == "presence" and "presence" not in wanted:
                self.presence.append(frame)
                continue
            assert frame["type"] in wanted, f"expected {wanted}, got {frame}"
            wanted.remove(frame["type"])
            got.append(frame)
        return got

    async def presence_of(
        self, *names: str, timeout: float = FRAME_TIMEOUT
    ) -> dict[str, Any]:
        """The first `presence` frame listing exactly these usernames (presence
        frames of the sockets' comings and goings may come in any order)."""

        def matches(frame: dict[str, Any]) -> bool:
            return [u["username"] for u in frame["online"]] == sorted(names)

        for frame in self.presence:
            if matches(frame):
                self.presence.clear()
                return frame
        self.presence.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            assert remaining > 0, f"no presence of {names}"
            frame = await self.communicator.receive_json_from(timeout=remaining)
            assert frame["type"] == "presence", f"expected presence, got {frame}"
            if matches(frame):
                return frame

    async def one(self, kind: str) -> dict[str, Any]:
        return (await self.expect(kind))[0]

    async def send(self, frame: Any) -> None:
        if isinstance(frame, bytes):
            await self.communicator.send_to(bytes_data=frame)
        elif isinstance(frame, str):
            await self.communicator.send_to(text_data=frame)
        else:
            await self.communicator.send_json_to(frame)


async def open_room(room: str, user: Any, query: str = "") -> Frames:
    await database_sync_to_async(room_ensure)(room)  # rooms are created on purpose
    frames = Frames(await connected(f"/ws/chat/{room}/{query}", user))
    return frames


# --- Tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws/chat/anon-room/", "/ws/notifications/"])
async def test_an_anonymous_socket_is_accepted_then_closed_with_4401(
    path, redis_stand_ins
):
    """Through the product's whole stack (origin check, session authentication,
    routing): a same-site socket without a session is accepted, so that the browser
    sees the code, and closed with 4401 before any frame; it counts for nobody and
    opens no room."""
    from chatproj.asgi import application

    communicator = WebsocketCommunicator(
        application,
        path,
        headers=[(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")],
    )
    accepted, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert accepted  # accepted first ...
    closed = await communicator.receive_output(timeout=FRAME_TIMEOUT)
    assert closed == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}
    await communicator.disconnect(timeout=FRAME_TIMEOUT)
    assert redis_stand_ins.open_sockets() == {}
    opened = Room.objects.filter(name="anon-room")
    assert not await database_sync_to_async(opened.exists)()


async def test_the_routed_consumers_refuse_an_anonymous_scope_user():
    """The consumers themselves check the user (not only the middleware): an
    AnonymousUser in the scope is closed with 4401 on both routes."""
    for path in ("/ws/chat/lobby/", "/ws/notifications/"):
        communicator = socket(path, AnonymousUser())
        accepted, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
        assert accepted
        closed = await communicator.receive_output(timeout=FRAME_TIMEOUT)
        assert closed["type"] == "websocket.close", (path, closed)
        assert closed["code"] == CLOSE_UNAUTHENTICATED, (path, closed)
        await communicator.disconnect(timeout=FRAME_TIMEOUT)


async def test_a_message_is_acked_stored_broadcast_and_handed_to_publishing(
    users, redis_stand_ins
):
    """alice and bob in a room: alice's frame gets its ack (client_id, seq, room),
    both sockets get the chat.message, the row is stored and its publication is
    asked for (after the commit, in place of the Celery task). Closing the sockets
    releases their counts and presence."""
    alice, bob = users["alice"], users["bob"]
    a = await open_room("lobby", alice)
    first = await a.one("history")
    assert first["room"] == "lobby" and first["messages"] == []
    b = await open_room("lobby", bob)
    await b.one("history")
    await b.presence_of("alice", "bob")  # sent once bob's socket counts as present
    assert redis_stand_ins.online("lobby") == {alice.pk, bob.pk}

    await a.send({"message": "hello bob", "client_id": "c-1"})
    frames = {f["type"]: f for f in await a.expect("message.ack", "chat.message")}
    ack, own = frames["message.ack"], frames["chat.message"]
    assert ack["client_id"] == "c-1" and ack["room"] == "lobby" and ack["seq"] == 1
    assert "duplicate" not in ack
    assert own["message_id"] == ack["message_id"] and own["content"] == "hello bob"
    seen_by_bob = await b.one("chat.message")
    assert seen_by_bob["message_id"] == ack["message_id"]
    assert (seen_by_bob["sender"], seen_by_bob["sender_id"]) == ("alice", alice.pk)
    assert seen_by_bob["seq"] == 1 and seen_by_bob["status"] == "pending"

    stored = await database_sync_to_async(Message.objects.get)(
        message_id=ack["message_id"]
    )
    assert (stored.content, stored.sender_id, stored.seq) == ("hello bob", alice.pk, 1)
    assert redis_stand_ins.publishes == [{stored.room_id: ack["message_id"]}]

    # The same client_id again: the original ack, marked duplicate; nothing new.
    await a.send({"message": "hello bob", "client_id": "c-1"})
    again = await a.one("message.ack")
    assert again["message_id"] == ack["message_id"] and again["duplicate"] is True
    assert await database_sync_to_async(Message.objects.count)() == 1
    assert len(redis_stand_ins.publishes) == 1

    await a.communicator.disconnect(timeout=FRAME_TIMEOUT)
    await b.presence_of("bob")  # bob hears that alice left
    await b.communicator.disconnect(timeout=FRAME_TIMEOUT)
    assert redis_stand_ins.open_sockets() == {}
    assert redis_stand_ins.online("lobby") == set()


async def test_malformed_frames_get_an_error_frame_and_the_socket_stays_open(
    users, settings
):
    """Each bad frame gets an `error` frame with its code (and the frame's usable
    client_id), stores nothing, and the next good frame on the same socket is acked."""
    max_length = settings.CHAT_MAX_MESSAGE_LENGTH
    bad_frames: list[tuple[Any, str, str | None]] = [
        ("not json at all", "invalid_json", None),
        ('{"message": "unterminated', "invalid_json", None),
        ("[1, 2, 3]", "invalid_message", None),  # not an object
        ('"just a string"', "invalid_message", None),
        ({"message": 42, "client_id": "t-1"}, "invalid_message", "t-1"),  # wrong type
        ({"message": "hi", "type": "chat.delete"}, "invalid_message", None),
        ({"message": "x" * (max_length + 1), "client_id": "t-2"}, "too_long", "t-2"),
        ({}, "invalid_message", None),  # missing fields
        ({"client_id": "t-3"}, "invalid_message", "t-3"),
        ({"type": "read"}, "invalid_message", None),  # read without up_to_seq
        ({"type": "resume", "after_seq": -1}, "invalid_message", None),
        ({"message": "   "}, "empty", None),
        (b"\x00\x01binary", "invalid_message", None),
    ]
    a = await open_room("errors", users["alice"])
    await a.one("history")
    for i, (frame, code, client_id) in enumerate(bad_frames):
        await a.send(frame)
        error = await a.one("error")
        assert error["code"] == code, (frame, error)
        assert error["detail"], (frame, error)
        assert error["client_id"] == client_id, (frame, error)
        await a.send({"message": f"good {i}", "client_id": f"ok-{i}"})
        frames = {f["type"]: f for f in await a.expect("message.ack", "chat.message")}
        ack = frames["message.ack"]
        assert ack["client_id"] == f"ok-{i}" and ack["seq"] == i + 1, (frame, ack)
    contents = await database_sync_to_async(
        lambda: list(Message.objects.order_by("seq").values_list("content", flat=True))
    )()
    assert contents == [f"good {i}" for i in range(len(bad_frames))]
    await a.communicator.disconnect(timeout=FRAME_TIMEOUT)


async def test_read_marks_and_resume_on_the_chat_socket(users):
    """bob sends three messages; alice's `read` moves her mark forward only (never
    back, never past the last message, only for her socket's room); `resume` and
    `?after_seq=` send exactly the messages after the seq given, `complete`."""
    alice, bob = users["alice"], users["bob"]
    a = await open_room("reading", alice)
    await a.one("history")
    b = await open_room("reading", bob)
    await b.one("history")
    for n in (1, 2, 3):
        await b.send({"message": f"m{n}", "client_id": f"m{n}"})
        await b.expect("message.ack", "chat.message")
        assert (await a.one("chat.message"))["seq"] == n

    def mark() -> int:
        return RoomMembership.objects.get(
            user=alice, room__name="reading"
        ).last_read_seq

    assert await database_sync_to_async(mark)() == 0

    async def resume(after_seq: int) -> dict[str, Any]:
        # Frames are handled in order: its answer also means the frames before it were.
        await a.send({"type": "resume", "after_seq": after_seq})
        return await a.one("history")

    await a.send({"type": "read", "up_to_seq": 2})
    page = await resume(1)
    assert [m["content"] for m in page["messages"]] == ["m2", "m3"]
    assert page["after_seq"] == 1 and page["complete"] is True
    assert await database_sync_to_async(mark)() == 2

    await a.send({"type": "read", "up_to_seq": 1})  # never back
    await a.send({"type": "read", "room": "reading", "up_to_seq": 99})  # clamped
    assert (await resume(3))["messages"] == []
    assert await database_sync_to_async(mark)() == 3

    await a.send({"type": "read", "room": "elsewhere", "up_to_seq": 1})
    assert (await a.one("error"))["code"] == "invalid_message"

    # Reconnecting with ?after_seq=: the history is what came after it.
    await a.communicator.disconnect(timeout=FRAME_TIMEOUT)
    again = await open_room("reading", alice, "?after_seq=2")
    page = await again.one("history")
    assert [m["seq"] for m in page["messages"]] == [3] and page["complete"] is True
    await again.communicator.disconnect(timeout=FRAME_TIMEOUT)
    await b.communicator.disconnect(timeout=FRAME_TIMEOUT)


async def test_the_notifications_socket_sends_unread_counts_and_refuses_bad_frames(
    users,
):
    """/ws/notifications/: the snapshot counts what alice has not read (not her own
    messages); a bad frame gets an `error` frame and the socket answers the next."""
    alice, bob = users["alice"], users["bob"]
    a = await open_room("counted", alice)
    await a.one("history")
    b = await open_room("counted", bob)
    await b.one("history")
    for n in (1, 2):
        await b.send({"message": f"m{n}"})
        await b.expect("message.ack", "chat.message")
        await a.one("chat.message")
    await a.send({"message": "mine"})
    await a.expect("message.ack", "chat.message")

    notes = Frames(await connected("/ws/notifications/", alice))
    snapshot = await notes.one("unread")
    assert snapshot["counts"] == {"counted": 2}
    assert snapshot["notifications"] == []
    for frame, code in [
        ("not json", "invalid_json"),
        ({"type": "read", "up_to_seq": 1}, "invalid_message"),  # room required here
        ({"type": "read", "room": "nowhere", "up_to_seq": 1}, "invalid_message"),
        ({"message": "hi"}, "invalid_message"),  # not a chat socket
    ]:
        await notes.send(frame)
        error = await notes.one("error")
        assert error["code"] == code, (frame, error)
    for communicator in (notes.communicator, a.communicator, b.communicator):
        await communicator.disconnect(timeout=FRAME_TIMEOUT)
