"""Private rooms: the services and pages (server-free, Django's test client and an
in-process consumer), then sockets through a real uvicorn (servers)."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from chat import selectors
from chat.agents import ChatValidationError, KafkaChatAgent
from chat.models import Message, Room, RoomMembership, dm_room_name
from chat.services.room_lifecycle import room_create_private
from chat.services.rooms import (
    RoomAccessDenied,
    RoomError,
    membership_join,
    room_get_or_create,
    room_invite,
    room_mark_read,
    room_remove_member,
)
from chatproj.asgi import application

from ..support import WSClient, close_code

pytestmark = pytest.mark.django_db(transaction=True)


def user(name: str):
    """The user of this name."""
    return get_user_model().objects.get(username=name)


def browser(name: str, *, csrf: bool = False) -> Client:
    """A logged-in test client (`csrf`: enforce the CSRF check like a browser)."""
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user(name))
    return client


def members(room: str) -> dict[str, str]:
    """username -> role of a room's members."""
    return dict(
        RoomMembership.objects.filter(room__name=room).values_list(
            "user__username", "role"
        )
    )


@pytest.fixture
def team(chat_users, in_memory_channel_layer) -> Room:
    """`team`: alice's private room, with bob invited; carol is an outsider."""
    room = room_create_private(name="team", created_by_id=chat_users["alice"].id)
    room_invite(room_name="team", username="bob", by_user_id=chat_users["alice"].id)
    return room


# --- services -----------------------------------------------------------------------


def test_creating_a_private_room_makes_its_creator_owner_and_only_member(team):
    """The room is private, records its creator, and has alice (owner) and bob."""
    team.refresh_from_db()
    assert team.is_private and team.created_by == user("alice")
    assert members("team") == {"alice": "owner", "bob": "member"}


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("", "invalid_name"),
        ("has space", "invalid_name"),
        ("x" * 65, "invalid_name"),
        ("../etc", "invalid_name"),
        (None, "invalid_name"),
        ("dm-1-2", "invalid_name"),  # reserved for DM conversations
        ("dm-mine", "invalid_name"),
        ("team", "name_taken"),
        ("lobby", "name_taken"),  # an existing public room
    ],
)
def test_private_room_names_are_checked(team, name, code):
    """Bad, reserved and taken names are refused with a code; nothing is created."""
    room_get_or_create(name="lobby")
    rooms = Room.objects.count()
    with pytest.raises(RoomError) as refused:
        room_create_private(name=name, created_by_id=user("carol").pk)
    assert refused.value.code == code and refused.value.status == 400
    assert Room.objects.count() == rooms
    assert not RoomMembership.objects.filter(user=user("carol")).exists()


def test_who_may_invite_and_remove(team):
    """The owner and staff manage members; a member or an outsider may not."""
    carol, bob = user("carol"), user("bob")
    for by in (bob, carol):  # a member, then an outsider
        with pytest.raises(RoomAccessDenied) as refused:
            room_invite(room_name="team", username="carol", by_user_id=by.pk)
        assert refused.value.code == "forbidden" and refused.value.status == 403
        with pytest.raises(RoomAccessDenied):
            room_remove_member(room_name="team", username="bob", by_user_id=by.pk)
    assert members("team") == {"alice": "owner", "bob": "member"}

    admin = get_user_model().objects.create_user("admin", is_staff=True)
    assert room_invite(room_name="team", username="carol", by_user_id=admin.pk)
    assert not room_invite(  # already a member: nothing changes
        room_name="team", username="carol", by_user_id=admin.pk
    )
    room_remove_member(room_name="team", username="carol", by_user_id=admin.pk)
    assert "admin" not in members("team")  # managing is not joining
    room_remove_member(room_name="team", username="bob", by_user_id=user("alice").pk)
    assert members("team") == {"alice": "owner"}


@pytest.mark.parametrize(
    ("room", "username", "status", "code"),
    [
        ("nowhere", "carol", 404, "unknown_room"),
        ("team", "nobody", 404, "unknown_user"),
        ("team", "", 404, "unknown_user"),
        ("lobby", "carol", 400, "not_private"),
        ("dm", "carol", 403, "forbidden"),
    ],
)
def test_invite_refusals_say_why(team, room, username, status, code):
    """Unknown room or user, a public room, a DM conversation: refused, with a code."""
    alice = user("alice").pk
    membership_join(user_id=alice, room_name="lobby")
    if room == "dm":
        room = dm_room_name(alice, user("bob").pk)
        room_get_or_create(name=room)
    with pytest.raises(RoomError) as refused:
        room_invite(room_name=room, username=username, by_user_id=alice)
    assert (refused.value.status, refused.value.code) == (status, code)
    assert "carol" not in members(room)


