"""Abuse and hardening (issue 22, points 10-16): canonical DM names, reads that
write no membership; server-free with Django's test client, then sockets through a
real uvicorn (servers)."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client

from chat.models import Room, RoomMembership, dm_room_name
from chat.services.rooms import (
    RoomError,
    membership_join,
    room_get_or_create,
    room_mark_read,
)

from ..security_support import close_code, still_open
from ..support import WSClient, room_ensure, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def browser(name: str) -> Client:
    """A logged-in test client."""
    client = Client()
    client.force_login(get_user_model().objects.get(username=name))
    return client


# --- DM names: only dm-<low>-<high> ---------------------------------------------------


def non_canonical(low: int, high: int) -> list[str]:
    """Names that spell the pair (low, high) other than dm_room_name's."""
    return [
        f"dm-{high}-{low}",
        f"dm-0{low}-{high}",
        f"dm-{low}-00{high}",
        f"dm-{low}-{high}-",
        f"dm--{low}-{high}",
        "dm-0-0",
        f"dm-{low}-{'9' * 40}",
    ]


def test_only_the_canonical_dm_name_opens_a_conversation(
    chat_users, in_memory_channel_layer
):
    """dm-3-1, dm-01-3, dm-1-003 and friends are no room: the page is a 404, the
    services refuse them, and nothing is created or joined."""
    alice, carol = chat_users["alice"].id, chat_users["carol"].id
    low, high = sorted((alice, carol))
    for name in non_canonical(low, high):
        response = browser("alice").get(f"/chat/{name}/")
        assert response.status_code == 404, name
        assert b"dm-&lt;lower user id&gt;-&lt;higher user id&gt;" in response.content
        with pytest.raises(RoomError) as refused:
            membership_join(user_id=alice, room_name=name)
        assert refused.value.code == "unknown_room"
        with pytest.raises(RoomError):
            room_get_or_create(name=name)
    assert not Room.objects.filter(name__startswith="dm-").exists()
    assert not RoomMembership.objects.filter(room__name__startswith="dm-").exists()
    canonical = dm_room_name(alice, carol)
    assert browser("alice").get(f"/chat/{canonical}/").status_code == 200
    assert set(
        RoomMembership.objects.filter(room__name=canonical).values_list(
            "user_id", flat=True
        )
    ) == {alice, carol}


def test_only_its_two_users_create_a_dm_conversation(
    chat_users, in_memory_channel_layer
):
    """A third user opening alice and bob's conversation (or one with a user who
    does not exist) creates nothing: no room, no entry in alice's sidebar."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    assert browser("carol").get(f"/chat/{dm_room_name(alice, bob)}/").status_code == 403
    missing = f"dm-{alice}-{alice + bob + 1000}"
    assert browser("alice").get(f"/chat/{missing}/").status_code == 404
    assert not Room.objects.filter(name__startswith="dm-").exists()
    assert dm_room_name(alice, bob) not in browser("alice").get("/").content.decode()


async def test_a_socket_to_a_non_canonical_dm_name_is_closed_4404(
    asgi_server, chat_users
):
    """Through uvicorn: the socket is closed with 4404 (no such room) before any
    frame, and no room or membership is written."""
    alice, carol = chat_users["alice"], chat_users["carol"]
    low, high = sorted((alice.id, carol.id))
    for name in (f"dm-{high}-{low}", f"dm-0{low}-{high}", f"dm-{low}-00{high}"):
        client = await WSClient.connect(
            asgi_server, name, alice.cookie, create_room=False
        )
        assert await close_code(client, 10) == 4404
        assert client.unread == []
    dm_rooms = Room.objects.filter(name__startswith="dm-")
    assert not await database_sync_to_async(dm_rooms.exists)()


# --- reads write no membership --------------------------------------------------------


def test_a_read_of_a_public_room_never_opened_joins_nothing(
    chat_users, in_memory_channel_layer
):
    """POST /chat/<room>/read/ by a non-member of a public room: 404 `not_member`
    and no membership; after opening the room, reads work."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    membership_join(user_id=alice, room_name="lobby")
    response = browser("bob").post("/chat/lobby/read/", {"up_to_seq": 0})
    assert response.status_code == 404, response.content
    assert response.json()["error"] == "not_member"
    with pytest.raises(RoomError):
        room_mark_read(user_id=bob, room_name="lobby", up_to_seq=0)
    assert not RoomMembership.objects.filter(user_id=bob).exists()
    membership_join(user_id=bob, room_name="lobby")
    assert browser("bob").post("/chat/lobby/read/", {"up_to_seq": 0}).status_code == 200


