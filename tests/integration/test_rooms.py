"""Rooms made on purpose: creating, the page of a missing room, leaving, topics, the
room directory and mentions that reached no one. Pages and services first (Django's
test client), then sockets through a real uvicorn (servers)."""

from __future__ import annotations

import importlib

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat.models import ROOM_TOPIC_MAX_LENGTH, Room, RoomMembership
from chat.services.room_lifecycle import (
    membership_leave,
    room_create,
    room_member_add,
    room_set_topic,
)
from chat.services.rooms import RoomAccessDenied, RoomError, RoomNotFound
from chat.web.room_views import DIRECTORY_PAGE_SIZE

from ..support import WSClient, close_code

pytestmark = pytest.mark.django_db(transaction=True)


def browser(name: str, *, csrf: bool = False) -> Client:
    """A logged-in test client (`csrf`: enforce the CSRF check like a browser)."""
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(get_user_model().objects.get(username=name))
    return client


def members(room: str) -> dict[str, str]:
    """username -> role of a room's members."""
    return dict(
        RoomMembership.objects.filter(room__name=room).values_list(
            "user__username", "role"
        )
    )


# --- creating, and the page of a room nobody created ---------------------------------


def test_a_missing_room_page_creates_nothing_and_offers_to_create_it(
    chat_users, in_memory_channel_layer
):
    """GET /chat/lobyy/ writes no row: a 404 page names the room, with a POST form
    (CSRF) to create it and a link to the room list."""
    alice = browser("alice")
    page = alice.get("/chat/lobyy/")
    assert page.status_code == 404
    html = page.content.decode()
    assert "There is no room #lobyy" in html
    assert 'action="/rooms/new/"' in html and "csrfmiddlewaretoken" in html
    assert 'href="/"' in html
    assert not Room.objects.filter(name="lobyy").exists()
    assert not RoomMembership.objects.filter(room__name="lobyy").exists()
    reserved = alice.get("/chat/dm-x/")  # not a DM's name, and reserved: no form
    assert (
        reserved.status_code == 404 and "/rooms/new/" not in reserved.content.decode()
    )


def test_the_new_room_form_creates_public_and_private_rooms(
    chat_users, in_memory_channel_layer
):
    """POST /rooms/new/ (CSRF enforced) creates the room with its creator as owner and
    its topic; a taken, reserved or bad name, a bad visibility or topic is refused
    with a clear page and writes nothing."""
    alice = browser("alice", csrf=True)
    form = alice.get("/").content.decode()
    token = form.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    assert alice.post("/rooms/new/", {"name": "x"}).status_code == 403  # no token
    answer = alice.post(
        "/rooms/new/",
        {
            "name": "games",
            "visibility": "public",
            "topic": "  board   games\n",
            "csrfmiddlewaretoken": token,
        },
    )
    assert answer.status_code == 302 and answer.url == "/chat/games/"
    games = Room.objects.get(name="games")
    assert not games.is_private and games.topic == "board games"
    assert members("games") == {"alice": "owner"}
    answer = alice.post(
        "/rooms/new/",
        {"name": "secret", "visibility": "private", "csrfmiddlewaretoken": token},
    )
    assert answer.status_code == 302 and Room.objects.get(name="secret").is_private

    bad = [
        ({"name": "games"}, "name_taken"),
        ({"name": "dm-1-2"}, "invalid_name"),
        ({"name": "no spaces"}, "invalid_name"),
        ({"name": ""}, "invalid_name"),
        ({"name": "ok", "visibility": "secret"}, "invalid_visibility"),
        ({"name": "ok", "topic": "x" * (ROOM_TOPIC_MAX_LENGTH + 1)}, "invalid_topic"),
        ({"name": "ok", "topic": "bell\x07"}, "invalid_topic"),
    ]
    for data, code in bad:
        page = alice.post("/rooms/new/", {**data, "csrfmiddlewaretoken": token})
        assert page.status_code == 400, data
        assert f'data-code="{code}"' in page.content.decode(), data
    assert not Room.objects.filter(name="ok").exists()
    assert Room.objects.filter(name__in=["games", "secret"]).count() == 2


def test_the_lobby_comes_with_the_migrations():
    """Migration 0007 creates the public lobby (so `make run` has one to open); run
    again, it changes nothing."""
    from django.apps import apps

    migration = importlib.import_module("chat.migrations.0007_rooms_topic_lobby")
    Room.objects.filter(name="lobby").delete()  # as on a database before 0007
    migration.create_lobby(apps, None)
    migration.create_lobby(apps, None)
    lobby = Room.objects.filter(name="lobby").values_list("is_private", flat=True)
    assert list(lobby) == [False]


