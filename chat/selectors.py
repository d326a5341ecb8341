"""Reads."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Q, QuerySet

from .models import UNPUBLISHED_STATUSES, Message, Room


def user_exists(*, user_id: int) -> bool:
    """Whether a user with this id exists."""
    return get_user_model().objects.filter(pk=user_id).exists()


def user_get(*, user_id: int) -> Any | None:
    """The user with this id, or None."""
    return get_user_model().objects.filter(pk=user_id).first()


def room_exists(*, name: str) -> bool:
    """Whether a room of this name exists."""
    return Room.objects.filter(name=name).exists()


def room_list() -> QuerySet[Room]:
    """All rooms, by name."""
    return Room.objects.order_by("name")


def room_history(*, room_name: str, user_id: int, limit: int) -> list[Message]:
    """The latest `limit` messages of a room that this user may see, oldest first."""
    visible = Q(receiver__isnull=True) | Q(sender_id=user_id) | Q(receiver_id=user_id)
    latest = (
        Message.objects.filter(visible, room__name=room_name)
        .select_related("room", "sender")
        .order_by("-seq")[:limit]
    )
    return list(reversed(latest))


class PublishState(NamedTuple):
    """What a publish task needs to know first about its message."""

    room_id: int
    room_name: str
    status: str


def message_publish_state(*, message_id: str) -> PublishState | None:
    """Conversation and status of a message (one indexed read), or None if unknown.

    Plain SQL: the ORM spent most of a repeated publish task's time compiling it.
    """
    field = Message._meta.get_field("message_id")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT m.room_id, r.name, m.status FROM {Message._meta.db_table} m "
            f"JOIN {Room._meta.db_table} r ON r.id = m.room_id "
            "WHERE m.message_id = %s",
            [field.get_db_prep_value(message_id, connection)],
        )
        row = cursor.fetchone()
    return PublishState(*row) if row else None


def messages_unpublished(*, room_id: int, limit: int) -> list[Message]:
    """The conversation's first `limit` messages still to publish, in seq order.

    Plain SQL (the partial index message_unpublished serves it): the ORM's query
    compilation was a third of a publish task's time.
    """
    statuses = ", ".join("%s" for _ in UNPUBLISHED_STATUSES)
    return list(
        Message.objects.raw(
            "SELECT id, message_id, room_id, seq, sender_id, receiver_id, content, "
            "created_at, status, attempts, sweep_count "
            f"FROM {Message._meta.db_table} "
            f"WHERE room_id = %s AND status IN ({statuses}) ORDER BY seq LIMIT %s",
            [room_id, *UNPUBLISHED_STATUSES, limit],
        )
    )


def message_for_publish(*, message_id: str) -> Message:
    """A message with what its event and its status frame need."""
    return Message.objects.select_related("room", "sender").get(message_id=message_id)


def messages_pending_publish(*, now: datetime, grace: timedelta) -> QuerySet[Message]:
    """Pending or failed messages whose sweep is due, oldest first.

    Due means: past `next_sweep_at` (set by each attempt and each sweep), or, for a
    message no worker ever touched, created more than `grace` ago.
    """
    due = Q(next_sweep_at__lte=now) | Q(
        next_sweep_at__isnull=True, created_at__lte=now - grace
    )
    return Message.objects.filter(
        due, status__in=[Message.Status.PENDING, Message.Status.FAILED]
    ).order_by("created_at")


def messages_dead() -> QuerySet[Message]:
    """Messages that can never be published as they are, oldest first."""
    return (
        Message.objects.filter(status=Message.Status.DEAD)
        .select_related("room", "sender")
        .order_by("created_at")
    )
