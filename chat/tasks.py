"""Celery tasks: they take ids; the publish task orchestrates claim → agent → record."""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

from celery import Task, shared_task
from celery.signals import task_prerun
from django.conf import settings
from redis.exceptions import LockError

from chat import selectors
from chat.agents import (
    ChatEvent,
    InDoubtPublishError,
    KafkaChatAgent,
    KafkaPublishError,
    PermanentPublishError,
    PublishResult,
    RetriablePublishError,
)
from chat.infra import metrics
from chat.infra.db import between_units
from chat.models import FINAL_STATUSES, Message, Room
from chat.services import broadcast, publish_queue
from chat.services.messages import client_ids_expire
from chat.services.outbox import (
    message_mark_dead,
    message_mark_failed,
    messages_forget_place,
    messages_record_error,
    messages_record_in_doubt,
    messages_record_published,
    outbox_sweep,
)

logger = logging.getLogger(__name__)


@task_prerun.connect
def _drop_unusable_connections(**_: Any) -> None:
    """Before a task, close a database connection Django would not reuse (an error
    since the last commit, past CONN_MAX_AGE): Celery's fix-up no longer closes it
    after every task (CELERY_DB_REUSE_MAX). And forget the DEBUG query log."""
    between_units()


def retry_countdown(
    retry_number: int, *, delay: float, backoff: float, jitter: float = 0.0
) -> float:
    """Seconds before retry n (1-based): DELAY × BACKOFF^(n-1), plus optional jitter."""
    countdown = delay * backoff ** (retry_number - 1)
    if jitter:
        countdown += random.uniform(0, jitter * countdown)
    return countdown


