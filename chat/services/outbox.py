"""Publish bookkeeping: what Kafka stored or refused, the sweep that re-enqueues
what was lost, and the re-drive of dead messages. Never talks to Kafka: the
publish task has the producer send, and records the outcome here."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from chat.infra import config, metrics
from chat.infra.db import write_turn
from chat.models import (
    FINAL_STATUSES,
    UNPUBLISHED_STATUSES,
    Message,
)
from chat.selectors import (
    message_for_publish,
    messages_pending_publish,
)
from chat.services import broadcast, publish_queue

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


def _grace() -> timedelta:
    return timedelta(seconds=config.outbox().grace_seconds)


def outbox_backoff(*, sweep_count: int) -> timedelta:
    """Wait before the sweep re-enqueues a message again: GRACE × 2^n, capped."""
    outbox = config.outbox()
    seconds = outbox.grace_seconds * 2 ** min(sweep_count, 32)
    return timedelta(seconds=min(seconds, outbox.backoff_max))


def messages_record_published(
    *, published: Sequence[tuple[Message, Any]], skipped: Sequence[Message] = ()
) -> None:
    """Record where Kafka stored each message, or that it was skipped, and count the
    attempt: one UPDATE per partition (a conversation has one). The conversation's
    lock is held, so nobody else writes these rows."""
    now = timezone.now()
    by_partition: dict[int, list[tuple[Message, Any]]] = defaultdict(list)
    for message, result in published:
        message.attempts += 1
        message.status = Message.Status.PUBLISHED
        message.published_at = now
        message.kafka_partition = result.partition
        message.kafka_offset = result.offset
        message.last_error = ""
        by_partition[result.partition].append((message, result))
        metrics.PUBLISH_LATENCY.observe((now - message.created_at).total_seconds())
    for message in skipped:
        message.attempts += 1
        message.status = Message.Status.SKIPPED
    with write_turn():  # beside the web's group commits (db_connections)
        for partition, rows in by_partition.items():
            _record_offsets(partition, rows, now)
        if skipped:
            Message.objects.filter(pk__in=[m.pk for m in skipped]).update(
                status=Message.Status.SKIPPED, attempts=F("attempts") + 1
            )
    metrics.MESSAGES_PUBLISHED.inc(len(published))
    metrics.MESSAGES_SKIPPED.inc(len(skipped))


def _record_offsets(partition: int, rows: list[tuple[Message, Any]], now: Any) -> None:
    # Plain SQL: Django's bulk_update compiles a CASE per field per row, which costs
    # more than the Kafka publication itself (docs/PERFORMANCE.md).
    table = Message._meta.db_table
    cases = " ".join("WHEN %s THEN %s" for _ in rows)
    ids = ", ".join("%s" for _ in rows)
    params: list[Any] = [
        Message.Status.PUBLISHED,
        connection.ops.adapt_datetimefield_value(now),
        partition,
    ]
    for message, result in rows:
        params += [message.pk, result.offset]
    params += [m.pk for m, _ in rows]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = %s, published_at = %s, "
            f"kafka_partition = %s, last_error = '', attempts = attempts + 1, "
            f"kafka_offset = CASE id {cases} END WHERE id IN ({ids})",
            params,
        )


def messages_record_error(*, messages: Sequence[Message], error: str) -> None:
    """Count the attempt and keep the retriable error of messages tried again later;
    the sweep waits a grace period past this attempt."""
    with write_turn():
        Message.objects.filter(pk__in=[m.pk for m in messages]).update(
            attempts=F("attempts") + 1,
            last_error=error[:2000],
            next_sweep_at=timezone.now() + _grace(),
        )


def messages_record_in_doubt(*, in_doubt: Sequence[tuple[Message, Any]]) -> None:
    """Keep where Kafka acknowledged messages whose transaction's fate is unknown
    (their status stays unpublished): the next publisher of the conversation reads
    them back there before it sends anything (chat.publishing.conversation)."""
    for message, result in in_doubt:
        message.kafka_partition = result.partition
        message.kafka_offset = result.offset
    with write_turn():
        Message.objects.bulk_update(
            [m for m, _ in in_doubt], ["kafka_partition", "kafka_offset"]
        )


def messages_forget_place(*, messages: Sequence[Message]) -> None:
    """Read back and not there (their transaction was aborted): to be sent again."""
    if not messages:
        return
    for message in messages:
        message.kafka_partition = message.kafka_offset = None
    with write_turn():
        Message.objects.filter(pk__in=[m.pk for m in messages]).update(
            kafka_partition=None, kafka_offset=None
        )


def message_mark_failed(*, message_id: str, error: str) -> Message | None:
    """Retries exhausted: mark the message failed, and with it the conversation's
    other attempted, unpublished messages (they wait behind it in seq order); tell
    their senders. The sweep retries them."""
    try:
        message = message_for_publish(message_id=message_id)
    except (Message.DoesNotExist, ValidationError):
        logger.error("Cannot mark %r failed: no such message (%s)", message_id, error)
        return None
    if message.status in FINAL_STATUSES:
        return message
    behind = Message.objects.filter(
        room_id=message.room_id, status__in=UNPUBLISHED_STATUSES, attempts__gt=0
    ).exclude(pk=message.pk)
    failed = [message, *behind]
    newly_failed = [m for m in failed if m.status != Message.Status.FAILED]
    now = timezone.now()
    for each in failed:
        each.status = Message.Status.FAILED
        each.last_error = error[:2000]
        each.next_sweep_at = now + outbox_backoff(sweep_count=each.sweep_count)
    with write_turn():
        Message.objects.bulk_update(failed, ["status", "last_error", "next_sweep_at"])
    metrics.MESSAGES_FAILED.inc(len(newly_failed))
    logger.error(
        "Retries exhausted for message_id=%s and %d more of %s (sweep again at %s): %s",
        message_id,
        len(failed) - 1,
        message.room.name,
        now + outbox_backoff(sweep_count=message.sweep_count),
        error,
    )
    broadcast.send_statuses(newly_failed)  # a sender hears "failed" once per failure
    return message


def message_mark_dead(*, message: Message, reason: str) -> Message:
    """The message can never be published as it is: stop retrying, tell the sender."""
    message.status = Message.Status.DEAD
    message.last_error = reason[:2000]
    message.next_sweep_at = None
    with write_turn():
        message.save(
            update_fields=["status", "attempts", "last_error", "next_sweep_at"]
        )
    metrics.MESSAGES_DEAD.inc()
    logger.error(
        "Dead message_id=%s: %s",
        message.message_id,
        reason,
        extra={"message_id": str(message.message_id)},
    )
    broadcast.send_statuses([message])
    return message


def outbox_sweep(
    *, now: datetime | None = None, limit: int | None = None, force: bool = False
) -> list[str]:
    """Re-enqueue the conversations of messages whose sweep is due; return their ids.

    One task per conversation: it publishes all of the conversation's unpublished
    messages in seq order. Messages whose conversation already has a task waiting are
    left alone, and nothing is enqueued while the Celery queue is deeper than
    OUTBOX_SWEEP_MAX_QUEUE: those tasks are late, not lost, and more would only feed
    a collapse. Each re-enqueue pushes the message's next sweep back (GRACE × 2^n,
    capped), so a long outage is probed at a falling rate. `force` (an operator's
    command) enqueues every due conversation whatever waits.
    """
    now = now or timezone.now()
    limit = config.outbox().sweep_batch if limit is None else limit
    depth = 0 if force else publish_queue.queue_depth()
    if depth > config.outbox().sweep_max_queue:
        logger.warning(
            "Outbox sweep skipped: %d tasks wait in the queue (more than %d)",
            depth,
            config.outbox().sweep_max_queue,
        )
        return []
    pending = messages_pending_publish(now=now, grace=_grace())
    # Nothing due (the usual case): no write transaction, which on SQLite would hold
    # the database's write lock while the query runs.
    if not pending.exists():
        return []
    with write_turn(), transaction.atomic():
        candidates = list(pending.select_for_update(skip_locked=True)[:limit])
        waiting = {
            room_id
            for room_id in {m.room_id for m in candidates}
            if not force and publish_queue.publish_scheduled(room_id=room_id)
        }
        due = [m for m in candidates if m.room_id not in waiting]
        for message in due:
            message.sweep_count += 1
            message.next_sweep_at = now + outbox_backoff(
                sweep_count=message.sweep_count
            )
        Message.objects.bulk_update(due, ["sweep_count", "next_sweep_at"])
        _enqueue_conversations_on_commit(due)
    if due:
        logger.warning("Outbox sweep re-enqueued %d message(s)", len(due))
    return [str(m.message_id) for m in due]


def _enqueue_conversations_on_commit(messages: Iterable[Message]) -> None:
    first_of_room: dict[int, str] = {}
    for message in messages:
        first_of_room.setdefault(message.room_id, str(message.message_id))
    for room_id, message_id in first_of_room.items():
        transaction.on_commit(
            partial(
                publish_queue.enqueue_publish,
                room_id=room_id,
                message_id=message_id,
                force=True,
            )
        )


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
        Message.objects.bulk_update(dead, ["status", "sweep_count", "next_sweep_at"])
        _enqueue_conversations_on_commit(dead)
    for message in dead:
        logger.warning(
            "Re-driving dead message_id=%s",
            message.message_id,
            extra={"message_id": str(message.message_id)},
        )
    return [str(m.message_id) for m in dead]
