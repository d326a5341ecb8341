"""Membership, unread counts, read marks and notifications: the database side
(server-free), and /ws/notifications/ with the real pipeline (servers)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from chat import selectors, services
from chat.models import Message, Notification, Room, RoomMembership
from chat.schemas import ChatEvent

pytestmark = pytest.mark.django_db(transaction=True)


def post(room: str, sender: int, content: str, receiver: int | None = None) -> Message:
    """A stored message with the room's next seq (no broadcast, no publication)."""
    room_obj = services.room_get_or_create(name=room)
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


def record(*messages_or_events) -> services.NotificationOutcome:
    """notifications_record over these (keys: their position)."""
    events = [
        m if isinstance(m, ChatEvent) else event_of(m) for m in messages_or_events
    ]
    return services.notifications_record(events=list(enumerate(events)))


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
    assert services.mentioned_usernames(content) == names


def test_dm_notifies_its_receiver_and_mentions_only_mentioned_members(
    chat_users, in_memory_channel_layer
):
    """A DM notifies its receiver; a room message the members it @mentions, not its
    sender, not a mentioned non-member, not members it does not mention."""
    alice, bob, carol = (chat_users[n].id for n in ("alice", "bob", "carol"))
    for user in (alice, bob, carol):
        services.membership_join(user_id=user, room_name="lobby")
    services.membership_join(user_id=alice, room_name="random")
    services.membership_join(user_id=bob, room_name="random")

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
    services.membership_join(user_id=bob, room_name="lobby")
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
    outcome = services.notifications_record(
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
        services.membership_join(user_id=user, room_name="lobby")
    services.membership_join(user_id=alice, room_name="random")
    services.membership_join(user_id=bob, room_name="random")

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

    state = services.room_mark_read(user_id=bob, room_name="lobby", up_to_seq=3)
    assert state == selectors.RoomReadState("lobby", 3, 4, 1)
    services.room_mark_read(user_id=carol, room_name="lobby", up_to_seq=999)
    services.room_mark_read(user_id=alice, room_name="random", up_to_seq=1)
    post("random", alice, "four")
    post("lobby", carol, "five")
    counts = {u: selectors.unread_counts(user_id=u) for u in (alice, bob, carol)}
    assert counts == {
        alice: {"lobby": 2, "random": 0},
        bob: {"lobby": 2, "random": 1},
        carol: {"lobby": 0},
    }
    # a read mark never goes back, and clamps to the room's last message
    services.room_mark_read(user_id=carol, room_name="lobby", up_to_seq=1)
    assert (
        RoomMembership.objects.get(user_id=carol, room__name="lobby").last_read_seq == 4
    )


def test_reading_a_room_marks_its_notifications_read(
    chat_users, in_memory_channel_layer
):
    """Notifications up to the read mark get read_at; later ones stay unread."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    services.membership_join(user_id=bob, room_name="lobby")
    first, second = post("lobby", alice, "@bob 1"), post("lobby", alice, "@bob 2")
    record(first, second)
    services.room_mark_read(user_id=bob, room_name="lobby", up_to_seq=first.seq)
    unread = selectors.notifications_unread(user_id=bob, limit=10)
    assert [n.message_id for n in unread] == [second.message_id]
    assert Notification.objects.get(message_id=first.message_id).read_at is not None


def test_dm_conversation_has_its_two_users_as_members(chat_users):
    """The pair's room dm-<low>-<high> is created with both users as members."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    room = services.room_get_or_create(name=f"dm-{min(alice, bob)}-{max(alice, bob)}")
    assert set(room.memberships.values_list("user_id", flat=True)) == {alice, bob}


def test_room_list_shows_my_rooms_with_counts_and_rooms_to_join(
    chat_users, in_memory_channel_layer
):
    """/ lists the rooms the user belongs to (with unread counts) and others to join;
    opening a room joins it."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    services.membership_join(user_id=bob, room_name="lobby")
    services.membership_join(user_id=bob, room_name="random")
    services.membership_join(user_id=alice, room_name="lobby")
    post("lobby", bob, "hello")
    client = Client()
    client.force_login(get_user_model().objects.get(pk=alice))
    page = client.get("/").content.decode()
    mine, _, others = page.partition("Join a room")
    assert "/chat/lobby/" in mine and "/chat/random/" not in mine
    assert (
        '<span class="unread" data-room="lobby" title="unread messages">1</span>'
        in mine
    )
    assert "/chat/random/" in others
    assert client.get("/chat/random/").status_code == 200
    assert (
        "/chat/random/" in client.get("/").content.decode().partition("Join a room")[0]
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
