"""Writes: every change to rooms and messages goes through here."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import broadcast, metrics
from .agents import KafkaChatAgent, KafkaPublishError, PermanentPublishError
from .models import Message, Room
from .schemas import ChatEvent
from .selectors import message_for_publish, messages_pending_publish

logger = logging.getLogger(__name__)

FINAL_STATUSES = (Message.Status.PUBLISHED, Message.Status.SKIPPED, Message.Status.DEAD)


def _grace() -> timedelta:
    return timedelta(seconds=settings.OUTBOX_GRACE_SECONDS)


def outbox_backoff(*, sweep_count: int) -> timedelta:
    """Wait before the sweep re-enqueues a message again: GRACE × 2^n, capped."""
    seconds = settings.OUTBOX_GRACE_SECONDS * 2 ** min(sweep_count, 32)
    return timedelta(seconds=min(seconds, settings.OUTBOX_BACKOFF_MAX))


def _enqueue_publish(message_id: str) -> None:
    from .tasks import publish_chat_message

    publish_chat_message.delay(message_id)


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
        # robust: the message is committed; if Redis is down now, the sender still
        # gets its ack and the outbox sweep enqueues the publication later.
        # (lambdas, not partials: Django names a failed robust callback by __qualname__)
        transaction.on_commit(lambda: broadcast.broadcast_message(message), robust=True)
        transaction.on_commit(
            lambda: _enqueue_publish(str(message.message_id)), robust=True
        )
    metrics.MESSAGES_RECEIVED.inc()
    logger.info(
        "Message message_id=%s persisted in room %s seq %d",
        message.message_id,
        room_name,
        seq,
        extra={"message_id": str(message.message_id)},
    )
    return message


def message_publish(*, message_id: str) -> Message:
    """Publish a message's event to Kafka and record the outcome.

    Raises KafkaPublishError when the broker did not take it: a retriable one for the
    caller to retry; a permanent one after the message was marked dead.
    A message already published, skipped or dead is left alone (a redelivered task).
    """
    message = message_for_publish(message_id=message_id)
    if message.status in FINAL_STATUSES:
        logger.info("message_id=%s already %s", message_id, message.status)
        return message
    Message.objects.filter(pk=message.pk).update(
        attempts=F("attempts") + 1, next_sweep_at=timezone.now() + _grace()
    )
    agent = KafkaChatAgent.get_instance()
    event = ChatEvent.from_message(message)
    try:
        result = agent.publish(event)
    except PermanentPublishError as exc:
        message_mark_dead(message=message, reason=str(exc))
        agent.publish_dead_letter(event, str(exc))
        raise
    except KafkaPublishError as exc:
        Message.objects.filter(pk=message.pk).update(last_error=str(exc)[:2000])
        raise
    if result is None:
        message.status = Message.Status.SKIPPED
        message.save(update_fields=["status"])
        metrics.MESSAGES_SKIPPED.inc()
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
        metrics.MESSAGES_PUBLISHED.inc()
        metrics.PUBLISH_LATENCY.observe(
            (message.published_at - message.created_at).total_seconds()
        )
    broadcast.send_status(message)
    return message


def message_mark_failed(*, message_id: str, error: str) -> Message | None:
    """Record that the retries are exhausted, and tell the sender; the sweep retries."""
    try:
        message = message_for_publish(message_id=message_id)
    except (Message.DoesNotExist, ValidationError):
        logger.error("Cannot mark %r failed: no such message (%s)", message_id, error)
        return None
    if message.status in FINAL_STATUSES:
        return message
    message.status = Message.Status.FAILED
    message.last_error = error[:2000]
    message.next_sweep_at = timezone.now() + outbox_backoff(
        sweep_count=message.sweep_count
    )
    message.save(update_fields=["status", "last_error", "next_sweep_at"])
    metrics.MESSAGES_FAILED.inc()
    logger.error(
        "Retries exhausted for message_id=%s (sweep again at %s): %s",
        message_id,
        message.next_sweep_at.isoformat(),
        error,
    )
    broadcast.send_status(message)
    return message


def message_mark_dead(*, message: Message, reason: str) -> Message:
    """The message can never be published as it is: stop retrying, tell the sender."""
    message.status = Message.Status.DEAD
    message.last_error = reason[:2000]
    message.next_sweep_at = None
    message.save(update_fields=["status", "last_error", "next_sweep_at"])
    metrics.MESSAGES_DEAD.inc()
    logger.error(
        "Dead message_id=%s: %s",
        message.message_id,
        reason,
        extra={"message_id": str(message.message_id)},
    )
    broadcast.send_status(message)
    return message


def outbox_sweep(*, now: datetime | None = None, limit: int | None = None) -> list[str]:
    """Re-enqueue pending/failed messages whose sweep is due; return their ids.

    Each re-enqueue pushes the message's next sweep back (GRACE × 2^n, capped), so a
    long outage is probed at a falling rate instead of hammering the broker.
    """
    now = now or timezone.now()
    limit = settings.OUTBOX_SWEEP_BATCH if limit is None else limit
    with transaction.atomic():
        pending = messages_pending_publish(now=now, grace=_grace())
        due = list(pending.select_for_update(skip_locked=True)[:limit])
        for message in due:
            message.sweep_count += 1
            message.next_sweep_at = now + outbox_backoff(
                sweep_count=message.sweep_count
            )
            transaction.on_commit(partial(_enqueue_publish, str(message.message_id)))
        Message.objects.bulk_update(due, ["sweep_count", "next_sweep_at"])
    if due:
        logger.warning("Outbox sweep re-enqueued %d message(s)", len(due))
    return [str(m.message_id) for m in due]


def message_redrive(*, message_ids: Iterable[str]) -> list[str]:
    """Put dead messages back in the pipeline (after the cause was fixed)."""
    ids = [str(i) for i in message_ids]
    with transaction.atomic():
        dead = list(
            Message.objects.select_for_update().filter(
                message_id__in=ids, status=Message.Status.DEAD
            )
        )
        for message in dead:
            message.status = Message.Status.PENDING
            message.sweep_count = 0
            message.next_sweep_at = timezone.now() + _grace()
            transaction.on_commit(partial(_enqueue_publish, str(message.message_id)))
        Message.objects.bulk_update(dead, ["status", "sweep_count", "next_sweep_at"])
    for message in dead:
        logger.warning(
            "Re-driving dead message_id=%s",
            message.message_id,
            extra={"message_id": str(message.message_id)},
        )
    return [str(m.message_id) for m in dead]