def test_remove_refusals_say_why(team):
    """Not a member: 404; the owner cannot be removed, even by staff."""
    alice = user("alice").pk
    with pytest.raises(RoomError) as refused:
        room_remove_member(room_name="team", username="carol", by_user_id=alice)
    assert (refused.value.status, refused.value.code) == (404, "not_member")
    admin = get_user_model().objects.create_user("admin", is_superuser=True)
    for by in (alice, admin.pk):
        with pytest.raises(RoomError) as refused:
            room_remove_member(room_name="team", username="alice", by_user_id=by)
        assert refused.value.code == "owner"
    assert members("team") == {"alice": "owner", "bob": "member"}


def test_opening_joins_a_public_room_but_not_a_private_one(team):
    """membership_join: anyone into a public room; only members into a private one."""
    carol = user("carol").pk
    assert membership_join(user_id=carol, room_name="lobby")
    with pytest.raises(RoomAccessDenied):
        membership_join(user_id=carol, room_name="team")
    assert not membership_join(user_id=user("bob").pk, room_name="team")
    assert "carol" not in members("team")


def test_dm_conversations_are_private_to_their_two_users(
    chat_users, in_memory_channel_layer
):
    """A dm-<a>-<b> room has only its two users; a third one is refused (and
    creates nothing); one of the pair without a row gets it."""
    alice, bob, carol = (chat_users[n].id for n in ("alice", "bob", "carol"))
    name = dm_room_name(alice, bob)
    with pytest.raises(RoomAccessDenied):
        membership_join(user_id=carol, room_name=name)
    assert not Room.objects.filter(name=name).exists()
    membership_join(user_id=alice, room_name=name)
    with pytest.raises(RoomAccessDenied):
        membership_join(user_id=carol, room_name=name)
    room = Room.objects.get(name=name)
    assert room.is_private and set(members(name)) == {"alice", "bob"}
    RoomMembership.objects.filter(room=room, user_id=bob).delete()
    membership_join(user_id=bob, room_name=name)  # healed, by name
    assert set(members(name)) == {"alice", "bob"}
    # A row made behind the services' back is private by its name too.
    assert Room.objects.create(name=dm_room_name(carol, 99999)).is_private


def test_listings_show_private_rooms_to_their_members_only(team):
    """public_rooms never lists a private room or a DM; members see theirs."""
    carol, bob = user("carol").pk, user("bob").pk
    room_get_or_create(name="lobby")
    room_get_or_create(name=dm_room_name(user("alice").pk, bob))
    assert [r.name for r in selectors.public_rooms(user_id=carol)] == ["lobby"]
    assert [r.name for r in selectors.rooms_of_user(user_id=carol)] == []
    assert "team" in [r.name for r in selectors.rooms_of_user(user_id=bob)]
    page = browser("carol").get("/").content.decode()
    assert "/chat/team/" not in page and "/chat/dm-" not in page
    assert "/chat/lobby/" in page
    mine = browser("bob").get("/").content.decode().partition("public-heading")[0]
    assert '/chat/team/">team</a> <span class="badge">private</span>' in mine


def test_read_marks_of_a_private_room_need_membership(team):
    """room_mark_read refuses a non-member and creates no membership for them."""
    with pytest.raises(RoomAccessDenied):
        room_mark_read(user_id=user("carol").pk, room_name="team", up_to_seq=1)
    assert "carol" not in members("team")


async def test_agent_refuses_a_non_member_sender_of_a_private_room(team):
    """send_chat_message to a private room by a non-member: `forbidden`, nothing
    stored, no membership."""
    agent = KafkaChatAgent.get_instance(enabled=False)
    carol = await database_sync_to_async(user)("carol")
    with pytest.raises(ChatValidationError) as refused:
        await agent.send_chat_message(
            sender_id=carol.pk, receiver_id="team", content="let me in"
        )
    assert refused.value.code == "forbidden"
    assert await database_sync_to_async(Message.objects.count)() == 0
    assert "carol" not in await database_sync_to_async(members)("team")


# --- pages and form endpoints --------------------------------------------------------


