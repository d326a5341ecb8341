"""A Redis that demands a password (docker compose's requirepass): every Redis client
of the product reaches it through the URL form compose builds, and nothing without."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import kombu
import pytest
import redis
from channels_redis.pubsub import RedisPubSubChannelLayer
from limits.storage import storage_from_string
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatproj import kombu_poison
from chatproj.embedded import EmbeddedServer, free_port, redis_command


@pytest.fixture
def password_redis() -> Iterator[tuple[int, str]]:
    """An embedded Redis-compatible server with requirepass; (port, password)."""
    port, password = free_port(), secrets.token_urlsafe(24)
    command = [*redis_command(port), "--requirepass", password]
    with EmbeddedServer(command, port, "valkey-auth"):
        yield port, password


@pytest.mark.servers
async def test_every_redis_client_authenticates_with_the_compose_url(password_redis):
    """redis-py, the Celery transport, the channel layer and the rate-limit storage
    work with redis://:<password>@host/0; a client without it is refused."""
    port, password = password_redis
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    no_retry = Retry(NoBackoff(), 0)  # redis-py retries a refused AUTH for seconds
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, retry=no_retry).ping()
    assert redis.Redis.from_url(url).ping()

    with kombu.Connection(url, transport=kombu_poison.Transport) as connection:
        queue = connection.SimpleQueue("auth-probe")
        queue.put({"ok": 1})
        message = queue.get(timeout=5)
        assert message.payload == {"ok": 1}
        message.ack()
        queue.close()

    layer = RedisPubSubChannelLayer(hosts=[url])
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "probe"})
    assert (await layer.receive(channel))["type"] == "probe"
    await layer.flush()

    storage = storage_from_string(f"async+{url}", implementation="redispy")
    assert await storage.check()
