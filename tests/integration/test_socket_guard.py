"""GuardedConsumer on a real uvicorn: internal errors close one socket with 1011 and
leave nothing behind; connection cap, flood close, bounded logs, a global rate limit."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from chat.models import Message
from chat.security import connection_limits
from chat.services import presence
from chat.services.broadcast import notify_user_group, room_group, user_group

from ..security_support import (
    close_code,
    group_members,
    metric,
    server_log,
    still_open,
)
from ..support import WSClient, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

GAUGE = "chat_websocket_connections"


async def gauge_is(base: str, value: float) -> None:
    """Wait (bounded) until the server's connections gauge reads `value`."""
    await database_sync_to_async(wait_for)(
        lambda: metric(base, GAUGE) == value, 10, what=f"{GAUGE} == {value}"
    )


@pytest.mark.parametrize("backend", ["pubsub", "list"])
async def test_internal_errors_close_one_socket_with_1011_and_leave_nothing(
    backend, start_web, chat_users, redis_url, log_dir
):
    """A frame, a channel-layer event or connect() failing inside the consumer closes
    that socket with 1011, logged once; its groups (in Redis), presence, connection
    count and the gauge are clean again, and other sockets keep working."""
    base = await database_sync_to_async(start_web)(
        app="tests.crash_app.asgi:application", CHANNEL_LAYER_BACKEND=backend
    )
    server = base.removeprefix("http://")
    alice, bob = chat_users["alice"], chat_users["bob"]
    gauge0 = await database_sync_to_async(metric)(base, GAUGE)

    async def clean(room: str) -> None:
        def nothing_left() -> bool:
            return (
                group_members(redis_url, room_group(room), backend) == 0
                and group_members(redis_url, user_group(alice.id), backend) == 0
                and group_members(redis_url, notify_user_group(alice.id), backend) == 0
                and alice.id not in presence.online_users(room_name=room)
                and connection_limits.connections_open(user_id=alice.id) == 0
            )

        await database_sync_to_async(wait_for)(nothing_left, 10, what="clean")
        await gauge_is(base, gauge0)

    # 1. A valid frame that the consumer fails on.
    crashing = await WSClient.connect(server, "crash-frame", alice.cookie, "ws/crash")
    await crashing.expect("history")
    await gauge_is(base, gauge0 + 1)
    assert group_members(redis_url, room_group("crash-frame"), backend) == 1
    await crashing.send({"message": "boom", "client_id": "b1"})
    assert await close_code(crashing, 10) == 1011
    await clean("crash-frame")

    # 2. A channel-layer event it fails on; the sender (a plain socket) goes on.
    crashing = await WSClient.connect(server, "crash-event", alice.cookie, "ws/crash")
    sender = await WSClient.connect(server, "crash-event", bob.cookie)
    await crashing.expect("history")
    await sender.expect("history")
    await sender.send({"message": "boom-event", "client_id": "e1"})
    assert await close_code(crashing, 10) == 1011
    await still_open(sender, "bob-1")
    await sender.close()
    await clean("crash-event")

    # 3. connect() failing after it joined the groups.
    crashing = await WSClient.connect(server, "boom-connect", alice.cookie, "ws/crash")
    assert await close_code(crashing, 10) == 1011
    await clean("boom-connect")

    # 4. The notifications socket failing on a frame.
    notes = await WSClient.connect(server, "crash-notifications", alice.cookie, "ws")
    await notes.expect("unread")
    await notes.send({"type": "read", "room": "boom", "up_to_seq": 1})
    assert await close_code(notes, 10) == 1011
    await clean("crash-frame")

    log = server_log(log_dir, base)
    assert log.count("Exception in ASGI application") == 4, log[-3000:]
    assert log.count(f"SocketCrashed: Socket of user {alice.id} closed (1011)") == 4
    assert log.count("InternalError: ") == 4  # one traceback each, nothing more
    assert (
        await database_sync_to_async(metric)(
            base, "chat_websocket_closed_by_server_total", code="1011"
        )
        >= 4
    )


async def test_connection_cap_per_user(start_web, chat_users):
    """Past CHAT_MAX_CONNECTIONS_PER_USER (chat and notification sockets together)
    one more socket is closed with 4429; other users are not affected; a closed socket
    frees its place."""
    base = await database_sync_to_async(start_web)(CHAT_MAX_CONNECTIONS_PER_USER="3")
    server = base.removeprefix("http://")
    alice, bob = chat_users["alice"], chat_users["bob"]
    open_ = [await WSClient.connect(server, f"cap-{n}", alice.cookie) for n in range(2)]
    open_.append(await WSClient.connect(server, "notifications", alice.cookie, "ws"))
    for client in open_[:2]:
        await client.expect("history")
    await open_[2].expect("unread")
    extra = await WSClient.connect(server, "cap-3", alice.cookie)
    assert await close_code(extra, 10) == 4429
    extra = await WSClient.connect(server, "notifications", alice.cookie, "ws")
    assert await close_code(extra, 10) == 4429
    others = [await WSClient.connect(server, "cap-0", bob.cookie) for _ in range(3)]
    for client in others:
        await client.expect("history")
    await still_open(open_[0], "a-ok")

    await open_[1].close()
    await database_sync_to_async(wait_for)(
        lambda: connection_limits.connections_open(user_id=alice.id) == 2, 10
    )
    again = await WSClient.connect(server, "cap-4", alice.cookie)
    await again.expect("history")
    for client in [open_[0], open_[2], again, *others]:
        await client.close()


