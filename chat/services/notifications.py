"""Notifications: which users a chat event notifies (DMs, @mentions), recorded once
per (user, message)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q

from chat.models import (
    Notification,
    Room,
    RoomMembership,
)

if TYPE_CHECKING:
    from chat.schemas import ChatEvent


# "@name" where name is a Django username (letters, digits and @.+-_), not part of a
# longer word or address; a trailing sentence dot is tried without it too.
MENTION = re.compile(r"(?<![\w@.+-])@([\w.@+-]{1,150})")


Key = TypeVar("Key")


def mentioned_usernames(content: str) -> set[str]:
    """Usernames a message @mentions."""
    names: set[str] = set()
    for match in MENTION.finditer(content):
        name = match.group(1)
        names.add(name)
        names.add(name.rstrip(".-+@"))
    names.discard("")
    return names


@dataclass
class NotificationOutcome(Generic[Key]):
    """What recording a batch of chat events did."""

    # valid events, in the order given (their room activity is pushed live)
    accepted: list[ChatEvent] = field(default_factory=list)
    # new notifications (none for an event handled before) with their event and the
    # sender's username
    created: list[tuple[Notification, ChatEvent, str]] = field(default_factory=list)
    # events that cannot be handled: (the caller's key, why)
    skipped: list[tuple[Key, str]] = field(default_factory=list)


def notifications_record(
    *, events: Sequence[tuple[Key, ChatEvent]]
) -> NotificationOutcome[Key]:
    """Store the notifications of a batch of chat events, idempotently per
    (user, message_id): a DM notifies its receiver, a room message the members it
    @mentions (never its sender). One transaction, a fixed number of statements for
    the whole batch whatever the rooms' sizes.

    An event that names an unknown room, sender or receiver is skipped with its
    reason, and the rest of the batch is recorded.
    """
    outcome: NotificationOutcome[Key] = NotificationOutcome()
    if not events:
        return outcome
    User = get_user_model()
    mentions = {
        key: mentioned_usernames(event.content) if event.receiver_id is None else set()
        for key, event in events
    }
    room_ids = dict(
        Room.objects.filter(name__in={e.room for _, e in events}).values_list(
            "name", "id"
        )
    )
    named = {n for names in mentions.values() for n in names}
    user_ids = {e.sender_id for _, e in events} | {
        e.receiver_id for _, e in events if e.receiver_id is not None
    }
    users = dict(
        User.objects.filter(Q(pk__in=user_ids) | Q(username__in=named)).values_list(
            "pk", "username"
        )
    )
    by_name = {name: pk for pk, name in users.items()}
    mentioned_ids = {by_name[n] for n in named if n in by_name}
    members = set(
        RoomMembership.objects.filter(
            room_id__in=room_ids.values(), user_id__in=mentioned_ids
        ).values_list("room_id", "user_id")
    )
    wanted: list[tuple[Notification, ChatEvent, str]] = []
    for key, event in events:
        room_id = room_ids.get(event.room)
        if room_id is None:
            outcome.skipped.append((key, f"unknown room {event.room!r}"))
            continue
        unknown = [
            f"unknown {role} {user_id}"
            for role, user_id in (
                ("sender", event.sender_id),
                ("receiver", event.receiver_id),
            )
            if user_id is not None and user_id not in users
        ]
        if unknown:
            outcome.skipped.append((key, ", ".join(unknown)))
            continue
        outcome.accepted.append(event)
        if event.receiver_id is not None:
            targets = {event.receiver_id: Notification.Kind.DM}
        else:
            targets = {
                by_name[n]: Notification.Kind.MENTION
                for n in mentions[key]
                if n in by_name and (room_id, by_name[n]) in members
            }
        targets.pop(event.sender_id, None)
        for user_id, kind in targets.items():
            notification = Notification(
                user_id=user_id,
                message_id=event.message_id,
                room_id=room_id,
                seq=event.seq,
                kind=kind,
            )
            wanted.append((notification, event, users[event.sender_id]))
    with transaction.atomic():
        existing = set(
            Notification.objects.filter(
                message_id__in={n.message_id for n, _, _ in wanted}
            ).values_list("user_id", "message_id")
        )
        for notification, event, sender in wanted:
            mark = (notification.user_id, notification.message_id)
            if mark not in existing:  # also a repeat within this batch
                existing.add(mark)
                outcome.created.append((notification, event, sender))
        Notification.objects.bulk_create(
            [n for n, _, _ in outcome.created], ignore_conflicts=True
        )
    return outcome