def test_private_room_pages(team):
    """The owner's page has the member list, remove buttons and the invite form; a
    member's has the list only; an outsider gets a 403 page and joins nothing."""
    owner = browser("alice").get("/chat/team/").content.decode()
    assert 'id="invite"' in owner and 'data-username="bob"' in owner
    assert owner.count(">Remove</button>") == 1  # bob's, not the owner's
    member = browser("bob").get("/chat/team/")
    assert member.status_code == 200
    assert 'data-username="alice"' in member.content.decode()
    assert 'id="invite"' not in member.content.decode()
    outsider = browser("carol").get("/chat/team/")
    assert outsider.status_code == 403
    assert 'data-code="forbidden"' in outsider.content.decode()
    assert "carol" not in members("team")
    public = browser("carol").get("/chat/lobby/").content.decode()
    assert 'id="members"' not in public


def test_private_room_forms_work_and_answer_garbage(team):
    """Create, invite and remove through the forms; garbage gets 400/403/404/405."""
    alice = browser("alice")
    response = alice.post("/rooms/private/", {"name": "ops"})
    assert response.status_code == 302 and response.url == "/chat/ops/"
    assert members("ops") == {"alice": "owner"}
    for body, status in [
        ({}, 400),
        ({"name": "bad name"}, 400),
        ({"name": "ops"}, 400),
        ({"name": "dm-1-2"}, 400),
        ({"name": "x" * 500}, 400),
    ]:
        assert alice.post("/rooms/private/", body).status_code == status, body
    assert alice.get("/rooms/private/").status_code == 405

    response = alice.post("/chat/ops/members/", {"username": "carol"})
    assert response.status_code == 302 and response.url == "/chat/ops/"
    assert members("ops") == {"alice": "owner", "carol": "member"}
    for path, body, status in [
        ("/chat/ops/members/", {}, 400),
        ("/chat/ops/members/", {"username": "   "}, 400),
        ("/chat/ops/members/", {"username": "nobody"}, 404),
        ("/chat/nowhere/members/", {"username": "bob"}, 404),
        ("/chat/ops/members/remove/", {"username": "bob"}, 404),
        ("/chat/ops/members/remove/", {"username": "alice"}, 400),
    ]:
        assert alice.post(path, body).status_code == status, (path, body)
    assert alice.get("/chat/ops/members/").status_code == 405
    assert alice.get("/chat/ops/members/remove/").status_code == 405
    assert (
        browser("carol").post("/chat/ops/members/", {"username": "bob"}).status_code
        == 403
    )  # a member, not the owner
    assert (
        browser("bob")
        .post("/chat/ops/members/remove/", {"username": "carol"})
        .status_code
        == 403
    )  # an outsider
    response = alice.post("/chat/ops/members/remove/", {"username": "carol"})
    assert response.status_code == 302
    assert members("ops") == {"alice": "owner"}


def test_private_room_forms_need_login_and_csrf(team):
    """Anonymous posts go to the login page; a browser post without the CSRF token
    is refused; neither changes anything."""
    anonymous = Client()
    for path in (
        "/rooms/private/",
        "/chat/team/members/",
        "/chat/team/members/remove/",
    ):
        response = anonymous.post(path, {"name": "x", "username": "carol"})
        assert response.status_code == 302 and "/accounts/login/" in response.url
    strict = browser("alice", csrf=True)
    assert strict.post("/rooms/private/", {"name": "x"}).status_code == 403
    assert strict.post("/chat/team/members/", {"username": "carol"}).status_code == 403
    assert (
        strict.post("/chat/team/members/remove/", {"username": "bob"}).status_code
        == 403
    )
    assert not Room.objects.filter(name="x").exists()
    assert members("team") == {"alice": "owner", "bob": "member"}


def test_read_endpoint_refuses_a_non_member_of_a_private_room(team):
    """POST /chat/<private room>/read/ by an outsider: 403 `forbidden`."""
    response = browser("carol").post("/chat/team/read/", {"up_to_seq": 0})
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    assert browser("bob").post("/chat/team/read/", {"up_to_seq": 0}).status_code == 200
    assert "carol" not in members("team")


# --- the consumer, in process ---------------------------------------------------------


async def communicator_for(name: str, room: str) -> WebsocketCommunicator:
    """A connected-or-refused in-process socket of a logged-in user."""
    cookie = await database_sync_to_async(_session_cookie)(name)
    communicator = WebsocketCommunicator(
        application,
        f"/ws/chat/{room}/",
        headers=[
            (b"host", b"127.0.0.1"),
            (b"origin", b"http://127.0.0.1"),
            (b"cookie", cookie.encode()),
        ],
    )
    connected, _ = await communicator.connect()
    assert connected
    return communicator


