"""Sockets end with the session, through a real uvicorn: logout, a password change, a
deactivated user, a session deleted behind the socket's back."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client

from ..security_support import close_code, post_form, still_open
from ..support import WSClient

pytestmark = pytest.mark.django_db(transaction=True)

WITHIN = 1.0  # seconds: the requirement, not a guess


def second_session(username: str) -> str:
    """Another logged-in browser of the same user: its session cookie."""
    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    return client.cookies[settings.SESSION_COOKIE_NAME].value


async def open_sockets(server: str, cookie: str, room: str) -> list[WSClient]:
    """A chat socket and a notifications socket of one browser."""
    chat = await WSClient.connect(server, room, cookie)
    notes = await WSClient.connect(server, "notifications", cookie, "ws")
    await chat.expect("history")
    await notes.expect("unread")
    return [chat, notes]


async def test_logout_password_change_and_deactivation_close_sockets(
    asgi_server, chat_users
):
    """Logout closes the sockets of that session (chat and notifications) with 4401
    within a second, not those of the user's other session; a password change closes
    all of the user's sockets; so does is_active=False; bob's stay open throughout."""
    base = f"http://{asgi_server}"
    alice, bob, carol = chat_users["alice"], chat_users["bob"], chat_users["carol"]
    other_cookie = await database_sync_to_async(second_session)("alice")
    first = await open_sockets(asgi_server, alice.cookie, "ends")
    other = await open_sockets(asgi_server, other_cookie, "ends")
    bobs = await open_sockets(asgi_server, bob.cookie, "ends")
    carols = await open_sockets(asgi_server, carol.cookie, "ends")

    status, _ = await database_sync_to_async(post_form)(
        base, "/accounts/logout/", cookie=alice.cookie
    )
    assert status == 302
    for socket in first:
        assert await close_code(socket, WITHIN) == 4401
    await still_open(other[0], "other-session")
    await still_open(bobs[0], "bob-1")

    def change_password() -> None:
        user = get_user_model().objects.get(pk=alice.id)
        user.set_password("a-new-password")
        user.save()

    await database_sync_to_async(change_password)()
    for socket in other:
        assert await close_code(socket, WITHIN) == 4401
    await still_open(bobs[0], "bob-2")

    def deactivate() -> None:
        user = get_user_model().objects.get(pk=carol.id)
        user.is_active = False
        user.save()

    await database_sync_to_async(deactivate)()
    for socket in carols:
        assert await close_code(socket, WITHIN) == 4401
    await still_open(bobs[0], "bob-3")
    # the old cookies open nothing any more
    again = await WSClient.connect(asgi_server, "ends", alice.cookie)
    assert await close_code(again, 5) == 4401
    for socket in bobs:
        await socket.close()


async def test_saving_a_user_without_credential_changes_keeps_sockets(
    asgi_server, chat_users
):
    """A save that changes neither password nor is_active (a name, a login's
    last_login) closes nothing."""
    alice = chat_users["alice"]
    sockets = await open_sockets(asgi_server, alice.cookie, "stays")

    def rename() -> None:
        user = get_user_model().objects.get(pk=alice.id)
        user.first_name = "Alice"
        user.save()
        user.save(update_fields=["last_login"])

    await database_sync_to_async(rename)()
    await still_open(sockets[0], "renamed")
    for socket in sockets:
        await socket.close()


async def test_a_deleted_session_closes_its_sockets_at_the_next_check(
    start_web, chat_users
):
    """A session that ends without a signal (deleted, flushed, expired) closes its
    sockets at their next check (CHAT_SESSION_CHECK_INTERVAL); other users' stay."""
    base = await database_sync_to_async(start_web)(CHAT_SESSION_CHECK_INTERVAL="0.5")
    server = base.removeprefix("http://")
    alice, bob = chat_users["alice"], chat_users["bob"]
    sockets = await open_sockets(server, alice.cookie, "flushed")
    bobs = await open_sockets(server, bob.cookie, "flushed")
    await database_sync_to_async(
        Session.objects.filter(session_key=alice.cookie).delete
    )()
    for socket in sockets:
        assert await close_code(socket, 5) == 4401
    await still_open(bobs[0], "bob")
    for socket in bobs:
        await socket.close()