class KafkaPublishTask(Task):
    """Retry policy from settings: KAFKA_RETRY_TRIES attempts, DELAY × BACKOFF^(n-1).

    Celery's own `retry_backoff` only does factor × 2^n in whole seconds, so the
    countdown is computed here and handed to Celery's retry (autoretry calls it).
    """

    acks_late = True
    reject_on_worker_lost = True

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        """Retries after the first attempt."""
        return max(settings.KAFKA_RETRY_TRIES - 1, 0)

    @max_retries.setter
    def max_retries(self, value: int) -> None:
        pass  # the limit always comes from settings

    def retry(self, *args: Any, countdown: float | None = None, **kwargs: Any) -> Any:
        """Schedule the next attempt with the settings' countdown."""
        if countdown is None and kwargs.get("eta") is None:
            countdown = retry_countdown(
                self.request.retries + 1,
                delay=settings.KAFKA_RETRY_DELAY,
                backoff=settings.KAFKA_RETRY_BACKOFF,
                jitter=settings.KAFKA_RETRY_JITTER,
            )
        if self.request.retries < self.max_retries:
            metrics.PUBLISH_RETRIES.inc()
            logger.warning(
                "Retry %d/%d of %s message_id=%s in %.2fs: %s",
                self.request.retries + 1,
                self.max_retries,
                self.name,
                (self.request.args or [None])[0],
                countdown,
                kwargs.get("exc"),
            )
        return super().retry(*args, countdown=countdown, **kwargs)

    def on_failure(
        self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Retries exhausted: mark the message failed (a dead one stays dead)."""
        message_id = (args or [None])[0] or kwargs.get("message_id")
        message_mark_failed(
            message_id=str(message_id), error=f"{type(exc).__name__}: {exc}"
        )


@shared_task(
    bind=True,
    base=KafkaPublishTask,
    autoretry_for=(RetriablePublishError,),
    retry_backoff=False,
    retry_jitter=False,
)
def publish_chat_message(self: KafkaPublishTask, message_id: str) -> str | None:
    """Publish a message's conversation up to it, in seq order (retried on trouble).

    Already published (its conversation's publisher took it): a one-read no-op.
    """
    try:
        canonical_id = str(uuid.UUID(str(message_id)))
    except ValueError:
        logger.error(
            "publish_chat_message: %r is not a message id; dropped", message_id
        )
        return None
    state = selectors.message_publish_state(message_id=canonical_id)
    if state is None:
        logger.error("publish_chat_message: no message with id %r; dropped", message_id)
        return None
    published = state.status in FINAL_STATUSES
    took_mark = publish_queue.publish_pass_started(
        room_id=state.room_id, message_id=canonical_id, owner_only=published
    )
    if published and not took_mark:
        return state.status  # nothing rode along on this task: a cheap no-op
    return publish_conversation(
        room_id=state.room_id, room_name=state.room_name, message_id=canonical_id
    )


def publish_conversation(*, room_id: int, room_name: str, message_id: str) -> str:
    """Publish the conversation's unpublished messages (one batch) under its lock.

    Read the batch, have the agent send it pipelined with one flush, record the
    outcome and the attempt with one UPDATE, tell the senders. Returns the status
    of `message_id`; raises RetriablePublishError (retry) or PermanentPublishError
    (dead) for it.
    """
    lock = publish_queue.conversation_lock(room_id=room_id)
    if not lock.acquire():
        raise RetriablePublishError(
            f"Conversation {room_name} stayed locked by another publisher for "
            f"{settings.KAFKA_SEND_TIMEOUT:g}s"
        )
    try:
        batch = selectors.messages_unpublished(
            room_id=room_id, limit=settings.CHAT_PUBLISH_BATCH
        )
        outcomes = _publish_batch(room_id, room_name, batch) if batch else {}
    finally:
        try:
            lock.release()
        except LockError:
            logger.warning("Publish lock of %s expired before release", room_name)
    if len(batch) == settings.CHAT_PUBLISH_BATCH:  # more to do: carry on in a new task
        publish_queue.enqueue_publish(
            room_id=room_id, message_id=str(batch[-1].message_id), force=True
        )
    outcome = outcomes.get(message_id)
    if isinstance(outcome, KafkaPublishError):
        raise outcome
    for error in outcomes.values():
        if isinstance(error, RetriablePublishError):
            raise error  # this conversation is stuck behind it: retry the batch
    if outcome is None:  # not in this batch: published meanwhile, or in the next
        state = selectors.message_publish_state(message_id=message_id)
        return state.status if state else "unknown"
    return str(outcome)


def _publish_batch(
    room_id: int, room_name: str, batch: list[Message]
) -> dict[str, str | KafkaPublishError]:
    """Publish one batch; message_id → new status, or the error it met."""
    room = Room(id=room_id, name=room_name)
    for message in batch:
        message.room = room
    agent = KafkaChatAgent.get_instance()
    outcome: dict[str, str | KafkaPublishError] = {}
    batch = _settle_in_doubt(agent, room_name, batch, outcome)
    if not batch:
        return outcome
    events = [ChatEvent.from_message(m) for m in batch]
    try:
        results = agent.publish_batch(events)
    except RetriablePublishError as exc:
        messages_record_error(messages=batch, error=str(exc))
        raise
    if results is None:
        messages_record_published(published=[], skipped=batch)
        broadcast.send_statuses(batch)
        return {str(m.message_id): m.status for m in batch}
    published, retriable, in_doubt = [], [], []
    for message, event, result in zip(batch, events, results, strict=True):
        key = str(message.message_id)
        if isinstance(result, PermanentPublishError):
            dead_letter_error = _dead_letter(agent, event, result)
            if dead_letter_error is not None:
                retriable.append(message)
                outcome[key] = dead_letter_error
                continue
            message.attempts += 1
            message_mark_dead(message=message, reason=str(result))
            outcome[key] = result
        elif isinstance(result, KafkaPublishError):
            retriable.append(message)
            outcome[key] = result
            if isinstance(result, InDoubtPublishError):
                in_doubt.append((message, result.result))
        else:
            published.append((message, result))
            outcome[key] = Message.Status.PUBLISHED
    messages_record_published(published=published)
    if published:
        logger.info(
            "Published %d message(s) of %s, seq %d-%d, to %s[%d]",
            len(published),
            room_name,
            published[0][0].seq,
            published[-1][0].seq,
            published[0][1].topic,
            published[0][1].partition,
        )
    if retriable:
        messages_record_error(
            messages=retriable, error=str(outcome[str(retriable[0].message_id)])
        )
    if in_doubt:
        messages_record_in_doubt(in_doubt=in_doubt)
    broadcast.send_statuses([m for m, _ in published])
    return outcome


def _settle_in_doubt(
    agent: KafkaChatAgent,
    room_name: str,
    batch: list[Message],
    outcome: dict[str, str | KafkaPublishError],
) -> list[Message]:
    """Messages an earlier attempt left in doubt (a commit unanswered while the
    cluster was down: their place is recorded, their status is not published) are
    read back first. Found, they are published there; not found, they go with the
    rest of the batch, which is returned. Undecided, nothing of the conversation is
    sent: a copy, or a later message ahead of them, could follow."""
    places = {
        m.pk: PublishResult(agent.topic, m.kafka_partition, m.kafka_offset)
        for m in batch
        if m.kafka_partition is not None and m.kafka_offset is not None
    }
    if not places:
        return batch
    doubtful = [m for m in batch if m.pk in places]
    found = agent.committed(list(places.values()))
    if found is None:
        error = RetriablePublishError(
            f"{len(doubtful)} message(s) of {room_name} in doubt since a commit went "
            "unanswered: not decided yet"
        )
        messages_record_error(messages=batch, error=str(error))
        raise error
    there = [
        (m, place)
        for m in doubtful
        if ((place := places[m.pk]).topic, place.partition, place.offset) in found
    ]
    published = {m.pk for m, _ in there}
    gone = [m for m in doubtful if m.pk not in published]
    messages_record_published(published=there)
    messages_forget_place(messages=gone)
    broadcast.send_statuses([m for m, _ in there])
    for message, _ in there:
        outcome[str(message.message_id)] = Message.Status.PUBLISHED
    logger.info(
        "In doubt in %s: %d message(s) found in Kafka, %d sent again",
        room_name,
        len(there),
        len(gone),
    )
    return [m for m in batch if m.pk not in published]


def _dead_letter(
    agent: KafkaChatAgent, event: ChatEvent, error: PermanentPublishError
) -> RetriablePublishError | None:
    """Copy a dead message to the dead-letter topic. A copy not written (retriable)
    keeps the message retrying, never dead without its copy: returns that error."""
    try:
        agent.publish_dead_letter(event, str(error))
    except RetriablePublishError as exc:
        logger.warning(
            "Dead-letter copy of message_id=%s not written yet, retried later: %s",
            event.message_id,
            exc,
        )
        return RetriablePublishError(
            f"{error}; its dead-letter copy is not written yet: {exc}"
        )
    except KafkaPublishError as exc:  # the dead-letter topic refuses it for good
        logger.error(
            "Dead-letter copy of message_id=%s refused for good: %s",
            event.message_id,
            exc,
        )
    return None


@shared_task(ignore_result=True)
def sweep_outbox() -> int:
    """Re-enqueue messages whose publication was lost or gave up, and forget
    idempotency keys past their window (run by beat)."""
    client_ids_expire()
    return len(outbox_sweep())
