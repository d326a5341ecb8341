"""The original README's ChatConsumerWithKafka, pasted verbatim, through real servers:
uvicorn serving it, a Celery worker publishing, the Kafka-compatible broker."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from chat.models import Message

from ..support import WSClient, event_of, read_topic

pytestmark = pytest.mark.django_db(transaction=True)


async def chat_one_frame(
    sender: WSClient, other: WSClient, text: str, client_id: str
) -> dict:
    """Send a frame; return its ack once sender and other saw its chat.message."""
    await sender.send({"message": text, "client_id": client_id})
    ack = await sender.expect("message.ack")
    assert ack["client_id"] == client_id
    for client in (sender, other):
        seen = await client.expect("chat.message")
        assert (seen["message_id"], seen["content"]) == (ack["message_id"], text)
    return ack


@pytest.mark.parametrize(
    "path", ["ws/chat", "ws/chat-after"], ids=["verbatim", "send-after-super"]
)
async def test_readme_consumer_makes_one_message_per_frame(
    path, start_web, start_worker, kafka_bootstrap, chat_users
):
    """One chat.message and one Kafka event per frame; the socket keeps working."""
    worker = await database_sync_to_async(start_worker)()
    base = await database_sync_to_async(start_web)(
        app="tests.readme_example.asgi:application",
        KAFKA_CHAT_TOPIC=worker.topic,
    )
    server = base.removeprefix("http://")
    alice = await WSClient.connect(server, "lobby", chat_users["alice"].cookie, path)
    bob = await WSClient.connect(server, "lobby", chat_users["bob"].cookie, path)
    await alice.expect("history")
    await bob.expect("history")

    first = await chat_one_frame(alice, bob, "مرحبًا!", "c-1")
    # Bad frames the subclass chokes on (json.loads, ['message']) get error frames.
    await alice.send("not json")
    assert (await alice.expect("error"))["code"] == "invalid_json"
    await alice.send({"text": "no message key", "client_id": "c-x"})
    error = await alice.expect("error")
    assert (error["code"], error["client_id"]) == ("invalid_message", "c-x")
    second = await chat_one_frame(alice, bob, "and the next frame", "c-2")
    assert (first["seq"], second["seq"]) == (1, 2)
    # Frames of one socket are broadcast in order: a duplicate of the first message
    # would have arrived before the second one.
    for client in (alice, bob):
        assert not [f for f in client.unread if f.get("type") == "chat.message"]

    acked = [first["message_id"], second["message_id"]]
    for message_id in acked:
        await alice.expect(
            lambda f, m=message_id: (
                f.get("type") == "message.status" and f["message_id"] == m
            )
        )
    rows = await database_sync_to_async(list)(
        Message.objects.filter(room__name="lobby").values_list("message_id", "status")
    )
    assert sorted((str(m), s) for m, s in rows) == sorted(
        (m, "published") for m in acked
    )
    records = await database_sync_to_async(read_topic)(
        kafka_bootstrap, worker.topic, expected=2
    )
    assert [event_of(r)["message_id"] for r in records] == acked
    assert {r.key for r in records} == {b"room:lobby"}
    await alice.close()
    await bob.close()
