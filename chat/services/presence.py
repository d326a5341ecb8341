"""Who has a conversation open: one Redis sorted set per room.

Each open chat connection is a member `<user_id>:<channel_name>` scored with the time
it was last confirmed. A connection refreshes its entry every PRESENCE_TTL / 3 seconds
and removes it when it closes, so an entry left by a process that died expires after
PRESENCE_TTL seconds instead of lingering.
"""

from __future__ import annotations

import time

from django.conf import settings

from chat.infra.clients import redis_client


def _key(room_name: str) -> str:
    return f"chat:presence:{room_name}"


def enter(*, room_name: str, user_id: int, connection: str) -> None:
    """This connection has the room open (call again to refresh it)."""
    client = redis_client()
    key = _key(room_name)
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(key, {f"{user_id}:{connection}": time.time()})
        # the set itself goes when its last connection stopped refreshing
        pipe.expire(key, int(settings.PRESENCE_TTL) + 1)
        pipe.execute()


def leave(*, room_name: str, user_id: int, connection: str) -> None:
    """This connection closed."""
    redis_client().zrem(_key(room_name), f"{user_id}:{connection}")


def online_users(*, room_name: str) -> set[int]:
    """Ids of the users with the room open now."""
    since = time.time() - settings.PRESENCE_TTL
    members: list[bytes] = redis_client().zrangebyscore(  # type: ignore[assignment]
        _key(room_name), since, "+inf"
    )
    return {int(member.split(b":", 1)[0]) for member in members}
