"""The whole path: real WebSocket client → uvicorn → DB → Celery worker → Kafka."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest
from channels.db import database_sync_to_async

from chat.models import Message, dm_room_name

from ..support import WSClient, event_of, read_topic

pytestmark = pytest.mark.django_db(transaction=True)


async def test_room_message_reaches_users_and_kafka(
    asgi_server, start_worker, kafka_bootstrap, chat_users
):
    """A room message is persisted, broadcast, acked, published and readable from Kafka."""
    worker = await database_sync_to_async(start_worker)()
    alice = await WSClient.connect(asgi_server, "lobby", chat_users["alice"].cookie)
    bob = await WSClient.connect(asgi_server, "lobby", chat_users["bob"].cookie)
    assert (await alice.expect("history"))["messages"] == []
    await bob.expect("history")

    await alice.send({"message": "مرحبًا!", "client_id": "c-1", "sender_id": 999})
    ack = await alice.expect("message.ack")
    assert ack["client_id"] == "c-1" and ack["seq"] == 1
    seen_by_bob = await bob.expect("chat.message")
    assert seen_by_bob["content"] == "مرحبًا!"
    assert (
        seen_by_bob["sender_id"] == chat_users["alice"].id
    )  # the frame's sender ignored
    assert seen_by_bob["message_id"] == ack["message_id"]
    await alice.expect("chat.message")
    status = await alice.expect("message.status")
    assert status == {
        "type": "message.status",
        "message_id": ack["message_id"],
        "status": "published",
    }

    message = await database_sync_to_async(Message.objects.get)(
        message_id=ack["message_id"]
    )
    assert message.status == "published" and message.attempts == 1
    [record] = await database_sync_to_async(read_topic)(
        kafka_bootstrap, worker.topic, expected=1
    )
    assert record.key == b"room:lobby"
    assert dict(record.headers) == {
        "message_id": ack["message_id"].encode(),
        "content-type": b"application/json",
    }
    assert (record.partition, record.offset) == (
        message.kafka_partition,
        message.kafka_offset,
    )
    event = event_of(record)
    assert set(event) == {
        "schema_version", "message_id", "room", "seq", "sender_id", "receiver_id",
        "content", "created_at",
    }  # fmt: skip
    assert event["schema_version"] == 1
    assert uuid.UUID(event["message_id"]) == message.message_id
    assert (event["room"], event["seq"], event["receiver_id"]) == ("lobby", 1, None)
    assert event["sender_id"] == chat_users["alice"].id
    assert event["content"] == "مرحبًا!"
    assert event["created_at"].endswith("Z")
    assert datetime.fromisoformat(event["created_at"]) == message.created_at
    await alice.close()
    await bob.close()


async def test_direct_message_is_private(
    asgi_server, start_worker, kafka_bootstrap, chat_users
):
    """A DM sent from a room's socket goes to the pair's conversation: its sockets
    get it, the room's never do (not even the receiver's), Kafka keys it by the pair."""
    worker = await database_sync_to_async(start_worker)()
    alice, bob, carol = [
        await WSClient.connect(asgi_server, "lobby", chat_users[n].cookie)
        for n in ("alice", "bob", "carol")
    ]
    for client in (alice, bob, carol):
        await client.expect("history")
    bob_id = chat_users["bob"].id
    conversation = dm_room_name(chat_users["alice"].id, bob_id)
    bob_dm = await WSClient.connect(asgi_server, conversation, chat_users["bob"].cookie)
    await bob_dm.expect("history")
    await alice.send(
        {"message": "just for bob", "receiver_id": bob_id, "client_id": "d"}
    )
    ack = await alice.expect("message.ack")
    assert ack["room"] == conversation
    dm = await bob_dm.expect("chat.message")
    assert dm["receiver_id"] == bob_id and dm["content"] == "just for bob"
    status = await alice.expect("message.status")
    assert status["message_id"] == ack["message_id"]
    # A room message sent after the DM is the next thing the room's sockets see.
    await alice.send({"message": "for everyone"})
    for client in (carol, bob):
        seen = await client.expect("chat.message")
        assert seen["content"] == "for everyone"
        assert all(f.get("content") != "just for bob" for f in client.unread)

    records = await database_sync_to_async(read_topic)(
        kafka_bootstrap, worker.topic, expected=2
    )
    low, high = sorted((chat_users["alice"].id, bob_id))
    keys = {event_of(r)["content"]: r.key for r in records}
    assert keys == {
        "just for bob": f"dm:{low}:{high}".encode(),
        "for everyone": b"room:lobby",
    }

    # History after reconnecting: the room has only the room message, the
    # conversation only the DM.
    carol2 = await WSClient.connect(asgi_server, "lobby", chat_users["carol"].cookie)
    assert [m["content"] for m in (await carol2.expect("history"))["messages"]] == [
        "for everyone"
    ]
    bob2 = await WSClient.connect(asgi_server, conversation, chat_users["bob"].cookie)
    history = (await bob2.expect("history"))["messages"]
    assert [m["content"] for m in history] == ["just for bob"]
    assert [(m["seq"], m["status"]) for m in history] == [(1, "published")]
    for client in (alice, bob, carol, carol2, bob2, bob_dm):
        await client.close()
