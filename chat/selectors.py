"""Reads."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from chat.models import (
    DM_ROOM_PREFIX,
    UNPUBLISHED_STATUSES,
    Message,
    Notification,
    Room,
    RoomMembership,
)


def user_exists(*, user_id: int) -> bool:
    """Whether a user with this id exists."""
    return get_user_model().objects.filter(pk=user_id).exists()


def user_get(*, user_id: int) -> Any | None:
    """The user with this id, or None."""
    return get_user_model().objects.filter(pk=user_id).first()


def room_exists(*, name: str) -> bool:
    """Whether a room of this name exists."""
    return Room.objects.filter(name=name).exists()


def rooms_of_user(*, user_id: int) -> QuerySet[Room]:
    """The rooms this user belongs to, by name."""
    return Room.objects.filter(memberships__user_id=user_id).order_by("name")


def room_get(*, name: str) -> Room | None:
    """The room of this name, or None."""
    return Room.objects.filter(name=name).first()


def room_may_manage(*, user: Any, room: Room) -> bool:
    """Whether the user may invite and remove members: the room's owner, or staff."""
    if user.is_staff or user.is_superuser:
        return True
    return RoomMembership.objects.filter(
        user_id=user.pk, room=room, role=RoomMembership.Role.OWNER
    ).exists()


def private_room_names(*, user_id: int) -> set[str]:
    """Names of the private rooms (DM conversations included) this user belongs to."""
    return set(
        Room.objects.filter(is_private=True, memberships__user_id=user_id).values_list(
            "name", flat=True
        )
    )


def room_members(*, room: Room) -> list[tuple[str, str]]:
    """(username, role) of a room's members: owners first, then by name."""
    rows = RoomMembership.objects.filter(room=room).values_list(
        "user__username", "role"
    )
    return sorted(rows, key=lambda row: (row[1] != RoomMembership.Role.OWNER, row[0]))


class RoomReadState(NamedTuple):
    """Where one member stands in one room."""

    room: str
    last_read_seq: int
    latest_seq: int  # the room's last seq when this was read
    unread: int


def _unread_messages(user_id: int) -> QuerySet[Message]:
    # Messages after the member's read mark that the user may see and did not send.
    # (filter() in one call: the membership join is the same row for both conditions.)
    visible = Q(receiver__isnull=True) | Q(receiver_id=user_id)
    return (
        Message.objects.filter(
            room__memberships__user_id=user_id,
            seq__gt=F("room__memberships__last_read_seq"),
        )
        .filter(visible)
        .exclude(sender_id=user_id)
    )


def read_states(*, user_id: int, room_name: str | None = None) -> list[RoomReadState]:
    """Read mark, latest seq and unread count of each room of the user (or of one).

    Counts derive from `last_read_seq`: one grouped count, nothing stored per message.
    """
    memberships = RoomMembership.objects.filter(user_id=user_id)
    unread = _unread_messages(user_id)
    if room_name is not None:
        memberships = memberships.filter(room__name=room_name)
        unread = unread.filter(room__name=room_name)
    counts = dict(unread.values_list("room__name").annotate(n=Count("id")).order_by())
    return [
        RoomReadState(name, last_read, next_seq - 1, counts.get(name, 0))
        for name, last_read, next_seq in memberships.values_list(
            "room__name", "last_read_seq", "room__next_seq"
        ).order_by("room__name")
    ]


def unread_counts(*, user_id: int) -> dict[str, int]:
    """Unread messages per room of the user (every room they belong to)."""
    return {state.room: state.unread for state in read_states(user_id=user_id)}


def notifications_unread(*, user_id: int, limit: int) -> list[Notification]:
    """The user's latest unread notifications, newest first."""
    return list(
        Notification.objects.filter(user_id=user_id, read_at__isnull=True)
        .select_related("room")
        .order_by("-created_at", "-id")[:limit]
    )


def notifications_recent(*, user_id: int, limit: int) -> list[Notification]:
    """The user's latest notifications, read or not, newest first."""
    return list(
        Notification.objects.filter(user_id=user_id)
        .select_related("room")
        .order_by("-created_at", "-id")[:limit]
    )


def room_is_member(*, user_id: int, room: Room) -> bool:
    """Whether the user is a member of the room."""
    return RoomMembership.objects.filter(user_id=user_id, room=room).exists()


def room_member_names(*, room: Room, limit: int) -> list[str]:
    """Usernames of a room's active members, by name (at most `limit`)."""
    return list(
        RoomMembership.objects.filter(room=room, user__is_active=True)
        .order_by("user__username")
        .values_list("user__username", flat=True)[:limit]
    )


def messages_by_id(*, message_ids: list[Any]) -> dict[str, Message]:
    """Messages (with room and sender) by their message_id string."""
    return {
        str(m.message_id): m
        for m in Message.objects.filter(message_id__in=message_ids).select_related(
            "room", "sender"
        )
    }


def notifications_with_messages(
    notifications: Iterable[Notification],
) -> list[tuple[Notification, Message]]:
    """Each notification with its message (room and sender loaded), in the given
    order; those whose message is gone are left out."""
    notifications = list(notifications)
    messages = messages_by_id(message_ids=[n.message_id for n in notifications])
    return [
        (n, messages[str(n.message_id)])
        for n in notifications
        if str(n.message_id) in messages
    ]