async def test_a_read_frame_on_the_notification_socket_joins_nothing(
    asgi_server, chat_users
):
    """A `read` frame for a public room the user never opened gets a `not_member`
    error frame, the socket stays open, and no membership is written."""
    alice, bob = chat_users["alice"], chat_users["bob"]
    await database_sync_to_async(membership_join)(user_id=alice.id, room_name="lobby")
    client = await WSClient.connect(asgi_server, "notifications", bob.cookie, path="ws")
    await client.expect("unread")
    await client.send({"type": "read", "room": "lobby", "up_to_seq": 0})
    error = await client.expect("error")
    assert error["code"] == "not_member"
    await client.send({"type": "read", "room": "lobby", "up_to_seq": "garbage"})
    assert (await client.expect("error"))["code"] == "invalid_message"
    exists = RoomMembership.objects.filter(user_id=bob.id).exists
    assert not await database_sync_to_async(exists)()
    await client.close()


# --- credential changes from any process close sockets at once ------------------------

WITHIN = 2.0  # seconds after the changing process exits: the requirement

# (what changes, the manage.py arguments, what goes to its stdin)
OUTSIDE_CHANGES = {
    "set_password": (
        ["shell", "-c", (
            "from django.contrib.auth import get_user_model; "
            "u = get_user_model().objects.get(username='alice'); "
            "u.set_password('a-new-long-pass-phrase'); u.save()"
        )],
        "",
    ),
    "deactivate": (
        ["shell", "-c", (
            "from django.contrib.auth import get_user_model; "
            "u = get_user_model().objects.get(username='alice'); "
            "u.is_active = False; u.save()"
        )],
        "",
    ),
    "changepassword": (
        ["changepassword", "alice"],
        "a-new-long-pass-phrase\na-new-long-pass-phrase\n",
    ),
}  # fmt: skip


def run_manage(process_env: dict[str, str], args: list[str], stdin: str) -> None:
    """A short `manage.py` process against the test database; it must succeed.
    No controlling terminal, so getpass reads the piped stdin."""
    import subprocess
    import sys

    from ..support import ROOT

    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        input=stdin,
        env=process_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("change", sorted(OUTSIDE_CHANGES))
async def test_a_credential_change_in_a_short_process_closes_sockets_at_once(
    asgi_server, process_env, chat_users, change
):
    """A password set or a deactivation from `manage.py shell`, or `manage.py
    changepassword`, closes the user's chat and notification sockets with 4401
    within 2 s of the process's exit (not at the next periodic check); bob's stay."""
    import time

    alice, bob = chat_users["alice"], chat_users["bob"]
    chat = await WSClient.connect(asgi_server, "lobby", alice.cookie)
    notes = await WSClient.connect(asgi_server, "notifications", alice.cookie, "ws")
    bobs = await WSClient.connect(asgi_server, "lobby", bob.cookie)
    await chat.expect("history")
    await notes.expect("unread")
    await bobs.expect("history")
    args, stdin = OUTSIDE_CHANGES[change]
    await database_sync_to_async(run_manage, thread_sensitive=False)(
        process_env, args, stdin
    )
    exited = time.monotonic()
    assert await close_code(chat, WITHIN) == 4401
    assert await close_code(notes, WITHIN) == 4401
    assert time.monotonic() - exited < WITHIN
    await still_open(bobs, "bob-still-here")


# --- tickets stay out of the server's log ---------------------------------------------


