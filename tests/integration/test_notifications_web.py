"""Membership, unread counts, read marks and notifications: the database side
(server-free), and /ws/notifications/ with the real pipeline (servers)."""

from __future__ import annotations

import json
import uuid

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client

from chat import selectors
from chat.models import Message, Notification, Room, RoomMembership, dm_room_name
from chat.schemas import ChatEvent
from chat.services import presence
from chat.services.notifications import (
    NotificationOutcome,
    mentioned_usernames,
    notifications_record,
)
from chat.services.rooms import membership_join, room_get_or_create, room_mark_read

from ..support import WSClient, room_ensure, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def post(room: str, sender: int, content: str, receiver: int | None = None) -> Message:
    """A stored message with the room's next seq (no broadcast, no publication)."""
    room_obj = room_get_or_create(name=room)
    seq = room_obj.next_seq
    Room.objects.filter(pk=room_obj.pk).update(next_seq=seq + 1)
    return Message.objects.create(
        room=room_obj, seq=seq, sender_id=sender, receiver_id=receiver, content=content
    )


def event_of(message: Message) -> ChatEvent:
    """The Kafka event of a stored message."""
    return ChatEvent.from_message(
        Message.objects.select_related("room").get(pk=message.pk)
    )


def record(*messages_or_events) -> NotificationOutcome:
    """notifications_record over these (keys: their position)."""
    events = [
        m if isinstance(m, ChatEvent) else event_of(m) for m in messages_or_events
    ]
    return notifications_record(events=list(enumerate(events)))


def notified(message: Message) -> dict[int, str]:
    """user id -> kind of the notifications of a message."""
    return dict(
        Notification.objects.filter(message_id=message.message_id).values_list(
            "user_id", "kind"
        )
    )


@pytest.mark.parametrize(
    ("content", "names"),
    [
        ("hi @bob", {"bob"}),
        ("@bob, @carol.", {"bob", "carol", "carol."}),
        ("mail bob@example.com", set()),
        ("@@bob", {"@bob"}),  # a user named "@bob"
        ("(@a.b-c+d@e)", {"a.b-c+d@e"}),
        ("no mention", set()),
        ("@", set()),
        ("@بوب hi", {"بوب"}),
    ],
)
def test_mentioned_usernames(content, names):
    """@name by Django's username characters, not inside words or addresses."""
    assert mentioned_usernames(content) == names


def test_dm_notifies_its_receiver_and_mentions_only_mentioned_members(
    chat_users, in_memory_channel_layer
):
    """A DM notifies its receiver; a room message the members it @mentions, not its
    sender, not a mentioned non-member, not members it does not mention."""
    alice, bob, carol = (chat_users[n].id for n in ("alice", "bob", "carol"))
    for user in (alice, bob, carol):
        membership_join(user_id=user, room_name="lobby")
    room_ensure("random")
    membership_join(user_id=alice, room_name="random")
    membership_join(user_id=bob, room_name="random")

    dm = post("lobby", alice, "psst", receiver=bob)
    mention = post("lobby", alice, "hey @bob and @alice and @nobody")
    outsider = post("random", bob, "@carol is not in here, @alice is")
    plain = post("lobby", carol, "hello everyone")
    outcome = record(dm, mention, outsider, plain)

    assert notified(dm) == {bob: "dm"}
    assert notified(mention) == {bob: "mention"}
    assert notified(outsider) == {alice: "mention"}
    assert notified(plain) == {}
    assert len(outcome.accepted) == 4 and not outcome.skipped
    assert {(n.user_id, e.message_id) for n, e, _ in outcome.created} == {
        (bob, dm.message_id),
        (bob, mention.message_id),
        (alice, outsider.message_id),
    }
    assert Notification.objects.count() == 3


def test_recording_twice_creates_nothing_new(chat_users, in_memory_channel_layer):
    """Replays (and the same event twice in one batch) create nothing new."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    membership_join(user_id=bob, room_name="lobby")
    message = post("lobby", alice, "@bob look")
    first = record(message, message)
    assert len(first.created) == 1
    again = record(message)
    assert again.created == [] and len(again.accepted) == 1
    assert Notification.objects.count() == 1


def test_events_naming_unknown_rooms_or_users_are_skipped_with_a_reason(chat_users):
    """An unknown room, sender or receiver skips that event, and only that one."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    good = post("lobby", alice, "hi", receiver=bob)
    base = event_of(good)
    stray = [
        base.model_copy(update={"message_id": uuid.uuid4(), "room": "nowhere"}),
        base.model_copy(update={"message_id": uuid.uuid4(), "sender_id": 999999}),
        base.model_copy(update={"message_id": uuid.uuid4(), "receiver_id": 999998}),
    ]
    outcome = notifications_record(
        events=[("a", stray[0]), ("b", stray[1]), ("good", base), ("c", stray[2])]
    )
    assert outcome.skipped == [
        ("a", "unknown room 'nowhere'"),
        ("b", "unknown sender 999999"),
        ("c", "unknown receiver 999998"),
    ]
    assert [e.message_id for e in outcome.accepted] == [good.message_id]
    assert notified(good) == {bob: "dm"}


