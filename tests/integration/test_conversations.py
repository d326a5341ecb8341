"""Conversations and catch-up: DMs in their own conversation, idempotent sends by
client_id, resume after a seq, older history, presence, people search, sign-up."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from chat import selectors
from chat.models import Message, Room, dm_room_name
from chat.services.messages import client_ids_expire, message_create
from chat.services.room_lifecycle import room_create_private

from ..support import WSClient, read_topic, room_ensure

pytestmark = pytest.mark.django_db(transaction=True)


def browser(name: str) -> Client:
    """A logged-in test client."""
    client = Client()
    client.force_login(get_user_model().objects.get(username=name))
    return client


def send(room: str, sender: int, content: str, **kwargs) -> Message:
    """message_create: stored, broadcast, its publication enqueued."""
    return message_create(
        room_name=room, sender_id=sender, receiver_id=None, content=content, **kwargs
    )


# --- idempotent sends -------------------------------------------------


def test_a_resent_client_id_returns_the_original_and_takes_no_seq(
    chat_users, stack, settings, monkeypatch
):
    """Same sender + client_id within the window: the stored message (replayed), no
    new row, no seq taken. Another sender may use the same key; after the window,
    the key is forgotten and makes a new message."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    first = send("lobby", alice, "hello", client_id="c-1")
    again = send("lobby", alice, "hello (edited?)", client_id="c-1")
    assert again.replayed and not first.replayed
    assert (again.message_id, again.seq, again.content) == (
        first.message_id,
        1,
        "hello",
    )
    assert Room.objects.get(name="lobby").next_seq == 2
    other = send("lobby", bob, "hi", client_id="c-1")
    assert not other.replayed and other.seq == 2
    assert client_ids_expire() == 0  # all inside the window
    later = timezone.now() + timedelta(seconds=settings.CHAT_CLIENT_ID_WINDOW + 1)
    monkeypatch.setattr(
        "chat.services.messages.CLIENT_ID_EXPIRE_CHUNK", 1
    )  # a write turn each
    assert client_ids_expire(now=later) == 2
    assert not Message.objects.filter(client_id__isnull=False).exists()
    fresh = send("lobby", alice, "hello", client_id="c-1")
    assert not fresh.replayed and fresh.seq == 3
    assert Message.objects.count() == 3


def test_a_resent_client_id_rolls_back_its_seq_and_returns_the_first(
    chat_users, stack, settings
):
    """The insert comes first: a resend hits the unique constraint, its transaction
    (seq included) rolls back, and the first message comes back."""
    alice = chat_users["alice"].id
    first = send("lobby", alice, "once", client_id="k")
    again = send("lobby", alice, "once", client_id="k")
    assert again.replayed and again.message_id == first.message_id
    assert Room.objects.get(name="lobby").next_seq == 2  # no gap
    assert send("lobby", alice, "next", client_id="k2").seq == 2
    assert Message.objects.count() == 2


def test_a_client_id_past_the_window_not_yet_swept_makes_a_new_message(
    chat_users, stack, settings
):
    """A key older than the window is free again even before the sweep forgets it."""
    alice = chat_users["alice"].id
    first = send("lobby", alice, "old", client_id="k")
    past = timezone.now() - timedelta(seconds=settings.CHAT_CLIENT_ID_WINDOW + 1)
    Message.objects.filter(pk=first.pk).update(created_at=past)
    fresh = send("lobby", alice, "new", client_id="k")
    assert not fresh.replayed and fresh.seq == 2 and fresh.client_id == "k"
    assert Message.objects.get(pk=first.pk).client_id is None


# --- older history, people search, DM pages, sign-up -----------------