async def test_a_ticket_never_reaches_the_servers_log(asgi_server, chat_users, log_dir):
    """uvicorn logs a socket's path with its query: the ticket's value is replaced
    by `[redacted]` there (other parameters stay), for good and bad tickets alike."""
    import urllib.parse
    import uuid

    from websockets.asyncio.client import connect

    from chat.security.tickets import ticket_issue

    alice = await database_sync_to_async(get_user_model().objects.get)(
        pk=chat_users["alice"].id
    )
    room = f"tixlog{uuid.uuid4().hex[:8]}"
    await database_sync_to_async(room_ensure)(room)
    good = await database_sync_to_async(ticket_issue)(user=alice, session_key=None)
    bad = good[:-6] + "AAAAAA"
    for ticket in (good, bad):
        query = urllib.parse.urlencode({"after_seq": 0, "ticket": ticket})
        client = WSClient(
            await connect(
                f"ws://{asgi_server}/ws/chat/{room}/?{query}", open_timeout=10
            )
        )
        await client.expect("history") if ticket is good else None
        await client.close()
    log_path = log_dir / "web.log"

    def logged() -> str:
        text = log_path.read_text(errors="replace")
        return text if text.count(room) >= 2 else ""

    text = await database_sync_to_async(wait_for, thread_sensitive=False)(
        logged, 10, what="the sockets' log lines"
    )
    lines = [line for line in text.splitlines() if f"/ws/chat/{room}/" in line]
    assert len(lines) == 2, lines
    assert all("?after_seq=0&ticket=[redacted]" in line for line in lines), lines
    for ticket in (good, bad):
        for part in ticket.split(":"):
            assert part not in text


# --- sign-up: passwords, look-alike usernames, per address ----------------------------


def sign_up(username: str, password: str, address: str = "127.0.0.1"):
    """POST the sign-up form from `address`; the response."""
    return Client(REMOTE_ADDR=address).post(
        "/accounts/signup/",
        {"username": username, "password1": password, "password2": password},
    )


def test_sign_up_refuses_weak_passwords(db, in_memory_channel_layer):
    """Django's four validators: common, numeric, too short, like the username."""
    for username, password, says in [
        ("dora", "password", "too common"),
        ("dora", "12345678", "entirely numeric"),
        ("dora", "a-b-c", "too short"),
        ("dorabella", "dorabella", "too similar to the username"),
    ]:
        response = sign_up(username, password)
        assert response.status_code == 400, password
        assert says in response.content.decode(), password
    assert not get_user_model().objects.exists()
    assert sign_up("dora", "a-long-pass-phrase").status_code == 302


@pytest.mark.parametrize(
    ("username", "code"),
    [
        ("\u0430lice", "mixes letters of different scripts"),  # Cyrillic а, Latin lice
        ("alic\u0435", "mixes letters of different scripts"),  # Latin alic, Cyrillic е
        ("aIice", "looks like an existing"),  # capital i for l
        ("a1ice", "looks like an existing"),  # digit one for l
        ("\u0441\u043e\u0441\u043e", "looks like an existing"),  # Cyrillic сосо
        ("\uff41\uff4c\uff49\uff43\uff45", "already exists"),  # fullwidth: NFKC alice
        ("ALICE", "already exists"),  # Django's own case check
    ],
)
def test_sign_up_refuses_look_alike_usernames(db, username, code):
    """Mixed scripts and skeletons (TR39) of existing names are refused with a
    message saying why, and nothing is created (so no look-alike in the people
    search)."""
    for existing in ("alice", "coco"):
        get_user_model().objects.create(username=existing)
    response = sign_up(username, "a-long-pass-phrase")
    assert response.status_code == 400
    assert code in response.content.decode().replace("&#x27;", "'")
    assert get_user_model().objects.count() == 2