def test_unread_counts_for_three_users_in_two_rooms(
    chat_users, in_memory_channel_layer
):
    """Counts derive from last_read_seq: right after new messages and after reads,
    own messages never count, a DM counts for its receiver only."""
    alice, bob, carol = (chat_users[n].id for n in ("alice", "bob", "carol"))
    post("lobby", carol, "before anyone joined")  # joining starts caught up
    for user in (alice, bob, carol):
        membership_join(user_id=user, room_name="lobby")
    room_ensure("random")
    membership_join(user_id=alice, room_name="random")
    membership_join(user_id=bob, room_name="random")

    post("lobby", alice, "one")
    post("lobby", bob, "two")
    post("lobby", alice, "secret", receiver=bob)
    post("random", bob, "three")
    counts = {u: selectors.unread_counts(user_id=u) for u in (alice, bob, carol)}
    assert counts == {
        alice: {"lobby": 1, "random": 1},
        bob: {"lobby": 2, "random": 0},
        carol: {"lobby": 2},
    }

    state = room_mark_read(user_id=bob, room_name="lobby", up_to_seq=3)
    assert state == selectors.RoomReadState("lobby", 3, 4, 1)
    room_mark_read(user_id=carol, room_name="lobby", up_to_seq=999)
    room_mark_read(user_id=alice, room_name="random", up_to_seq=1)
    post("random", alice, "four")
    post("lobby", carol, "five")
    counts = {u: selectors.unread_counts(user_id=u) for u in (alice, bob, carol)}
    assert counts == {
        alice: {"lobby": 2, "random": 0},
        bob: {"lobby": 2, "random": 1},
        carol: {"lobby": 0},
    }
    # a read mark never goes back, and clamps to the room's last message
    room_mark_read(user_id=carol, room_name="lobby", up_to_seq=1)
    assert (
        RoomMembership.objects.get(user_id=carol, room__name="lobby").last_read_seq == 4
    )


def test_reading_a_room_marks_its_notifications_read(
    chat_users, in_memory_channel_layer
):
    """Notifications up to the read mark get read_at; later ones stay unread."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    membership_join(user_id=bob, room_name="lobby")
    first, second = post("lobby", alice, "@bob 1"), post("lobby", alice, "@bob 2")
    record(first, second)
    room_mark_read(user_id=bob, room_name="lobby", up_to_seq=first.seq)
    unread = selectors.notifications_unread(user_id=bob, limit=10)
    assert [n.message_id for n in unread] == [second.message_id]
    assert Notification.objects.get(message_id=first.message_id).read_at is not None


def test_dm_conversation_has_its_two_users_as_members(
    chat_users, in_memory_channel_layer
):
    """The pair's room dm-<low>-<high> is created with both users as members."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    room = room_get_or_create(name=f"dm-{min(alice, bob)}-{max(alice, bob)}")
    assert set(room.memberships.values_list("user_id", flat=True)) == {alice, bob}