def test_older_history_endpoint_pages_by_seq(chat_users, stack, settings):
    """before_seq pages back (oldest first, has_more), after_seq forward; access as
    for the room; garbage is a 400 with a code."""
    alice = chat_users["alice"].id
    for n in range(1, 8):
        send("lobby", alice, f"m{n}")
    client = browser("bob")
    page = client.get("/chat/lobby/messages/?before_seq=6&limit=3").json()
    assert [m["seq"] for m in page["messages"]] == [3, 4, 5] and page["has_more"]
    page = client.get("/chat/lobby/messages/?before_seq=3&limit=3").json()
    assert [m["seq"] for m in page["messages"]] == [1, 2] and not page["has_more"]
    page = client.get("/chat/lobby/messages/?after_seq=4&limit=2").json()
    assert [m["seq"] for m in page["messages"]] == [5, 6] and page["has_more"]
    latest = client.get("/chat/lobby/messages/").json()
    assert [m["seq"] for m in latest["messages"]] == list(range(1, 8))
    assert latest["messages"][0]["content"] == "m1" and latest["room"] == "lobby"
    for query in (
        "before_seq=0", "before_seq=x", "limit=0", "limit=101", "limit=1e3",
        "before_seq=2&after_seq=1", "after_seq=-1", "bogus=1",
        "before_seq=99999999999999999999999",
    ):  # fmt: skip
        response = client.get(f"/chat/lobby/messages/?{query}")
        assert response.status_code == 400, query
        assert response.json()["error"] == "invalid_message"
    assert client.get("/chat/nowhere/messages/").status_code == 404
    assert Client().get("/chat/lobby/messages/").status_code == 401
    assert client.post("/chat/lobby/messages/").status_code == 405
    room_create_private(name="team", created_by_id=alice)
    response = client.get("/chat/team/messages/")
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    assert browser("alice").get("/chat/team/messages/").status_code == 200


def test_people_search_and_dm_pages(chat_users, in_memory_channel_layer):
    """/api/users/?q= finds other active users by part of their name; /dm/<name>/
    opens the pair's conversation, private to them."""
    client = browser("alice")
    found = client.get("/api/users/?q=O").json()["users"]
    assert [u["username"] for u in found] == ["bob", "carol"]
    assert client.get("/api/users/?q=alice").json() == {"users": []}  # not oneself
    assert client.get("/api/users/?q=" + "x" * 151).status_code == 400
    assert Client().get("/api/users/?q=b").status_code == 401
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    response = client.get("/dm/bob/")
    assert response.url == f"/chat/{dm_room_name(alice, bob)}/"
    assert client.get(response.url).status_code == 200
    assert browser("carol").get(response.url).status_code == 403
    assert client.get("/dm/nobody/").status_code == 404


def test_sign_up_logs_in_and_goes_on(db, in_memory_channel_layer, settings):
    """UserCreationForm: a new account is logged in and sent to `next` (only a local
    one); bad input re-renders with errors; the login page points to sign-up and
    shows the demo hint only in development."""
    room_ensure("lobby")  # as the migrations leave it
    client = Client()
    assert client.get("/accounts/signup/").status_code == 200
    bad = client.post(
        "/accounts/signup/",
        {"username": "dora", "password1": "short", "password2": "other"},
    )
    assert bad.status_code == 400 and not get_user_model().objects.exists()
    response = client.post(
        "/accounts/signup/?next=/chat/lobby/",
        {
            "username": "dora",
            "password1": "a-long-pass-phrase",
            "password2": "a-long-pass-phrase",
            "next": "/chat/lobby/",
        },
    )
    assert response.status_code == 302 and response.url == "/chat/lobby/"
    assert client.get("/chat/lobby/").status_code == 200
    evil = Client().post(
        "/accounts/signup/",
        {"username": "eve", "password1": "a-long-pass-phrase",
         "password2": "a-long-pass-phrase", "next": "https://evil.example/"},
    )  # fmt: skip
    assert evil.url == "/"
    settings.DEBUG = True
    login_page = Client().get("/accounts/login/").content.decode()
    assert 'id="signup-link"' in login_page and 'id="demo-hint"' in login_page
    settings.DEBUG = False
    assert 'id="demo-hint"' not in Client().get("/accounts/login/").content.decode()


# --- over the real server: uvicorn, Redis, a worker, Kafka ---------------------------


