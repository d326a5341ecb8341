"""What the conversation page reads from the server (issue 22): /favicon.ico, the
room's member names for @-autocomplete, the mentions page and the reader's read
mark on the room page."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from chat.models import Notification, dm_room_name
from chat.services.room_lifecycle import room_create_private
from chat.services.rooms import (
    membership_join,
    room_get_or_create,
    room_mark_read,
)

from ..support import room_ensure
from .test_notifications_web import post

pytestmark = pytest.mark.django_db(transaction=True)


def client_of(name: str) -> tuple[Client, int]:
    """A logged-in test client of a new user, and the user's id (and the lobby, which
    the tests open)."""
    room_ensure("lobby")
    user = get_user_model().objects.create_user(username=name, password="pw")
    client = Client()
    client.force_login(user)
    return client, user.pk


def test_favicon_ico_is_served_as_an_icon(asgi_server):
    """GET /favicon.ico (what browsers ask for) ends at the icon: 200, an icon's
    content type and bytes."""
    with urllib.request.urlopen(f"http://{asgi_server}/favicon.ico", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] in ("image/x-icon", "image/vnd.microsoft.icon")
        assert r.read(4) == b"\x00\x00\x01\x00"  # the ICO header


def test_member_names_are_for_members_only(stack):
    """/chat/<room>/members.json lists a room's members by name to its members: 403
    for others, 404 for an unknown room, 401 without a login, 405 for a POST, and
    garbage in the path matches no route."""
    alice, alice_id = client_of("alice")
    bob, bob_id = client_of("bob")
    carol, _ = client_of("carol")
    for user_id in (bob_id, alice_id):
        membership_join(user_id=user_id, room_name="lobby")
    answer = alice.get("/chat/lobby/members.json")
    assert answer.status_code == 200
    assert answer.json() == {"room": "lobby", "members": ["alice", "bob"]}

    room_create_private(name="team", created_by_id=alice_id)
    assert alice.get("/chat/team/members.json").json()["members"] == ["alice"]
    refused = carol.get("/chat/team/members.json")
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert carol.get("/chat/lobby/members.json").status_code == 403  # not joined
    dm = dm_room_name(alice_id, bob_id)
    room_get_or_create(name=dm)
    assert bob.get(f"/chat/{dm}/members.json").json()["members"] == ["alice", "bob"]
    assert carol.get(f"/chat/{dm}/members.json").status_code == 403

    missing = alice.get("/chat/nowhere/members.json")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_room"
    assert Client().get("/chat/lobby/members.json").status_code == 401
    assert alice.post("/chat/lobby/members.json").status_code == 405
    for path in (
        "/chat/<x>/members.json",
        "/chat/lobby/members.json/x",
        "/chat/%00/members.json",
    ):
        assert alice.get(path).status_code == 404


def test_mentions_page_lists_only_the_users_own_newest_first(stack):
    """/mentions/ lists the user's DMs and @mentions, read or not, newest first, each
    linking to the message in its room; never another user's; login required."""
    alice, alice_id = client_of("alice")
    bob, bob_id = client_of("bob")
    for user_id in (alice_id, bob_id):
        membership_join(user_id=user_id, room_name="lobby")
    dm = dm_room_name(alice_id, bob_id)
    said = [
        post("lobby", bob_id, "@alice <b>look</b>"),
        post(dm, bob_id, "a direct word", receiver=alice_id),
        post("lobby", alice_id, "@bob only for bob"),
    ]
    kinds = [Notification.Kind.MENTION, Notification.Kind.DM, Notification.Kind.MENTION]
    for message, kind, user_id in zip(
        said, kinds, (alice_id, alice_id, bob_id), strict=True
    ):
        Notification.objects.create(
            user_id=user_id,
            message_id=message.message_id,
            room=message.room,
            seq=message.seq,
            kind=kind,
        )
    room_mark_read(user_id=alice_id, room_name="lobby", up_to_seq=1)

    page = alice.get("/mentions/")
    assert page.status_code == 200
    html = page.content.decode()
    links = re.findall(r'<a href="(/chat/[^"]+)">([^<]+)</a>', html)
    assert links == [(f"/chat/{dm}/#seq-1", "bob (direct message)"),
                     ("/chat/lobby/#seq-1", "bob in #lobby")]  # fmt: skip
    assert "&lt;b&gt;look&lt;/b&gt;" in html  # text, escaped
    assert "only for bob" not in html
    assert "script-src 'self'" in page["Content-Security-Policy"]
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []  # no inline script
    assert html.count('class="badge">new<') == 1  # the lobby mention was read
    assert "only for bob" in bob.get("/mentions/").content.decode()
    anonymous = Client().get("/mentions/")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    assert alice.post("/mentions/").status_code == 405


def test_room_page_carries_the_readers_read_mark(stack):
    """The room page holds the reader's read mark as JSON data, for the "New
    messages" line."""
    alice, alice_id = client_of("alice")
    bob, bob_id = client_of("bob")
    membership_join(user_id=alice_id, room_name="lobby")
    for i in range(3):
        post("lobby", bob_id, f"m{i}")
    room_mark_read(user_id=alice_id, room_name="lobby", up_to_seq=1)
    html = alice.get("/chat/lobby/").content.decode()
    found = re.search(
        r'<script id="last-read-seq" type="application/json">(.*?)<', html
    )
    assert found is not None and json.loads(found.group(1)) == 1
    fresh = bob.get("/chat/lobby/").content.decode()  # a new member is caught up
    assert '<script id="last-read-seq" type="application/json">3<' in fresh