def test_the_look_alike_check_is_one_lookup_whatever_the_number_of_users(
    db, django_assert_num_queries
):
    """Each saved user's skeleton is stored (also a rename, also a user made outside
    the form); the check is one indexed query, not a scan of the users."""
    from chat.models import UsernameSkeleton
    from chat.security.usernames import username_check

    users = [get_user_model().objects.create(username=f"user{n}") for n in range(50)]
    users[0].username = "coco"
    users[0].save()
    assert UsernameSkeleton.objects.count() == 50
    with django_assert_num_queries(1):
        username_check("fresh_name")
    with pytest.raises(ValidationError), django_assert_num_queries(1):
        username_check("\u0441\u043e\u0441\u043e")  # Cyrillic сосо
    users[1].last_login = users[1].date_joined
    with django_assert_num_queries(1):  # a save of other fields leaves it alone
        users[1].save(update_fields=["last_login"])


def test_sign_up_accepts_names_of_one_script_and_shows_the_rule(
    db, in_memory_channel_layer
):
    """One script per name, any script; the form's help text states the rule."""
    from chat.security.usernames import RULE

    get_user_model().objects.create(username="alice")
    assert RULE in Client().get("/accounts/signup/").content.decode()
    for name in ("\u0414\u043c\u0438\u0442\u0440\u0438\u0439", "bob_99", "al.ice2"):
        assert sign_up(name, "a-long-pass-phrase").status_code == 302, name


def test_sign_up_is_throttled_per_address(db, in_memory_channel_layer, settings):
    """SIGNUP_RATE_PER_ADDRESS accounts from one address, then 429 in plain words
    with nothing created; another address still signs up. On by default."""
    assert settings.SIGNUP_RATE_PER_ADDRESS
    settings.SIGNUP_RATE_PER_ADDRESS = "3/hour"
    for n in range(3):
        assert sign_up(f"user{n}", "a-long-pass-phrase", "10.0.0.1").status_code == 302
    refused = sign_up("user3", "a-long-pass-phrase", "10.0.0.1")
    assert refused.status_code == 429
    assert (
        "Too many accounts were created from your address" in refused.content.decode()
    )
    assert not get_user_model().objects.filter(username="user3").exists()
    assert sign_up("user3", "a-long-pass-phrase", "10.0.0.2").status_code == 302


# --- password spraying: failed logins per address, across usernames ------------------


def test_one_password_across_many_usernames_is_throttled_per_address(
    db, settings, caplog
):
    """25 usernames, one wrong password each, from one address (no lockout per
    username): from the 21st on the login form answers 429, even for a right
    password, logged once; another address still logs in. Default limits."""
    from django.contrib.auth.hashers import make_password

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    for n in range(25):
        get_user_model().objects.create(
            username=f"u{n}", password=make_password(f"right-{n}")
        )
    limit = int(settings.LOGIN_FAILURES_PER_ADDRESS.split("/")[0])
    assert limit == 20

    def log_in(username: str, password: str, address: str = "10.1.1.1"):
        client = Client(REMOTE_ADDR=address)
        response = client.post(
            "/accounts/login/", {"username": username, "password": password}
        )
        return response.status_code, "_auth_user_id" in client.session

    statuses = [log_in(f"u{n}", "Summer2026!")[0] for n in range(25)]
    assert statuses == [200] * limit + [429] * (25 - limit)
    status, logged_in = log_in("u0", "right-0")
    assert status == 429 and not logged_in
    assert log_in("u0", "right-0", address="10.1.1.2") == (302, True)
    throttled = [r for r in caplog.records if "Throttled: failed logins" in r.message]
    assert len(throttled) == 1


# --- connection churn: connects per user per window -----------------------------------