def test_room_list_shows_my_rooms_with_counts_and_rooms_to_join(
    chat_users, in_memory_channel_layer
):
    """/ lists the rooms the user belongs to (with unread counts) and others to join;
    opening a room joins it."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    membership_join(user_id=bob, room_name="lobby")
    room_ensure("random")
    membership_join(user_id=bob, room_name="random")
    membership_join(user_id=alice, room_name="lobby")
    post("lobby", bob, "hello")
    client = Client()
    client.force_login(get_user_model().objects.get(pk=alice))
    page = client.get("/").content.decode()
    mine, _, others = page.partition('id="public-heading"')
    assert "/chat/lobby/" in mine and "/chat/random/" not in mine
    assert (
        '<span class="unread" data-room="lobby" title="unread messages">1</span>'
        in mine
    )
    assert "/chat/random/" in others
    assert client.get("/chat/random/").status_code == 200
    assert (
        "/chat/random/"
        in client.get("/").content.decode().partition('id="public-heading"')[0]
    )


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        ("not json", "application/json", 400, "invalid_json"),
        ("[" * 5000 + "]" * 5000, "application/json", 400, "invalid_json"),
        ("[1]", "application/json", 400, "invalid_message"),
        ('{"up_to_seq": -1}', "application/json", 400, "invalid_message"),
        ('{"up_to_seq": "x"}', "application/json", 400, "invalid_message"),
        ('{"up_to_seq": 1e400}', "application/json", 400, "invalid_message"),
        (
            '{"up_to_seq": 99999999999999999999999}',
            "application/json",
            400,
            "invalid_message",
        ),
        ("{}", "application/json", 400, "invalid_message"),
        ("up_to_seq=abc", "application/x-www-form-urlencoded", 400, "invalid_message"),
        ("up_to_seq=1", "application/x-www-form-urlencoded", 200, None),
        ('{"up_to_seq": 1}', "application/json", 200, None),
    ],
)
def test_read_endpoint_answers_garbage_with_a_clear_error(
    chat_users, in_memory_channel_layer, body, content_type, status, code
):
    """POST /chat/<room>/read/: 400 with a code for bad input, never a 500."""
    bob = get_user_model().objects.get(username="bob")
    membership_join(user_id=bob.pk, room_name="lobby")  # a read joins nothing
    post("lobby", chat_users["alice"].id, "hi")
    client = Client()
    client.force_login(bob)
    response = client.post("/chat/lobby/read/", body, content_type=content_type)
    assert response.status_code == status, response.content
    if code:
        assert response.json()["error"] == code
    else:
        assert response.json() == {
            "room": "lobby", "last_read_seq": 1, "latest_seq": 1, "unread": 0
        }  # fmt: skip


def test_read_endpoint_needs_a_logged_in_post_with_csrf(
    chat_users, in_memory_channel_layer
):
    """Anonymous: 401; GET: 405; unknown room: 404; a browser POST needs the token."""
    post("lobby", chat_users["alice"].id, "hi")
    assert Client().post("/chat/lobby/read/", {"up_to_seq": 1}).status_code == 401
    client = Client()
    client.force_login(get_user_model().objects.get(username="bob"))
    assert client.get("/chat/lobby/read/").status_code == 405
    response = client.post("/chat/nowhere/read/", {"up_to_seq": 1})
    assert response.status_code == 404 and response.json()["error"] == "unknown_room"
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(get_user_model().objects.get(username="bob"))
    assert strict.post("/chat/lobby/read/", {"up_to_seq": 1}).status_code == 403


# --- /ws/notifications/ through the real pipeline: uvicorn, Redis, Celery, Kafka, agent


def read_over_http(server: str, cookie: str, room: str, up_to_seq: int) -> dict:
    """POST /chat/<room>/read/ as a browser would: CSRF cookie and header."""
    import urllib.request

    token = "t" * 32  # Django accepts a token we set, if cookie and header agree
    request = urllib.request.Request(
        f"http://{server}/chat/{room}/read/",
        data=json.dumps({"up_to_seq": up_to_seq}).encode(),
        headers={
            "Cookie": f"sessionid={cookie}; csrftoken={token}",
            "X-CSRFToken": token,
            "Content-Type": "application/json",
            "Referer": f"http://{server}/chat/{room}/",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


async def notification_socket(server: str, user) -> WSClient:
    """A /ws/notifications/ connection of a user, past its snapshot frame."""
    client = await WSClient.connect(server, "notifications", user.cookie, path="ws")
    return client


async def test_notifications_socket_refuses_anonymous_and_survives_garbage(
    asgi_server, chat_users
):
    """Anonymous: closed with 4401. Garbage frames: an error frame each, and the
    connection stays open."""
    from websockets.exceptions import ConnectionClosed

    anonymous = await WSClient.connect(asgi_server, "notifications", None, path="ws")
    with pytest.raises(ConnectionClosed) as closed:
        await anonymous.expect("unread", timeout=5)
    assert closed.value.rcvd.code == 4401

    bob = await notification_socket(asgi_server, chat_users["bob"])
    snapshot = await bob.expect("unread")
    assert snapshot == {"type": "unread", "counts": {}, "notifications": []}
    garbage = [
        "not json", "[" * 3000 + "]" * 3000, "[]", '"x"', "{}", b"\x00\xff",
        '{"type": "read"}', '{"type": "read", "up_to_seq": -1, "room": "lobby"}',
        '{"type": "read", "up_to_seq": 1, "room": "no such/room"}',
        '{"type": "read", "up_to_seq": 1, "room": "nowhere"}',
        '{"type": "read", "up_to_seq": 1e999, "room": "lobby"}',
        '{"type": "chat.message", "message": "hi"}',
        '{"type": "read", "up_to_seq": 1, "room": "\\ud800"}',
    ]  # fmt: skip
    for frame in garbage:
        await bob.send(frame)
        error = await bob.expect("error")
        assert error["code"] in {"invalid_json", "invalid_message"}, (frame, error)
    await bob.send(
        {"type": "read", "room": "nowhere", "up_to_seq": 1, "client_id": "r1"}
    )
    assert (await bob.expect("error"))["client_id"] == "r1"
    await bob.close()


async def test_live_notifications_counts_and_reads(
    asgi_server, start_worker, start_agent, chat_users
):
    """DM and mention notifications reach the right users only, as rows and live
    frames; counts follow new messages and reads on every connection of the user;
    a user with the room open gets no notification frame; an offline user finds
    theirs on the next connect."""
    alice_u, bob_u, carol_u = (chat_users[n] for n in ("alice", "bob", "carol"))
    worker = await database_sync_to_async(start_worker)()
    await database_sync_to_async(start_agent)(topic=worker.topic)
    alice = await WSClient.connect(asgi_server, "lobby", alice_u.cookie)
    bob_chat = await WSClient.connect(asgi_server, "lobby", bob_u.cookie)
    carol_chat = await WSClient.connect(asgi_server, "lobby", carol_u.cookie)
    for client in (alice, bob_chat, carol_chat):
        await client.expect("history")
    await carol_chat.close()  # carol is a member, not in the room now
    await wait_for_async(
        lambda: (
            bob_u.id in presence.online_users(room_name="lobby")
            and carol_u.id not in presence.online_users(room_name="lobby")
        )
    )
    bob_notes = [await notification_socket(asgi_server, bob_u) for _ in range(2)]
    carol_notes = await notification_socket(asgi_server, carol_u)
    for client in (*bob_notes, carol_notes):
        assert (await client.expect("unread"))["counts"] == {"lobby": 0}

    async def say(frame: dict) -> dict:
        await alice.send(frame)
        return await alice.expect("message.ack")

    mention = await say({"message": "hi @bob and @carol (not @alice)"})
    for client in bob_notes:
        assert (await client.expect("unread"))["counts"] == {"lobby": 1}
    assert (await carol_notes.expect("unread"))["counts"] == {"lobby": 1}
    note = await carol_notes.expect("notification")
    assert {k: note[k] for k in ("kind", "message_id", "room", "seq", "sender")} == {
        "kind": "mention", "message_id": mention["message_id"], "room": "lobby",
        "seq": 1, "sender": "alice",
    }  # fmt: skip
    dm = await say({"message": "just you", "receiver_id": carol_u.id})
    conversation = dm_room_name(alice_u.id, carol_u.id)  # the DM's own conversation
    assert (dm["room"], dm["seq"]) == (conversation, 1)
    plain = await say({"message": "hello all"})
    note = await carol_notes.expect("notification")
    assert (note["kind"], note["message_id"], note["room"]) == (
        "dm", dm["message_id"], conversation,
    )  # fmt: skip

    def counts(room: str, n: int):
        return lambda f: f["type"] == "unread" and f["counts"].get(room) == n

    await carol_notes.expect(counts(conversation, 1))  # followed since its creation
    await carol_notes.expect(counts("lobby", 2))
    for client in bob_notes:  # the DM is not bob's
        assert (await client.expect("unread"))["counts"] == {"lobby": 2}

    # bob reads on the chat socket: both of his notification sockets hear it
    await bob_chat.send({"type": "read", "up_to_seq": plain["seq"]})
    for client in bob_notes:
        assert (await client.expect("unread"))["counts"] == {"lobby": 0}
        # bob had the room open: no notification frame, only counts
        assert not [f for f in client.unread if f["type"] == "notification"]
    # carol reads the conversation over HTTP
    state = await database_sync_to_async(read_over_http)(
        asgi_server, carol_u.cookie, conversation, dm["seq"]
    )
    assert state == {
        "room": conversation, "last_read_seq": 1, "latest_seq": 1, "unread": 0
    }  # fmt: skip
    await carol_notes.expect(counts(conversation, 0))

    # offline: carol closes everything; alice mentions her; she sees it on return
    await carol_notes.close()
    later = await say({"message": "@carol are you there?"})
    await wait_for_async(
        lambda: Notification.objects.filter(message_id=later["message_id"]).exists()
    )
    carol_notes = await notification_socket(asgi_server, carol_u)
    snapshot = await carol_notes.expect("unread")
    assert snapshot["counts"] == {"lobby": 3, conversation: 0}
    assert [n["message_id"] for n in snapshot["notifications"]] == [
        later["message_id"],
        mention["message_id"],
    ]

    rows = await database_sync_to_async(
        lambda: sorted(
            Notification.objects.values_list("user_id", "seq", "kind", "read_at")
        )
    )()
    assert [(u, s, k, r is not None) for u, s, k, r in rows] == sorted(
        [
            (bob_u.id, 1, "mention", True),
            (carol_u.id, 1, "mention", False),
            (carol_u.id, 1, "dm", True),
            (carol_u.id, 3, "mention", False),
        ]
    )
    for client in (alice, bob_chat, *bob_notes, carol_notes):
        await client.close()


async def wait_for_async(condition, timeout: float = 20.0):
    """wait_for, on a worker thread (conditions that use the ORM or Redis)."""
    return await database_sync_to_async(wait_for)(
        lambda: condition(), timeout, what=str(condition)
    )