async def test_a_flooding_socket_is_closed_with_4429(start_web, chat_users):
    """Past CHAT_FRAME_RATE frames are refused `rate_limited` (garbage included, it is
    not even parsed); after CHAT_FLOOD_CLOSE_AFTER refusals in a row the socket is
    closed with 4429. Another socket of the same user is not."""
    base = await database_sync_to_async(start_web)(
        CHAT_FRAME_RATE="5/minute", CHAT_FLOOD_CLOSE_AFTER="20"
    )
    server = base.removeprefix("http://")
    alice = chat_users["alice"]
    flooder = await WSClient.connect(server, "flood", alice.cookie)
    calm = await WSClient.connect(server, "flood", alice.cookie)
    await flooder.expect("history")
    await calm.expect("history")
    for n in range(100):
        await flooder.send("not json" if n % 2 else {"message": f"m{n}"})
    assert await close_code(flooder, 20) == 4429
    errors = [f for f in flooder.unread if f.get("type") == "error"]
    acks = [f for f in flooder.unread if f.get("type") == "message.ack"]
    # 5 frames pass the frame rate (3 messages + 2 invalid_json), then 20 refusals.
    assert len(acks) == 3
    assert [e["code"] for e in errors] == ["invalid_json"] * 2 + ["rate_limited"] * 20
    await still_open(calm, "calm")
    await calm.close()


async def test_a_flood_of_2000_frames_logs_one_line(start_web, chat_users, log_dir):
    """2,000 messages from one user past CHAT_RATE_LIMIT: each refused one is counted
    in chat_frames_refused_total{code="rate_limited"}, and one log line (per user, per
    window) says that the user is being limited."""
    base = await database_sync_to_async(start_web)(
        CHAT_RATE_LIMIT="10/minute", CHAT_FRAME_RATE="", CHAT_FLOOD_CLOSE_AFTER="0"
    )
    server = base.removeprefix("http://")
    refused_before = await database_sync_to_async(metric)(
        base, "chat_frames_refused_total", code="rate_limited"
    )
    alice = await WSClient.connect(server, "flood-log", chat_users["alice"].cookie)
    await alice.expect("history")
    for n in range(2000):
        await alice.send({"message": f"flood {n}", "client_id": f"f{n}"})
    outcomes = []
    for _ in range(2000):
        frame = await alice.expect(lambda f: f.get("type") in ("message.ack", "error"))
        outcomes.append(frame.get("code", "ack"))
    assert outcomes.count("ack") == 10
    assert outcomes.count("rate_limited") == 1990
    await still_open_or_limited(alice)
    refused = await database_sync_to_async(metric)(
        base, "chat_frames_refused_total", code="rate_limited"
    )
    assert refused - refused_before == 1991
    log = server_log(log_dir, base)
    limited = [line for line in log.splitlines() if "rate limited" in line]
    assert len(limited) == 1, limited[:5]
    assert f"User {chat_users['alice'].id} is being rate limited" in limited[0]
    assert len([line for line in log.splitlines() if "WARNING" in line]) == 1
    stored = await database_sync_to_async(Message.objects.count)()
    assert stored == 10
    await alice.close()


async def still_open_or_limited(client: WSClient) -> None:
    """The socket is open: a frame is still answered (here `rate_limited`)."""
    await client.send({"message": "one more", "client_id": "last"})
    error = await client.expect(lambda f: f.get("client_id") == "last")
    assert error["code"] == "rate_limited"


async def test_rate_limit_is_global_across_web_processes(start_web, chat_users):
    """Two web processes sharing Redis enforce one CHAT_RATE_LIMIT per user: 4 +
    4 messages through the two of them make 5 acks, and 5 rows."""
    env = {"CHAT_RATE_LIMIT": "5/minute"}
    first = await database_sync_to_async(start_web)(**env)
    second = await database_sync_to_async(start_web)(**env)
    alice = chat_users["alice"]
    clients = [
        await WSClient.connect(base.removeprefix("http://"), "global", alice.cookie)
        for base in (first, second)
    ]
    for client in clients:
        await client.expect("history")
    outcomes = []
    for i, client in enumerate(clients):
        for n in range(4):  # (a client_id is an idempotency key: one per message)
            await client.send({"message": f"m{n}", "client_id": f"c{i}-{n}"})
        for _ in range(4):
            frame = await client.expect(
                lambda f: f.get("type") in ("message.ack", "error")
            )
            outcomes.append(frame.get("code", "ack"))
    assert outcomes == ["ack"] * 5 + ["rate_limited"] * 3
    assert await database_sync_to_async(Message.objects.count)() == 5
    # bob has his own allowance on both
    bob = await WSClient.connect(
        second.removeprefix("http://"), "global", chat_users["bob"].cookie
    )
    await bob.expect("history")
    await still_open(bob, "bob")
    await asyncio.gather(*(c.close() for c in [*clients, bob]))