async def test_a_dm_lives_in_its_own_conversation(
    asgi_server, start_worker, kafka_bootstrap, chat_users
):
    """A DM sent from a room's socket goes to dm-<low>-<high> with that
    conversation's seq: both users' sockets on the conversation get it, the room's
    sockets do not, and Kafka has it under the pair's key and room."""
    worker = await database_sync_to_async(start_worker)()
    alice_u, bob_u = chat_users["alice"], chat_users["bob"]
    dm = dm_room_name(alice_u.id, bob_u.id)
    alice = await WSClient.connect(asgi_server, "lobby", alice_u.cookie)
    bob_lobby = await WSClient.connect(asgi_server, "lobby", bob_u.cookie)
    carol_lobby = await WSClient.connect(
        asgi_server, "lobby", chat_users["carol"].cookie
    )
    await alice.send({"message": "in the room"})
    assert (await alice.expect("message.ack"))["seq"] == 1
    bob_dm = await WSClient.connect(asgi_server, dm, bob_u.cookie)
    assert (await bob_dm.expect("history"))["messages"] == []
    await alice.send(
        {"message": "just you", "receiver_id": bob_u.id, "client_id": "d1"}
    )
    ack = await alice.expect("message.ack")
    assert (ack["room"], ack["seq"]) == (dm, 1)
    seen = await bob_dm.expect("chat.message")
    assert (seen["message_id"], seen["room"], seen["receiver_id"]) == (
        ack["message_id"], dm, bob_u.id,
    )  # fmt: skip
    # on the conversation's own socket, every message is to the other user
    await bob_dm.send({"message": "back at you"})
    reply = await bob_dm.expect("message.ack")
    assert (reply["room"], reply["seq"]) == (dm, 2)
    for client in (bob_lobby, carol_lobby):
        await client.expect(lambda f: f.get("content") == "in the room")
    await alice.send({"message": "marker"})
    for client in (bob_lobby, carol_lobby):
        await client.expect(lambda f: f.get("content") == "marker")
        assert not [f for f in client.unread if f.get("room") == dm]
    records = await database_sync_to_async(read_topic)(
        kafka_bootstrap, worker.topic, expected=4
    )
    low, high = sorted((alice_u.id, bob_u.id))
    dm_events = [r for r in records if r.key == f"dm:{low}:{high}".encode()]
    assert [json.loads(r.value)["room"] for r in dm_events] == [dm, dm]
    assert [json.loads(r.value)["seq"] for r in dm_events] == [1, 2]
    for client in (alice, bob_lobby, carol_lobby, bob_dm):
        await client.close()


async def test_a_resent_frame_gets_the_original_ack(
    asgi_server, start_worker, chat_users
):
    """A frame resent with a stored client_id (after a reconnect) gets the same
    message_id and seq with duplicate: true; nothing new is stored or broadcast."""
    await database_sync_to_async(start_worker)()
    alice_u = chat_users["alice"]
    alice = await WSClient.connect(asgi_server, "lobby", alice_u.cookie)
    bob = await WSClient.connect(asgi_server, "lobby", chat_users["bob"].cookie)
    await alice.send({"message": "once", "client_id": "k-1"})
    first = await alice.expect("message.ack")
    await bob.expect(lambda f: f.get("content") == "once")
    await alice.close()
    alice = await WSClient.connect(asgi_server, "lobby", alice_u.cookie)
    await alice.send({"message": "once", "client_id": "k-1"})
    again = await alice.expect("message.ack")
    assert again == {**first, "duplicate": True}
    await alice.send({"message": "twice", "client_id": "k-2"})
    await bob.expect(lambda f: f.get("content") == "twice")
    assert not [f for f in bob.unread if f.get("content") == "once"]
    count = await database_sync_to_async(Message.objects.count)()
    assert count == 2
    await alice.close()
    await bob.close()


