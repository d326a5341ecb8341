"""Writes: every change to rooms and messages goes through here."""

from __future__ import annotations

import logging
from functools import partial

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import broadcast
from .agents import KafkaChatAgent, KafkaPublishError
from .models import Message, Room
from .schemas import ChatEvent
from .selectors import message_for_publish

logger = logging.getLogger(__name__)


def room_get_or_create(*, name: str) -> Room:
    """The room of this name, created on first use."""
    room, created = Room.objects.get_or_create(name=name)
    if created:
        logger.info("Room %s created", name)
    return room


def message_create(
    *, room_name: str, sender_id: int, receiver_id: int | None, content: str
) -> Message:
    """Persist a message with the room's next seq; on commit broadcast and enqueue it.

    The seq is taken by an UPDATE of the room row inside the transaction: Postgres
    locks the row, SQLite (IMMEDIATE transactions) the database, so concurrent
    senders get distinct, gap-free numbers.
    """
    from .tasks import publish_chat_message

    room = room_get_or_create(name=room_name)
    with transaction.atomic():
        Room.objects.filter(pk=room.pk).update(next_seq=F("next_seq") + 1)
        seq = Room.objects.values_list("next_seq", flat=True).get(pk=room.pk) - 1
        message = Message.objects.create(
            room=room,
            seq=seq,
            sender_id=sender_id,
            receiver_id=receiver_id,
            content=content,
        )
        message = Message.objects.select_related("room", "sender").get(pk=message.pk)
        transaction.on_commit(partial(broadcast.broadcast_message, message))
        transaction.on_commit(
            partial(publish_chat_message.delay, str(message.message_id))
        )
    logger.info(
        "Message message_id=%s persisted in room %s seq %d",
        message.message_id,
        room_name,
        seq,
    )
    return message


def message_publish(*, message_id: str) -> Message:
    """Publish a message's event to Kafka and record the outcome.

    Raises KafkaPublishError when the broker did not take it (the caller retries).
    A message already published or skipped is left alone (a redelivered task).
    """
    message = message_for_publish(message_id=message_id)
    if message.status in (Message.Status.PUBLISHED, Message.Status.SKIPPED):
        logger.info("message_id=%s already %s", message_id, message.status)
        return message
    Message.objects.filter(pk=message.pk).update(attempts=F("attempts") + 1)
    try:
        result = KafkaChatAgent.get_instance().publish(ChatEvent.from_message(message))
    except KafkaPublishError as exc:
        Message.objects.filter(pk=message.pk).update(last_error=str(exc)[:2000])
        raise
    if result is None:
        message.status = Message.Status.SKIPPED
        message.save(update_fields=["status"])
    else:
        message.status = Message.Status.PUBLISHED
        message.published_at = timezone.now()
        message.kafka_partition = result.partition
        message.kafka_offset = result.offset
        message.last_error = ""
        message.save(
            update_fields=[
                "status",
                "published_at",
                "kafka_partition",
                "kafka_offset",
                "last_error",
            ]
        )
    broadcast.send_status(message)
    return message


def message_mark_failed(*, message_id: str, error: str) -> Message | None:
    """Record that publishing gave up, and tell the sender."""
    try:
        message = message_for_publish(message_id=message_id)
    except (Message.DoesNotExist, ValidationError):
        logger.error("Cannot mark %r failed: no such message (%s)", message_id, error)
        return None
    if message.status == Message.Status.PUBLISHED:
        return message
    message.status = Message.Status.FAILED
    message.last_error = error[:2000]
    message.save(update_fields=["status", "last_error"])
    logger.error("Giving up on message_id=%s: %s", message_id, error)
    broadcast.send_status(message)
    return message
