"""Rooms and messages. The Message table is also the outbox of the Kafka stream."""

import uuid
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

# Rooms named like this are direct conversations: always private, and reserved (nobody
# creates a private room of this name: its members are the two users it names).
# What a room name may be: in URLs, frames and the database.
ROOM_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
DM_ROOM_PREFIX = "dm-"
# A room's topic: one line of plain text, shown under its name.
ROOM_TOPIC_MAX_LENGTH = 200
# The public room every installation starts with (migration 0007_rooms_topic_lobby).
LOBBY = "lobby"


def dm_room_name(user_a: int, user_b: int) -> str:
    """The conversation of two users' direct messages: `dm-<low id>-<high id>`."""
    low, high = sorted((user_a, user_b))
    return f"{DM_ROOM_PREFIX}{low}-{high}"


class Room(models.Model):
    """A chat room; `next_seq` is the sequence number its next message gets.

    A public room is open to every user (opening it joins it). A private one is
    open to its members only; its creator (role owner) and staff invite and remove
    them. DM conversations (`dm-...`) are private by name. A room other than a DM
    conversation exists only once someone created it (chat.services.room_lifecycle).
    """

    name = models.CharField(
        max_length=64, unique=True, validators=[RegexValidator(ROOM_NAME_PATTERN)]
    )
    created_at = models.DateTimeField(auto_now_add=True)
    next_seq = models.PositiveBigIntegerField(default=1)
    is_private = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    topic = models.CharField(max_length=ROOM_TOPIC_MAX_LENGTH, blank=True, default="")

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        """A DM conversation is private whoever creates its row."""
        if self.name.startswith(DM_ROOM_PREFIX):
            self.is_private = True
        super().save(*args, **kwargs)


class Message(models.Model):
    """One chat message, to a room or (with a receiver) directly to one user."""

    class Status(models.TextChoices):
        PENDING = "pending"
        PUBLISHED = "published"
        FAILED = "failed"
        SKIPPED = "skipped"
        DEAD = "dead"

    message_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    seq = models.PositiveBigIntegerField()
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="sent_messages"
    )
    receiver = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="received_messages",
    )
    content = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    # The sender's idempotency key (the frame's client_id): a resend with the same
    # key returns this message. Cleared after CHAT_CLIENT_ID_WINDOW seconds. NULL, not
    # "", for "none": the unique constraint holds only where a key is set.
    client_id = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001

    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    published_at = models.DateTimeField(null=True, blank=True)
    kafka_partition = models.IntegerField(null=True, blank=True)
    kafka_offset = models.BigIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    # The outbox sweep re-enqueues a pending/failed message once next_sweep_at passes
    # (never set: OUTBOX_GRACE_SECONDS after created_at), backing off (capped) each
    # time it had to.
    next_sweep_at = models.DateTimeField(null=True, blank=True)
    sweep_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["room", "seq"], name="message_room_seq_unique"
            ),
            models.UniqueConstraint(
                fields=["sender", "client_id"],
                condition=models.Q(client_id__isnull=False),
                name="message_sender_client_id_unique",
            ),
        ]
        indexes = [
            # "pending/failed older than N seconds" for the outbox sweep
            models.Index(
                fields=["status", "created_at"], name="message_status_created"
            ),
            # a conversation's publisher: its unpublished messages in seq order
            models.Index(
                fields=["room", "seq"],
                condition=models.Q(status__in=["pending", "failed"]),
                name="message_unpublished",
            ),
        ]

    # Not stored: True on the message message_create returned for a client_id it had
    # already stored (the client resent a frame).
    replayed = False

    def __str__(self) -> str:
        return f"{self.room_id}#{self.seq} {self.message_id}"


# A message in one of these is never published again (short of a re-drive).
FINAL_STATUSES = (Message.Status.PUBLISHED, Message.Status.SKIPPED, Message.Status.DEAD)
# Still to publish, in seq order, by the conversation's publisher.
UNPUBLISHED_STATUSES = (Message.Status.PENDING, Message.Status.FAILED)


class RoomMembership(models.Model):
    """A user belongs to a room they created (as owner), to a public room once they
    open it, send to it or a member adds them, to a private one once invited, to a DM
    conversation as one of its two users, until they leave (or are removed).
    `last_read_seq` is how far they have read: every unread count derives from it,
    so nothing is written per member per message."""

    class Role(models.TextChoices):
        MEMBER = "member"
        OWNER = "owner"  # manages a private room's members (so does staff)

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    joined_at = models.DateTimeField(auto_now_add=True)
    last_read_seq = models.PositiveBigIntegerField(default=0)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "room"], name="membership_user_room_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.room_id} (read to {self.last_read_seq})"


class Notification(models.Model):
    """A message that calls for one user's attention: a DM to them, or a room
    message that @mentions them. One per (user, message): replays create nothing."""

    class Kind(models.TextChoices):
        DM = "dm"
        MENTION = "mention"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications"
    )
    message_id = models.UUIDField()
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="+")
    seq = models.PositiveBigIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "message_id"], name="notification_user_message_unique"
            )
        ]
        indexes = [
            # a user's unread notifications, newest first
            models.Index(
                fields=["user", "-created_at"],
                condition=models.Q(read_at__isnull=True),
                name="notification_unread",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} for {self.user_id}: {self.message_id}"


class UsernameSkeleton(models.Model):
    """What a username looks like (chat.security.usernames.skeleton), kept for every
    user so that a sign-up finds a look-alike with one indexed lookup."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    skeleton = models.CharField(max_length=600, db_index=True)

    def __str__(self) -> str:
        return f"{self.user_id}: {self.skeleton}"