def message_by_client_id(*, sender_id: int, client_id: str) -> Message | None:
    """The message the sender stored with this idempotency key within
    CHAT_CLIENT_ID_WINDOW (`replayed` set), or None."""
    since = timezone.now() - timedelta(seconds=settings.CHAT_CLIENT_ID_WINDOW)
    message = (
        Message.objects.filter(
            sender_id=sender_id, client_id=client_id, created_at__gte=since
        )
        .select_related("room", "sender")
        .first()
    )
    if message is not None:
        message.replayed = True
    return message


def room_messages_after(
    *, room_name: str, user_id: int, after_seq: int, limit: int
) -> list[Message]:
    """The first `limit` messages after `after_seq` that this user may see, in seq
    order (a client catching up)."""
    return list(
        Message.objects.filter(
            _visible_to(user_id), room__name=room_name, seq__gt=after_seq
        )
        .select_related("room", "sender")
        .order_by("seq")[:limit]
    )


def room_messages_before(
    *, room_name: str, user_id: int, before_seq: int | None, limit: int
) -> tuple[list[Message], bool]:
    """The `limit` messages before `before_seq` (None: the latest) that this user may
    see, oldest first, and whether older ones exist."""
    visible = Message.objects.filter(_visible_to(user_id), room__name=room_name)
    if before_seq is not None:
        visible = visible.filter(seq__lt=before_seq)
    page = list(visible.select_related("room", "sender").order_by("-seq")[: limit + 1])
    return list(reversed(page[:limit])), len(page) > limit


def _visible_to(user_id: int) -> Q:
    # DMs sent inside a room before DMs had their own conversations
    return Q(receiver__isnull=True) | Q(sender_id=user_id) | Q(receiver_id=user_id)


def usernames(*, user_ids: Iterable[int]) -> dict[int, str]:
    """Usernames by user id."""
    return dict(
        get_user_model()
        .objects.filter(pk__in=list(user_ids))
        .values_list("pk", "username")
    )


def users_search(*, text: str, exclude_id: int, limit: int) -> list[tuple[int, str]]:
    """Active users whose username contains `text` (case-insensitive), by name."""
    return list(
        get_user_model()
        .objects.filter(username__icontains=text, is_active=True)
        .exclude(pk=exclude_id)
        .order_by("username")
        .values_list("pk", "username")[:limit]
    )


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


# Literals, not parameters: SQLite uses a partial index only when the query names the
# index's own constants. With bound parameters it walked the room's whole history in
# seq order instead (6 ms a query at 17,500 messages in a room, against 3 µs), so
# publishing slowed down as rooms grew. The statuses are the model's own choices.
_UNPUBLISHED_SQL = ", ".join(f"'{status}'" for status in UNPUBLISHED_STATUSES)


def messages_unpublished(*, room_id: int, limit: int) -> list[Message]:
    """The conversation's first `limit` messages still to publish, in seq order.

    Plain SQL (the partial index message_unpublished serves it): the ORM's query
    compilation was a third of a publish task's time.
    """
    return list(
        Message.objects.raw(
            "SELECT id, message_id, room_id, seq, sender_id, receiver_id, content, "
            "created_at, status, attempts, sweep_count, kafka_partition, kafka_offset "
            f"FROM {Message._meta.db_table} "
            f"WHERE room_id = %s AND status IN ({_UNPUBLISHED_SQL}) "
            "ORDER BY seq LIMIT %s",
            [room_id, limit],
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


# --- the room directory and mentions (chat.web.room_views, chat.realtime.mentions) ---


def public_rooms(*, user_id: int, text: str = "") -> QuerySet[Room]:
    """Public rooms (DM conversations never), busiest first then by name, each with
    `member_count` and `joined` (whether this user is a member); `text` filters on
    name or topic."""
    rooms = (
        Room.objects.filter(is_private=False)
        .exclude(name__startswith=DM_ROOM_PREFIX)
        .annotate(
            member_count=Count("memberships"),
            joined=Exists(
                RoomMembership.objects.filter(room=OuterRef("pk"), user_id=user_id)
            ),
        )
    )
    if text:
        rooms = rooms.filter(Q(name__icontains=text) | Q(topic__icontains=text))
    return rooms.order_by("-member_count", "name")


def rooms_joined(*, user_id: int) -> QuerySet[Room]:
    """The rooms this user belongs to (DM conversations aside), with `member_count`,
    by name."""
    return (
        Room.objects.filter(
            pk__in=RoomMembership.objects.filter(user_id=user_id).values("room_id")
        )
        .exclude(name__startswith=DM_ROOM_PREFIX)
        .annotate(member_count=Count("memberships"))
        .order_by("name")
    )


def usernames_outside_room(*, room_name: str, usernames: Iterable[str]) -> list[str]:
    """Which of these usernames name active users who are not members of the room,
    by name (one query)."""
    return list(
        get_user_model()
        .objects.filter(username__in=list(usernames), is_active=True)
        .exclude(memberships__room__name=room_name)
        .order_by("username")
        .values_list("username", flat=True)
    )
