"""Typing notices on a real uvicorn, Redis and Celery worker: they reach the room's
other members (not the typist, not another room), at most one per user and room per
CHAT_TYPING_INTERVAL, are never stored nor published, and a bad typing frame gets an
error while the socket stays open."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from channels.db import database_sync_to_async

from chat.models import Message

from ..support import WSClient, event_of, read_topic

pytestmark = pytest.mark.django_db(transaction=True)


def is_typing(frame: dict) -> bool:
    return frame.get("type") == "typing"


async def test_typing_reaches_the_others_throttled_and_is_never_stored_or_published(
    start_web, start_worker, kafka_bootstrap, redis_url, chat_users
):
    """alice sends 30 typing frames in a burst: bob gets exactly one `typing` frame
    naming her, then one more after CHAT_TYPING_INTERVAL; alice and carol (in another
    room) get none. Nothing reaches the database, the publish queue or Kafka: the
    topic holds only the one real message sent afterwards."""
    worker = await database_sync_to_async(start_worker)()
    base = await database_sync_to_async(start_web)(
        CHAT_TYPING_INTERVAL="1", KAFKA_CHAT_TOPIC=worker.topic
    )
    server = base.removeprefix("http://")
    alice_u, bob_u = chat_users["alice"], chat_users["bob"]
    alice = await WSClient.connect(server, "lobby", alice_u.cookie)
    bob = await WSClient.connect(server, "lobby", bob_u.cookie)
    carol = await WSClient.connect(server, "random", chat_users["carol"].cookie)
    for client in (alice, bob, carol):
        await client.expect("history")

    for _ in range(30):
        await alice.send({"type": "typing"})
    # a ping after them: its pong means every typing frame before it was handled
    await alice.send({"type": "ping"})
    await alice.expect("pong")
    first = await bob.expect("typing")
    burst_handled = time.monotonic()
    assert first == {
        "type": "typing",
        "room": "lobby",
        "user_id": alice_u.id,
        "username": "alice",
    }
    await bob.send({"type": "ping"})  # bob's pong comes after anything queued for him
    await bob.expect("pong")
    assert not [f for f in bob.unread if is_typing(f)], bob.unread

    # alice keeps typing (a frame every 0.1 s): the next notice comes after the
    # interval, not before
    second = None
    while second is None:
        await alice.send({"type": "typing"})
        await asyncio.sleep(0.1)  # the typist's pace
        second = next((f for f in bob.unread if is_typing(f)), None)
        if second is None:
            await bob.send({"type": "ping"})
            await bob.expect("pong")
            second = next((f for f in bob.unread if is_typing(f)), None)
        assert time.monotonic() - burst_handled < 5, "no second notice"
    assert time.monotonic() - burst_handled >= 0.9

    # no Message row, no publish mark or task: typing never enters the pipeline
    assert await database_sync_to_async(Message.objects.count)() == 0
    queue = redis.Redis.from_url(redis_url)
    assert queue.llen("celery") == 0
    assert not list(queue.scan_iter("chat:publish:*"))

    await alice.send({"message": "a real message", "client_id": "t-1"})
    await alice.expect("message.ack")
    records = await database_sync_to_async(read_topic)(
        kafka_bootstrap, worker.topic, expected=1
    )
    await database_sync_to_async(read_topic)(  # and nothing else arrives after it
        kafka_bootstrap, worker.topic, expected=2, timeout=2
    )
    assert [event_of(r)["content"] for r in records] == ["a real message"]

    for client in (alice, carol):
        await client.send({"type": "ping"})
        await client.expect("pong")
        assert not [f for f in client.unread if is_typing(f)], client.unread
    for client in (alice, bob, carol):
        await client.close()


async def test_bad_typing_frames_get_an_error_and_the_socket_stays_open(
    asgi_server, chat_users
):
    """Garbage typing frames are answered with an error code, never a close; unknown
    fields are ignored, as in every frame."""
    alice = await WSClient.connect(asgi_server, "lobby", chat_users["alice"].cookie)
    await alice.expect("history")
    for bad, code in (
        ({"type": "Typing"}, "invalid_message"),
        ({"type": "typing "}, "invalid_message"),
        ({"type": None}, "invalid_message"),
        ({"type": {"typing": True}}, "invalid_message"),
        (b'{"type": "typing"}', "invalid_message"),
        ('{"type": "typing",}', "invalid_json"),
        ('"typing"', "invalid_message"),
        ("[" * 5000, "invalid_json"),
    ):
        await alice.send(bad)
        error = await alice.expect("error", timeout=5)
        assert error["code"] == code, (bad, error)
    await alice.send({"type": "typing", "message": "not a message", "x": [1]})
    await alice.send({"message": "still open", "client_id": "t-2"})
    ack = await alice.expect("message.ack")
    assert ack["client_id"] == "t-2"
    assert not [f for f in alice.unread if f.get("type") == "error"], alice.unread
    await alice.close()