# --- leaving --------------------------------------------------------------------------


def test_leave_removes_the_membership_and_the_sidebar_entry(
    chat_users, in_memory_channel_layer
):
    """POST /chat/<room>/leave/ ends the membership and goes home; the room is gone
    from the sidebar and the user's rooms, still listed (joinable) among the public
    rooms; opening it again rejoins it. Leaving twice, or a DM, is refused."""
    bob = browser("bob")
    room_create(name="games", created_by_id=chat_users["alice"].id, is_private=False)
    assert bob.get("/chat/games/").status_code == 200
    assert "bob" in members("games")
    answer = bob.post("/chat/games/leave/")
    assert answer.status_code == 302 and answer.url == "/"
    assert "bob" not in members("games")
    home = bob.get("/").content.decode()
    assert 'data-room="games"' in home  # in the public list…
    assert 'href="/chat/games/">Join</a>' in home
    assert '<li data-room="games">' not in home  # …not in the sidebar
    assert bob.post("/chat/games/leave/").status_code == 404
    assert bob.post("/chat/nowhere/leave/").status_code == 404
    assert bob.get("/chat/games/leave/").status_code == 405
    bob.get("/chat/games/")
    assert "bob" in members("games")
    dm = bob.get("/dm/alice/", follow=True)
    room = dm.redirect_chain[-1][0].split("/")[2]
    page = bob.post(f"/chat/{room}/leave/")
    assert page.status_code == 400 and "direct_conversation" in page.content.decode()


def test_a_private_rooms_owner_leaving_passes_it_on(
    chat_users, in_memory_channel_layer
):
    """The owner of a private room leaves: the longest-standing other member owns it;
    the last member leaves an empty room."""
    alice, bob, carol = (chat_users[n].id for n in ("alice", "bob", "carol"))
    room_create(name="team", created_by_id=alice, is_private=True)
    room_member_add(room_name="team", username="bob", by_user_id=alice)
    room_member_add(room_name="team", username="carol", by_user_id=alice)
    membership_leave(user_id=alice, room_name="team")
    assert members("team") == {"bob": "owner", "carol": "member"}
    membership_leave(user_id=carol, room_name="team")
    membership_leave(user_id=bob, room_name="team")
    assert members("team") == {}
    with pytest.raises(RoomNotFound):
        membership_leave(user_id=bob, room_name="team")


# --- topics ---------------------------------------------------------------------------


def test_topic_rules(chat_users, in_memory_channel_layer):
    """A public room's members set its topic, outsiders do not; a private room's owner
    does, its members do not; the page shows it; bad topics are refused."""
    alice, bob, carol = (chat_users[n].id for n in ("alice", "bob", "carol"))
    room_create(name="games", created_by_id=alice, is_private=False)
    room_create(name="team", created_by_id=alice, is_private=True)
    room_member_add(room_name="team", username="bob", by_user_id=alice)
    room_member_add(room_name="games", username="bob", by_user_id=alice)
    assert room_set_topic(room_name="games", topic=" chess\tand go ", by_user_id=bob)
    assert Room.objects.get(name="games").topic == "chess and go"
    with pytest.raises(RoomAccessDenied):
        room_set_topic(room_name="games", topic="spam", by_user_id=carol)
    with pytest.raises(RoomAccessDenied):
        room_set_topic(room_name="team", topic="mine now", by_user_id=bob)
    room_set_topic(room_name="team", topic="the plan", by_user_id=alice)
    too_long = "x" * (ROOM_TOPIC_MAX_LENGTH + 1)
    for garbage in (None, 5, ["x"], too_long, "a\x00b", "\ud800", "a\u2066b"):
        with pytest.raises(RoomError) as refused:
            room_set_topic(room_name="games", topic=garbage, by_user_id=bob)
        assert refused.value.code == "invalid_topic"
    page = browser("bob").get("/chat/games/").content.decode()
    assert '<p id="room-topic" dir="auto">chess and go</p>' in page
    assert 'action="/chat/games/topic/"' in page
    page = browser("bob").get("/chat/team/").content.decode()
    assert "the plan" in page and 'action="/chat/team/topic/"' not in page
    answer = browser("bob").post("/chat/games/topic/", {"topic": ""})
    assert answer.status_code == 302 and Room.objects.get(name="games").topic == ""
    refused = browser("carol").post("/chat/team/topic/", {"topic": "x"})
    assert refused.status_code == 403
    for garbage in ("x" * 100_000, "\x00", "a\u202eb"):
        page = browser("bob").post("/chat/games/topic/", {"topic": garbage})
        assert page.status_code == 400 and 'data-code="invalid_topic"' in (
            page.content.decode()
        )
    assert (
        browser("bob").post("/chat/nowhere/topic/", {"topic": "x"}).status_code == 404
    )
    assert Room.objects.get(name="games").topic == ""