async def test_resume_sends_every_message_after_a_seq_once(
    asgi_server, chat_users, settings
):
    """?after_seq=n: every visible message after n in pages (more than the history
    size), then live ones, while another user keeps sending: each seq once, none
    missing. The resume frame does the same on an open socket."""
    alice_u, bob_u = chat_users["alice"], chat_users["bob"]
    await database_sync_to_async(
        lambda: [send("lobby", alice_u.id, f"old {n}") for n in range(1, 121)]
    )()
    bob = await WSClient.connect(
        asgi_server, "lobby", bob_u.cookie, query="after_seq=10"
    )
    alice = await WSClient.connect(asgi_server, "lobby", alice_u.cookie)
    await alice.expect("history")

    async def keep_sending() -> None:
        for n in range(30):
            await alice.send({"message": f"live {n}", "client_id": f"l{n}"})
            await alice.expect("message.ack")

    sender = asyncio.create_task(keep_sending())
    seqs: list[int] = []
    pages = []
    while True:
        page = await bob.expect("history")
        pages.append(page)
        seqs += [m["seq"] for m in page["messages"]]
        if page["complete"]:
            break
    await sender
    while len(set(seqs)) < 140:
        frame = await bob.expect("chat.message")
        seqs.append(frame["seq"])
    assert sorted(seqs) == list(range(11, 151)), "each seq after 10 exactly once"
    assert [len(p["messages"]) for p in pages][:2] == [50, 50]
    assert pages[0]["after_seq"] == 10 and pages[1]["after_seq"] == 60
    await bob.send({"type": "resume", "after_seq": 148})
    page = await bob.expect("history")
    assert [m["seq"] for m in page["messages"]] == [149, 150] and page["complete"]
    await bob.send({"type": "resume", "after_seq": -1})
    assert (await bob.expect("error"))["code"] == "invalid_message"
    await bob.close()
    await alice.close()


@pytest.mark.parametrize(
    "query",
    ["after_seq=%C2%B2", "after_seq=" + "9" * 5000, "after_seq=-1", "after_seq=",
     "after_seq=1e3", "after_seq=%D9%A3", "after_seq=99999999999999999999"],
)  # fmt: skip
async def test_a_bad_after_seq_gets_the_latest_history(asgi_server, chat_users, query):
    """A garbage after_seq is ignored (the latest history, has_older) and the socket
    keeps working; it never crashes the connection."""
    client = await WSClient.connect(
        asgi_server, "lobby", chat_users["alice"].cookie, query=query
    )
    history = await client.expect("history")
    assert "has_older" in history and "complete" not in history
    await client.send({"message": "still here", "client_id": "ok"})
    assert (await client.expect("message.ack"))["client_id"] == "ok"
    await client.close()


async def test_presence_says_who_has_the_room_open(asgi_server, chat_users):
    """A presence frame after the history and on every arrival and departure."""
    alice_u, bob_u = chat_users["alice"], chat_users["bob"]
    alice = await WSClient.connect(asgi_server, "lobby", alice_u.cookie)
    first = await alice.expect("presence")
    assert [u["username"] for u in first["online"]] == ["alice"]
    bob = await WSClient.connect(asgi_server, "lobby", bob_u.cookie)
    both = await alice.expect(
        lambda f: f["type"] == "presence" and len(f["online"]) == 2
    )
    assert both["online"] == [
        {"user_id": alice_u.id, "username": "alice"},
        {"user_id": bob_u.id, "username": "bob"},
    ]
    await bob.close()
    alone = await alice.expect(
        lambda f: f["type"] == "presence" and len(f["online"]) == 1
    )
    assert alone["online"][0]["username"] == "alice"
    await alice.close()


def test_history_has_older_and_selector_bounds(chat_users, stack, settings):
    """room_messages_before says whether older messages exist."""
    for n in range(3):
        send("lobby", chat_users["alice"].id, f"m{n}")
    page, older = selectors.room_messages_before(
        room_name="lobby", user_id=chat_users["bob"].id, before_seq=None, limit=2
    )
    assert [m.seq for m in page] == [2, 3] and older
