"""Helpers of the socket security tests: close codes, metrics, groups, logs, CSRF."""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from .support import WSClient


async def close_code(client: WSClient, timeout: float) -> int | None:
    """The close code the server sends within `timeout` s (frames read meanwhile go to
    client.unread); fails if the socket is still open then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"socket still open after {timeout}s")
            try:
                raw = await asyncio.wait_for(client.connection.recv(), remaining)
            except TimeoutError:
                continue
            client.unread.append(json.loads(raw))
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


async def still_open(client: WSClient, client_id: str) -> None:
    """The socket still chats: a message gets its ack."""
    await client.send({"message": f"still here {client_id}", "client_id": client_id})
    ack = await client.expect(
        lambda f: f.get("type") == "message.ack" and f["client_id"] == client_id
    )
    assert ack["message_id"]


def metric(base: str, name: str, **labels: str) -> float:
    """A sample of the server's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


def group_members(redis_url: str, group: str, backend: str = "pubsub") -> int:
    """Members of a channel-layer group in Redis: subscribers of its Pub/Sub channel
    (pubsub layer), or entries of its sorted set (list layer)."""
    client = redis.Redis.from_url(redis_url)
    if backend == "pubsub":
        [(_, count)] = client.pubsub_numsub(f"asgi__group__{group}")
        return int(count)
    return int(client.zcard(f"asgi:group:{group}"))


def server_log(log_dir: Path, base: str) -> str:
    """What a web server started by `start_web` printed so far."""
    port = base.rsplit(":", 1)[1]
    return (log_dir / f"web-{port}.log").read_text(errors="replace")


def post_form(
    base: str,
    path: str,
    *,
    cookie: str | None,
    data: dict[str, str] | None = None,
    csrf: bool = True,
    method: str = "POST",
) -> tuple[int, Any]:
    """An HTTP request as a browser form would send it (session cookie and Django's
    CSRF cookie + header); (status, JSON body or text). Redirects are not followed."""
    token = secrets.token_hex(16)  # 32 characters: an unmasked CSRF secret
    cookies = [f"csrftoken={token}"] if csrf else []
    if cookie:
        cookies.append(f"sessionid={cookie}")
    headers = {"Cookie": "; ".join(cookies)}
    if csrf:
        headers["X-CSRFToken"] = token
    body = urllib.parse.urlencode(data or {}).encode() if method == "POST" else None
    request = urllib.request.Request(
        base + path, data=body, headers=headers, method=method
    )

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")