async def test_connects_per_user_are_limited_and_logged_once_per_window(
    start_web, log_dir, chat_users
):
    """Past CHAT_CONNECT_RATE connects (chat and notification sockets together) a
    user's socket is closed with 4429 and a reason saying why, before any frame;
    the server writes one line per admitted socket, none per refused one, and one
    line for the window; another user connects as usual."""
    import time

    from websockets.exceptions import ConnectionClosed

    from ..security_support import server_log

    base = await database_sync_to_async(start_web, thread_sensitive=False)(
        CHAT_CONNECT_RATE="10/minute"
    )
    server = base.removeprefix("http://")
    alice, bob = chat_users["alice"], chat_users["bob"]
    admitted, refused = 0, []
    started = time.monotonic()
    for n in range(40):
        path, room = ("ws", "notifications") if n % 2 else ("ws/chat", "churn")
        client = await WSClient.connect(server, room, alice.cookie, path=path)
        try:
            first = await client.expect(lambda f: True, timeout=10)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            refused.append((closed.rcvd.code, closed.rcvd.reason))
            continue
        assert first["type"] in ("history", "unread")
        admitted += 1
        await client.close()
    elapsed = time.monotonic() - started
    assert admitted == 10, (admitted, refused)
    assert {code for code, _ in refused} == {4429}
    assert "Too many connects: at most 10 per 1 minute" in refused[0][1]
    bobs = await WSClient.connect(server, "churn", bob.cookie)
    await bobs.expect("history")
    await bobs.close()

    def logged() -> str:
        text = server_log(log_dir, base)
        return text if text.count("/ws/chat/churn/") >= 6 else ""

    text = await database_sync_to_async(wait_for, thread_sensitive=False)(
        logged, 10, what="bob's socket in the log"
    )
    assert text.count("Throttled: socket connects of user") == 1, text[-3000:]
    assert text.count('"WebSocket /ws/') == 11  # alice's 10 admitted and bob's
    assert "connection open" not in text
    print(f"40 connects in {elapsed:.2f} s: {admitted} admitted, {len(refused)} 4429")


async def test_sign_up_throttle_holds_across_web_processes(start_web, chat_users):
    """Two uvicorn processes count one address's sign-ups together (shared Redis):
    past SIGNUP_RATE_PER_ADDRESS either answers 429 in plain words."""
    from ..security_support import post_form

    def start() -> str:
        return start_web(SIGNUP_RATE_PER_ADDRESS="2/hour")

    first = await database_sync_to_async(start, thread_sensitive=False)()
    second = await database_sync_to_async(start, thread_sensitive=False)()

    def sign_up_at(base: str, username: str) -> tuple[int, object]:
        password = "a-long-pass-phrase"
        return post_form(
            base, "/accounts/signup/", cookie=None,
            data={"username": username, "password1": password, "password2": password},
        )  # fmt: skip

    post = database_sync_to_async(sign_up_at, thread_sensitive=False)
    assert (await post(first, "dora"))[0] == 302
    assert (await post(second, "erin"))[0] == 302
    status, body = await post(first, "fred")
    assert status == 429 and "Too many accounts were created" in str(body)
    assert (await post(second, "gina"))[0] == 429
    names = get_user_model().objects.values_list("username", flat=True)
    assert set(await database_sync_to_async(list)(names)) == {
        "alice", "bob", "carol", "dora", "erin"
    }  # fmt: skip


async def test_a_user_over_the_connection_cap_is_logged_once(
    start_web, log_dir, chat_users
):
    """Past CHAT_MAX_CONNECTIONS_PER_USER open sockets, each more is closed with
    4429 and a reason; the refusals write one log line, none from the server."""
    from websockets.exceptions import ConnectionClosed

    from ..security_support import server_log

    base = await database_sync_to_async(start_web, thread_sensitive=False)(
        CHAT_MAX_CONNECTIONS_PER_USER="2"
    )
    server = base.removeprefix("http://")
    alice = chat_users["alice"]
    kept = [await WSClient.connect(server, "capped", alice.cookie) for _ in range(2)]
    for client in kept:
        await client.expect("history")
    reasons = []
    for _ in range(6):
        client = await WSClient.connect(server, "capped", alice.cookie)
        with pytest.raises(ConnectionClosed) as closed:
            await client.expect("history", timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
        reasons.append(closed.value.rcvd.reason)
    assert set(reasons) == {
        "Too many open sockets: at most 2 per user; close one first."
    }
    for client in kept:
        await client.close()
    text = server_log(log_dir, base)
    assert text.count(f"User {alice.id} has 2 sockets open; refusing more") == 1
    assert text.count('"WebSocket /ws/chat/capped/') == 2
