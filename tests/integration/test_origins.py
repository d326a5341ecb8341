"""Strict origins: the exact scheme, host and port the site serves (chat.security.origins)."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from chat.models import Room
from chat.security.origins import origin_allowed

from ..support import WSClient, room_ensure

pytestmark = pytest.mark.django_db(transaction=True)


def scope(origin: str | None, host: str = "127.0.0.1:8000", **extra: object) -> dict:
    """A WebSocket scope with these Origin and Host headers."""
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "scheme": "ws", "headers": headers, **extra}


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("http://localhost:8000", "localhost:8000", True),
        ("HTTP://LOCALHOST:8000", "localhost:8000", True),
        ("http://127.0.0.1:9999", "127.0.0.1:8000", False),  # wrong port
        ("http://localhost:1", "localhost:8000", False),
        ("https://127.0.0.1:8000", "127.0.0.1:8000", False),  # wrong scheme
        ("https://127.0.0.1", "127.0.0.1:8000", False),
        ("http://127.0.0.1", "127.0.0.1:8000", False),  # port 80 is not 8000
        ("http://evil.example:8000", "127.0.0.1:8000", False),  # foreign host
        ("http://evil.example:8000", "evil.example:8000", False),  # not ALLOWED_HOSTS
        ("http://127.0.0.1.evil.example:8000", "127.0.0.1:8000", False),
        ("null", "127.0.0.1:8000", False),  # sandboxed frames, file://
        ("", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8000/path", "127.0.0.1:8000", False),
        ("http://127.0.0.1:notaport", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8000", "", False),
        (None, "127.0.0.1:8000", False),  # no Origin and no ticket
    ],
)
def test_origin_rule(origin, host, allowed, settings):
    """Only the site's own origin (Host in ALLOWED_HOSTS), exactly, is let through."""
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    settings.CSRF_TRUSTED_ORIGINS = []
    settings.WS_ALLOWED_ORIGINS = []
    assert origin_allowed(scope(origin, host)) is allowed


def test_trusted_origins_tls_proxy_and_tickets(settings):
    """CSRF_TRUSTED_ORIGINS and WS_ALLOWED_ORIGINS are exact; behind a TLS proxy the
    site's origin is https; no Origin passes only with a ticket."""
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com"]
    settings.WS_ALLOWED_ORIGINS = ["https://app.example.com:8443"]
    settings.BEHIND_TLS_PROXY = False
    host = "internal:8000"
    assert origin_allowed(scope("https://chat.example.com", host))
    assert origin_allowed(scope("https://chat.example.com:443", host))
    assert origin_allowed(scope("https://app.example.com:8443", host))
    assert not origin_allowed(scope("https://app.example.com", host))
    assert not origin_allowed(scope("http://chat.example.com", host))
    assert not origin_allowed(scope("https://sub.chat.example.com", host))
    proxied = {
        "headers": [
            (b"host", b"chat.example.com"),
            (b"origin", b"https://chat.example.com"),
            (b"x-forwarded-proto", b"https"),
        ]
    }
    settings.CSRF_TRUSTED_ORIGINS = []
    assert not origin_allowed({**scope(None), **proxied})
    settings.BEHIND_TLS_PROXY = True
    assert origin_allowed({**scope(None), **proxied})
    assert origin_allowed(scope(None, query_string=b"ticket=abc"))
    assert not origin_allowed(scope("http://evil.example", query_string=b"ticket=abc"))


async def test_origins_through_the_server(asgi_server, chat_users):
    """Through uvicorn with alice's cookie: wrong port, wrong scheme, a foreign host,
    `null` and no Origin are refused at the handshake (403, no consumer runs); the
    site's own origin gets its history."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    port = asgi_server.rsplit(":", 1)[1]
    headers = {"Cookie": f"sessionid={chat_users['alice'].cookie}"}
    url = f"ws://{asgi_server}/ws/chat/origins/"
    await database_sync_to_async(room_ensure)("origins")
    for origin in (
        "http://127.0.0.1:9999",
        f"https://127.0.0.1:{port}",
        f"http://evil.example:{port}",
        "null",
        None,
    ):
        with pytest.raises(InvalidStatus) as refused:
            await connect(
                url, origin=origin, additional_headers=headers, open_timeout=10
            )
        assert refused.value.response.status_code == 403, origin
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        socket = await connect(
            url.replace("127.0.0.1", "localhost") if "localhost" in origin else url,
            origin=origin,
            additional_headers=headers,
            open_timeout=10,
        )
        client = WSClient(socket)
        assert (await client.expect("history"))["room"] == "origins"
        await client.close()
    rooms = await database_sync_to_async(
        lambda: list(Room.objects.values_list("name", flat=True))
    )()
    assert sorted(rooms) == ["lobby", "origins"]  # refused ones reached no consumer
