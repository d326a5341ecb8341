"""Tickets for non-browser clients (chat.security.tickets, examples/ws_client.py) through a
real uvicorn: one socket per ticket; expired, reused, forged and stale ones refused."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import urllib.parse

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.core import signing

from chat.models import Message
from chat.security import tickets

from ..security_support import close_code, post_form, still_open
from ..support import ROOT, WSClient, room_ensure

pytestmark = pytest.mark.django_db(transaction=True)


def load_example():
    """examples/ws_client.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "ws_client", ROOT / "examples" / "ws_client.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def with_ticket(server: str, ticket: str, path: str = "ws/chat/tix/") -> WSClient:
    """A socket opened with `?ticket=` and no Origin header, as a script does."""
    from websockets.asyncio.client import connect

    if path.startswith("ws/chat/"):
        await database_sync_to_async(room_ensure)(path.split("/")[2])
    query = urllib.parse.urlencode({"ticket": ticket})
    return WSClient(await connect(f"ws://{server}/{path}?{query}", open_timeout=10))


async def test_example_client_logs_in_and_chats_with_a_ticket(asgi_server, chat_users):
    """The documented script logs in with username and password, gets a ticket and
    sends a message that is stored as alice's."""
    await database_sync_to_async(room_ensure)("scripted")
    result = await database_sync_to_async(subprocess.run)(
        [sys.executable, "examples/ws_client.py", "--url", f"http://{asgi_server}",
         "--user", "alice", "--password", "pw-alice", "--room", "scripted",
         "--send", "hello from a script", "--listen", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '"type": "message.ack"' in result.stdout, result.stdout
    sender = await database_sync_to_async(
        lambda: Message.objects.get(content="hello from a script").sender_id
    )()
    assert sender == chat_users["alice"].id


async def test_a_ticket_opens_one_socket(asgi_server, chat_users):
    """A ticket authenticates its user for one socket; the same ticket again, an
    expired, a forged or a malformed one, or one issued before a password change, is
    closed with 4401 (even with a valid session cookie beside it)."""
    example = load_example()
    base = f"http://{asgi_server}"
    ticket = await database_sync_to_async(example.fetch_ticket)(
        base, "alice", "pw-alice"
    )
    socket = await with_ticket(asgi_server, ticket)
    await socket.expect("history")
    await still_open(socket, "t1")
    stored = await database_sync_to_async(
        lambda: Message.objects.get(content="still here t1").sender_id
    )()
    assert stored == chat_users["alice"].id

    replay = await with_ticket(asgi_server, ticket)
    assert await close_code(replay, 5) == 4401

    alice = await database_sync_to_async(get_user_model().objects.get)(
        pk=chat_users["alice"].id
    )

    class OldSigner(signing.TimestampSigner):
        def timestamp(self) -> str:
            return signing.b62_encode(int(time.time()) - 3600)

    fresh = tickets.ticket_issue(user=alice, session_key=None)
    payload = signing.TimestampSigner(salt=tickets.SALT).unsign_object(fresh)
    expired = OldSigner(salt=tickets.SALT).sign_object(payload)
    other_key = signing.TimestampSigner(key="not-the-secret", salt=tickets.SALT)
    forged = other_key.sign_object({**payload, "n": "forged-nonce"})
    tampered = fresh[:-3] + ("AAA" if not fresh.endswith("AAA") else "BBB")
    wrong_salt = signing.TimestampSigner(salt="other").sign_object(payload)
    for bad in (expired, forged, tampered, wrong_salt, "", "garbage", "x" * 5000,
                "%00\udcff".encode("utf-8", "surrogateescape").decode("latin1")):  # fmt: skip
        refused = await with_ticket(asgi_server, bad)
        assert await close_code(refused, 5) == 4401, bad[:40]

    # A session cookie does not rescue a bad ticket: the ticket decides.
    from websockets.asyncio.client import connect

    both = WSClient(
        await connect(
            f"ws://{asgi_server}/ws/chat/tix/?ticket=garbage",
            additional_headers={"Cookie": f"sessionid={chat_users['alice'].cookie}"},
            open_timeout=10,
        )
    )
    assert await close_code(both, 5) == 4401
    two = WSClient(
        await connect(
            f"ws://{asgi_server}/ws/chat/tix/?ticket=a&ticket=b", open_timeout=10
        )
    )
    assert await close_code(two, 5) == 4401

    # Issued, then the password changed: refused.
    stale = await database_sync_to_async(example.fetch_ticket)(
        base, "alice", "pw-alice"
    )

    def change_password() -> None:
        user = get_user_model().objects.get(pk=chat_users["alice"].id)
        user.set_password("another-one")
        user.save()

    await database_sync_to_async(change_password)()
    refused = await with_ticket(asgi_server, stale)
    assert await close_code(refused, 5) == 4401
    # the socket opened with the first ticket ended with the password change too
    assert await close_code(socket, 5) == 4401


async def test_tickets_open_notification_sockets_and_end_with_logout(
    asgi_server, chat_users
):
    """A ticket opens /ws/notifications/; logging out of the session that asked for
    the ticket closes the ticket's socket (4401), as it closes the browser's."""
    bob = chat_users["bob"]
    base = f"http://{asgi_server}"
    status, body = await database_sync_to_async(post_form)(
        base, "/api/ws-ticket/", cookie=bob.cookie
    )
    assert status == 200 and body["expires_in"] == 30
    notes = await with_ticket(asgi_server, body["ticket"], "ws/notifications/")
    await notes.expect("unread")
    status, _ = await database_sync_to_async(post_form)(
        base, "/accounts/logout/", cookie=bob.cookie
    )
    assert status == 302
    assert await close_code(notes, 1.0) == 4401


async def test_ticket_endpoint_against_garbage(asgi_server, chat_users):
    """POST only, logged in only, CSRF token required; JSON answers."""
    base = f"http://{asgi_server}"
    cookie = chat_users["carol"].cookie
    status, _ = await database_sync_to_async(post_form)(
        base, "/api/ws-ticket/", cookie=cookie, method="GET"
    )
    assert status == 405
    status, _ = await database_sync_to_async(post_form)(
        base, "/api/ws-ticket/", cookie=cookie, csrf=False
    )
    assert status == 403
    status, body = await database_sync_to_async(post_form)(
        base, "/api/ws-ticket/", cookie=None
    )
    assert (status, body["error"]) == (401, "not_authenticated")
    status, body = await database_sync_to_async(post_form)(
        base, "/api/ws-ticket/", cookie="not-a-session", data={"junk": "\x00" * 10}
    )
    assert status == 401
    status, body = await database_sync_to_async(post_form)(
        base, "/api/ws-ticket/", cookie=cookie, data={"user": "1"}
    )
    assert status == 200
    payload = signing.TimestampSigner(salt=tickets.SALT).unsign_object(body["ticket"])
    assert payload["u"] == chat_users["carol"].id  # the session's user, not the form's