# --- the directory --------------------------------------------------------------------


def test_the_home_page_lists_public_rooms_with_counts(
    chat_users, in_memory_channel_layer
):
    """Public rooms (never private ones or DMs) with topic, member count and a joined
    mark, busiest first; `q` filters on name or topic; pages of DIRECTORY_PAGE_SIZE."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    room_create(name="quiet", created_by_id=alice, is_private=False, topic="shh")
    room_create(name="busy", created_by_id=bob, is_private=False, topic="chess")
    room_member_add(room_name="busy", username="carol", by_user_id=bob)
    room_create(name="hidden", created_by_id=alice, is_private=True)
    html = browser("alice").get("/").content.decode()
    public = html.split('id="public-rooms"')[1].split("</table>")[0]
    assert public.index('data-room="busy"') < public.index('data-room="quiet"')
    assert 'data-room="hidden"' not in public and "dm-" not in public
    busy_row = public.split('data-room="busy"')[1].split("</tr>")[0]
    assert '<td class="num">2</td>' in busy_row and "chess" in busy_row
    assert "Join</a>" in busy_row
    quiet_row = public.split('data-room="quiet"')[1].split("</tr>")[0]
    assert "joined" in quiet_row
    mine = html.split('id="my-rooms"')[1].split("</table>")[0]
    assert 'data-room="quiet"' in mine and 'data-room="hidden"' in mine
    assert 'data-room="busy"' not in mine

    found = browser("alice").get("/?q=CHESS").content.decode()
    assert (
        'data-room="busy"' in found
        and 'data-room="quiet"'
        not in found.split('id="public-rooms"')[1].split("</table>")[0]
    )
    nothing = browser("alice").get("/?q=nomatch").content.decode()
    assert "No public room matches" in nothing
    garbage = browser("alice").get("/", {"q": "\x00" * 500, "page": "-9"})
    assert garbage.status_code == 200

    Room.objects.bulk_create(
        Room(name=f"r{n:03}") for n in range(DIRECTORY_PAGE_SIZE + 5)
    )
    first = browser("alice").get("/").content.decode()
    assert "Page 1 of 2" in first and 'rel="next"' in first
    assert public_rows(first) == DIRECTORY_PAGE_SIZE
    second = browser("alice").get("/?page=2").content.decode()
    assert public_rows(second) == 8  # 25 more, busy, quiet and lobby: 28 in all


def public_rows(html: str) -> int:
    """How many rooms the page's public-rooms table lists."""
    return html.split('id="public-rooms"')[1].split("</table>")[0].count("<tr data-")


# --- sockets through the real server --------------------------------------------------


async def test_a_socket_to_a_missing_room_is_refused(asgi_server, stack, chat_users):
    """/ws/chat/lobyy/ closes with 4404 before any frame, and creates no room."""
    client = await WSClient.connect(
        asgi_server, "lobyy", chat_users["alice"].cookie, create_room=False
    )
    code, frames = await close_code(client)
    assert code == 4404 and frames == []
    assert not await database_sync_to_async(Room.objects.filter(name="lobyy").exists)()


async def test_leaving_closes_the_users_other_sockets(asgi_server, stack, chat_users):
    """Bob leaves a room: his open socket to it closes (4403), his notification
    socket stops counting it; alice's socket to the room is untouched."""
    alice, bob = chat_users["alice"], chat_users["bob"]
    await database_sync_to_async(room_create)(
        name="games", created_by_id=alice.id, is_private=False
    )
    a = await WSClient.connect(asgi_server, "games", alice.cookie)
    b = await WSClient.connect(asgi_server, "games", bob.cookie)
    await a.expect("history")
    await b.expect("history")
    notify = await WSClient.connect(asgi_server, "notifications", bob.cookie, "ws")
    assert "games" in (await notify.expect("unread"))["counts"]
    await database_sync_to_async(membership_leave)(user_id=bob.id, room_name="games")
    code, _ = await close_code(b)
    assert code == 4403
    assert (await notify.expect("unread"))["counts"] == {"games": 0}
    await a.send({"message": "still here", "client_id": "c1"})
    await a.expect("message.ack")
    for client in (a, notify):
        await client.close()


