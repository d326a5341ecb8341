"""Rooms and memberships: who may enter a room, joining, read marks, and the
private rooms' invitations and removals.

A public room is open to every user. A private room is open to its members only; its
owner (the creator) and staff invite and remove members. A DM conversation
(`dm-<low>-<high>`, the canonical name only: ids without leading zeros, the lower
first) is private by name, and its members are the two users it names: only they open
it, and nobody invites anyone into it or removes anyone from it. Any other name
starting with `dm-` is no room at all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from chat.models import (
    DM_ROOM_PREFIX,
    ROOM_NAME_PATTERN,
    Notification,
    Room,
    RoomMembership,
)
from chat.schemas import ChatValidationError
from chat.selectors import RoomReadState, read_states, room_may_manage
from chat.services import broadcast

logger = logging.getLogger(__name__)

# Ids as dm_room_name writes them: no sign, no leading zero, at most 19 digits.
DM_ROOM = re.compile(r"^dm-([1-9][0-9]{0,18})-([1-9][0-9]{0,18})$")

# Sent to a removed member's connections: the chat socket of that room closes (4403),
# the notification socket stops following the room.
ACCESS_REVOKED_EVENT = "room.access_revoked"
MEMBERSHIP_LEFT_EVENT = "membership.left"


class RoomError(ChatValidationError):
    """A room action was refused; `code` is the protocol's error code, `status` the
    HTTP status a view answers with."""

    status = 400


class RoomAccessDenied(RoomError):
    """The user is not a member of this private room."""

    status = 403

    def __init__(self, room_name: str, detail: str | None = None) -> None:
        super().__init__(
            "forbidden",
            detail
            or f"Room {room_name!r} is private: only its members may enter it; "
            "ask its owner to invite you.",
        )


class RoomNotFound(RoomError):
    """No room, user or membership of that name."""

    status = 404


def dm_pair(room_name: str) -> tuple[int, int] | None:
    """The two user ids a DM conversation's canonical name holds (`dm-<low>-<high>`),
    or None for another room or a non-canonical `dm-` name."""
    pair = DM_ROOM.match(room_name)
    if pair is None:
        return None
    low, high = int(pair.group(1)), int(pair.group(2))
    return (low, high) if low <= high else None


def _refuse_bad_dm_name(room_name: str) -> None:
    # `dm-3-1`, `dm-01-3`: one pair, one conversation, one name (dm_room_name's).
    if room_name.startswith(DM_ROOM_PREFIX) and dm_pair(room_name) is None:
        raise RoomNotFound(
            "unknown_room",
            f"{room_name!r} is not a direct conversation: those are named "
            "dm-<lower user id>-<higher user id>, e.g. dm-1-3; open one from "
            "/dm/<username>/.",
        )


def dm_other(room_name: str, user_id: int) -> int | None:
    """In a DM conversation, the other user's id (the user's own, talking to
    themself); None for another room."""
    pair = dm_pair(room_name)
    if pair is None:
        return None
    return pair[1] if pair[0] == user_id else pair[0]


def room_require_member(*, user_id: int, room: Room) -> None:
    """Raise RoomAccessDenied unless the user may enter the room: any user a public
    one, a member (or one of the two users of a DM conversation) a private one. One
    of a DM's two users without a row yet (the room predates their account) gets it.
    """
    if not room.is_private:
        return
    if RoomMembership.objects.filter(user_id=user_id, room=room).exists():
        return
    pair = dm_pair(room.name)
    if pair is not None and user_id in pair:
        RoomMembership.objects.get_or_create(
            user_id=user_id, room=room, defaults={"last_read_seq": room.next_seq - 1}
        )
        return
    raise RoomAccessDenied(room.name)


def _managed_room(*, by_user_id: int, room_name: str) -> Room:
    """The private room `by_user_id` may manage (its owner, or staff)."""
    room = Room.objects.filter(name=room_name).first()
    by = get_user_model().objects.filter(pk=by_user_id, is_active=True).first()
    if room is None or by is None:
        raise RoomNotFound("unknown_room", f"There is no room named {room_name!r}.")
    if not room.is_private:
        raise RoomError(
            "not_private",
            f"Room {room_name!r} is public: everyone may enter it, so it has no "
            "invitations.",
        )
    if room.name.startswith(DM_ROOM_PREFIX):
        raise RoomAccessDenied(
            room_name, "A direct conversation has exactly its two users as members."
        )
    if not room_may_manage(user=by, room=room):
        if not RoomMembership.objects.filter(user_id=by.pk, room=room).exists():
            raise RoomAccessDenied(room_name)
        raise RoomAccessDenied(
            room_name, "Only the room's owner or staff may invite or remove members."
        )
    return room


def _user_named(username: str) -> Any:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise RoomNotFound("unknown_user", f"There is no user named {username!r}.")
    return user


def room_name_check(name: object) -> None:
    """RoomError `invalid_name` unless `name` may name a new room (not a DM's)."""
    if not isinstance(name, str) or not re.fullmatch(ROOM_NAME_PATTERN, name):
        raise RoomError(
            "invalid_name", "A room name is 1-64 letters, digits, '-', '_' or '.'."
        )
    if name.startswith(DM_ROOM_PREFIX):
        raise RoomError(
            "invalid_name",
            f"Names starting with {DM_ROOM_PREFIX!r} are reserved for direct "
            "conversations.",
        )


def room_invite(*, room_name: str, username: str, by_user_id: int) -> bool:
    """Make a user a member of a private room (owner or staff only); True if they
    were not one yet. They start caught up, as a user opening a public room."""
    with transaction.atomic():
        room = _managed_room(by_user_id=by_user_id, room_name=room_name)
        user = _user_named(username)
        _, created = RoomMembership.objects.get_or_create(
            user=user, room=room, defaults={"last_read_seq": room.next_seq - 1}
        )
    if created:
        logger.info("User %s invited %s to %s", by_user_id, username, room_name)
        membership_started(user_ids=[user.pk], room_name=room_name)
    return created


def room_remove_member(*, room_name: str, username: str, by_user_id: int) -> None:
    """Remove a member from a private room (owner or staff only; the owner stays).
    Their open sockets to the room close with 4403 and their notification sockets
    stop following it."""
    with transaction.atomic():
        room = _managed_room(by_user_id=by_user_id, room_name=room_name)
        user = _user_named(username)
        membership = RoomMembership.objects.filter(user=user, room=room).first()
        if membership is None:
            raise RoomNotFound(
                "not_member", f"{username!r} is not a member of {room_name!r}."
            )
        if membership.role == RoomMembership.Role.OWNER:
            raise RoomError(
                "owner", "The room's owner cannot be removed from their room."
            )
        membership.delete()
    logger.info("User %s removed %s from %s", by_user_id, username, room_name)
    user_id = user.pk
    membership_ended(user_id=user_id, room_name=room_name)


def room_get_or_create(*, name: str) -> Room:
    """The room of this name, created on first use (a DM conversation
    `dm-<low>-<high>` with its two users as members). RoomNotFound for a
    non-canonical `dm-` name, or a DM conversation of a user who does not exist."""
    _refuse_bad_dm_name(name)
    with transaction.atomic():
        room, created = Room.objects.get_or_create(name=name)
        if created:
            logger.info("Room %s created", name)
            pair = dm_pair(name)
            if pair:
                users = list(get_user_model().objects.filter(pk__in=pair))
                if len(users) != len(set(pair)):
                    raise RoomNotFound(
                        "unknown_room",
                        f"There is no direct conversation {name!r}: a user it "
                        "names does not exist.",
                    )
                RoomMembership.objects.bulk_create(
                    [RoomMembership(user=user, room=room) for user in users],
                    ignore_conflicts=True,
                )
                membership_started(user_ids=[user.pk for user in users], room_name=name)
    return room


def room_to_enter(*, name: str) -> Room:
    """The room of this name. A DM conversation is created on first use; any other
    room exists only once created (RoomNotFound `unknown_room` until then)."""
    if dm_pair(name) is not None:
        return room_get_or_create(name=name)
    room = Room.objects.filter(name=name).first()
    if room is None:
        raise RoomNotFound(
            "unknown_room", f"There is no room #{name}: create it first."
        )
    return room


def membership_started(*, user_ids: Iterable[int], room_name: str) -> None:
    """After the commit, the users' open /ws/notifications/ connections follow the
    room: joined, invited, added, or its creator."""
    events = [
        (
            broadcast.notify_user_group(user_id),
            {"type": "membership.joined", "room": room_name},
        )
        for user_id in user_ids
    ]
    transaction.on_commit(lambda: broadcast.send_events(events), robust=True)


def membership_ended(*, user_id: int, room_name: str) -> None:
    """After the commit, the user's chat sockets to the room close (4403) and their
    notification sockets stop following it: removed, or left."""
    events = [
        (
            broadcast.user_group(user_id),
            {"type": ACCESS_REVOKED_EVENT, "room": room_name},
        ),
        (
            broadcast.notify_user_group(user_id),
            {"type": MEMBERSHIP_LEFT_EVENT, "room": room_name},
        ),
    ]
    transaction.on_commit(lambda: broadcast.send_events(events), robust=True)


def membership_join(*, user_id: int, room_name: str) -> bool:
    """The user opened or sent to the room: make them a member (caught up to now, so
    the history they are shown is not unread). True if they were not one yet; their
    open /ws/notifications/ connections then follow the room too.

    A private room is not joined this way: RoomAccessDenied unless already a member;
    a DM conversation is opened (and created) by its two users only. A room that was
    never created, or a non-canonical dm- name, is not either: RoomNotFound
    `unknown_room`.
    """
    _refuse_bad_dm_name(room_name)
    pair = dm_pair(room_name)
    if pair is not None and user_id not in pair:
        raise RoomAccessDenied(room_name)
    room = room_to_enter(name=room_name)
    room_require_member(user_id=user_id, room=room)
    _, created = RoomMembership.objects.get_or_create(
        user_id=user_id, room=room, defaults={"last_read_seq": room.next_seq - 1}
    )
    if created:
        logger.info("User %s joined room %s", user_id, room_name)
        membership_started(user_ids=[user_id], room_name=room_name)
    return created


def room_mark_read(*, user_id: int, room_name: str, up_to_seq: int) -> RoomReadState:
    """The user has read the room up to `up_to_seq` (clamped to its last message):
    move their read mark forward (never back), mark that room's notifications read,
    and push the new count to all of the user's notification connections.

    Reading writes no membership: RoomNotFound (`not_member`) for a public room the
    user has not opened. Raises Room.DoesNotExist for an unknown room,
    RoomAccessDenied for a private room the user is not a member of.
    """
    now = timezone.now()
    with transaction.atomic():
        room = Room.objects.get(name=room_name)
        room_require_member(user_id=user_id, room=room)
        target = max(0, min(up_to_seq, room.next_seq - 1))
        membership = RoomMembership.objects.filter(user_id=user_id, room=room).first()
        if membership is None:
            raise RoomNotFound(
                "not_member",
                f"You are not a member of {room_name!r}: open the room first; only "
                "its members have read marks.",
            )
        if target > membership.last_read_seq:
            RoomMembership.objects.filter(
                pk=membership.pk, last_read_seq__lt=target
            ).update(last_read_seq=target)
        Notification.objects.filter(
            user_id=user_id, room=room, seq__lte=target, read_at__isnull=True
        ).update(read_at=now)
    (state,) = read_states(user_id=user_id, room_name=room_name)
    broadcast.send_events(
        [
            (
                broadcast.notify_user_group(user_id),
                {"type": "unread.changed", "states": [state._asdict()]},
            )
        ]
    )
    return state