def _session_cookie(name: str) -> str:
    client = browser(name)
    return f"sessionid={client.cookies['sessionid'].value}"


async def test_consumer_refuses_an_outsider_before_any_frame(team, stack):
    """In process: an outsider's socket to a private room is accepted and closed with
    4403 before any frame (no history), and joins no group."""
    outsider = await communicator_for("carol", "team")
    assert await outsider.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 4403,
    }
    await outsider.wait()
    assert "carol" not in await database_sync_to_async(members)("team")


# --- through the real server: uvicorn, Redis ------------------------------------------


async def test_private_room_through_the_real_server(asgi_server, stack, chat_users):
    """An outsider is closed with 4403 and sees no history; a member chats; removing
    the member closes their open socket with 4403 within seconds, their notification
    socket stops counting the room, and they cannot come back; a public room still
    joins whoever opens it."""
    alice, bob, carol = (chat_users[n] for n in ("alice", "bob", "carol"))
    await database_sync_to_async(room_create_private)(
        name="team", created_by_id=alice.id
    )
    await database_sync_to_async(room_invite)(
        room_name="team", username="bob", by_user_id=alice.id
    )
    owner = await WSClient.connect(asgi_server, "team", alice.cookie)
    await owner.expect("history")
    await owner.send({"message": "the secret plan", "client_id": "c1"})
    await owner.expect("message.ack")

    outsider = await WSClient.connect(asgi_server, "team", carol.cookie)
    code, frames = await close_code(outsider)
    assert code == 4403 and frames == []

    member = await WSClient.connect(asgi_server, "team", bob.cookie)
    history = await member.expect("history")
    assert [m["content"] for m in history["messages"]] == ["the secret plan"]
    notify = await WSClient.connect(asgi_server, "notifications", bob.cookie, "ws")
    assert "team" in (await notify.expect("unread"))["counts"]

    await database_sync_to_async(room_remove_member)(
        room_name="team", username="bob", by_user_id=alice.id
    )
    code, _ = await close_code(member)
    assert code == 4403
    assert (await notify.expect("unread"))["counts"] == {"team": 0}
    await owner.send({"message": "bob is gone", "client_id": "c2"})
    await owner.expect("message.ack")
    again = await WSClient.connect(asgi_server, "team", bob.cookie)
    code, frames = await close_code(again)
    assert code == 4403 and frames == []

    public = await WSClient.connect(asgi_server, "lobby", carol.cookie)
    await public.expect("history")
    assert "carol" in await database_sync_to_async(members)("lobby")
    for client in (owner, notify, public):
        await client.close()


async def test_dm_conversation_is_private_to_its_pair(asgi_server, stack, chat_users):
    """A DM sent through the agent API lands in dm-<low>-<high>: bob reads it there,
    carol is closed with 4403 and sees nothing; the WS DM path still delivers."""
    alice, bob, carol = (chat_users[n] for n in ("alice", "bob", "carol"))
    agent = KafkaChatAgent.get_instance(enabled=False)
    sent = await agent.send_chat_message(
        sender_id=alice.id, receiver_id=bob.id, content="psst, bob"
    )
    room = dm_room_name(alice.id, bob.id)
    assert sent["room"] == room

    snoop = await WSClient.connect(asgi_server, room, carol.cookie)
    code, frames = await close_code(snoop)
    assert code == 4403 and frames == []
    reader = await WSClient.connect(asgi_server, room, bob.cookie)
    history = await reader.expect("history")
    assert [m["content"] for m in history["messages"]] == ["psst, bob"]

    bob_lobby = await WSClient.connect(asgi_server, "lobby", bob.cookie)
    await bob_lobby.expect("history")
    sender = await WSClient.connect(asgi_server, "lobby", alice.cookie)
    await sender.expect("history")
    await sender.send({"message": "direct again", "receiver_id": bob.id})
    frame = await reader.expect("chat.message")  # in the conversation, not the lobby
    assert frame["content"] == "direct again" and frame["receiver_id"] == bob.id
    assert frame["room"] == room and frame["seq"] == 2
    assert set(await database_sync_to_async(members)(room)) == {"alice", "bob"}
    for client in (reader, bob_lobby, sender):
        await client.close()
