"""The heartbeat and typing frames on ChatConsumer in-process (WebsocketCommunicator,
InMemoryChannelLayer, Redis stand-ins: see test_consumer_units)."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat.models import Message

from . import test_consumer_units as consumer_units
from .test_consumer_units import FRAME_TIMEOUT, open_room

# That module's fixtures: the Redis stand-ins (autouse) and alice and bob.
redis_stand_ins = consumer_units.redis_stand_ins
users = consumer_units.users

pytestmark = pytest.mark.django_db(transaction=True)


async def test_ping_is_answered_and_typing_reaches_only_the_others_once(
    users, redis_stand_ins
):
    """alice's ping gets a pong; her two typing frames make one `typing` frame for
    bob (throttled) and none for her; nothing is stored nor queued to publish."""
    alice = await open_room("lobby", users["alice"])
    await alice.one("history")
    bob = await open_room("lobby", users["bob"])
    await bob.one("history")
    await alice.presence_of("alice", "bob")

    await alice.send({"type": "ping"})
    assert await alice.one("pong") == {"type": "pong"}
    await alice.send({"type": "typing"})
    await alice.send({"type": "typing"})
    await alice.send({"type": "ping"})
    await alice.one("pong")  # (Frames fails on any other frame: no typing to her)
    assert await bob.one("typing") == {
        "type": "typing",
        "room": "lobby",
        "user_id": users["alice"].pk,
        "username": "alice",
    }
    await bob.send({"type": "ping"})
    await bob.one("pong")  # not a second typing frame first
    assert await database_sync_to_async(Message.objects.count)() == 0
    assert redis_stand_ins.publishes == []
    for socket in (alice, bob):
        await socket.communicator.disconnect()


async def test_a_silent_socket_is_asked_then_closed_with_4408_and_leaves(
    users, redis_stand_ins, settings: Any
):
    """Silent for a third of CHAT_IDLE_TIMEOUT: a `ping`; unanswered until
    CHAT_IDLE_TIMEOUT: closed with 4408, its presence gone and bob told."""
    settings.CHAT_IDLE_TIMEOUT = 0.9
    alice = await open_room("lobby", users["alice"])
    await alice.one("history")
    bob = await open_room("lobby", users["bob"])
    await bob.one("history")
    await bob.presence_of("alice", "bob")
    await alice.one("ping")
    closed = await alice.communicator.receive_output(timeout=FRAME_TIMEOUT)
    assert closed == {"type": "websocket.close", "code": 4408}
    assert users["alice"].pk not in redis_stand_ins.online("lobby")
    while True:  # bob answers the server's pings, and hears that alice left
        frame = await bob.communicator.receive_json_from(timeout=FRAME_TIMEOUT)
        if frame["type"] == "ping":
            await bob.send({"type": "pong"})
        elif frame["type"] == "presence" and len(frame["online"]) == 1:
            assert frame["online"][0]["username"] == "bob"
            break
    assert users["bob"].pk in redis_stand_ins.online("lobby")
    await bob.communicator.disconnect()
