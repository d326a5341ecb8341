"""The server's half of the heartbeat on a real uvicorn: `ping` is answered with
`pong` and keeps a quiet socket open; a socket that sends nothing for
CHAT_IDLE_TIMEOUT seconds is closed with 4408, and its presence ends for the others
even when the link is frozen and the close cannot reach the client."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from channels.db import database_sync_to_async

from chatproj.embedded import free_port

from ..faults import FaultProxy
from ..security_support import close_code
from ..support import WSClient

pytestmark = pytest.mark.django_db(transaction=True)

IDLE = 3.0  # CHAT_IDLE_TIMEOUT of these tests' server
FAST = {"CHAT_IDLE_TIMEOUT": str(IDLE), "CHAT_HEARTBEAT_INTERVAL": "1"}


def online(frame: dict) -> set[str]:
    """Usernames a presence frame lists."""
    return {u["username"] for u in frame["online"]}


@contextlib.asynccontextmanager
async def heartbeat(client: WSClient, every: float = 0.5):
    """Ping in the background, as the page does while idle."""

    async def beat() -> None:
        while True:
            await client.send({"type": "ping"})
            await asyncio.sleep(every)  # a pace, not a synchronisation

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_silent_sockets_are_closed_and_their_presence_ends(start_web, chat_users):
    """alice never sends: closed with 4408 after CHAT_IDLE_TIMEOUT, not before, and
    bob sees her leave. carol's link freezes behind a proxy (nothing closed, the
    server's close never reaches her): bob sees her leave within CHAT_IDLE_TIMEOUT
    of the freeze all the same."""
    base = await database_sync_to_async(start_web)(**FAST)
    server = base.removeprefix("http://")
    port = int(server.rsplit(":", 1)[1])
    proxy = FaultProxy(free_port(), port).start()
    try:
        bob = await WSClient.connect(server, "lobby", chat_users["bob"].cookie)
        await bob.expect("history")
        async with heartbeat(bob):
            opened = time.monotonic()
            alice = await WSClient.connect(server, "lobby", chat_users["alice"].cookie)
            await alice.expect("history")
            await bob.expect(lambda f: f["type"] == "presence" and "alice" in online(f))
            bob.unread.clear()  # only presence frames from now on count below
            assert await close_code(alice, IDLE + 3) == 4408
            assert time.monotonic() - opened >= IDLE - 0.5
            await bob.expect(
                lambda f: f["type"] == "presence" and "alice" not in online(f)
            )

            carol = await WSClient.connect(
                f"127.0.0.1:{proxy.listen_port}", "lobby", chat_users["carol"].cookie
            )
            await carol.expect("history")
            await bob.expect(lambda f: f["type"] == "presence" and "carol" in online(f))
            bob.unread.clear()
            async with heartbeat(carol):
                await carol.expect("pong")  # the link works, and pings go through
                proxy.freeze()
                frozen = time.monotonic()
            await bob.expect(
                lambda f: f["type"] == "presence" and "carol" not in online(f),
                timeout=IDLE + 3,
            )
            assert time.monotonic() - frozen <= IDLE + 2
            assert carol.connection.close_code is None  # no close reached her
            # and bob, who pings, was never closed
            await bob.send({"message": "still here", "client_id": "b-1"})
            await bob.expect("message.ack")
    finally:
        proxy.stop()


async def test_pings_are_answered_keep_a_socket_open_and_cost_no_messages(
    start_web, chat_users
):
    """A client that only pings stays open past CHAT_IDLE_TIMEOUT, each ping answered
    with `pong`; pings do not use the message allowance (CHAT_RATE_LIMIT 2 per
    minute: both messages after many pings are acked); bad ping frames get an error
    and the socket stays open."""
    base = await database_sync_to_async(start_web)(CHAT_RATE_LIMIT="2/minute", **FAST)
    server = base.removeprefix("http://")
    alice = await WSClient.connect(server, "lobby", chat_users["alice"].cookie)
    await alice.expect("history")
    started = time.monotonic()
    pongs = 0
    while time.monotonic() - started < IDLE * 1.7:
        await alice.send({"type": "ping", "extra": "ignored"})
        await alice.expect("pong", timeout=2)
        pongs += 1
        await asyncio.sleep(0.5)  # a pace, not a synchronisation
    assert pongs >= 8
    for bad, code in (
        ({"type": "PING"}, "invalid_message"),
        ({"type": ["ping"]}, "invalid_message"),
        (b'{"type": "ping"}', "invalid_message"),
        ('{"type": "ping"', "invalid_json"),
    ):
        await alice.send(bad)
        error = await alice.expect("error", timeout=2)
        assert error["code"] == code, (bad, error)
    for n in range(2):
        await alice.send({"message": f"after pings {n}", "client_id": f"p-{n}"})
        await alice.expect("message.ack")
    assert alice.connection.close_code is None


async def test_the_server_asks_a_quiet_socket_and_an_answer_keeps_it_open(
    start_web, chat_users
):
    """A client that never pings but answers the server's `ping` with `pong` (as a
    background tab whose timers are throttled does) is asked after a third of
    CHAT_IDLE_TIMEOUT of silence, and stays open well past CHAT_IDLE_TIMEOUT."""
    base = await database_sync_to_async(start_web)(**FAST)
    server = base.removeprefix("http://")
    alice = await WSClient.connect(server, "lobby", chat_users["alice"].cookie)
    await alice.expect("history")
    opened = time.monotonic()
    asked = []
    while time.monotonic() - opened < IDLE * 2:
        await alice.expect("ping", timeout=IDLE)
        asked.append(time.monotonic() - opened)
        await alice.send({"type": "pong"})
    assert len(asked) >= 4, asked
    assert asked[0] >= IDLE / 3 - 0.3, asked  # asked after a quiet while, not before
    await alice.send({"message": "still open", "client_id": "q-1"})
    await alice.expect("message.ack")
    assert not [f for f in alice.unread if f.get("type") == "error"], alice.unread
