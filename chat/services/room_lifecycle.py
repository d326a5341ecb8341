"""A room's life: creating it on purpose, leaving it, its topic, and adding members.

- Creating: any user creates a public or a private room of a free name (not `dm-...`);
  its creator is its owner and first member.
- Leaving: any member leaves any room but a DM conversation. The owner of a private
  room hands it to the longest-standing other member; the last member leaves an
  empty private room that only staff can invite into again.
- Topic: one line of plain text (ROOM_TOPIC_MAX_LENGTH). Any member sets a public
  room's; the owner (or staff) a private room's; a DM conversation has none.
- Adding: into a public room, any member adds a user (who sees it in their sidebar and
  may leave it); into a private room, only its owner or staff (rooms.room_invite).
"""

from __future__ import annotations

import logging
import re

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from chat.models import DM_ROOM_PREFIX, ROOM_TOPIC_MAX_LENGTH, Room, RoomMembership
from chat.schemas import BIDI_CONTROLS, CONTROL_CHARACTERS
from chat.selectors import room_may_manage
from chat.services import broadcast
from chat.services.rooms import (
    RoomAccessDenied,
    RoomError,
    RoomNotFound,
    membership_ended,
    membership_started,
    room_invite,
    room_name_check,
)

logger = logging.getLogger(__name__)

# Sent to a room's open sockets when its topic changes (ChatConsumer.room_topic).
TOPIC_EVENT = "room.topic"


def room_create(
    *, name: str, created_by_id: int, is_private: bool, topic: str = ""
) -> Room:
    """Create a room with its creator as owner; RoomError `invalid_name`,
    `name_taken` or `invalid_topic` if it cannot be."""
    room_name_check(name)
    clean_topic = topic_clean(topic)
    try:
        with transaction.atomic():
            room = Room.objects.create(
                name=name,
                is_private=is_private,
                topic=clean_topic,
                created_by_id=created_by_id,
            )
            RoomMembership.objects.create(
                user_id=created_by_id, room=room, role=RoomMembership.Role.OWNER
            )
    except IntegrityError:
        raise RoomError(
            "name_taken", f"A room named {name!r} already exists: pick another name."
        ) from None
    logger.info(
        "Room %s created by user %s (private=%s)", name, created_by_id, is_private
    )
    membership_started(user_ids=[created_by_id], room_name=name)
    return room


def room_create_private(*, name: str, created_by_id: int) -> Room:
    """room_create of a private room without a topic (`POST /rooms/private/`)."""
    return room_create(name=name, created_by_id=created_by_id, is_private=True)


def topic_clean(topic: object) -> str:
    """A topic as stored: one line, runs of spaces collapsed; RoomError
    `invalid_topic` if it is not text, is longer than ROOM_TOPIC_MAX_LENGTH, or holds
    a character the content rules refuse (controls, bidi overrides, lone surrogates)."""
    if not isinstance(topic, str):
        raise RoomError("invalid_topic", "A topic is text.")
    clean = re.sub(r"\s+", " ", topic).strip()
    if len(clean) > ROOM_TOPIC_MAX_LENGTH:
        raise RoomError(
            "invalid_topic",
            f"A topic is at most {ROOM_TOPIC_MAX_LENGTH} characters; this one has "
            f"{len(clean)}.",
        )
    if (
        CONTROL_CHARACTERS.search(clean)
        or BIDI_CONTROLS.search(clean)
        or any("\ud800" <= ch <= "\udfff" for ch in clean)
    ):
        raise RoomError(
            "invalid_topic",
            "A topic cannot hold control characters, bidi overrides or lone "
            "surrogates.",
        )
    return clean


def _room_named(room_name: str) -> Room:
    room = Room.objects.select_for_update().filter(name=room_name).first()
    if room is None:
        raise RoomNotFound("unknown_room", f"There is no room #{room_name}.")
    if room.name.startswith(DM_ROOM_PREFIX):
        raise RoomError(
            "direct_conversation",
            "A direct conversation has exactly its two users: it cannot be left, "
            "joined or given a topic.",
        )
    return room


def membership_leave(*, user_id: int, room_name: str) -> None:
    """The user leaves the room: their membership goes, their sockets to the room
    close (4403) and their notification sockets stop following it. A private room's
    owner passes ownership to the longest-standing other member."""
    with transaction.atomic():
        room = _room_named(room_name)
        membership = RoomMembership.objects.filter(user_id=user_id, room=room).first()
        if membership is None:
            raise RoomNotFound("not_member", f"You are not a member of #{room_name}.")
        membership.delete()
        if membership.role == RoomMembership.Role.OWNER:
            heir = (
                RoomMembership.objects.filter(room=room)
                .order_by("joined_at", "pk")
                .first()
            )
            if heir is not None:
                heir.role = RoomMembership.Role.OWNER
                heir.save(update_fields=["role"])
                logger.info("Room %s passed to user %s", room_name, heir.user_id)
    logger.info("User %s left room %s", user_id, room_name)
    membership_ended(user_id=user_id, room_name=room_name)


def room_may_set_topic(*, user: object, room: Room) -> bool:
    """Whether the user may change the room's topic (see the module's rules)."""
    if room.name.startswith(DM_ROOM_PREFIX):
        return False
    if room.is_private:
        return room_may_manage(user=user, room=room)
    return RoomMembership.objects.filter(user_id=user.pk, room=room).exists()  # type: ignore[attr-defined]


def room_set_topic(*, room_name: str, topic: object, by_user_id: int) -> str:
    """Set the room's topic (empty clears it); the room's open sockets get a
    `room.topic` frame. Returns the topic as stored."""
    clean = topic_clean(topic)
    by = get_user_model().objects.filter(pk=by_user_id, is_active=True).first()
    with transaction.atomic():
        room = _room_named(room_name)
        if by is None or not room_may_set_topic(user=by, room=room):
            raise RoomAccessDenied(
                room_name,
                "Only a member may change a public room's topic, and only the owner "
                "(or staff) a private room's.",
            )
        Room.objects.filter(pk=room.pk).update(topic=clean)
    event = {
        "type": TOPIC_EVENT,
        "room": room_name,
        "topic": clean,
        "by": by.get_username(),
    }
    transaction.on_commit(
        lambda: broadcast.send_events([(broadcast.room_group(room_name), event)]),
        robust=True,
    )
    return clean


def room_member_add(*, room_name: str, username: str, by_user_id: int) -> bool:
    """Add a user to a room (see the module's rules); True if they were not a member
    yet. Their notification sockets follow the room from then on."""
    room = Room.objects.filter(name=room_name).first()
    if room is None or room.is_private:
        return room_invite(
            room_name=room_name, username=username, by_user_id=by_user_id
        )
    with transaction.atomic():
        room = _room_named(room_name)
        if not RoomMembership.objects.filter(user_id=by_user_id, room=room).exists():
            raise RoomAccessDenied(
                room_name, "Only a member of a room may add people to it."
            )
        user = get_user_model().objects.filter(username=username, is_active=True)
        added = user.first()
        if added is None:
            raise RoomNotFound("unknown_user", f"There is no user named {username!r}.")
        try:
            with transaction.atomic():
                _, created = RoomMembership.objects.get_or_create(
                    user=added, room=room, defaults={"last_read_seq": room.next_seq - 1}
                )
        except IntegrityError:  # added by someone else meanwhile
            created = False
    if created:
        logger.info("User %s added %s to %s", by_user_id, username, room_name)
        membership_started(user_ids=[added.pk], room_name=room_name)
    return created