async def test_a_topic_change_reaches_the_rooms_sockets(asgi_server, stack, chat_users):
    """Setting the topic sends `room.topic` to everyone with the room open."""
    alice, bob = chat_users["alice"], chat_users["bob"]
    await database_sync_to_async(room_create)(
        name="games", created_by_id=alice.id, is_private=False
    )
    b = await WSClient.connect(asgi_server, "games", bob.cookie)
    await b.expect("history")
    await database_sync_to_async(room_set_topic)(
        room_name="games", topic="chess night", by_user_id=alice.id
    )
    frame = await b.expect("room.topic")
    assert frame == {
        "type": "room.topic",
        "room": "games",
        "topic": "chess night",
        "by": "alice",
    }
    await b.close()


async def test_a_mention_of_a_non_member_tells_the_sender(
    asgi_server, stack, chat_users
):
    """@carol in a room carol is not in: the sender gets `mention.unreached` naming
    her (may_add: a public room's member may add people); @bob, a member, and
    @nobody, no user, are not named; a message without mentions gets none. In a
    private room only its owner may add."""
    alice, bob = chat_users["alice"], chat_users["bob"]
    await database_sync_to_async(room_create)(
        name="games", created_by_id=alice.id, is_private=False
    )
    await database_sync_to_async(room_member_add)(
        room_name="games", username="bob", by_user_id=alice.id
    )
    a = await WSClient.connect(asgi_server, "games", alice.cookie)
    await a.expect("history")
    await a.send({"message": "hi @bob, @carol and @nobody.", "client_id": "m1"})
    ack = await a.expect("message.ack")
    frame = await a.expect("mention.unreached")
    assert frame == {
        "type": "mention.unreached",
        "room": "games",
        "message_id": ack["message_id"],
        "usernames": ["carol"],
        "may_add": True,
    }
    await a.send({"message": "no mention here", "client_id": "m2"})
    await a.send({"message": "@bob only", "client_id": "m3"})
    await a.send({"message": "hi @carol", "client_id": "m1"})  # a resend: no repeat
    for client_id in ("m2", "m3"):
        await a.expect(lambda f, c=client_id: acked(f, c))
    await a.expect(lambda f: acked(f, "m1") and f.get("duplicate"))
    await a.send({"message": "marker", "client_id": "m4"})
    await a.expect(lambda f: acked(f, "m4"))
    assert not [f for f in a.unread if f["type"] == "mention.unreached"]

    await database_sync_to_async(room_create)(
        name="team", created_by_id=alice.id, is_private=True
    )
    await database_sync_to_async(room_member_add)(
        room_name="team", username="bob", by_user_id=alice.id
    )
    b = await WSClient.connect(asgi_server, "team", bob.cookie)
    await b.expect("history")
    await b.send({"message": "@carol should see this", "client_id": "t1"})
    frame = await b.expect("mention.unreached")
    assert frame["usernames"] == ["carol"] and frame["may_add"] is False
    for client in (a, b):
        await client.close()


def acked(frame: dict, client_id: str) -> bool:
    """Whether the frame is the ack of this client_id."""
    return frame["type"] == "message.ack" and frame["client_id"] == client_id


def test_the_unreached_check_is_one_query(chat_users, in_memory_channel_layer):
    """The check costs a message with mentions of members one query, and a message
    without mentions none (more only when someone was not reached)."""
    from chat.models import Message
    from chat.realtime.mentions import _unreached

    alice = get_user_model().objects.get(username="alice")
    room = room_create(name="games", created_by_id=alice.pk, is_private=False)
    plain = Message(room=room, sender=alice, seq=1, content="no mentions")
    with CaptureQueriesContext(connection) as queries:
        assert _unreached(message=plain) is None
    assert len(queries) == 0
    members_only = Message(room=room, sender=alice, seq=2, content="@alice hi")
    with CaptureQueriesContext(connection) as queries:
        assert _unreached(message=members_only) is None
    assert len(queries) == 1


def test_adding_people_to_a_public_room(chat_users, in_memory_channel_layer):
    """POST /chat/<room>/members/ (the notice's Invite button): a public room's member
    adds a user; an outsider cannot; an unknown user is a 404."""
    alice = chat_users["alice"].id
    room_create(name="games", created_by_id=alice, is_private=False)
    answer = browser("alice").post("/chat/games/members/", {"username": "carol"})
    assert answer.status_code == 302 and "carol" in members("games")
    refused = browser("bob").post("/chat/games/members/", {"username": "bob"})
    assert refused.status_code == 403 and "bob" not in members("games")
    unknown = browser("alice").post("/chat/games/members/", {"username": "zed"})
    assert unknown.status_code == 404
    assert (
        browser("alice").post("/chat/nowhere/members/", {"username": "bob"}).status_code
        == 404
    )
