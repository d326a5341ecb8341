"""CHAT_MAX_CONNECTIONS_PER_USER: one Redis sorted set per user of their open sockets.

Each open socket (chat or notifications, in any web process) is a member scored with
the time it was last confirmed; it refreshes every PRESENCE_TTL / 3 seconds and leaves
when it closes, so the sockets of a process that died stop counting after PRESENCE_TTL
seconds instead of locking their user out.
"""

from __future__ import annotations

import time

from django.conf import settings

from chat.infra.clients import redis_client


def _key(user_id: int) -> str:
    return f"chat:connections:{user_id}"


def connection_open(*, user_id: int, connection: str) -> int:
    """Count this socket in; return how many the user has open, this one included."""
    now = time.time()
    key = _key(user_id)
    with redis_client().pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(key, "-inf", now - settings.PRESENCE_TTL)
        pipe.zadd(key, {connection: now})
        pipe.zcard(key)
        pipe.expire(key, int(settings.PRESENCE_TTL) + 1)
        count: int = pipe.execute()[2]
    return count


def connection_refresh(*, user_id: int, connection: str) -> None:
    """This socket is still open (call every PRESENCE_TTL / 3 seconds)."""
    key = _key(user_id)
    with redis_client().pipeline(transaction=False) as pipe:
        pipe.zadd(key, {connection: time.time()}, xx=True)
        pipe.expire(key, int(settings.PRESENCE_TTL) + 1)
        pipe.execute()


def connection_close(*, user_id: int, connection: str) -> None:
    """This socket closed (or was refused)."""
    redis_client().zrem(_key(user_id), connection)


def connections_open(*, user_id: int) -> int:
    """How many sockets the user has open now (for tests and operators)."""
    since = time.time() - settings.PRESENCE_TTL
    count: int = redis_client().zcount(_key(user_id), since, "+inf")  # type: ignore[assignment]
    return count
